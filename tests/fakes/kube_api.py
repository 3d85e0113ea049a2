"""A fake Kubernetes API server on 127.0.0.1 that the official kubernetes client can talk to in tests.

It speaks the small part of the core/v1 REST API that gitlab-hook uses: list and get pods, read a
pod's log (streamed with chunked transfer encoding), list events, get a namespace. Errors come back
as real `Status` bodies. What the real API server does, and this fake copies:

- listing pods or events in a namespace that does not exist answers 200 with no items (only
  `GET /api/v1/namespaces/{ns}` answers 404 `namespaces "x" not found`);
- the log endpoint follows the kubelet's rules: a waiting container with an earlier run serves
  that run's log, one that never ran answers 400 "... is waiting to start: REASON",
  `previous=true` without an earlier run answers 400 "previous terminated container ... not found";
- `tailLines` is applied first, then `limitBytes` cuts from the start of what remains.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import parse_qsl, unquote, urlsplit

DEFAULT_TOKEN = "fake-kube-token-0123456789"
DEFAULT_USER = "system:serviceaccount:ci:gitlab-hook"
CHUNK = 64 * 1024

_POD_LIST = re.compile(r"^/api/v1/namespaces/([^/]+)/pods$")
_POD = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)$")
_POD_LOG = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")
_EVENTS = re.compile(r"^/api/v1/namespaces/([^/]+)/events$")
_NAMESPACE = re.compile(r"^/api/v1/namespaces/([^/]+)$")


def waiting(reason: str = "ContainerCreating", message: str = "") -> dict[str, Any]:
    """A container state: waiting for REASON."""
    return {"waiting": {"reason": reason, **({"message": message} if message else {})}}


def running(started: datetime | None = None) -> dict[str, Any]:
    """A container state: running."""
    return {"running": {"startedAt": _ts(started or datetime.now(timezone.utc))}}


def terminated(reason: str = "Error", exit_code: int = 1, message: str = "",
               container_id: str | None = None) -> dict[str, Any]:
    """A container state: terminated with REASON and EXIT_CODE (container_id "" = never ran)."""
    cid = f"containerd://{uuid.uuid4().hex}" if container_id is None else container_id
    state: dict[str, Any] = {"reason": reason, "exitCode": exit_code, "containerID": cid}
    if message:
        state["message"] = message
    return {"terminated": state}


def _ts(at: datetime) -> str:
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_body(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """A `Status` object as the API server sends with an error."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": message, "reason": reason, "code": code}
    if details:
        body["details"] = details
    return body


@dataclass
class Call:
    """One request the fake answered."""

    method: str
    path: str
    query: dict[str, str]
    status: int = 0
    bytes_sent: int = 0
    aborted: bool = False  # the client hung up before the body was complete


@dataclass
class _Log:
    text: bytes | None = None
    generator: Callable[[], Iterable[str | bytes]] | None = None
    size: int | None = None

    def lines(self) -> Iterator[bytes]:
        """The log's lines (with their newlines), generated lazily when it was added with a generator."""
        if self.text is not None:
            yield from self.text.splitlines(keepends=True)
            return
        assert self.generator is not None
        total = 0
        for line in self.generator():
            raw = line.encode() if isinstance(line, str) else line
            if not raw.endswith(b"\n"):
                raw += b"\n"
            if self.size is not None and total + len(raw) >= self.size:
                yield raw[: self.size - total]
                return
            total += len(raw)
            yield raw


    def tail(self, n: int) -> Iterator[bytes]:
        """The last N lines; a generated log is generated twice (count, then skip) rather than held."""
        if self.generator is None:
            return iter(deque(self.lines(), maxlen=n))
        total = sum(1 for _ in self.lines())
        return itertools.islice(self.lines(), max(total - n, 0), None)


@dataclass
class _Injection:
    pattern: re.Pattern[str]
    status: int | None
    delay: float
    times: int


