"""Fake Yandex Cloud endpoints on 127.0.0.1: Compute + Operation API, IAM, VM metadata service."""

from __future__ import annotations

import base64
import json
import re
import secrets
import socket
import string
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

IAM_AUDIENCE = "https://iam.api.cloud.yandex.net/iam/v1/tokens"
GIB = 2**30

# gRPC code → HTTP status, as Yandex's REST gateway maps them:
# https://yandex.cloud/en/docs/api-design-guide/concepts/errors
GRPC_TO_HTTP = {3: 400, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400, 10: 409, 12: 501, 13: 500, 14: 503, 16: 401}
_HTTP_TO_GRPC = {400: 3, 401: 16, 403: 7, 404: 5, 409: 10, 429: 8, 500: 13, 503: 14}
_DEFAULT_MESSAGES = {
    400: "Request validation error",
    401: "The token is invalid",
    403: "Permission denied",
    404: "Not found",
    429: "Too many requests",
    500: "Internal error",
    503: "Service is unavailable, try again later",
}
_ZONE_PREFIX = {"ru-central1-a": "fhm", "ru-central1-b": "epd", "ru-central1-d": "fv4"}
_ID_CHARS = string.ascii_lowercase + string.digits

Reply = tuple[int, dict[str, str], bytes]


def new_id(prefix: str = "fhm") -> str:
    """A Yandex-looking resource id: 3-letter prefix + 17 lowercase letters/digits."""
    return prefix + "".join(secrets.choice(_ID_CHARS) for _ in range(20 - len(prefix)))


def rfc3339(epoch: float, nanos: bool = False) -> str:
    """Format epoch seconds as Yandex does: UTC, 'Z', optional nanosecond fraction."""
    dt = datetime.fromtimestamp(epoch, tz=timezone.utc)
    if nanos:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond:06d}123Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def json_reply(status: int, obj: Any, headers: dict[str, str] | None = None) -> Reply:
    """A JSON answer."""
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(obj).encode()


def text_reply(status: int, text: str, content_type: str = "text/plain; charset=utf-8") -> Reply:
    """A plain text answer."""
    return status, {"Content-Type": content_type}, text.encode()


def error_reply(code: int, message: str, status: int | None = None, headers: dict[str, str] | None = None) -> Reply:
    """The Yandex REST error body {code, message, details} with the matching HTTP status."""
    body = {
        "code": code,
        "message": message,
        "details": [{"@type": "type.googleapis.com/google.rpc.RequestInfo", "requestId": str(uuid.uuid4())}],
    }
    return json_reply(status or GRPC_TO_HTTP.get(code, 500), body, headers)


