"""GitLab API input and output, no I/O: typed errors, validated ids and branch names, cleaned job traces."""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

ACCESS_LEVELS = {"no_access": 0, "no one": 0, "none": 0, "developer": 30, "maintainer": 40, "admin": 60}
# Statuses GET /runners/:id/jobs accepts (https://docs.gitlab.com/api/runners/#list-jobs-processed-by-a-runner).
RUNNER_JOB_STATUSES = frozenset({"running", "success", "failed", "canceled"})

_PROJECT_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}")
_FORBIDDEN_REF_CHARS = set(" ~^:?*[\\")
MAX_BRANCH_BYTES = 255

# GitLab's collapsible sections: section_start:<epoch>:<name>[options]\r\x1b[0K (and section_end).
_SECTION = re.compile(r"section_(?:start|end):[0-9]{1,20}+:[A-Za-z0-9_.\-]{1,200}+(?:\[[^\]\r\n]{0,200}+\])?\r?(?:\x1b\[0?K)?")
# ANSI escapes: CSI (colours, erase line), OSC (titles, links; BEL or ST terminated), and 2-byte ones.
_ANSI = re.compile(r"\x1b\[[0-?]{0,64}+[ -/]{0,8}+[@-~]|\x1b\][^\x07\x1b\r\n]{0,1024}+(?:\x07|\x1b\\)|\x1b[@-_]?")
# Control characters left after that, except tab and newline (\r is handled line by line).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]+")


class GitLabError(Exception):
    """Base of every error raised here; the text never holds the token."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class GitLabAuthError(GitLabError):
    """GitLab refused the token (401): missing, wrong, expired or revoked."""


class GitLabForbidden(GitLabError):
    """GitLab answered 403: the token lacks the scope or the user the permission."""


class GitLabNotFound(GitLabError):
    """GitLab answered 404: no such project, job, runner or branch (or no right to see it)."""


class GitLabUnavailable(GitLabError):
    """GitLab did not answer usefully after retries: 429, 5xx, timeout or connection failure."""


class GitLabInvalidInput(GitLabError, ValueError):
    """An id or branch name refused before it reached a URL."""


# --- validation ------------------------------------------------------------------------------


def validate_id(value: object, what: str = "id") -> int:
    """A positive integer id (int, or a string of digits), else GitLabInvalidInput."""
    if isinstance(value, bool):
        raise GitLabInvalidInput(f"{what} must be a positive integer, not a boolean")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        number = int(value)
    else:
        raise GitLabInvalidInput(f"{what} must be a positive integer, got {_show(value)}")
    if not 0 < number < 2**63:
        raise GitLabInvalidInput(f"{what} must be a positive integer, got {number}")
    return number


def validate_project(value: object) -> int | str:
    """A project id, or a "group/sub/name" path of [A-Za-z0-9_.-] segments, else GitLabInvalidInput."""
    if isinstance(value, int) or (isinstance(value, str) and value.isascii() and value.isdigit()):
        return validate_id(value, "project id")
    if not isinstance(value, str):
        raise GitLabInvalidInput(f"project must be an id or a group/name path, got {_show(value)}")
    segments = value.split("/")
    if len(value) > 1024 or len(segments) < 2 or len(segments) > 21:
        raise GitLabInvalidInput(f"project {_show(value)} is not a group/name path")
    for seg in segments:
        if not _PROJECT_SEGMENT.fullmatch(seg) or ".." in seg or seg.endswith((".", ".git", ".atom")):
            raise GitLabInvalidInput(f"project {_show(value)} has an invalid path segment {_show(seg)}")
    return value


def validate_branch(value: object) -> str:
    """A branch name that git would accept (check-ref-format rules), else GitLabInvalidInput."""
    if not isinstance(value, str) or not value:
        raise GitLabInvalidInput(f"branch must be a non-empty string, got {_show(value)}")
    problem = _branch_problem(value)
    if problem:
        raise GitLabInvalidInput(f"branch {_show(value)} is refused: {problem}")
    return value


def _branch_problem(name: str) -> str | None:
    """What is wrong with a branch name under git's ref rules (plus a few of ours), or None."""
    if len(name.encode("utf-8", "surrogatepass")) > MAX_BRANCH_BYTES:
        return f"longer than {MAX_BRANCH_BYTES} bytes"
    for ch in name:
        if ord(ch) < 0x20 or ord(ch) == 0x7F or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp", "Zs"):
            return "contains a control, format or space character"
        if ch in _FORBIDDEN_REF_CHARS:
            return f"contains {ch!r}"
    if ".." in name:
        return "contains '..'"
    if "@{" in name or name == "@":
        return "contains '@{' or is '@'"
    if name.startswith(("/", "-")) or name.endswith(("/", ".")) or "//" in name:
        return "starts with '/' or '-', ends with '/' or '.', or contains '//'"
    if name == "HEAD":
        return "is 'HEAD'"
    if name.startswith("refs/"):
        return "is a full ref: give the branch name without refs/heads/"
    for component in name.split("/"):
        if component.startswith(".") or component.endswith(".lock"):
            return "a path component starts with '.' or ends with '.lock'"
    return None


def _show(value: object, limit: int = 60) -> str:
    """A short, single-line, escaped rendering of untrusted input for error texts."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _pid(project: int | str) -> str:
    """A project id or path as one URL path segment ("group/app" → "group%2Fapp")."""
    return quote(str(project), safe="")


# --- trace cleaning --------------------------------------------------------------------------


def clean_trace(text: str) -> str:
    """Drop GitLab section markers, ANSI escapes and carriage-return overwrites from a job log."""
    out: list[str] = []
    for line in text.split("\n"):
        had_marker = "section_" in line
        if had_marker:
            line = _SECTION.sub("", line)
        if "\x1b" in line:
            line = _ANSI.sub("", line)
        if "\r" in line:
            parts = [p for p in line.split("\r") if p]
            line = parts[-1] if parts else ""
        line = _CONTROL.sub("", line)
        if had_marker and not line.strip():
            continue  # a line that held only section_end / section_start markers
        out.append(line)
    while out and not out[-1].strip():
        out.pop()
    return "\n".join(out)


class _Tail:
    """The last max_bytes of a byte stream, in bounded memory."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.buf = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        """Append a chunk, dropping what falls out of the window now and then (amortised O(1))."""
        self.buf += chunk
        self.total += len(chunk)
        if len(self.buf) > 2 * self.max_bytes:
            del self.buf[: len(self.buf) - self.max_bytes]

    def text(self) -> str:
        """The window decoded; when the stream was cut, without its partial first line."""
        if len(self.buf) > self.max_bytes:
            del self.buf[: len(self.buf) - self.max_bytes]
        data = bytes(self.buf)
        if self.total > len(data):
            newline = data.find(b"\n")
            if 0 <= newline < len(data) - 1:
                data = data[newline + 1 :]
        return data.decode("utf-8", errors="replace")
