"""Manual power changes (vm_start, vm_stop) as queued-action handlers, and the helpers the chores share.

Locks (VmState, with expiry, shared by every worker thread and process):

- ``start:{vm}`` is the start path's lock (RunnerControl.ensure_running). Every start taken here
  (manual, window, reconcile) takes it too, so one VM gets one start call at a time.
- ``power:{vm}`` is held by whatever stops or resizes a VM (manual stop, idle stop, resize) and
  by the starts taken here, so two of those never overlap on one VM.

A stop and a push-start: a stop holds ``power:{vm}`` but *not* ``start:{vm}``. A push that arrives
while the VM is STOPPING is therefore not dropped: RunnerControl waits for STOPPED and starts it
again (the push wins, as it should: someone needs the runner). Conversely a stop never begins
while ``start:{vm}`` is held (a start in flight): the manual stop is retried after it, the idle
stop skips that round. The stop is written to the ledger as soon as Compute accepts it, before we
wait, so a start that follows can never be recorded before it. The remaining window (a push that
read RUNNING an instant before our stop request) is covered by the push's pipeline webhook and by
reconciliation (pending jobs + STOPPED VM → start).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from gitlab_hook.effects import Context, Effect, TransientError
from gitlab_hook.gitlab_api import GitLabAPI, GitLabError
from gitlab_hook.idle_stop import RunnerPauses
from gitlab_hook.ledger import Ledger
from gitlab_hook.memos import memos_for
from gitlab_hook.rules import Rules, RunnerRule
from gitlab_hook.telegram import Notifier, TelegramSendError, escape
from gitlab_hook.vm_state import VmState
from gitlab_hook.yandex import (
    ComputeClient,
    FailedPrecondition,
    Instance,
    NotFound,
    OperationFailed,
    OperationTimeout,
    PermissionDenied,
    TokenExpired,
    YandexApiError,
    YandexError,
)
from gitlab_hook.yandex.compute import (
    BROKEN_STATUSES,
    RUNNING,
    STOPPED,
    STOPPING,
    UP_STATUSES,
)

log = logging.getLogger(__name__)

GIB = 2**30


@dataclass(frozen=True)
class PowerPolicy:
    """Timing of power changes (seconds)."""

    lock_ttl: float = 900.0  # longer than the slowest stop/start/resize we wait for
    stop_wait: float = 300.0
    start_wait: float = 300.0
    update_wait: float = 300.0
    poll_interval: float = 1.0
    busy_retry: float = 5.0  # retry a command this soon when another power change holds the VM


def gb_text(memory_bytes: int) -> str:
    """Memory in GB as Yandex counts it, without a needless '.0'."""
    gb = memory_bytes / GIB
    return f"{gb:g}"


def size_text(cores: int, memory_bytes: int, core_fraction: int = 100) -> str:
    """'2 cores / 4 GB', plus ' / 20%' when the core fraction is not 100."""
    text = f"{cores} cores / {gb_text(memory_bytes)} GB"
    return text if core_fraction == 100 else f"{text} / {core_fraction}%"


def duration_text(seconds: float) -> str:
    """'45 s', '30 min', '2 h 5 min'."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    h, m = divmod(s // 60, 60)
    return f"{h} h {m} min" if h and m else f"{h} h" if h else f"{m} min"


def who(payload: dict[str, Any]) -> str:
    """Who asked, for messages and the ledger: '@dev', or 'the console operator'."""
    by = str(payload.get("by") or "").strip()
    if not by:
        return "someone"
    return "the console operator" if by == "console" else by


class Reporter:
    """Progress of one command: edits its message (payload "progress"), or sends new messages.

    Each step is told once: what was told is kept in the command's progress record, so a retry
    after a crash does not repeat it. In edit mode the message shows every step so far.
    """

    def __init__(self, notifier: Notifier, state: VmState, key: str, target: dict[str, Any] | None):
        self.notifier, self.state, self.key, self.target = notifier, state, key, target

    def say(self, step: str, html: str) -> None:
        """Tell one step (HTML) unless it was told before."""
        p = self.state.progress(self.key)
        told = list(p.get("told", []))
        if step in told:
            return
        lines = [*p.get("lines", []), html]
        if not self.target:
            self.notifier.send_html(html)
        elif p.get("edit_failed"):
            self.notifier.send_html(html, chat_id=self.target["chat_id"])
        else:
            try:
                self.notifier.edit_html(self.target["chat_id"], self.target["message_id"], "\n".join(lines))
            except TelegramSendError as exc:
                if exc.retryable:
                    raise
                # The message is gone (deleted, too old): go on with new messages in that chat.
                log.warning("cannot edit the progress message (%s); sending new messages instead", exc)
                self.notifier.send_html(html, chat_id=self.target["chat_id"])
                self.state.save_progress(self.key, edit_failed=True)
        self.state.save_progress(self.key, told=[*told, step], lines=lines)

    def announce(self, html: str) -> None:
        """Tell the alerts chat too when progress is shown in another chat (a private one)."""
        if not self.target or self.target.get("chat_id") == getattr(self.notifier, "chat_id", None):
            return
        p = self.state.progress(self.key)
        if "announce" in p.get("told", []):
            return
        self.notifier.send_html(html)
        self.state.save_progress(self.key, told=[*p.get("told", []), "announce"])


