"""Confirmations for risky commands: a random token in the buttons' callback data, kept in SQLite.

A prompt is answered once: by the person who asked, before it expires. The row is on disk
(``DATA_DIR/intake.db``), so a bot restart between the question and the tap loses nothing; a
periodic sweep turns prompts nobody answered into "expired" so no live-looking buttons remain.

Callback data is ``cf:<token>:y`` or ``cf:<token>:n`` (at most 20 bytes; Telegram allows 64), the
``cf:`` namespace keeping it apart from any other buttons.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from gitlab_hook.sqlite_db import Database

PREFIX = "cf"
YES, NO = "y", "n"
DEFAULT_TTL = 300.0  # five minutes to think it over
MAX_CALLBACK_BYTES = 64

SCHEMA = """
create table if not exists bot_confirmations (
    token      text primary key,
    user_id    integer not null,
    asker      text not null,
    chat_id    integer,
    thread_id  integer,
    message_id integer,
    command    text not null,      -- JSON: what to do when confirmed
    created    real not null,
    expires    real not null,
    state      text not null default 'pending',  -- pending | confirmed | cancelled | expired
    resolved   real
);
create index if not exists bot_confirmations_pending on bot_confirmations (state, expires);
"""


@dataclass(frozen=True)
class Confirmation:
    """One prompt as stored."""

    token: str
    user_id: int
    asker: str
    chat_id: int | None
    thread_id: int | None
    message_id: int | None
    command: dict[str, Any]
    created: float
    expires: float
    state: str


@dataclass(frozen=True)
class Resolution:
    """What a tap did: outcome is confirmed, cancelled, expired, not_yours, already or unknown."""

    outcome: str
    confirmation: Confirmation | None = None


def callback_data(token: str, answer: str) -> str:
    """The button's callback data."""
    data = f"{PREFIX}:{token}:{answer}"
    if len(data.encode()) > MAX_CALLBACK_BYTES:  # pragma: no cover - tokens are short
        raise ValueError("callback data longer than Telegram allows")
    return data


def parse_callback(data: str | None) -> tuple[str, str] | None:
    """(token, answer) from callback data of ours, else None."""
    parts = (data or "").split(":")
    if len(parts) != 3 or parts[0] != PREFIX or parts[2] not in (YES, NO) or not parts[1]:
        return None
    return parts[1], parts[2]


_COLS = "token, user_id, asker, chat_id, thread_id, message_id, command, created, expires, state"


def _row(r: tuple) -> Confirmation:
    return Confirmation(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), r[7], r[8], r[9])


class ConfirmStore:
    """Pending confirmations in SQLite; every transition is one transaction."""

    def __init__(self, path: Path | str, *, ttl: float = DEFAULT_TTL, clock: Callable[[], float] = time.time):
        self.ttl, self.clock = ttl, clock
        self.db = Database(path, schema=SCHEMA, synchronous="full")

    def create(self, *, user_id: int, asker: str, chat_id: int | None, thread_id: int | None,
               command: dict[str, Any]) -> Confirmation:
        """Store a new prompt; its token goes into the buttons."""
        now = self.clock()
        token = secrets.token_urlsafe(9)  # 12 characters, 72 bits
        self.db.tx(lambda c: c.execute(
            "insert into bot_confirmations (token, user_id, asker, chat_id, thread_id, command, created, expires)"
            " values (?, ?, ?, ?, ?, ?, ?, ?)",
            (token, user_id, asker, chat_id, thread_id, json.dumps(command, sort_keys=True), now, now + self.ttl)))
        return Confirmation(token, user_id, asker, chat_id, thread_id, None, command, now, now + self.ttl, "pending")

    def attach_message(self, token: str, chat_id: int, message_id: int) -> None:
        """Remember which message shows the prompt (to edit it when it expires)."""
        self.db.tx(lambda c: c.execute("update bot_confirmations set chat_id = ?, message_id = ? where token = ?",
                                       (chat_id, message_id, token)))

    def get(self, token: str) -> Confirmation | None:
        r = self.db.conn().execute(f"select {_COLS} from bot_confirmations where token = ?", (token,)).fetchone()
        return _row(r) if r else None

    def resolve(self, token: str, user_id: int | None, answer: str) -> Resolution:
        """Apply a tap: only the asker, only once, only before expiry."""
        now = self.clock()

        def work(c: sqlite3.Connection) -> Resolution:
            r = c.execute(f"select {_COLS} from bot_confirmations where token = ?", (token,)).fetchone()
            if r is None:
                return Resolution("unknown")
            conf = _row(r)
            if conf.state != "pending":
                return Resolution("already", conf)
            if user_id != conf.user_id:
                return Resolution("not_yours", conf)
            state = "expired" if now >= conf.expires else ("confirmed" if answer == YES else "cancelled")
            c.execute("update bot_confirmations set state = ?, resolved = ? where token = ? and state = 'pending'",
                      (state, now, token))
            return Resolution(state, Confirmation(**{**conf.__dict__, "state": state}))

        return self.db.tx(work)

    def expire_due(self, limit: int = 100) -> list[Confirmation]:
        """Mark pending prompts past their expiry as expired; return them (to edit their messages)."""
        now = self.clock()

        def work(c: sqlite3.Connection) -> list[Confirmation]:
            rows = c.execute(f"select {_COLS} from bot_confirmations where state = 'pending' and expires <= ?"
                             " order by expires limit ?", (now, limit)).fetchall()
            for r in rows:
                c.execute("update bot_confirmations set state = 'expired', resolved = ? where token = ?", (now, r[0]))
            return [Confirmation(**{**_row(r).__dict__, "state": "expired"}) for r in rows]

        return self.db.tx(work)

    def prune(self, older_than: float = 7 * 86400) -> int:
        """Forget answered prompts after a while (the audit trail keeps what was done)."""
        cutoff = self.clock() - older_than
        return self.db.tx(lambda c: c.execute(
            "delete from bot_confirmations where state != 'pending' and created < ?", (cutoff,)).rowcount)
