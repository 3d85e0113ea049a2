"""Reconciliation against the fakes: lost webhooks, outside stops, stuck starts, disabled hooks."""

from __future__ import annotations

import pytest

from gitlab_hook.reconcile import hook_state, watched_projects
from tests.lifecycle_support import MIN, PROJECT_ID, RUNNER_ID, HookedGitLab, buildfront, make_world, rules

HOOK_URL = "https://hooks.example.com/gitlab/webhook?token=s3cret"


@pytest.fixture
def gitlab_fake():
    with HookedGitLab() as gl:
        yield gl


@pytest.fixture
def make(tmp_path, compute_api, compute_client, gitlab_fake, bot_api, notifier):
    def build(rule_set=None, status="STOPPED", preemptible=False):
        w = make_world(tmp_path, compute_api, compute_client, gitlab_fake, bot_api, notifier, rule_set)
        w.vm = compute_api.add_instance("buildfront", status=status, preemptible=preemptible)
        return w

    return build


@pytest.fixture
def world(make):
    return make()


def test_a_lost_webhook_is_recovered_pending_job_starts_the_stopped_vm(world, gitlab_fake):
    w = world
    gitlab_fake.add_job(PROJECT_ID, 701, "build", "pending")
    lines = w.reconciler.check()
    assert any("1 pending job(s) and STOPPED: buildfront started and RUNNING" in line for line in lines)
    assert w.compute_api.status(w.vm) == "RUNNING" and w.compute_api.count("POST", ":start") == 1
    assert w.ledger.last("buildfront")[:2] == ("on", "reconcile")
    assert w.texts()[0] == ("▶️ buildfront: starting (1 pending job waited for runner 12 while it was STOPPED: "
                            "a lost webhook?)")
    w.advance(MIN)
    w.reconciler.check()  # the job is still pending (the runner is booting): no second start
    assert w.compute_api.count("POST", ":start") == 1 and len(w.texts()) == 2


def test_a_lost_webhook_start_gives_back_runners_the_idle_stop_paused(world, gitlab_fake):
    w = world
    w.power.pauses.memos.update("paused:buildfront", runner_ids=[RUNNER_ID])
    gitlab_fake.set_runner(RUNNER_ID, paused=True)
    gitlab_fake.add_job(PROJECT_ID, 701, "build", "pending")
    w.reconciler.check()
    assert gitlab_fake.runners[RUNNER_ID]["paused"] is False


def test_no_pending_jobs_nothing_is_started(world, gitlab_fake):
    gitlab_fake.add_job(PROJECT_ID, 702, "build", "success", runner_id=RUNNER_ID)
    assert world.reconciler.check() == []
    assert world.compute_api.count("POST") == 0 and world.texts() == []


def test_a_stop_from_outside_is_recorded_and_told_once(world):
    w = world
    w.ledger.record("buildfront", "on", "push", "@dev to stage")
    w.advance(2 * 3600)
    w.reconciler.check()
    w.advance(MIN)
    w.reconciler.check()
    assert w.ledger.last("buildfront")[:2] == ("off", "outside")
    assert w.texts() == ["⚠️ buildfront is STOPPED, but gitlab-hook last switched it on (push, 2 h ago): "
                         "stopped outside gitlab-hook (console, yc), or its start failed."]


def test_a_preempted_vm_is_named_as_such(make):
    w = make(preemptible=True)
    w.ledger.record("buildfront", "on", "push")
    w.advance(25 * MIN)
    w.reconciler.check()
    assert w.texts() == ["⚠️ buildfront is STOPPED, but gitlab-hook last switched it on (push, 25 min ago): "
                         "preempted by Yandex Cloud or stopped outside gitlab-hook."]


def test_a_vm_started_outside_is_recorded(make):
    w = make(status="RUNNING")
    w.ledger.record("buildfront", "off", "idle_stop")
    w.reconciler.check()
    w.reconciler.check()
    assert w.ledger.last("buildfront")[:2] == ("on", "outside")
    assert w.texts() == ["ℹ️ buildfront was started outside gitlab-hook; the idle stop watches it from now on."]


def test_a_change_in_flight_is_not_taken_for_an_outside_change(world):
    w = world
    w.ledger.record("buildfront", "on", "push")
    w.state.try_lock("power:buildfront", "idle_stop:1", 900)
    assert "power:buildfront held by idle_stop:1" in w.reconciler.check()[0]
    assert w.ledger.last("buildfront")[0] == "on" and w.texts() == []


