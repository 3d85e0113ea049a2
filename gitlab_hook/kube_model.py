"""What the Kubernetes side speaks in: typed errors, pod/log records, and name checks. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class KubeError(Exception):
    """Something went wrong talking to Kubernetes; the text is safe to show (no secrets)."""


class KubeConfigError(KubeError):
    """No usable cluster configuration (kubeconfig, URL + token, or in-cluster)."""


class NamespaceNotFound(KubeError):
    """The namespace does not exist."""

    def __init__(self, namespace: str) -> None:
        super().__init__(f"namespace {namespace} does not exist")
        self.namespace = namespace


class NoMatchingPod(KubeError):
    """No pod in the namespace has a name matching the pattern."""

    def __init__(self, namespace: str, pattern: str, seen_names: list[str], hint: str = "") -> None:
        seen = ", ".join(seen_names) if seen_names else "none"
        super().__init__(f"no pod matching {pattern} in namespace {namespace} (pods seen: {seen})"
                         + (f"; {hint}" if hint else ""))
        self.namespace, self.pattern, self.seen_names = namespace, pattern, seen_names


class PodNotFound(KubeError):
    """The pod went away between listing it and reading from it."""


class KubeForbidden(KubeError):
    """Our service account lacks an RBAC permission; the text names the missing rule."""

    def __init__(self, verb: str, resource: str, namespace: str, detail: str = "") -> None:
        super().__init__(f"Kubernetes refused to {verb} {resource} in namespace {namespace}: the service account "
                         f"needs `{verb}` on `{resource}` in namespace {namespace} (a Role rule: apiGroups [\"\"], "
                         f"resources [\"{resource}\"], verbs [\"{verb}\"])"
                         + (f". API said: {detail}" if detail else ""))
        self.verb, self.resource, self.namespace = verb, resource, namespace


class KubeUnauthorized(KubeError):
    """The API server rejected our credentials (401)."""


class KubeUnreachable(KubeError):
    """The API server could not be reached or failed (timeout, refused, 5xx): worth retrying later."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ContainerNotStarted(KubeError):
    """The container has no log yet: it is waiting to start."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"container has not started: {reason}")
        self.reason = reason


class LogsUnavailable(KubeError):
    """The API server would not give this log (e.g. no previous run, unknown container)."""


class InvalidName(ValueError):
    """A namespace, pod or container name that Kubernetes would never accept."""


@dataclass(frozen=True)
class ContainerState:
    """One container's status, flattened."""

    name: str
    state: str  # "waiting" | "running" | "terminated" | "unknown"
    reason: str | None = None
    message: str | None = None
    exit_code: int | None = None
    restart_count: int = 0
    last_terminated_reason: str | None = None
    last_exit_code: int | None = None
    init: bool = False


@dataclass(frozen=True)
class PodInfo:
    """The pod we chose, and why."""

    name: str
    namespace: str
    created: datetime
    phase: str | None
    labels: dict[str, str]
    annotations: dict[str, str]
    node: str | None
    containers: list[ContainerState]
    how_chosen: str = ""


@dataclass(frozen=True)
class LogText:
    """A log as read: at most limit_bytes of it."""

    text: str
    truncated: bool
    bytes_read: int


@dataclass(frozen=True)
class Event:
    """A Kubernetes event about the pod."""

    type: str
    reason: str
    message: str
    count: int
    last_seen: datetime | None


@dataclass
class MigrationLogs:
    """Everything collected about the migration pod."""

    pod: PodInfo
    container: ContainerState | None
    current: LogText | None = None
    previous: LogText | None = None
    events: list[Event] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_namespace(name: str) -> str:
    """Return NAME if it is a valid namespace (RFC 1123 label), else raise InvalidName."""
    if not isinstance(name, str) or len(name) > 63 or not _LABEL.fullmatch(name):
        raise InvalidName(f"invalid namespace {name!r}: lowercase letters, digits and '-', at most 63")
    return name


def check_pod_name(name: str) -> str:
    """Return NAME if it is a valid pod name (RFC 1123 subdomain), else raise InvalidName."""
    if not isinstance(name, str) or len(name) > 253 or not _SUBDOMAIN.fullmatch(name):
        raise InvalidName(f"invalid pod name {name!r}: lowercase letters, digits, '-' and '.', at most 253")
    return name


def check_container_name(name: str) -> str:
    """Return NAME if it is a valid container name (RFC 1123 label, as Kubernetes requires)."""
    if not isinstance(name, str) or len(name) > 63 or not _LABEL.fullmatch(name):
        raise InvalidName(f"invalid container name {name!r}: lowercase letters, digits and '-', at most 63")
    return name
