"""Parsing of the ChatOps commands and the original chatops aliases; usage texts; VM sizes."""

from __future__ import annotations

import pytest

from bot.commands import (
    BY_NAME,
    SPECS,
    UnknownCommand,
    UsageError,
    describe,
    help_html,
    menu,
    parse,
)


def args(text: str, bot: str | None = "fake_bot") -> tuple[str, dict]:
    cmd = parse(text, bot)
    assert cmd is not None, text
    return cmd.name, cmd.args


@pytest.mark.parametrize("text, name, expected", [
    ("/help", "help", {"topic": None}),
    ("man", "help", {"topic": None}),
    ("helps", "help", {"topic": None}),
    ("  MAN ", "help", {"topic": None}),
    ("/man", "help", {"topic": None}),
    ("/helps vm_stop", "help", {"topic": "vm_stop"}),
    ("/start", "help", {"topic": None}),
    ("/vms", "vms", {}),
    ("/list_build_vm", "vms", {}),
    ("/list build vm", "vms", {}),
    ("/list  Build   VM", "vms", {}),
    ("/vm_status buildfront", "vm_status", {"vm": "buildfront"}),
    ("/status_vm --name_vm buildfront", "vm_status", {"vm": "buildfront"}),
    ("/status_vm --name_vm=BuildFront", "vm_status", {"vm": "buildfront"}),
    ("/vm_start buildfront", "vm_start", {"vm": "buildfront"}),
    ("/start_vm --name_vm buildfront", "vm_start", {"vm": "buildfront"}),
    ("/vm_stop buildfront", "vm_stop", {"vm": "buildfront"}),
    ("/stop_vm --name_vm buildfront", "vm_stop", {"vm": "buildfront"}),
    ("/stop_vm —name_vm buildfront", "vm_stop", {"vm": "buildfront"}),  # a phone's em dash
    ("/vm_upgrade buildfront 4 8", "vm_upgrade",
     {"vm": "buildfront", "cores": 4, "memory_gb": 8.0, "core_fraction": None}),
    ("/vm_upgrade buildfront 4 8.5GB 50%", "vm_upgrade",
     {"vm": "buildfront", "cores": 4, "memory_gb": 8.5, "core_fraction": 50}),
    ("/upgrade_vm --name_vm buildfront --core 4 --mem 8", "vm_upgrade",
     {"vm": "buildfront", "cores": 4, "memory_gb": 8.0, "core_fraction": None}),
    ("/upgrade_vm --mem 0,5 --core 2 --name_vm buildfront --fraction 20", "vm_upgrade",
     {"vm": "buildfront", "cores": 2, "memory_gb": 0.5, "core_fraction": 20}),
    ("/vm_keep buildfront 2h", "vm_keep", {"vm": "buildfront", "seconds": 7200.0}),
    ("/vm_keep buildfront 1h30m", "vm_keep", {"vm": "buildfront", "seconds": 5400.0}),
    ("/vm_keep buildfront off", "vm_keep", {"vm": "buildfront", "seconds": 0.0}),
    ("/runner_report", "runner_report", {"days": 7}),
    ("/runner_report 30", "runner_report", {"days": 30}),
    ("/runner_report 14d", "runner_report", {"days": 14}),
    ("/migration_logs work", "migration_logs", {"namespace": "work"}),
    ("/logs_migrated --namespace work", "migration_logs", {"namespace": "work"}),
    ("/protect_branch stage", "protect_branch", {"branch": "stage", "project": None}),
    ("/protect_branch release/1.2 group/sub/app", "protect_branch",
     {"branch": "release/1.2", "project": "group/sub/app"}),
    ("/protected_gitlab --name stage", "protect_branch", {"branch": "stage", "project": None}),
    ("/unprotect_branch stage", "unprotect_branch", {"branch": "stage", "project": None}),
    ("/unprotect_gitlab --name stage --project group/app", "unprotect_branch",
     {"branch": "stage", "project": "group/app"}),
    ("/whoami", "whoami", {}),
    ("!vms", "vms", {}),  # errbot's text mode prefix (the console)
    ("!stop_vm --name_vm buildfront", "vm_stop", {"vm": "buildfront"}),
    ("/VMS", "vms", {}),
    ("/vm_status\nbuildfront", "vm_status", {"vm": "buildfront"}),
])
def test_every_command_and_alias_parses(text, name, expected):
    assert args(text) == (name, expected)


def test_a_command_for_our_bot_in_a_group_is_marked_addressed():
    cmd = parse("/vms@Fake_Bot", "fake_bot")
    assert cmd is not None and cmd.name == "vms" and cmd.addressed


