"""What an action does: the handler contract, its typed errors, and the dry-run handlers."""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from gitlab_hook.planner import ENSURE_RUNNING, REPORT_MIGRATION_FAILURE

log = logging.getLogger("gitlab_hook.dry_run")


class TransientError(Exception):
    """Worth retrying later (outside system busy, unreachable, rate-limited)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(Exception):
    """Retrying will not help (VM missing, no permission, bad request); alert and stop."""


@dataclass
class Effect:
    """What a handler did: a one-line summary, and journal entries for dry-run effects."""

    summary: str
    journal: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Context:
    """What a handler may know about its run."""

    action_id: int
    attempt: int
    renew_lease: Callable[[], None]


class Handler(Protocol):
    def __call__(self, payload: dict[str, Any], ctx: Context) -> Effect: ...


def _short(sha: str | None) -> str:
    return (sha or "")[:8]


def dry_ensure_running(payload: dict[str, Any], ctx: Context) -> Effect:
    """Dry-run: say which VM would be started and why."""
    who = f"@{payload['user']}" if payload.get("user") else "someone"
    what = (f"would ensure VM {payload['vm']} is running: {payload.get('cause', 'request')} by {who} "
            f"to {payload.get('branch', '?')} of {payload.get('project', '?')} ({_short(payload.get('sha'))})")
    log.info(what, extra={"action_id": ctx.action_id, "vm": payload["vm"], "dry_run": True})
    return Effect(what, [what])


def dry_report_migration_failure(payload: dict[str, Any], ctx: Context) -> Effect:
    """Dry-run: say which failed migration job would be reported."""
    what = (f"would report failed migration job {payload.get('job_name')} #{payload.get('job_id')} "
            f"of {payload.get('project', '?')} on {payload.get('branch', '?')} "
            f"(reason: {payload.get('failure_reason') or 'unknown'}) to Telegram")
    log.info(what, extra={"action_id": ctx.action_id, "job_id": payload.get("job_id"), "dry_run": True})
    return Effect(what, [what])


DRY_RUN_HANDLERS: dict[str, Handler] = {
    ENSURE_RUNNING: dry_ensure_running,
    REPORT_MIGRATION_FAILURE: dry_report_migration_failure,
}


def dry_vm_command(kind: str, notifier: Any) -> Handler:
    """Dry-run for an operator's start/stop/resize: say so where the operator is looking."""
    verb = {"vm_start": "start", "vm_stop": "stop", "vm_resize": "resize"}.get(kind, kind)

    def handler(payload: dict[str, Any], ctx: Context) -> Effect:
        size = (f" to {payload.get('cores')} cores / {payload.get('memory_gb')} GB"
                if kind == "vm_resize" else "")
        what = (f"dry-run: Yandex Compute is not configured; would {verb} {payload.get('vm')}{size} "
                f"for {payload.get('by') or 'someone'}")
        log.info(what, extra={"action_id": ctx.action_id, "dry_run": True})
        progress = payload.get("progress")
        text = "🧪 " + html.escape(what, quote=False)
        if progress:
            notifier.edit_html(progress["chat_id"], progress["message_id"], text)
        else:
            notifier.send_html(text)
        return Effect(what, [what])

    handler.__name__ = f"dry_{kind}"
    return handler
