"""Runner VM policy: bring the runner up for a push, once per burst, and tell the team."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from gitlab_hook.effects import Context, Effect, TransientError
from gitlab_hook.ledger import Ledger
from gitlab_hook.telegram import Notifier, TelegramSendError, escape
from gitlab_hook.vm_state import VmState
from gitlab_hook.yandex import (
    ComputeClient,
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
    UPDATING,
)

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class StartPolicy:
    """Timing of the start path (seconds)."""

    lock_ttl: float = 900.0  # longer than the slowest start we wait for
    recently_running: float = 20.0  # pushes right after a confirmed start skip the Compute API
    stop_wait: float = 300.0
    start_wait: float = 300.0
    poll_interval: float = 1.0
    alert_quiet: float = 600.0  # the same failure for the same VM is told once per this long


def describe_cause(p: dict[str, Any]) -> str:
    """'a push by @dev to stage (abc1234, 'title')', escaped for HTML."""
    who = f"@{p['user']}" if p.get("user") else "someone"
    sha = (p.get("sha") or "")[:7]
    if p.get("cause") == "pipeline":
        return escape(f"a pipeline #{p.get('pipeline_id')} on {p.get('branch')} by {who}")
    title = p.get("title") or ""
    detail = f"{sha}, '{title}'" if title else sha
    return escape(f"a push by {who} to {p.get('branch')} ({detail})")


class RunnerControl:
    """The start path for one VM at a time; handed its clients, never creating them."""

    def __init__(self, compute: Callable[[], ComputeClient], notifier: Notifier, state: VmState, *,
                 ledger: Ledger | None = None, policy: StartPolicy = StartPolicy(),
                 on_running: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep):
        self._compute, self.notifier, self.state, self.ledger = compute, notifier, state, ledger
        # Called with the VM name once a start is confirmed (the idle stopper unpauses its runners).
        self.on_running = on_running
        self.policy, self.clock, self.sleep = policy, clock, sleep

    # --- the ensure_running action --------------------------------------------------------

    def ensure_running(self, payload: dict[str, Any], ctx: Context) -> Effect:
        """Handler: make sure the payload's VM is running; start it at most once per burst."""
        vm = payload["vm"]
        owner = f"action:{ctx.action_id}"
        if self.state.holder(f"running:{vm}"):
            return Effect(f"{vm} was confirmed RUNNING moments ago; nothing to do")
        if not self.state.try_lock(f"start:{vm}", owner, self.policy.lock_ttl):
            return Effect(f"{vm}: a start is already in progress ({self.state.holder(f'start:{vm}')}); nothing to do")
        try:
            return self._ensure_locked(vm, payload, ctx)
        except TokenExpired as exc:
            self._alert(vm, "token", f"⚠️ <b>{escape(vm)}</b> cannot be started: {escape(str(exc))}")
            raise TransientError(str(exc)) from None
        except (NotFound, PermissionDenied) as exc:
            kind = "missing" if isinstance(exc, NotFound) else "denied"
            text = (f"⚠️ <b>{escape(vm)}</b> cannot be started for {describe_cause(payload)}: "
                    + ("no such VM in the folder" if kind == "missing" else
                       "the service account may not read or start it (needs compute.operator)"))
            self._alert(vm, kind, text)
            return Effect(f"{vm}: {kind}; told the chat")
        except YandexApiError as exc:
            raise TransientError(f"Yandex Compute: {exc}", getattr(exc, "retry_after", None)) from None
        except YandexError as exc:
            raise TransientError(f"Yandex Cloud: {exc}") from None
        except TelegramSendError as exc:
            raise TransientError(f"Telegram: {exc}") from None
        finally:
            self.state.unlock(f"start:{vm}", owner)

    def _ensure_locked(self, vm: str, payload: dict[str, Any], ctx: Context) -> Effect:
        key = f"start:{ctx.action_id}"
        progress = self.state.progress(key)
        compute = self._compute()
        if progress.get("operation_id"):
            # A retry after a crash or a failed message: resume, never start again.
            return self._finish_start(vm, payload, ctx, compute, progress)
        inst = compute.find_instance(vm)
        if inst.status == STOPPING:
            inst = self._wait_status(compute, inst, {STOPPED}, self.policy.stop_wait, ctx)
        if inst.status == RUNNING and self.state.holder(f"power:{vm}"):
            # A stop (idle or manual) holds the VM and is about to act: look again once it has.
            raise TransientError(f"{vm}: a stop is in progress; will start it again after")
        if inst.status in UP_STATUSES:
            return Effect(f"{vm} is already {inst.status}")
        if inst.status in BROKEN_STATUSES:
            self._alert(vm, inst.status, f"⚠️ <b>{escape(vm)}</b> is {inst.status} and was not started "
                                         f"for {describe_cause(payload)}. Look at it in the Yandex Cloud console.")
            return Effect(f"{vm} is {inst.status}; told the chat")
        if inst.status == UPDATING:
            raise TransientError(f"{vm} is UPDATING (a resize?); will look again")
        if inst.status != STOPPED:
            raise TransientError(f"{vm} is {inst.status}; will look again")
        op = compute.start(inst.id)
        progress = self.state.save_progress(key, vm=vm, instance_id=inst.id, operation_id=op.id,
                                            started_at=self.clock())
        log.info("%s: start requested (operation %s) for %s", vm, op.id, payload.get("cause"))
        if self.ledger is not None:
            who = f"@{payload['user']}" if payload.get("user") else ""
            self.ledger.record(vm, "on", payload.get("cause", "push"),
                               f"{who} to {payload.get('branch', '?')} ({(payload.get('sha') or '')[:8]})".strip())
        return self._finish_start(vm, payload, ctx, compute, progress)

    def _finish_start(self, vm: str, payload: dict[str, Any], ctx: Context, compute: ComputeClient,
                      progress: dict[str, Any]) -> Effect:
        key = f"start:{ctx.action_id}"
        if not progress.get("start_told"):
            self.notifier.send_html(f"▶️ <b>{escape(vm)}</b>: starting for {describe_cause(payload)}")
            progress = self.state.save_progress(key, start_told=True)
        try:
            compute.wait_operation(progress["operation_id"], timeout=self.policy.start_wait,
                                   poll_interval=self.policy.poll_interval, on_poll=lambda op: ctx.renew_lease())
            inst = compute.get_instance(progress["instance_id"])
            if inst.status != RUNNING:
                inst = self._wait_status(compute, inst, {RUNNING}, self.policy.start_wait, ctx)
        except (OperationFailed, OperationTimeout) as exc:
            if not progress.get("failure_told"):
                self.notifier.send_html(f"❌ <b>{escape(vm)}</b> did not start: {escape(str(exc))}")
                self.state.save_progress(key, failure_told=True)
            return Effect(f"{vm}: start failed: {exc}")
        took = self.clock() - progress["started_at"]
        if not progress.get("running_told"):
            self.notifier.send_html(f"✅ <b>{escape(vm)}</b> is RUNNING (took {took:.0f} s)")
            self.state.save_progress(key, running_told=True)
        if self.on_running is not None:
            self.on_running(vm)
        self.state.try_lock(f"running:{vm}", f"action:{ctx.action_id}", self.policy.recently_running)
        return Effect(f"{vm} started and RUNNING after {took:.0f} s")

    def _wait_status(self, compute: ComputeClient, inst: Instance, wanted: set[str], timeout: float,
                     ctx: Context) -> Instance:
        return compute.wait_status(inst, wanted, timeout=timeout, poll_interval=self.policy.poll_interval,
                                   on_poll=lambda _: ctx.renew_lease())

    def _alert(self, vm: str, reason: str, html: str) -> None:
        """Tell the chat, but the same trouble with the same VM only once per quiet period."""
        name = f"alert:{vm}:{reason}"
        if self.state.holder(name):
            log.info("suppressed a repeated alert for %s (%s)", vm, reason)
            return
        self.notifier.send_html(html)
        self.state.try_lock(name, "alert", self.policy.alert_quiet)
