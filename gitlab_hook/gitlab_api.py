"""Our narrow interface over python-gitlab: job log tails, runners, branch protection, hooks.

Retries, as python-gitlab 8.6 does them (``gitlab/client.py`` ``Gitlab.http_request`` and
``gitlab/utils.py`` ``Retry``, read in the installed source):

- ``max_retries`` is a per-request argument (default 10), not a ``Gitlab()`` setting, so every
  call here passes ``max_retries=retries`` (retries after the first attempt: 3 → 4 attempts).
- A 429 is retried whenever ``obey_rate_limit`` is on (the default), even without
  ``retry_transient_errors``. With ``retry_transient_errors=True`` it also retries 500, 502, 503,
  504 and 520-530, a 409 whose reason says "Resource lock", and connection errors, read/connect
  timeouts and broken chunked bodies (``requests.ConnectionError``, ``Timeout``,
  ``ChunkedEncodingError``).
- The wait before retry n (0-based) is ``0.1 * 2**n`` s (0.1, 0.2, 0.4 …, no jitter), unless the
  answer carries ``Retry-After`` (read with ``int()``: an HTTP date or "1.5" would raise a bare
  ValueError) or ``RateLimit-Reset`` (epoch seconds); that wait is used as is, with no upper bound.
  A response hook installed here on the requests session therefore rewrites those headers first:
  Retry-After becomes whole seconds capped at ``max_retry_after``, an HTTP date is converted,
  unreadable values are dropped (back to the exponential wait), and RateLimit-Reset is folded into
  Retry-After.
- Non-idempotent requests (POST/PUT/DELETE) are retried too, so a write may reach GitLab twice;
  protect_branch and unprotect_branch treat "already there" / "already gone" as success.
- Retries happen only until the response headers arrive: a trace body that breaks mid-stream is
  not retried by python-gitlab and surfaces here as GitLabUnavailable.

Long outages are the caller's business: the worker retries whole tasks with backoff for an hour.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import quote

import gitlab
import gitlab.exceptions as glexc
import requests

from gitlab_hook.gitlab_input import (  # noqa: F401  (re-exported: callers use gitlab_api.X)
    ACCESS_LEVELS,
    GitLabAuthError,
    GitLabError,
    GitLabForbidden,
    GitLabInvalidInput,
    GitLabNotFound,
    GitLabUnavailable,
    RUNNER_JOB_STATUSES,
    _Tail,
    _pid,
    _show,
    clean_trace,
    validate_branch,
    validate_id,
    validate_project,
)

T = TypeVar("T")

# --- Retry-After normalisation ---------------------------------------------------------------


def _retry_after_hook(cap: float) -> Callable[..., requests.Response]:
    """A requests response hook that makes Retry-After safe for python-gitlab's int() and bounded."""

    def hook(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        if response.status_code != 429 and response.status_code < 500:
            return response
        headers = response.headers
        wait: float | None = None
        raw = headers.get("Retry-After")
        if raw is not None:
            raw = raw.strip()
            try:
                wait = float(raw)
            except ValueError:
                try:
                    parsed = email.utils.parsedate_to_datetime(raw)
                    wait = parsed.timestamp() - time.time() if parsed.tzinfo else None
                except (TypeError, ValueError, IndexError):
                    wait = None
        elif headers.get("RateLimit-Reset") is not None:
            try:
                wait = float(headers["RateLimit-Reset"]) - time.time()
            except ValueError:
                wait = None
        headers.pop("Retry-After", None)
        headers.pop("RateLimit-Reset", None)
        if wait is not None and math.isfinite(wait):
            headers["Retry-After"] = str(int(math.ceil(min(max(wait, 0.0), cap))))
        return response

    hook._gitlab_hook_retry_after = True  # type: ignore[attr-defined]
    return hook


# --- the client ------------------------------------------------------------------------------


class GitLabAPI:
    """The few GitLab REST calls the service needs, with typed errors and bounded retries."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 10,
        retries: int = 3,
        session: requests.Session | None = None,
        max_retry_after: float = 30.0,
    ) -> None:
        """Connect lazily to url (the root, not /api/v4); adds the Retry-After hook to session's hooks."""
        if not url or not url.startswith(("http://", "https://")):
            raise GitLabInvalidInput("GitLab URL must start with http:// or https://")
        if not token:
            raise GitLabInvalidInput("GitLab token is empty")
        if retries < 0:
            raise GitLabInvalidInput("retries must be 0 or more")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self._secret = token
        self._own_session = session is None
        self._session = session if session is not None else requests.Session()
        hooks = self._session.hooks.setdefault("response", [])
        hooks[:] = [h for h in hooks if not getattr(h, "_gitlab_hook_retry_after", False)]
        hooks.append(_retry_after_hook(max_retry_after))
        self._gl = gitlab.Gitlab(
            self.url,
            private_token=token,
            timeout=timeout,
            retry_transient_errors=True,
            session=self._session,
            user_agent="gitlab-hook",
        )

    def __repr__(self) -> str:
        return f"GitLabAPI(url={self.url!r}, timeout={self.timeout}, retries={self.retries})"

    def close(self) -> None:
        """Close the HTTP session if this object created it."""
        if self._own_session:
            self._session.close()

    def __enter__(self) -> GitLabAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing --

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one python-gitlab request with our retry budget, mapping its errors to ours."""
        try:
            return fn(*args, max_retries=self.retries, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a typed GitLabError
            raise self._map_error(what, exc) from None

    def _map_error(self, what: str, exc: BaseException) -> GitLabError:
        """Our error for a python-gitlab or requests failure; the token is scrubbed from any text."""
        if isinstance(exc, GitLabError):
            return exc
        if isinstance(exc, glexc.GitlabAuthenticationError):
            return GitLabAuthError(
                f"{what}: GitLab rejected the token (401): check GITLAB_TOKEN is valid and not expired",
                status=401,
            )
        if isinstance(exc, glexc.GitlabError):
            status = exc.response_code
            detail = self._scrub(str(exc.error_message))[:300]
            if status == 401:
                return GitLabAuthError(f"{what}: GitLab rejected the token (401)", status=401)
            if status == 403:
                return GitLabForbidden(
                    f"{what}: GitLab answered 403 ({detail}): the token lacks the scope (api) "
                    "or its user lacks the permission",
                    status=403,
                )
            if status == 404:
                return GitLabNotFound(f"{what}: not found (404: {detail})", status=404)
            if status == 429 or (status is not None and status >= 500):
                return GitLabUnavailable(
                    f"{what}: GitLab answered {status} ({detail}) after {self.retries} retries", status=status
                )
            if isinstance(exc, glexc.GitlabParsingError):
                return GitLabError(f"{what}: GitLab sent an answer that is not valid JSON")
            if isinstance(exc, glexc.RedirectError):
                return GitLabError(f"{what}: GitLab redirected a write request; check GITLAB_URL (https?)")
            return GitLabError(f"{what}: GitLab answered {status} ({detail})", status=status)
        if isinstance(exc, requests.Timeout):
            return GitLabUnavailable(f"{what}: GitLab did not answer within {self.timeout}s ({self.retries} retries)")
        if isinstance(exc, (requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
            return GitLabUnavailable(
                f"{what}: cannot reach GitLab at {self.url} ({type(exc).__name__}, {self.retries} retries)"
            )
        if isinstance(exc, requests.RequestException):
            return GitLabError(f"{what}: request to GitLab failed ({type(exc).__name__})")
        if isinstance(exc, ValueError):
            return GitLabError(f"{what}: GitLab sent an answer we cannot read ({type(exc).__name__})")
        raise exc

    def _scrub(self, text: str) -> str:
        """Text with the token, should GitLab ever echo it, replaced by '***'."""
        return text.replace(self._secret, "***") if self._secret else text

    def _list(self, what: str, path: str, query: dict[str, Any], limit: int) -> list[dict[str, Any]]:
        """Up to limit items of a paginated list, page by page."""
        items: list[dict[str, Any]] = []
        it = self._call(what, self._gl.http_list, path, {**query, "per_page": 100}, iterator=True)
        try:
            for item in it:
                items.append(item)
                if len(items) >= limit:
                    break
        except Exception as exc:  # noqa: BLE001 - a later page failed
            raise self._map_error(what, exc) from None
        return items

    # -- general --

    def version(self) -> str:
        """The GitLab server version (GET /version), e.g. "17.5.1-ee"; proves URL and token work."""
        data = self._call("GET /version", self._gl.http_get, "/version")
        if not isinstance(data, dict) or not isinstance(data.get("version"), str):
            raise GitLabError("GET /version: GitLab sent an unexpected answer")
        return data["version"]

    # -- job logs --

    def job_log_tail(
        self,
        project: int | str,
        job_id: int,
        *,
        max_bytes: int = 256 * 1024,
        lines: int = 200,
        deadline: float | None = 120.0,
    ) -> str:
        """The last lines of a job's log, cleaned for reading; streams so memory stays ~2×max_bytes."""
        project = validate_project(project)
        job_id = validate_id(job_id, "job id")
        if max_bytes <= 0 or lines <= 0:
            raise GitLabInvalidInput("max_bytes and lines must be positive")
        what = f"job {job_id} log"
        path = f"/projects/{_pid(project)}/jobs/{job_id}/trace"
        started = time.monotonic()
        tail = _Tail(max_bytes)
        response = self._call(what, self._gl.http_get, path, streamed=True, raw=True)
        try:
            with response:
                for chunk in _iter_chunks(response):
                    tail.feed(chunk)
                    if deadline is not None and time.monotonic() - started > deadline:
                        raise GitLabUnavailable(
                            f"{what}: download took longer than {deadline:g}s ({tail.total} bytes read)"
                        )
        except GitLabError:
            raise
        except Exception as exc:  # noqa: BLE001 - the stream broke midway
            raise self._map_error(what, exc) from None
        text = clean_trace(tail.text())
        return "\n".join(text.split("\n")[-lines:]) if text else ""

    # -- runners --

    def runner(self, runner_id: int) -> dict[str, Any]:
        """A runner's details (GET /runners/:id), including its projects and paused state."""
        runner_id = validate_id(runner_id, "runner id")
        data = self._call(f"runner {runner_id}", self._gl.http_get, f"/runners/{runner_id}")
        return _as_dict(data, f"runner {runner_id}")

    def runner_jobs(self, runner_id: int, status: str = "running", *, limit: int = 1000) -> list[dict[str, Any]]:
        """Jobs of a runner with the given status (GET /runners/:id/jobs?status=…), newest first."""
        runner_id = validate_id(runner_id, "runner id")
        if status not in RUNNER_JOB_STATUSES:
            raise GitLabInvalidInput(f"status must be one of {sorted(RUNNER_JOB_STATUSES)}, got {_show(status)}")
        return self._list(
            f"runner {runner_id} jobs",
            f"/runners/{runner_id}/jobs",
            {"status": status, "order_by": "id", "sort": "desc"},
            limit,
        )

    def pending_jobs_for_runner(self, runner_id: int, *, max_projects: int = 50) -> int:
        """Best effort: pending jobs in the runner's projects that its tags let it pick up.

        Only project runners list their projects; for instance or group runners this is 0.
        A job counts when its tags are a subset of the runner's and, if untagged, the runner
        runs untagged jobs. Projects that vanished (404) are skipped.
        """
        info = self.runner(runner_id)
        runner_tags = set(info.get("tag_list") or [])
        run_untagged = info.get("run_untagged", True) is not False
        project_ids: list[int] = []
        for p in info.get("projects") or []:
            pid = p.get("id") if isinstance(p, dict) else None
            if isinstance(pid, int) and pid not in project_ids:
                project_ids.append(pid)
        count = 0
        for pid in project_ids[:max_projects]:
            try:
                jobs = self._list(
                    f"project {pid} pending jobs", f"/projects/{pid}/jobs", {"scope[]": ["pending"]}, 10_000
                )
            except GitLabNotFound:
                continue
            for job in jobs:
                if job.get("status", "pending") != "pending":
                    continue
                tags = set(job.get("tag_list") or [])
                if tags <= runner_tags and (tags or run_untagged):
                    count += 1
        return count

    def pause_runner(self, runner_id: int) -> dict[str, Any]:
        """Stop a runner from picking up new jobs (PUT /runners/:id paused=true); returns the runner."""
        return self._set_paused(runner_id, True)

    def unpause_runner(self, runner_id: int) -> dict[str, Any]:
        """Let a runner pick up jobs again (PUT /runners/:id paused=false); returns the runner."""
        return self._set_paused(runner_id, False)

    def _set_paused(self, runner_id: int, paused: bool) -> dict[str, Any]:
        runner_id = validate_id(runner_id, "runner id")
        what = f"{'pause' if paused else 'unpause'} runner {runner_id}"
        data = self._call(what, self._gl.http_put, f"/runners/{runner_id}", post_data={"paused": paused})
        return _as_dict(data, what)

    # -- branches --

    def protect_branch(
        self,
        project: int | str,
        branch: str,
        push_level: str | int = "maintainer",
        merge_level: str | int = "maintainer",
    ) -> dict[str, Any]:
        """Protect a branch (POST /projects/:id/protected_branches); if already protected, return the rule as is."""
        project = validate_project(project)
        branch = validate_branch(branch)
        body = {"name": branch, "push_access_level": _level(push_level), "merge_access_level": _level(merge_level)}
        what = f"protect branch {branch!r} in {project}"
        try:
            data = self._call(what, self._gl.http_post, f"/projects/{_pid(project)}/protected_branches", post_data=body)
        except GitLabError as exc:
            if exc.status != 409:
                raise
            data = self._call(
                what, self._gl.http_get, f"/projects/{_pid(project)}/protected_branches/{quote(branch, safe='')}"
            )
        return _as_dict(data, what)

    def unprotect_branch(self, project: int | str, branch: str) -> bool:
        """Remove a branch's protection (DELETE …/protected_branches/:name); False if it was not protected."""
        project = validate_project(project)
        branch = validate_branch(branch)
        what = f"unprotect branch {branch!r} in {project}"
        path = f"/projects/{_pid(project)}/protected_branches/{quote(branch, safe='')}"
        try:
            self._call(what, self._gl.http_delete, path)
        except GitLabNotFound:
            return False
        return True

    def protected_branches(self, project: int | str) -> list[dict[str, Any]]:
        """The project's protected branch rules (GET /projects/:id/protected_branches)."""
        project = validate_project(project)
        return self._list(
            f"protected branches of {project}", f"/projects/{_pid(project)}/protected_branches", {}, 10_000
        )

    # -- hooks --

    def project_hooks(self, project: int | str) -> list[dict[str, Any]]:
        """The project's webhooks (GET /projects/:id/hooks), with alert_status and disabled_until."""
        project = validate_project(project)
        return self._list(f"hooks of {project}", f"/projects/{_pid(project)}/hooks", {}, 10_000)


def _iter_chunks(response: requests.Response, size: int = 64 * 1024) -> Iterator[bytes]:
    """The body of a streamed response in chunks."""
    for chunk in response.iter_content(chunk_size=size):
        if chunk:
            yield chunk


def _level(value: str | int) -> int:
    """A GitLab access level number from a name ("maintainer") or a number (40)."""
    if isinstance(value, bool):
        raise GitLabInvalidInput("access level must be a name or a number")
    if isinstance(value, int):
        if value in ACCESS_LEVELS.values():
            return value
    elif isinstance(value, str) and value.strip().lower() in ACCESS_LEVELS:
        return ACCESS_LEVELS[value.strip().lower()]
    raise GitLabInvalidInput(f"access level must be one of {sorted(ACCESS_LEVELS)} or 0/30/40/60, got {_show(value)}")


def _as_dict(data: Any, what: str) -> dict[str, Any]:
    """The JSON object GitLab answered, or GitLabError when it is something else."""
    if not isinstance(data, dict):
        raise GitLabError(f"{what}: GitLab sent an unexpected answer")
    return data
