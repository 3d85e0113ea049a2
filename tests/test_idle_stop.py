"""Safe idle stop and window-open starts, against the fake Compute, GitLab and Bot APIs, with a FakeClock."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from tests.lifecycle_support import MIN, PROJECT_ID, RUNNER_ID, HookedGitLab, buildfront, ctx, make_world, rules


def utc(text: str) -> float:
    """Epoch seconds of an ISO time in UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


@pytest.fixture
def gitlab_fake():
    with HookedGitLab() as gl:
        yield gl


@pytest.fixture
def make(tmp_path, compute_api, compute_client, gitlab_fake, bot_api, notifier):
    def build(rule_set=None, start=1_700_000_000.0, status="RUNNING"):
        w = make_world(tmp_path, compute_api, compute_client, gitlab_fake, bot_api, notifier, rule_set, start)
        w.vm = compute_api.add_instance("buildfront", status=status)
        return w

    return build


@pytest.fixture
def world(make):
    return make()


def stops(w) -> int:
    return w.compute_api.count("POST", ":stop")


def settle(w, status: str) -> None:
    """Wait (real time) until the fake VM reaches a status."""
    deadline = time.monotonic() + 5
    while w.compute_api.status(w.vm) != status and time.monotonic() < deadline:
        time.sleep(0.02)
    assert w.compute_api.status(w.vm) == status


def test_stops_after_exactly_the_idle_time_and_pauses_the_runner(world):
    w = world
    w.idle.check()  # idle from now
    w.advance(30 * MIN - 1)
    assert "idle for 1799 s of 1800 s" in w.idle.check()[0]
    assert stops(w) == 0 and w.compute_api.status(w.vm) == "RUNNING"
    w.advance(1)
    (line,) = w.idle.check()
    assert "stopped after 1800 s idle" in line
    assert stops(w) == 1 and w.compute_api.status(w.vm) == "STOPPED"
    assert w.gitlab_fake.runners[RUNNER_ID]["paused"] is True
    assert w.idle.pauses.paused_by_us("buildfront") == [RUNNER_ID]
    assert w.ledger.last("buildfront")[:2] == ("off", "idle_stop")
    assert w.texts() == ["⏹ buildfront stopped: idle for 30 min (no running or pending jobs on runner 12); "
                         "runner 12 paused until it starts again."]
    # The pause came before the second look at the jobs and before the stop.
    routes = [c.route for c in w.gitlab_fake.calls]
    put = routes.index("PUT /runners/:id")
    assert "GET /runners/:id/jobs" in routes[put:]


def test_no_stop_while_a_job_runs_and_the_idle_time_starts_when_it_ends(world):
    w = world
    w.gitlab_fake.add_job(PROJECT_ID, 501, "build", "running", runner_id=RUNNER_ID)
    for _ in range(12):  # two hours of checks, every 10 min
        assert "busy (1 running, 0 pending)" in w.idle.check()[0]
        w.advance(10 * MIN)
    assert stops(w) == 0 and w.texts() == []
    w.gitlab_fake.set_job_status(501, "success")
    w.idle.check()
    w.advance(29 * MIN)
    w.idle.check()
    assert stops(w) == 0
    w.advance(1 * MIN)
    w.idle.check()
    assert stops(w) == 1


def test_a_pending_job_the_runner_can_take_keeps_it_on_one_it_cannot_does_not(make, gitlab_fake):
    w = make()
    gitlab_fake.set_runner(RUNNER_ID, tag_list=["docker"], run_untagged=False)
    gitlab_fake.add_job(PROJECT_ID, 502, "deploy", "pending", tag_list=["docker"])
    gitlab_fake.add_job(PROJECT_ID, 503, "gpu-train", "pending", tag_list=["gpu"])
    w.idle.check()
    w.advance(3 * 30 * MIN)
    assert "busy (0 running, 1 pending)" in w.idle.check()[0]
    assert stops(w) == 0
    gitlab_fake.set_job_status(502, "canceled")
    w.idle.check()
    w.advance(30 * MIN)
    w.idle.check()  # the gpu job is not for this runner: it does not keep the VM on
    assert stops(w) == 1


def test_no_stop_when_a_job_appears_between_the_check_and_the_stop(world, gitlab_fake):
    w = world

    def job_sneaks_in(runner_id: int) -> None:
        gitlab_fake.on_pause = None
        gitlab_fake.add_job(PROJECT_ID, 601, "build", "running", runner_id=runner_id)

    w.idle.check()
    w.advance(30 * MIN)
    gitlab_fake.on_pause = job_sneaks_in
    (line,) = w.idle.check()
    assert "a job appeared while stopping (1 running, 0 pending)" in line
    assert stops(w) == 0 and w.compute_api.status(w.vm) == "RUNNING"
    assert gitlab_fake.runners[RUNNER_ID]["paused"] is False  # given back at once
    assert w.idle.pauses.paused_by_us("buildfront") == []
    puts = [c.body for c in gitlab_fake.requests("PUT /runners/:id")]
    assert [str(b["paused"]).lower() for b in puts] == ["true", "false"]
    assert w.texts() == ["⏸ buildfront was about to be stopped, but a job appeared (1 running, 0 pending): "
                         "it stays on."]
    # The idle time starts again from that moment.
    gitlab_fake.set_job_status(601, "success")
    w.advance(29 * MIN)
    w.idle.check()
    assert stops(w) == 0
    w.advance(1 * MIN)
    w.idle.check()
    assert stops(w) == 1