class FakeClock:
    """A settable clock for token expiry tests: call it for the time, advance() to move on."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        with self._lock:
            self.now += seconds


@dataclass(frozen=True)
class Call:
    """One request received by a fake."""

    method: str
    path: str
    query: dict[str, list[str]]
    time: float
    headers: dict[str, str] = field(repr=False)
    body: Any = field(default=None, repr=False)

    @property
    def bearer(self) -> str | None:
        """The Bearer token sent, if any."""
        value = self.headers.get("authorization", "")
        return value[7:] if value.startswith("Bearer ") else None


@dataclass
class _Fault:
    method: str
    path_substring: str
    status: int
    body: Any
    retry_after: str | None
    remaining: int


@dataclass
class _Delay:
    path_substring: str
    seconds: float
    remaining: int


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that timed out and hung up are expected in tests; stay quiet.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without this, delayed ACKs add ~40 ms each.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PATCH(self) -> None:  # noqa: N802
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, out_headers, payload = self.server.fake._serve(
            method, split.path, parse_qs(split.query, keep_blank_values=True), headers, raw
        )
        try:
            self.send_response(status)
            for name, value in out_headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class FakeServer:
    """Base of the fakes: a ThreadingHTTPServer on 127.0.0.1:0, call log, fault injection."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.calls: list[Call] = []
        self.answers: list[tuple[Call, int]] = []  # each request with the status it got
        self._faults: list[_Fault] = []
        self._delays: list[_Delay] = []
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> FakeServer:
        """Start serving in a daemon thread; returns self."""
        if self._httpd is None:
            self._stopping.clear()
            self._httpd = _Server(("127.0.0.1", 0), _Handler)
            self._httpd.fake = self
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True,
                name=f"{type(self).__name__}-server",
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port; delayed requests are released at once."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._httpd = None
            self._thread = None

    def __enter__(self):  # noqa: ANN204
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Root URL, e.g. http://127.0.0.1:41234 (no trailing slash)."""
        if self._httpd is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # -- fault injection --------------------------------------------------------------------

    def inject(
        self,
        method: str | None,
        path_substring: str,
        status: int,
        body: Any = None,
        retry_after: float | str | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next `times` matching requests with `status` (method None or '*' = any)."""
        with self._lock:
            self._faults.append(
                _Fault(
                    (method or "*").upper(), path_substring, status, body,
                    None if retry_after is None else str(retry_after), times,
                )
            )

    def inject_delay(self, path_substring: str, seconds: float, times: int = 1) -> None:
        """Hold the next `times` matching requests for `seconds` before handling them normally."""
        with self._lock:
            self._delays.append(_Delay(path_substring, seconds, times))

    def clear_faults(self) -> None:
        """Drop every pending injected fault and delay."""
        with self._lock:
            self._faults.clear()
            self._delays.clear()

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and fault.method in ("*", method) and fault.path_substring in path:
                    fault.remaining -= 1
                    return fault
        return None

    def _take_delay(self, path: str) -> float:
        with self._lock:
            for delay in self._delays:
                if delay.remaining > 0 and delay.path_substring in path:
                    delay.remaining -= 1
                    return delay.seconds
        return 0.0

    @staticmethod
    def _fault_reply(fault: _Fault) -> Reply:
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        if isinstance(fault.body, (dict, list)):
            return json_reply(fault.status, fault.body, headers)
        if isinstance(fault.body, (str, bytes)):
            payload = fault.body.encode() if isinstance(fault.body, str) else fault.body
            return fault.status, {"Content-Type": "text/html", **headers}, payload
        if fault.status in (502, 504):
            # Load balancers answer these with an HTML page, not the API's JSON.
            page = f"<html><body><h1>{fault.status} Bad Gateway</h1></body></html>"
            return fault.status, {"Content-Type": "text/html", **headers}, page.encode()
        code = _HTTP_TO_GRPC.get(fault.status, 2 if fault.status < 500 else 13)
        return error_reply(code, _DEFAULT_MESSAGES.get(fault.status, "Error"), fault.status, headers)

    # -- call log ---------------------------------------------------------------------------

    def count(self, method: str | None = None, suffix: str = "") -> int:
        """How many requests had this method (None = any) and a path ending with suffix."""
        return len(self.calls_matching(method, suffix))

    def calls_matching(self, method: str | None = None, suffix: str = "") -> list[Call]:
        """Requests with this method (None = any) and a path ending with suffix."""
        with self._lock:
            return [
                c for c in self.calls
                if (method is None or c.method == method.upper()) and c.path.endswith(suffix)
            ]

    def reset_calls(self) -> None:
        """Forget the call log."""
        with self._lock:
            self.calls.clear()
            self.answers.clear()

    def wait_answered(self, method: str | None = None, suffix: str = "", n: int = 1, timeout: float = 5.0) -> list[int]:
        """Wait until n matching requests have been answered; returns their statuses."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                statuses = [
                    status for call, status in self.answers
                    if (method is None or call.method == method.upper()) and call.path.endswith(suffix)
                ]
            if len(statuses) >= n or time.monotonic() >= deadline:
                return statuses
            time.sleep(0.01)

    # -- request handling -------------------------------------------------------------------

    def _serve(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], raw: bytes) -> Reply:
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw
        call = Call(method, path, query, time.monotonic(), headers, body)
        with self._lock:
            self.calls.append(call)
        delay = self._take_delay(path)
        if delay:
            self._stopping.wait(delay)
        fault = self._take_fault(method, path)
        if fault is not None:
            reply = self._fault_reply(fault)
        else:
            try:
                reply = self.handle(method, path, query, headers, body)
            except Exception as exc:  # a bug in the fake must show up as a 500, not a hang
                reply = error_reply(13, f"fake server error: {type(exc).__name__}: {exc}")
        with self._lock:
            self.answers.append((call, reply[0]))
        return reply

    def handle(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: Any) -> Reply:
        """Answer one request; subclasses implement the protocol."""
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# Compute + Operation API


