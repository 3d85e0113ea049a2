"""Durable intake: dedupe records and the outbox of accepted actions, in one SQLite transaction.

huey removes a task from storage when a worker picks it up, so a worker killed mid-task would
lose it. The outbox row written here, in the same transaction as the dedupe record, is what
makes an accepted event survive: a row stays until its effect is confirmed, and unfinished
rows are handed to the queue again at worker start and periodically (see ``tasks.redrive``).
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from gitlab_hook.planner import Action
from gitlab_hook.sqlite_db import Database, StorageError  # noqa: F401  (StorageError is part of this API)

SCHEMA = """
create table if not exists deliveries (
    dedupe_key text primary key,
    delivery   text not null,
    event      text not null,
    received   real not null
);
create index if not exists deliveries_received on deliveries (received);
create table if not exists actions (
    id          integer primary key autoincrement,
    key         text not null,
    kind        text not null,
    payload     text not null,
    delivery    text not null,
    state       text not null default 'pending',  -- pending | running | done | failed
    attempts    integer not null default 0,
    created     real not null,
    updated     real not null,
    not_before  real not null default 0,
    lease_owner text,
    lease_until real,
    last_error  text,
    result      text
);
create index if not exists actions_key_state on actions (key, state);
create index if not exists actions_state on actions (state, not_before);
create table if not exists counters (
    name   text not null,
    labels text not null,
    value  integer not null default 0,
    primary key (name, labels)
);
create table if not exists journal (
    id        integer primary key autoincrement,
    action_id integer not null,
    at        real not null,
    entry     text not null
);
"""


@dataclass(frozen=True)
class Accepted:
    """What ``accept`` did with a delivery."""

    delivery: str
    duplicate: bool
    action_ids: tuple[int, ...] = ()
    new_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class ActionRow:
    """One outbox row as the worker sees it."""

    id: int
    key: str
    kind: str
    payload: dict[str, Any]
    delivery: str
    state: str
    attempts: int
    created: float
    last_error: str | None = None
    result: str | None = None


_ROW_COLS = "id, key, kind, payload, delivery, state, attempts, created, last_error, result"


def _row(r: sqlite3.Row | tuple) -> ActionRow:
    return ActionRow(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6], r[7], r[8], r[9])


# Seconds from an accepted delivery to its effect done (a start requested, an alert sent).
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)


class OutcomeMethods:
    """How a running row ends, written once over a store's own ``_finish`` (SQLite or Redis)."""

    clock: Callable[[], float]

    def _finish(self, action_id: int, owner: str, state: str, outcome: str, **kw: Any) -> bool:
        raise NotImplementedError

    def complete(self, action_id: int, owner: str, result: str, journal: Iterable[str] = ()) -> bool:
        """Mark done; journal entries (dry-run effects) are written with it, atomically."""
        return self._finish(action_id, owner, "done", "done", result=result, journal=journal)

    def retry_later(self, action_id: int, owner: str, error: str, delay: float) -> bool:
        """Put a row back as pending, due after ``delay`` seconds."""
        return self._finish(action_id, owner, "pending", "retry", error=error, not_before=self.clock() + delay)

    def fail(self, action_id: int, owner: str, error: str) -> bool:
        """Give up on a row for good."""
        return self._finish(action_id, owner, "failed", "failed", error=error)


