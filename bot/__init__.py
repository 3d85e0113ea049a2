"""Telegram and console front ends for the ChatOps commands (built in issue 6)."""
