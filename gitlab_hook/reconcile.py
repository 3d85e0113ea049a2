"""Reconciliation, a periodic chore: what webhooks and our own records missed, found and told once.

Every ``check()``:

- **Lost webhooks.** A runner rule's VM is STOPPED while its GitLab runners have pending jobs
  they could take: start it (ledger cause ``reconcile``). GitLab does not redeliver a webhook that
  failed, so without this the job would wait until the next push.
- **Outside changes.** The ledger says the VM is on but it is STOPPED (stopped in the console, by
  ``yc``, or preempted): recorded as ``off``/``outside`` and told. Being recorded, it is told once.
  A VM found RUNNING while the ledger says off is recorded as ``on``/``outside`` too.
- **Starts that never got to RUNNING.** A start progress record (``start:…`` in VmState, written
  by every start path) older than ``stale_start_after`` with neither ``running_told`` nor
  ``failure_told``: the handler died on the way. If the VM is STOPPED it is started again (once: a
  retry that also dies is only reported), otherwise what it is now is told. Each record is
  handled once.
- **Webhooks GitLab disabled.** For the rules' ``projects`` that are plain paths (not globs), our
  hook (URL containing ``/gitlab/webhook``) that GitLab marks ``temporarily_disabled`` or
  ``disabled`` (or whose ``disabled_until`` is in the future) is told, once per state change,
  and once more when it works again.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import urlsplit

from gitlab_hook.effects import TransientError
from gitlab_hook.gitlab_api import GitLabAPI, GitLabError
from gitlab_hook.ledger import Ledger
from gitlab_hook.memos import AnyMemos, memos_for
from gitlab_hook.power import PowerControl, duration_text
from gitlab_hook.rules import Rules, RunnerRule
from gitlab_hook.telegram import Notifier, TelegramSendError, escape
from gitlab_hook.vm_state import VmState
from gitlab_hook.yandex import ComputeClient, NotFound, YandexError
from gitlab_hook.yandex.compute import RUNNING, STOPPED

log = logging.getLogger(__name__)

GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class ReconcilePolicy:
    """What reconciliation looks at (seconds)."""

    stale_start_after: float = 600.0  # a start not RUNNING after this long is looked into
    horizon: float = 86400.0  # older start records are history, not news
    webhook_path: str = "/gitlab/webhook"  # our hooks are the ones whose URL contains this


def watched_projects(rules: Rules) -> list[str]:
    """The runner rules' projects that name one project (globs cannot be asked for hooks)."""
    seen: list[str] = []
    for r in rules.runners:
        for p in r.projects:
            if not GLOB_CHARS & set(p) and p not in seen:
                seen.append(p)
    return seen


def hook_state(hook: dict[str, Any], now: float) -> tuple[str, float | None]:
    """('ok' | 'temporarily_disabled' | 'disabled', disabled_until as epoch or None) of a GitLab hook."""
    until = _epoch(hook.get("disabled_until"))
    status = hook.get("alert_status")
    if status == "disabled":
        return "disabled", until
    if status == "temporarily_disabled" or (until is not None and until > now):
        return "temporarily_disabled", until
    return "ok", until


