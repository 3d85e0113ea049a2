"""``RedisIntakeStore``: the dedupe records and the outbox of ``IntakeStore``, in Redis (key layout: redis_store).

Same public API, return types and semantics as the SQLite store: ``accept`` records the dedupe
key and the actions in one script (``once`` actions: one ever unless failed; others coalesce
onto a *pending* row of the same key); leases are decided by the caller's clock; finishing a
row bumps the outcome counters, the latency histogram and the journal in the same script.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Callable, Iterable, Sequence

import redis

from gitlab_hook.intake import LATENCY_BUCKETS, Accepted, ActionRow, IntakeStore, OutcomeMethods
from gitlab_hook.planner import Action
from gitlab_hook.redis_store import DEFAULT_PREFIX, RedisPart, guarded, t

STATES = ("pending", "running", "done", "failed")
PRUNE_CHUNK = 1000  # deletions per script call: Redis stays responsive during a big prune

# Every script gets the prefix as ARGV[1] and shares these helpers.
_PRELUDE = """
local P = ARGV[1]
local function akey(id) return P .. 'action:' .. id end
-- Move a row between states and keep every index in step (old = nil for a new row).
local function set_state(id, key, kind, old, new, updated)
  if old then
    redis.call('ZREM', P .. 'state:' .. old, id)
    redis.call('HINCRBY', P .. 'kind-states', kind .. '\\n' .. old, -1)
  end
  redis.call('ZADD', P .. 'state:' .. new, id, id)
  redis.call('HINCRBY', P .. 'kind-states', kind .. '\\n' .. new, 1)
  if new == 'pending' then redis.call('ZADD', P .. 'coalesce:pending:' .. key, id, id)
  else redis.call('ZREM', P .. 'coalesce:pending:' .. key, id) end
  if new == 'failed' then redis.call('ZREM', P .. 'coalesce:live:' .. key, id)
  else redis.call('ZADD', P .. 'coalesce:live:' .. key, id, id) end
  if new == 'done' or new == 'failed' then redis.call('ZADD', P .. 'finished', updated, id)
  else redis.call('ZREM', P .. 'finished', id) end
end
local function bump(name, labels, by)
  redis.call('HINCRBY', P .. 'counter:' .. name, cjson.encode(labels), by)
end
"""

# ARGV: P, dedupe key, delivery, event, now, n, then n × (once, key, kind, payload)
_ACCEPT = _PRELUDE + """
local dkey, delivery, event, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local rec = redis.call('HGET', P .. 'delivery', dkey)
if rec then return {1, rec} end
local ids, new = {}, {}
for i = 0, tonumber(ARGV[6]) - 1 do
  local once, key, kind, payload = ARGV[7 + 4 * i], ARGV[8 + 4 * i], ARGV[9 + 4 * i], ARGV[10 + 4 * i]
  local index = (once == '1') and 'coalesce:live:' or 'coalesce:pending:'
  local same = redis.call('ZRANGE', P .. index .. key, 0, 0)[1]
  if same then
    table.insert(ids, same)
  else
    local id = tostring(redis.call('INCR', P .. 'seq:action'))
    redis.call('HSET', akey(id), 'key', key, 'kind', kind, 'payload', payload, 'delivery', delivery,
               'state', 'pending', 'attempts', 0, 'created', now, 'updated', now, 'not_before', '0')
    redis.call('ZADD', P .. 'actions', id, id)
    set_state(id, key, kind, nil, 'pending', now)
    table.insert(ids, id)
    table.insert(new, id)
  end
end
rec = delivery .. '\\n' .. table.concat(ids, ',') .. '\\n' .. table.concat(new, ',') .. '\\n' .. event
redis.call('HSET', P .. 'delivery', dkey, rec)
redis.call('ZADD', P .. 'delivery:at', now, dkey)
return {0, rec}
"""

# ARGV: P, id, owner, now, lease until, token (unique per call: a replay is recognised by it)
_CLAIM = _PRELUDE + """
local id, owner, now, token = ARGV[2], ARGV[3], ARGV[4], ARGV[6]
local k = akey(id)
local f = redis.call('HMGET', k, 'state', 'not_before', 'lease_until', 'lease_owner', 'claim_token', 'key', 'kind')
local state = f[1]
if not state then return nil end
local n = tonumber(now)
if not ((state == 'pending' and tonumber(f[2]) <= n) or (state == 'running' and (tonumber(f[3]) or 0) < n)) then
  -- Our own claim replayed after a dropped connection: the row is ours, say so again.
  if state == 'running' and f[4] == owner and f[5] == token then return redis.call('HGETALL', k) end
  return nil
