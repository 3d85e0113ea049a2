"""The worker: runs outbox actions with retries and backoff, re-drives lost ones, keeps house."""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import uuid
from typing import Callable, Mapping

from gitlab_hook.effects import Context, Handler, PermanentError, TransientError
from gitlab_hook.intake import IntakeStore

log = logging.getLogger(__name__)

LEASE_SECONDS = 120.0
BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0


def backoff(attempt: int, *, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """About a second, doubling per attempt, capped near a minute, with ±20 % jitter."""
    raw = min(cap, base * (2 ** max(0, attempt - 1)))
    return raw * random.uniform(0.8, 1.2)


def make_owner() -> str:
    """A lease owner id: host, pid and a per-start nonce (pids get reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_gone(owner: str, *, me: str) -> bool:
    """True when a lease owner is a dead process on this host, or an earlier start of this pid."""
    try:
        host, pid_s, nonce = owner.rsplit(":", 2)
        pid = int(pid_s)
    except ValueError:
        return False
    my_host, my_pid, my_nonce = me.rsplit(":", 2)
    if host != my_host:
        return False  # another machine's worker: leave it to lease expiry
    if pid == int(my_pid):
        return nonce != my_nonce
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class ActionRunner:
    """Claims an outbox row, runs its handler, records the outcome; idempotent per row."""

    def __init__(self, store: IntakeStore, handlers: Mapping[str, Handler], *,
                 alert: Callable[[str], None], give_up_after: float = 3600.0,
                 owner: str | None = None, lease: float = LEASE_SECONDS,
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.handlers = dict(handlers)
        self.alert = alert
        self.give_up_after = give_up_after
        self.owner = owner or make_owner()
        self.lease = lease
        self.clock = clock

    def __call__(self, action_id: int) -> float | None:
        """Run one row; return None when finished (or not ours), else seconds until the retry."""
        row = self.store.claim(action_id, self.owner, self.lease)
        if row is None:
            log.debug("action %s not claimable (done, running elsewhere, or not due)", action_id)
            return None
        handler = self.handlers.get(row.kind)
        if handler is None:
            self._give_up(row.id, row.key, f"no handler for action kind {row.kind!r}")
            return None
        ctx = Context(row.id, row.attempts, lambda: self.store.renew(row.id, self.owner, self.lease))
        started = time.monotonic()
        try:
            effect = handler(row.payload, ctx)
        except PermanentError as exc:
            self._give_up(row.id, row.key, str(exc))
            return None
        except Exception as exc:  # transient by default: bugs and outages alike get retried, then alerted
            retry_after = exc.retry_after if isinstance(exc, TransientError) else None
            if not isinstance(exc, TransientError):
                log.exception("action %s (%s) raised", row.id, row.key)
            if self.clock() - row.created >= self.give_up_after:
                self._give_up(row.id, row.key, f"still failing after {row.attempts} attempts: {exc}")
                return None
            delay = max(backoff(row.attempts), retry_after or 0.0)
            self.store.retry_later(row.id, self.owner, str(exc)[:1000], delay)
            log.warning("action %s (%s) failed (attempt %s), retrying in %.1fs: %s",
                        row.id, row.key, row.attempts, delay, exc)
            return delay
        if self.store.complete(row.id, self.owner, effect.summary, effect.journal):
            log.info("action %s (%s) done in %.3fs: %s", row.id, row.key, time.monotonic() - started,
                     effect.summary)
        else:
            log.warning("action %s (%s) finished after its lease was taken over", row.id, row.key)
        return None

    def _give_up(self, action_id: int, key: str, reason: str) -> None:
        self.store.fail(action_id, self.owner, reason[:1000])
        log.error("action %s (%s) failed for good: %s", action_id, key, reason)
        try:
            self.alert(f"gitlab-hook gave up on {key}: {reason}")
        except Exception:
            log.exception("could not send the failure alert for action %s", action_id)


class Redriver:
    """Hands unfinished outbox rows back to the queue: at worker start, then periodically."""

    def __init__(self, store: IntakeStore, submit: Callable[[list[int]], None], owner: str, *,
                 queued_action_ids: Callable[[], set[int]] = set, grace: float = 30.0):
        self.store, self.submit, self.owner, self.grace = store, submit, owner, grace
        self.queued_action_ids = queued_action_ids

    def at_start(self) -> int:
        """Queue at once every unfinished row that has no task waiting in the queue.

        That covers rows a dead worker held (released here), tasks a killed worker had already
        taken out of huey's storage but not yet claimed, and enqueues that failed after the
        outbox commit. Rows whose task still waits are left alone: no no-op tasks in front of new work.
        """
        released = self.store.release_orphans(lambda o: owner_is_gone(o, me=self.owner))
        unfinished = self.store.redrivable(grace=0.0, limit=1_000_000)
        waiting = self.queued_action_ids()
        missing = [i for i in unfinished if i not in waiting]
        if missing:
            self.submit(missing)
        log.info("worker start: %d orphaned rows released, %d rows without a queued task re-queued",
                 len(released), len(missing))
        return len(missing)

    def __call__(self) -> int:
        ids = self.store.redrivable(grace=self.grace)
        if ids:
            log.warning("re-driving %d outbox rows that had no queued task", len(ids))
            self.submit(ids)
        return len(ids)