@dataclass
class _Vm:
    id: str
    name: str
    folder_id: str
    status: str
    zone_id: str
    platform_id: str
    cores: int
    memory: int
    core_fraction: int
    gpus: int
    preemptible: bool
    created_at: str
    labels: dict[str, str]


@dataclass
class _Op:
    id: str
    description: str
    kind: str  # start | stop | restart | update
    instance_id: str
    created_at: str
    done_at: float
    final_status: str
    previous_status: str
    updates: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    done: bool = False
    modified_at: str = ""


_METADATA_TYPES = {
    "start": "StartInstanceMetadata",
    "stop": "StopInstanceMetadata",
    "restart": "RestartInstanceMetadata",
    "update": "UpdateInstanceMetadata",
}
_DESCRIPTIONS = {
    "start": "Start instance",
    "stop": "Stop instance",
    "restart": "Restart instance",
    "update": "Update instance",
}
_MASKABLE = {
    "resourcesSpec.cores": "cores",
    "resourcesSpec.memory": "memory",
    "resourcesSpec.coreFraction": "core_fraction",
    "resourcesSpec.gpus": "gpus",
    "name": "name",
    "labels": "labels",
}
_FILTER = re.compile(r'\s*name\s*=\s*"([^"\\]*)"\s*')
_PATH_LIST = re.compile(r"/compute/v1/instances")
_PATH_ONE = re.compile(r"/compute/v1/instances/([^/:]+)")
_PATH_ACTION = re.compile(r"/compute/v1/instances/([^/:]+):([a-zA-Z]+)")
_PATH_OP = re.compile(r"/operations/([^/]+)")


