"""``RedisVmState`` (VM locks, progress records) and ``RedisLedger`` (power events) in Redis.

Same API and semantics as ``VmState`` and ``Ledger`` (key layout: ``redis_store``): locks expire
by the caller's clock and are re-entrant per owner; a progress record is merged and written
atomically; a power event that repeats the VM's state at that time is not recorded.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable

import redis

from gitlab_hook.ledger import VmUsage, vm_usage
from gitlab_hook.redis_store import DEFAULT_PREFIX, RedisPart, guarded, t
from gitlab_hook.sqlite_db import StorageError

LOCK_GC_AFTER = 86400  # a lock key is deleted by Redis this long after its logical expiry

# ARGV: P, name, owner, now, expires, gc ttl (whole seconds)
_TRY_LOCK = """
local k = ARGV[1] .. 'lock:' .. ARGV[2]
local f = redis.call('HMGET', k, 'owner', 'expires')
if f[1] and f[1] ~= ARGV[3] and tonumber(f[2]) > tonumber(ARGV[4]) then return 0 end
redis.call('HSET', k, 'owner', ARGV[3], 'expires', ARGV[5])
redis.call('EXPIRE', k, ARGV[6])
return 1
"""

# ARGV: P, name, owner
_UNLOCK = """
local k = ARGV[1] .. 'lock:' .. ARGV[2]
if redis.call('HGET', k, 'owner') == ARGV[3] then redis.call('DEL', k) end
return 1
"""

# ARGV: P, cutoff, budget → {deleted, 1 when the budget ran out}
_PRUNE_PROGRESS = """
local idx = ARGV[1] .. 'progress-index'
local keys = redis.call('ZRANGEBYSCORE', idx, '-inf', '(' .. ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, key in ipairs(keys) do
  redis.call('DEL', ARGV[1] .. 'progress:' .. key)
  redis.call('ZREM', idx, key)
end
if #keys >= tonumber(ARGV[3]) then return {#keys, 1} end
return {#keys, 0}
"""

# ARGV: P, vm, state, at, "cause/detail" JSON → 1 recorded, 0 a repeat of the state at that time
_RECORD = """
local k = ARGV[1] .. 'power:' .. ARGV[2]
local last = redis.call('ZREVRANGEBYSCORE', k, ARGV[4], '-inf', 'LIMIT', 0, 1)[1]
if last and string.match(last, '^%d+|(%a+)|') == ARGV[3] then return 0 end
local id = redis.call('INCR', ARGV[1] .. 'seq:power')
redis.call('ZADD', k, ARGV[4], string.format('%012d', id) .. '|' .. ARGV[3] .. '|' .. ARGV[5])
redis.call('SADD', ARGV[1] .. 'power-vms', ARGV[2])
return 1
"""


class RedisVmState(RedisPart):
    """Per-VM locks and progress records shared by every worker on every host."""

    def __init__(self, client: redis.Redis | str, *, prefix: str = DEFAULT_PREFIX,
                 clock: Callable[[], float] | None = None):
        super().__init__(client, prefix=prefix, clock=clock)
        self._try_lock = self.script(_TRY_LOCK)
        self._unlock = self.script(_UNLOCK)
        self._prune = self.script(_PRUNE_PROGRESS)

    @guarded
    def try_lock(self, name: str, owner: str, ttl: float) -> bool:
        """Take ``name`` for ``ttl`` seconds unless someone else holds it unexpired; re-entrant per owner."""
        now = self.clock()
        gc = max(1, math.ceil(ttl)) + LOCK_GC_AFTER
        return self._try_lock(args=[self.prefix, name, owner, t(now), t(now + ttl), gc]) == 1

    @guarded
    def unlock(self, name: str, owner: str) -> None:
        """Release a lock we hold (a lock held by someone else is left alone)."""
        self._unlock(args=[self.prefix, name, owner])

    def holder(self, name: str) -> str | None:
        """Who holds an unexpired lock, if anyone."""
        info = self.lock_info(name)
        return info[0] if info else None

    @guarded
    def lock_info(self, name: str) -> tuple[str, float] | None:
        """(owner, expires) of an unexpired lock, if any (``VmState`` answers this from its table)."""
        owner, expires = self.r.hmget(self.k("lock", name), ["owner", "expires"])
        if owner is None or expires is None or float(expires) <= self.clock():
            return None
        return owner, float(expires)

    @guarded
    def progress(self, key: str) -> dict[str, Any]:
        """The saved progress of a multi-step effect (empty when it has not begun)."""
        raw = self.r.get(self.k("progress", key))
        return json.loads(raw) if raw else {}

    @guarded
    def save_progress(self, key: str, **changes: Any) -> dict[str, Any]:
        """Merge ``changes`` into a progress record and persist it before going on (WATCH/MULTI)."""
        rkey = self.k("progress", key)

        def merge(pipe: redis.client.Pipeline) -> dict[str, Any]:
            raw = pipe.get(rkey)
            data = {**(json.loads(raw) if raw else {}), **changes}
            text = json.dumps(data, sort_keys=True)
            pipe.multi()
            pipe.set(rkey, text)
            pipe.zadd(self.k("progress-index"), {key: self.clock()})
            return data

        return self.r.transaction(merge, rkey, value_from_callable=True)

    @guarded
    def progress_items(self, prefix: str = "", *, updated_after: float = float("-inf"),
                       updated_before: float = float("inf")) -> list[tuple[str, dict[str, Any]]]:
        """Progress records whose key starts with ``prefix``, updated in (after, before), oldest first."""
        lo = "-inf" if math.isinf(updated_after) else f"({t(updated_after)}"
        hi = "+inf" if math.isinf(updated_before) else f"({t(updated_before)}"
        keys = [k for k in self.r.zrangebyscore(self.k("progress-index"), lo, hi) if k.startswith(prefix)]
        if not keys:
            return []
        values = self.r.mget([self.k("progress", k) for k in keys])
        return [(k, json.loads(v)) for k, v in zip(keys, values) if v]

    @guarded
    def prune(self, older_than: float) -> int:
        """Forget progress records untouched for ``older_than`` seconds."""
        cutoff, total = t(self.clock() - older_than), 0
        while True:
            n, more = self._prune(args=[self.prefix, cutoff, 1000])
            total += int(n)
            if not more:
                return total


class RedisLedger(RedisPart):
    """Append-only power events in Redis, and the same reports as ``Ledger``."""

    def __init__(self, client: redis.Redis | str, *, prefix: str = DEFAULT_PREFIX,
                 clock: Callable[[], float] | None = None):
        super().__init__(client, prefix=prefix, clock=clock)
        self._record = self.script(_RECORD)

    @staticmethod
    def _event(member: str, score: float) -> tuple[str, str, str, float]:
        _id, state, rest = member.split("|", 2)
        cause, detail = json.loads(rest)
        return state, cause, detail, float(score)

    @guarded
    def record(self, vm: str, state: str, cause: str, detail: str = "", at: float | None = None) -> bool:
        """Append a power change; a repeat of the VM's current state is ignored (returns False)."""
        if state not in ("on", "off"):  # the SQLite table's check constraint
            raise StorageError(f"power state must be 'on' or 'off', not {state!r}")
        at = self.clock() if at is None else at
        return self._record(args=[self.prefix, vm, state, t(at), json.dumps([cause, detail])]) == 1

    @guarded
    def vms(self) -> list[str]:
        """Every VM the ledger has heard of."""
        return sorted(self.r.smembers(self.k("power-vms")))

    @guarded
    def last(self, vm: str) -> tuple[str, str, float] | None:
        """The VM's latest (state, cause, at), if any."""
        found = self.r.zrevrange(self.k("power", vm), 0, 0, withscores=True)
        if not found:
            return None
        state, cause, _detail, at = self._event(*found[0])
        return state, cause, at

    @guarded
    def usage(self, start: float, end: float, prices: dict[str, float] | None = None,
              vms: list[str] | None = None) -> list[VmUsage]:
        """Per VM over [start, end): hours on, hours and money saved against always-on, what woke it."""
        prices = prices or {}
        names = vms or self.vms()
        with self.r.pipeline(transaction=True) as p:  # one consistent snapshot of every VM's events
            for vm in names:
                p.zrevrangebyscore(self.k("power", vm), f"({t(start)}", "-inf", start=0, num=1)
                p.zrangebyscore(self.k("power", vm), t(start), f"({t(end)}", withscores=True)
            answers = p.execute()
        now = self.clock()
        out = []
        for i, vm in enumerate(names):
            before, inside = answers[2 * i], answers[2 * i + 1]
            state_before = before[0].split("|", 2)[1] if before else None
            events = [(at, state, cause) for state, cause, _d, at in (self._event(m, s) for m, s in inside)]
            out.append(vm_usage(vm, state_before, events, start, end, now, prices.get(vm)))
        return out