def test_no_stop_inside_a_window_across_midnight_and_one_message_about_it(make):
    # Moscow is UTC+3 all year: 22:00-02:00 MSK is 19:00-23:00 UTC.
    w = make(rules(buildfront(keep_running="daily 22:00-02:00")), start=utc("2024-03-05T19:10:00"))
    t = w.clock.now
    while w.clock.now < utc("2024-03-05T23:00:00"):
        w.idle.check()
        w.advance(10 * MIN)
    assert stops(w) == 0
    assert w.texts() == ["⏸ buildfront has been idle for 30 min but stays on: inside its keep_running window "
                         "daily 22:00-02:00 (Europe/Moscow)"]
    assert w.clock.now == utc("2024-03-05T23:00:00") and w.clock.now - t == 230 * MIN
    w.idle.check()  # 02:00 MSK: the window is closed
    assert stops(w) == 1


@pytest.mark.parametrize("start, closes", [
    # Autumn: 01:00 CEST = 23:00 UTC; 04:00 CET = 03:00 UTC (02:00-03:00 happens twice: 4 real hours).
    ("2024-10-26T23:00:00", "2024-10-27T03:00:00"),
    # Spring: 01:00 CET = 00:00 UTC; 04:00 CEST = 02:00 UTC (02:00-03:00 is skipped: 2 real hours).
    ("2024-03-31T00:00:00", "2024-03-31T02:00:00"),
])
def test_no_stop_inside_a_window_across_a_dst_change(make, start, closes):
    w = make(rules(buildfront(keep_running="sun 01:00-04:00", timezone="Europe/Berlin")), start=utc(start))
    while w.clock.now < utc(closes):
        w.idle.check()
        assert stops(w) == 0, datetime.fromtimestamp(w.clock.now, tz=timezone.utc)
        w.advance(10 * MIN)
    w.idle.check()
    assert stops(w) == 1
    assert len(w.texts()) == 2 and "inside its keep_running window sun 01:00-04:00 (Europe/Berlin)" in w.texts()[0]


def test_no_stop_when_gitlab_is_down_told_once_and_once_when_it_recovers(world, gitlab_fake):
    w = world
    w.idle.check()
    w.advance(20 * MIN)
    gitlab_fake.fail(503, times=None)
    for _ in range(60):  # an hour of checks, every minute
        assert "GitLab cannot be asked; staying on" in w.idle.check()[0]
        w.advance(MIN)
    assert stops(w) == 0 and w.compute_api.status(w.vm) == "RUNNING"
    assert len(w.texts()) == 1
    assert w.texts()[0].startswith("⚠️ GitLab cannot be asked whether the runners are busy (")
    assert w.texts()[0].endswith("Idle runner VMs stay on until it answers.")
    gitlab_fake.clear_faults()
    w.idle.check()
    assert w.texts()[1] == "✅ GitLab answers again: the idle stop of runner VMs is back on."
    # The outage does not count as idle time: 30 more minutes from the recovery.
    w.advance(29 * MIN)
    w.idle.check()
    assert stops(w) == 0
    w.advance(MIN)
    w.idle.check()
    assert stops(w) == 1 and len(w.texts()) == 3


def test_a_vm_keep_hold_keeps_it_on_until_it_expires(world):
    w = world
    w.state.try_lock("keep:buildfront", "@dev", 2 * 3600)
    w.idle.check()
    for _ in range(10):
        w.advance(10 * MIN)
        w.idle.check()
    assert stops(w) == 0
    assert w.texts() == ["⏸ buildfront has been idle for 30 min but stays on: kept on with /vm_keep (@dev)"]
    w.advance(30 * MIN)  # the hold has expired
    w.idle.check()
    assert stops(w) == 1


def test_runners_are_unpaused_by_the_next_start(world):
    w = world
    w.idle.check()
    w.advance(30 * MIN)
    w.idle.check()
    assert w.gitlab_fake.runners[RUNNER_ID]["paused"] is True
    w.power.start({"vm": "buildfront", "by": "@ops", "progress": None}, ctx(5))
    assert w.compute_api.status(w.vm) == "RUNNING"
    assert w.gitlab_fake.runners[RUNNER_ID]["paused"] is False
    assert w.idle.pauses.paused_by_us("buildfront") == []


def test_a_start_outside_our_paths_is_caught_by_the_next_check(world):
    w = world
    w.idle.check()
    w.advance(30 * MIN)
    w.idle.check()
    w.compute.start(w.vm)  # someone in the console
    settle(w, "RUNNING")
    line = w.idle.check()[0]
    assert line == "buildfront: RUNNING, unpaused runner 12"
    assert w.gitlab_fake.runners[RUNNER_ID]["paused"] is False


