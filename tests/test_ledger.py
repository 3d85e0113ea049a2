"""The uptime ledger's figures against a scripted week of power changes (SQLite and Redis)."""

from __future__ import annotations

import pytest

from gitlab_hook.ledger import Ledger
from gitlab_hook.redis_state import RedisLedger
from tests.redis_fixtures import BACKENDS, redis_server_fixture, redis_url_fixture  # noqa: F401
from tests.test_intake import Clock

H = 3600.0
MON = 1_795_996_800.0  # a Monday 00:00 UTC (2026-11-30)


@pytest.fixture
def clock():
    return Clock(MON + 7 * 24 * H)


@pytest.fixture(params=BACKENDS)
def ledger(request, tmp_path, clock):
    if request.param == "redis":
        return RedisLedger(request.getfixturevalue("redis_url"), clock=clock)
    return Ledger(tmp_path / "intake.db", clock=clock)


def test_a_scripted_week(ledger):
    # It was on since the previous Friday (someone forgot it): the week starts "on".
    ledger.record("buildfront", "on", "manual", "@ops", at=MON - 60 * H)
    ledger.record("buildfront", "off", "idle_stop", at=MON + 2 * H)            # 2 h into Monday
    for day in range(5):                                                        # Mon..Fri 09:00-19:00
        base = MON + day * 24 * H
        ledger.record("buildfront", "on", "push", "@dev to stage", at=base + 9 * H)
        ledger.record("buildfront", "off", "idle_stop", at=base + 19 * H)
    ledger.record("buildfront", "on", "pipeline", at=MON + 5 * 24 * H + 10 * H)  # Saturday 10:00
    ledger.record("buildfront", "off", "outside", "preempted", at=MON + 5 * 24 * H + 12 * H)
    ledger.record("buildback", "on", "manual", at=MON + 6 * 24 * H)            # Sunday 00:00, still on

    (back, front) = ledger.usage(MON, MON + 7 * 24 * H, prices={"buildfront": 4.5})
    assert front.vm == "buildfront"
    assert front.hours_on == pytest.approx(2 + 5 * 10 + 2)
    assert front.hours_saved == pytest.approx(168 - 54)
    assert front.cost_saved == pytest.approx(114 * 4.5)
    assert front.cost_spent == pytest.approx(54 * 4.5)
    assert front.wakes == {"push": 5, "pipeline": 1}  # the week began on: no wake counted for it
    assert len(front.intervals) == 7
    assert back.hours_on == pytest.approx(24) and back.cost_saved is None


def test_repeated_state_is_not_a_change(ledger):
    assert ledger.record("vm", "on", "push", at=MON)
    assert not ledger.record("vm", "on", "push", at=MON + 10)
    assert ledger.last("vm") == ("on", "push", MON)


def test_period_still_running_counts_until_now(ledger, clock):
    clock.t = MON + 5 * H
    ledger.record("vm", "on", "push", at=MON + 1 * H)
    (u,) = ledger.usage(MON, MON + 24 * H)
    assert u.hours_on == pytest.approx(4)


def test_events_recorded_out_of_order_and_at_the_same_instant(ledger):
    assert ledger.record("vm", "on", "push", at=MON + 2 * H)
    assert ledger.record("vm", "off", "idle_stop", at=MON + 3 * H)
    # A late report of an earlier change is judged against the state at its own time.
    assert ledger.record("vm", "on", "manual", at=MON + 2.25 * H) is False  # on since 02:00: a repeat
    assert ledger.last("vm") == ("off", "idle_stop", MON + 3 * H)
    # Two changes at one instant: the later one wins "last".
    assert ledger.record("vm", "on", "pipeline", at=MON + 3 * H)
    assert ledger.last("vm") == ("on", "pipeline", MON + 3 * H)
    assert ledger.vms() == ["vm"]
    (u,) = ledger.usage(MON, MON + 4 * H)
    assert u.hours_on == pytest.approx(1 + 1) and u.wakes == {"push": 1, "pipeline": 1}
