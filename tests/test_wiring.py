"""Settings → live or dry-run handlers, and each Yandex auth mode end to end through the start path."""

from __future__ import annotations

import json

import pytest

from gitlab_hook.effects import Context, TransientError
from gitlab_hook.planner import ENSURE_RUNNING, REPORT_MIGRATION_FAILURE
from gitlab_hook.runner_control import RunnerControl, StartPolicy
from gitlab_hook.telegram import DryRunNotifier
from gitlab_hook.vm_state import VmState
from gitlab_hook.wiring import build_handlers, compute_factory, make_notifier
from tests.conftest import BOT_TOKEN, CHAT_ID, IAM_TOKEN
from tests.fakes.yandex_cloud import FakeIAM, FakeMetadata

PUSH = {"vm": "buildfront", "cause": "push", "branch": "stage", "user": "dev", "sha": "abc1234", "title": "t"}


def ctx(i: int = 1) -> Context:
    return Context(i, 1, lambda: None)


def test_no_credentials_means_dry_run_handlers_and_notifier(settings):
    handlers = build_handlers(settings, make_notifier(settings))
    assert handlers[ENSURE_RUNNING].__name__ == "dry_ensure_running"
    assert handlers[REPORT_MIGRATION_FAILURE].__name__ == "dry_report_migration_failure"
    assert isinstance(make_notifier(settings), DryRunNotifier)


def test_yandex_credentials_switch_ensure_running_to_the_live_handler(make_settings, compute_api):
    s = make_settings(YC_IAM_TOKEN=IAM_TOKEN, YC_FOLDER_ID=compute_api.folder_id, YC_COMPUTE_URL=compute_api.url)
    handlers = build_handlers(s, make_notifier(s))
    assert handlers[ENSURE_RUNNING].__self__.__class__ is RunnerControl


def start_with(settings, compute_api, bot_api, tmp_path):
    notifier = make_notifier(settings)
    control = RunnerControl(compute_factory(settings), notifier, VmState(tmp_path / "s.db"),
                            policy=StartPolicy(poll_interval=0.02))
    try:
        return control.ensure_running(PUSH, ctx())
    finally:
        notifier.close()


def urls(compute_api, bot_api, **env):
    return dict(YC_COMPUTE_URL=compute_api.url, YC_OPERATION_URL=compute_api.operation_url,
                TELEGRAM_BOT_TOKEN=BOT_TOKEN, TELEGRAM_CHAT_ID=str(CHAT_ID), TELEGRAM_API_URL=bot_api.url, **env)


def test_service_account_key_mode_starts_the_vm(make_settings, compute_api, bot_api, tmp_path):
    with FakeIAM(compute=compute_api) as iam:
        key_file = tmp_path / "key.json"
        key_file.write_text(json.dumps(iam.new_key()))
        vm = compute_api.add_instance("buildfront")
        s = make_settings(**urls(compute_api, bot_api, YC_SA_KEY_FILE=str(key_file), YC_IAM_URL=iam.url,
                                 YC_FOLDER_ID=compute_api.folder_id))
        start_with(s, compute_api, bot_api, tmp_path)
        assert iam.token_requests == 1 and iam.last_header["alg"] == "PS256"
        assert compute_api.status(vm) == "RUNNING"
        assert {c.bearer for c in compute_api.calls} == {iam.issued[0]}


def test_metadata_mode_reads_token_and_folder_from_the_metadata_service(make_settings, compute_api, bot_api,
                                                                        tmp_path):
    with FakeMetadata(folder_id=compute_api.folder_id, compute=compute_api) as md:
        vm = compute_api.add_instance("buildfront")
        # Any YC_ variable switches Yandex on; here only the metadata URL (folder and token come from it).
        s = make_settings(**urls(compute_api, bot_api, YC_METADATA_URL=md.url))
        start_with(s, compute_api, bot_api, tmp_path)
        assert md.token_requests == 1
        assert any(c.path == FakeMetadata.FOLDER_PATH for c in md.calls)
        assert compute_api.status(vm) == "RUNNING"


def test_expired_static_token_is_told_clearly_in_chat_and_retried(make_settings, compute_api, bot_api, tmp_path):
    compute_api.add_instance("buildfront")
    compute_api.revoke_token(IAM_TOKEN)
    s = make_settings(**urls(compute_api, bot_api, YC_IAM_TOKEN=IAM_TOKEN, YC_FOLDER_ID=compute_api.folder_id))
    with pytest.raises(TransientError):
        start_with(s, compute_api, bot_api, tmp_path)
    texts = [m.text for m in bot_api.messages(CHAT_ID)]
    assert len(texts) == 1 and "YC_IAM_TOKEN" in texts[0] and IAM_TOKEN not in texts[0]


def test_yandex_configured_gives_live_vm_handlers_and_the_lifecycle_chores(make_settings, compute_api):
    from gitlab_hook.planner import VM_RESIZE, VM_START, VM_STOP
    from gitlab_hook.wiring import build_worker_parts

    s = make_settings(YC_IAM_TOKEN=IAM_TOKEN, YC_FOLDER_ID=compute_api.folder_id, YC_COMPUTE_URL=compute_api.url)
    handlers, chores = build_worker_parts(s, make_notifier(s))
    assert {handlers[k].__self__.__class__.__name__ for k in (VM_START, VM_STOP)} == {"PowerControl"}
    assert handlers[VM_RESIZE].__self__.__class__.__name__ == "Resizer"
    assert [c.__name__ for c in chores] == ["idle_stop", "reconcile"]


def test_without_yandex_operator_commands_answer_dry_run_in_their_message(settings, bot_api, make_settings):
    from gitlab_hook.planner import VM_STOP
    from gitlab_hook.wiring import build_worker_parts

    s = make_settings(TELEGRAM_BOT_TOKEN=BOT_TOKEN, TELEGRAM_CHAT_ID=str(CHAT_ID), TELEGRAM_API_URL=bot_api.url)
    notifier = make_notifier(s)
    try:
        (prompt,) = notifier.send_html("Stop buildfront?")
        handlers, chores = build_worker_parts(s, notifier)
        assert chores == []
        effect = handlers[VM_STOP]({"vm": "buildfront", "by": "@ops",
                                    "progress": {"chat_id": CHAT_ID, "message_id": prompt}}, ctx())
    finally:
        notifier.close()
    assert "would stop buildfront" in effect.summary
    (msg,) = bot_api.messages(CHAT_ID)
    assert msg.text.startswith("🧪 dry-run: Yandex Compute is not configured; would stop buildfront for @ops")


def test_a_chore_runs_once_per_interval_across_workers(tmp_path):
    from gitlab_hook.wiring import every

    state = VmState(tmp_path / "s.db")
    runs: list[str] = []
    a = every("reconcile", 60, lambda: runs.append("a"), state, "worker-a")
    b = every("reconcile", 60, lambda: runs.append("b"), VmState(tmp_path / "s.db"), "worker-b")
    a(), b(), a()
    assert runs == ["a"]