end
redis.call('HSET', k, 'state', 'running', 'lease_owner', owner, 'lease_until', ARGV[5], 'updated', now,
           'claim_token', token)
redis.call('HINCRBY', k, 'attempts', 1)
if state ~= 'running' then set_state(id, f[6], f[7], state, 'running', now) end
return redis.call('HGETALL', k)
"""

# ARGV: P, id, owner, lease until
_RENEW = _PRELUDE + """
local k = akey(ARGV[2])
local f = redis.call('HMGET', k, 'state', 'lease_owner')
if f[1] ~= 'running' or f[2] ~= ARGV[3] then return 0 end
redis.call('HSET', k, 'lease_until', ARGV[4])
return 1
"""

# ARGV: P, id, owner, new state, outcome, now, not_before, token, has error, error, has result, result,
#       n buckets, n × bucket label (str(le)), then journal entries
_FINISH = _PRELUDE + """
local id, owner, new, outcome, now, token = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[8]
local k = akey(id)
local f = redis.call('HMGET', k, 'state', 'lease_owner', 'key', 'kind', 'created', 'finish_token')
if f[1] ~= 'running' or f[2] ~= owner then
  -- Our own finish replayed after a dropped connection: already recorded, record nothing twice.
  if f[6] == token then return 1 end
  return 0  -- the lease was lost to another worker: its outcome wins
end
redis.call('HSET', k, 'state', new, 'updated', now, 'not_before', ARGV[7], 'finish_token', token)
redis.call('HDEL', k, 'lease_owner', 'lease_until')
if ARGV[9] == '1' then redis.call('HSET', k, 'last_error', ARGV[10]) end
if ARGV[11] == '1' then redis.call('HSET', k, 'result', ARGV[12]) end
set_state(id, f[3], f[4], 'running', new, now)
local kind = f[4]
bump('task_outcomes', {kind, outcome}, 1)
local nb = tonumber(ARGV[13])
if outcome == 'done' then
  local seconds = tonumber(now) - tonumber(f[5])
  for i = 1, nb do
    if seconds <= tonumber(ARGV[13 + i]) then bump('action_seconds_bucket', {kind, ARGV[13 + i]}, 1) end
  end
  bump('action_seconds_count', {kind}, 1)
  local ms = seconds * 1000
  if ms >= 0 then ms = math.floor(ms) else ms = math.ceil(ms) end
  bump('action_seconds_sum_ms', {kind}, ms)
end
for i = 14 + nb, #ARGV do
  redis.call('RPUSH', P .. 'journal', id .. '\\n' .. now .. '\\n' .. ARGV[i])
end
return 1
"""

# ARGV: P, then pairs (id, owner seen running): compare-and-set back to pending
_RELEASE = _PRELUDE + """
local out = {}
for i = 2, #ARGV, 2 do
  local id, owner = ARGV[i], ARGV[i + 1]
  local k = akey(id)
  local f = redis.call('HMGET', k, 'state', 'lease_owner', 'key', 'kind')
  if f[1] == 'running' and f[2] == owner then
    redis.call('HSET', k, 'state', 'pending', 'not_before', '0')
    redis.call('HDEL', k, 'lease_owner', 'lease_until')
    set_state(id, f[3], f[4], 'running', 'pending', nil)
    table.insert(out, tonumber(id))
  end
end
return out
"""

# ARGV: P, now, updated cutoff (now - grace), limit
_REDRIVABLE = _PRELUDE + """
local now, cutoff, limit = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
for _, id in ipairs(redis.call('ZRANGE', P .. 'state:pending', 0, -1)) do
  local f = redis.call('HMGET', akey(id), 'not_before', 'updated')
  if tonumber(f[1]) <= now and tonumber(f[2]) <= cutoff then table.insert(out, tonumber(id)) end
end
for _, id in ipairs(redis.call('ZRANGE', P .. 'state:running', 0, -1)) do
  if (tonumber(redis.call('HGET', akey(id), 'lease_until')) or 0) < now then table.insert(out, tonumber(id)) end