def _epoch(value: Any) -> float | None:
    """Epoch seconds of a GitLab ISO timestamp, or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def _safe_url(url: str) -> str:
    """A hook URL without credentials or query (either may hold a secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def progress_items(state: Any, prefix: str, after: float, before: float) -> list[tuple[str, dict[str, Any]]]:
    """Progress records whose key starts with ``prefix``, last updated in (after, before).

    The store's own ``progress_items`` when it has one (Redis); else read from the SQLite VmState's
    table (read only).
    """
    if hasattr(state, "progress_items"):
        return list(state.progress_items(prefix, updated_after=after, updated_before=before))
    rows = state.db.conn().execute(
        "select key, data from vm_progress where substr(key, 1, ?) = ? and updated > ? and updated < ? "
        "order by updated", (len(prefix), prefix, after, before)).fetchall()
    return [(key, json.loads(data)) for key, data in rows]


class Reconciler:
    """The reconciliation chore: ``check()`` every ``runner_check_interval``; handed its clients."""

    def __init__(self, compute: Callable[[], ComputeClient], notifier: Notifier, state: VmState, ledger: Ledger, *,
                 gitlab: Callable[[], GitLabAPI] | None, rules: Rules, power: PowerControl,
                 memos: AnyMemos | None = None, clock: Callable[[], float] = time.time,
                 policy: ReconcilePolicy = ReconcilePolicy()):
        self.compute, self.notifier, self.state, self.ledger = compute, notifier, state, ledger
        self.gitlab, self.rules, self.power, self.clock, self.policy = gitlab, rules, power, clock, policy
        self.memos = memos or memos_for(state, clock=clock)

    def check(self, now: float | None = None) -> list[str]:
        """One round: VMs against the ledger and GitLab, stale starts, disabled hooks; one line per finding."""
        now = self.clock() if now is None else now
        out: list[str] = []
        started: set[str] = set()
        for rule in self.rules.runners:
            out.extend(self._guard(rule.vm, lambda r=rule: self._check_vm(r, now, started)))
        out.extend(self._guard("starts", lambda: self._stale_starts(now, started)))
        out.extend(self._guard("hooks", lambda: self._hooks(now)))
        for line in out:
            log.info("reconcile: %s", line)
        return out

    def _guard(self, what: str, work: Callable[[], list[str]]) -> list[str]:
        """Run one part of the check; an outside failure becomes a line, not an exception."""
        try:
            return work()
        except YandexError as exc:
            return [f"{what}: Yandex Cloud did not answer ({exc})"]
        except TelegramSendError as exc:
            return [f"{what}: Telegram failed ({exc})"]
        except TransientError as exc:
            return [f"{what}: {exc}"]

    # --- VMs ----------------------------------------------------------------------------------

    def _busy(self, vm: str) -> str | None:
        """Who holds a power or start lock of the VM (a change in flight is not an outside change)."""
        for lock in (f"power:{vm}", f"start:{vm}"):
            holder = self.state.holder(lock)
            if holder:
                return f"{lock} held by {holder}"
        return None

    def _check_vm(self, rule: RunnerRule, now: float, started: set[str]) -> list[str]:
        """One runner VM: outside changes against the ledger, then pending jobs for a STOPPED VM."""
        vm = rule.vm
        try:
            inst = self.compute().find_instance(vm)
        except NotFound:
            return [f"{vm}: no such VM in the folder"]
        busy = self._busy(vm)
        if busy:
            return [f"{vm}: {busy}; looked at next time"]
        out: list[str] = []
        last = self.ledger.last(vm)
        if inst.status == STOPPED and last and last[0] == "on":
            how = ("preempted by Yandex Cloud or stopped outside gitlab-hook" if inst.preemptible
                   else "stopped outside gitlab-hook (console, yc), or its start failed")
            self.ledger.record(vm, "off", "outside", how)
            self.notifier.send_html(
                f"⚠️ <b>{escape(vm)}</b> is STOPPED, but gitlab-hook last switched it on "
                f"({escape(last[1])}, {duration_text(now - last[2])} ago): {escape(how)}.")
            out.append(f"{vm}: found STOPPED, ledger said on: recorded as outside")
        elif inst.status == RUNNING and (last is None or last[0] == "off"):
            self.ledger.record(vm, "on", "outside", "found RUNNING")
            if last is not None:
                self.notifier.send_html(f"ℹ️ <b>{escape(vm)}</b> was started outside gitlab-hook; "
                                        "the idle stop watches it from now on.")
            out.append(f"{vm}: found RUNNING, ledger said off: recorded as outside")
        if inst.status == STOPPED and rule.gitlab_runner_ids and self.gitlab is not None:
            try:
                gl = self.gitlab()
                pending = {rid: gl.pending_jobs_for_runner(rid) for rid in rule.gitlab_runner_ids}
            except GitLabError as exc:
                return [*out, f"{vm}: cannot ask GitLab for pending jobs ({exc})"]
            n = sum(pending.values())
            if n:
                runners = ", ".join(str(r) for r, c in pending.items() if c)
                effect = self.power.start_vm(
                    vm, cause="reconcile", detail=f"{n} pending job(s) on runner {runners}",
                    key=f"start:reconcile:{vm}:{now:.0f}",
                    why_html=f"{n} pending job{'s' if n != 1 else ''} waited for runner {runners} "
                             "while it was STOPPED: a lost webhook?")
                started.add(vm)
                out.append(f"{vm}: {n} pending job(s) and STOPPED: {effect.summary}")
        return out

    # --- starts that never got there ----------------------------------------------------------

    def _stale_starts(self, now: float, started: set[str]) -> list[str]:
        """Start records older than stale_start_after that got neither RUNNING nor a failure told."""
        rows = progress_items(self.state, "start:", now - self.policy.horizon, now - self.policy.stale_start_after)
        out: list[str] = []
        for key, d in rows:
            if (not d.get("operation_id") or d.get("running_told") or d.get("failure_told")
                    or d.get("finished") or d.get("reconciled")):
                continue
            vm = d.get("vm", "?")
            if self._busy(vm):
                continue
            out.append(self._stale_start(key, d, now, started))
        return out

    def _stale_start(self, key: str, d: dict[str, Any], now: float, started: set[str]) -> str:
        """Handle one stale start once: RUNNING after all, retried (once), or reported."""
        vm = d["vm"]
        ago = duration_text(now - float(d.get("started_at") or now))
        cause = d.get("cause") or "a push"
        self.state.save_progress(key, reconciled=True)
        try:
            status = self.compute().get_instance(d["instance_id"]).status
        except NotFound:
            status = "gone"
        if status == RUNNING:
            self.power.unpause_if_we_paused(vm)
            self.notifier.send_html(f"ℹ️ <b>{escape(vm)}</b>: a start ({escape(cause)}) {ago} ago was never "
                                    "confirmed, but the VM is RUNNING.")
            return f"{vm}: stale start {key} is RUNNING after all"
        if status == STOPPED and not d.get("reconcile_retry") and vm not in started:
            new_key = f"start:reconcile:{vm}:{now:.0f}"
            self.state.save_progress(new_key, reconcile_retry=True)
            effect = self.power.start_vm(vm, cause="reconcile", detail=f"retry of {key}", key=new_key,
                                         why_html=f"again: a start ({escape(cause)}) {ago} ago never reached RUNNING")
            started.add(vm)
            return f"{vm}: stale start {key} retried: {effect.summary}"
        if vm in started:
            return f"{vm}: stale start {key}: already started again this round"
        self.notifier.send_html(f"⚠️ <b>{escape(vm)}</b>: a start ({escape(cause)}) {ago} ago never reached "
                                f"RUNNING; it is {status}. Look at it in the Yandex Cloud console, or "
                                f"try /vm_start {escape(vm)}.")
        return f"{vm}: stale start {key} reported ({status})"

    # --- webhooks ---------------------------------------------------------------------------------

    def _hooks(self, now: float) -> list[str]:
        """Our webhooks on the watched projects, told once per change of their state."""
        if self.gitlab is None:
            return []
        out: list[str] = []
        for project in watched_projects(self.rules):
            try:
                hooks = self.gitlab().project_hooks(project)
            except GitLabError as exc:
                out.append(f"hooks of {project}: cannot ask GitLab ({exc})")
                continue
            for hook in hooks:
                url = str(hook.get("url") or "")
                if self.policy.webhook_path not in url:
                    continue
                state, until = hook_state(hook, now)
                old = self.memos.swap(f"hook:{project}:{hook.get('id')}", "state", state)
                if old == state or (old is None and state == "ok"):
                    continue
                self.notifier.send_html(self._hook_text(project, _safe_url(url), state, until))
                out.append(f"hook {hook.get('id')} of {project}: {old or 'unknown'} → {state}")
        return out

    @staticmethod
    def _hook_text(project: str, url: str, state: str, until: float | None) -> str:
        """The chat message for a hook state."""
        where = f"our webhook on <b>{escape(project)}</b> ({escape(url)})"
        if state == "ok":
            return f"✅ GitLab delivers to {where} again."
        if state == "disabled":
            return (f"🚫 GitLab has disabled {where} for good after repeated failed deliveries: pushes no "
                    "longer start the runner. Re-enable it in the project's Settings → Webhooks, and look at "
                    "gitlab-hook's logs for why deliveries failed.")
        when = (f" until {datetime.fromtimestamp(until, tz=timezone.utc):%Y-%m-%d %H:%M} UTC"
                if until is not None else "")
        return (f"⚠️ GitLab has paused {where}{when} after repeated failed deliveries: pushes do not start "
                "the runner meanwhile (reconciliation still starts it for pending jobs). Look at "
                "gitlab-hook's logs for why deliveries failed.")
