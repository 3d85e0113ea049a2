"""Kubernetes, narrowly: find the migration pod, read its logs, state and events (official client)."""

from __future__ import annotations

import codecs
import json
import os
import re
from datetime import datetime, timezone
from typing import Any, Callable, NoReturn, TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config import ConfigException

from gitlab_hook.kube_model import (  # noqa: F401  (re-exported: callers use kube.X)
    ContainerNotStarted,
    ContainerState,
    Event,
    InvalidName,
    KubeConfigError,
    KubeError,
    KubeForbidden,
    KubeUnauthorized,
    KubeUnreachable,
    LogText,
    LogsUnavailable,
    MigrationLogs,
    NamespaceNotFound,
    NoMatchingPod,
    PodInfo,
    PodNotFound,
    check_container_name,
    check_namespace,
    check_pod_name,
)

T = TypeVar("T")

READ_CHUNK = 64 * 1024
PAGE_SIZE = 500
MAX_EVENTS = 10
MAX_SEEN_NAMES = 10
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# Connection errors are retried twice, quickly; a read that timed out is not (it already took long).
_RETRIES = urllib3.Retry(total=2, connect=2, read=0, status=0, redirect=0, backoff_factor=0.1)

_HEX_TOKEN = re.compile(r"[0-9a-fA-F]{7,40}")
_URL_ID = re.compile(r"/(pipelines|jobs|builds)/(\d+)/?$")


def load_api_client(*, kubeconfig: str | None, api_url: str | None, token: str | None, ca_file: str | None,
                    request_timeout: float = 10) -> client.ApiClient:
    """An ApiClient from URL + token, else a kubeconfig file, else the in-cluster service account."""
    cfg = client.Configuration()
    cfg.retries = _RETRIES
    try:
        if api_url or token:
            if not (api_url and token):
                raise KubeConfigError("the Kubernetes API URL and token go together: set both or neither")
            if not re.match(r"https?://[^/\s]+", api_url):
                raise KubeConfigError(f"Kubernetes API URL must start with http:// or https://, got {api_url[:80]!r}")
            cfg.host = api_url.rstrip("/")
            cfg.api_key = {"authorization": f"Bearer {token.strip()}"}
            if api_url.startswith("https://"):
                cfg.verify_ssl = True
                if ca_file:
                    if not os.path.isfile(ca_file):
                        raise KubeConfigError(f"Kubernetes CA file {ca_file} does not exist")
                    cfg.ssl_ca_cert = ca_file
            api = client.ApiClient(configuration=cfg)
        elif kubeconfig:
            if not os.path.isfile(kubeconfig):
                raise KubeConfigError(f"kubeconfig {kubeconfig} does not exist")
            api = config.new_client_from_config(config_file=kubeconfig, client_configuration=cfg,
                                                persist_config=False)
        else:
            config.load_incluster_config(client_configuration=cfg)
            api = client.ApiClient(configuration=cfg)
    except ConfigException as exc:
        where = f"kubeconfig {kubeconfig}" if kubeconfig else "in-cluster service account"
        raise KubeConfigError(f"cannot configure Kubernetes from {where}: {_scrub(str(exc), token)}") from None
    except (OSError, ValueError) as exc:
        raise KubeConfigError(f"cannot configure Kubernetes: {_scrub(str(exc), token)}") from None
    api.request_timeout = request_timeout  # type: ignore[attr-defined]  # PodLogs' default
    return api


def _scrub(text: str, token: str | None) -> str:
    if token and token in text:
        text = text.replace(token, "***")
    return re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)


def _status_message(exc: ApiException) -> str:
    """The `message` of a Kubernetes Status body, else the HTTP reason."""
    try:
        body = json.loads(exc.body or "")
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    except (TypeError, ValueError):
        pass
    return str(exc.reason or "")


