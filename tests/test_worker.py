"""The action runner: success, retries with backoff, giving up with an alert, orphans, redrive."""

from __future__ import annotations

import os

import pytest
from huey import MemoryHuey

from gitlab_hook.effects import DRY_RUN_HANDLERS, Effect, PermanentError, TransientError
from gitlab_hook.intake import IntakeStore
from gitlab_hook.planner import Action
from gitlab_hook.taskqueue import TaskQueue
from gitlab_hook.worker import ActionRunner, Redriver, backoff, make_owner, owner_is_gone
from tests.test_intake import Clock

JOB = Action("report_migration_failure", "report_migration_failure:job/9",
             {"job_id": 9, "job_name": "migrate", "project": "group/app", "branch": "stage"}, once=True)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def db(tmp_path, clock):
    return IntakeStore(tmp_path / "intake.db", clock=clock)


def runner_with(db, clock, handler, alerts):
    return ActionRunner(db, {JOB.kind: handler}, alert=alerts.append, give_up_after=3600, clock=clock)


def test_backoff_doubles_from_a_second_and_caps_near_a_minute():
    assert 0.8 <= backoff(1) <= 1.2
    assert 3.2 <= backoff(3) <= 4.8
    assert 48 <= backoff(30) <= 72
    # Attempts until the give-up hour: enough retries to cover it (design: at least an hour).
    assert sum(min(60, 2 ** (a - 1)) for a in range(1, 70)) >= 3600


def test_success_marks_done_and_journals(db, clock):
    (aid,) = db.accept("k", "build", [JOB]).new_ids
    alerts: list[str] = []
    runner = ActionRunner(db, DRY_RUN_HANDLERS, alert=alerts.append, clock=clock)
    assert runner(aid) is None
    row = db.get(aid)
    assert row.state == "done" and "would report failed migration job migrate #9" in row.result
    assert len(db.journal()) == 1 and alerts == []
    assert runner(aid) is None and len(db.journal()) == 1  # a redelivered task does nothing


def test_transient_failure_retries_with_backoff_then_succeeds(db, clock):
    (aid,) = db.accept("k", "build", [JOB]).new_ids
    calls = []

    def flaky(payload, ctx):
        calls.append(ctx.attempt)
        if len(calls) < 3:
            raise TransientError("compute API answered 503")
        return Effect("ok")

    runner = runner_with(db, clock, flaky, [])
    d1 = runner(aid)
    assert 0.8 <= d1 <= 1.2 and db.get(aid).state == "pending"
    assert runner(aid) is None and calls == [1]  # not due yet: nothing runs
    clock.t += d1
    d2 = runner(aid)
    assert 1.6 <= d2 <= 2.4
    clock.t += d2
    assert runner(aid) is None
    assert calls == [1, 2, 3] and db.get(aid).state == "done"
    assert db.counters("task_outcomes")[(JOB.kind, "retry")] == 2


def test_retry_after_from_the_outside_system_is_honoured(db, clock):
    (aid,) = db.accept("k", "build", [JOB]).new_ids

    def limited(payload, ctx):
        raise TransientError("429", retry_after=42)

    assert runner_with(db, clock, limited, [])(aid) == 42


def test_gives_up_after_the_window_with_an_alert_that_says_what_failed(db, clock):
    (aid,) = db.accept("k", "build", [JOB]).new_ids
    alerts: list[str] = []

    def down(payload, ctx):
        raise TransientError("Telegram unreachable: ConnectTimeout")

    runner = runner_with(db, clock, down, alerts)
    while True:
        delay = runner(aid)
        if delay is None:
            break
        clock.t += delay
    row = db.get(aid)
    assert row.state == "failed" and row.attempts > 30
    assert len(alerts) == 1 and "report_migration_failure:job/9" in alerts[0]
    assert "Telegram unreachable" in alerts[0]


def test_permanent_error_fails_at_once_and_alerts(db, clock):
    (aid,) = db.accept("k", "build", [JOB]).new_ids
    alerts: list[str] = []

    def missing(payload, ctx):
        raise PermanentError("VM buildfront not found in folder b1g")

    assert runner_with(db, clock, missing, alerts)(aid) is None
    assert db.get(aid).state == "failed" and alerts == [
        "gitlab-hook gave up on report_migration_failure:job/9: VM buildfront not found in folder b1g"]


def test_a_bug_in_a_handler_is_retried_not_lost(db, clock):
    (aid,) = db.accept("k", "build", [JOB]).new_ids

    def buggy(payload, ctx):
        raise KeyError("oops")

    assert runner_with(db, clock, buggy, [])(aid) is not None
    assert db.get(aid).state == "pending" and "oops" in db.get(aid).last_error


def test_owner_is_gone_for_dead_pids_and_earlier_starts_only():
    me = make_owner()
    host, pid, nonce = me.rsplit(":", 2)
    assert not owner_is_gone(me, me=me)
    assert owner_is_gone(f"{host}:{pid}:00000000", me=me)  # same pid, earlier start
    assert not owner_is_gone(f"{host}:{os.getppid()}:abc", me=me)  # a live process
    assert owner_is_gone(f"{host}:4194303:abc", me=me)  # no such pid
    assert not owner_is_gone("other-host:1:abc", me=me)  # left to lease expiry
    assert not owner_is_gone("garbage", me=me)


def test_redriver_at_start_queues_only_rows_without_a_waiting_task(db, clock):
    queue = TaskQueue(MemoryHuey("t", results=False, utc=True))
    ids = [db.accept(f"k{i}", "build", [Action(JOB.kind, f"r:{i}", {}, once=True)]).new_ids[0] for i in range(4)]
    queue.submit(ids[:2])  # these two still wait in the queue
    me = make_owner()
    host = me.split(":")[0]
    db.claim(ids[2], f"{host}:4194303:dead", 600)  # held by a worker that was killed
    redriver = Redriver(db, queue.submit, me, queued_action_ids=queue.queued_action_ids)
    assert redriver.at_start() == 2
    assert queue.queued_action_ids() == set(ids)
    assert queue.depth() == (4, 0)


def test_periodic_redrive_picks_up_stale_rows_only(db, clock):
    submitted: list[list[int]] = []
    (aid,) = db.accept("k", "build", [JOB]).new_ids
    redriver = Redriver(db, submitted.append, make_owner(), grace=30)
    assert redriver() == 0
    clock.t += 31
    assert redriver() == 1 and submitted == [[aid]]
