"""Manual start and stop (vm_start, vm_stop) through the real clients against the fakes."""

from __future__ import annotations

import threading

import pytest

from gitlab_hook.effects import TransientError
from gitlab_hook.runner_control import RunnerControl, StartPolicy
from tests.conftest import CHAT_ID
from tests.lifecycle_support import PROJECT_ID, RUNNER_ID, HookedGitLab, ctx, make_world

PRIVATE = 123456789
STOP = {"vm": "buildfront", "by": "@ops", "progress": None}


@pytest.fixture
def gitlab_fake():
    with HookedGitLab() as gl:
        yield gl


@pytest.fixture
def world(tmp_path, compute_api, compute_client, gitlab_fake, bot_api, notifier):
    w = make_world(tmp_path, compute_api, compute_client, gitlab_fake, bot_api, notifier)
    w.vm = compute_api.add_instance("buildfront", status="RUNNING")
    return w


def events(w) -> list[tuple[str, str, str]]:
    rows = w.ledger.db.conn().execute("select state, cause, detail from power_events order by at, id").fetchall()
    return [tuple(r) for r in rows]


def test_manual_stop_reports_progress_records_and_announces(world):
    w = world
    effect = w.power.stop(STOP, ctx(1))
    assert w.compute_api.status(w.vm) == "STOPPED" and w.compute_api.count("POST", ":stop") == 1
    assert w.texts() == ["⏳ buildfront: stopping, asked by @ops", "⏹ @ops stopped buildfront (took 0 s)"]
    assert events(w) == [("off", "manual", "by @ops")]
    assert "stopped by @ops" in effect.summary


def test_manual_stop_warns_about_running_jobs_but_stops(world, gitlab_fake):
    w = world
    gitlab_fake.add_job(PROJECT_ID, 501, "build", "running", runner_id=RUNNER_ID)
    w.power.stop(STOP, ctx(1))
    assert w.compute_api.status(w.vm) == "STOPPED"
    assert w.texts()[0] == ("⏳ buildfront: stopping, asked by @ops\n"
                            "⚠️ 1 job running on runner 12 will fail: #501 build")


def test_progress_is_edited_in_the_operators_chat_and_announced_in_the_alerts_chat(world):
    w = world
    (msg_id,) = w.notifier.send_html("⏳ stopping buildfront…", chat_id=PRIVATE)
    w.power.stop({**STOP, "progress": {"chat_id": PRIVATE, "message_id": msg_id}}, ctx(1))
    (private,) = w.bot_api.messages(PRIVATE)
    assert private.text == "⏳ buildfront: stopping, asked by @ops\n⏹ @ops stopped buildfront (took 0 s)"
    assert w.texts() == ["⏹ @ops stopped buildfront"]


def test_progress_in_the_alerts_chat_is_not_announced_twice(world):
    w = world
    (msg_id,) = w.notifier.send_html("⏳ stopping buildfront…")
    w.power.stop({**STOP, "by": "console", "progress": {"chat_id": CHAT_ID, "message_id": msg_id}}, ctx(1))
    assert w.texts() == ["⏳ buildfront: stopping, asked by the console operator\n"
                         "⏹ the console operator stopped buildfront (took 0 s)"]


def test_a_stop_resumes_after_telegram_fails_and_is_never_repeated(world, bot_api):
    w = world
    bot_api.inject_error("sendMessage", 500, "Internal Server Error", times=20)
    with pytest.raises(TransientError):
        w.power.stop(STOP, ctx(7))
    assert w.compute_api.count("POST", ":stop") == 1 and w.texts() == []
    bot_api._faults.clear()
    w.power.stop(STOP, ctx(7))  # the queue's retry of the same action
    w.power.stop(STOP, ctx(7))  # and a redelivery after it finished
    assert w.compute_api.count("POST", ":stop") == 1
    assert w.texts() == ["⏳ buildfront: stopping, asked by @ops", "⏹ @ops stopped buildfront (took 0 s)"]
    assert events(w) == [("off", "manual", "by @ops")]


def test_stopping_a_stopped_vm_is_said_and_nothing_else(world):
    w = world
    w.compute_api.set_status(w.vm, "STOPPED")
    assert "already STOPPED" in w.power.stop(STOP, ctx(1)).summary
    assert w.compute_api.count("POST", ":stop") == 0 and w.texts() == ["⏹ buildfront is already STOPPED"]