def _raise_translated(exc: BaseException, verb: str, resource: str, namespace: str,
                      name: str | None = None) -> NoReturn:
    """Turn a client or network error into one of our KubeErrors."""
    what = f"{verb} {resource}" + (f" {name}" if name else "") + f" in namespace {namespace}"
    if isinstance(exc, ApiException):
        status, msg = exc.status or 0, _status_message(exc)
        if status == 403:
            raise KubeForbidden(verb, resource, namespace, msg) from None
        if status == 401:
            raise KubeUnauthorized(f"the Kubernetes API rejected our credentials (401) when trying to {what}; "
                                   "check the token or kubeconfig") from None
        if status == 404:
            if name is None:
                raise NamespaceNotFound(namespace) from None
            raise PodNotFound(f"pod {name} is gone from namespace {namespace} ({msg})") from None
        if status == 0 or status == 429 or status >= 500:
            raise KubeUnreachable(f"Kubernetes API failed to {what}: " + (f"HTTP {status} " if status else "")
                                  + msg) from None
        raise KubeError(f"Kubernetes API answered {status} to {what}: {msg}") from None
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    # NewConnectionError subclasses ConnectTimeoutError in urllib3 2: a refused connection is not a timeout.
    if isinstance(exc, urllib3.exceptions.TimeoutError) and not isinstance(exc, urllib3.exceptions.NewConnectionError):
        raise KubeUnreachable(f"Kubernetes API timed out trying to {what}") from None
    raise KubeUnreachable(f"Kubernetes API unreachable trying to {what}: {type(exc).__name__}: "
                          f"{_scrub(str(exc), None)[:300]}") from None


_NETWORK_ERRORS = (urllib3.exceptions.HTTPError, OSError)


def _call(fn: Callable[[], T], verb: str, resource: str, namespace: str, name: str | None = None) -> T:
    """Run one API call, translating its errors."""
    try:
        return fn()
    except (ApiException, *_NETWORK_ERRORS) as exc:
        _raise_translated(exc, verb, resource, namespace, name)


def _container_state(cs: Any, init: bool = False) -> ContainerState:
    """Flatten a V1ContainerStatus."""
    state, reason, message, exit_code = "unknown", None, None, None
    st = cs.state
    if st is not None and st.waiting is not None:
        state, reason, message = "waiting", st.waiting.reason, st.waiting.message
    elif st is not None and st.running is not None:
        state = "running"
    elif st is not None and st.terminated is not None:
        t = st.terminated
        state, reason, message, exit_code = "terminated", t.reason, t.message, t.exit_code
    last = cs.last_state.terminated if cs.last_state is not None else None
    return ContainerState(name=cs.name, state=state, reason=reason, message=message, exit_code=exit_code,
                          restart_count=cs.restart_count or 0,
                          last_terminated_reason=last.reason if last else None,
                          last_exit_code=last.exit_code if last else None, init=init)


def _pod_info(pod: Any, how_chosen: str) -> PodInfo:
    """A PodInfo from a V1Pod."""
    meta, status = pod.metadata, pod.status
    containers = [_container_state(c, init=True) for c in (status.init_container_statuses or [])] if status else []
    containers += [_container_state(c) for c in (status.container_statuses or [])] if status else []
    return PodInfo(name=meta.name, namespace=meta.namespace, created=_created(pod),
                   phase=status.phase if status else None, labels=dict(meta.labels or {}),
                   annotations=dict(meta.annotations or {}), node=pod.spec.node_name if pod.spec else None,
                   containers=containers, how_chosen=how_chosen)


def _created(pod: Any) -> datetime:
    ts = pod.metadata.creation_timestamp
    if ts is None:
        return _EPOCH
    return ts.astimezone(timezone.utc) if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def _when(at: datetime) -> str:
    return at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _sha_matches(value: str, sha: str) -> bool:
    """Whether VALUE carries commit SHA (full, or a prefix of at least 7 characters, either way round)."""
    sha = sha.lower()
    for token in _HEX_TOKEN.findall(value):
        token = token.lower()
        if sha.startswith(token) or token.startswith(sha):
            return True
    return False