def runner_control_record(w, key: str, **extra) -> None:
    """A start progress record as RunnerControl writes it, for a start that died on the way."""
    op = w.compute_api.operation_ids()[-1] if w.compute_api.operation_ids() else "fhmop00000000000001"
    w.state.save_progress(key, vm="buildfront", instance_id=w.vm, operation_id=op, started_at=w.clock.now,
                          start_told=True, **extra)


def test_a_start_that_never_reached_running_is_retried_once(world):
    w = world
    runner_control_record(w, "start:41")
    w.advance(5 * MIN)
    assert w.reconciler.check() == []  # not stale yet
    w.advance(6 * MIN)
    lines = w.reconciler.check()
    assert any("stale start start:41 retried: buildfront started and RUNNING" in line for line in lines)
    assert w.compute_api.status(w.vm) == "RUNNING" and w.compute_api.count("POST", ":start") == 1
    assert w.texts()[0] == "▶️ buildfront: starting (again: a start (a push) 11 min ago never reached RUNNING)"
    assert w.ledger.last("buildfront")[:2] == ("on", "reconcile")
    w.advance(20 * MIN)
    w.reconciler.check()
    assert w.compute_api.count("POST", ":start") == 1 and len(w.texts()) == 2


def test_a_start_stuck_in_a_broken_state_is_reported_once(world):
    w = world
    w.compute_api.set_status(w.vm, "ERROR")
    runner_control_record(w, "start:42")
    w.advance(15 * MIN)
    w.reconciler.check()
    w.advance(15 * MIN)
    w.reconciler.check()
    assert w.compute_api.count("POST", ":start") == 0
    assert w.texts() == ["⚠️ buildfront: a start (a push) 15 min ago never reached RUNNING; it is ERROR. "
                         "Look at it in the Yandex Cloud console, or try /vm_start buildfront."]


def test_starts_that_finished_or_failed_visibly_are_left_alone(world):
    w = world
    runner_control_record(w, "start:43", running_told=True)
    runner_control_record(w, "start:44", failure_told=True)
    w.advance(30 * MIN)
    assert w.reconciler.check() == [] and w.texts() == []


def test_a_webhook_disabled_by_gitlab_is_told_once_per_change(world, gitlab_fake):
    w = world
    ours = gitlab_fake.add_hook(PROJECT_ID, HOOK_URL)
    gitlab_fake.add_hook(PROJECT_ID, "https://ci.example.com/other", alert_status="disabled")  # not ours
    assert w.reconciler.check() == []  # working at first sight: nothing to say
    gitlab_fake.set_hook(ours["id"], alert_status="temporarily_disabled", disabled_until=w.clock.now + 3600)
    for _ in range(5):
        w.reconciler.check()
        w.advance(MIN)
    assert len(w.texts()) == 1
    assert w.texts()[0].startswith("⚠️ GitLab has paused our webhook on group/app "
                                   "(https://hooks.example.com/gitlab/webhook) until 2023-11-14 23:13 UTC")
    assert "s3cret" not in w.texts()[0]
    gitlab_fake.set_hook(ours["id"], alert_status="disabled", disabled_until=None)
    w.reconciler.check()
    w.reconciler.check()
    assert w.texts()[1].startswith("🚫 GitLab has disabled our webhook on group/app") and "for good" in w.texts()[1]
    gitlab_fake.set_hook(ours["id"], alert_status="executable")
    w.reconciler.check()
    assert w.texts()[2:] == ["✅ GitLab delivers to our webhook on group/app "
                             "(https://hooks.example.com/gitlab/webhook) again."]


def test_only_plain_project_paths_are_asked_for_hooks(make, gitlab_fake):
    w = make(rules(buildfront(projects=["group/app", "group/*", "group/app"])))
    w.reconciler.check()
    assert watched_projects(w.rules) == ["group/app"]
    assert gitlab_fake.count("GET /projects/:id/hooks") == 1


def test_hook_states():
    assert hook_state({"alert_status": "executable", "disabled_until": None}, 100.0) == ("ok", None)
    assert hook_state({"alert_status": "executable", "disabled_until": "2023-11-14T23:13:20.000Z"},
                      1_700_000_000.0)[0] == "temporarily_disabled"
    assert hook_state({"alert_status": "disabled"}, 0)[0] == "disabled"


def test_gitlab_down_is_not_an_error_of_the_chore(world, gitlab_fake):
    gitlab_fake.add_hook(PROJECT_ID, HOOK_URL, alert_status="disabled")
    gitlab_fake.fail(503, times=None)
    lines = world.reconciler.check()
    assert any("cannot ask GitLab for pending jobs" in line for line in lines)
    assert world.compute_api.count("POST") == 0 and world.texts() == []