@pytest.mark.parametrize("text", ["/vms@other_bot", "hello", "", "   ", "vms", "buildfront is slow", "/"])
def test_lines_that_are_not_for_us(text):
    assert parse(text, "fake_bot") is None


@pytest.mark.parametrize("text, problem", [
    ("/vm_stop", "NAME is missing."),
    ("/vm_stop a b", "Too many arguments: 'b'."),
    ("/stop_vm --name_vm", "Option --name_vm needs a value."),
    ("/stop_vm --name_vm a --name_vm b", "NAME is given twice."),
    ("/stop_vm --bogus x", "Unknown option --bogus"),
    ("/vm_stop Build_Front", "is not a VM name"),
    ("/vm_stop 'unterminated", "Cannot read the arguments"),
    ("/vm_upgrade x", "CORES is missing."),
    ("/vm_upgrade x 4", "MEM_GB is missing."),
    ("/vm_upgrade x 0 8", "CORES must be between 1 and 96, not 0."),
    ("/vm_upgrade x 4 -1", "MEM_GB must be a number of gigabytes"),
    ("/vm_upgrade x 4 8TB", "MEM_GB must be a number of gigabytes"),
    ("/vm_upgrade x 4 8 33", "FRACTION must be 5, 20, 50 or 100"),
    ("/vm_keep x", "DURATION is missing."),
    ("/vm_keep x 10s", "DURATION must be at least 1m"),
    ("/vm_keep x 3d", "DURATION can be at most 1d"),
    ("/vm_keep x whenever", "DURATION must look like 2h"),
    ("/runner_report 0", "DAYS must be between 1 and 90, not 0."),
    ("/runner_report week", "DAYS must be a whole number"),
    ("/migration_logs", "NAMESPACE is missing."),
    ("/migration_logs Work", "is not a Kubernetes namespace"),
    ("/protect_branch", "BRANCH is missing."),
    ("/protect_branch a..b", "contains '..'"),
    ("/protect_branch stage not-a-path", "is not a group/name path"),
])
def test_bad_arguments_say_what_is_wrong_and_show_the_usage(text, problem):
    with pytest.raises(UsageError) as err:
        parse(text)
    message = str(err.value)
    assert problem in message
    spec = err.value.spec
    assert message.endswith(spec.usage_line()) and message.count("\n") == 1


def test_usage_lines_name_the_original_form_too():
    assert BY_NAME["vm_upgrade"].usage_line() == (
        "Usage: /vm_upgrade NAME CORES MEM_GB [FRACTION] "
        "(or /upgrade_vm --name_vm NAME --core 4 --mem 8 [--fraction 50])")
    assert BY_NAME["migration_logs"].usage_line() == (
        "Usage: /migration_logs NAMESPACE (or /logs_migrated --namespace NAMESPACE)")
    assert BY_NAME["vm_keep"].usage_line() == "Usage: /vm_keep NAME DURATION"


@pytest.mark.parametrize("text, suggestion", [("/vmz", ["vms"]), ("/vms_list", ["vms"]), ("/stopvm", ["vm_stop"]),
                                              ("/list", ["vms"]), ("/list of things", ["vms"])])
def test_unknown_commands_suggest_close_ones(text, suggestion):
    with pytest.raises(UnknownCommand) as err:
        parse(text)
    assert err.value.suggestions[:len(suggestion)] == suggestion
    assert "Send /help for the list." in str(err.value)


def test_the_menu_holds_every_command_in_telegram_form():
    import re

    items = menu()
    assert [n for n, _ in items] == [s.name for s in SPECS]
    assert all(re.fullmatch(r"[a-z0-9_]{1,32}", n) and 1 <= len(d) <= 256 for n, d in items)


def test_help_marks_what_a_role_may_not_do_and_details_one_command():
    viewer = help_html("viewer")
    assert "🔒 /vm_stop NAME" in viewer and "🔒 /vms" not in viewer
    assert "🔒" not in help_html("admin")
    one = help_html("operator", "stop_vm")
    assert "<b>/vm_stop NAME</b>" in one and "asks to confirm" in one and "🔒" not in one
    assert "Did you mean /vm_stop" in help_html("viewer", "vm_stp")


def test_describe_is_short_and_readable():
    assert describe(parse("/vm_keep buildfront 90m")) == "/vm_keep vm=buildfront seconds=1h30m"
    assert describe(parse("/vm_upgrade x 4 8")) == "/vm_upgrade vm=x cores=4 memory_gb=8.0"


