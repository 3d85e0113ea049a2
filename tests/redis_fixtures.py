"""Pytest fixtures for the Redis backend: import them into a test module that needs them.

    from tests.redis_fixtures import redis_server_fixture, redis_url_fixture  # noqa: F401

(The functions carry a suffix so that test parameters named ``redis_url`` shadow nothing.)

One throwaway server per importing module (started on first use); every test gets it empty.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.redis_server import RedisServer

BACKENDS = ("sqlite", "redis")


@pytest.fixture(scope="session", name="redis_server")
def redis_server_fixture() -> Iterator[RedisServer]:
    """A redis-server for the tests that use it (fails, not skips, when redis-server is missing)."""
    with RedisServer() as server:
        yield server


@pytest.fixture(name="redis_url")
def redis_url_fixture(redis_server: RedisServer) -> str:
    """The URL of an empty Redis."""
    redis_server.flush()
    return redis_server.url
