"""A fake GitLab REST API (v4) on 127.0.0.1 that python-gitlab (or plain requests) talks to over HTTP.

Shared by every feature that calls GitLab (job logs, idle stop, reconciliation, the bot)::

    from tests.fakes.gitlab_api import FakeGitLab, GeneratedTrace

    with FakeGitLab() as gl:                       # token: gl.token (DEFAULT_TOKEN)
        gl.add_project(1, "group/app")
        gl.add_runner(12, projects=[1], tag_list=["build"])
        gl.add_job(1, 501, "migrate-db", "failed", trace="\\x1b[31mboom\\x1b[0m\\n", runner_id=12)
        gl.add_job(1, 502, "build", "pending", tag_list=["build"])
        gl.add_hook(1, "https://hook.example/gitlab/webhook", alert_status="temporarily_disabled")
        api = GitLabAPI(gl.url, gl.token)
        ...
        gl.fail(429, path="/jobs/501/trace", headers={"Retry-After": "1"})   # once, then normal
        gl.fail(503, path="/runners/12", times=None)                          # until clear_faults()
        gl.delay(2.0, path="/version")                                        # for timeouts
        gl.count("GET /projects/:id/jobs/:job_id/trace")                      # calls of a route

State (projects, jobs, runners, protected branches, hooks) lives in plain dicts guarded by one
lock; the helpers below change it while the server runs (e.g. ``set_job_status`` to finish a job
between two polls). Every request is recorded as a ``Call`` in ``calls``, with the route template
it matched (``"PUT /runners/:id"``), the decoded path, the query, the JSON body and the status sent.

Behaviour copied from GitLab (docs.gitlab.com/api/{jobs,runners,protected_branches,project_webhooks}):

- ``PRIVATE-TOKEN`` (or ``Authorization: Bearer``) is required: otherwise 401 ``{"message": "401
  Unauthorized"}``. Tokens added with ``scopes=("read_api",)`` get 403 ``insufficient_scope`` on writes.
- Project ids may be numeric or the URL-encoded full path (``group%2Fapp``); branch names in paths
  are URL-encoded too (``release%2F1.2``).
- Lists are paginated (``page``, ``per_page`` ≤ 100, default 20) with ``Link``, ``X-Page``,
  ``X-Next-Page``, ``X-Per-Page``, ``X-Total`` and ``X-Total-Pages`` headers, as python-gitlab follows.
- Job traces are ``text/plain`` with GitLab's ANSI colours and ``section_start/section_end`` markers;
  a ``GeneratedTrace`` produces a trace of any size on the fly, in chunks, never held whole.
- 429 answers are plain text "Retry later" with ``Retry-After`` and ``RateLimit-*`` headers.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

DEFAULT_TOKEN = "glpat-FakeTokenForTests-0123456789"
API_PREFIX = "/api/v4"
JOB_STATUSES = frozenset({
    "created", "pending", "running", "failed", "success", "canceled", "canceling", "skipped", "manual",
    "scheduled", "preparing", "waiting_for_resource", "waiting_for_callback",
})
FINISHED = frozenset({"failed", "success", "canceled", "skipped"})
ACCESS_DESCRIPTIONS = {0: "No one", 30: "Developers + Maintainers", 40: "Maintainers", 60: "Admins"}
HOOK_ALERT_STATUSES = frozenset({"executable", "disabled", "temporarily_disabled"})

Body = bytes | Iterable[bytes]
Reply = tuple[int, dict[str, str], Body, int]  # status, headers, body, content length


def iso(epoch: float | None) -> str | None:
    """GitLab's timestamp format: 2024-05-01T10:00:00.000Z."""
    if epoch is None:
        return None
    dt = datetime.fromtimestamp(epoch, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def json_reply(status: int, obj: Any, headers: dict[str, str] | None = None) -> Reply:
    """A JSON answer."""
    data = json.dumps(obj).encode()
    return status, {"Content-Type": "application/json", **(headers or {})}, data, len(data)


def message_reply(status: int, message: str, key: str = "message") -> Reply:
    """GitLab's error shape: {"message": "404 Project Not Found"} (or {"error": …})."""
    return json_reply(status, {key: message})


# --- traces ------------------------------------------------------------------------------------


def sample_trace(job_name: str = "migrate-db", *, failed: bool = True, start: int = 1_714_557_600) -> str:
    """A short, realistic GitLab job log: runner banner, collapsible sections, colours, a progress bar."""
    t = start
    lines = [
        "\x1b[0KRunning with gitlab-runner 17.5.0 (66269445)\x1b[0;m",
        "\x1b[0K  on build-runner-1 t3_AbCdEf, system ID: s_0123456789ab\x1b[0;m",
        f"section_start:{t}:prepare_executor\r\x1b[0K\x1b[0K\x1b[36;1mPreparing the \"docker\" executor\x1b[0;m\x1b[0;m",
        "\x1b[0KUsing Docker executor with image alpine:3.20 ...\x1b[0;m",
        f"section_end:{t + 2}:prepare_executor\r\x1b[0K",
        f"section_start:{t + 2}:get_sources[collapsed=true]\r\x1b[0K\x1b[0K\x1b[36;1mGetting source from Git repository\x1b[0;m",
        "\x1b[32;1mFetching changes with git depth set to 20...\x1b[0;m",
        "Receiving objects:  10% (1/10)\rReceiving objects:  50% (5/10)\rReceiving objects: 100% (10/10), done.",
        f"section_end:{t + 5}:get_sources\r\x1b[0K",
        f"section_start:{t + 5}:step_script\r\x1b[0K\x1b[0K\x1b[36;1mExecuting \"step_script\" stage of the job script\x1b[0;m",
        f"\x1b[32;1m$ ./manage.py migrate  # {job_name}\x1b[0;m",
        "Operations to perform:",
        "  Apply all migrations: app, auth",
        "Running migrations:",
        "  Applying app.0042_add_index...",
    ]
    if failed:
        lines += [
            "\x1b[31;1mdjango.db.utils.OperationalError: could not connect to server: Connection refused\x1b[0;m",
            f"section_end:{t + 9}:step_script\r\x1b[0K",
            f"section_start:{t + 9}:cleanup_file_variables\r\x1b[0K\x1b[0K\x1b[36;1mCleaning up project directory and file based variables\x1b[0;m",
            f"section_end:{t + 10}:cleanup_file_variables\r\x1b[0K",
            "\x1b[31;1mERROR: Job failed: exit code 1\x1b[0;m",
        ]
    else:
        lines += [
            " OK",
            f"section_end:{t + 9}:step_script\r\x1b[0K",
            "\x1b[32;1mJob succeeded\x1b[0;m",
        ]
    return "\n".join(lines) + "\n"


class GeneratedTrace:
    """A job log of about ``size`` bytes made on the fly: numbered coloured filler, then ``tail``.

    Only one block of ``block_size`` bytes exists at a time, so a 50 MB trace costs ~64 KB.
    ``size`` (the property) is the exact length; the filler lines read
    ``\\x1b[32m[filler 00000012]\\x1b[0m build output …``.
    """

    def __init__(self, size: int, tail: str = "", *, block_size: int = 64 * 1024) -> None:
        self._tail = tail.encode()
        line = b"\x1b[32m[filler 00000000]\x1b[0m build output " + b"x" * 40 + b"\n"
        self._line_len = len(line)
        self._lines_per_block = max(1, block_size // self._line_len)
        total_lines = max(0, size - len(self._tail)) // self._line_len
        self._blocks, self._last_lines = divmod(total_lines, self._lines_per_block)
        self._body = line[len(b"\x1b[32m[filler 00000000]\x1b[0m") :]
        self._size = total_lines * self._line_len + len(self._tail)

    @property
    def size(self) -> int:
        """Exact length in bytes."""
        return self._size

    def _block(self, index: int, lines: int) -> bytes:
        start = index * self._lines_per_block
        return b"".join(b"\x1b[32m[filler %08d]\x1b[0m" % (start + i) + self._body for i in range(lines))

    def chunks(self) -> Iterator[bytes]:
        """The trace, block by block."""
        for i in range(self._blocks):
            yield self._block(i, self._lines_per_block)
        if self._last_lines:
            yield self._block(self._blocks, self._last_lines)
        if self._tail:
            yield self._tail


# --- records -----------------------------------------------------------------------------------


@dataclass
class Call:
    """One request the fake received (recorded on arrival; status is 0 until it is answered)."""

    method: str
    path: str  # decoded, without /api/v4: "/projects/group/app/protected_branches/release/1.2"
    raw_path: str  # as sent: "/api/v4/projects/group%2Fapp/protected_branches/release%2F1.2"
    route: str | None  # template matched: "DELETE /projects/:id/protected_branches/:name"
    query: dict[str, list[str]]
    time: float
    status: int
    headers: dict[str, str] = field(repr=False)
    body: Any = field(default=None, repr=False)

    @property
    def token(self) -> str | None:
        """The token sent (PRIVATE-TOKEN or Bearer)."""
        auth = self.headers.get("authorization", "")
        return self.headers.get("private-token") or (auth[7:] if auth.lower().startswith("bearer ") else None)


@dataclass
class Fault:
    """An injected answer: for requests matching method/path, wait delay, then answer status (if any)."""

    status: int | None
    method: str | None
    path: str | None  # substring of the decoded or raw path, or a route template ("/runners/:id")
    times: int | None  # None: until cleared
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    hits: int = 0

    def matches(self, method: str, path: str, raw_path: str, route: str | None) -> bool:
        """Whether this fault applies to a request."""
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method and self.method.upper() != method:
            return False
        if self.path is None:
            return True
        if route and self.path in (route, route.split(" ", 1)[1]):
            return True
        return self.path in path or self.path in raw_path


# Route templates: (method, path) → handler method name. Placeholders start with ':'.
ROUTES: list[tuple[str, str, str]] = [
    ("GET", "/version", "_version"),
    ("GET", "/user", "_user"),
    ("GET", "/projects/:id", "_project"),
    ("GET", "/projects/:id/jobs", "_project_jobs"),
    ("GET", "/projects/:id/jobs/:job_id", "_project_job"),
    ("GET", "/projects/:id/jobs/:job_id/trace", "_trace"),
    ("GET", "/projects/:id/protected_branches", "_protected_list"),
    ("GET", "/projects/:id/protected_branches/:name", "_protected_get"),
    ("POST", "/projects/:id/protected_branches", "_protect"),
    ("DELETE", "/projects/:id/protected_branches/:name", "_unprotect"),
    ("GET", "/projects/:id/hooks", "_hooks"),
    ("GET", "/projects/:id/hooks/:hook_id", "_hook"),
    ("GET", "/runners", "_runners"),
    ("GET", "/runners/all", "_runners"),
    ("GET", "/runners/:id", "_runner"),
    ("PUT", "/runners/:id", "_runner_update"),
    ("GET", "/runners/:id/jobs", "_runner_jobs"),
]
_COMPILED_ROUTES = [(m, t, t.strip("/").split("/"), h) for m, t, h in ROUTES]


def _match_route(method: str, segments: list[str]) -> tuple[str | None, str | None, dict[str, str], bool]:
    """(template, handler, params, path_known) for a request; path_known: another method would match."""
    path_known = False
    for m, template, parts, handler in _COMPILED_ROUTES:
        if len(parts) != len(segments):
            continue
        params: dict[str, str] = {}
        for part, seg in zip(parts, segments):
            if part.startswith(":"):
                if not seg:
                    break
                params[part[1:]] = seg
            elif part != seg:
                break
        else:
            if m == method:
                return f"{m} {template}", handler, params, True
            path_known = True
    return None, None, {}, path_known


class FakeGitLab:
    """A GitLab REST API v4 server on 127.0.0.1:<free port> with state, faults and a call log."""

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        version: str = "17.5.1-ee",
        revision: str = "9a7c2d1b3e4",
        per_page: int = 20,
    ) -> None:
        self.token = token
        self.version = version
        self.revision = revision
        self.default_per_page = per_page
        self.tokens: dict[str, frozenset[str]] = {token: frozenset({"api", "read_api"})}
        self.projects: dict[int, dict[str, Any]] = {}
        self.jobs: dict[int, dict[str, Any]] = {}
        self.traces: dict[int, bytes | GeneratedTrace] = {}
        self.runners: dict[int, dict[str, Any]] = {}
        self.protected: dict[int, dict[str, dict[str, Any]]] = {}
        self.hooks: dict[int, dict[str, Any]] = {}
        self.calls: list[Call] = []
        self.faults: list[Fault] = []
        self.lock = threading.RLock()
        self._ids = itertools.count(1000)
        self._closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- lifecycle --

    def start(self) -> FakeGitLab:
        """Listen on 127.0.0.1 on a free port, serving from a daemon thread."""
        fake = self

        class Handler(_Handler):
            owner = fake

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-gitlab", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving; requests still sleeping in a delay are cut short."""
        self._closing.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeGitLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def api_url(self) -> str:
        """The API root, url + /api/v4."""
        return self.url + API_PREFIX

    # -- state --

    def add_token(self, token: str, scopes: Iterable[str] = ("api",)) -> None:
        """Accept another token; with scopes ("read_api",) it can read but every write gets 403."""
        with self.lock:
            self.tokens[token] = frozenset(scopes)

    def add_project(self, id: int, path: str, *, default_branch: str = "main", **extra: Any) -> dict[str, Any]:
        """A project with numeric id and full path "group/sub/name"."""
        namespace, _, name = path.rpartition("/")
        project = {
            "id": id,
            "description": None,
            "name": name,
            "name_with_namespace": " / ".join(path.split("/")),
            "path": name,
            "path_with_namespace": path,
            "created_at": iso(1_700_000_000),
            "default_branch": default_branch,
            "web_url": f"https://gitlab.example.com/{path}",
            "namespace": {"id": 100 + id, "name": namespace.rsplit("/", 1)[-1], "path": namespace.rsplit("/", 1)[-1],
                          "kind": "group", "full_path": namespace},
            "archived": False,
            "visibility": "private",
            **extra,
        }
        with self.lock:
            self.projects[id] = project
            self.protected.setdefault(id, {})
        return project

    def add_job(
        self,
        project_id: int,
        job_id: int,
        name: str,
        status: str = "success",
        *,
        trace: str | bytes | GeneratedTrace | None = None,
        runner_id: int | None = None,
        stage: str = "test",
        ref: str = "main",
        tag_list: Iterable[str] = (),
        pipeline_id: int | None = None,
        failure_reason: str | None = None,
        allow_failure: bool = False,
        created_at: float | None = None,
    ) -> dict[str, Any]:
        """A job of a project; trace defaults to sample_trace(name); runner_id links it to a runner."""
        if status not in JOB_STATUSES:
            raise ValueError(f"unknown job status {status!r}")
        now = time.time()
        created = created_at if created_at is not None else now - 60
        job = {
            "id": job_id,
            "project_id": project_id,
            "name": name,
            "stage": stage,
            "ref": ref,
            "tag": False,
            "status": status,
            "allow_failure": allow_failure,
            "tag_list": list(tag_list),
            "pipeline_id": pipeline_id or job_id // 10 or 1,
            "runner_id": runner_id,
            "failure_reason": failure_reason if failure_reason or status != "failed" else "script_failure",
            "created_at": created,
            "started_at": None,
            "finished_at": None,
        }
        self._stamp(job, status, now)
        if trace is None:
            trace = sample_trace(name, failed=status == "failed")
        with self.lock:
            self.jobs[job_id] = job
            self.traces[job_id] = trace.encode() if isinstance(trace, str) else trace
        return job

    @staticmethod
    def _stamp(job: dict[str, Any], status: str, now: float) -> None:
        if status in ("running", *FINISHED) and job["started_at"] is None and status != "skipped":
            job["started_at"] = now - 30 if status in FINISHED else now
        if status in FINISHED and job["finished_at"] is None:
            job["finished_at"] = now

    def set_job_status(
        self, job_id: int, status: str, *, runner_id: int | None = None, failure_reason: str | None = None
    ) -> None:
        """Move a job to another status (e.g. pending → running on runner 12 → success)."""
        if status not in JOB_STATUSES:
            raise ValueError(f"unknown job status {status!r}")
        with self.lock:
            job = self.jobs[job_id]
            job["status"] = status
            if runner_id is not None:
                job["runner_id"] = runner_id
            if status == "failed":
                job["failure_reason"] = failure_reason or "script_failure"
            elif failure_reason is not None:
                job["failure_reason"] = failure_reason
            self._stamp(job, status, time.time())

    def set_trace(self, job_id: int, trace: str | bytes | GeneratedTrace) -> None:
        """Replace a job's log."""
        with self.lock:
            self.traces[job_id] = trace.encode() if isinstance(trace, str) else trace

    def append_trace(self, job_id: int, text: str) -> None:
        """Add to a running job's log."""
        with self.lock:
            current = self.traces.get(job_id, b"")
            if isinstance(current, GeneratedTrace):
                raise ValueError("cannot append to a generated trace")
            self.traces[job_id] = current + text.encode()

    def add_runner(
        self,
        id: int,
        projects: Iterable[int] = (),
        *,
        description: str | None = None,
        paused: bool = False,
        tag_list: Iterable[str] = (),
        run_untagged: bool = True,
        runner_type: str | None = None,
        online: bool = True,
        locked: bool = False,
    ) -> dict[str, Any]:
        """A runner; with projects it is a project runner of those project ids, else an instance runner."""
        project_ids = list(projects)
        runner = {
            "id": id,
            "description": description or f"build-runner-{id}",
            "ip_address": None,
            "paused": paused,
            "is_shared": not project_ids,
            "runner_type": runner_type or ("project_type" if project_ids else "instance_type"),
            "name": "gitlab-runner",
            "online": online,
            "tag_list": list(tag_list),
            "run_untagged": run_untagged,
            "locked": locked,
            "maximum_timeout": None,
            "access_level": "not_protected",
            "version": "17.5.0",
            "revision": "66269445",
            "platform": "linux",
            "architecture": "amd64",
            "contacted_at": time.time() - 5 if online else None,
            "created_at": 1_700_000_000.0,
            "project_ids": project_ids,
        }
        with self.lock:
            self.runners[id] = runner
        return runner

    def set_runner(self, runner_id: int, **changes: Any) -> None:
        """Change a runner's fields (online=False, paused=True, tag_list=[…], project_ids=[…])."""
        with self.lock:
            self.runners[runner_id].update(changes)

    def protect(self, project_id: int, name: str, push: int = 40, merge: int = 40) -> dict[str, Any]:
        """Pre-seed a protected branch rule."""
        with self.lock:
            rule = self._protection(name, push, merge)
            self.protected.setdefault(project_id, {})[name] = rule
            return rule

    def add_hook(
        self,
        project_id: int,
        url: str,
        alert_status: str = "executable",
        disabled_until: float | str | None = None,
        **events: Any,
    ) -> dict[str, Any]:
        """A project webhook; alert_status executable, temporarily_disabled (with disabled_until) or disabled."""
        if alert_status not in HOOK_ALERT_STATUSES:
            raise ValueError(f"alert_status must be one of {sorted(HOOK_ALERT_STATUSES)}")
        hook_id = next(self._ids)
        hook = {
            "id": hook_id,
            "url": url,
            "name": None,
            "description": None,
            "project_id": project_id,
            "push_events": True,
            "push_events_branch_filter": "",
            "branch_filter_strategy": "wildcard",
            "issues_events": False,
            "confidential_issues_events": False,
            "merge_requests_events": False,
            "tag_push_events": False,
            "note_events": False,
            "confidential_note_events": False,
            "job_events": True,
            "pipeline_events": True,
            "wiki_page_events": False,
            "deployment_events": False,
            "releases_events": False,
            "milestone_events": False,
            "feature_flag_events": False,
            "repository_update_events": False,
            "resource_access_token_events": False,
            "emoji_events": False,
            "enable_ssl_verification": True,
            "custom_webhook_template": None,
            "url_variables": [],
            "custom_headers": [],
            "created_at": iso(1_700_000_000),
            "alert_status": alert_status,
            "disabled_until": iso(disabled_until) if isinstance(disabled_until, (int, float)) else disabled_until,
            **events,
        }
        with self.lock:
            self.hooks[hook_id] = hook
        return hook

    def set_hook(self, hook_id: int, **changes: Any) -> None:
        """Change a hook's fields (alert_status="temporarily_disabled", disabled_until=epoch or ISO text)."""
        with self.lock:
            if isinstance(changes.get("disabled_until"), (int, float)):
                changes["disabled_until"] = iso(changes["disabled_until"])
            self.hooks[hook_id].update(changes)

    # -- faults and the call log --

    def fail(
        self,
        status: int,
        *,
        path: str | None = None,
        method: str | None = None,
        times: int | None = 1,
        body: Any = None,
        headers: dict[str, str] | None = None,
        retry_after: float | None = None,
        delay: float = 0.0,
    ) -> Fault:
        """Answer matching requests with status (times=None: until clear_faults); 429 gets Retry-After."""
        hdrs = dict(headers or {})
        if retry_after is not None:
            hdrs["Retry-After"] = str(retry_after)
        fault = Fault(status, method, path, times, body, hdrs, delay)
        with self.lock:
            self.faults.append(fault)
        return fault

    def delay(self, seconds: float, *, path: str | None = None, method: str | None = None,
              times: int | None = 1) -> Fault:
        """Hold matching requests for seconds before answering normally (to cause client timeouts)."""
        fault = Fault(None, method, path, times, delay=seconds)
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Forget every injected fault."""
        with self.lock:
            self.faults.clear()

    def reset_calls(self) -> None:
        """Forget the call log."""
        with self.lock:
            self.calls.clear()

    def requests(self, route_or_path: str | None = None, method: str | None = None) -> list[Call]:
        """Calls matching a route template ("GET /runners/:id") or a path substring, and a method."""
        with self.lock:
            calls = list(self.calls)
        out = []
        for c in calls:
            if method and c.method != method.upper():
                continue
            if route_or_path is not None and not (
                c.route == route_or_path
                or (c.route is not None and c.route.split(" ", 1)[1] == route_or_path)
                or route_or_path in c.path
                or route_or_path in c.raw_path
            ):
                continue
            out.append(c)
        return out

    def count(self, route_or_path: str | None = None, method: str | None = None) -> int:
        """How many calls match (see requests())."""
        return len(self.requests(route_or_path, method))

    @property
    def counts(self) -> Counter[str]:
        """Calls per route template, e.g. {"GET /projects/:id/jobs/:job_id/trace": 2}."""
        with self.lock:
            return Counter(c.route or f"{c.method} {c.path}" for c in self.calls)

    # -- request handling (called from server threads) --

    def _handle(self, method: str, raw_target: str, headers: dict[str, str], raw_body: bytes) -> Reply:
        split = urlsplit(raw_target)
        raw_path = split.path
        query = parse_qs(split.query, keep_blank_values=True)
        body = _parse_body(headers.get("content-type", ""), raw_body)
        route = handler = None
        params: dict[str, str] = {}
        path_known = False
        segments: list[str] = []
        if raw_path.startswith(API_PREFIX + "/") or raw_path == API_PREFIX:
            segments = [unquote(s) for s in raw_path[len(API_PREFIX) :].strip("/").split("/")]
            route, handler, params, path_known = _match_route(method, segments)
        path = "/" + "/".join(segments)
        call = Call(method, path, raw_path, route, query, time.time(), 0, headers, body)
        with self.lock:
            self.calls.append(call)
        reply = self._reply(method, path, raw_path, route, handler, params, query, headers, body, path_known)
        call.status = reply[0]
        return reply

    def _reply(self, method: str, path: str, raw_path: str, route: str | None, handler: str | None,
               params: dict[str, str], query: dict[str, list[str]], headers: dict[str, str], body: Any,
               path_known: bool) -> Reply:
        with self.lock:
            fault = next((f for f in self.faults if f.matches(method, path, raw_path, route)), None)
            if fault is not None:
                fault.hits += 1
        if fault is not None:
            if fault.delay:
                self._closing.wait(fault.delay)
            if fault.status is not None:
                return _fault_reply(fault)

        token = headers.get("private-token")
        auth = headers.get("authorization", "")
        if token is None and auth.lower().startswith("bearer "):
            token = auth[7:]
        with self.lock:
            scopes = self.tokens.get(token or "")
        if scopes is None:
            return message_reply(401, "401 Unauthorized")
        if handler is None:
            if path_known:
                return message_reply(405, "405 Method Not Allowed", "error")
            return message_reply(404, "404 Not Found", "error")
        if method != "GET" and "api" not in scopes:
            return json_reply(403, {
                "error": "insufficient_scope",
                "error_description": "The request requires higher privileges than provided by the access token.",
                "scope": "api",
            })
        with self.lock:
            return getattr(self, handler)(params, query, body)

    # -- lookups --

    def _find_project(self, ref: str) -> dict[str, Any] | None:
        if ref.isdigit():
            return self.projects.get(int(ref))
        return next((p for p in self.projects.values() if p["path_with_namespace"] == ref), None)

    def _find_runner(self, ref: str) -> dict[str, Any] | None:
        return self.runners.get(int(ref)) if ref.isdigit() else None

    def _job_json(self, job: dict[str, Any], *, with_project: bool = False) -> dict[str, Any]:
        project = self.projects.get(job["project_id"], {})
        runner = self.runners.get(job["runner_id"]) if job["runner_id"] is not None else None
        started, finished = job["started_at"], job["finished_at"]
        out = {
            "id": job["id"],
            "status": job["status"],
            "stage": job["stage"],
            "name": job["name"],
            "ref": job["ref"],
            "tag": job["tag"],
            "coverage": None,
            "allow_failure": job["allow_failure"],
            "created_at": iso(job["created_at"]),
            "started_at": iso(started),
            "finished_at": iso(finished),
            "erased_at": None,
            "duration": (finished or time.time()) - started if started else None,
            "queued_duration": (started or time.time()) - job["created_at"],
            "user": {"id": 1, "username": "dev", "name": "Dev Eloper", "state": "active"},
            "commit": {"id": "a" * 40, "short_id": "a" * 8, "title": "Add index", "author_name": "Dev Eloper"},
            "pipeline": {"id": job["pipeline_id"], "iid": job["pipeline_id"], "project_id": job["project_id"],
                         "ref": job["ref"], "sha": "a" * 40, "status": job["status"], "source": "push"},
            "web_url": f"{project.get('web_url', 'https://gitlab.example.com/x')}/-/jobs/{job['id']}",
            "artifacts": [],
            "runner": _runner_brief(runner) if runner else None,
            "runner_manager": None,
            "artifacts_expire_at": None,
            "archived": False,
            "tag_list": list(job["tag_list"]),
        }
        if job["status"] == "failed":
            out["failure_reason"] = job["failure_reason"]
        if with_project:
            out["project"] = {k: project.get(k) for k in
                              ("id", "name", "name_with_namespace", "path", "path_with_namespace", "description",
                               "created_at")}
        return out

    def _runner_json(self, runner: dict[str, Any]) -> dict[str, Any]:
        out = _runner_brief(runner)
        out.update({
            "tag_list": list(runner["tag_list"]),
            "run_untagged": runner["run_untagged"],
            "locked": runner["locked"],
            "maximum_timeout": runner["maximum_timeout"],
            "access_level": runner["access_level"],
            "version": runner["version"],
            "revision": runner["revision"],
            "platform": runner["platform"],
            "architecture": runner["architecture"],
            "contacted_at": iso(runner["contacted_at"]),
            "created_at": iso(runner["created_at"]),
            "maintenance_note": None,
            "projects": [
                {k: self.projects[pid].get(k) for k in ("id", "name", "name_with_namespace", "path",
                                                        "path_with_namespace")}
                for pid in runner["project_ids"] if pid in self.projects
            ],
            "groups": [],
        })
        return out

    def _page(self, items: list[Any], query: dict[str, list[str]], path: str) -> Reply:
        """One page of a list, with GitLab's pagination headers and Link."""
        try:
            page = max(1, int(_q(query, "page") or 1))
            per_page = min(100, max(1, int(_q(query, "per_page") or self.default_per_page)))
        except ValueError:
            return message_reply(400, "page is invalid", "error")
        total = len(items)
        pages = max(1, -(-total // per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        base = {k: v for k, v in query.items() if k not in ("page", "per_page")}

        def link(p: int) -> str:
            q = urlencode({**base, "page": [str(p)], "per_page": [str(per_page)]}, doseq=True)
            return f"<{self.api_url}{path}?{q}>"

        links = []
        if page < pages:
            links.append(f'{link(page + 1)}; rel="next"')
        if page > 1:
            links.append(f'{link(page - 1)}; rel="prev"')
        links += [f'{link(1)}; rel="first"', f'{link(pages)}; rel="last"']
        headers = {
            "X-Page": str(page),
            "X-Per-Page": str(per_page),
            "X-Total": str(total),
            "X-Total-Pages": str(pages),
            "X-Next-Page": str(page + 1) if page < pages else "",
            "X-Prev-Page": str(page - 1) if page > 1 else "",
            "Link": ", ".join(links),
        }
        return json_reply(200, chunk, headers)

    # -- handlers (run under self.lock) --

    def _version(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Reply:
        return json_reply(200, {"version": self.version, "revision": self.revision,
                                "kas": {"enabled": False, "externalUrl": None, "version": None},
                                "enterprise": self.version.endswith("-ee")})

    def _user(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Reply:
        return json_reply(200, {"id": 1, "username": "hook-bot", "name": "gitlab-hook", "state": "active",
                                "is_admin": False, "bot": True})

    def _project(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Reply:
        project = self._find_project(params["id"])
        return json_reply(200, project) if project else message_reply(404, "404 Project Not Found")

    def _project_jobs(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Reply:
        project = self._find_project(params["id"])
        if not project:
            return message_reply(404, "404 Project Not Found")
        scopes = query.get("scope[]", []) + query.get("scope", [])
        bad = [s for s in scopes if s not in JOB_STATUSES]
        if bad:
            return message_reply(400, "scope[] does not have a valid value", "error")
        jobs = [j for j in self.jobs.values() if j["project_id"] == project["id"] and (not scopes or j["status"] in scopes)]
        jobs.sort(key=lambda j: j["id"], reverse=True)
        return self._page([self._job_json(j) for j in jobs], query, f"/projects/{params['id'] if params['id'].isdigit() else quote(params['id'], safe='')}/jobs")

    def _job_of(self, params: dict[str, str]) -> tuple[dict[str, Any] | None, Reply | None]:
        project = self._find_project(params["id"])
        if not project:
            return None, message_reply(404, "404 Project Not Found")
        job = self.jobs.get(int(params["job_id"])) if params["job_id"].isdigit() else None
        if not job or job["project_id"] != project["id"]:
            return None, message_reply(404, "404 Not found")
        return job, None

    def _project_job(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Reply:
        job, error = self._job_of(params)
        return error or json_reply(200, self._job_json(job))  # type: ignore[arg-type]

    def _trace(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Reply:
        job, error = self._job_of(params)
        if error:
            return error
        trace = self.traces.get(job["id"], b"")  # type: ignore[index]
        headers = {"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-cache"}
        if isinstance(trace, GeneratedTrace):
            return 200, headers, trace.chunks(), trace.size
        return 200, headers, trace, len(trace)

    def _protected_list(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Reply:
        project = self._find_project(params["id"])
        if not project:
            return message_reply(404, "404 Project Not Found")
        rules = list(self.protected.get(project["id"], {}).values())
        return self._page(rules, query, f"/projects/{project['id']}/protected_branches")

    def _protected_get(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Reply:
        project = self._find_project(params["id"])
        if not project:
            return message_reply(404, "404 Project Not Found")
        rule = self.protected.get(project["id"], {}).get(params["name"])
        return json_reply(200, rule) if rule else message_reply(404, "404 Not found")

    def _protection(self, name: str, push: int, merge: int) -> dict[str, Any]:
        def level(value: int) -> list[dict[str, Any]]:
            return [{"id": next(self._ids), "access_level": value,
                     "access_level_description": ACCESS_DESCRIPTIONS[value], "user_id": None, "group_id": None,
                     "deploy_key_id": None}]

        return {"id": next(self._ids), "name": name, "push_access_levels": level(push),
                "merge_access_levels": level(merge), "unprotect_access_levels": [],
                "allow_force_push": False, "code_owner_approval_required": False, "inherited": False}

    def _protect(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Reply:
        project = self._find_project(params["id"])
        if not project:
            return message_reply(404, "404 Project Not Found")
        data = {k: v[-1] for k, v in query.items()}
        if isinstance(body, dict):
            data.update(body)
        name = data.get("name")
        if not isinstance(name, str) or not name:
            return message_reply(400, "name is missing", "error")
        levels = {}
        for key in ("push_access_level", "merge_access_level"):
            raw = data.get(key, 40)
            try:
                value = int(raw)
            except (TypeError, ValueError):
                value = -1
            if value not in ACCESS_DESCRIPTIONS:
                return message_reply(400, f"{key} does not have a valid value", "error")
            levels[key] = value
        rules = self.protected.setdefault(project["id"], {})
        if name in rules:
            return message_reply(409, f"Protected branch '{name}' already exists")
        rules[name] = self._protection(name, levels["push_access_level"], levels["merge_access_level"])
        return json_reply(201, rules[name])

    def _unprotect(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Reply:
        project = self._find_project(params["id"])
        if not project:
            return message_reply(404, "404 Project Not Found")
        rules = self.protected.get(project["id"], {})
        if params["name"] not in rules:
            return message_reply(404, "404 Not found")
        del rules[params["name"]]
        return 204, {}, b"", 0

    def _hooks(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Reply:
        project = self._find_project(params["id"])
        if not project:
            return message_reply(404, "404 Project Not Found")
        hooks = [h for h in self.hooks.values() if h["project_id"] == project["id"]]
        return self._page(hooks, query, f"/projects/{project['id']}/hooks")

    def _hook(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Reply:
        project = self._find_project(params["id"])
        hook = self.hooks.get(int(params["hook_id"])) if params["hook_id"].isdigit() else None
        if not project or not hook or hook["project_id"] != project["id"]:
            return message_reply(404, "404 Not found")
        return json_reply(200, hook)

    def _runners(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Reply:
        runners = [_runner_brief(r) for r in sorted(self.runners.values(), key=lambda r: r["id"])]
        return self._page(runners, query, "/runners")

    def _runner(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Reply:
        runner = self._find_runner(params["id"])
        return json_reply(200, self._runner_json(runner)) if runner else message_reply(404, "404 Runner Not Found")

    def _runner_update(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Reply:
        runner = self._find_runner(params["id"])
        if not runner:
            return message_reply(404, "404 Runner Not Found")
        data = {k: v[-1] for k, v in query.items()}
        if isinstance(body, dict):
            data.update(body)
        if "active" in data and "paused" not in data:  # deprecated inverse of paused
            data["paused"] = not _truthy(data["active"])
        for key in ("paused", "run_untagged", "locked"):
            if key in data:
                runner[key] = _truthy(data[key])
        if "description" in data:
            runner["description"] = str(data["description"])
        if "tag_list" in data:
            tags = data["tag_list"]
            runner["tag_list"] = [t.strip() for t in tags.split(",")] if isinstance(tags, str) else list(tags)
        return json_reply(200, self._runner_json(runner))

    def _runner_jobs(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Reply:
        runner = self._find_runner(params["id"])
        if not runner:
            return message_reply(404, "404 Runner Not Found")
        status = _q(query, "status")
        if status is not None and status not in JOB_STATUSES:
            return message_reply(400, "status does not have a valid value", "error")
        jobs = [j for j in self.jobs.values() if j["runner_id"] == runner["id"] and (status is None or j["status"] == status)]
        reverse = (_q(query, "sort") or "desc") == "desc"
        jobs.sort(key=lambda j: j["id"], reverse=reverse)
        return self._page([self._job_json(j, with_project=True) for j in jobs], query, f"/runners/{runner['id']}/jobs")


def _runner_brief(runner: dict[str, Any]) -> dict[str, Any]:
    """The short runner shape used in lists and inside jobs."""
    status = "online" if runner["online"] else "offline"
    return {
        "id": runner["id"],
        "description": runner["description"],
        "ip_address": runner["ip_address"],
        "active": not runner["paused"],
        "paused": runner["paused"],
        "is_shared": runner["is_shared"],
        "runner_type": runner["runner_type"],
        "name": runner["name"],
        "online": runner["online"],
        "status": status,
    }


def _q(query: dict[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[-1] if values else None


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    return bool(value)


def _parse_body(content_type: str, raw: bytes) -> Any:
    """JSON or form body as Python data (None when empty, raw text when unreadable)."""
    if not raw:
        return None
    if "json" in content_type:
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode("utf-8", "replace")
    if "x-www-form-urlencoded" in content_type:
        return {k: v[-1] for k, v in parse_qs(raw.decode(), keep_blank_values=True).items()}
    return raw.decode("utf-8", "replace")


def _fault_reply(fault: Fault) -> Reply:
    status = fault.status or 500
    headers = dict(fault.headers)
    if status == 429:
        headers.setdefault("RateLimit-Limit", "600")
        headers.setdefault("RateLimit-Remaining", "0")
        headers.setdefault("RateLimit-Observed", "601")
        headers.setdefault("RateLimit-Name", "throttle_authenticated_api")
        headers.setdefault("RateLimit-Reset", str(int(time.time()) + 1))
        if fault.body is None:
            data = b"Retry later\n"
            return status, {"Content-Type": "text/plain", **headers}, data, len(data)
    if fault.body is None:
        messages = {401: "401 Unauthorized", 403: "403 Forbidden", 404: "404 Not Found",
                    500: "500 Internal Server Error", 502: "502 Bad Gateway", 503: "503 Service Unavailable"}
        body: Any = {"message": messages.get(status, f"{status} Error")}
    else:
        body = fault.body
    if isinstance(body, (bytes, str)):
        data = body.encode() if isinstance(body, str) else body
        return status, {"Content-Type": "text/plain", **headers}, data, len(data)
    return json_reply(status, body, headers)


class _Handler(BaseHTTPRequestHandler):
    """Reads a request, lets FakeGitLab answer it, writes the answer (streaming iterables)."""

    owner: FakeGitLab
    protocol_version = "HTTP/1.1"
    server_version = "nginx"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, out_headers, body, size = self.owner._handle(self.command, self.path, headers, raw)
        try:
            self.send_response(status)
            for k, v in out_headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if isinstance(body, bytes):
                if body:
                    self.wfile.write(body)
            else:
                for chunk in body:
                    if self.owner._closing.is_set():
                        break
                    self.wfile.write(chunk)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve
