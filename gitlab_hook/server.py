"""Run a WSGI app under gunicorn (the production server) with our defaults."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from gunicorn.app.base import BaseApplication

log = logging.getLogger(__name__)


def gunicorn_options(*, host: str, port: int, workers: int, threads: int) -> dict[str, Any]:
    """The server setup used by ``gitlab-hook web`` and by the benchmark's bare route alike."""
    return {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": "gthread",
        "threads": threads,
        # GitLab waits 10 s; answer long before, and never hang on a slow client.
        "timeout": 30,
        "graceful_timeout": 20,
        "keepalive": 5,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "warning",
        "limit_request_line": 8190,
        "limit_request_fields": 100,
        # gunicorn 27's control socket lives in $HOME (absent for a non-root container user) and
        # is shared by servers started side by side; we do not use it.
        "control_socket_disable": True,
    }


class _App(BaseApplication):
    def __init__(self, factory: Callable[[], Any], options: dict[str, Any]):
        self._factory = factory
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self._factory()


def prepare_multiprocess_metrics(data_dir: Path) -> str:
    """Give gunicorn workers a fresh shared directory for Prometheus values (must precede the import)."""
    path = data_dir / f"prometheus-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return str(path)


def run_gunicorn(factory: Callable[[], Any], options: dict[str, Any], *, metrics_dir: str | None = None) -> None:
    """Serve until SIGTERM/SIGINT; gunicorn drains in-flight requests before exiting."""
    if metrics_dir:
        def child_exit(server: Any, worker: Any) -> None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(worker.pid, metrics_dir)

        options = {**options, "child_exit": child_exit}
    try:
        _App(factory, options).run()
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
