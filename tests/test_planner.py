"""planner.py: which actions an event asks for, or why it is ignored."""

from __future__ import annotations

import pytest

from gitlab_hook.events import ZERO_SHA, parse_event
from gitlab_hook.planner import ENSURE_RUNNING, REPORT_MIGRATION_FAILURE, plan
from gitlab_hook.rules import Rules
from tests.conftest import RULES, failed_job_payload, payload, push_payload

RULES_OBJ = Rules.model_validate(RULES)


def plan_for(header, body, rules=RULES_OBJ):
    return plan(rules, parse_event(header, body))


def pipeline(status="pending", ref="stage", project="group/app", builds=None, tag=False):
    p = payload("pipeline.json")
    p["object_attributes"].update({"status": status, "ref": ref, "tag": tag})
    p["project"]["path_with_namespace"] = project
    if builds is not None:
        p["builds"] = builds
    return p


def build(id, name, status, stage="deploy", failure_reason=None):
    return {"id": id, "name": name, "status": status, "stage": stage, "failure_reason": failure_reason,
            "allow_failure": False}


# --- push ---------------------------------------------------------------------------------


def test_push_to_watched_branch_starts_its_runner():
    p = plan_for("Push Hook", push_payload())
    assert p.reason == ""
    assert len(p.actions) == 1
    a = p.actions[0]
    assert (a.kind, a.key, a.once) == (ENSURE_RUNNING, "ensure_running:buildfront", False)
    assert a.payload["vm"] == "buildfront"
    assert a.payload["cause"] == "push"
    assert a.payload["user"] == "jsmith"
    assert a.payload["sha"] == "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"
    assert a.payload["title"] == "fixed readme"
    assert a.payload["branch"] == "stage"
    assert a.payload["project"] == "group/app"


def test_push_cause_falls_back_to_user_name_and_after():
    body = push_payload(user_username=None, checkout_sha=None)
    a = plan_for("Push Hook", body).actions[0]
    assert a.payload["user"] == "John Smith"
    assert a.payload["sha"] == body["after"]


@pytest.mark.parametrize("branch", ["release/1.0", "release/2024-05"])
def test_push_to_glob_branch(branch):
    p = plan_for("Push Hook", push_payload(branch=branch))
    assert [a.key for a in p.actions] == ["ensure_running:buildfront"]


def test_glob_does_not_match_prefix_only():
    p = plan_for("Push Hook", push_payload(branch="release"))
    assert p.actions == ()


def test_project_filter_picks_the_right_runner():
    assert [a.key for a in plan_for("Push Hook", push_payload(project="group/api")).actions] == [
        "ensure_running:buildback"]
    p = plan_for("Push Hook", push_payload(project="other/app"))
    assert p.actions == ()
    assert "other/app" in p.reason


def test_runner_without_projects_watches_every_project():
    rules = Rules.model_validate({"runners": [{"vm": "buildall", "branches": ["main"]}]})
    p = plan_for("Push Hook", push_payload(branch="main", project="any/thing"), rules)
    assert [a.key for a in p.actions] == ["ensure_running:buildall"]


def test_two_runners_on_one_branch_both_start():
    rules = Rules.model_validate({"runners": [
        {"vm": "build-a", "branches": ["stage"]}, {"vm": "build-b", "branches": ["st*"]}]})
    p = plan_for("Push Hook", push_payload(), rules)
    assert sorted(a.key for a in p.actions) == ["ensure_running:build-a", "ensure_running:build-b"]


def test_branch_deletion_is_ignored_with_reason():
    body = push_payload(after=ZERO_SHA, checkout_sha=None, commits=[])
    p = plan_for("Push Hook", body)
    assert p.actions == ()
    assert "deleted" in p.reason and "stage" in p.reason


def test_other_branch_is_ignored_with_reason():
    p = plan_for("Push Hook", push_payload(branch="feature/x"))
    assert p.actions == ()
    assert "feature/x" in p.reason


def test_tag_push_is_ignored():
    p = plan_for("Tag Push Hook", payload("tag_push.json"))
    assert p.actions == ()
    assert "tag" in p.reason


def test_push_of_non_branch_ref_is_ignored():
    p = plan_for("Push Hook", push_payload(ref="refs/merge-requests/3/head"))
    assert p.actions == ()
    assert "not a branch" in p.reason


def test_no_rules_nothing_watched():
    p = plan_for("Push Hook", push_payload(), Rules())
    assert p.actions == ()


# --- job events -----------------------------------------------------------------------------


