"""``gitlab-hook check`` and start-up errors, through ``gitlab_hook.cli.main`` (and once as a real process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from gitlab_hook import cli
from gitlab_hook.settings import EnvSettings
from tests.conftest import RULES
from tests.fakes.gitlab_api import FakeGitLab
from tests.fakes.telegram_api import FakeBotAPI
from tests.processes import ROOT, free_port

GITLAB_TOKEN = "glpat-Distinctive6itlabT0ken-4815"
BOT_TOKEN = "424242424:AAHdistinctive_Bot_T0ken-value-162342"
WEBHOOK_SECRET = "webhook-Distinctive-S3cret-2718"
SECRETS = (GITLAB_TOKEN, BOT_TOKEN, WEBHOOK_SECRET)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path) -> None:
    """Only what a test sets: no GITLAB_*, YC_*, TELEGRAM_*, KUBE*, REDIS_URL or knobs from outside."""
    for name in list(os.environ):
        if name.startswith(("GITLAB_", "YC_", "TELEGRAM_", "KUBE", "REDIS_")) or name in EnvSettings.model_fields:
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "var"))


pytestmark = pytest.mark.usefixtures("restore_logging")


def _rules(tmp_path: Path, rules: Any, monkeypatch) -> Path:
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(rules if isinstance(rules, str) else yaml.safe_dump(rules))
    monkeypatch.setenv("GITLAB_HOOK_CONFIG", str(cfg))
    return cfg


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def gitlab() -> Iterator[FakeGitLab]:
    with FakeGitLab(GITLAB_TOKEN) as fake:
        yield fake


@pytest.fixture
def telegram() -> Iterator[FakeBotAPI]:
    with FakeBotAPI(token=BOT_TOKEN) as api:
        yield api


@pytest.fixture
def configured(monkeypatch, tmp_path, gitlab, telegram) -> None:
    """Rules, the webhook secret, GitLab and Telegram set; Yandex Cloud and Kubernetes not (dry-run)."""
    _rules(tmp_path, RULES, monkeypatch)
    monkeypatch.setenv("GITLAB_WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("GITLAB_URL", gitlab.url)
    monkeypatch.setenv("GITLAB_TOKEN", GITLAB_TOKEN)
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("TELEGRAM_CHAT_ID", "-1001234567890")
    monkeypatch.setenv("TELEGRAM_API_URL", telegram.url)


def _status(out: str, name: str) -> str:
    """The status word of one integration line of ``check``'s output."""
    assert "\nintegrations:\n" in out, out
    for line in out.split("\nintegrations:\n", 1)[1].splitlines():
        parts = line.split()
        if parts and parts[0] == name and len(parts) > 1:
            return parts[1]
    raise AssertionError(f"no line for {name} in:\n{out}")


def _assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text
        # Nor a recognisable part of one (a token printed half-masked is still leaked).
        for part in ("Distinctive6itlab", "distinctive_Bot", "Distinctive-S3cret"):
            assert part not in text


# --- invalid configuration stops the start -----------------------------------------------------


@pytest.mark.parametrize("rules, key, problem", [
    ({"runners": [{"vm": "buildfront", "branches": ["stage"], "idle_stop_after": "10s"}]},
     "runners.0.idle_stop_after", "at least 1m"),
    ({"runners": [{"vm": "buildfront", "branches": ["stage"], "timezone": "Mars/Olympus"}]},
     "runners.0.timezone", "unknown time zone"),
    ({"runners": [{"vm": "buildfront", "branchs": ["stage"]}]}, "runners.0.branchs", "unknown key"),
    ({"runners": [{"vm": "Build_Front", "branches": ["stage"]}]}, "runners.0.vm", "Yandex Cloud VM name"),
    ({"migrations": {"job_name_regex": "migrat("}}, "migrations.job_name_regex", "not a valid regular expression"),
    ({"telegram": {"users": {"123": "superuser"}}}, "telegram.users.123", "'viewer', 'operator' or 'admin'"),
])
@pytest.mark.parametrize("command", ["serve", "check"])
def test_an_invalid_rules_file_exits_2_naming_the_file_the_key_and_the_problem(
        command, rules, key, problem, tmp_path, monkeypatch, capsys):
    cfg = _rules(tmp_path, rules, monkeypatch)
    code, out, err = _run([command], capsys)
    assert code == 2
    assert str(cfg) in err and key in err and problem in err, err
    assert "listening" not in out  # nothing started


