"""Start the real ``gitlab-hook`` processes as users do, for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceProcess:
    """One ``python -m gitlab_hook ROLE`` process with its own environment and log file."""

    def __init__(self, role: str, env: dict[str, str], log_path: Path, args: list[str] | None = None):
        self.role, self.log_path = role, log_path
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith(("GITLAB_", "YC_", "TELEGRAM_",
                                                                                   "KUBE", "REDIS_"))}, **env}
        self.args = [sys.executable, "-m", "gitlab_hook", role, *(args or [])]
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ServiceProcess":
        self._log = open(self.log_path, "ab")
        # A new session, so signals reach only this tree and a kill can target the whole group.
        self.proc = subprocess.Popen(self.args, env=self.env, cwd=ROOT, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_http(self, url: str, timeout: float = 20.0) -> None:
        """Block until ``url`` answers 200, or fail with the process log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"{self.role} exited {self.proc.returncode}:\n{self.log()}")
            try:
                if requests.get(url, timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{url} not ready after {timeout}s:\n{self.log()}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill_group(self) -> None:
        """SIGKILL the process and its children: a crash, not a shutdown."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; SIGKILL the group if it hangs."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def wait_quiet(calls: Callable[[], int], quiet: float = 1.0, timeout: float = 15.0) -> int:
    """Wait until a fake's call count stops growing for ``quiet`` seconds; return the count.

    The worker's periodic chores (idle stop, reconciliation) call Compute once at start; a
    test that counts the calls of one burst snapshots after they are done.
    """
    deadline = time.monotonic() + timeout
    last, since = calls(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = calls()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last