end
table.sort(out)
local limited = {}
for i = 1, math.min(limit, #out) do limited[i] = out[i] end
return limited
"""

# ARGV: P, dedupe cutoff, dedupe max, finished cutoff, journal cutoff, budget
#       → {deleted, 1 when the budget ran out (call again)}
_PRUNE = _PRELUDE + """
local budget = tonumber(ARGV[6])
local n = 0
local function forget(keys)
  for _, d in ipairs(keys) do
    redis.call('HDEL', P .. 'delivery', d)
    redis.call('ZREM', P .. 'delivery:at', d)
  end
  n = n + #keys
  budget = budget - #keys
end
forget(redis.call('ZRANGEBYSCORE', P .. 'delivery:at', '-inf', '(' .. ARGV[2], 'LIMIT', 0, budget))
local excess = redis.call('ZCARD', P .. 'delivery:at') - tonumber(ARGV[3])
if budget > 0 and excess > 0 then forget(redis.call('ZRANGE', P .. 'delivery:at', 0, math.min(excess, budget) - 1)) end
if budget > 0 then
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'finished', '-inf', '(' .. ARGV[4], 'LIMIT', 0, budget)) do
    local f = redis.call('HMGET', akey(id), 'state', 'key', 'kind')
    redis.call('DEL', akey(id))
    redis.call('ZREM', P .. 'finished', id)
    redis.call('ZREM', P .. 'actions', id)
    if f[1] then
      redis.call('ZREM', P .. 'state:' .. f[1], id)
      redis.call('ZREM', P .. 'coalesce:live:' .. f[2], id)
      redis.call('ZREM', P .. 'coalesce:pending:' .. f[2], id)
      redis.call('HINCRBY', P .. 'kind-states', f[3] .. '\\n' .. f[1], -1)
    end
    n = n + 1
    budget = budget - 1
  end
end
while budget > 0 do
  local head = redis.call('LINDEX', P .. 'journal', 0)
  if not head then break end
  local at = tonumber(string.match(head, '^[^\\n]*\\n([^\\n]*)'))
  if not at or at >= tonumber(ARGV[5]) then break end
  redis.call('LPOP', P .. 'journal')
  n = n + 1
  budget = budget - 1