class FakeComputeAPI(FakeServer):
    """Compute REST v1 (instances) and the Operation API on one server, with Bearer auth."""

    def __init__(
        self,
        folder_id: str = "b1gfakefolder00000001",
        tokens: Iterable[str] = ("test-token",),
        transition_seconds: float = 0.1,
        require_auth: bool = True,
        default_page_size: int = 100,
    ) -> None:
        """folder_id: default folder of add_instance; tokens: accepted Bearer tokens."""
        super().__init__()
        self.folder_id = folder_id
        self.accepted_tokens: set[str] = set(tokens)
        self.transition_seconds = transition_seconds
        self.require_auth = require_auth
        self.default_page_size = default_page_size
        self._vms: dict[str, _Vm] = {}
        self._ops: dict[str, _Op] = {}
        self._idempotency: dict[str, str] = {}
        self._fail_next: list[tuple[int, str]] = []

    @property
    def operation_url(self) -> str:
        """Root of the Operation API (same server)."""
        return self.url

    # -- test controls ----------------------------------------------------------------------

    def accept_token(self, token: str) -> None:
        """Accept this Bearer token from now on."""
        with self._lock:
            self.accepted_tokens.add(token)

    def revoke_token(self, token: str) -> None:
        """Reject this Bearer token from now on (401)."""
        with self._lock:
            self.accepted_tokens.discard(token)

    def add_instance(
        self,
        name: str,
        status: str = "STOPPED",
        cores: int = 2,
        memory_gb: float = 4,
        core_fraction: int = 100,
        platform_id: str = "standard-v3",
        preemptible: bool = False,
        *,
        folder_id: str | None = None,
        zone_id: str = "ru-central1-a",
        labels: dict[str, str] | None = None,
        gpus: int = 0,
    ) -> str:
        """Create an instance and return its id."""
        vm = _Vm(
            id=new_id(_ZONE_PREFIX.get(zone_id, "fhm")),
            name=name,
            folder_id=folder_id or self.folder_id,
            status=status,
            zone_id=zone_id,
            platform_id=platform_id,
            cores=cores,
            memory=int(memory_gb * GIB),
            core_fraction=core_fraction,
            gpus=gpus,
            preemptible=preemptible,
            created_at=rfc3339(time.time()),
            labels=dict(labels or {}),
        )
        with self._lock:
            self._vms[vm.id] = vm
        return vm.id

    def instance(self, instance_id: str) -> dict[str, Any]:
        """The instance as the API would return it now."""
        with self._lock:
            self._advance()
            return self._vm_json(self._vms[instance_id])

    def status(self, instance_id: str) -> str:
        """Current status of an instance."""
        with self._lock:
            self._advance()
            return self._vms[instance_id].status

    def set_status(self, instance_id: str, status: str) -> None:
        """Force an instance into a status (e.g. CRASHED), cancelling nothing."""
        with self._lock:
            self._vms[instance_id].status = status

    def fail_next_operation(self, code: int = 13, message: str = "Internal error", times: int = 1) -> None:
        """The next `times` operations end done with this error instead of a response."""
        with self._lock:
            self._fail_next.extend([(code, message)] * times)

    def operation_ids(self) -> list[str]:
        """Ids of every operation created so far, oldest first."""
        with self._lock:
            return list(self._ops)

    def operation(self, op_id: str) -> dict[str, Any]:
        """An operation as the API would return it now."""
        with self._lock:
            self._advance()
            return self._op_json(self._ops[op_id])

    # -- state machine ----------------------------------------------------------------------

    def _advance(self) -> None:
        now = time.monotonic()
        for op in self._ops.values():
            if op.done or now < op.done_at:
                continue
            op.done = True
            op.modified_at = rfc3339(time.time(), nanos=True)
            vm = self._vms.get(op.instance_id)
            if vm is None:
                continue
            if op.error is not None:
                vm.status = op.previous_status
                continue
            for attr, value in op.updates.items():
                setattr(vm, attr, value)
            vm.status = op.final_status

    def _new_op(self, kind: str, vm: _Vm, transitional: str, final: str, updates: dict[str, Any] | None = None) -> _Op:
        op = _Op(
            id=new_id(vm.id[:3]),
            description=_DESCRIPTIONS[kind],
            kind=kind,
            instance_id=vm.id,
            created_at=rfc3339(time.time(), nanos=True),
            done_at=time.monotonic() + self.transition_seconds,
            final_status=final,
            previous_status=vm.status,
            updates=updates or {},
        )
        if self._fail_next:
            code, message = self._fail_next.pop(0)
            op.error = {"code": code, "message": message, "details": []}
        vm.status = transitional
        self._ops[op.id] = op
        return op

    # -- JSON shapes (proto3 JSON: int64 as strings, default values omitted) ------------------

    def _vm_json(self, vm: _Vm) -> dict[str, Any]:
        resources: dict[str, Any] = {
            "memory": str(vm.memory),
            "cores": str(vm.cores),
            "coreFraction": str(vm.core_fraction),
        }
        if vm.gpus:
            resources["gpus"] = str(vm.gpus)
        data: dict[str, Any] = {
            "id": vm.id,
            "folderId": vm.folder_id,
            "createdAt": vm.created_at,
            "name": vm.name,
            "zoneId": vm.zone_id,
            "platformId": vm.platform_id,
            "resources": resources,
            "status": vm.status,
            "metadataOptions": {"gceHttpEndpoint": "ENABLED", "awsV1HttpEndpoint": "DISABLED"},
            "bootDisk": {"mode": "READ_WRITE", "deviceName": "boot", "autoDelete": True, "diskId": new_id("fhm")},
            "networkInterfaces": [
                {
                    "index": "0",
                    "macAddress": "d0:0d:1a:2b:3c:4d",
                    "subnetId": "e9bfakesubnet0000001",
                    "primaryV4Address": {"address": "10.128.0.12"},
                }
            ],
            "gpuSettings": {},
            "fqdn": f"{vm.name}.ru-central1.internal",
            "schedulingPolicy": {"preemptible": True} if vm.preemptible else {},
            "networkSettings": {"type": "STANDARD"},
            "placementPolicy": {},
        }
        if vm.labels:
            data["labels"] = dict(vm.labels)
        return data

    def _op_json(self, op: _Op) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": op.id,
            "description": op.description,
            "createdAt": op.created_at,
            "createdBy": "ajefakeserviceacc0001",
            "modifiedAt": op.modified_at or op.created_at,
            "done": op.done,
            "metadata": {
                "@type": f"type.googleapis.com/yandex.cloud.compute.v1.{_METADATA_TYPES[op.kind]}",
                "instanceId": op.instance_id,
            },
        }
        if op.done:
            if op.error is not None:
                data["error"] = op.error
            elif op.kind == "stop":
                data["response"] = {"@type": "type.googleapis.com/google.protobuf.Empty"}
            else:
                vm = self._vms.get(op.instance_id)
                data["response"] = {
                    "@type": "type.googleapis.com/yandex.cloud.compute.v1.Instance",
                    **(self._vm_json(vm) if vm else {}),
                }
        return data

    # -- routing ----------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: Any) -> Reply:
        """Route Compute and Operation API requests."""
        if not (path.startswith("/compute/v1/") or path.startswith("/operations/")):
            return text_reply(404, "404 page not found")
        if self.require_auth:
            auth = headers.get("authorization", "")
            if not auth.startswith("Bearer ") or not auth[7:]:
                return error_reply(16, "Authorization header is missing or malformed")
            with self._lock:
                if auth[7:] not in self.accepted_tokens:
                    return error_reply(16, "The token is invalid")
        with self._lock:
            self._advance()
            if (m := _PATH_OP.fullmatch(path)) and method == "GET":
                op = self._ops.get(m.group(1))
                if op is None:
                    return error_reply(5, f"Operation {m.group(1)} not found")
                return json_reply(200, self._op_json(op))
            if _PATH_LIST.fullmatch(path):
                if method != "GET":
                    return error_reply(12, "Method Not Allowed", 405)
                return self._list(query)
            if m := _PATH_ACTION.fullmatch(path):
                if method != "POST":
                    return error_reply(12, "Method Not Allowed", 405)
                return self._idempotent(headers, method, path, lambda: self._action(m.group(1), m.group(2)))
            if m := _PATH_ONE.fullmatch(path):
                if method == "GET":
                    vm = self._vms.get(m.group(1))
                    if vm is None:
                        return error_reply(5, f"Instance {m.group(1)} not found")
                    return json_reply(200, self._vm_json(vm))
                if method == "PATCH":
                    return self._idempotent(headers, method, path, lambda: self._update(m.group(1), body))
                return error_reply(12, "Method Not Allowed", 405)
        return text_reply(404, "404 page not found")

    def _idempotent(self, headers: dict[str, str], method: str, path: str, run: Callable[[], Reply]) -> Reply:
        # Same Idempotency-Key → same Operation, the change is not repeated.
        key = headers.get("idempotency-key")
        if key:
            op_id = self._idempotency.get(f"{method} {path} {key}")
            if op_id is not None:
                return json_reply(200, self._op_json(self._ops[op_id]))
        status, out_headers, payload = run()
        if key and status == 200:
            self._idempotency[f"{method} {path} {key}"] = json.loads(payload)["id"]
        return status, out_headers, payload

    def _list(self, query: dict[str, list[str]]) -> Reply:
        folder = (query.get("folderId") or [""])[0]
        if not folder:
            return error_reply(3, "Request validation error: folder_id: Field required")
        try:
            page_size = int((query.get("pageSize") or [str(self.default_page_size)])[0] or self.default_page_size)
        except ValueError:
            return error_reply(3, "Request validation error: page_size: invalid value")
        if not 0 <= page_size <= 1000:
            return error_reply(3, "Request validation error: page_size: Value must be in range [0, 1000]")
        page_size = page_size or self.default_page_size
        vms = [vm for vm in self._vms.values() if vm.folder_id == folder]
        flt = (query.get("filter") or [""])[0]
        if flt:
            match = _FILTER.fullmatch(flt)
            if match is None:
                return error_reply(3, f"Request validation error: filter: invalid filter expression: {flt}")
            vms = [vm for vm in vms if vm.name == match.group(1)]
        token = (query.get("pageToken") or [""])[0]
        offset = 0
        if token:
            try:
                decoded = base64.urlsafe_b64decode(token.encode()).decode()
                if not decoded.startswith("offset:"):
                    raise ValueError(decoded)
                offset = int(decoded[7:])
            except (ValueError, UnicodeDecodeError):
                return error_reply(3, "Request validation error: page_token: invalid page token")
        page = vms[offset : offset + page_size]
        data: dict[str, Any] = {}
        if page:
            data["instances"] = [self._vm_json(vm) for vm in page]
        if offset + page_size < len(vms):
            data["nextPageToken"] = base64.urlsafe_b64encode(f"offset:{offset + page_size}".encode()).decode()
        return json_reply(200, data)

    def _action(self, instance_id: str, action: str) -> Reply:
        vm = self._vms.get(instance_id)
        if vm is None:
            return error_reply(5, f"Instance {instance_id} not found")
        rules = {
            "start": ("STOPPED", "STARTING", "RUNNING"),
            "stop": ("RUNNING", "STOPPING", "STOPPED"),
            "restart": ("RUNNING", "RESTARTING", "RUNNING"),
        }
        if action not in rules:
            return text_reply(404, "404 page not found")
        needed, transitional, final = rules[action]
        if vm.status != needed:
            return error_reply(
                9, f"Instance {instance_id} is in {vm.status} state; {action} is allowed only in {needed} state"
            )
        op = self._new_op(action, vm, transitional, final)
        return json_reply(200, self._op_json(op))

    def _update(self, instance_id: str, body: Any) -> Reply:
        vm = self._vms.get(instance_id)
        if vm is None:
            return error_reply(5, f"Instance {instance_id} not found")
        if not isinstance(body, dict):
            return error_reply(3, "Request validation error: body must be a JSON object")
        mask = body.get("updateMask")
        if not isinstance(mask, str) or not mask.strip():
            # The real API resets unmasked fields; the fake refuses so such a bug is visible.
            return error_reply(3, "Request validation error: update_mask: Field required")
        updates: dict[str, Any] = {}
        spec = body.get("resourcesSpec") if isinstance(body.get("resourcesSpec"), dict) else {}
        for entry in (p.strip() for p in mask.split(",")):
            if entry not in _MASKABLE:
                return error_reply(3, f"Request validation error: update_mask: unknown field {entry!r}")
            attr = _MASKABLE[entry]
            if entry.startswith("resourcesSpec."):
                raw = spec.get(entry.split(".", 1)[1])
                try:
                    value = int(raw)
                except (TypeError, ValueError):
                    return error_reply(3, f"Request validation error: {entry}: invalid value")
                if attr == "core_fraction" and value not in (5, 20, 50, 100):
                    return error_reply(3, f"Request validation error: {entry}: must be one of 5, 20, 50, 100")
                if attr in ("cores", "memory") and value <= 0:
                    return error_reply(3, f"Request validation error: {entry}: must be positive")
                updates[attr] = value
            else:
                updates[attr] = body.get(entry)
        if any(k in updates for k in ("cores", "memory", "core_fraction", "gpus")) and vm.status != "STOPPED":
            return error_reply(
                9, f"Instance {instance_id} must be stopped to change its resources; status is {vm.status}"
            )
        op = self._new_op("update", vm, "UPDATING", vm.status, updates)
        return json_reply(200, self._op_json(op))


