"""Per-VM locks with expiry and the progress of each start, on disk so a retry resumes, never repeats."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable

from gitlab_hook.sqlite_db import Database

SCHEMA = """
create table if not exists vm_locks (
    name    text primary key,
    owner   text not null,
    expires real not null
);
create table if not exists vm_progress (
    key     text primary key,
    data    text not null,
    updated real not null
);
"""


class VmState:
    """SQLite-backed locks and progress records, shared by every worker thread and process on a host."""

    def __init__(self, path: Path | str, *, clock: Callable[[], float] = time.time):
        self.path, self.clock = str(path), clock
        self.db = Database(path, schema=SCHEMA, synchronous="full")
        self._conn = self.db.conn

    def try_lock(self, name: str, owner: str, ttl: float) -> bool:
        """Take ``name`` for ``ttl`` seconds unless someone else holds it unexpired; re-entrant per owner."""
        now = self.clock()

        def work(c: sqlite3.Connection) -> bool:
            row = c.execute("select owner, expires from vm_locks where name = ?", (name,)).fetchone()
            if row and row[0] != owner and row[1] > now:
                return False
            c.execute("insert or replace into vm_locks (name, owner, expires) values (?, ?, ?)",
                      (name, owner, now + ttl))
            return True

        return self.db.tx(work)

    def unlock(self, name: str, owner: str) -> None:
        """Release a lock we hold (a lock held by someone else is left alone)."""
        self.db.tx(lambda c: c.execute("delete from vm_locks where name = ? and owner = ?", (name, owner)))

    def holder(self, name: str) -> str | None:
        """Who holds an unexpired lock, if anyone."""
        row = self._conn().execute("select owner from vm_locks where name = ? and expires > ?",
                                   (name, self.clock())).fetchone()
        return row[0] if row else None

    def progress(self, key: str) -> dict[str, Any]:
        """The saved progress of a multi-step effect (empty when it has not begun)."""
        row = self._conn().execute("select data from vm_progress where key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else {}

    def save_progress(self, key: str, **changes: Any) -> dict[str, Any]:
        """Merge ``changes`` into a progress record and persist it before going on."""
        def work(c: sqlite3.Connection) -> dict[str, Any]:
            row = c.execute("select data from vm_progress where key = ?", (key,)).fetchone()
            data = {**(json.loads(row[0]) if row else {}), **changes}
            c.execute("insert or replace into vm_progress (key, data, updated) values (?, ?, ?)",
                      (key, json.dumps(data, sort_keys=True), self.clock()))
            return data

        return self.db.tx(work)

    def prune(self, older_than: float) -> int:
        """Forget progress records untouched for ``older_than`` seconds."""
        return self.db.tx(lambda c: c.execute("delete from vm_progress where updated < ?",
                                              (self.clock() - older_than,)).rowcount)
