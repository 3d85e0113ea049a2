"""Test suite of gitlab-hook."""