def test_failed_migration_job_is_reported_once():
    p = plan_for("Job Hook", failed_job_payload(job_id=4242, name="migrate-db"))
    assert len(p.actions) == 1
    a = p.actions[0]
    assert (a.kind, a.key, a.once) == (REPORT_MIGRATION_FAILURE, "report_migration_failure:job/4242", True)
    assert a.payload["job_id"] == 4242
    assert a.payload["job_name"] == "migrate-db"
    assert a.payload["failure_reason"] == "script_failure"
    assert a.payload["branch"] == "stage"
    assert a.payload["project"] == "group/app"
    assert a.payload["pipeline_id"] == 2366
    assert a.payload["user"] == "User"


def test_failed_non_migration_job_is_ignored():
    p = plan_for("Job Hook", failed_job_payload(name="unit-tests"))
    assert p.actions == ()
    assert "unit-tests" in p.reason and "job_name_regex" in p.reason


@pytest.mark.parametrize("status", ["created", "running", "success", "canceled", "pending"])
def test_migration_job_not_failed_is_ignored(status):
    p = plan_for("Job Hook", failed_job_payload(build_status=status))
    assert p.actions == ()
    assert status in p.reason


def test_job_name_regex_comes_from_rules():
    rules = Rules.model_validate({"migrations": {"job_name_regex": "^db:"}})
    assert plan_for("Job Hook", failed_job_payload(name="db:upgrade"), rules).actions
    assert not plan_for("Job Hook", failed_job_payload(name="migrate-db"), rules).actions


# --- pipeline events ------------------------------------------------------------------------


def test_pipeline_with_failed_migration_build_is_reported():
    builds = [build(501, "build-image", "success"), build(502, "migrate-db", "failed", failure_reason="script_failure"),
              build(503, "deploy", "skipped")]
    p = plan_for("Pipeline Hook", pipeline(status="failed", builds=builds))
    assert [(a.kind, a.key, a.once) for a in p.actions] == [
        (REPORT_MIGRATION_FAILURE, "report_migration_failure:job/502", True)]
    a = p.actions[0]
    assert a.payload["pipeline_id"] == 31
    assert a.payload["failure_reason"] == "script_failure"
    assert a.payload["user"] == "root"


def test_pipeline_and_job_event_for_one_job_share_the_key():
    from_job = plan_for("Job Hook", failed_job_payload(job_id=502)).actions[0]
    from_pipeline = plan_for("Pipeline Hook", pipeline(status="failed", builds=[build(502, "migrate-db", "failed")])).actions[0]
    assert from_job.key == from_pipeline.key


def test_pipeline_example_has_failed_non_migration_build_only():
    # GitLab's example: build 378 "test-build" failed, the pipeline says "success".
    p = plan_for("Pipeline Hook", payload("pipeline.json"))
    assert p.actions == ()
    assert "31" in p.reason and "success" in p.reason


@pytest.mark.parametrize("status", ["created", "pending", "waiting_for_resource", "preparing"])
def test_pipeline_waiting_on_watched_branch_starts_runner(status):
    p = plan_for("Pipeline Hook", pipeline(status=status, builds=[build(1, "compile", "pending")]))
    assert [a.key for a in p.actions] == ["ensure_running:buildfront"]
    assert p.actions[0].payload["cause"] == "pipeline"
    assert p.actions[0].payload["pipeline_id"] == 31


def test_pipeline_waiting_on_other_branch_is_ignored():
    p = plan_for("Pipeline Hook", pipeline(status="pending", ref="feature/x"))
    assert p.actions == ()


def test_pipeline_waiting_for_tag_is_ignored():
    p = plan_for("Pipeline Hook", pipeline(status="pending", ref="stage", tag=True))
    assert p.actions == ()


@pytest.mark.parametrize("status", ["success", "running", "canceled", "skipped", "manual"])
def test_pipeline_not_waiting_is_ignored(status):
    builds = [build(1, "migrate-db", "success"), build(2, "compile", "success")]
    p = plan_for("Pipeline Hook", pipeline(status=status, builds=builds))
    assert p.actions == ()
    assert status in p.reason


def test_pending_pipeline_with_failed_migration_gets_both_actions():
    builds = [build(77, "migrate", "failed"), build(78, "deploy", "pending")]
    p = plan_for("Pipeline Hook", pipeline(status="pending", builds=builds))
    assert sorted(a.key for a in p.actions) == ["ensure_running:buildfront", "report_migration_failure:job/77"]
