"""rules.py (through settings.load_rules, as start-up reads it): invalid rules name file, key and problem."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from gitlab_hook.rules import Rules
from gitlab_hook.settings import ConfigError, load_rules
from tests.conftest import RULES

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"


@pytest.fixture
def write(tmp_path):
    def w(data) -> Path:
        path = tmp_path / "gitlab-hook-rules.yaml"
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
        return path

    return w


def rules_with(change) -> dict:
    r = copy.deepcopy(RULES)
    change(r)
    return r


def config_error(write, data) -> tuple[str, Path]:
    path = write(data)
    with pytest.raises(ConfigError) as exc:
        load_rules(path)
    text = str(exc.value)
    assert str(path) in text, text
    return text, path


def test_valid_rules_load(write):
    rules, source = load_rules(write(RULES))
    assert source.endswith("gitlab-hook-rules.yaml")
    front = rules.runners[0]
    assert (front.vm, front.branches, front.projects) == ("buildfront", ["stage", "release/*"], ["group/app"])
    assert front.idle_stop_after == 1800.0
    assert front.gitlab_runner_ids == [12]
    assert front.timezone == "Europe/Moscow"
    assert rules.runners[1].idle_stop_after is None
    assert rules.migrations.namespaces == {"stage": "work"}


def test_shipped_example_validates():
    rules, source = load_rules(EXAMPLE)
    assert source == str(EXAMPLE)
    assert [r.vm for r in rules.runners] == ["buildfront"]
    assert rules.runners[0].keep_running == "mon-fri 09:00-20:00"
    assert rules.runner_check_interval == 60.0
    assert rules.price_per_hour == {"buildfront": 4.5}
    assert rules.telegram.users == {123456789: "operator", 555000111: "viewer"}
    assert rules.migrations.default_namespace == "work"


def test_defaults():
    r = Rules()
    assert r.runners == []
    assert r.runner_check_interval == 60.0
    assert r.vms.name_regex == "^build"
    assert r.migrations.job_name_regex == "migrat"
    assert r.migrations.pod_name_regex == "^pre-migrate-db-"
    assert r.migrations.container == "pre-migrate-db"
    assert r.migrations.tail_lines == 200


def test_no_file_means_no_rules():
    rules, source = load_rules(None)
    assert rules.runners == [] and source is None


def test_empty_file_means_no_rules(write):
    rules, _ = load_rules(write(""))
    assert rules.runners == []


@pytest.mark.parametrize("vm", ["Build_Front", "1build", "build-", "-build", "build front", "b" * 64, "", "buíld"])
def test_bad_vm_name(write, vm):
    text, _ = config_error(write, rules_with(lambda r: r["runners"][0].update(vm=vm)))
    assert "runners.0.vm" in text
    assert "VM name" in text


@pytest.mark.parametrize("vm", ["buildfront", "b", "build-1", "a" * 63, "fhm0123456789abcdefg"])
def test_good_vm_names(write, vm):
    rules, _ = load_rules(write(rules_with(lambda r: r["runners"][0].update(vm=vm))))
    assert rules.runners[0].vm == vm


@pytest.mark.parametrize("where, key, path", [
    (lambda r: r["runners"][0], "branchs", "runners.0.branchs"),
    (lambda r: r["runners"][1], "idle_stop", "runners.1.idle_stop"),
    (lambda r: r, "runner", "runner"),
    (lambda r: r["migrations"], "job_regex", "migrations.job_regex"),
    (lambda r: r.setdefault("vms", {}), "name_re", "vms.name_re"),
    (lambda r: r.setdefault("telegram", {}), "user", "telegram.user"),
])
def test_unknown_key_is_refused_as_typo(write, where, key, path):
    text, _ = config_error(write, rules_with(lambda r: where(r).update({key: "x"})))
    assert f"{path}: unknown key" in text


@pytest.mark.parametrize("change, path", [
    (lambda r: r.setdefault("vms", {}).update(name_regex="(["), "vms.name_regex"),
    (lambda r: r["migrations"].update(job_name_regex="*migrat"), "migrations.job_name_regex"),
    (lambda r: r["migrations"].update(pod_name_regex="^pre-(migrate"), "migrations.pod_name_regex"),
    (lambda r: r["migrations"].update(redact_patterns=["ok", "bad["]), "migrations.redact_patterns.1"),
])
def test_bad_regex(write, change, path):
    text, _ = config_error(write, rules_with(change))
    assert f"{path}:" in text
    assert "regular expression" in text


@pytest.mark.parametrize("tz", ["Mars/Olympus", "Europe/Mosсow", "UTC+3", "", "../../etc/passwd"])
def test_bad_timezone(write, tz):
    text, _ = config_error(write, rules_with(lambda r: r["runners"][0].update(timezone=tz)))
    assert "runners.0.timezone" in text
    assert "time zone" in text


@pytest.mark.parametrize("value", ["30 minutes", "soon", "-5m", "1y", True, [30]])
def test_bad_duration(write, value):
    text, _ = config_error(write, rules_with(lambda r: r["runners"][0].update(idle_stop_after=value)))
    assert "runners.0.idle_stop_after" in text


def test_bad_check_interval(write):
    text, _ = config_error(write, rules_with(lambda r: r.update(runner_check_interval="often")))
    assert "runner_check_interval" in text and "'often'" in text


@pytest.mark.parametrize("value", ["30s", "59s", 59, "0m", "500ms"])
def test_idle_stop_under_a_minute(write, value):
    text, _ = config_error(write, rules_with(lambda r: r["runners"][0].update(idle_stop_after=value)))
    assert "runners.0.idle_stop_after" in text
    assert "at least 1m" in text


def test_idle_stop_of_exactly_a_minute_is_fine(write):
    rules, _ = load_rules(write(rules_with(lambda r: r["runners"][0].update(idle_stop_after="1m"))))
    assert rules.runners[0].idle_stop_after == 60.0


def test_non_finite_idle_stop_is_refused(write):
    text, _ = config_error(write, "runners:\n  - vm: buildfront\n    branches: [stage]\n    idle_stop_after: .nan\n")
    assert "runners.0.idle_stop_after" in text


def test_duplicate_vm(write):
    text, _ = config_error(write, rules_with(lambda r: r["runners"][1].update(vm="buildfront")))
    assert "runners.1.vm" in text
    assert "'buildfront'" in text and "twice" in text


@pytest.mark.parametrize("change, path", [
    (lambda r: r["runners"][0].update(branches=[]), "runners.0.branches"),
    (lambda r: r["runners"][0].pop("branches"), "runners.0.branches"),
    (lambda r: r["runners"][0].pop("vm"), "runners.0.vm"),
    (lambda r: r["runners"][0].update(gitlab_runner_ids=[0]), "runners.0.gitlab_runner_ids.0"),
    (lambda r: r["runners"][0].update(gitlab_runner_ids=["twelve"]), "runners.0.gitlab_runner_ids.0"),
    (lambda r: r.update(runners={"vm": "buildfront"}), "runners"),
    (lambda r: r["migrations"].update(namespaces={"stage": "Bad_NS"}), "migrations.namespaces"),
    (lambda r: r["migrations"].update(default_namespace="not valid"), "migrations.default_namespace"),
    (lambda r: r["migrations"].update(tail_lines=0), "migrations.tail_lines"),
    (lambda r: r.update(telegram={"users": {123: "god"}}), "telegram.users.123"),
    (lambda r: r.update(telegram={"users": {"alice": "operator"}}), "telegram.users.alice"),
    (lambda r: r.update(price_per_hour={"buildfront": "cheap"}), "price_per_hour.buildfront"),
])
def test_other_bad_values_name_their_key(write, change, path):
    text, _ = config_error(write, rules_with(change))
    assert f"{path}" in text


def test_every_problem_is_listed(write):
    def change(r):
        r["runners"][0]["vm"] = "Bad_Name"
        r["runners"][1]["timezone"] = "Nowhere/Else"
        r["runnerz"] = []

    text, _ = config_error(write, rules_with(change))
    assert "runners.0.vm" in text and "runners.1.timezone" in text and "runnerz" in text
    assert len(text.splitlines()) == 3


def test_rules_are_frozen(write):
    rules, _ = load_rules(write(RULES))
    with pytest.raises(Exception):
        rules.runners[0].vm = "other"  # type: ignore[misc]