class IntakeStore(OutcomeMethods):
    """SQLite-backed dedupe + outbox. Safe for many threads and processes on one host."""

    def __init__(self, path: Path | str, *, clock: Callable[[], float] = time.time, busy_timeout: float = 5.0):
        self.path = str(path)
        self.clock = clock
        # FULL: an accepted delivery survives power loss, not only a process crash.
        self.db = Database(path, schema=SCHEMA, synchronous="full", lock_timeout=busy_timeout)
        self._tx = self.db.tx
        self._conn = self.db.conn

    # --- web side -------------------------------------------------------------------------

    def accept(self, dedupe_key: str, event: str, actions: Sequence[Action]) -> Accepted:
        """Record a delivery and its actions atomically; a known dedupe key is a duplicate."""
        now = self.clock()
        delivery = uuid.uuid4().hex

        def work(c: sqlite3.Connection) -> Accepted:
            # One statement on the hot path: a duplicate is the rare case that needs a second one.
            if c.execute("insert or ignore into deliveries (dedupe_key, delivery, event, received) values (?, ?, ?, ?)",
                         (dedupe_key, delivery, event, now)).rowcount == 0:
                found = c.execute("select delivery from deliveries where dedupe_key = ?", (dedupe_key,)).fetchone()
                return Accepted(found[0], duplicate=True)
            ids, new = [], []
            for a in actions:
                if a.once:
                    same = c.execute("select id from actions where key = ? and state != 'failed' limit 1",
                                     (a.key,)).fetchone()
                else:
                    same = c.execute("select id from actions where key = ? and state = 'pending' limit 1",
                                     (a.key,)).fetchone()
                if same:
                    ids.append(same[0])
                    continue
                cur = c.execute(
                    "insert into actions (key, kind, payload, delivery, created, updated) values (?, ?, ?, ?, ?, ?)",
                    (a.key, a.kind, json.dumps(a.payload, sort_keys=True), delivery, now, now))
                ids.append(cur.lastrowid)
                new.append(cur.lastrowid)
            return Accepted(delivery, False, tuple(ids), tuple(new))

        # Group commit: concurrent deliveries in this process share one transaction and one fsync.
        return self.db.batched_tx(work)

    def ping(self) -> None:
        """Prove the storage can be written (readiness)."""
        self._tx(lambda c: c.execute("insert or replace into counters (name, labels, value) values ('ping', '', 0)"))

    # --- worker side ----------------------------------------------------------------------

    def claim(self, action_id: int, owner: str, lease: float) -> ActionRow | None:
        """Take a row for running; None when it is done, failed, not due, or leased to a live worker."""
        now = self.clock()

        def work(c: sqlite3.Connection) -> ActionRow | None:
            cur = c.execute(
                "update actions set state = 'running', lease_owner = ?, lease_until = ?, attempts = attempts + 1,"
                " updated = ? where id = ? and ((state = 'pending' and not_before <= ?)"
                " or (state = 'running' and lease_until < ?))",
                (owner, now + lease, now, action_id, now, now))
            if cur.rowcount != 1:
                return None
            return _row(c.execute(f"select {_ROW_COLS} from actions where id = ?", (action_id,)).fetchone())

        return self._tx(work)

    def renew(self, action_id: int, owner: str, lease: float) -> bool:
        """Extend a lease while a long task runs."""
        now = self.clock()
        return self._tx(lambda c: c.execute(
            "update actions set lease_until = ? where id = ? and state = 'running' and lease_owner = ?",
            (now + lease, action_id, owner)).rowcount == 1)

    def _finish(self, action_id: int, owner: str, state: str, outcome: str, *, error: str | None = None,
                result: str | None = None, not_before: float = 0.0, journal: Iterable[str] = ()) -> bool:
        now = self.clock()

        def work(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "update actions set state = ?, updated = ?, not_before = ?, last_error = coalesce(?, last_error),"
                " result = coalesce(?, result), lease_owner = null, lease_until = null"
                " where id = ? and state = 'running' and lease_owner = ?",
                (state, now, not_before, error, result, action_id, owner))
            if cur.rowcount != 1:
                return False  # the lease was lost to another worker: its outcome wins
            kind, created = c.execute("select kind, created from actions where id = ?", (action_id,)).fetchone()
            self._bump(c, "task_outcomes", json.dumps([kind, outcome]))
            if outcome == "done":
                self._observe_latency(c, kind, now - created)
            for entry in journal:
                c.execute("insert into journal (action_id, at, entry) values (?, ?, ?)", (action_id, now, entry))
            return True

        return self._tx(work)

    def release_orphans(self, is_orphan: Callable[[str], bool]) -> list[int]:
        """Return running rows whose owner is gone (e.g. a killed worker) to pending; their ids."""
        def work(c: sqlite3.Connection) -> list[int]:
            rows = c.execute("select id, lease_owner from actions where state = 'running'").fetchall()
            ids = [r[0] for r in rows if r[1] and is_orphan(r[1])]
            for i in ids:
                c.execute("update actions set state = 'pending', lease_owner = null, lease_until = null,"
                          " not_before = 0 where id = ?", (i,))
            return ids

        return self._tx(work)

    def redrivable(self, grace: float = 30.0, limit: int = 1000) -> list[int]:
        """Rows that should be running but may have no queued task: due and untouched, or lease expired."""
        now = self.clock()
        rows = self._conn().execute(
            "select id from actions where (state = 'pending' and not_before <= ? and updated <= ?)"
            " or (state = 'running' and lease_until < ?) order by id limit ?",
            (now, now - grace, now, limit)).fetchall()
        return [r[0] for r in rows]

    def get(self, action_id: int) -> ActionRow | None:
        """One row, for tests and the CLI."""
        r = self._conn().execute(f"select {_ROW_COLS} from actions where id = ?", (action_id,)).fetchone()
        return _row(r) if r else None

    def rows(self, state: str | None = None) -> list[ActionRow]:
        """All rows (optionally in one state), oldest first."""
        sql, args = f"select {_ROW_COLS} from actions", ()
        if state:
            sql, args = sql + " where state = ?", (state,)
        return [_row(r) for r in self._conn().execute(sql + " order by id", args).fetchall()]

    def journal(self) -> list[tuple[int, str]]:
        """Dry-run effects, in order: (action id, entry)."""
        return [(r[0], r[1]) for r in self._conn().execute("select action_id, entry from journal order by id")]

    # --- housekeeping and metrics ---------------------------------------------------------

    def prune(self, *, dedupe_ttl: float, dedupe_max: int, finished_ttl: float = 14 * 86400) -> int:
        """Forget old dedupe records (by age, then by count) and long-finished rows."""
        now = self.clock()

        def work(c: sqlite3.Connection) -> int:
            n = c.execute("delete from deliveries where received < ?", (now - dedupe_ttl,)).rowcount
            n += c.execute(
                "delete from deliveries where dedupe_key in (select dedupe_key from deliveries"
                " order by received desc limit -1 offset ?)", (dedupe_max,)).rowcount
            n += c.execute("delete from actions where state in ('done', 'failed') and updated < ?",
                           (now - finished_ttl,)).rowcount
            n += c.execute("delete from journal where at < ?", (now - finished_ttl,)).rowcount
            return n

        return self._tx(work)

    def _observe_latency(self, c: sqlite3.Connection, kind: str, seconds: float) -> None:
        # A Prometheus histogram kept in durable counters, so every process sees the same one.
        for le in LATENCY_BUCKETS:
            if seconds <= le:
                self._bump(c, "action_seconds_bucket", json.dumps([kind, str(le)]))
        self._bump(c, "action_seconds_count", json.dumps([kind]))
        self._bump(c, "action_seconds_sum_ms", json.dumps([kind]), int(seconds * 1000))

    def latency_histograms(self) -> dict[str, tuple[list[tuple[str, int]], int, float]]:
        """kind → (cumulative buckets [(le, count)], count, sum in seconds): accepted → done."""
        buckets = self.counters("action_seconds_bucket")
        counts = self.counters("action_seconds_count")
        sums = self.counters("action_seconds_sum_ms")
        out = {}
        for (kind,), count in counts.items():
            bs = [(str(le), buckets.get((kind, str(le)), 0)) for le in LATENCY_BUCKETS] + [("+Inf", count)]
            out[kind] = (bs, count, sums.get((kind,), 0) / 1000)
        return out

    @staticmethod
    def _bump(c: sqlite3.Connection, name: str, labels: str, by: int = 1) -> None:
        c.execute("insert into counters (name, labels, value) values (?, ?, ?)"
                  " on conflict (name, labels) do update set value = value + ?", (name, labels, by, by))

    def counters(self, name: str) -> dict[tuple[str, ...], int]:
        """A durable counter's values by label tuple (shared by every process)."""
        rows = self._conn().execute("select labels, value from counters where name = ?", (name,)).fetchall()
        return {tuple(json.loads(r[0])): r[1] for r in rows}

    def state_counts(self) -> dict[tuple[str, str], int]:
        """Outbox rows by (kind, state)."""
        rows = self._conn().execute("select kind, state, count(*) from actions group by kind, state").fetchall()
        return {(r[0], r[1]): r[2] for r in rows}

    def dedupe_size(self) -> int:
        return self._conn().execute("select count(*) from deliveries").fetchone()[0]