def _id_matches(key: str, value: str, kind: str, wanted: int) -> bool:
    """Whether KEY=VALUE names pipeline/job WANTED: an id under a key about it, or a .../pipelines/ID URL."""
    value = value.strip()
    url = _URL_ID.search(value)
    if url:
        return url[2] == str(wanted) and (url[1] == "pipelines") == (kind == "pipeline")
    return kind in key.lower() and value == str(wanted)


def _evidence(pod: Any, sha: str | None, pipeline_id: int | None, job_id: int | None) -> tuple[int, str]:
    """How strongly the pod's labels and annotations tie it to this commit, pipeline or job, and in words."""
    meta = pod.metadata
    sources = {"labels": dict(meta.labels or {}), "annotations": dict(meta.annotations or {})}
    score, words = 0, []
    checks: list[tuple[int, str, Callable[[str, str], bool]]] = []
    if sha and len(sha) >= 7:
        checks.append((4, f"commit {sha[:7]}", lambda k, v: _sha_matches(v, sha)))
    if pipeline_id is not None:
        checks.append((2, f"pipeline {pipeline_id}", lambda k, v: _id_matches(k, v, "pipeline", int(pipeline_id))))
    if job_id is not None:
        checks.append((1, f"job {job_id}", lambda k, v: _id_matches(k, v, "job", int(job_id))))
    for weight, what, match in checks:
        where = [src for src, kv in sources.items() if any(match(k, str(v)) for k, v in kv.items())]
        if where:
            score += weight
            words.append(f"{' and '.join(where)} carry {what}")
    return score, "; ".join(words)


