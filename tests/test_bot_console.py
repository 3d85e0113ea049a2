"""``gitlab-hook bot --console`` as a user runs it: a subprocess fed commands on stdin; and the ``bot`` process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.audit import AuditLog
from gitlab_hook.intake import IntakeStore
from tests.conftest import BOT_TOKEN, CHAT_ID, IAM_TOKEN
from tests.processes import ROOT

RULES: dict[str, Any] = {
    "runners": [{"vm": "buildfront", "branches": ["stage"], "projects": ["group/app"], "idle_stop_after": "30m",
                 "timezone": "Europe/Moscow"}],
    "vms": {"name_regex": "^build"},
    "telegram": {"users": {111: "operator"}},
}


@pytest.fixture
def base_env(tmp_path) -> dict[str, str]:
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(yaml.safe_dump(RULES))
    keep = {k: v for k, v in os.environ.items()
            if k in ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "SYSTEMROOT", "TMPDIR")}
    return {**keep, "GITLAB_HOOK_CONFIG": str(cfg), "DATA_DIR": str(tmp_path / "var"), "LOG_LEVEL": "INFO"}


@pytest.fixture
def cloud_env(base_env, compute_api) -> dict[str, str]:
    compute_api.add_instance("buildfront", "RUNNING", cores=2, memory_gb=4)
    compute_api.add_instance("buildback", "STOPPED", cores=4, memory_gb=8, core_fraction=50)
    compute_api.add_instance("prod-db", "RUNNING")
    return {**base_env, "YC_IAM_TOKEN": IAM_TOKEN, "YC_FOLDER_ID": compute_api.folder_id,
            "YC_COMPUTE_URL": compute_api.url, "YC_OPERATION_URL": compute_api.operation_url}


def console(env: dict[str, str], lines: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gitlab_hook", "bot", "--console"], input="\n".join(lines) + "\n",
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_every_command_runs_without_any_integration_and_exits_0(base_env, tmp_path):
    p = console(base_env, [
        "/help", "man", "helps", "!whoami", "/vms", "/list build vm", "/list_build_vm",
        "/vm_status buildfront", "/start_vm --name_vm buildfront", "/vm_stop buildfront",
        "/upgrade_vm --name_vm buildfront --core 4 --mem 8", "/vm_keep buildfront 2h", "/runner_report 3",
        "/logs_migrated --namespace work", "/protected_gitlab --name stage", "/unprotect_branch stage",
        "# a comment", "", "hello there", "/vm_upgrade buildfront 4", "/vmz", "/vm_start prod-db",
    ])
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert out.count("gitlab-hook ChatOps · You are admin.") == 3
    assert "You are the local console operator, with the admin role." in out
    dry = "dry-run: Yandex Compute is not configured (set YC_FOLDER_ID with YC_IAM_TOKEN or YC_SA_KEY_FILE); would"
    for would in ("list the VMs matching ^build", "show buildfront", "start buildfront", "stop buildfront",
                  "resize buildfront"):
        assert f"{dry} {would}" in out, would
    assert out.count(f"{dry} list the VMs") == 3
    assert "⏸ buildfront will not be auto-stopped until" in out and "MSK (for 2h)." in out
    assert "Runner report, last 3 days" in out and "buildfront: no power changes recorded yet" in out
    chart = tmp_path / "var" / "console" / "runner-report-3d.png"
    assert f"[file] {chart}" in out and chart.read_bytes().startswith(b"\x89PNG")
    assert "dry-run: Kubernetes is not configured" in out
    assert "dry-run: GitLab is not configured (set GITLAB_URL and GITLAB_TOKEN); would protect branch stage of " \
           "group/app" in out
    assert "Not a command: start it with / or ! (try /help)." in out
    assert "MEM_GB is missing.\nUsage: /vm_upgrade NAME CORES MEM_GB [FRACTION]" in out
    assert "Unknown command /vmz. Did you mean /vms?" in out
    assert "prod-db is not one of the build VMs" in out
    # The hold is real (the idle stopper honours it) and recorded.
    rows = AuditLog(tmp_path / "var" / "intake.db").recent()
    assert ("vm_keep", "done", "console") in [(r.command, r.outcome, r.actor) for r in rows]
    # Announcements go to the worker's notifier, in dry-run here: logged, never on stdout.
    assert "would send HTML message" in p.stderr


def test_empty_input_exits_0_at_once(base_env):
    p = console(base_env, [])
    assert p.returncode == 0 and p.stdout == ""


def test_with_the_cloud_configured_commands_act_and_confirmations_read_y_or_n(cloud_env, tmp_path):
    p = console(cloud_env, [
        "/vms",
        "/vm_stop buildfront", "n",
        "/stop_vm --name_vm buildfront", "y",
        "/vm_start buildback",
        "/vm_status buildfront",
        "/upgrade_vm --name_vm buildback --core 4 --mem 8",
        "/vm_upgrade buildback 2 4 20",
    ])
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "Build VMs (2, matching ^build):" in out and "prod-db" not in out
    assert "buildback STOPPED · 4 cores · 8 GB · 50% CPU · preemptible: no" in out
    assert "Stop buildfront (RUNNING, 2 cores · 4 GB · 100% CPU)?" in out
    assert "❔ No gitlab_runner_ids for buildfront in the rules: I cannot tell whether jobs run on it." in out
    assert "Confirm? [y/N] n\n✖️ Cancelled by console: nothing was done to buildfront." in out
    assert "Confirm? [y/N] y\n⏳ Stopping buildfront (confirmed by console)…\n" in out
    assert "✅ Queued: stopping buildfront (action #1). The worker reports progress in the alerts chat." in out
    assert "✅ Queued: starting buildback (action #2)." in out
    assert "buildback already has 4 cores · 8 GB · 50% CPU: nothing to do." in out
    assert "Resize buildback from 4 cores · 8 GB · 50% CPU to 2 cores · 4 GB · 20% CPU?" in out
    assert "Confirm? [y/N] (end of input)\n✖️ Cancelled by console" in out  # end of input cancels
    rows = IntakeStore(tmp_path / "var" / "intake.db").rows()
    assert [(r.kind, r.payload["vm"], r.payload["by"], r.payload["progress"]) for r in rows] == [
        ("vm_stop", "buildfront", "console", None), ("vm_start", "buildback", "console", None)]


def test_a_failing_cloud_is_answered_briefly_and_the_console_goes_on(cloud_env, compute_api):
    compute_api.inject("GET", "/compute/v1/instances", 403, times=1)
    p = console(cloud_env, ["/vms", "/vms"])
    assert p.returncode == 0
    first, _, rest = p.stdout.partition("\n")
    assert first.startswith("⚠️ /vms failed: Yandex Compute failed:") and "Build VMs (2" in rest
    assert "/vms failed for console" in p.stderr and "Traceback" in p.stderr


# --- the bot process ------------------------------------------------------------------------------------


def _wait(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def _start(env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gitlab_hook", "bot"], env=env, cwd=ROOT,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def test_the_bot_without_a_token_idles_in_dry_run_until_stopped(base_env, tmp_path):
    log = tmp_path / "bot.log"
    proc = _start(base_env, log)
    try:
        _wait(lambda: "TELEGRAM_BOT_TOKEN is not set, so the Telegram bot is idle" in log.read_text())
        time.sleep(0.3)
        assert proc.poll() is None  # under `serve`, an exiting child would be restarted in a loop
    finally:
        code = _stop(proc)
    assert code == 0


def test_the_bot_process_answers_over_long_polling_and_stops_on_sigterm(base_env, bot_api, tmp_path):
    env = {**base_env, "TELEGRAM_BOT_TOKEN": BOT_TOKEN, "TELEGRAM_CHAT_ID": str(CHAT_ID),
           "TELEGRAM_API_URL": bot_api.url}
    log = tmp_path / "bot.log"
    proc = _start(env, log)
    try:
        _wait(lambda: bot_api.commands and bot_api.calls_of("getUpdates"))
        bot_api.push_update({"message": {"message_id": 1, "date": int(time.time()),
                                         "chat": {"id": 111, "type": "private", "first_name": "A"},
                                         "from": {"id": 111, "is_bot": False, "first_name": "A", "username": "a"},
                                         "text": "/whoami"}})
        _wait(lambda: bot_api.messages(111))
        assert "role operator" in bot_api.messages(111)[0].text
    finally:
        code = _stop(proc)
    assert code == 0, log.read_text()
    assert BOT_TOKEN not in log.read_text()


def test_the_bot_retries_when_telegram_refuses_at_start(base_env, bot_api, tmp_path):
    env = {**base_env, "TELEGRAM_BOT_TOKEN": BOT_TOKEN.replace("FAKE", "WRONG"), "TELEGRAM_API_URL": bot_api.url}
    log = tmp_path / "bot.log"
    proc = _start(env, log)
    try:
        _wait(lambda: "cannot start the Telegram bot" in log.read_text())
        assert proc.poll() is None
    finally:
        code = _stop(proc)
    assert code == 0


def test_an_invalid_webhook_setting_stops_the_start(base_env, tmp_path):
    env = {**base_env, "TELEGRAM_BOT_TOKEN": BOT_TOKEN, "TELEGRAM_WEBHOOK_URL": "http://insecure.example.com/hook"}
    p = subprocess.run([sys.executable, "-m", "gitlab_hook", "bot"], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 2 and "TELEGRAM_WEBHOOK_URL" in p.stderr and "must be an https:// URL" in p.stderr
