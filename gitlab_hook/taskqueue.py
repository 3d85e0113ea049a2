"""The task queue: huey on SQLite (default) or Redis (``REDIS_URL``), and the tasks it carries."""

from __future__ import annotations

import logging
from typing import Callable, Iterable

import redis
from huey import RedisHuey, SqliteHuey, crontab
from huey.api import Huey
from huey.exceptions import RetryTask

from gitlab_hook.settings import Settings

log = logging.getLogger(__name__)

QUEUE_NAME = "gitlab-hook"


def make_huey(settings: Settings) -> Huey:
    """Build the huey instance the web and the worker share (same storage, same task names)."""
    redis_url = settings.env.REDIS_URL
    if redis_url is not None:
        # Our own pool, for timeouts: huey's default connection would wait forever on a dead network.
        pool = redis.ConnectionPool.from_url(redis_url.get_secret_value(), socket_timeout=10,
                                             socket_connect_timeout=3, socket_keepalive=True,
                                             health_check_interval=30)
        return RedisHuey(QUEUE_NAME, connection_pool=pool, results=False, utc=True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # fsync=True: a queued task survives power loss too (measured cheap; see README benchmarks).
    return SqliteHuey(QUEUE_NAME, filename=str(settings.data_dir / "queue.db"), results=False, utc=True,
                      fsync=True, timeout=10)


class TaskQueue:
    """Our tasks registered on a huey instance; the worker attaches what runs them."""

    def __init__(self, huey: Huey):
        self.huey = huey
        self._runner: Callable[[int], float | None] | None = None
        self._periodic: list[Callable[[], None]] = []
        self._run_action = huey.task(name="run_action")(self._execute)
        self._redrive_task = huey.periodic_task(crontab(minute="*"), name="redrive")(self._tick)

    def _execute(self, action_id: int) -> None:
        if self._runner is None:  # pragma: no cover - only a worker consumes tasks
            raise RuntimeError("this process has no action runner attached")
        delay = self._runner(action_id)
        if delay is not None:
            # Our outbox row already says when it is due; this only asks huey to come back then.
            raise RetryTask(delay=delay)

    def _tick(self) -> None:
        for fn in self._periodic:
            try:
                fn()
            except Exception:  # one failing chore must not stop the others
                log.exception("periodic chore %s failed", getattr(fn, "__name__", fn))

    def attach(self, runner: Callable[[int], float | None], periodic: Iterable[Callable[[], None]] = ()) -> None:
        """Worker side: ``runner(action_id)`` returns None when finished, or seconds until a retry."""
        self._runner = runner
        self._periodic = list(periodic)

    def submit(self, action_ids: Iterable[int]) -> None:
        """Queue the given outbox rows for running."""
        for action_id in action_ids:
            self._run_action(action_id)

    def queued_action_ids(self) -> set[int]:
        """Outbox ids that have a run_action task waiting in huey's queue or schedule."""
        ids: set[int] = set()
        storage = self.huey.storage
        name = self.huey._registry.task_to_string(self._run_action.task_class)
        for data in [*storage.enqueued_items(), *storage.scheduled_items()]:
            try:
                msg = self.huey.serializer.deserialize(data)
            except Exception:  # a message from another version: not ours to judge
                continue
            if msg.name == name and msg.args:
                ids.add(int(msg.args[0]))
        return ids

    def depth(self) -> tuple[int, int]:
        """(tasks waiting, tasks scheduled for later)."""
        return self.huey.pending_count(), self.huey.scheduled_count()