# --------------------------------------------------------------------------------------------
# IAM


def generate_sa_key(
    key_id: str | None = None,
    service_account_id: str | None = None,
) -> tuple[dict[str, Any], rsa.RSAPublicKey]:
    """A new RSA-2048 authorized key as `yc iam key create` writes it, and its public key."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_id = key_id or new_id("aje")
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    key = {
        "id": key_id,
        "service_account_id": service_account_id or new_id("aje"),
        "created_at": rfc3339(time.time(), nanos=True),
        "key_algorithm": "RSA_2048",
        "public_key": public_pem,
        # Real key files carry this line before the PEM block.
        "private_key": f"PLEASE DO NOT REMOVE THIS LINE! Yandex.Cloud SA Key ID <{key_id}>\n{pem}",
    }
    return key, private.public_key()


class FakeIAM(FakeServer):
    """IAM `POST /iam/v1/tokens`: checks the PS256 JWT like Yandex IAM and issues tokens."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        token_lifetime: float = 12 * 3600,
        compute: FakeComputeAPI | None = None,
    ) -> None:
        """clock: the time used for JWT checks and expiresAt; compute: gets issued tokens."""
        super().__init__()
        self.clock = clock
        self.token_lifetime = token_lifetime
        self.compute = compute
        self._keys: dict[str, tuple[str, Any]] = {}
        self.issued: list[str] = []
        self.rejections: list[str] = []
        self.last_header: dict[str, Any] | None = None
        self.last_claims: dict[str, Any] | None = None

    @property
    def token_requests(self) -> int:
        """How many token requests arrived (accepted or not)."""
        return self.count("POST", "/iam/v1/tokens")

    def register_key(self, key_id: str, service_account_id: str, public_key: Any) -> None:
        """Accept JWTs with this kid, issued by this service account, signed by this key."""
        if isinstance(public_key, str):
            public_key = serialization.load_pem_public_key(public_key.encode())
        with self._lock:
            self._keys[key_id] = (service_account_id, public_key)

    def new_key(self, key_id: str | None = None, service_account_id: str | None = None) -> dict[str, Any]:
        """Generate and register an authorized key; returns the key file contents."""
        key, public = generate_sa_key(key_id, service_account_id)
        self.register_key(key["id"], key["service_account_id"], public)
        return key

    def _reject(self, code: int, message: str) -> Reply:
        with self._lock:
            self.rejections.append(message)
        return error_reply(code, message)

    def handle(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: Any) -> Reply:
        """Serve the token exchange."""
        if path != "/iam/v1/tokens":
            return text_reply(404, "404 page not found")
        if method != "POST":
            return error_reply(12, "Method Not Allowed", 405)
        if not isinstance(body, dict) or not isinstance(body.get("jwt"), str):
            return self._reject(3, "Request validation error: one of jwt or yandex_passport_oauth_token is required")
        token = body["jwt"]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return self._reject(3, "Invalid JWT: cannot parse")
        self.last_header = header
        if header.get("alg") != "PS256":
            return self._reject(3, f"Invalid JWT: unsupported signing algorithm {header.get('alg')!r}, use PS256")
        with self._lock:
            known = self._keys.get(str(header.get("kid")))
        if known is None:
            return self._reject(16, "Invalid JWT: unknown key id")
        service_account_id, public_key = known
        try:
            claims = jwt.decode(
                token,
                public_key,
                algorithms=["PS256"],
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "verify_aud": False,
                    "require": ["iss", "aud", "iat", "exp"],
                },
            )
        except jwt.InvalidSignatureError:
            return self._reject(16, "Invalid JWT: signature verification failed")
        except jwt.PyJWTError as exc:
            return self._reject(3, f"Invalid JWT: {exc}")
        self.last_claims = claims
        now = self.clock()
        aud = claims.get("aud")
        if aud != IAM_AUDIENCE and not (isinstance(aud, list) and IAM_AUDIENCE in aud):
            return self._reject(3, f"Invalid JWT: audience must be {IAM_AUDIENCE}")
        if claims.get("iss") != service_account_id:
            return self._reject(16, "Invalid JWT: issuer does not own the key")
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, (int, float)) or not isinstance(exp, (int, float)):
            return self._reject(3, "Invalid JWT: iat and exp must be numbers")
        if exp - iat > 3600:
            return self._reject(3, "Invalid JWT: lifetime (exp - iat) must not exceed 1 hour")
        if iat > now + 300:
            return self._reject(3, "Invalid JWT: issued in the future")
        if exp <= now:
            return self._reject(16, "Invalid JWT: token has expired")
        iam_token = "t1.9euelZq" + secrets.token_urlsafe(48)
        with self._lock:
            self.issued.append(iam_token)
        if self.compute is not None:
            self.compute.accept_token(iam_token)
        return json_reply(200, {"iamToken": iam_token, "expiresAt": rfc3339(now + self.token_lifetime, nanos=True)})


