"""One webhook delivery: verify → parse → plan → dedupe + record → enqueue. No slow outside calls."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Mapping

from gitlab_hook import planner
from gitlab_hook.events import PayloadError, UnsupportedEvent, parse_event
from gitlab_hook.intake import IntakeStore, StorageError
from gitlab_hook.taskqueue import TaskQueue
from gitlab_hook.rules import Rules
from gitlab_hook.webhook_auth import AuthError, verify_delivery

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """The HTTP answer to a delivery, plus the labels for metrics."""

    status: int
    body: dict[str, Any]
    outcome: str
    event: str = "unknown"


@dataclass(frozen=True)
class Intake:
    """What the webhook needs, handed in by the app factory."""

    rules: Rules
    store: IntakeStore
    queue: TaskQueue
    secret: str | None
    signing_token: str | None = None
    tolerance: float = 300.0


def dedupe_key(headers: Mapping[str, str], event: str) -> str | None:
    """``Idempotency-Key`` (same across GitLab's retries and "Resend"), else event UUID + event name."""
    idem = headers.get("Idempotency-Key")
    if idem:
        return "idem:" + hashlib.sha256(idem.encode("utf-8", "replace")).hexdigest()
    event_uuid = headers.get("X-Gitlab-Event-UUID")
    if event_uuid:
        return "event:" + hashlib.sha256(f"{event_uuid}\n{event}".encode("utf-8", "replace")).hexdigest()
    return None


def _event_label(header: str | None) -> str:
    # Metrics labels must stay a small set, whatever a client sends.
    known = {"Push Hook", "Tag Push Hook", "Pipeline Hook", "Job Hook", "System Hook"}
    return header if header in known else "other"


def handle_delivery(deps: Intake, headers: Mapping[str, str], body: bytes) -> Answer:
    """Answer one delivery as the design's HTTP table says."""
    header = headers.get("X-Gitlab-Event")
    label = _event_label(header)
    try:
        verify_delivery(headers, body, secret=deps.secret, signing_token=deps.signing_token,
                        tolerance=deps.tolerance)
    except AuthError as exc:
        log.warning("webhook refused: %s", exc)
        return Answer(401, {"error": str(exc)}, "unauthorized", label)
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        msg = str(exc)[:200] if isinstance(exc, ValueError) else "nested too deeply"
        return Answer(400, {"error": f"body is not valid JSON: {msg}"}, "bad_request", label)
    if not isinstance(data, dict):
        return Answer(400, {"error": f"body must be a JSON object, got {type(data).__name__}"}, "bad_request", label)
    try:
        event = parse_event(header, data)
    except UnsupportedEvent as exc:
        return Answer(200, {"status": "ignored", "reason": str(exc)}, "ignored", label)
    except PayloadError as exc:
        return Answer(400, {"error": str(exc)}, "bad_request", label)
    plan = planner.plan(deps.rules, event)
    if not plan.actions:
        return Answer(200, {"status": "ignored", "reason": plan.reason}, "ignored", label)
    key = dedupe_key(headers, header or event.object_kind)
    try:
        accepted = deps.store.accept(key or "none:" + uuid.uuid4().hex, event.object_kind, plan.actions)
    except StorageError as exc:
        log.error("webhook could not record a delivery: %s", exc)
        return Answer(503, {"error": "queue storage is unavailable; GitLab may retry"}, "unavailable", label)
    if accepted.duplicate:
        return Answer(200, {"status": "duplicate", "delivery": accepted.delivery}, "duplicate", label)
    try:
        deps.queue.submit(accepted.new_ids)
    except Exception as exc:
        # The outbox rows are committed: the worker re-drives them, so the 202 stays true.
        log.error("could not enqueue actions %s (they will be re-driven): %s", accepted.new_ids, exc)
    keys = sorted({a.key for a in plan.actions})
    log.info("delivery %s queued: %s", accepted.delivery, ", ".join(keys))
    return Answer(202, {"status": "queued", "delivery": accepted.delivery, "actions": keys}, "queued", label)
