"""Safe idle stop of runner VMs, and starts when a keep_running window opens: a periodic chore.

Idle time. A VM is idle from the first check that finds it RUNNING with no running job on its
GitLab runners and no pending job they could take. Any job, a VM that is not RUNNING, or a
question GitLab did not answer resets it, so a VM is stopped at the earliest ``idle_stop_after``
after the last sign of work (at most one check interval later). It is kept in ``chore_memos``,
so a restarted worker does not start counting again.

The race between "no jobs" and "stop". Between our look at GitLab and the VM going down, the
runner could pick up a job that the stop would kill. So a stop goes: pause the GitLab runner(s)
→ ask GitLab again → stop the VM and await the Operation. A paused runner takes no new job, so
nothing can start after the second look; a job that got in before it is seen, the runners are
unpaused at once and the stop is skipped. We chose pausing because GitLab has nothing finer: a
runner takes jobs by polling GitLab, and only GitLab (not the VM, not us) can refuse it one.
Which runners we paused is written down *before* each pause call, so a crash cannot leave a
runner paused with nobody to undo it; a runner that was already paused (by a human) is neither
paused nor unpaused by us. Runners stay paused while the VM is off: their jobs wait as pending,
which is what reconciliation looks for to start the VM. They are unpaused by
``RunnerPauses.unpause_if_we_paused(vm)`` after every start (PowerControl, the chores; call it
from RunnerControl too) and, as a safety net, by this chore whenever it finds the VM RUNNING.

Fail closed. When GitLab cannot be asked, no VM is stopped and the idle time starts again
afterwards; the chat is told once when GitLab stops answering and once when it answers again.
A stop skipped for another reason (a keep_running window, a ``/vm_keep`` hold, a job that
appeared while stopping) is told once per reason within one idle period.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable

from gitlab_hook.effects import TransientError
from gitlab_hook.gitlab_api import GitLabAPI, GitLabError
from gitlab_hook.ledger import Ledger
from gitlab_hook.memos import AnyMemos, memos_for
from gitlab_hook.rules import Rules, RunnerRule
from gitlab_hook.telegram import Notifier, TelegramSendError, escape
from gitlab_hook.vm_state import VmState
from gitlab_hook.windows import in_windows, next_opening
from gitlab_hook.yandex import ComputeClient, Instance, OperationFailed, OperationTimeout, YandexError
from gitlab_hook.yandex.compute import RUNNING, STOPPED

if TYPE_CHECKING:  # power imports this module; only the type is needed here
    from gitlab_hook.power import PowerControl

log = logging.getLogger(__name__)


def _runners_text(ids: list[int]) -> str:
    """'runner 12' or 'runners 12, 13'."""
    return ("runner " if len(ids) == 1 else "runners ") + ", ".join(str(i) for i in ids)


def _utc(epoch: float) -> datetime:
    """An aware UTC datetime of epoch seconds."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


class RunnerPauses:
    """Which GitLab runners we paused for a stopped VM (durable), and giving them back."""

    def __init__(self, memos: AnyMemos, gitlab: Callable[[], GitLabAPI] | None):
        self.memos, self.gitlab = memos, gitlab

    def paused_by_us(self, vm: str) -> list[int]:
        """Runner ids we paused for this VM and have not unpaused yet."""
        return list(self.memos.get(f"paused:{vm}").get("runner_ids", []))

    def touch(self, vm: str) -> None:
        """Rewrite the record while the VM is off, so a store that prunes by age keeps it."""
        ours = self.paused_by_us(vm)
        if ours:
            self.memos.update(f"paused:{vm}", runner_ids=ours)

    def pause(self, vm: str, runner_ids: list[int]) -> list[int]:
        """Pause the runners that are not paused yet, writing each down first; GitLabError on failure."""
        if self.gitlab is None:
            raise GitLabError("GitLab is not configured (GITLAB_URL, GITLAB_TOKEN)")
        gl = self.gitlab()
        done: list[int] = []
        for rid in runner_ids:
            if gl.runner(rid).get("paused"):
                continue  # paused by someone else: theirs to unpause
            ours = self.paused_by_us(vm)
            if rid not in ours:
                self.memos.update(f"paused:{vm}", runner_ids=[*ours, rid])
            gl.pause_runner(rid)
            done.append(rid)
        return done

    def unpause_if_we_paused(self, vm: str) -> list[int]:
        """Unpause the runners we paused for this VM; ones GitLab refuses now stay listed for next time."""
        ours = self.paused_by_us(vm)
        if not ours or self.gitlab is None:
            return []
        done: list[int] = []
        try:
            gl = self.gitlab()
            for rid in ours:
                gl.unpause_runner(rid)
                done.append(rid)
        except GitLabError as exc:
            log.warning("%s: could not unpause runner(s) %s yet: %s", vm, [r for r in ours if r not in done], exc)
        finally:
            if done:
                self.memos.update(f"paused:{vm}", runner_ids=[r for r in self.paused_by_us(vm) if r not in done])
        if done:
            log.info("%s: unpaused runner(s) %s that the idle stop had paused", vm, done)
        return done


