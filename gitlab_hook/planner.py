"""Rules decide what an event asks of us: a list of actions, or a reason to ignore it. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from gitlab_hook.events import Event, JobEvent, PipelineEvent, PushEvent, TagPushEvent
from gitlab_hook.rules import Rules, RunnerRule

ENSURE_RUNNING = "ensure_running"
REPORT_MIGRATION_FAILURE = "report_migration_failure"
# Operator commands (bot, console), queued like webhook work. Payloads:
#   vm_start / vm_stop: {"vm": str, "by": "@user" | "console", "progress": {"chat_id": int, "message_id": int} | None}
#   vm_resize: the same plus {"cores": int, "memory_gb": float, "core_fraction": int | None}
# "progress" names a chat message the handler edits as it goes (None: send new messages).
VM_START = "vm_start"
VM_STOP = "vm_stop"
VM_RESIZE = "vm_resize"

# Pipelines in these states are waiting for a runner: a pipeline started from the UI, the API,
# a schedule or a retry needs the VM as much as a push does.
WAITING_PIPELINE = {"created", "pending", "waiting_for_resource", "preparing"}


@dataclass(frozen=True)
class Action:
    """One piece of work: ``kind`` says what, ``key`` identifies the effect for coalescing."""

    kind: str
    key: str
    payload: dict[str, Any] = field(default_factory=dict)
    # once=True: the effect happens at most once per key, ever (an alert per failed job).
    # once=False: repeated requests coalesce while one is still pending (a burst of pushes).
    once: bool = False


@dataclass(frozen=True)
class Plan:
    """Actions to queue, or empty with the reason nothing is done."""

    actions: tuple[Action, ...] = ()
    reason: str = ""


def _project_matches(rule: RunnerRule, project: str) -> bool:
    return not rule.projects or any(fnmatchcase(project, p) for p in rule.projects)


def _branch_matches(rule: RunnerRule, branch: str) -> bool:
    return any(fnmatchcase(branch, b) for b in rule.branches)


def _runner_actions(rules: Rules, project: str, branch: str, cause: dict[str, Any]) -> tuple[Action, ...]:
    return tuple(
        Action(ENSURE_RUNNING, f"{ENSURE_RUNNING}:{r.vm}", {"vm": r.vm, **cause})
        for r in rules.runners
        if _project_matches(r, project) and _branch_matches(r, branch)
    )


def plan_push(rules: Rules, ev: PushEvent) -> Plan:
    """A push to a watched branch of a watched project starts that runner VM."""
    branch = ev.branch
    if branch is None:
        return Plan(reason=f"ref {ev.ref} is not a branch")
    if ev.deleted:
        return Plan(reason=f"branch {branch} was deleted")
    project = ev.project.path_with_namespace
    head = ev.head_commit
    cause = {
        "cause": "push",
        "project": project,
        "branch": branch,
        "user": ev.user_username or ev.user_name or "",
        "sha": ev.checkout_sha or ev.after,
        "title": head.title if head else "",
    }
    actions = _runner_actions(rules, project, branch, cause)
    if not actions:
        return Plan(reason=f"no runner watches branch {branch} of {project or 'this project'}")
    return Plan(actions)


def _migration_action(rules: Rules, ctx: dict[str, Any]) -> Action | None:
    if not re.search(rules.migrations.job_name_regex, ctx["job_name"]):
        return None
    return Action(REPORT_MIGRATION_FAILURE, f"{REPORT_MIGRATION_FAILURE}:job/{ctx['job_id']}", ctx, once=True)


def plan_job(rules: Rules, ev: JobEvent) -> Plan:
    """A failed job whose name matches the migration pattern is reported."""
    if ev.build_status != "failed":
        return Plan(reason=f"job {ev.build_name} is {ev.build_status}, not failed")
    project = ev.project.path_with_namespace if ev.project else (ev.project_name or "")
    ctx = {
        "job_id": ev.build_id,
        "job_name": ev.build_name,
        "stage": ev.build_stage,
        "failure_reason": ev.failure_reason,
        "allow_failure": ev.build_allow_failure,
        "pipeline_id": ev.pipeline_id,
        "project": project,
        "project_id": ev.project_id,
        "web_url": ev.project.web_url if ev.project else "",
        "branch": ev.ref,
        "tag": ev.tag,
        "sha": ev.sha,
        "user": (ev.user.username or ev.user.name or "") if ev.user else "",
        "retries_count": ev.retries_count,
    }
    action = _migration_action(rules, ctx)
    if action is None:
        return Plan(reason=f"failed job {ev.build_name} does not match migrations.job_name_regex")
    return Plan((action,))


def plan_pipeline(rules: Rules, ev: PipelineEvent) -> Plan:
    """Failed migration builds are reported; a pipeline waiting for a runner starts its VM."""
    attrs = ev.object_attributes
    project = ev.project.path_with_namespace
    actions: list[Action] = []
    for b in ev.builds:
        if b.status != "failed":
            continue
        ctx = {
            "job_id": b.id,
            "job_name": b.name,
            "stage": b.stage,
            "failure_reason": b.failure_reason,
            "allow_failure": b.allow_failure,
            "pipeline_id": attrs.id,
            "pipeline_url": attrs.url,
            "project": project,
            "project_id": ev.project.id,
            "web_url": ev.project.web_url,
            "branch": attrs.ref,
            "tag": attrs.tag,
            "sha": attrs.sha,
            "user": (ev.user.username or ev.user.name or "") if ev.user else "",
        }
        action = _migration_action(rules, ctx)
        if action is not None:
            actions.append(action)
    if attrs.status in WAITING_PIPELINE and not attrs.tag:
        cause = {
            "cause": "pipeline",
            "project": project,
            "branch": attrs.ref,
            "user": (ev.user.username or "") if ev.user else "",
            "sha": attrs.sha,
            "pipeline_id": attrs.id,
            "title": "",
        }
        actions.extend(_runner_actions(rules, project, attrs.ref, cause))
    if not actions:
        return Plan(reason=f"pipeline {attrs.id} is {attrs.status}: no failed migration job, no runner to wake")
    return Plan(tuple(actions))


def plan(rules: Rules, ev: Event) -> Plan:
    """Route a parsed event to its planner."""
    if isinstance(ev, PushEvent):
        return plan_push(rules, ev)
    if isinstance(ev, TagPushEvent):
        return Plan(reason=f"tag push ({ev.ref}) starts nothing")
    if isinstance(ev, PipelineEvent):
        return plan_pipeline(rules, ev)
    if isinstance(ev, JobEvent):
        return plan_job(rules, ev)
    return Plan(reason="event not handled")  # pragma: no cover - the union is exhaustive
