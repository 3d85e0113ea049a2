"""The long-running roles: web (gunicorn), worker (huey consumer), and serve (both, supervised)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from typing import Sequence

from gitlab_hook.taskqueue import TaskQueue, make_huey
from gitlab_hook.settings import Settings
from gitlab_hook.stores import open_stores
from gitlab_hook.telegram import escape
from gitlab_hook.wiring import build_worker_parts, make_notifier
from gitlab_hook.worker import ActionRunner, Redriver, make_owner

log = logging.getLogger(__name__)


def run_web(settings: Settings, *, host: str, port: int) -> None:
    """Serve the webhook with gunicorn until SIGTERM; in-flight requests finish first."""
    from gitlab_hook.server import gunicorn_options, prepare_multiprocess_metrics, run_gunicorn

    env = settings.env
    metrics_dir = prepare_multiprocess_metrics(settings.data_dir) if env.WEB_WORKERS > 1 else None

    def factory():
        # Imported after PROMETHEUS_MULTIPROC_DIR is set, in each gunicorn worker after fork.
        from gitlab_hook.app import create_app
        from gitlab_hook.metrics import WebMetrics

        return create_app(settings, metrics=WebMetrics(metrics_dir))

    opts = gunicorn_options(host=host, port=port, workers=env.WEB_WORKERS, threads=env.WEB_THREADS)
    run_gunicorn(factory, opts, metrics_dir=metrics_dir)


def build_worker(settings: Settings) -> tuple[TaskQueue, Redriver]:
    """Wire the queue to the action runner and the periodic chores."""
    env = settings.env
    queue = TaskQueue(make_huey(settings))
    stores = open_stores(settings)  # SQLite in DATA_DIR, or Redis with REDIS_URL
    store = stores.intake
    owner = make_owner()
    notifier = make_notifier(settings)

    def alert(text: str) -> None:
        log.error("ALERT: %s", text)
        notifier.send_html("⚠️ " + escape(text))

    handlers, chores = build_worker_parts(settings, notifier, stores, owner=owner)
    runner = ActionRunner(store, handlers, alert=alert, give_up_after=env.TASK_GIVE_UP_AFTER, owner=owner)
    redriver = Redriver(store, queue.submit, owner, queued_action_ids=queue.queued_action_ids)

    def housekeeping() -> None:
        n = store.prune(dedupe_ttl=env.DEDUPE_TTL_SECONDS, dedupe_max=env.DEDUPE_MAX_ENTRIES)
        if n:
            log.info("housekeeping: forgot %d old records", n)

    queue.attach(runner, periodic=[redriver, housekeeping, *chores])
    return queue, redriver


def run_worker(settings: Settings) -> None:
    """Run tasks until SIGTERM; the running ones finish, the rest stay queued on disk."""
    queue, redriver = build_worker(settings)
    redriver.at_start()
    consumer = queue.huey.create_consumer(
        workers=settings.env.WORKER_THREADS, worker_type="thread", periodic=True,
        # Poll often: an idle queue answers a new push within ~50 ms, at a trivial cost in SQLite reads.
        initial_delay=0.02, backoff=1.5, max_delay=0.1,
        graceful_signal="TERM", shutdown_timeout=25)
    # huey restarts itself on SIGHUP with os.execl(python, *sys.argv), which would run our
    # __main__.py as a plain script (wrong import path). A closed terminal means "stop": drain.
    consumer._signal_actions[signal.SIGHUP] = (False, True)
    log.info("worker started: %d threads", settings.env.WORKER_THREADS)
    consumer.run()


class Supervisor:
    """``serve``: web and worker as child processes; restarts a crashed child; SIGTERM drains both."""

    def __init__(self, commands: dict[str, Sequence[str]], env: dict[str, str]):
        self.commands, self.env = commands, env
        self.children: dict[str, subprocess.Popen] = {}
        self.stopping = False

    def _start(self, name: str) -> None:
        self.children[name] = subprocess.Popen(list(self.commands[name]), env=self.env)
        log.info("started %s (pid %d)", name, self.children[name].pid)

    def _on_signal(self, signum: int, frame) -> None:
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        # A closed terminal (``make run``) sends SIGHUP: stop the tree too, never leave the children behind.
        signal.signal(signal.SIGHUP, self._on_signal)
        for name in self.commands:
            self._start(name)
        restarts: dict[str, list[float]] = {n: [] for n in self.commands}
        while not self.stopping:
            time.sleep(0.2)
            for name, proc in list(self.children.items()):
                code = proc.poll()
                if code is None or self.stopping:
                    continue
                recent = [t for t in restarts[name] if time.monotonic() - t < 60]
                if len(recent) >= 5:
                    log.error("%s exited with %s and keeps crashing; stopping everything", name, code)
                    self.stopping = True
                    break
                log.error("%s exited with %s; restarting it", name, code)
                restarts[name] = recent + [time.monotonic()]
                self._start(name)
        return self.shutdown()

    def shutdown(self, timeout: float = 30.0) -> int:
        for proc in self.children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        worst = 0
        for name, proc in self.children.items():
            try:
                code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("%s did not stop in %.0fs; killing it", name, timeout)
                proc.kill()
                code = proc.wait()
            log.info("%s stopped (exit %s)", name, code)
            worst = worst or (code if code not in (0, -signal.SIGTERM) else 0)
        return worst


def serve_commands(host: str, port: int) -> dict[str, list[str]]:
    """The child processes ``serve`` runs."""
    me = [sys.executable, "-m", "gitlab_hook"]
    # The bot idles (one dry-run line) without TELEGRAM_BOT_TOKEN, so it never restart-loops.
    return {"web": me + ["web", "--host", host, "--port", str(port), "--quiet"], "worker": me + ["worker"],
            "bot": me + ["bot"]}


def child_env(secret: str | None) -> dict[str, str]:
    """The children's environment: ours, plus the generated secret when there was none."""
    env = dict(os.environ)
    if secret:
        env["GITLAB_WEBHOOK_SECRET"] = secret
    return env
