"""Small durable memos for the periodic chores: idle-since times, what the chat was told, runners we paused.

With the SQLite VmState they live in a table of their own (``chore_memos``, same file), not in
VmState's progress records, which may be pruned by age while a memo must live as long as what it
describes (a runner we paused stays paused for a whole weekend). With another VmState backend
(Redis) they are progress records under ``memo:``; the chores rewrite the long-lived ones every
round, so pruning by age does not lose them. ``memos_for(state)`` picks the right one.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Protocol, Union

from gitlab_hook.sqlite_db import Database
from gitlab_hook.vm_state import VmState

SCHEMA = """
create table if not exists chore_memos (
    key     text primary key,
    data    text not null,
    updated real not null
);
"""

_MISSING = object()


class Memos:
    """Key → small JSON object, merged and swapped atomically across threads and processes."""

    def __init__(self, path: Path | str, *, clock: Callable[[], float] = time.time):
        self.path, self.clock = str(path), clock
        self.db = Database(path, schema=SCHEMA, synchronous="full")

    def get(self, key: str) -> dict[str, Any]:
        """The memo (empty when there is none)."""
        row = self.db.conn().execute("select data from chore_memos where key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else {}

    def update(self, key: str, **changes: Any) -> dict[str, Any]:
        """Merge ``changes`` into the memo and persist it; returns the new memo."""
        return self.db.tx(lambda c: self._write(c, key, changes)[1])

    def swap(self, key: str, field: str, value: Any) -> Any:
        """Set one field and return its previous value (None when it was unset), atomically."""
        return self.db.tx(lambda c: self._write(c, key, {field: value})[0].get(field))

    def changed(self, key: str, field: str, value: Any) -> bool:
        """Set one field; True when that changed its value (the "tell once per change" test)."""
        def work(c: sqlite3.Connection) -> bool:
            old, _ = self._write(c, key, {field: value})
            return old.get(field, _MISSING) != value

        return self.db.tx(work)

    def _write(self, c: sqlite3.Connection, key: str, changes: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Merge changes into one memo inside a transaction; returns (old, new)."""
        row = c.execute("select data from chore_memos where key = ?", (key,)).fetchone()
        old = json.loads(row[0]) if row else {}
        new = {**old, **changes}
        c.execute("insert or replace into chore_memos (key, data, updated) values (?, ?, ?)",
                  (key, json.dumps(new, sort_keys=True), self.clock()))
        return old, new


class _ProgressStore(Protocol):
    """What StateMemos needs of a VmState-like store (SQLite or Redis)."""

    def try_lock(self, name: str, owner: str, ttl: float) -> bool: ...

    def unlock(self, name: str, owner: str) -> None: ...

    def progress(self, key: str) -> dict[str, Any]: ...

    def save_progress(self, key: str, **changes: Any) -> dict[str, Any]: ...


class StateMemos:
    """The same memos as progress records ``memo:{key}`` of any VmState-like store (Redis)."""

    def __init__(self, state: _ProgressStore, *, sleep: Callable[[float], None] = time.sleep):
        self.state, self.sleep = state, sleep

    def get(self, key: str) -> dict[str, Any]:
        """The memo (empty when there is none)."""
        return self.state.progress(f"memo:{key}")

    def update(self, key: str, **changes: Any) -> dict[str, Any]:
        """Merge ``changes`` into the memo and persist it; returns the new memo."""
        return self.state.save_progress(f"memo:{key}", **changes)

    def swap(self, key: str, field: str, value: Any) -> Any:
        """Set one field and return its previous value (None when it was unset)."""
        old = self._swap(key, field, value)
        return None if old is _MISSING else old

    def changed(self, key: str, field: str, value: Any) -> bool:
        """Set one field; True when that changed its value."""
        return self._swap(key, field, value) != value

    def _swap(self, key: str, field: str, value: Any) -> Any:
        """Set one field, returning the old value or _MISSING, under a short lock (one swapper at a time)."""
        owner, lock = f"memo-swap:{id(self)}", f"memo:{key}"
        for _ in range(50):  # held for two quick calls: wait briefly, then go on regardless
            if self.state.try_lock(lock, owner, 5.0):
                break
            self.sleep(0.02)
        try:
            old = self.get(key).get(field, _MISSING)
            self.update(key, **{field: value})
            return old
        finally:
            self.state.unlock(lock, owner)


AnyMemos = Union[Memos, StateMemos]


def memos_for(state: Any, *, clock: Callable[[], float] = time.time) -> AnyMemos:
    """Memos beside a SQLite VmState (own table), else as progress records of the store."""
    if isinstance(state, VmState):
        return Memos(state.path, clock=clock)
    return StateMemos(state)
