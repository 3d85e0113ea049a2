"""The start path against the fake Compute API and the fake Bot API, through the real clients."""

from __future__ import annotations

import threading

import pytest

from gitlab_hook.effects import Context, TransientError
from gitlab_hook.ledger import Ledger
from gitlab_hook.runner_control import RunnerControl, StartPolicy
from gitlab_hook.vm_state import VmState
from tests.conftest import CHAT_ID, THREAD_ID

PUSH = {"vm": "buildfront", "cause": "push", "project": "group/app", "branch": "stage", "user": "jsmith",
        "sha": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7", "title": "Fix the login page"}
FAST = StartPolicy(poll_interval=0.02, start_wait=5, stop_wait=5)


def ctx(action_id: int = 1) -> Context:
    return Context(action_id, 1, lambda: None)


@pytest.fixture
def state(tmp_path):
    return VmState(tmp_path / "intake.db")


@pytest.fixture
def ledger(tmp_path):
    return Ledger(tmp_path / "intake.db")


@pytest.fixture
def control(compute_client, notifier, state, ledger):
    return RunnerControl(lambda: compute_client, notifier, state, ledger=ledger, policy=FAST)


def texts(bot_api):
    return [m.text for m in bot_api.messages(CHAT_ID)]


def test_stopped_vm_is_started_once_and_the_chat_gets_a_pair_of_messages(control, compute_api, bot_api, ledger):
    vm = compute_api.add_instance("buildfront")
    effect = control.ensure_running(PUSH, ctx())
    assert compute_api.status(vm) == "RUNNING"
    assert compute_api.count("POST", ":start") == 1
    sent = texts(bot_api)
    assert sent[0] == "▶️ buildfront: starting for a push by @jsmith to stage (da15608, 'Fix the login page')"
    assert sent[1].startswith("✅ buildfront is RUNNING (took ") and sent[1].endswith(" s)")
    assert len(sent) == 2 and "RUNNING" in effect.summary
    assert all(m.thread_id == THREAD_ID for m in bot_api.messages(CHAT_ID))
    assert ledger.last("buildfront")[:2] == ("on", "push")


@pytest.mark.parametrize("status", ["RUNNING", "STARTING", "PROVISIONING"])
def test_vm_already_up_is_left_alone_silently(control, compute_api, bot_api, status):
    vm = compute_api.add_instance("buildfront", status=status)
    effect = control.ensure_running(PUSH, ctx())
    assert compute_api.count("POST", ":start") == 0 and texts(bot_api) == []
    assert status in effect.summary
    assert compute_api.status(vm) == status


def test_stopping_vm_is_waited_for_then_started(compute_client, notifier, state, compute_api, bot_api):
    compute_api.transition_seconds = 0.3
    vm = compute_api.add_instance("buildfront", status="RUNNING")
    compute_client.stop(vm)
    assert compute_api.status(vm) == "STOPPING"
    RunnerControl(lambda: compute_client, notifier, state, policy=FAST).ensure_running(PUSH, ctx())
    assert compute_api.status(vm) == "RUNNING"
    assert compute_api.count("POST", ":start") == 1


@pytest.mark.parametrize("status", ["CRASHED", "ERROR"])
def test_broken_vm_is_reported_once_per_quiet_period_and_not_started(control, compute_api, bot_api, status):
    compute_api.add_instance("buildfront", status=status)
    control.ensure_running(PUSH, ctx(1))
    control.ensure_running(PUSH, ctx(2))
    assert compute_api.count("POST", ":start") == 0
    sent = texts(bot_api)
    assert len(sent) == 1 and f"buildfront is {status} and was not started" in sent[0]


def test_missing_vm_is_reported(control, compute_api, bot_api):
    compute_api.add_instance("other")
    effect = control.ensure_running(PUSH, ctx())
    assert "missing" in effect.summary
    assert texts(bot_api) == ["⚠️ buildfront cannot be started for a push by @jsmith to stage "
                              "(da15608, 'Fix the login page'): no such VM in the folder"]


def test_permission_denied_is_reported_with_the_role_needed(control, compute_api, bot_api):
    compute_api.add_instance("buildfront")
    compute_api.inject("GET", "/instances", 403, times=10)
    control.ensure_running(PUSH, ctx())
    assert "compute.operator" in texts(bot_api)[0]


def test_a_failed_start_operation_is_told(control, compute_api, bot_api):
    compute_api.add_instance("buildfront")
    compute_api.fail_next_operation(13, "Internal error: host unavailable")
    effect = control.ensure_running(PUSH, ctx())
    sent = texts(bot_api)
    assert sent[0].startswith("▶️ buildfront: starting")
    assert sent[1].startswith("❌ buildfront did not start:") and "host unavailable" in sent[1]
    assert "start failed" in effect.summary


def test_compute_outage_is_transient(control, compute_api):
    compute_api.add_instance("buildfront")
    compute_api.inject("GET", "/instances", 503, times=50)
    with pytest.raises(TransientError):
        control.ensure_running(PUSH, ctx())
    assert compute_api.count("POST", ":start") == 0


def test_telegram_down_after_the_start_call_retries_without_starting_twice(control, compute_api, bot_api):
    vm = compute_api.add_instance("buildfront")
    bot_api.inject_error("sendMessage", 500, "Internal Server Error", times=20)
    with pytest.raises(TransientError):
        control.ensure_running(PUSH, ctx(7))
    assert compute_api.count("POST", ":start") == 1 and texts(bot_api) == []
    bot_api._faults.clear()  # Telegram is back
    control.ensure_running(PUSH, ctx(7))  # the queue's retry of the same action
    assert compute_api.count("POST", ":start") == 1
    assert compute_api.status(vm) == "RUNNING"
    sent = texts(bot_api)
    assert len(sent) == 2 and sent[1].startswith("✅ buildfront is RUNNING")


def test_commit_title_is_escaped_for_html(control, compute_api, bot_api):
    compute_api.add_instance("buildfront")
    control.ensure_running({**PUSH, "title": "<script>alert(1)</script> & co"}, ctx())
    msg = bot_api.messages(CHAT_ID)[0]
    assert msg.text.endswith("'<script>alert(1)</script> & co')")
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in msg.raw_text
    assert msg.parse_mode == "HTML"


def test_concurrent_requests_for_one_vm_make_one_start_call(compute_client, notifier, tmp_path, compute_api, bot_api):
    compute_api.add_instance("buildfront")
    # Separate VmState objects on one file: like separate worker processes.
    controls = [RunnerControl(lambda: compute_client, notifier, VmState(tmp_path / "intake.db"), policy=FAST)
                for _ in range(8)]
    barrier = threading.Barrier(8)

    def go(i: int) -> None:
        barrier.wait()
        controls[i].ensure_running(PUSH, ctx(100 + i))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert compute_api.count("POST", ":start") == 1
    assert len(texts(bot_api)) == 2


def test_a_push_right_after_a_confirmed_start_skips_the_api(control, compute_api):
    compute_api.add_instance("buildfront")
    control.ensure_running(PUSH, ctx(1))
    before = len(compute_api.calls)
    effect = control.ensure_running(PUSH, ctx(2))
    assert len(compute_api.calls) == before and "moments ago" in effect.summary


def test_confirmed_start_calls_back_and_a_stop_in_progress_defers_the_push(compute_client, notifier, state,
                                                                          compute_api):
    compute_api.add_instance("buildfront", status="RUNNING")
    seen: list[str] = []
    control = RunnerControl(lambda: compute_client, notifier, state, policy=FAST, on_running=seen.append)
    assert state.try_lock("power:buildfront", "idle-stop", 60)
    with pytest.raises(TransientError, match="stop is in progress"):
        control.ensure_running(PUSH, ctx(1))
    state.unlock("power:buildfront", "idle-stop")
    compute_api.set_status(compute_api.add_instance("buildback"), "STOPPED")
    control.ensure_running({**PUSH, "vm": "buildback"}, ctx(2))
    assert seen == ["buildback"]
