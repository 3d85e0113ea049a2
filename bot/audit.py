"""The audit trail of ChatOps: who asked for what, where, and what came of it; and the announcements.

Every state-changing command is recorded (queued, done, cancelled, expired, refused, dry-run,
failed), as are refused attempts at any command that needs a role. Rows live in
``DATA_DIR/intake.db`` beside the outbox, so an audit row can name the action ids it queued.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from gitlab_hook.sqlite_db import Database
from gitlab_hook.telegram_format import escape

SCHEMA = """
create table if not exists bot_audit (
    id         integer primary key autoincrement,
    at         real not null,
    actor_id   integer,
    actor      text not null,
    role       text,
    chat_id    integer,
    command    text not null,
    args       text not null default '{}',
    outcome    text not null,  -- queued | done | dry-run | cancelled | expired | refused | failed | unchanged
    detail     text not null default ''
);
create index if not exists bot_audit_at on bot_audit (at);
"""


@dataclass(frozen=True)
class AuditEntry:
    """One row of the trail."""

    id: int
    at: float
    actor_id: int | None
    actor: str
    role: str | None
    chat_id: int | None
    command: str
    args: dict[str, Any]
    outcome: str
    detail: str


class AuditLog:
    """Append-only audit rows in SQLite."""

    def __init__(self, path: Path | str, *, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.db = Database(path, schema=SCHEMA, synchronous="full")

    def record(self, *, actor_id: int | None, actor: str, role: str | None, chat_id: int | None, command: str,
               args: dict[str, Any] | None, outcome: str, detail: str = "") -> int:
        """Append one row; returns its id."""
        data = json.dumps(args or {}, sort_keys=True, default=str)
        return self.db.tx(lambda c: c.execute(
            "insert into bot_audit (at, actor_id, actor, role, chat_id, command, args, outcome, detail)"
            " values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self.clock(), actor_id, actor, role, chat_id, command, data, outcome, detail[:2000])).lastrowid)

    def recent(self, limit: int = 50) -> list[AuditEntry]:
        """Newest first."""
        rows = self.db.conn().execute(
            "select id, at, actor_id, actor, role, chat_id, command, args, outcome, detail from bot_audit"
            " order by id desc limit ?", (limit,)).fetchall()
        return [AuditEntry(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]), r[8], r[9]) for r in rows]


_ICONS = {"started": "▶️", "stopped": "⏹", "resized": "🔧", "kept": "⏸", "released": "⏯", "protected": "🔒",
          "unprotected": "🔓"}


def announcement(actor: str, verb: str, target: str, extra: str = "") -> str:
    """'⏹ <b>@alice</b> stopped <b>buildfront</b>' (HTML) for the alerts chat."""
    icon = _ICONS.get(verb, "ℹ️")
    text = f"{icon} <b>{escape(actor)}</b> {escape(verb)} <b>{escape(target)}</b>"
    if extra:
        text += f" {escape(extra)}"
    return text
