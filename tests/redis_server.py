"""A throwaway ``redis-server`` on a free 127.0.0.1 port, in its own temp dir, for the Redis tests.

CI installs Debian's ``redis-server`` (``.ci/run``); when it is missing the tests fail with a
message that says so, they do not skip: the scale-out path must be exercised.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis

from tests.processes import free_port


def redis_server_binary() -> str:
    """The redis-server executable, or a test failure that says how to get it."""
    path = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if path is None:
        pytest.fail("redis-server is not installed: the Redis tests need it "
                    "(apt-get install redis-server; .ci/run does this)", pytrace=False)
    return path


class RedisServer:
    """``redis-server --save "" --appendonly yes`` on 127.0.0.1:PORT with its files in a temp dir."""

    def __init__(self, directory: Path | str | None = None, port: int | None = None):
        """``directory``: keep the files there (a restart on the same dir and port finds the data again)."""
        self._own_dir = directory is None
        self.dir = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="gitlab-hook-redis-"))
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2,
                           decode_responses=True)

    def start(self, timeout: float = 10.0) -> "RedisServer":
        self.dir.mkdir(parents=True, exist_ok=True)
        log = open(self.dir / "redis.log", "ab")
        self.proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--save", "", "--appendonly", "yes", "--daemonize", "no", "--protected-mode", "yes"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        c = self.client()
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited {self.proc.returncode}:\n{self.log()}")
                try:
                    if c.ping():
                        return self
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"redis-server did not answer PING in {timeout}s:\n{self.log()}")
                time.sleep(0.02)
        finally:
            c.close()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it hangs); the temp dir goes too when it is ours."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def flush(self) -> None:
        c = self.client()
        try:
            c.flushall()
        finally:
            c.close()

    def log(self) -> str:
        p = self.dir / "redis.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