@pytest.mark.parametrize("text, problem", [
    ("runners: [vm: x\n", "not valid YAML"),
    ("- just\n- a list\n", "top level must be a mapping"),
])
def test_a_rules_file_that_is_not_a_mapping_exits_2(text, problem, tmp_path, monkeypatch, capsys):
    cfg = _rules(tmp_path, text, monkeypatch)
    code, _, err = _run(["serve"], capsys)
    assert code == 2 and str(cfg) in err and problem in err, err


def test_a_missing_rules_file_exits_2_naming_the_variable_and_the_path(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "nope.yaml"
    monkeypatch.setenv("GITLAB_HOOK_CONFIG", str(missing))
    code, _, err = _run(["check"], capsys)
    assert code == 2 and "GITLAB_HOOK_CONFIG" in err and str(missing) in err, err


@pytest.mark.parametrize("name, value", [
    ("TELEGRAM_CHAT_ID", "abc"),
    ("WEB_WORKERS", "0"),
    ("GITLAB_URL", "not a url"),
    ("GITLAB_WEBHOOK_SIGNING_TOKEN", "Distinctive-S3cret-not-whsec"),
])
@pytest.mark.parametrize("command", ["serve", "check", "worker"])
def test_an_invalid_variable_exits_2_naming_it_without_echoing_the_value(
        command, name, value, monkeypatch, capsys):
    monkeypatch.setenv(name, value)
    code, out, err = _run([command], capsys)
    assert code == 2
    assert name in err, err
    assert value not in err and value not in out


def test_the_real_entry_point_exits_2_on_invalid_config(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DATA_DIR": str(tmp_path / "var"), "TELEGRAM_CHAT_ID": "abc"}
    p = subprocess.run([sys.executable, "-m", "gitlab_hook", "serve", "--port", str(free_port())], env=env,
                       cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2, p.stderr
    assert "TELEGRAM_CHAT_ID" in p.stderr and "invalid configuration" in p.stderr


# --- check -------------------------------------------------------------------------------------


def test_check_exits_0_when_every_configured_integration_answers(configured, gitlab, telegram, capsys):
    code, out, err = _run(["check"], capsys)
    assert code == 0, out + err
    assert _status(out, "queue") == "ok"
    assert _status(out, "gitlab") == "ok" and "GitLab 17.5.1-ee" in out
    assert _status(out, "telegram") == "ok" and "@" in out
    # Not configured: reported as dry-run, not as failures.
    assert _status(out, "yandex_compute") == "dry-run"
    assert _status(out, "kubernetes") == "dry-run"
    assert out.rstrip().endswith("check: ok")
    # The probes really went out, with the real credentials.
    assert [(c.path, c.headers.get("private-token")) for c in gitlab.calls] == [("/version", GITLAB_TOKEN)]
    assert [c.status for c in telegram.calls_of("getMe")] == [200]


def test_check_prints_the_config_with_every_secret_masked(configured, capsys):
    code, out, err = _run(["check"], capsys)
    assert code == 0, out + err
    _assert_no_secret(out, err)
    for name in ("GITLAB_TOKEN", "TELEGRAM_BOT_TOKEN", "GITLAB_WEBHOOK_SECRET"):
        assert f"{name} = *** (set)" in out
    assert "TELEGRAM_CHAT_ID = -1001234567890" in out
    assert "runner buildfront: branches stage, release/*" in out


def test_check_exits_1_when_gitlab_refuses_the_token(configured, gitlab, capsys):
    gitlab.fail(401, path="/version", times=None, body={"message": "401 Unauthorized"})
    code, out, err = _run(["check"], capsys)
    assert code == 1
    assert _status(out, "gitlab") == "failed" and "401" in out
    assert _status(out, "telegram") == "ok"
    assert "check: FAILED: gitlab" in out
    _assert_no_secret(out, err)


def test_check_exits_1_when_gitlab_is_unreachable(configured, monkeypatch, capsys):
    monkeypatch.setenv("GITLAB_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    code, out, err = _run(["check"], capsys)
    assert code == 1
    assert _status(out, "gitlab") == "failed" and "cannot reach GitLab" in out
    assert "check: FAILED: gitlab" in out
    _assert_no_secret(out, err)


def test_check_exits_1_when_telegram_refuses_the_bot_token(configured, monkeypatch, capsys):
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", BOT_TOKEN.replace("AAH", "BBH"))
    code, out, err = _run(["check"], capsys)
    assert code == 1
    assert _status(out, "telegram") == "failed" and "rejected" in out
    assert "check: FAILED: telegram" in out
    assert BOT_TOKEN.replace("AAH", "BBH") not in out + err


def test_check_with_nothing_configured_reports_dry_run_and_exits_0(capsys):
    code, out, err = _run(["check"], capsys)
    assert code == 0, out + err
    for name in ("yandex_compute", "telegram", "gitlab", "kubernetes"):
        assert _status(out, name) == "dry-run"
    assert _status(out, "queue") == "ok"
    assert "nothing watched" in out


# --- bot ---------------------------------------------------------------------------------------


def test_bot_console_runs_commands_from_stdin_and_exits_0(monkeypatch, capsys):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("/whoami\n/vms\n"))
    code, out, err = _run(["bot", "--console"], capsys)
    assert code == 0
    assert "local console operator" in out and "dry-run: Yandex Compute is not configured" in out


def test_a_generated_webhook_secret_changes_nothing_else(monkeypatch, tmp_path, capsys):
    """``serve`` without GITLAB_WEBHOOK_SECRET: the banner's integrations are those of the environment."""
    from gitlab_hook.integrations import banner, integrations
    from gitlab_hook.settings import load_settings

    _rules(tmp_path, RULES, monkeypatch)
    before = load_settings()
    after, secret = cli._ensure_secret(before)
    assert secret and secret in capsys.readouterr().out
    assert after.env.GITLAB_WEBHOOK_SECRET.get_secret_value() == secret
    assert integrations(after) == integrations(before)
    text = banner(after, host="127.0.0.1", port=8080, generated_secret=True)
    for name in ("yandex_compute", "telegram", "gitlab", "kubernetes"):
        assert any(line.split()[:2] == [name, "DRY-RUN"] for line in text.splitlines()), text


def test_check_probes_yandex_and_kubernetes_when_configured(configured, monkeypatch, capsys, compute_api):
    from tests.fakes.kube_api import FakeKubeAPI

    compute_api.add_instance("buildfront")
    compute_api.add_instance("buildback")
    with FakeKubeAPI(namespaces=["work"]) as kube:
        for name, value in {"YC_COMPUTE_URL": compute_api.url, "YC_IAM_TOKEN": "test-token",
                            "YC_FOLDER_ID": compute_api.folder_id, "KUBE_API_URL": kube.url,
                            "KUBE_TOKEN": kube.token}.items():
            monkeypatch.setenv(name, value)
        code, out, err = _run(["check"], capsys)
        assert code == 0, out
        assert _status(out, "yandex_compute") == "ok" and "2 VMs, 2 match vms.name_regex" in out
        assert _status(out, "kubernetes") == "ok" and "work: 0 pods listed" in out
        kube.deny("list", "pods", "work")
        compute_api.add_instance("other")
        code, out, err = _run(["check"], capsys)
        assert code == 1 and _status(out, "kubernetes") == "failed" and "list" in out
        _assert_no_secret(out, err)
        assert "test-token" not in out + err and kube.token not in out + err


def test_check_names_a_runner_vm_missing_from_the_folder(configured, monkeypatch, capsys, compute_api):
    compute_api.add_instance("buildfront")
    for name, value in {"YC_COMPUTE_URL": compute_api.url, "YC_IAM_TOKEN": "test-token",
                        "YC_FOLDER_ID": compute_api.folder_id}.items():
        monkeypatch.setenv(name, value)
    code, out, err = _run(["check"], capsys)
    assert code == 1 and _status(out, "yandex_compute") == "failed" and "buildback" in out