@dataclass
class _Pod:
    namespace: str
    name: str
    created: datetime
    labels: dict[str, str]
    annotations: dict[str, str]
    containers: list[dict[str, Any]]
    phase: str | None
    node: str | None
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))

    def statuses(self) -> list[dict[str, Any]]:
        return [c for c in self.containers if not c.get("init")]

    def init_statuses(self) -> list[dict[str, Any]]:
        return [c for c in self.containers if c.get("init")]

    def to_json(self) -> dict[str, Any]:
        def spec(c: dict[str, Any]) -> dict[str, Any]:
            return {"name": c["name"], "image": c.get("image", f"registry.example.com/app/{c['name']}:1.0")}

        def status(c: dict[str, Any]) -> dict[str, Any]:
            state = c.get("state") or waiting()
            out: dict[str, Any] = {
                "name": c["name"], "image": spec(c)["image"], "imageID": "",
                "ready": "running" in state, "started": "running" in state,
                "restartCount": int(c.get("restartCount", 0)), "state": state,
                "lastState": c.get("lastState") or {},
            }
            if "running" in state:
                cid = uuid.uuid5(uuid.NAMESPACE_OID, self.uid + c["name"]).hex
                out["containerID"] = c.get("containerID", f"containerd://{cid}")
            elif "terminated" in state and state["terminated"].get("containerID"):
                out["containerID"] = state["terminated"]["containerID"]
            return out

        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace, "uid": self.uid,
                                "resourceVersion": "1", "creationTimestamp": _ts(self.created)}
        if self.labels:
            meta["labels"] = dict(self.labels)
        if self.annotations:
            meta["annotations"] = dict(self.annotations)
        pod_spec: dict[str, Any] = {"containers": [spec(c) for c in self.statuses()], "restartPolicy": "Never"}
        if self.init_statuses():
            pod_spec["initContainers"] = [spec(c) for c in self.init_statuses()]
        if self.node:
            pod_spec["nodeName"] = self.node
        pod_status: dict[str, Any] = {"phase": self.phase or self._phase(),
                                      "containerStatuses": [status(c) for c in self.statuses()]}
        if self.init_statuses():
            pod_status["initContainerStatuses"] = [status(c) for c in self.init_statuses()]
        return {"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": pod_spec, "status": pod_status}

    def _phase(self) -> str:
        states = [c.get("state") or waiting() for c in self.statuses()]
        if any("running" in s for s in states):
            return "Running"
        if states and all("terminated" in s for s in states):
            return "Succeeded" if all(s["terminated"].get("exitCode") == 0 for s in states) else "Failed"
        return "Pending"


class _Reply(Exception):
    """An error answer, raised inside a handler."""

    def __init__(self, code: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("message"))
        self.code = code
        self.body = body


