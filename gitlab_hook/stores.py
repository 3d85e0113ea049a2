"""Where the durable state lives: SQLite in ``DATA_DIR`` (one host), or Redis (``REDIS_URL``, replicas).

Every role opens its stores here, so web, worker and ``check`` always agree on the backend.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Union

from gitlab_hook.intake import IntakeStore
from gitlab_hook.ledger import Ledger
from gitlab_hook.redis_store import DEFAULT_PREFIX, connect
from gitlab_hook.redis_intake import RedisIntakeStore
from gitlab_hook.redis_state import RedisLedger, RedisVmState
from gitlab_hook.settings import Settings
from gitlab_hook.vm_state import VmState

AnyIntake = Union[IntakeStore, RedisIntakeStore]
AnyVmState = Union[VmState, RedisVmState]
AnyLedger = Union[Ledger, RedisLedger]


@dataclass(frozen=True)
class Stores:
    """The three durable stores of one process, on one backend."""

    intake: AnyIntake
    vm_state: AnyVmState
    ledger: AnyLedger
    backend: str  # "sqlite" | "redis"


def open_stores(settings: Settings, *, clock: Callable[[], float] = time.time,
                redis_prefix: str = DEFAULT_PREFIX) -> Stores:
    """Redis when ``REDIS_URL`` is set (one connection pool for all three), else ``DATA_DIR/intake.db``.

    Opening does not touch Redis (the client connects on first use), so a Redis outage shows as
    StorageError on use: 503 from the webhook, the failing part named by ``/readyz``.
    """
    url = settings.env.REDIS_URL
    if url is not None:
        client = connect(url.get_secret_value())
        return Stores(RedisIntakeStore(client, prefix=redis_prefix, clock=clock),
                      RedisVmState(client, prefix=redis_prefix, clock=clock),
                      RedisLedger(client, prefix=redis_prefix, clock=clock), "redis")
    db = settings.data_dir / "intake.db"
    return Stores(IntakeStore(db, clock=clock), VmState(db, clock=clock), Ledger(db, clock=clock), "sqlite")
