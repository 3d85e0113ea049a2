"""The failed-migration alert, composed: a header read in two seconds, the last lines, the full file. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gitlab_hook.telegram_format import MAX_TEXT, escape, link, to_plain, utf16_len

# Room kept for Telegram's own counting quirks and the "…" line.
SAFETY = 96


@dataclass
class Findings:
    """What the worker found out about one failed migration job (already redacted)."""

    namespace: str | None = None
    pod: str | None = None
    how_chosen: str = ""
    container: str | None = None
    container_state: str = ""  # e.g. "terminated: OOMKilled, exit 137"
    restarts: int = 0
    current_log: str = ""
    previous_log: str = ""
    log_truncated: bool = False
    events: list[str] = field(default_factory=list)
    job_log: str = ""
    notes: list[str] = field(default_factory=list)  # problems met on the way, said plainly


def _job_url(p: dict[str, Any]) -> str | None:
    base = (p.get("web_url") or "").rstrip("/")
    return f"{base}/-/jobs/{p['job_id']}" if base and p.get("job_id") else None


def _pipeline_url(p: dict[str, Any]) -> str | None:
    if p.get("pipeline_url"):
        return p["pipeline_url"]
    base = (p.get("web_url") or "").rstrip("/")
    return f"{base}/-/pipelines/{p['pipeline_id']}" if base and p.get("pipeline_id") else None


def header(p: dict[str, Any], f: Findings) -> str:
    """The HTML header: project, branch, job, pipeline, commit, author, reason, pod."""
    job_text = f"{p.get('job_name', 'job')} #{p.get('job_id')}"
    job_url = _job_url(p)
    lines = [f"❌ <b>Migration failed</b>: {escape(str(p.get('project') or '?'))} · "
             f"<code>{escape(str(p.get('branch') or '?'))}</code>"]
    job = link(job_url, job_text) if job_url else escape(job_text)
    reason = p.get("failure_reason") or "unknown"
    lines.append(f"Job: {job} · reason: {escape(str(reason))}"
                 + (" · allowed to fail" if p.get("allow_failure") else ""))
    bits = []
    if p.get("pipeline_id"):
        url = _pipeline_url(p)
        bits.append("Pipeline " + (link(url, f"#{p['pipeline_id']}") if url else f"#{p['pipeline_id']}"))
    who = f"by @{escape(str(p['user']))}" if p.get("user") else ""
    if p.get("sha"):
        bits.append(f"commit <code>{escape(str(p['sha'])[:8])}</code> {who}".rstrip())
    elif who:
        bits.append(who)
    if bits:
        lines.append(" · ".join(bits))
    if f.pod:
        pod = f"Pod: <code>{escape(f.namespace or '?')}/{escape(f.pod)}</code>"
        extra = [f"container {escape(f.container or '?')}"]
        if f.restarts:
            extra.append(f"restarts {f.restarts}")
        if f.container_state:
            extra.append(escape(f.container_state))
        lines.append(f"{pod} ({', '.join(extra)})")
        if f.how_chosen:
            lines.append(f"<i>{escape(f.how_chosen)}</i>")
    for note in f.notes:
        lines.append(f"⚠️ {escape(note)}")
    return "\n".join(lines)


def _best_log(f: Findings) -> tuple[str, str]:
    """Which log to quote in the message, with its label."""
    if f.current_log.strip():
        return "pod log", f.current_log
    if f.previous_log.strip():
        return "previous container's log", f.previous_log
    if f.events:
        return "pod events", "\n".join(f.events)
    if f.job_log.strip():
        return "GitLab job log", f.job_log
    return "", ""


def tail_that_fits(text: str, budget: int) -> str:
    """The last whole lines of ``text`` whose length (as Telegram counts) fits ``budget``."""
    out: list[str] = []
    used = 0
    for line in reversed(text.rstrip("\n").split("\n")):
        cost = utf16_len(line) + 1
        if used + cost > budget:
            if not out:  # one enormous line: keep its end
                out.append("…" + line[-max(0, budget - 2):])
            break
        out.append(line)
        used += cost
    return "\n".join(reversed(out))


def message(p: dict[str, Any], f: Findings, limit: int = MAX_TEXT) -> str:
    """Header plus the last lines that fit in one message, inside an escaped <pre> block."""
    head = header(p, f)
    label, log = _best_log(f)
    if not log:
        return head + "\n<i>no logs were found</i>"
    caption = f"\n<b>Last lines of the {label}</b> (full log attached):\n"
    # Telegram counts the text after entity parsing: tags cost nothing, escapes count as one.
    visible_head = utf16_len(to_plain(head + caption))
    quoted = tail_that_fits(log, max(0, limit - visible_head - SAFETY))
    return f"{head}{caption}<pre>{escape(quoted)}</pre>"


def log_sections(f: Findings) -> list[str]:
    """The pod's logs and events as titled sections of a text file."""
    parts = []
    if f.previous_log:
        parts.append("===== previous container's log =====\n" + f.previous_log)
    if f.current_log:
        cut = " (cut to the last part: the whole log was larger)" if f.log_truncated else ""
        parts.append(f"===== pod log{cut} =====\n" + f.current_log)
    if f.events:
        parts.append("===== pod events =====\n" + "\n".join(f.events))
    return parts


def document(p: dict[str, Any], f: Findings) -> bytes:
    """The whole bounded record as a text file: pod logs, state, events, GitLab job log."""
    parts = [f"Failed migration job {p.get('job_name')} #{p.get('job_id')} of {p.get('project')} "
             f"on {p.get('branch')} (commit {str(p.get('sha') or '')[:8]}, pipeline {p.get('pipeline_id')})"]
    if f.pod:
        parts.append(f"Pod {f.namespace}/{f.pod}, container {f.container}: {f.container_state or 'no state'}; "
                     f"restarts {f.restarts}. {f.how_chosen}")
    for note in f.notes:
        parts.append(f"Note: {note}")
    parts.extend(log_sections(f))
    if f.job_log:
        parts.append("===== GitLab job log (tail) =====\n" + f.job_log)
    return ("\n\n".join(parts) + "\n").encode("utf-8")