# --------------------------------------------------------------------------------------------
# VM metadata service


class FakeMetadata(FakeServer):
    """The VM metadata service: service-account token and folder id, GCE-style."""

    TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"
    FOLDER_PATH = "/computeMetadata/v1/yandex/folder-id"

    def __init__(
        self,
        folder_id: str = "b1gfakefolder00000001",
        expires_in: int = 43199,
        compute: FakeComputeAPI | None = None,
    ) -> None:
        """expires_in: seconds reported for each token; compute: gets issued tokens."""
        super().__init__()
        self.folder_id = folder_id
        self.expires_in = expires_in
        self.compute = compute
        self.issued: list[str] = []

    @property
    def token_requests(self) -> int:
        """How many token requests arrived (with or without the header)."""
        return self.count("GET", self.TOKEN_PATH)

    def handle(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: Any) -> Reply:
        """Serve the token and folder-id endpoints."""
        if method != "GET":
            return text_reply(405, "Method not allowed")
        if path not in (self.TOKEN_PATH, self.FOLDER_PATH):
            return text_reply(404, "Not found")
        if headers.get("metadata-flavor") != "Google":
            return text_reply(403, "Missing required header: Metadata-Flavor: Google")
        if path == self.FOLDER_PATH:
            return text_reply(200, self.folder_id, "application/text")
        token = "t1.9euelZqmeta" + secrets.token_urlsafe(40)
        with self._lock:
            self.issued.append(token)
        if self.compute is not None:
            self.compute.accept_token(token)
        return json_reply(200, {"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"})