class PodLogs:
    """Reads migration pods: which pod, its container state, logs and events."""

    def __init__(self, api_client: client.ApiClient, request_timeout: float | None = None) -> None:
        self.api = client.CoreV1Api(api_client)
        self.request_timeout = request_timeout or getattr(api_client, "request_timeout", None) or 10.0

    def probe(self, namespace: str) -> int:
        """Check we may list pods in ``namespace`` (for ``check``); the number seen on one page."""
        check_namespace(namespace)
        items = _call(lambda: self.api.list_namespaced_pod(namespace, limit=50,
                                                           _request_timeout=self.request_timeout).items or [],
                      "list", "pods", namespace)
        return len(items)

    def find_pod(self, namespace: str, name_regex: str, *, sha: str | None = None,
                 pipeline_id: int | None = None, job_id: int | None = None) -> PodInfo:
        """The pod for this commit/pipeline/job by labels or annotations, else the newest matching one."""
        check_namespace(namespace)
        try:
            pattern = re.compile(name_regex)
        except (re.error, TypeError) as exc:
            raise InvalidName(f"invalid pod name pattern {name_regex!r}: {exc}") from None
        pods = self._list_pods(namespace)
        matching = [p for p in pods if pattern.search(p.metadata.name or "")]
        if not matching:
            newest = sorted(pods, key=_created, reverse=True)
            seen = [p.metadata.name for p in newest[:MAX_SEEN_NAMES]]
            raise NoMatchingPod(namespace, name_regex, seen, "" if pods else self._empty_namespace_hint(namespace))
        scored = [(_evidence(p, sha, pipeline_id, job_id), p) for p in matching]
        best = max(score for (score, _), _ in scored)
        finalists = sorted(((words, p) for (score, words), p in scored if score == best),
                           key=lambda wp: _created(wp[1]), reverse=True)
        words, pod = finalists[0]
        created = _when(_created(pod))
        if best:
            how = words if len(finalists) == 1 else f"newest of {len(finalists)} pods whose {words} (created {created})"
        elif len(matching) == 1:
            how = f"the only pod matching {name_regex} (created {created})"
        else:
            how = f"newest of {len(matching)} matching pods (created {created})"
        return _pod_info(pod, how)

    def _list_pods(self, namespace: str) -> list[Any]:
        """All pods of the namespace, page by page."""
        pods: list[Any] = []
        token: str | None = None
        while True:
            page = _call(lambda t=token: self.api.list_namespaced_pod(  # type: ignore[misc]
                namespace, limit=PAGE_SIZE, _continue=t, _request_timeout=self.request_timeout),
                "list", "pods", namespace)
            pods.extend(page.items or [])
            token = page.metadata.var_continue if page.metadata else None
            if not token:
                return pods

    def _empty_namespace_hint(self, namespace: str) -> str:
        """Listing a missing namespace answers an empty list: ask for the namespace itself to tell."""
        try:
            self.api.read_namespace(namespace, _request_timeout=self.request_timeout)
        except ApiException as exc:
            if exc.status == 404:
                raise NamespaceNotFound(namespace) from None
            if exc.status == 403:
                return "the namespace is empty or does not exist (the service account may not read namespaces to tell)"
            _raise_translated(exc, "get", "namespaces", namespace, namespace)
        except _NETWORK_ERRORS as exc:
            _raise_translated(exc, "get", "namespaces", namespace, namespace)
        return "the namespace has no pods at all"

    def read_logs(self, pod: PodInfo, container: str, *, tail_lines: int, limit_bytes: int,
                  previous: bool = False) -> LogText:
        """The END of the container's log: its last lines, at most tail_lines and limit_bytes of them.

        The kubelet applies tailLines first and then cuts limitBytes from the start of that tail,
        which would keep the oldest part and lose the last lines, where errors are. When the
        first read is cut, ask again for fewer lines (estimated from what was read) until the
        tail fits; each read stays bounded by limit_bytes.
        """
        text = self._read_once(pod, container, tail_lines=tail_lines, limit_bytes=limit_bytes, previous=previous)
        for _ in range(4):
            if not text.truncated:
                return text
            lines = text.text.count("\n")
            if lines < 2:
                break
            tail_lines = max(1, int(lines * 0.8))
            again = self._read_once(pod, container, tail_lines=tail_lines, limit_bytes=limit_bytes, previous=previous)
            text = LogText(again.text, True, again.bytes_read) if not again.truncated else again
            if not again.truncated:
                return text
        return text

    def _read_once(self, pod: PodInfo, container: str, *, tail_lines: int, limit_bytes: int,
                   previous: bool) -> LogText:
        """One bounded, streamed read of the log (never whole in memory)."""
        check_namespace(pod.namespace)
        check_pod_name(pod.name)
        check_container_name(container)
        if limit_bytes <= 0 or tail_lines <= 0:
            raise ValueError("tail_lines and limit_bytes must be positive")
        resource = "pods/log"
        try:
            resp = self.api.read_namespaced_pod_log(
                pod.name, pod.namespace, container=container, tail_lines=tail_lines, limit_bytes=limit_bytes,
                previous=previous, _preload_content=False, _request_timeout=self.request_timeout)
        except ApiException as exc:
            if exc.status == 400:
                msg = _status_message(exc)
                if "waiting to start" in msg:
                    raise ContainerNotStarted(msg.rsplit(": ", 1)[-1]) from None
                raise LogsUnavailable(f"no {'previous ' if previous else ''}log of {container} in pod {pod.name}: "
                                      f"{msg}") from None
            _raise_translated(exc, "get", resource, pod.namespace, pod.name)
        except _NETWORK_ERRORS as exc:
            _raise_translated(exc, "get", resource, pod.namespace, pod.name)
        buf = bytearray()
        complete = False
        try:
            while len(buf) < limit_bytes:
                chunk = resp.read(min(READ_CHUNK, limit_bytes - len(buf)))
                if not chunk:
                    complete = True
                    break
                buf += chunk
        except _NETWORK_ERRORS as exc:
            resp.close()
            _raise_translated(exc, "get", resource, pod.namespace, pod.name)
        finally:
            if not complete:
                resp.close()  # unread data left: do not put this connection back in the pool
            resp.release_conn()
        truncated = len(buf) >= limit_bytes
        return LogText(text=_decode(bytes(buf), truncated), truncated=truncated, bytes_read=len(buf))

    def events(self, namespace: str, pod_name: str) -> list[Event]:
        """The pod's last MAX_EVENTS events, oldest first."""
        check_namespace(namespace)
        check_pod_name(pod_name)
        items = _call(lambda: self.api.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={pod_name}",
            _request_timeout=self.request_timeout).items or [], "list", "events", namespace)
        out = [Event(type=e.type or "", reason=e.reason or "", message=(e.message or "").strip(),
                     count=e.count or (e.series.count if e.series else None) or 1,
                     last_seen=e.last_timestamp or e.event_time or e.first_timestamp or e.metadata.creation_timestamp)
               for e in items]
        out.sort(key=lambda e: e.last_seen or _EPOCH)
        return out[-MAX_EVENTS:]

    def collect(self, namespace: str, name_regex: str, container: str, *, tail_lines: int, limit_bytes: int,
                sha: str | None = None, pipeline_id: int | None = None, job_id: int | None = None) -> MigrationLogs:
        """Find the pod and gather its container state, current and previous logs, and events."""
        check_namespace(namespace)
        check_container_name(container)
        pod = self.find_pod(namespace, name_regex, sha=sha, pipeline_id=pipeline_id, job_id=job_id)
        cs = next((c for c in pod.containers if c.name == container), None)
        out = MigrationLogs(pod=pod, container=cs)
        if cs is None:
            names = ", ".join(c.name for c in pod.containers)
            out.notes.append(f"pod {pod.name} ({pod.phase or 'unknown phase'}) has no status for container "
                             f"{container} yet" + (f" (containers: {names})" if names else ""))
        else:
            self._container_logs(pod, cs, out, tail_lines=tail_lines, limit_bytes=limit_bytes)
        try:
            out.events = self.events(namespace, pod.name)
        except KubeForbidden as exc:
            out.notes.append(f"events not shown: the service account needs `list` on `events` in namespace "
                             f"{exc.namespace}")
        except KubeError as exc:
            out.notes.append(f"events not shown: {exc}")
        return out

    def _container_logs(self, pod: PodInfo, cs: ContainerState, out: MigrationLogs, *,
                        tail_lines: int, limit_bytes: int) -> None:
        """Fill current/previous logs and notes according to the container's state."""
        def read(previous: bool) -> LogText | None:
            try:
                return self.read_logs(pod, cs.name, tail_lines=tail_lines, limit_bytes=limit_bytes,
                                      previous=previous)
            except ContainerNotStarted as exc:
                out.notes.append(f"container {cs.name} has not started: {exc.reason}")
            except (LogsUnavailable, PodNotFound) as exc:
                out.notes.append(str(exc))
            return None

        detail = f": {cs.message}" if cs.message else ""
        if cs.state == "waiting":
            out.notes.append(f"container {cs.name} is waiting ({cs.reason or 'no reason given'}){detail}; "
                             "it has no current log")
        else:
            if cs.state == "terminated":
                exit_text = f" with exit code {cs.exit_code}" if cs.exit_code is not None else ""
                out.notes.append(f"container {cs.name} terminated: {cs.reason or 'no reason given'}{exit_text}{detail}")
            out.current = read(previous=False)
        if cs.restart_count > 0 or cs.last_terminated_reason:
            ended = f", last run ended {cs.last_terminated_reason}" if cs.last_terminated_reason else ""
            code = f" (exit code {cs.last_exit_code})" if cs.last_exit_code is not None else ""
            out.notes.append(f"container {cs.name} restarted {cs.restart_count} time(s){ended}{code}; "
                             "the previous run's log is included")
            out.previous = read(previous=True)


def _decode(data: bytes, truncated: bool) -> str:
    """UTF-8 text; when cut, without the partial last line (unless it is the only one) or a split character."""
    if not truncated:
        return data.decode("utf-8", errors="replace")
    cut = data.rfind(b"\n")
    if cut >= 0:
        data = data[: cut + 1]
    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data, final=False)
