"""Yandex Compute Cloud REST v1 client: list, start, stop and resize instances, wait on Operations."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import requests

from .errors import (
    RETRYABLE_HTTP,
    ConnectionFailed,
    InvalidName,
    NotFound,
    OperationFailed,
    OperationTimeout,
    TokenError,
    YandexError,
    error_from_response,
    redact,
)
from .iam import DEFAULT_TIMEOUT, TokenProvider, Timeout, parse_rfc3339

log = logging.getLogger(__name__)

DEFAULT_COMPUTE_URL = "https://compute.api.cloud.yandex.net"
DEFAULT_OPERATION_URL = "https://operation.api.cloud.yandex.net"
MAX_PAGE_SIZE = 1000

# Instance names as agreed for this service (the classic Yandex rule). The Compute API
# reference now also allows "_" (https://yandex.cloud/en/docs/compute/api-ref/Instance/create);
# relax NAME_RULE here if such VMs must be reachable by name (ids always work).
NAME_RULE = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"
ID_RULE = r"^[a-z0-9]{1,50}$"
_NAME_RE = re.compile(NAME_RULE[1:-1])
_ID_RE = re.compile(ID_RULE[1:-1])

_RETRYABLE_TRANSPORT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)

# Instance statuses (compute/v1/instance.proto).
PROVISIONING = "PROVISIONING"
RUNNING = "RUNNING"
STOPPING = "STOPPING"
STOPPED = "STOPPED"
STARTING = "STARTING"
RESTARTING = "RESTARTING"
UPDATING = "UPDATING"
ERROR = "ERROR"
CRASHED = "CRASHED"
DELETING = "DELETING"
# Status groups the policies share: "up or on its way" needs no start; "broken" needs a person.
UP_STATUSES = frozenset({PROVISIONING, STARTING, RUNNING, RESTARTING})
BROKEN_STATUSES = frozenset({ERROR, CRASHED, DELETING})


def validate_vm_name(name: object) -> str:
    """Return name if it is a valid Yandex instance name, else raise InvalidName."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidName("VM name", name, NAME_RULE)
    return name


def validate_resource_id(value: object, kind: str = "instance id") -> str:
    """Return value if it looks like a Yandex resource id (lowercase letters, digits), else raise InvalidName."""
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise InvalidName(kind, value, ID_RULE)
    return value


def _int(value: object, default: int = 0) -> int:
    # int64 fields arrive as JSON strings ("4294967296"), int32 ones as numbers.
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return default
    if isinstance(value, float):
        return int(value)
    return default


