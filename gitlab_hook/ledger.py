"""Uptime ledger: every power change with its cause, and what a period cost and saved."""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from gitlab_hook.sqlite_db import Database

SCHEMA = """
create table if not exists power_events (
    id     integer primary key autoincrement,
    vm     text not null,
    at     real not null,
    state  text not null check (state in ('on', 'off')),
    cause  text not null,   -- push | pipeline | idle_stop | window | manual | outside | reconcile | resize
    detail text not null default ''
);
create index if not exists power_events_vm_at on power_events (vm, at);
"""


@dataclass
class VmUsage:
    """One VM over one period."""

    vm: str
    hours_on: float = 0.0
    hours_saved: float = 0.0  # against always-on
    cost_saved: float | None = None  # when a price per hour is known
    cost_spent: float | None = None
    wakes: Counter = field(default_factory=Counter)  # cause → how many times it was switched on
    intervals: list[tuple[float, float]] = field(default_factory=list)  # (on, off) epoch seconds


class Ledger:
    """Append-only power events in SQLite (the intake database file), and reports over them."""

    def __init__(self, path: Path | str, *, clock: Callable[[], float] = time.time):
        self.path, self.clock = str(path), clock
        self.db = Database(path, schema=SCHEMA, synchronous="full")
        self._conn = self.db.conn

    def record(self, vm: str, state: str, cause: str, detail: str = "", at: float | None = None) -> bool:
        """Append a power change; a repeat of the VM's current state is ignored (returns False)."""
        at = self.clock() if at is None else at

        def work(c: sqlite3.Connection) -> bool:
            last = c.execute("select state from power_events where vm = ? and at <= ? order by at desc, id desc "
                             "limit 1", (vm, at)).fetchone()
            if last and last[0] == state:
                return False
            c.execute("insert into power_events (vm, at, state, cause, detail) values (?, ?, ?, ?, ?)",
                      (vm, at, state, cause, detail))
            return True

        return self.db.tx(work)

    def vms(self) -> list[str]:
        """Every VM the ledger has heard of."""
        return [r[0] for r in self._conn().execute("select distinct vm from power_events order by vm")]

    def last(self, vm: str) -> tuple[str, str, float] | None:
        """The VM's latest (state, cause, at), if any."""
        row = self._conn().execute("select state, cause, at from power_events where vm = ? order by at desc, id desc "
                                   "limit 1", (vm,)).fetchone()
        return (row[0], row[1], row[2]) if row else None

    def usage(self, start: float, end: float, prices: dict[str, float] | None = None,
              vms: list[str] | None = None) -> list[VmUsage]:
        """Per VM over [start, end): hours on, hours and money saved against always-on, what woke it."""
        prices = prices or {}
        c = self._conn()
        now = self.clock()
        out = []
        for vm in vms or self.vms():
            before = c.execute("select state from power_events where vm = ? and at < ? order by at desc, id desc "
                               "limit 1", (vm, start)).fetchone()
            rows = c.execute("select at, state, cause from power_events where vm = ? and at >= ? and at < ? "
                             "order by at, id", (vm, start, end)).fetchall()
            out.append(vm_usage(vm, before[0] if before else None, rows, start, end, now, prices.get(vm)))
        return out


def vm_usage(vm: str, state_before: str | None, events: Iterable[tuple[float, str, str]], start: float,
             end: float, now: float, price: float | None = None) -> VmUsage:
    """One VM's figures over [start, end), from its state before ``start`` and its events inside, in order.

    ``events`` are (at, state, cause) with start <= at < end, ordered by time then insertion.
    Pure arithmetic: the SQLite and the Redis ledger both call it.
    """
    u = VmUsage(vm)
    on_since = start if state_before == "on" else None
    for at, state, cause in events:
        if state == "on" and on_since is None:
            on_since = at
            u.wakes[cause] += 1
        elif state == "off" and on_since is not None:
            u.intervals.append((on_since, at))
            on_since = None
    if on_since is not None:
        u.intervals.append((on_since, min(end, max(on_since, now))))
    u.hours_on = sum(b - a for a, b in u.intervals) / 3600
    u.hours_saved = (end - start) / 3600 - u.hours_on
    if price is not None:
        u.cost_saved = round(u.hours_saved * price, 2)
        u.cost_spent = round(u.hours_on * price, 2)
    return u