def test_manual_start_records_and_announces(world):
    w = world
    w.compute_api.set_status(w.vm, "STOPPED")
    w.power.start({"vm": "buildfront", "by": "@ops", "progress": None}, ctx(2))
    w.power.start({"vm": "buildfront", "by": "@ops", "progress": None}, ctx(2))  # redelivered
    assert w.compute_api.status(w.vm) == "RUNNING" and w.compute_api.count("POST", ":start") == 1
    assert w.texts()[0] == "▶️ buildfront: starting (asked by @ops)"
    assert w.texts()[1] == "✅ @ops started buildfront (took 0 s)" and len(w.texts()) == 2
    assert events(w) == [("on", "manual", "by @ops")]


def test_a_failed_manual_start_says_where_the_vm_is(world):
    w = world
    w.compute_api.set_status(w.vm, "STOPPED")
    w.compute_api.fail_next_operation(8, "Quota exceeded: cores")
    effect = w.power.start({"vm": "buildfront", "by": "@ops", "progress": None}, ctx(3))
    assert "start failed" in effect.summary
    assert w.texts()[-1].startswith("❌ buildfront did not start:") and "Quota exceeded" in w.texts()[-1]
    assert w.texts()[-1].endswith("It is STOPPED.")
    assert w.ledger.last("buildfront")[0] == "off"


def test_a_missing_vm_is_told(world):
    effect = world.power.stop({**STOP, "vm": "buildback"}, ctx(1))
    assert "no such VM" in effect.summary and world.texts() == ["❌ no VM named buildback in the folder"]


def test_a_stop_waits_for_a_start_in_flight_and_for_another_power_change(world):
    w = world
    w.state.try_lock("start:buildfront", "action:99", 900)
    with pytest.raises(TransientError, match="a start is in progress"):
        w.power.stop(STOP, ctx(1))
    w.state.unlock("start:buildfront", "action:99")
    w.state.try_lock("power:buildfront", "action:98", 900)
    with pytest.raises(TransientError, match="another power change"):
        w.power.stop(STOP, ctx(1))
    with pytest.raises(TransientError, match="busy"):
        w.power.start({"vm": "buildfront", "by": "@ops"}, ctx(2))
    assert w.compute_api.count("POST") == 0
    w.state.unlock("power:buildfront", "action:98")
    w.power.stop(STOP, ctx(1))
    assert w.compute_api.status(w.vm) == "STOPPED"


def test_a_push_during_a_stop_is_not_dropped(world, compute_client, notifier):
    w = world
    w.compute_api.transition_seconds = 0.3
    push = {"vm": "buildfront", "cause": "push", "branch": "stage", "user": "dev", "sha": "a" * 40, "title": "fix"}
    control = RunnerControl(lambda: compute_client, notifier, w.state, ledger=w.ledger,
                            policy=StartPolicy(poll_interval=0.02, start_wait=5, stop_wait=5))
    stopper = threading.Thread(target=w.power.stop, args=(STOP, ctx(1)))
    stopper.start()
    w.compute_api.wait_answered("POST", ":stop")
    control.ensure_running(push, ctx(2))  # arrives while the VM is STOPPING
    stopper.join()
    assert w.compute_api.status(w.vm) == "RUNNING"
    assert w.compute_api.count("POST", ":stop") == 1 and w.compute_api.count("POST", ":start") == 1
    assert [e[:2] for e in events(w)] == [("off", "manual"), ("on", "push")]
    assert not any("did not stop" in t for t in w.texts())
    (told,) = [t for t in w.texts() if t.startswith("⏹ @ops stopped buildfront (took ")]
    assert told.endswith((" s)", "(STARTING)", "(RUNNING)"))  # the stop is told as done, the restart as such
    assert w.texts()[-1].startswith("✅ buildfront is RUNNING")


def test_a_progress_message_that_cannot_be_edited_gives_way_to_new_messages(world):
    w = world
    w.power.stop({**STOP, "progress": {"chat_id": PRIVATE, "message_id": 999}}, ctx(1))  # no such message
    assert w.compute_api.status(w.vm) == "STOPPED"
    assert [m.text for m in w.bot_api.messages(PRIVATE)] == ["⏳ buildfront: stopping, asked by @ops",
                                                              "⏹ @ops stopped buildfront (took 0 s)"]
    assert w.texts() == ["⏹ @ops stopped buildfront"]
