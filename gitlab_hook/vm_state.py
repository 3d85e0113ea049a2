"""Per-VM locks with expiry and the progress of each start, on disk so a retry resumes, never repeats."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable

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
        self._local = threading.local()
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn().executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
            conn.execute("pragma journal_mode=wal")
            conn.execute("pragma synchronous=full")
            self._local.conn = conn
        return conn

    def try_lock(self, name: str, owner: str, ttl: float) -> bool:
        """Take ``name`` for ``ttl`` seconds unless someone else holds it unexpired; re-entrant per owner."""
        now = self.clock()
        c = self._conn()
        c.execute("begin immediate")
        try:
            row = c.execute("select owner, expires from vm_locks where name = ?", (name,)).fetchone()
            if row and row[0] != owner and row[1] > now:
                c.execute("rollback")
                return False
            c.execute("insert or replace into vm_locks (name, owner, expires) values (?, ?, ?)",
                      (name, owner, now + ttl))
            c.execute("commit")
            return True
        except BaseException:
            c.execute("rollback")
            raise

    def unlock(self, name: str, owner: str) -> None:
        """Release a lock we hold (a lock held by someone else is left alone)."""
        self._conn().execute("delete from vm_locks where name = ? and owner = ?", (name, owner))

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
        data = {**self.progress(key), **changes}
        self._conn().execute("insert or replace into vm_progress (key, data, updated) values (?, ?, ?)",
                             (key, json.dumps(data, sort_keys=True), self.clock()))
        return data

    def prune(self, older_than: float) -> int:
        """Forget progress records untouched for ``older_than`` seconds."""
        return self._conn().execute("delete from vm_progress where updated < ?",
                                    (self.clock() - older_than,)).rowcount