class PowerControl:
    """Manual start and stop of a VM, and the start helper the chores use; handed its clients."""

    def __init__(self, compute: Callable[[], ComputeClient], notifier: Notifier, state: VmState, ledger: Ledger, *,
                 gitlab: Callable[[], GitLabAPI] | None, rules: Rules, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, policy: PowerPolicy = PowerPolicy(),
                 pauses: RunnerPauses | None = None):
        self.compute, self.notifier, self.state, self.ledger = compute, notifier, state, ledger
        self.gitlab, self.rules, self.clock, self.sleep, self.policy = gitlab, rules, clock, sleep, policy
        self.pauses = pauses or RunnerPauses(memos_for(state, clock=clock), gitlab)

    # --- shared helpers ---------------------------------------------------------------------

    def rule(self, vm: str) -> RunnerRule | None:
        """The runner rule of a VM, if it has one."""
        return next((r for r in self.rules.runners if r.vm == vm), None)

    def running_jobs(self, vm: str) -> list[dict[str, Any]] | None:
        """Jobs running on the VM's GitLab runners; None when it has none configured; GitLabError if unknown."""
        rule = self.rule(vm)
        if rule is None or not rule.gitlab_runner_ids or self.gitlab is None:
            return None
        gl = self.gitlab()
        jobs: list[dict[str, Any]] = []
        for rid in rule.gitlab_runner_ids:
            jobs.extend({**j, "_runner": rid} for j in gl.runner_jobs(rid, "running"))
        return jobs

    def unpause_if_we_paused(self, vm: str) -> list[int]:
        """After a start: give back the runners the idle stop paused (never raises on GitLab trouble)."""
        return self.pauses.unpause_if_we_paused(vm)

    def wait_status(self, compute: ComputeClient, instance_id: str, wanted: set[str], timeout: float,
                    renew: Callable[[], None] = lambda: None) -> Instance:
        """Poll the instance until its status is one of ``wanted``; OperationTimeout otherwise."""
        return compute.wait_status(instance_id, wanted, timeout=timeout, poll_interval=self.policy.poll_interval,
                                   on_poll=lambda _: renew())

    def wait_op(self, compute: ComputeClient, op_id: str, timeout: float, renew: Callable[[], None]) -> None:
        """Wait for an Operation; OperationFailed / OperationTimeout when it does not succeed."""
        compute.wait_operation(op_id, timeout=timeout, poll_interval=self.policy.poll_interval,
                               on_poll=lambda op: renew())

    def start_vm(self, vm: str, *, cause: str, detail: str, key: str, why_html: str,
                 done_html: str | None = None, reporter: Reporter | None = None,
                 renew: Callable[[], None] = lambda: None, wait_for_locks: bool = False) -> Effect:
        """Start a VM once (locks ``power:`` and ``start:``), record it, wait for RUNNING, unpause runners.

        ``key`` names the progress record (``start:…``, the start path's format, so reconciliation
        notices a start that never got to RUNNING). Busy locks: TransientError when
        ``wait_for_locks`` (a queued command is retried), else an Effect saying so (a chore looks again).
        """
        owner = f"power:{key}"
        rep = reporter or Reporter(self.notifier, self.state, key, None)
        for lock in (f"power:{vm}", f"start:{vm}"):
            if not self.state.try_lock(lock, owner, self.policy.lock_ttl):
                holder = self.state.holder(lock)
                self.state.unlock(f"power:{vm}", owner)
                if wait_for_locks:
                    raise TransientError(f"{vm}: busy ({lock} held by {holder}); will try again",
                                         self.policy.busy_retry)
                return Effect(f"{vm}: not started, busy ({lock} held by {holder})")
        try:
            return self._start_locked(vm, cause, detail, key, why_html, done_html, rep, renew)
        finally:
            self.state.unlock(f"start:{vm}", owner)
            self.state.unlock(f"power:{vm}", owner)

    def _start_locked(self, vm: str, cause: str, detail: str, key: str, why_html: str, done_html: str | None,
                      rep: Reporter, renew: Callable[[], None]) -> Effect:
        """The start itself, under both locks: resume from the progress record, else read, start, record."""
        compute = self.compute()
        p = self.state.progress(key)
        if p.get("finished"):
            return Effect(p["finished"])
        if not p.get("operation_id"):
            inst = compute.find_instance(vm)
            if inst.status == STOPPING:
                inst = self.wait_status(compute, inst.id, {STOPPED}, self.policy.stop_wait, renew)
            if inst.status in UP_STATUSES:
                self.unpause_if_we_paused(vm)
                rep.say("already", f"✅ <b>{escape(vm)}</b> is already {inst.status}")
                self.state.save_progress(key, finished=f"{vm} is already {inst.status}")
                return Effect(f"{vm} is already {inst.status}")
            if inst.status in BROKEN_STATUSES:
                rep.say("broken", f"⚠️ <b>{escape(vm)}</b> is {inst.status} and was not started. "
                                  "Look at it in the Yandex Cloud console.")
                self.state.save_progress(key, finished=f"{vm} is {inst.status}; not started")
                return Effect(f"{vm} is {inst.status}; not started")
            if inst.status != STOPPED:
                raise TransientError(f"{vm} is {inst.status}; will look again", self.policy.busy_retry)
            op = compute.start(inst.id)
            p = self.state.save_progress(key, vm=vm, instance_id=inst.id, operation_id=op.id,
                                         started_at=self.clock(), cause=cause)
            self.ledger.record(vm, "on", cause, detail)
            log.info("%s: start requested (operation %s), cause %s %s", vm, op.id, cause, detail)
        rep.say("starting", f"▶️ <b>{escape(vm)}</b>: starting ({why_html})")
        try:
            self.wait_op(compute, p["operation_id"], self.policy.start_wait, renew)
            self.wait_status(compute, p["instance_id"], {RUNNING}, self.policy.start_wait, renew)
        except (OperationFailed, OperationTimeout) as exc:
            status = _status_or_unknown(compute, p["instance_id"])
            if status == STOPPED:
                self.ledger.record(vm, "off", cause, "start failed")
            rep.say("failed", f"❌ <b>{escape(vm)}</b> did not start: {escape(str(exc))}. It is {status}.")
            self.state.save_progress(key, failure_told=True, finished=f"{vm}: start failed: {exc}")
            return Effect(f"{vm}: start failed: {exc}")
        took = self.clock() - p["started_at"]
        self.state.save_progress(key, running_told=True)
        self.unpause_if_we_paused(vm)
        rep.say("running", (done_html or f"✅ <b>{escape(vm)}</b> is RUNNING") + f" (took {took:.0f} s)")
        if done_html:
            rep.announce(f"{done_html}")
        self.state.save_progress(key, finished=f"{vm} started and RUNNING after {took:.0f} s")
        return Effect(f"{vm} started and RUNNING after {took:.0f} s")

    # --- handlers -----------------------------------------------------------------------------

    def start(self, payload: dict[str, Any], ctx: Context) -> Effect:
        """Handler of vm_start: start the VM for an operator, resumable, one start per VM at a time."""
        vm, by = payload["vm"], who(payload)
        key = f"start:{ctx.action_id}"
        rep = Reporter(self.notifier, self.state, key, payload.get("progress"))
        return self._guard(vm, rep, lambda: self.start_vm(
            vm, cause="manual", detail=f"by {by}", key=key, why_html=f"asked by {escape(by)}",
            done_html=f"✅ {escape(by)} started <b>{escape(vm)}</b>", reporter=rep,
            renew=ctx.renew_lease, wait_for_locks=True))

    def stop(self, payload: dict[str, Any], ctx: Context) -> Effect:
        """Handler of vm_stop: stop the VM for an operator (warning about running jobs), resumable."""
        vm = payload["vm"]
        key = f"stop:{ctx.action_id}"
        owner = f"action:{ctx.action_id}"
        rep = Reporter(self.notifier, self.state, key, payload.get("progress"))
        if not self.state.try_lock(f"power:{vm}", owner, self.policy.lock_ttl):
            raise TransientError(f"{vm}: another power change is in progress ({self.state.holder(f'power:{vm}')})",
                                 self.policy.busy_retry)
        try:
            starter = self.state.holder(f"start:{vm}")
            if starter and starter != owner:
                raise TransientError(f"{vm}: a start is in progress ({starter}); stopping after it",
                                     self.policy.busy_retry)
            return self._guard(vm, rep, lambda: self._stop_locked(vm, who(payload), key, rep, ctx))
        finally:
            self.state.unlock(f"power:{vm}", owner)

    def _stop_locked(self, vm: str, by: str, key: str, rep: Reporter, ctx: Context) -> Effect:
        """The stop itself, under the power lock: resume from the progress record, else read, stop, record."""
        compute = self.compute()
        p = self.state.progress(key)
        if p.get("finished"):
            return Effect(p["finished"])
        if not p.get("operation_id"):
            inst = compute.find_instance(vm)
            if inst.status in UP_STATUSES - {RUNNING}:  # on its way up
                inst = self.wait_status(compute, inst.id, {RUNNING}, self.policy.start_wait, ctx.renew_lease)
            if inst.status == STOPPING:
                inst = self.wait_status(compute, inst.id, {STOPPED}, self.policy.stop_wait, ctx.renew_lease)
            if inst.status == STOPPED:
                rep.say("already", f"⏹ <b>{escape(vm)}</b> is already STOPPED")
                self.state.save_progress(key, finished=f"{vm} is already STOPPED")
                return Effect(f"{vm} is already STOPPED")
            if inst.status != RUNNING:
                rep.say("broken", f"⚠️ <b>{escape(vm)}</b> is {inst.status}; not stopped. "
                                  "Look at it in the Yandex Cloud console.")
                self.state.save_progress(key, finished=f"{vm} is {inst.status}; not stopped")
                return Effect(f"{vm} is {inst.status}; not stopped")
            warning = self._jobs_warning(vm)
            op = compute.stop(inst.id)
            p = self.state.save_progress(key, vm=vm, instance_id=inst.id, operation_id=op.id,
                                         requested_at=self.clock(), warning=warning)
            self.ledger.record(vm, "off", "manual", f"by {by}")
        rep.say("stopping", f"⏳ <b>{escape(vm)}</b>: stopping, asked by {escape(by)}{p.get('warning', '')}")
        try:
            self.wait_op(compute, p["operation_id"], self.policy.stop_wait, ctx.renew_lease)
        except (OperationFailed, OperationTimeout) as exc:
            status = _status_or_unknown(compute, p["instance_id"])
            if status == RUNNING:
                self.ledger.record(vm, "on", "manual", "stop failed")
            rep.say("failed", f"❌ <b>{escape(vm)}</b> did not stop: {escape(str(exc))}. It is {status}.")
            self.state.save_progress(key, finished=f"{vm}: stop failed: {exc}")
            return Effect(f"{vm}: stop failed: {exc}")
        took = self.clock() - p["requested_at"]
        done = f"⏹ {escape(by)} stopped <b>{escape(vm)}</b>"
        now = _status_or_unknown(compute, p["instance_id"])
        # The stop is done; a push may have started the VM again right after (it is not dropped).
        again = "" if now == STOPPED else f"; it has been started again since ({now})"
        rep.say("stopped", f"{done} (took {took:.0f} s){again}")
        rep.announce(done)
        self.state.save_progress(key, finished=f"{vm} stopped by {by}")
        return Effect(f"{vm} stopped by {by} after {took:.0f} s")

    def _jobs_warning(self, vm: str) -> str:
        """HTML to add to the stop message: jobs that the stop will kill, or why we could not tell."""
        try:
            jobs = self.running_jobs(vm)
        except GitLabError as exc:
            return f"\n⚠️ could not ask GitLab about running jobs: {escape(str(exc))}"
        if not jobs:
            return ""
        names = ", ".join(f"#{j.get('id')} {j.get('name', '')}".strip() for j in jobs[:5])
        n = len(jobs)
        return (f"\n⚠️ {n} job{'s' if n != 1 else ''} running on runner "
                f"{', '.join(str(r) for r in sorted({j['_runner'] for j in jobs}))} will fail: {escape(names)}")

    def _guard(self, vm: str, rep: Reporter, work: Callable[[], Effect]) -> Effect:
        """Run a handler's work, turning outside failures into a told refusal or a retry."""
        try:
            return work()
        except TokenExpired as exc:
            raise TransientError(str(exc)) from None
        except NotFound:
            rep.say("missing", f"❌ no VM named <b>{escape(vm)}</b> in the folder")
            return Effect(f"{vm}: no such VM")
        except PermissionDenied:
            rep.say("denied", f"❌ <b>{escape(vm)}</b>: the service account may not change it "
                              "(it needs the compute.operator role)")
            return Effect(f"{vm}: permission denied")
        except FailedPrecondition as exc:  # the VM changed state under us: look again
            raise TransientError(f"Yandex Compute: {exc}", self.policy.busy_retry) from None
        except YandexApiError as exc:
            if exc.retryable:
                raise TransientError(f"Yandex Compute: {exc}", exc.retry_after) from None
            rep.say("api_error", f"❌ <b>{escape(vm)}</b>: Yandex Cloud refused: {escape(str(exc))}")
            return Effect(f"{vm}: Yandex Cloud refused: {exc}")
        except YandexError as exc:
            raise TransientError(f"Yandex Cloud: {exc}") from None
        except TelegramSendError as exc:
            raise TransientError(f"Telegram: {exc}") from None


def _status_or_unknown(compute: ComputeClient, instance_id: str) -> str:
    """The instance's status now, or 'in an unknown state' when Compute cannot say."""
    try:
        return compute.get_instance(instance_id).status
    except YandexError:
        return "in an unknown state (Yandex Cloud did not answer)"