def _dict(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


@dataclass(frozen=True)
class Instance:
    """A Compute instance, reduced to what the service needs."""

    id: str
    name: str
    folder_id: str = ""
    status: str = ""
    zone_id: str = ""
    platform_id: str = ""
    cores: int = 0
    memory_bytes: int = 0
    core_fraction: int = 100
    gpus: int = 0
    preemptible: bool = False
    created_at: datetime | None = None
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    fqdn: str = ""

    @property
    def memory_gb(self) -> float:
        """Memory in GB as Yandex counts it (2^30 bytes)."""
        return self.memory_bytes / 2**30

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Instance:
        """Build from the REST JSON of an Instance; missing fields get neutral defaults."""
        resources = _dict(data.get("resources"))
        labels = {str(k): str(v) for k, v in _dict(data.get("labels")).items()}
        return cls(
            id=_str(data.get("id")),
            name=_str(data.get("name")),
            folder_id=_str(data.get("folderId")),
            status=_str(data.get("status")),
            zone_id=_str(data.get("zoneId")),
            platform_id=_str(data.get("platformId")),
            cores=_int(resources.get("cores")),
            memory_bytes=_int(resources.get("memory")),
            # Proto3 JSON omits zero/default values; a missing coreFraction means 100 %.
            core_fraction=_int(resources.get("coreFraction"), 100) or 100,
            gpus=_int(resources.get("gpus")),
            preemptible=bool(_dict(data.get("schedulingPolicy")).get("preemptible", False)),
            created_at=parse_rfc3339(data.get("createdAt")),
            labels=labels,
            fqdn=_str(data.get("fqdn")),
        )


@dataclass(frozen=True)
class Operation:
    """A Yandex Cloud Operation: an asynchronous change, done with either error or response."""

    id: str
    description: str = ""
    done: bool = False
    created_at: datetime | None = None
    modified_at: datetime | None = None
    created_by: str = ""
    metadata: dict[str, Any] = field(default_factory=dict, hash=False)
    error: dict[str, Any] | None = field(default=None, hash=False)
    response: dict[str, Any] | None = field(default=None, hash=False)

    @property
    def instance_id(self) -> str:
        """The instance the operation is about (metadata.instanceId), or ''."""
        return _str(self.metadata.get("instanceId"))

    @property
    def failed(self) -> bool:
        """True when the operation is done and carries an error."""
        return self.done and self.error is not None

    @property
    def error_code(self) -> int | None:
        """gRPC code of the error, if any."""
        return None if self.error is None else _int(self.error.get("code"), 2)

    @property
    def error_message(self) -> str:
        """Message of the error, or ''."""
        return "" if self.error is None else _str(self.error.get("message"))

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Operation:
        """Build from the REST JSON of an Operation; missing fields get neutral defaults."""
        error = data.get("error")
        response = data.get("response")
        return cls(
            id=_str(data.get("id")),
            description=_str(data.get("description")),
            done=bool(data.get("done", False)),
            created_at=parse_rfc3339(data.get("createdAt")),
            modified_at=parse_rfc3339(data.get("modifiedAt")),
            created_by=_str(data.get("createdBy")),
            metadata=_dict(data.get("metadata")),
            error=_dict(error) if isinstance(error, Mapping) else None,
            response=_dict(response) if isinstance(response, Mapping) else None,
        )

    def raise_for_error(self) -> None:
        """Raise OperationFailed if the operation finished with an error."""
        if self.done and self.error is not None:
            details = self.error.get("details")
            raise OperationFailed(
                self.id,
                self.description,
                self.error_code or 2,
                redact(self.error_message),
                details if isinstance(details, list) else None,
            )


class ComputeClient:
    """Compute REST v1 over one requests.Session, with retries and 401 token refresh."""

    def __init__(
        self,
        *,
        compute_url: str = DEFAULT_COMPUTE_URL,
        operation_url: str = DEFAULT_OPERATION_URL,
        folder_id: str,
        token_provider: TokenProvider,
        session: requests.Session | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
        max_attempts: int = 6,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Configure endpoints (API roots), folder, credentials and the retry policy."""
        self._compute = compute_url.rstrip("/") + "/compute/v1"
        self._operations = operation_url.rstrip("/") + "/operations"
        self.folder_id = validate_resource_id(folder_id, "folder id")
        self._tokens = token_provider
        self._own_session = session is None
        self._session = session or requests.Session()
        self._timeout = timeout
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._sleep = sleep
        self._monotonic = monotonic

    # -- plumbing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._own_session:
            self._session.close()

    def __enter__(self) -> ComputeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _backoff(self, attempt: int) -> float:
        return min(self._backoff_cap, self._backoff_base * (2 ** (attempt - 1)))

    def _request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        mutating: bool = False,
    ) -> dict[str, Any]:
        """Send one API call; the only place that retries, backs off and refreshes tokens."""
        what = f"{method} {urlsplit(url).path}"
        headers: dict[str, str] = {}
        if mutating:
            # Same key on every retry: a start that reached the API before a timeout is not
            # started twice. https://yandex.cloud/en/docs/api-design-guide/concepts/idempotency
            headers["Idempotency-Key"] = str(uuid.uuid4())
        attempt = 0
        reauthenticated = False
        while True:
            attempt += 1
            token = ""
            try:
                token = self._tokens.token()
                resp = self._session.request(
                    method,
                    url,
                    params=params,
                    json=body,
                    headers={**headers, "Authorization": f"Bearer {token}"},
                    timeout=self._timeout,
                )
            except TokenError as exc:
                if not exc.retryable or attempt >= self._max_attempts:
                    raise
                delay = self._backoff(attempt)
                log.warning("Yandex %s: no IAM token yet (%s); retry %d in %.2fs", what, exc, attempt, delay)
                self._sleep(delay)
                continue
            except requests.RequestException as exc:
                if not isinstance(exc, _RETRYABLE_TRANSPORT) or isinstance(exc, requests.exceptions.SSLError):
                    # Not transient (bad certificate, InvalidHeader...). Name only the kind:
                    # InvalidHeader's text would include the token.
                    raise YandexError(f"Yandex {what} could not be sent: {type(exc).__name__}") from None
                if attempt >= self._max_attempts:
                    raise ConnectionFailed(
                        f"no answer after {attempt} attempts ({type(exc).__name__})", request=what
                    ) from None
                delay = self._backoff(attempt)
                log.warning("Yandex %s: %s; retry %d in %.2fs", what, type(exc).__name__, attempt, delay)
                self._sleep(delay)
                continue

            if resp.status_code < 400:
                return self._json(resp, what)
            error = error_from_response(resp, secrets=(token,), request=what)
            if resp.status_code == 401 and not reauthenticated:
                # A token revoked or expired early: get a fresh one once. The static provider
                # raises TokenExpired here because it cannot renew.
                reauthenticated = True
                attempt -= 1
                log.warning("Yandex %s: token rejected (401), fetching a new one", what)
                self._tokens.invalidate()
                continue
            if resp.status_code in RETRYABLE_HTTP and attempt < self._max_attempts:
                delay = self._backoff(attempt)
                if error.retry_after is not None:
                    delay = min(error.retry_after, self._backoff_cap)
                log.warning("Yandex %s: HTTP %d; retry %d in %.2fs", what, resp.status_code, attempt, delay)
                self._sleep(delay)
                continue
            raise error

    @staticmethod
    def _json(resp: requests.Response, what: str) -> dict[str, Any]:
        if not resp.content:
            return {}
        try:
            data = resp.json()
        except ValueError:
            raise YandexError(f"Yandex {what}: HTTP {resp.status_code} answer is not JSON") from None
        if not isinstance(data, dict):
            raise YandexError(f"Yandex {what}: HTTP {resp.status_code} answer is not a JSON object")
        return data

    # -- instances --------------------------------------------------------------------------

    def list_instances(self, name_filter: str | None = None, page_size: int = MAX_PAGE_SIZE) -> list[Instance]:
        """List the folder's instances (all pages), optionally only the one with this exact name."""
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}")
        params: dict[str, str] = {"folderId": self.folder_id, "pageSize": str(page_size)}
        if name_filter is not None:
            # Validation also keeps quotes out of the filter expression.
            params["filter"] = f'name="{validate_vm_name(name_filter)}"'
        found: list[Instance] = []
        seen_tokens: set[str] = set()
        while True:
            data = self._request("GET", f"{self._compute}/instances", params=params)
            instances = data.get("instances") or []
            found.extend(Instance.from_api(item) for item in instances if isinstance(item, Mapping))
            next_token = _str(data.get("nextPageToken"))
            if not next_token:
                return found
            if next_token in seen_tokens:
                raise YandexError("Yandex instance listing repeats a page token; stopping")
            seen_tokens.add(next_token)
            params["pageToken"] = next_token

    def get_instance(self, instance_id: str) -> Instance:
        """Read one instance by id."""
        validate_resource_id(instance_id)
        return Instance.from_api(self._request("GET", f"{self._compute}/instances/{instance_id}"))

    def find_instance(self, name_or_id: str) -> Instance:
        """Find an instance of the folder by exact name, else by id; NotFound when neither."""
        is_name = isinstance(name_or_id, str) and bool(_NAME_RE.fullmatch(name_or_id))
        is_id = isinstance(name_or_id, str) and bool(_ID_RE.fullmatch(name_or_id))
        if not is_name and not is_id:
            validate_vm_name(name_or_id)  # raises InvalidName
        if is_name:
            for inst in self.list_instances(name_filter=name_or_id):
                if inst.name == name_or_id:
                    return inst
        if is_id:
            try:
                inst = self.get_instance(name_or_id)
            except NotFound:
                inst = None
            # Only VMs of our folder: the bot's permissions are scoped to it.
            if inst is not None and inst.folder_id in ("", self.folder_id):
                return inst
        raise NotFound(
            f"no instance named or with id {name_or_id!r} in folder {self.folder_id}",
            http_status=404,
            request=f"find {name_or_id}",
        )

    def start(self, instance_id: str) -> Operation:
        """Ask to start a STOPPED instance; returns the Operation to wait on."""
        validate_resource_id(instance_id)
        data = self._request("POST", f"{self._compute}/instances/{instance_id}:start", mutating=True)
        return Operation.from_api(data)

    def stop(self, instance_id: str) -> Operation:
        """Ask to stop a RUNNING instance; returns the Operation to wait on."""
        validate_resource_id(instance_id)
        data = self._request("POST", f"{self._compute}/instances/{instance_id}:stop", mutating=True)
        return Operation.from_api(data)

    def update_resources(
        self,
        instance_id: str,
        *,
        cores: int | None = None,
        memory_bytes: int | None = None,
        core_fraction: int | None = None,
    ) -> Operation:
        """Change cores, memory and/or core fraction of a STOPPED instance (only the given fields)."""
        validate_resource_id(instance_id)
        spec: dict[str, str] = {}
        mask: list[str] = []
        # The API resets every field missing from updateMask, so name exactly what changes.
        for api_name, value in (("cores", cores), ("memory", memory_bytes), ("coreFraction", core_fraction)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{api_name} must be a positive integer")
            spec[api_name] = str(value)  # int64 travels as a JSON string
            mask.append(f"resourcesSpec.{api_name}")
        if core_fraction is not None and core_fraction > 100:
            raise ValueError("coreFraction must be at most 100")
        if not mask:
            raise ValueError("update_resources needs at least one of cores, memory_bytes, core_fraction")
        body = {"updateMask": ",".join(mask), "resourcesSpec": spec}
        data = self._request("PATCH", f"{self._compute}/instances/{instance_id}", body=body, mutating=True)
        return Operation.from_api(data)

    # -- operations -------------------------------------------------------------------------

    def get_operation(self, op_id: str) -> Operation:
        """Read an Operation by id."""
        validate_resource_id(op_id, "operation id")
        return Operation.from_api(self._request("GET", f"{self._operations}/{op_id}"))

    def wait_operation(
        self,
        op: Operation | str,
        *,
        timeout: float = 300.0,
        poll_interval: float = 1.0,
        on_poll: Callable[[Operation], None] | None = None,
    ) -> Operation:
        """Poll until the Operation is done; OperationFailed on error, OperationTimeout past timeout."""
        if isinstance(op, str):
            op = self.get_operation(op)
        deadline = self._monotonic() + timeout
        while not op.done:
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                raise OperationTimeout(op.id, op.description, timeout)
            self._sleep(max(0.0, min(poll_interval, remaining)))
            op = self.get_operation(op.id)
            if on_poll is not None:
                on_poll(op)
        op.raise_for_error()
        return op

    def wait_status(
        self,
        instance: Instance | str,
        wanted: Iterable[str],
        *,
        timeout: float = 300.0,
        poll_interval: float = 1.0,
        on_poll: Callable[[Instance], None] | None = None,
    ) -> Instance:
        """Poll an instance until its status is one of ``wanted``; OperationTimeout when it turns broken or late."""
        wanted = frozenset(wanted)
        inst = self.get_instance(instance) if isinstance(instance, str) else instance
        deadline = self._monotonic() + timeout
        while inst.status not in wanted:
            if inst.status in BROKEN_STATUSES or self._monotonic() >= deadline:
                raise OperationTimeout("", f"waiting for {inst.name} to be {'/'.join(sorted(wanted))}, "
                                           f"it is {inst.status}", timeout)
            self._sleep(poll_interval)
            if on_poll is not None:
                on_poll(inst)
            inst = self.get_instance(inst.id)
        return inst

    def __repr__(self) -> str:
        return f"ComputeClient(compute={self._compute!r}, folder_id={self.folder_id!r})"