def test_a_runner_paused_by_a_human_is_left_alone(world, gitlab_fake):
    w = world
    gitlab_fake.set_runner(RUNNER_ID, paused=True)
    w.idle.check()
    w.advance(30 * MIN)
    w.idle.check()
    assert stops(w) == 1
    assert gitlab_fake.count("PUT /runners/:id") == 0
    assert w.texts()[-1].endswith("(no running or pending jobs on runner 12).")
    w.power.start({"vm": "buildfront", "by": "@ops", "progress": None}, ctx(6))
    assert gitlab_fake.runners[RUNNER_ID]["paused"] is True and gitlab_fake.count("PUT /runners/:id") == 0


def test_a_failing_stop_operation_is_told_and_the_runner_given_back(world):
    w = world
    w.compute_api.fail_next_operation(13, "Internal error: host busy")
    w.idle.check()
    w.advance(30 * MIN)
    (line,) = w.idle.check()
    assert "stop failed" in line and w.compute_api.status(w.vm) == "RUNNING"
    assert w.texts()[-1].startswith("❌ Idle stop of buildfront failed:") and w.texts()[-1].endswith("It is RUNNING.")
    assert w.gitlab_fake.runners[RUNNER_ID]["paused"] is False
    assert w.ledger.last("buildfront")[0] == "on"


def test_rules_without_idle_stop_after_are_never_stopped(make):
    w = make(rules(buildfront(idle_stop_after=None)))
    w.idle.check()
    w.advance(24 * 3600)
    assert w.idle.check() == [] and stops(w) == 0


def test_start_at_window_open_starts_a_stopped_vm_once(make):
    # 2024-03-04 is a Monday; 09:00 MSK = 06:00 UTC.
    w = make(rules(buildfront(keep_running="mon-fri 09:00-20:00", start_at_window_open=True)),
             start=utc("2024-03-04T05:50:00"), status="STOPPED")
    assert w.idle.check() == ["buildfront: STOPPED; not idle-checked"]
    w.advance(9 * MIN)  # 08:59 MSK
    w.idle.check()
    assert w.compute_api.count("POST", ":start") == 0
    w.advance(2 * MIN)  # 09:01 MSK
    line = w.idle.check()[0]
    assert "window mon-fri 09:00-20:00 opened" in line
    assert w.compute_api.status(w.vm) == "RUNNING"
    assert w.ledger.last("buildfront")[:2] == ("on", "window")
    assert w.texts()[0] == ("▶️ buildfront: starting (its keep_running window mon-fri 09:00-20:00 "
                            "(Europe/Moscow) opened)")
    assert w.texts()[1].startswith("✅ buildfront is RUNNING (took ")
    w.compute.stop(w.vm)  # an operator stops it inside the window: not started again
    settle(w, "STOPPED")
    w.advance(MIN)
    w.idle.check()
    assert w.compute_api.count("POST", ":start") == 1


def test_no_window_start_on_a_weekend(make):
    # 2024-03-09 is a Saturday.
    w = make(rules(buildfront(keep_running="mon-fri 09:00-20:00", start_at_window_open=True)),
             start=utc("2024-03-09T05:50:00"), status="STOPPED")
    for _ in range(30):
        w.idle.check()
        w.advance(10 * MIN)
    assert w.compute_api.count("POST", ":start") == 0


def test_the_same_on_memos_kept_as_progress_records_as_with_redis(world, gitlab_fake):
    from gitlab_hook.idle_stop import IdleStopper, RunnerPauses
    from gitlab_hook.memos import StateMemos
    from gitlab_hook.power import PowerControl
    from tests.lifecycle_support import FAST, FAST_IDLE

    w = world
    pauses = RunnerPauses(StateMemos(w.state), lambda: w.gitlab)
    power = PowerControl(lambda: w.compute, w.notifier, w.state, w.ledger, gitlab=lambda: w.gitlab, rules=w.rules,
                         clock=w.clock, policy=FAST, pauses=pauses)
    idle = IdleStopper(lambda: w.compute, w.notifier, w.state, w.ledger, gitlab=lambda: w.gitlab, rules=w.rules,
                       power=power, memos=StateMemos(w.state), clock=w.clock, policy=FAST_IDLE)
    gitlab_fake.fail(503, times=None)
    for _ in range(5):
        idle.check()
        w.advance(MIN)
    gitlab_fake.clear_faults()
    idle.check()
    assert len(w.texts()) == 2
    w.advance(30 * MIN)
    idle.check()
    assert stops(w) == 1 and w.state.progress("memo:paused:buildfront") == {"runner_ids": [RUNNER_ID]}
    power.start({"vm": "buildfront", "by": "@ops"}, ctx(8))
    assert gitlab_fake.runners[RUNNER_ID]["paused"] is False and pauses.paused_by_us("buildfront") == []