@dataclass(frozen=True)
class IdlePolicy:
    """Timing of the idle stop (seconds)."""

    lock_ttl: float = 900.0
    stop_wait: float = 300.0
    poll_interval: float = 1.0


class IdleStopper:
    """The idle-stop chore: ``check()`` every ``runner_check_interval``; handed its clients."""

    def __init__(self, compute: Callable[[], ComputeClient], notifier: Notifier, state: VmState, ledger: Ledger, *,
                 gitlab: Callable[[], GitLabAPI] | None, rules: Rules, power: PowerControl | None = None,
                 pauses: RunnerPauses | None = None, memos: AnyMemos | None = None,
                 clock: Callable[[], float] = time.time, policy: IdlePolicy = IdlePolicy()):
        self.compute, self.notifier, self.state, self.ledger = compute, notifier, state, ledger
        self.gitlab, self.rules, self.power, self.clock, self.policy = gitlab, rules, power, clock, policy
        self.memos = memos or memos_for(state, clock=clock)
        self.pauses = pauses or (power.pauses if power is not None else RunnerPauses(self.memos, gitlab))

    def unpause_if_we_paused(self, vm: str) -> list[int]:
        """For the start paths: give back the runners we paused when we stopped this VM."""
        return self.pauses.unpause_if_we_paused(vm)

    def check(self, now: float | None = None) -> list[str]:
        """One round over the runner rules; returns what it did or why not, one line per VM."""
        now = self.clock() if now is None else now
        out: list[str] = []
        for rule in self.rules.runners:
            watched = bool(rule.idle_stop_after and rule.gitlab_runner_ids)
            if not watched and not (rule.start_at_window_open and rule.windows):
                continue
            try:
                out.extend(self._check_rule(rule, now, watched))
            except YandexError as exc:
                out.append(f"{rule.vm}: Yandex Cloud did not answer ({exc}); nothing done")
            except TelegramSendError as exc:
                out.append(f"{rule.vm}: Telegram failed ({exc})")
            except TransientError as exc:
                out.append(f"{rule.vm}: {exc}")
        for line in out:
            log.info("idle stop: %s", line)
        return out

    def _check_rule(self, rule: RunnerRule, now: float, watched: bool) -> list[str]:
        """One VM: window-open start, then idle bookkeeping and, when due and allowed, the safe stop."""
        vm = rule.vm
        compute = self.compute()
        inst = compute.find_instance(vm)
        out: list[str] = []
        if rule.start_at_window_open and rule.windows:
            started = self._window_open(rule, inst, now)
            if started:
                out.append(started)
                inst = compute.get_instance(inst.id)
        if not watched:
            return out
        if inst.status != RUNNING:
            self.memos.update(f"idle:{vm}", since=None, skip=None)
            self.pauses.touch(vm)
            return [*out, f"{vm}: {inst.status}; not idle-checked"]
        if self.pauses.paused_by_us(vm):
            back = self.pauses.unpause_if_we_paused(vm)
            if back:
                out.append(f"{vm}: RUNNING, unpaused {_runners_text(back)}")
        busy = self._activity(rule)
        if busy is None:
            self.memos.update(f"idle:{vm}", since=None)
            return [*out, f"{vm}: GitLab cannot be asked; staying on"]
        running, pending = busy
        if running or pending:
            self.memos.update(f"idle:{vm}", since=None, skip=None)
            return [*out, f"{vm}: busy ({running} running, {pending} pending)"]
        since = self.memos.get(f"idle:{vm}").get("since")
        if since is None:
            since = now
            self.memos.update(f"idle:{vm}", since=now)
        idle_for = now - since
        assert rule.idle_stop_after is not None
        if idle_for < rule.idle_stop_after:
            return [*out, f"{vm}: idle for {idle_for:.0f} s of {rule.idle_stop_after:.0f} s"]
        blocker = self._blocker(rule, now)
        if blocker:
            code, html, tell = blocker
            if tell:
                self._tell_skip(vm, code, f"⏸ <b>{escape(vm)}</b> has been idle for {_minutes(idle_for)} "
                                          f"but stays on: {html}")
            return [*out, f"{vm}: not stopped: {code}"]
        return [*out, self._safe_stop(rule, inst, idle_for, now)]

    # --- GitLab ---------------------------------------------------------------------------

    def _count(self, rule: RunnerRule) -> tuple[int, int]:
        """(running, pending) jobs of the rule's runners; GitLabError when GitLab cannot say."""
        if self.gitlab is None:
            raise GitLabError("GitLab is not configured (GITLAB_URL, GITLAB_TOKEN)")
        gl = self.gitlab()
        running = pending = 0
        for rid in rule.gitlab_runner_ids:
            running += len(gl.runner_jobs(rid, "running"))
            pending += gl.pending_jobs_for_runner(rid)
        return running, pending

    def _activity(self, rule: RunnerRule) -> tuple[int, int] | None:
        """Like _count, but None (and the chat told once) when GitLab cannot be asked."""
        try:
            counts = self._count(rule)
        except GitLabError as exc:
            self._gitlab_health(False, str(exc))
            return None
        self._gitlab_health(True, "")
        return counts

    def _gitlab_health(self, ok: bool, reason: str) -> None:
        """Tell the chat when GitLab stops answering, and when it answers again: once each."""
        if not self.memos.changed("gitlab", "down", not ok):
            return
        if ok:
            if self.memos.get("gitlab").get("told_down"):
                self.notifier.send_html("✅ GitLab answers again: the idle stop of runner VMs is back on.")
                self.memos.update("gitlab", told_down=False)
            return
        self.notifier.send_html(f"⚠️ GitLab cannot be asked whether the runners are busy ({escape(reason)}). "
                                "Idle runner VMs stay on until it answers.")
        self.memos.update("gitlab", told_down=True)

    # --- why not -------------------------------------------------------------------------

    def _blocker(self, rule: RunnerRule, now: float) -> tuple[str, str, bool] | None:
        """(code, HTML reason, tell?) when something forbids stopping now, else None."""
        vm = rule.vm
        window = in_windows(rule.windows, _utc(now), rule.timezone) if rule.windows else None
        if window is not None:
            return (f"window {window.text}", f"inside its keep_running window {escape(window.text)} "
                                             f"({escape(rule.timezone)})", True)
        keeper = self.state.holder(f"keep:{vm}")
        if keeper:
            return f"kept by {keeper}", f"kept on with /vm_keep ({escape(keeper)})", True
        for lock in (f"start:{vm}", f"running:{vm}", f"power:{vm}"):
            holder = self.state.holder(lock)
            if holder:
                return f"{lock} held by {holder}", "", False
        return None

    def _tell_skip(self, vm: str, code: str, html: str) -> None:
        """Tell a skipped stop once per reason within an idle period."""
        if self.memos.changed(f"idle:{vm}", "skip", code):
            self.notifier.send_html(html)

    # --- the stop ----------------------------------------------------------------------------

    def _safe_stop(self, rule: RunnerRule, inst: Instance, idle_for: float, now: float) -> str:
        """Under the power lock: pause runners, look again, then stop (or give the runners back and skip)."""
        vm = rule.vm
        owner = f"idle_stop:{now:.0f}"
        if not self.state.try_lock(f"power:{vm}", owner, self.policy.lock_ttl):
            return f"{vm}: not stopped: another power change holds it"
        try:
            try:
                paused = self.pauses.pause(vm, list(rule.gitlab_runner_ids))
                running, pending = self._count(rule)
            except GitLabError as exc:
                self.pauses.unpause_if_we_paused(vm)
                self._gitlab_health(False, str(exc))
                self.memos.update(f"idle:{vm}", since=None)
                return f"{vm}: not stopped: GitLab failed while pausing ({exc})"
            if running or pending:
                self.pauses.unpause_if_we_paused(vm)
                self.memos.update(f"idle:{vm}", since=now)
                self._tell_skip(vm, "job appeared",
                                f"⏸ <b>{escape(vm)}</b> was about to be stopped, but a job appeared "
                                f"({running} running, {pending} pending): it stays on.")
                return f"{vm}: not stopped: a job appeared while stopping ({running} running, {pending} pending)"
            return self._stop(rule, inst, paused, idle_for)
        finally:
            self.state.unlock(f"power:{vm}", owner)

    def _stop(self, rule: RunnerRule, inst: Instance, paused: list[int], idle_for: float) -> str:
        """Stop the VM, record it, await the Operation and tell the chat what happened."""
        vm = rule.vm
        compute = self.compute()
        if compute.get_instance(inst.id).status != RUNNING:
            self.pauses.unpause_if_we_paused(vm)
            return f"{vm}: not stopped: no longer RUNNING"
        op = compute.stop(inst.id)
        self.ledger.record(vm, "off", "idle_stop", f"idle {_minutes(idle_for)}")
        self.memos.update(f"idle:{vm}", since=None, skip=None)
        try:
            compute.wait_operation(op.id, timeout=self.policy.stop_wait, poll_interval=self.policy.poll_interval)
        except (OperationFailed, OperationTimeout) as exc:
            status = compute.get_instance(inst.id).status
            if status == RUNNING:
                self.ledger.record(vm, "on", "idle_stop", "stop failed")
                self.pauses.unpause_if_we_paused(vm)
            self.notifier.send_html(f"❌ Idle stop of <b>{escape(vm)}</b> failed: {escape(str(exc))}. "
                                    f"It is {status}.")
            return f"{vm}: stop failed ({exc}); it is {status}"
        ids = list(rule.gitlab_runner_ids)
        note = (f"; {_runners_text(paused)} paused until it starts again" if paused else "")
        self.notifier.send_html(f"⏹ <b>{escape(vm)}</b> stopped: idle for {_minutes(idle_for)} "
                                f"(no running or pending jobs on {_runners_text(ids)}){note}.")
        return f"{vm}: stopped after {idle_for:.0f} s idle; paused {paused}"

    # --- window opening ------------------------------------------------------------------------

    def _window_open(self, rule: RunnerRule, inst: Instance, now: float) -> str | None:
        """Start a STOPPED VM when one of its keep_running windows opened since the last check."""
        last = self.memos.swap(f"window:{rule.vm}", "last_check", now)
        if last is None or last >= now:
            return None
        opening = next_opening(rule.windows, _utc(last), rule.timezone)
        window = in_windows(rule.windows, _utc(now), rule.timezone)
        if opening is None or opening > _utc(now) or window is None or inst.status != STOPPED:
            return None
        if self.power is None:
            return f"{rule.vm}: window {window.text} opened, but no PowerControl to start it"
        effect = self.power.start_vm(
            rule.vm, cause="window", detail=f"keep_running {window.text}",
            key=f"start:window:{rule.vm}:{now:.0f}",
            why_html=f"its keep_running window {escape(window.text)} ({escape(rule.timezone)}) opened")
        return f"{rule.vm}: window {window.text} opened: {effect.summary}"


def _minutes(seconds: float) -> str:
    """'30 min', '1 h 5 min'."""
    m = int(seconds // 60)
    h, m = divmod(m, 60)
    return f"{h} h {m} min" if h and m else f"{h} h" if h else f"{m} min"