end
if budget <= 0 then return {n, 1} end
return {n, 0}
"""


def _row(h: dict[str, str]) -> ActionRow:
    return ActionRow(int(h["id"]), h["key"], h["kind"], json.loads(h["payload"]), h["delivery"], h["state"],
                     int(h["attempts"]), float(h["created"]), h.get("last_error"), h.get("result"))


def _ids(csv: str) -> tuple[int, ...]:
    return tuple(int(i) for i in csv.split(",")) if csv else ()


class RedisIntakeStore(OutcomeMethods, RedisPart):
    """Redis-backed dedupe + outbox: one store for every web and worker replica on every host."""

    def __init__(self, client: redis.Redis | str, *, prefix: str = DEFAULT_PREFIX,
                 clock: Callable[[], float] | None = None):
        super().__init__(client, prefix=prefix, clock=clock)
        self._accept = self.script(_ACCEPT)
        self._claim = self.script(_CLAIM)
        self._renew = self.script(_RENEW)
        self._finish_script = self.script(_FINISH)
        self._release = self.script(_RELEASE)
        self._redrivable = self.script(_REDRIVABLE)
        self._prune = self.script(_PRUNE)

    # --- web side -------------------------------------------------------------------------

    @guarded
    def accept(self, dedupe_key: str, event: str, actions: Sequence[Action]) -> Accepted:
        """Record a delivery and its actions atomically; a known dedupe key is a duplicate."""
        delivery = uuid.uuid4().hex
        args: list[Any] = [self.prefix, dedupe_key, delivery, event, t(self.clock()), len(actions)]
        for a in actions:
            args += ["1" if a.once else "0", a.key, a.kind, json.dumps(a.payload, sort_keys=True)]
        dup, rec = self._accept(args=args)
        found, ids, new, _event = rec.split("\n", 3)
        if dup and found != delivery:
            return Accepted(found, duplicate=True)
        # Not a duplicate, or our own write replayed after a dropped connection.
        return Accepted(delivery, False, _ids(ids), _ids(new))

    @guarded
    def ping(self) -> None:
        """Prove the storage can be written (readiness; a read-only replica fails here)."""
        self.r.set(self.k("ping"), t(self.clock()))

    # --- worker side ----------------------------------------------------------------------

    @guarded
    def claim(self, action_id: int, owner: str, lease: float) -> ActionRow | None:
        """Take a row for running; None when it is done, failed, not due, or leased to a live worker."""
        now = self.clock()
        flat = self._claim(args=[self.prefix, action_id, owner, t(now), t(now + lease), uuid.uuid4().hex])
        if not flat:
            return None
        h = dict(zip(flat[::2], flat[1::2]))
        h["id"] = str(action_id)
        return _row(h)

    @guarded
    def renew(self, action_id: int, owner: str, lease: float) -> bool:
        """Extend a lease while a long task runs."""
        return self._renew(args=[self.prefix, action_id, owner, t(self.clock() + lease)]) == 1

    @guarded
    def _finish(self, action_id: int, owner: str, state: str, outcome: str, *, error: str | None = None,
                result: str | None = None, not_before: float = 0.0, journal: Iterable[str] = ()) -> bool:
        args: list[Any] = [self.prefix, action_id, owner, state, outcome, t(self.clock()), t(not_before),
                           uuid.uuid4().hex, "0" if error is None else "1", error or "", "0" if result is None else "1", result or "",
                           len(LATENCY_BUCKETS), *(str(le) for le in LATENCY_BUCKETS), *journal]
        return self._finish_script(args=args) == 1


    @guarded
    def release_orphans(self, is_orphan: Callable[[str], bool]) -> list[int]:
        """Return running rows whose owner is gone (e.g. a killed worker) to pending; their ids.

        The owners are judged here, then each row is released only if that same owner still
        holds it (a row finished or re-claimed meanwhile is left alone).
        """
        ids = self.r.zrange(self.k("state", "running"), 0, -1)
        if not ids:
            return []
        with self.r.pipeline(transaction=False) as p:
            for i in ids:
                p.hget(self.k("action", i), "lease_owner")
            owners = p.execute()
        pairs: list[Any] = []
        for i, owner in zip(ids, owners):
            if owner and is_orphan(owner):
                pairs += [i, owner]
        if not pairs:
            return []
        return [int(i) for i in self._release(args=[self.prefix, *pairs])]

    @guarded
    def redrivable(self, grace: float = 30.0, limit: int = 1000) -> list[int]:
        """Rows that should be running but may have no queued task: due and untouched, or lease expired."""
        now = self.clock()
        return [int(i) for i in self._redrivable(args=[self.prefix, t(now), t(now - grace), limit])]

    @guarded
    def get(self, action_id: int) -> ActionRow | None:
        """One row, for tests and the CLI."""
        h = self.r.hgetall(self.k("action", str(action_id)))
        return _row({**h, "id": str(action_id)}) if h else None

    @guarded
    def rows(self, state: str | None = None) -> list[ActionRow]:
        """All rows (optionally in one state), oldest first."""
        ids = self.r.zrange(self.k("state", state) if state else self.k("actions"), 0, -1)
        out = []
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            with self.r.pipeline(transaction=False) as p:
                for i in chunk:
                    p.hgetall(self.k("action", i))
                for i, h in zip(chunk, p.execute()):
                    if h and (state is None or h.get("state") == state):  # pruned or moved meanwhile: skip
                        out.append(_row({**h, "id": i}))
        return out

    @guarded
    def journal(self) -> list[tuple[int, str]]:
        """Dry-run effects, in order: (action id, entry)."""
        out = []
        for item in self.r.lrange(self.k("journal"), 0, -1):
            action_id, _at, entry = item.split("\n", 2)
            out.append((int(action_id), entry))
        return out

    # --- housekeeping and metrics ---------------------------------------------------------

    @guarded
    def prune(self, *, dedupe_ttl: float, dedupe_max: int, finished_ttl: float = 14 * 86400) -> int:
        """Forget old dedupe records (by age, then by count) and long-finished rows, in bounded steps."""
        now = self.clock()
        total = 0
        while True:
            n, more = self._prune(args=[self.prefix, t(now - dedupe_ttl), dedupe_max, t(now - finished_ttl),
                                        t(now - finished_ttl), PRUNE_CHUNK])
            total += int(n)
            if not more:
                return total

    # Same arithmetic as the SQLite store, over our counters.
    latency_histograms = IntakeStore.latency_histograms

    @guarded
    def counters(self, name: str) -> dict[tuple[str, ...], int]:
        """A durable counter's values by label tuple (shared by every process and host)."""
        return {tuple(json.loads(labels)): int(v) for labels, v in self.r.hgetall(self.k("counter", name)).items()}

    @guarded
    def state_counts(self) -> dict[tuple[str, str], int]:
        """Outbox rows by (kind, state)."""
        out = {}
        for field, n in self.r.hgetall(self.k("kind-states")).items():
            if int(n) > 0:
                kind, state = field.rsplit("\n", 1)
                out[(kind, state)] = int(n)
        return out

    @guarded
    def dedupe_size(self) -> int:
        return int(self.r.zcard(self.k("delivery:at")))
