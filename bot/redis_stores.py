"""Confirmations and the audit trail in Redis, so any number of bot replicas (webhook mode) share them.

The same API and semantics as ``ConfirmStore`` and ``AuditLog``; a tap is resolved by one Lua
script, so two replicas receiving taps on the same prompt still apply exactly one. Keys (``P`` =
the prefix)::

    P confirm:<token>      string  JSON of the confirmation
    P confirm:pending      zset    pending tokens, score = expiry time (our clock)
    P confirm:created      zset    every token, score = creation time (prune)
    P audit:seq            string  last audit row id (INCR)
    P audit                list    JSON rows, newest first (trimmed to the last 10,000)
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Callable

from bot.audit import AuditEntry
from bot.confirm import DEFAULT_TTL, YES, Confirmation, Resolution
from gitlab_hook.redis_store import DEFAULT_PREFIX, RedisPart, guarded, t

KEEP_SECONDS = 7 * 86400
AUDIT_KEEP = 10_000

_RESOLVE = """
local raw = redis.call('GET', KEYS[1])
if not raw then return {'unknown', ''} end
local c = cjson.decode(raw)
if c.state ~= 'pending' then return {'already', raw} end
if c.user_id ~= ARGV[1] then return {'not_yours', raw} end
local state
if tonumber(ARGV[2]) >= tonumber(c.expires_s) then state = 'expired'
elseif ARGV[3] == 'y' then state = 'confirmed' else state = 'cancelled' end
c.state = state
local out = cjson.encode(c)
redis.call('SET', KEYS[1], out, 'KEEPTTL')
redis.call('ZREM', KEYS[2], ARGV[4])
return {state, out}
"""

_PRUNE = """
local tokens = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
local n = 0
for _, token in ipairs(tokens) do
  local key = ARGV[2] .. token
  local raw = redis.call('GET', key)
  if not raw or cjson.decode(raw).state ~= 'pending' then
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[1], token)
    if raw then n = n + 1 end
  end
end
return n
"""

_EXPIRE = """
local tokens = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, token in ipairs(tokens) do
  redis.call('ZREM', KEYS[1], token)
  local key = ARGV[3] .. token
  local raw = redis.call('GET', key)
  if raw then
    local c = cjson.decode(raw)
    if c.state == 'pending' then
      c.state = 'expired'
      raw = cjson.encode(c)
      redis.call('SET', key, raw, 'KEEPTTL')
      table.insert(out, raw)
    end
  end
