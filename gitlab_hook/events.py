"""GitLab webhook payloads → small typed events. Pure functions, typed errors, no I/O.

Payload reference: https://docs.gitlab.com/user/project/integrations/webhook_events/
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError
from pydantic import AfterValidator

ZERO_SHA = "0" * 40

# X-Gitlab-Event header → object_kind. System hooks always say "System Hook" and are told
# apart by object_kind (https://docs.gitlab.com/administration/system_hooks/).
HEADER_KINDS = {
    "Push Hook": "push",
    "Tag Push Hook": "tag_push",
    "Pipeline Hook": "pipeline",
    "Job Hook": "build",
}
SYSTEM_HOOK = "System Hook"


class PayloadError(ValueError):
    """The body is JSON but not a payload we can read: names the event and the field."""

    def __init__(self, event: str, field: str, problem: str):
        self.event, self.field, self.problem = event, field, problem
        super().__init__(f"{event} event: {field}: {problem}")


class UnsupportedEvent(Exception):
    """An event kind we do not act on (merge requests, issues, notes, …)."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"event {name!r} is not one we act on")


# git check-ref-format rules, enough to refuse hostile names before they go anywhere.
_BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|/\.|\.lock(/|$)")


def _ref_name(value: str) -> str:
    if len(value) > 1024:
        raise ValueError("longer than 1024 characters")
    if not value or _BAD_REF.search(value) or value.endswith(("/", ".")) or value.startswith(("/", "-")):
        raise ValueError("not a valid git ref name")
    return value


RefName = Annotated[StrictStr, AfterValidator(_ref_name)]
Text = Annotated[StrictStr, Field(max_length=100_000)]


class _Model(BaseModel):
    # GitLab adds fields over time: ignore what we do not read, type-check what we do.
    model_config = ConfigDict(extra="ignore", frozen=True)


class Project(_Model):
    """The project an event belongs to."""

    id: StrictInt | None = None
    path_with_namespace: Text = ""
    web_url: Text = ""


class User(_Model):
    """The person who caused an event."""

    username: Text | None = None
    name: Text | None = None


class Commit(_Model):
    """One commit of a push."""

    id: Text = ""
    title: Text = ""
    message: Text = ""


class PushEvent(_Model):
    """A push of commits to one ref."""

    object_kind: str = "push"
    ref: RefName
    before: Text = ZERO_SHA
    after: Text = ZERO_SHA
    checkout_sha: Text | None = None
    user_username: Text | None = None
    user_name: Text | None = None
    project: Project
    commits: list[Commit] = Field(default_factory=list)
    total_commits_count: StrictInt = 0

    @property
    def branch(self) -> str | None:
        """The branch name, or None when the ref is not a branch."""
        return self.ref[len("refs/heads/"):] if self.ref.startswith("refs/heads/") else None

    @property
    def deleted(self) -> bool:
        return self.after == ZERO_SHA

    @property
    def head_commit(self) -> Commit | None:
        """The commit the branch now points at, when the payload lists it."""
        for c in self.commits:
            if c.id == self.after:
                return c
        return self.commits[-1] if self.commits else None


class TagPushEvent(_Model):
    """A tag created or deleted."""

    object_kind: str = "tag_push"
    ref: RefName
    project: Project


class PipelineAttributes(_Model):
    id: StrictInt
    iid: StrictInt | None = None
    ref: RefName
    tag: StrictBool = False
    sha: Text = ""
    source: Text | None = None
    status: Text
    url: Text | None = None
    created_at: Text | None = None


class Build(_Model):
    """The latest build of one job in a pipeline event."""

    id: StrictInt
    name: Text
    stage: Text | None = None
    status: Text
    failure_reason: Text | None = None
    allow_failure: StrictBool = False


class PipelineEvent(_Model):
    """A pipeline changed status."""

    object_kind: str = "pipeline"
    object_attributes: PipelineAttributes
    user: User | None = None
    project: Project
    commit: dict[str, Any] | None = None
    builds: list[Build] = Field(default_factory=list)


class JobEvent(_Model):
    """A job (build) changed status."""

    object_kind: str = "build"
    build_id: StrictInt
    build_name: Text
    build_stage: Text | None = None
    build_status: Text
    build_failure_reason: Text | None = None
    build_allow_failure: StrictBool = False
    ref: RefName
    tag: StrictBool = False
    sha: Text = ""
    pipeline_id: StrictInt | None = None
    project_id: StrictInt | None = None
    project_name: Text | None = None
    user: User | None = None
    project: Project | None = None
    retries_count: StrictInt = 0

    @property
    def failure_reason(self) -> str | None:
        # GitLab sends build_failure_reason on every job event; it only means something on failure.
        return self.build_failure_reason if self.build_status == "failed" else None


Event = Union[PushEvent, TagPushEvent, PipelineEvent, JobEvent]
_MODELS: dict[str, type[_Model]] = {
    "push": PushEvent,
    "tag_push": TagPushEvent,
    "pipeline": PipelineEvent,
    "build": JobEvent,
}


def event_kind(header: str | None, body: dict[str, Any]) -> str:
    """Decide the object kind from X-Gitlab-Event, and object_kind for system hooks."""
    kind = body.get("object_kind")
    if header == SYSTEM_HOOK or not header:
        if isinstance(kind, str) and kind in _MODELS:
            return kind
        name = kind if isinstance(kind, str) else (header or "unknown")
        raise UnsupportedEvent(name[:100])
    if header not in HEADER_KINDS:
        raise UnsupportedEvent(header[:100])
    expected = HEADER_KINDS[header]
    if kind is not None and kind != expected:
        raise PayloadError(expected, "object_kind", f"says {str(kind)[:50]!r} but the header says {header!r}")
    return expected


def parse_event(header: str | None, body: Any) -> Event:
    """Parse a decoded JSON body into a typed event, or raise PayloadError / UnsupportedEvent."""
    if not isinstance(body, dict):
        raise PayloadError(header or "unknown", "(body)", "must be a JSON object")
    kind = event_kind(header, body)
    try:
        return _MODELS[kind].model_validate(body)  # type: ignore[return-value]
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(body)"
        raise PayloadError(kind, field, err["msg"]) from None