class FakeKubeAPI:
    """The fake API server; use it as a context manager, point the client at `.url` with `.token`."""

    def __init__(self, *, token: str = DEFAULT_TOKEN, namespaces: Iterable[str] = ("work",),
                 user: str = DEFAULT_USER) -> None:
        self.token = token
        self.user = user
        self.namespaces: set[str] = set(namespaces)
        self.ignore_limit_bytes = False  # True: send the whole log, as a server that ignores limitBytes would
        self.calls: list[Call] = []
        self._pods: dict[tuple[str, str], _Pod] = {}
        self._logs: dict[tuple[str, str, str, bool], _Log] = {}
        self._events: list[dict[str, Any]] = []
        self._denied: set[tuple[str, str, str]] = set()
        self._injections: list[_Injection] = []
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> "FakeKubeAPI":
        """Listen on a free port of 127.0.0.1 in a daemon thread."""
        fake = self

        class Handler(_Handler):
            api = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-kube-api",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening; requests still sleeping in an injected delay end at once."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeKubeAPI":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Root URL, e.g. http://127.0.0.1:41234 (the client adds /api/v1/...)."""
        assert self._server is not None, "start() the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # --- state -----------------------------------------------------------------------------

    def add_namespace(self, namespace: str) -> None:
        """Make NAMESPACE exist."""
        self.namespaces.add(namespace)

    def add_pod(self, namespace: str, name: str, created: datetime, *, labels: dict[str, str] | None = None,
                annotations: dict[str, str] | None = None, containers: list[dict[str, Any]] | None = None,
                phase: str | None = None, node: str | None = "node-1") -> None:
        """Add a pod; containers are dicts {name, state, restartCount, lastState, init} (states: waiting()...)."""
        if created.tzinfo is None:
            created = created.replace(tzinfo=timezone.utc)
        self.namespaces.add(namespace)
        conts = [dict(c) for c in (containers or [{"name": "main", "state": running()}])]
        self._pods[(namespace, name)] = _Pod(namespace, name, created, dict(labels or {}), dict(annotations or {}),
                                             conts, phase, node)

    def add_log(self, namespace: str, pod: str, container: str, text: str | bytes | None = None, *,
                previous: bool = False, generator: Callable[[], Iterable[str | bytes]] | None = None,
                size: int | None = None) -> None:
        """Give a container (or its previous run) a log: fixed text, or lines from generator() up to size bytes."""
        if (text is None) == (generator is None):
            raise ValueError("pass either text or generator")
        raw = text.encode() if isinstance(text, str) else text
        self._logs[(namespace, pod, container, previous)] = _Log(raw, generator, size)

    def add_event(self, namespace: str, pod: str, reason: str, message: str, *, type: str = "Warning",
                  count: int = 1, at: datetime | None = None) -> None:
        """Record an event about POD."""
        at = at or datetime.now(timezone.utc)
        self._events.append({
            "kind": "Event", "apiVersion": "v1",
            "metadata": {"name": f"{pod}.{uuid.uuid4().hex[:16]}", "namespace": namespace,
                         "creationTimestamp": _ts(at), "resourceVersion": "1"},
            "involvedObject": {"kind": "Pod", "namespace": namespace, "name": pod, "apiVersion": "v1"},
            "reason": reason, "message": message, "source": {"component": "kubelet", "host": "node-1"},
            "firstTimestamp": _ts(at - timedelta(seconds=30 * (count - 1))), "lastTimestamp": _ts(at),
            "count": count, "type": type, "eventTime": None, "reportingComponent": "kubelet",
            "reportingInstance": "node-1",
        })

    def deny(self, verb: str, resource: str, namespace: str = "*") -> None:
        """Take away an RBAC permission, e.g. deny("get", "pods/log", "work")."""
        self._denied.add((verb, resource, namespace))

    def allow(self, verb: str, resource: str, namespace: str = "*") -> None:
        """Give back a permission taken by deny()."""
        self._denied.discard((verb, resource, namespace))

    def fail(self, path_regex: str = "", *, status: int = 500, times: int = 1) -> None:
        """Answer the next TIMES requests whose path matches with an error STATUS."""
        self._injections.append(_Injection(re.compile(path_regex), status, 0.0, times))

    def delay(self, path_regex: str = "", *, seconds: float, times: int = 1) -> None:
        """Sleep SECONDS before answering the next TIMES matching requests (to make clients time out)."""
        self._injections.append(_Injection(re.compile(path_regex), None, seconds, times))

    # --- call log --------------------------------------------------------------------------

    def count(self, path_regex: str = "") -> int:
        """How many requests had a path matching PATH_REGEX."""
        pattern = re.compile(path_regex)
        with self._lock:
            return sum(1 for c in self.calls if pattern.search(c.path))

    @property
    def bytes_sent(self) -> int:
        """Body bytes sent over all requests."""
        with self._lock:
            return sum(c.bytes_sent for c in self.calls)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no request is being answered (e.g. a log the client stopped reading)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    # --- request handling (called from the handler thread) -------------------------------

    def _take_injection(self, path: str) -> _Injection | None:
        with self._lock:
            for inj in self._injections:
                if inj.times > 0 and inj.pattern.search(path):
                    inj.times -= 1
                    return inj
        return None

    def _check(self, verb: str, resource: str, namespace: str, name: str | None = None) -> None:
        for denied in ((verb, resource, namespace), (verb, resource, "*")):
            if denied in self._denied:
                kind = resource.split("/")[0]
                subject = f'{kind} "{name}"' if name else kind
                msg = (f'{subject} is forbidden: User "{self.user}" cannot {verb} resource "{resource}" '
                       f'in API group "" in the namespace "{namespace}"')
                details: dict[str, Any] = {"kind": kind}
                if name:
                    details["name"] = name
                raise _Reply(403, status_body(403, "Forbidden", msg, details))

    def _pod(self, namespace: str, name: str) -> _Pod:
        pod = self._pods.get((namespace, name))
        if pod is None:
            raise _Reply(404, status_body(404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"}))
        return pod

    def _list(self, kind: str, items: list[dict[str, Any]], query: dict[str, str]) -> dict[str, Any]:
        start = int(base64.b64decode(query["continue"]).decode()) if query.get("continue") else 0
        limit = int(query.get("limit") or 0)
        page = items[start:start + limit] if limit else items[start:]
        meta: dict[str, Any] = {"resourceVersion": "1"}
        if limit and start + limit < len(items):
            meta["continue"] = base64.b64encode(str(start + limit).encode()).decode()
            meta["remainingItemCount"] = len(items) - start - limit
        return {"kind": kind, "apiVersion": "v1", "metadata": meta, "items": page}

    def list_pods(self, namespace: str, query: dict[str, str]) -> dict[str, Any]:
        self._check("list", "pods", namespace)
        pods = [p.to_json() for (ns, _), p in sorted(self._pods.items()) if ns == namespace]
        pods = [p for p in pods if _labels_match(p["metadata"].get("labels", {}), query.get("labelSelector", ""))]
        pods = [p for p in pods if _fields_match(p, query.get("fieldSelector", ""),
                                                 {"metadata.name": ("metadata", "name"),
                                                  "metadata.namespace": ("metadata", "namespace"),
                                                  "status.phase": ("status", "phase"),
                                                  "spec.nodeName": ("spec", "nodeName")})]
        return self._list("PodList", pods, query)

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        self._check("get", "pods", namespace, name)
        return self._pod(namespace, name).to_json()

    def get_namespace(self, namespace: str) -> dict[str, Any]:
        self._check("get", "namespaces", namespace, namespace)
        if namespace not in self.namespaces:
            raise _Reply(404, status_body(404, "NotFound", f'namespaces "{namespace}" not found',
                                          {"name": namespace, "kind": "namespaces"}))
        return {"kind": "Namespace", "apiVersion": "v1",
                "metadata": {"name": namespace, "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, namespace)),
                             "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}

    def list_events(self, namespace: str, query: dict[str, str]) -> dict[str, Any]:
        self._check("list", "events", namespace)
        events = [e for e in self._events if e["metadata"]["namespace"] == namespace]
        events = [e for e in events if _fields_match(e, query.get("fieldSelector", ""),
                                                     {"involvedObject.name": ("involvedObject", "name"),
                                                      "involvedObject.kind": ("involvedObject", "kind"),
                                                      "involvedObject.namespace": ("involvedObject", "namespace"),
                                                      "reason": ("reason",), "type": ("type",)})]
        return self._list("EventList", events, query)

    def log_lines(self, namespace: str, name: str, query: dict[str, str]) -> Iterator[bytes]:
        """Check the request like the kubelet does; return the lines to send."""
        self._check("get", "pods/log", namespace, name)
        pod = self._pod(namespace, name)
        everything = pod.statuses() + pod.init_statuses()
        container = query.get("container")
        if not container:
            if len(pod.statuses()) != 1:
                names = " ".join(c["name"] for c in pod.statuses())
                raise _Reply(400, status_body(
                    400, "BadRequest", f"a container name must be specified for pod {name}, choose one of: [{names}]"))
            container = pod.statuses()[0]["name"]
        spec = next((c for c in everything if c["name"] == container), None)
        if spec is None:
            raise _Reply(400, status_body(400, "BadRequest", f"container {container} is not valid for pod {name}"))
        previous = query.get("previous") == "true"
        which = _kubelet_log_choice(spec, previous, container, name)
        log = self._logs.get((namespace, name, container, which == "previous"))
        lines: Iterator[bytes] = log.lines() if log else iter(())
        if log and query.get("tailLines"):
            lines = log.tail(max(int(query["tailLines"]), 0))
        if query.get("timestamps") == "true":
            base = pod.created
            lines = (f"{(base + timedelta(milliseconds=i)).strftime('%Y-%m-%dT%H:%M:%S.%f')}000Z ".encode() + line
                     for i, line in enumerate(lines))
        if query.get("limitBytes") and not self.ignore_limit_bytes:
            lines = _cap(lines, int(query["limitBytes"]))
        return lines


def _kubelet_log_choice(c: dict[str, Any], previous: bool, container: str, pod: str) -> str:
    """Which run of the container the kubelet would serve: "current" or "previous", or a 400."""
    state = c.get("state") or waiting()
    last = (c.get("lastState") or {}).get("terminated")

    def bad(msg: str) -> _Reply:
        return _Reply(400, status_body(400, "BadRequest", msg))

    if previous:
        if not last or last.get("containerID") == "":
            raise bad(f'previous terminated container "{container}" in pod "{pod}" not found')
        return "previous"
    if "running" in state:
        return "current"
    if "terminated" in state:
        if state["terminated"].get("containerID") != "":
            return "current"
        if last and last.get("containerID") != "":
            return "previous"
        raise bad(f'container "{container}" in pod "{pod}" is terminated')
    if last:
        return "previous"
    reason = state.get("waiting", {}).get("reason", "ContainerCreating")
    if reason == "ErrImagePull":
        reason = "image can't be pulled"
    elif reason == "ImagePullBackOff":
        reason = "trying and failing to pull image"
    raise bad(f'container "{container}" in pod "{pod}" is waiting to start: {reason}')


def _cap(lines: Iterable[bytes], limit: int) -> Iterator[bytes]:
    left = limit
    for line in lines:
        if left <= 0:
            return
        yield line[:left]
        left -= len(line)


def _labels_match(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _fields_match(obj: dict[str, Any], selector: str, known: dict[str, tuple[str, ...]]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        negate = "!=" in term
        if "=" not in term:
            msg = f"invalid selector: '{selector}'; can't understand '{term}'"
            raise _Reply(400, status_body(400, "BadRequest", msg))
        key, value = re.split(r"!=|==|=", term, maxsplit=1)
        if key not in known:
            raise _Reply(400, status_body(400, "BadRequest", f'field label not supported: {key}'))
        actual: Any = obj
        for part in known[key]:
            actual = (actual or {}).get(part)
        if (str(actual or "") == value) == negate:
            return False
    return True


class _Handler(BaseHTTPRequestHandler):
    api: FakeKubeAPI
    protocol_version = "HTTP/1.1"
    server_version = "fake-kube-apiserver/1.37"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet in tests
        pass

    def do_GET(self) -> None:  # noqa: N802
        api = self.api
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        call = Call("GET", path, dict(parse_qsl(parts.query)))
        with api._lock:
            api.calls.append(call)
            api._in_flight += 1
        try:
            self._serve(call, parts.path)
        except (BrokenPipeError, ConnectionResetError):
            call.aborted = True
            self.close_connection = True
        finally:
            with api._idle:
                api._in_flight -= 1
                api._idle.notify_all()

    def _method_not_allowed(self) -> None:
        call = Call(self.command, self.path, {})
        with self.api._lock:
            self.api.calls.append(call)
        self._json(call, 405, status_body(405, "MethodNotAllowed",
                                          "the server does not allow this method on the requested resource"))

    do_POST = do_PUT = do_PATCH = do_DELETE = _method_not_allowed  # noqa: N815

    def _serve(self, call: Call, raw_path: str) -> None:
        api = self.api
        inj = api._take_injection(call.path)
        if inj is not None:
            if inj.delay:
                api._stopping.wait(inj.delay)
            if inj.status is not None:
                reason = "InternalError" if inj.status >= 500 else "Unknown"
                self._json(call, inj.status, status_body(inj.status, reason, f"injected error {inj.status}"))
                return
        if self.headers.get("Authorization") != f"Bearer {api.token}":
            self._json(call, 401, status_body(401, "Unauthorized", "Unauthorized"))
            return
        # Path segments are matched undecoded: a name with %2F must not become a path separator.
        try:
            if m := _POD_LOG.match(raw_path):
                lines = api.log_lines(unquote(m[1]), unquote(m[2]), call.query)
                self._stream(call, lines)
            elif m := _POD.match(raw_path):
                self._json(call, 200, api.get_pod(unquote(m[1]), unquote(m[2])))
            elif m := _POD_LIST.match(raw_path):
                self._json(call, 200, api.list_pods(unquote(m[1]), call.query))
            elif m := _EVENTS.match(raw_path):
                self._json(call, 200, api.list_events(unquote(m[1]), call.query))
            elif m := _NAMESPACE.match(raw_path):
                self._json(call, 200, api.get_namespace(unquote(m[1])))
            else:
                self._json(call, 404, status_body(404, "NotFound", "the server could not find the requested resource"))
        except _Reply as reply:
            self._json(call, reply.code, reply.body)

    def _json(self, call: Call, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        call.status = code
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.wfile.write(data)
        call.bytes_sent += len(data)

    def _stream(self, call: Call, lines: Iterator[bytes]) -> None:
        # Pull the first line before the headers so that a 400 from a lazy check still becomes a Status.
        first = list(itertools.islice(lines, 1))
        call.status = 200
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        buf = bytearray()
        for line in itertools.chain(first, lines):
            buf += line
            if len(buf) >= CHUNK:
                self._chunk(call, bytes(buf))
                buf.clear()
        if buf:
            self._chunk(call, bytes(buf))
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _chunk(self, call: Call, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        call.bytes_sent += len(data)
