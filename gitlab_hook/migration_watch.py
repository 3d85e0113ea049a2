"""Failed migration job → the right pod's logs, masked, in Telegram; once per job, resumable."""

from __future__ import annotations

import logging
from typing import Any, Callable

from gitlab_hook import migration_alert
from gitlab_hook.effects import Context, Effect, TransientError
from gitlab_hook.migration_alert import Findings
from gitlab_hook.redaction import Redactor
from gitlab_hook.rules import MigrationsRule
from gitlab_hook.telegram import Notifier, TelegramFormatError, TelegramRetryAfterError, TelegramSendError
from gitlab_hook.telegram_format import to_plain
from gitlab_hook.vm_state import VmState

log = logging.getLogger(__name__)

LOG_LIMIT_BYTES = 2 * 1024 * 1024  # the most of a pod log that is read and attached
JOB_LOG_LIMIT_BYTES = 256 * 1024
UNREACHABLE_RETRIES = 4  # attempts before an unreachable cluster becomes a note in the alert


def namespace_for(rule: MigrationsRule, branch: str | None) -> str | None:
    """The namespace a branch deploys to: ``namespaces[branch]``, else ``default_namespace``."""
    if branch and branch in rule.namespaces:
        return rule.namespaces[branch]
    return rule.default_namespace


def describe_state(c: Any) -> str:
    """'terminated: OOMKilled, exit 137' from a ContainerState."""
    if c is None:
        return ""
    bits = [c.state]
    if c.reason:
        bits.append(c.reason)
    if c.exit_code is not None:
        bits.append(f"exit {c.exit_code}")
    text = bits[0] + (": " + ", ".join(bits[1:]) if len(bits) > 1 else "")
    if c.last_terminated_reason:
        text += f"; last run ended {c.last_terminated_reason}"
        if c.last_exit_code is not None:
            text += f" (exit {c.last_exit_code})"
    return text


class MigrationWatch:
    """Gathers what explains a failed migration job and sends the alert, each step once."""

    def __init__(self, rule: MigrationsRule, notifier: Notifier, state: VmState, *,
                 pods: Callable[[], Any] | None = None, gitlab: Callable[[], Any] | None = None,
                 log_limit_bytes: int = LOG_LIMIT_BYTES):
        self.rule, self.notifier, self.state = rule, notifier, state
        self.pods, self.gitlab = pods, gitlab
        self.redactor = Redactor(rule.redact_patterns)
        self.log_limit_bytes = log_limit_bytes

    def report_failure(self, payload: dict[str, Any], ctx: Context) -> Effect:
        """Handler for ``report_migration_failure``: find, mask, compose, send message then file."""
        key = f"migration-alert:{payload.get('job_id')}"
        progress = self.state.progress(key)
        findings = self.gather(payload, ctx)
        text = migration_alert.message(payload, findings)
        try:
            if not progress.get("message_sent"):
                try:
                    self.notifier.send_html(text)
                except TelegramFormatError:
                    # Telegram refused the markup: the plain text still tells the story.
                    log.warning("alert for job %s refused as HTML; sending plain text", payload.get("job_id"))
                    self.notifier.send_plain(to_plain(text))
                progress = self.state.save_progress(key, message_sent=True)
            if not progress.get("document_sent"):
                name = f"migration-job-{payload.get('job_id')}.txt"
                self.notifier.send_document(name, migration_alert.document(payload, findings),
                                            caption_html=f"Full log of job #{payload.get('job_id')}")
                self.state.save_progress(key, document_sent=True)
        except TelegramRetryAfterError as exc:
            raise TransientError(f"Telegram asked to wait {exc.retry_after:.0f}s", exc.retry_after) from None
        except TelegramSendError as exc:
            raise TransientError(f"Telegram: {exc}") from None
        return Effect(f"reported failed migration job #{payload.get('job_id')}"
                      + (f" with pod {findings.pod}" if findings.pod else " without pod logs"))

    def gather(self, payload: dict[str, Any], ctx: Context) -> Findings:
        """Pod logs, container state, events and the job log tail; every problem becomes a note."""
        f = Findings()
        ns = namespace_for(self.rule, payload.get("branch"))
        f.namespace = ns
        if self.pods is None:
            f.notes.append("Kubernetes is not configured: no pod logs (set KUBECONFIG or KUBE_API_URL)")
        elif ns is None:
            f.notes.append(f"no namespace for branch {payload.get('branch')}: set migrations.namespaces "
                           "or migrations.default_namespace")
        else:
            self._pod_findings(payload, ns, f, ctx)
        self._job_log(payload, f)
        return f

    def _pod_findings(self, payload: dict[str, Any], ns: str, f: Findings, ctx: Context) -> None:
        from gitlab_hook import kube

        try:
            found = self.pods().collect(
                ns, self.rule.pod_name_regex, self.rule.container, tail_lines=self.rule.tail_lines,
                limit_bytes=self.log_limit_bytes, sha=payload.get("sha") or None,
                pipeline_id=payload.get("pipeline_id"), job_id=payload.get("job_id"))
        except kube.KubeUnreachable as exc:
            if ctx.attempt < UNREACHABLE_RETRIES:
                raise TransientError(f"Kubernetes API unreachable: {exc}") from None
            f.notes.append(f"Kubernetes API unreachable after {ctx.attempt} attempts: {exc}")
            return
        except kube.KubeError as exc:
            f.notes.append(str(exc))
            return
        except ValueError as exc:  # an invalid name from the rules or the payload
            f.notes.append(f"cannot look for the pod: {exc}")
            return
        red = self.redactor.redact
        f.pod = found.pod.name
        f.how_chosen = found.pod.how_chosen
        f.container = self.rule.container
        f.container_state = describe_state(found.container)
        f.restarts = found.container.restart_count if found.container else 0
        if found.current is not None:
            f.current_log = red(found.current.text)
            f.log_truncated = found.current.truncated
        if found.previous is not None:
            f.previous_log = red(found.previous.text)
        f.events = [red(f"{e.type} {e.reason}: {e.message}" + (f" (x{e.count})" if e.count and e.count > 1 else ""))
                    for e in found.events]
        f.notes.extend(red(n) for n in found.notes)

    def _job_log(self, payload: dict[str, Any], f: Findings) -> None:
        project = payload.get("project_id") or payload.get("project")
        if self.gitlab is None or not project or not payload.get("job_id"):
            return
        try:
            tail = self.gitlab().job_log_tail(project, int(payload["job_id"]), max_bytes=JOB_LOG_LIMIT_BYTES,
                                              lines=self.rule.tail_lines)
        except Exception as exc:  # the job log is a bonus: its failure is a note, not a lost alert
            f.notes.append(f"GitLab job log unavailable: {exc}")
            return
        f.job_log = self.redactor.redact(tail)
