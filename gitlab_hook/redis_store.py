"""The durable stores on Redis, for several web and worker replicas (``REDIS_URL``).

The same API and semantics as the SQLite stores (``IntakeStore``, ``VmState``, ``Ledger``); the
classes live in ``redis_intake`` and ``redis_state`` and are re-exported here. This module holds
what they share: the client (every command with a socket timeout, a short retry on a dropped
connection only), the error mapping (any Redis error → ``StorageError``, so the webhook answers
503 and ``/readyz`` names the failing part), and the key layout below.

Atomicity: every read-modify-write is one Lua script (``register_script``: EVALSHA, EVAL on a
cold cache), except the progress-record merge, which is a WATCH/MULTI transaction (a JSON merge
in Lua would re-encode floats with 14 digits). Scripts build key names from the prefix, so this
needs one Redis primary (standalone or Sentinel), not Redis Cluster.

Time: expiries are decided by *our* clock (``clock``, passed in), compared inside the scripts
with the times the caller sends, exactly as the SQLite stores do; Redis TTLs are not used for
leases or locks (they would follow the server's clock and could not be tested with a fake one).
The only TTL is garbage collection of lock keys, a day after their logical expiry.

Times are sent and stored as Python ``repr`` of the float and compared with ``tonumber`` in
Lua, so they round-trip exactly (Lua's own ``tostring`` keeps only 14 digits).

Durability: an accepted delivery is as durable as the server's persistence: run Redis with
``appendonly yes`` (``appendfsync always`` for the SQLite store's power-loss guarantee,
``everysec`` loses at most about a second).

Key layout (``P`` = the prefix, default ``gitlab-hook:``)::

    P delivery                 hash   dedupe key → "delivery\\nids\\nnew ids\\nevent" (ids comma-separated)
    P delivery:at              zset   dedupe key, score = received (prune by age, then by count)
    P seq:action               string last outbox id (INCR)
    P action:<id>              hash   key kind payload delivery state attempts created updated
                                      not_before lease_owner lease_until last_error result last_owner
    P actions                  zset   every outbox id (score = id): rows() in id order
    P state:<state>            zset   ids in pending | running | done | failed (score = id)
    P finished                 zset   done and failed ids, score = updated (prune)
    P coalesce:pending:<key>   zset   pending ids of an action key (non-``once`` actions coalesce here)
    P coalesce:live:<key>      zset   ids of an action key not failed (``once`` actions: one ever)
    P kind-states              hash   "kind\\nstate" → number of rows (metrics without a scan)
    P counter:<name>           hash   JSON label list → integer (task outcomes, latency histogram)
    P journal                  list   "action id\\nat\\nentry", in commit order
    P ping                     string last readiness write
    P lock:<name>              hash   owner, expires (VM locks; re-entrant per owner)
    P progress:<key>           string JSON progress record
    P progress-index           zset   progress key, score = updated (prune)
    P seq:power                string last power event id (INCR)
    P power:<vm>               zset   "<id, 12 digits>|on|off|[cause, detail]", score = at
    P power-vms                set    every VM the ledger has heard of

The huey queue keeps its own keys (``huey.*``), outside the prefix.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from gitlab_hook.sqlite_db import StorageError

DEFAULT_PREFIX = "gitlab-hook:"
SOCKET_TIMEOUT = 5.0  # a webhook must answer well inside GitLab's 10 s
CONNECT_TIMEOUT = 2.0

F = TypeVar("F", bound=Callable[..., Any])


def connect(url: str, *, socket_timeout: float = SOCKET_TIMEOUT, connect_timeout: float = CONNECT_TIMEOUT,
            client_name: str = "gitlab-hook") -> redis.Redis:
    """A thread-safe client (a connection pool) for ``url``; it connects on first use.

    A dropped or refused connection is retried twice within about 0.1 s; a timeout is not
    retried (the command may have run). The writes that matter recognise their own replay.
    """
    pool = redis.ConnectionPool.from_url(
        url, decode_responses=True, socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout,
        socket_keepalive=True, health_check_interval=30, client_name=client_name,
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.02), 2, supported_errors=(redis.ConnectionError,)))
    return redis.Redis(connection_pool=pool)


def guarded(fn: F) -> F:
    """Turn any Redis error raised by a store method into StorageError naming the store and the cause."""

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except redis.RedisError as exc:
            # redis-py's messages name host and port at most, never the password of the URL.
            raise StorageError(f"redis storage error in {type(self).__name__}.{fn.__name__}: "
                               f"{type(exc).__name__}: {exc}") from None

    return wrapper  # type: ignore[return-value]


def t(value: float) -> str:
    """A time (or any float) as sent to Redis: exact round trip."""
    return repr(float(value))


class RedisPart:
    """What every Redis store has: a client, a key prefix, a clock, and registered scripts."""

    def __init__(self, client: redis.Redis | str, *, prefix: str = DEFAULT_PREFIX,
                 clock: Callable[[], float] | None = None):
        self.r = connect(client) if isinstance(client, str) else client
        self.prefix = prefix
        self.clock = clock or time.time

    def k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def script(self, lua: str) -> Any:
        return self.r.register_script(lua)


def __getattr__(name: str) -> Any:
    # The stores themselves, importable from here too (lazily: their modules import this one).
    if name == "RedisIntakeStore":
        from gitlab_hook.redis_intake import RedisIntakeStore

        return RedisIntakeStore
    if name in ("RedisVmState", "RedisLedger"):
        from gitlab_hook import redis_state

        return getattr(redis_state, name)
    raise AttributeError(name)
