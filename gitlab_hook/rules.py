"""The rules file (``GITLAB_HOOK_CONFIG``): which VMs, branches, jobs and people, validated."""

from __future__ import annotations

import re
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveInt,
    field_validator,
    model_validator,
)

from gitlab_hook.durations import parse_duration
from gitlab_hook.redaction import validate_pattern
from gitlab_hook.windows import Window, parse_windows

# Yandex Cloud resource names: https://yandex.cloud/en/docs/compute/concepts/vm#name
VM_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
# Kubernetes namespace names are RFC 1123 labels.
NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

Seconds = Annotated[float, BeforeValidator(parse_duration)]
Role = Literal["viewer", "operator", "admin"]


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    return value


Regex = Annotated[str, BeforeValidator(lambda v: _regex(v) if isinstance(v, str) else v)]


def _redact_pattern(value: str) -> str:
    # Runs over every log line: refuse patterns that match nothing useful or backtrack badly.
    if isinstance(value, str):
        validate_pattern(value)
    return value


class _Strict(BaseModel):
    # Unknown keys are typos more often than not: refuse them so they are not silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunnerRule(_Strict):
    """One runner VM and what wakes it."""

    vm: str
    branches: list[str] = Field(min_length=1)
    projects: list[str] = Field(default_factory=list)
    gitlab_runner_ids: list[PositiveInt] = Field(default_factory=list)
    idle_stop_after: Seconds | None = None
    keep_running: str | list[str] | None = None
    timezone: str = "UTC"
    start_at_window_open: bool = False

    @field_validator("vm")
    @classmethod
    def _vm_name(cls, v: str) -> str:
        if not VM_NAME_RE.match(v) and not re.fullmatch(r"[a-z0-9]{20}", v):
            raise ValueError(
                "must be a Yandex Cloud VM name (lowercase letters, digits, '-', "
                "starting with a letter, at most 63 characters) or an instance id"
            )
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (use an IANA name like Europe/Moscow)") from None
        return v

    @field_validator("keep_running")
    @classmethod
    def _windows(cls, v: str | list[str] | None) -> str | list[str] | None:
        parse_windows(v)  # WindowError is a ValueError: pydantic reports it under this key
        return v

    @property
    def windows(self) -> tuple[Window, ...]:
        """The parsed keep_running windows."""
        return parse_windows(self.keep_running)

    @field_validator("idle_stop_after")
    @classmethod
    def _idle(cls, v: float | None) -> float | None:
        if v is not None and v < 60:
            raise ValueError("must be at least 1m: a shorter idle time would stop a VM between jobs")
        return v


class VmsRule(_Strict):
    """Which VMs the bot lists and may touch."""

    name_regex: Regex = "^build"


class MigrationsRule(_Strict):
    """How failed migration jobs are recognised and where their pods live."""

    job_name_regex: Regex = "migrat"
    pod_name_regex: Regex = "^pre-migrate-db-"
    container: str = "pre-migrate-db"
    namespaces: dict[str, str] = Field(default_factory=dict)
    default_namespace: str | None = None
    tail_lines: int = Field(default=200, ge=1, le=100_000)
    redact_patterns: list[Annotated[str, BeforeValidator(_redact_pattern)]] = Field(default_factory=list)

    @field_validator("namespaces")
    @classmethod
    def _ns_map(cls, v: dict[str, str]) -> dict[str, str]:
        for branch, ns in v.items():
            if not isinstance(ns, str) or not NAMESPACE_RE.match(ns):
                raise ValueError(f"namespace {ns!r} for branch {branch!r} is not a valid Kubernetes name")
        return v

    @field_validator("default_namespace")
    @classmethod
    def _ns(cls, v: str | None) -> str | None:
        if v is not None and not NAMESPACE_RE.match(v):
            raise ValueError(f"{v!r} is not a valid Kubernetes namespace name")
        return v


class TelegramRule(_Strict):
    """Who may command the bot: numeric Telegram user id → role."""

    users: dict[int, Role] = Field(default_factory=dict)


class Rules(_Strict):
    """The whole rules file."""

    runners: list[RunnerRule] = Field(default_factory=list)
    runner_check_interval: Seconds = 60.0
    price_per_hour: dict[str, float] = Field(default_factory=dict)
    vms: VmsRule = Field(default_factory=VmsRule)
    migrations: MigrationsRule = Field(default_factory=MigrationsRule)
    telegram: TelegramRule = Field(default_factory=TelegramRule)

    @model_validator(mode="after")
    def _unique_vms(self) -> "Rules":
        seen: dict[str, int] = {}
        for i, r in enumerate(self.runners):
            if r.vm in seen:
                raise ValueError(f"runners.{i}.vm: {r.vm!r} is listed twice (first at runners.{seen[r.vm]}.vm)")
            seen[r.vm] = i
        return self