end
return out
"""


def _s(value: int | None) -> str | None:
    # Ids as strings too: cjson re-encodes numbers with 14 digits, and chat ids have 13 or more.
    return None if value is None else str(value)


def _i(value: str | None) -> int | None:
    return None if value is None else int(value)


def _conf(raw: str) -> Confirmation:
    d = json.loads(raw)
    return Confirmation(d["token"], int(d["user_id"]), d["asker"], _i(d["chat_id"]), _i(d["thread_id"]),
                        _i(d["message_id"]), json.loads(d["command"]), float(d["created_s"]),
                        float(d["expires_s"]), d["state"])


class RedisConfirmStore(RedisPart):
    """Pending confirmations in Redis."""

    def __init__(self, client: Any, *, ttl: float = DEFAULT_TTL, prefix: str = DEFAULT_PREFIX,
                 clock: Callable[[], float] | None = None):
        super().__init__(client, prefix=prefix, clock=clock)
        self.ttl = ttl
        self._resolve = self.script(_RESOLVE)
        self._expire = self.script(_EXPIRE)
        self._prune = self.script(_PRUNE)

    def _key(self, token: str) -> str:
        return self.k("confirm", token)

    @guarded
    def create(self, *, user_id: int, asker: str, chat_id: int | None, thread_id: int | None,
               command: dict[str, Any]) -> Confirmation:
        """Store a new prompt; its token goes into the buttons."""
        now = self.clock()
        token = secrets.token_urlsafe(9)
        # Times as strings: cjson would re-encode floats with 14 digits.
        data = {"token": token, "user_id": _s(user_id), "asker": asker, "chat_id": _s(chat_id),
                "thread_id": _s(thread_id),
                "message_id": None, "command": json.dumps(command, sort_keys=True), "created_s": t(now),
                "expires_s": t(now + self.ttl), "state": "pending"}
        pipe = self.r.pipeline(transaction=True)
        pipe.set(self._key(token), json.dumps(data))
        pipe.zadd(self.k("confirm", "pending"), {token: now + self.ttl})
        pipe.zadd(self.k("confirm", "created"), {token: now})
        pipe.execute()
        return _conf(json.dumps(data))

    @guarded
    def attach_message(self, token: str, chat_id: int, message_id: int) -> None:
        """Remember which message shows the prompt (to edit it when it expires)."""
        key = self._key(token)
        with self.r.pipeline() as pipe:
            pipe.watch(key)
            raw = pipe.get(key)
            if raw is None:
                return
            data = {**json.loads(raw), "chat_id": _s(chat_id), "message_id": _s(message_id)}
            pipe.multi()
            pipe.set(key, json.dumps(data), keepttl=True)
            pipe.execute()

    @guarded
    def get(self, token: str) -> Confirmation | None:
        raw = self.r.get(self._key(token))
        return _conf(raw) if raw else None

    @guarded
    def resolve(self, token: str, user_id: int | None, answer: str) -> Resolution:
        """Apply a tap: only the asker, only once, only before expiry (one script: atomic across replicas)."""
        outcome, raw = self._resolve(keys=[self._key(token), self.k("confirm", "pending")],
                                     args=[str(user_id), t(self.clock()), "y" if answer == YES else "n", token])
        return Resolution(outcome, _conf(raw) if raw else None)

    @guarded
    def expire_due(self, limit: int = 100) -> list[Confirmation]:
        """Mark pending prompts past their expiry as expired; return them (to edit their messages)."""
        rows = self._expire(keys=[self.k("confirm", "pending")],
                            args=[t(self.clock()), limit, self.k("confirm", "")])
        return [_conf(raw) for raw in rows]

    @guarded
    def prune(self, older_than: float = KEEP_SECONDS) -> int:
        """Forget answered prompts after a while (the audit trail keeps what was done)."""
        return int(self._prune(keys=[self.k("confirm", "created")],
                               args=[t(self.clock() - older_than), self.k("confirm", "")]))


class RedisAuditLog(RedisPart):
    """Append-only audit rows in Redis (the last 10,000)."""

    @guarded
    def record(self, *, actor_id: int | None, actor: str, role: str | None, chat_id: int | None, command: str,
               args: dict[str, Any] | None, outcome: str, detail: str = "") -> int:
        """Append one row; returns its id."""
        row_id = int(self.r.incr(self.k("audit", "seq")))
        row = {"id": row_id, "at": self.clock(), "actor_id": actor_id, "actor": actor, "role": role,
               "chat_id": chat_id, "command": command, "args": args or {}, "outcome": outcome,
               "detail": detail[:2000]}
        pipe = self.r.pipeline(transaction=True)
        pipe.lpush(self.k("audit"), json.dumps(row, sort_keys=True, default=str))
        pipe.ltrim(self.k("audit"), 0, AUDIT_KEEP - 1)
        pipe.execute()
        return row_id

    @guarded
    def recent(self, limit: int = 50) -> list[AuditEntry]:
        """Newest first."""
        return [AuditEntry(**json.loads(raw)) for raw in self.r.lrange(self.k("audit"), 0, limit - 1)]


def open_bot_stores(settings: Any, *, ttl: float = DEFAULT_TTL) -> tuple[Any, Any]:
    """(confirmations, audit trail): in Redis with REDIS_URL (shared by replicas), else in DATA_DIR/intake.db."""
    from bot.audit import AuditLog
    from bot.confirm import ConfirmStore

    if settings.env.REDIS_URL is not None:
        url = settings.env.REDIS_URL.get_secret_value()
        return RedisConfirmStore(url, ttl=ttl), RedisAuditLog(url)
    db = settings.data_dir / "intake.db"
    return ConfirmStore(db, ttl=ttl), AuditLog(db)
