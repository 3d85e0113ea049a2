"""Resize a VM (vm_resize): validate the size for its platform, stop → update → start, step by step.

Each step is written to the command's progress record (``resize:{action_id}``) when done, and
every step first looks at the VM, so a retry after a crash continues where it stopped and never
applies a step twice: a VM already STOPPED is not stopped again, one that already has the new
size is not updated again. Every Operation is awaited.

Locks: ``power:{vm}`` (no other stop/resize/manual start) and ``start:{vm}`` for the whole
resize, because a start between the stop and the update would make the update fail. A push that
arrives meanwhile finds the start lock taken and does nothing: a VM that was running is started
again by the resize itself; one that was stopped is started by reconciliation if jobs wait.

When an Operation fails half-way, the VM is read again and the chat is told exactly what it is
now (status and size, old or new); a VM that was running is started again, with its old size.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from gitlab_hook.effects import Context, Effect, TransientError
from gitlab_hook.gitlab_api import GitLabError
from gitlab_hook.power import GIB, PowerControl, Reporter, size_text, who
from gitlab_hook.telegram import escape
from gitlab_hook.yandex import ComputeClient, Instance, OperationFailed, OperationTimeout, YandexApiError
from gitlab_hook.yandex.compute import BROKEN_STATUSES, RUNNING, STOPPED, UPDATING

log = logging.getLogger(__name__)


class SizeError(ValueError):
    """A size the platform does not offer; the text says what would be allowed."""


# platform → core fraction → (cores → (min, max) GB per core, how the allowed cores read)
_EVEN_2_16 = list(range(2, 17, 2))
_V3_BIG = {20: 16, 24: 13, 28: 11, 32: 10, 36: 16, 40: 16, 44: 14, 48: 13, 52: 12, 56: 11, 60: 10, 64: 10,
           68: 9, 72: 8, 76: 8, 80: 8, 84: 7, 88: 7, 92: 6, 96: 6}
SIZES: dict[str, dict[int, tuple[dict[int, tuple[float, float]], str]]] = {
    "standard-v1": {
        5: ({2: (0.5, 2), 4: (0.5, 2)}, "2 or 4"),
        20: ({2: (0.5, 4), 4: (0.5, 4)}, "2 or 4"),
        100: ({c: (1, 8) for c in [*_EVEN_2_16, 20, 24, 28, 32]}, "2 to 16 (even), 20, 24, 28 or 32"),
    },
    "standard-v2": {
        5: ({2: (0.25, 2), 4: (0.25, 2)}, "2 or 4"),
        20: ({2: (0.5, 4), 4: (0.5, 4)}, "2 or 4"),
        50: ({2: (0.5, 4), 4: (0.5, 4)}, "2 or 4"),
        100: ({c: (1, 16) for c in [*_EVEN_2_16, *range(20, 81, 4)]}, "2 to 16 (even), then every 4 up to 80"),
    },
    "standard-v3": {
        20: ({2: (0.5, 4), 4: (0.5, 4)}, "2 or 4"),
        50: ({2: (0.5, 4), 4: (0.5, 4)}, "2 or 4"),
        100: ({**{c: (1, 16) for c in _EVEN_2_16}, **{c: (1, hi) for c, hi in _V3_BIG.items()}},
              "2 to 16 (even), then every 4 up to 96"),
    },
}


def validate_size(platform_id: str, cores: int, memory_gb: float, core_fraction: int) -> None:
    """Raise SizeError (with what would be allowed) unless the platform offers this size."""
    table = SIZES.get(platform_id)
    if table is None:
        raise SizeError(f"sizes of platform {platform_id or '?'} are not known here (only "
                        f"{', '.join(SIZES)}); change it in the Yandex Cloud console")
    if isinstance(cores, bool) or not isinstance(cores, int) or cores <= 0:
        raise SizeError(f"cores must be a positive whole number, not {cores!r}")
    if isinstance(memory_gb, bool) or not isinstance(memory_gb, (int, float)) or not memory_gb > 0:
        raise SizeError(f"memory must be a positive number of GB, not {memory_gb!r}")
    fractions = ", ".join(f"{f}%" for f in table)
    if core_fraction not in table:
        raise SizeError(f"{platform_id} does not offer a {core_fraction}% core fraction; choose {fractions}")
    allowed, cores_text = table[core_fraction]
    if cores not in allowed:
        raise SizeError(f"{platform_id} at {core_fraction}% takes {cores_text} cores, not {cores}")
    lo, hi = allowed[cores]
    if not lo * cores <= memory_gb <= hi * cores:
        raise SizeError(f"{platform_id} with {cores} cores at {core_fraction}% takes {lo * cores:g}–{hi * cores:g} GB "
                        f"({lo:g}–{hi:g} GB per core), not {memory_gb:g} GB ({memory_gb / cores:g} GB per core)")


def size_problem(platform_id: str, cores: int, memory_gb: float, core_fraction: int) -> str | None:
    """Why a size is refused, or None when allowed or the platform is not in the table (the API decides)."""
    if platform_id not in SIZES:
        return None
    try:
        validate_size(platform_id, cores, memory_gb, core_fraction)
    except SizeError as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class Size:
    """Cores, memory (bytes) and core fraction of a VM."""

    cores: int
    memory_bytes: int
    core_fraction: int

    @classmethod
    def of(cls, inst: Instance) -> Size:
        """The size an instance has now."""
        return cls(inst.cores, inst.memory_bytes, inst.core_fraction)

    def text(self) -> str:
        """'2 cores / 4 GB' (and the fraction when not 100%)."""
        return size_text(self.cores, self.memory_bytes, self.core_fraction)

    def changes_from(self, other: Size) -> dict[str, int]:
        """update_resources arguments that turn ``other`` into this size (only what differs)."""
        out: dict[str, int] = {}
        if self.cores != other.cores:
            out["cores"] = self.cores
        if self.memory_bytes != other.memory_bytes:
            out["memory_bytes"] = self.memory_bytes
        if self.core_fraction != other.core_fraction:
            out["core_fraction"] = self.core_fraction
        return out


class _StepFailed(Exception):
    """An Operation (or a refused call) failed at one step."""

    def __init__(self, step: str, cause: Exception):
        super().__init__(f"{step}: {cause}")
        self.step, self.cause = step, cause


class Resizer:
    """The vm_resize handler, built on PowerControl's clients, locks and helpers."""

    def __init__(self, power: PowerControl):
        self.power = power

    def resize(self, payload: dict[str, Any], ctx: Context) -> Effect:
        """Handler of vm_resize: refuse while jobs run, else stop → update → start as it was."""
        p, vm = self.power, payload["vm"]
        key = f"resize:{ctx.action_id}"
        owner = f"action:{ctx.action_id}"
        rep = Reporter(p.notifier, p.state, key, payload.get("progress"))
        taken: list[str] = []
        try:
            for lock in (f"power:{vm}", f"start:{vm}"):
                if not p.state.try_lock(lock, owner, p.policy.lock_ttl):
                    raise TransientError(f"{vm}: busy ({lock} held by {p.state.holder(lock)}); resizing after it",
                                         p.policy.busy_retry)
                taken.append(lock)
            return p._guard(vm, rep, lambda: self._resize_locked(vm, payload, key, rep, ctx))
        finally:
            for lock in taken:
                p.state.unlock(lock, owner)

    def _plan(self, vm: str, payload: dict[str, Any], key: str, rep: Reporter, compute: ComputeClient) -> Effect | None:
        """Check the request and save the plan; an Effect when it ends here (refused, nothing to do)."""
        p = self.power
        by = who(payload)
        inst = compute.find_instance(vm)
        fraction = payload.get("core_fraction") or inst.core_fraction
        cores, memory_gb = payload.get("cores"), payload.get("memory_gb")
        notes: list[str] = []
        try:
            validate_size(inst.platform_id, cores, memory_gb, fraction)  # type: ignore[arg-type]
        except SizeError as exc:
            if inst.platform_id in SIZES:
                return self._end(rep, key, "refused", f"❌ Not resizing <b>{escape(vm)}</b>: {escape(str(exc))}.")
            # Sizes of other platforms (GPU, newer ones) are not known here: Yandex Cloud has the last
            # word, and a refused update brings the VM back with its old size.
            notes.append(f"sizes of {escape(inst.platform_id or '?')} are not checked here")
        if not (isinstance(cores, int) and not isinstance(cores, bool) and cores > 0
                and isinstance(memory_gb, (int, float)) and memory_gb > 0):
            return self._end(rep, key, "refused", f"❌ Not resizing <b>{escape(vm)}</b>: cores and memory "
                                                  "must be positive numbers.")
        target = Size(cores, int(round(memory_gb * GIB)), fraction)
        if inst.status in BROKEN_STATUSES:
            return self._end(rep, key, "refused", f"❌ Not resizing <b>{escape(vm)}</b>: it is {inst.status}. "
                                                  "Look at it in the Yandex Cloud console.")
        if inst.status not in (RUNNING, STOPPED):
            raise TransientError(f"{vm} is {inst.status}; resizing when it settles", p.policy.busy_retry)
        if Size.of(inst) == target:
            return self._end(rep, key, "same", f"✅ <b>{escape(vm)}</b> already has {target.text()}.")
        try:
            jobs = p.running_jobs(vm)
        except GitLabError as exc:
            return self._end(rep, key, "refused", f"❌ Not resizing <b>{escape(vm)}</b>: GitLab cannot say whether "
                                                  f"jobs run on it ({escape(str(exc))}). Try again later.")
        if jobs:
            names = ", ".join(f"#{j.get('id')} {j.get('name', '')}".strip() for j in jobs[:5])
            return self._end(rep, key, "refused",
                             f"❌ Not resizing <b>{escape(vm)}</b>: {len(jobs)} job{'s' if len(jobs) != 1 else ''} "
                             f"running on it ({escape(names)}). A resize restarts the VM and would kill "
                             f"{'them' if len(jobs) != 1 else 'it'}; try again when they are done.")
        p.state.save_progress(key, vm=vm, by=by, instance_id=inst.id, was=inst.status, started_at=p.clock(),
                              before=asdict(Size.of(inst)), target=asdict(target))
        if jobs is None:
            notes.append("no GitLab runner known for it: running jobs not checked")
        note = f" ({'; '.join(notes)})" if notes else ""
        rep.say("plan", f"🔧 Resizing <b>{escape(vm)}</b> from {Size.of(inst).text()} to {target.text()}, "
                        f"asked by {escape(by)}{note}")
        return None

    def _end(self, rep: Reporter, key: str, step: str, html: str) -> Effect:
        """Tell the last step (once) and mark the command finished, so a redelivery does nothing."""
        rep.say(step, html)
        summary = html.replace("<b>", "").replace("</b>", "")
        self.power.state.save_progress(key, finished=summary)
        return Effect(summary)

    def _resize_locked(self, vm: str, payload: dict[str, Any], key: str, rep: Reporter, ctx: Context) -> Effect:
        """Under both locks: plan (first time), run the steps, recover on a failed step, tell the end."""
        p = self.power
        compute = p.compute()
        rec = p.state.progress(key)
        if rec.get("finished"):
            return Effect(rec["finished"])
        if "target" not in rec:
            ended = self._plan(vm, payload, key, rep, compute)
            if ended is not None:
                return ended
            rec = p.state.progress(key)
        try:
            self._run_steps(vm, key, rep, compute, ctx)
        except _StepFailed as failed:
            return self._recover(vm, key, rep, compute, failed, ctx)
        rec = p.state.progress(key)
        target, before = Size(**rec["target"]), Size(**rec["before"])
        took = p.clock() - rec["started_at"]
        state = "RUNNING again" if rec["was"] == RUNNING else "left STOPPED, as it was"
        done = (f"✅ {escape(rec['by'])} resized <b>{escape(vm)}</b> to {target.text()} (was {before.text()}); "
                f"it is {state}")
        rep.say("done", f"{done} (took {took:.0f} s)")
        rep.announce(done)
        return self._end(rep, key, "done", done)

    def _run_steps(self, vm: str, key: str, rep: Reporter, compute: ComputeClient, ctx: Context) -> None:
        """Stop (if running), update, start (if it was running); each done step is skipped on a retry."""
        p = self.power
        rec = p.state.progress(key)
        inst_id, target, by = rec["instance_id"], Size(**rec["target"]), rec["by"]
        if rec["was"] == RUNNING and not rec.get("stopped"):
            self._step("stop", lambda: self._stop(vm, key, rep, compute, inst_id, by, ctx))
            rep.say("stopped", f"✅ <b>{escape(vm)}</b> is STOPPED")
        if not p.state.progress(key).get("updated"):
            self._step("update", lambda: self._update(vm, key, rep, compute, inst_id, target, ctx))
            rep.say("updated", f"✅ <b>{escape(vm)}</b> now has {target.text()}")
        if rec["was"] == RUNNING and not p.state.progress(key).get("started"):
            self._step("start", lambda: self._start(vm, key, rep, compute, inst_id, by, ctx))
            p.unpause_if_we_paused(vm)

    @staticmethod
    def _step(name: str, work: Any) -> None:
        """Run one step; a failed Operation or refused call becomes _StepFailed, a retryable error stays."""
        try:
            work()
        except (OperationFailed, OperationTimeout) as exc:
            raise _StepFailed(name, exc) from None
        except YandexApiError as exc:
            if exc.retryable:
                raise
            raise _StepFailed(name, exc) from None

    def _stop(self, vm: str, key: str, rep: Reporter, compute: ComputeClient, inst_id: str, by: str,
              ctx: Context) -> None:
        """Step 1: stop the VM unless it is already stopping/stopped, await it."""
        p = self.power
        rec = p.state.progress(key)
        if not rec.get("stop_op") and compute.get_instance(inst_id).status == RUNNING:
            op = compute.stop(inst_id)
            rec = p.state.save_progress(key, stop_op=op.id)
            p.ledger.record(vm, "off", "resize", f"by {by}")
        rep.say("stopping", f"⏳ stopping <b>{escape(vm)}</b>…")
        if rec.get("stop_op"):
            p.wait_op(compute, rec["stop_op"], p.policy.stop_wait, ctx.renew_lease)
        p.wait_status(compute, inst_id, {STOPPED}, p.policy.stop_wait, ctx.renew_lease)
        p.state.save_progress(key, stopped=True)

    def _update(self, vm: str, key: str, rep: Reporter, compute: ComputeClient, inst_id: str, target: Size,
                ctx: Context) -> None:
        """Step 2: apply the new size unless the VM already has it, await it."""
        p = self.power
        rec = p.state.progress(key)
        if not rec.get("update_op"):
            # A crash right after the PATCH leaves no operation id: the VM itself says whether it was applied.
            cur = compute.get_instance(inst_id)
            if cur.status == UPDATING:
                cur = p.wait_status(compute, inst_id, {STOPPED, RUNNING}, p.policy.update_wait, ctx.renew_lease)
            changes = target.changes_from(Size.of(cur))
            if changes:
                op = compute.update_resources(inst_id, **changes)
                rec = p.state.save_progress(key, update_op=op.id)
                rep.say("updating", f"⏳ changing <b>{escape(vm)}</b> to {target.text()}…")
        if rec.get("update_op"):
            p.wait_op(compute, rec["update_op"], p.policy.update_wait, ctx.renew_lease)
        p.state.save_progress(key, updated=True)

    def _start(self, vm: str, key: str, rep: Reporter, compute: ComputeClient, inst_id: str, by: str,
               ctx: Context) -> None:
        """Step 3: start the VM again unless it is already starting/running, await RUNNING."""
        p = self.power
        rec = p.state.progress(key)
        if not rec.get("start_op") and compute.get_instance(inst_id).status == STOPPED:
            op = compute.start(inst_id)
            rec = p.state.save_progress(key, start_op=op.id)
            p.ledger.record(vm, "on", "resize", f"by {by}")
        rep.say("starting", f"⏳ starting <b>{escape(vm)}</b>…")
        if rec.get("start_op"):
            p.wait_op(compute, rec["start_op"], p.policy.start_wait, ctx.renew_lease)
        p.wait_status(compute, inst_id, {RUNNING}, p.policy.start_wait, ctx.renew_lease)
        p.state.save_progress(key, started=True)

    # --- failure half-way -----------------------------------------------------------------------

    def _recover(self, vm: str, key: str, rep: Reporter, compute: ComputeClient, failed: _StepFailed,
                 ctx: Context) -> Effect:
        """Bring a VM that was running back with its old size if we can; tell exactly what it is now."""
        p = self.power
        rec = p.state.progress(key)
        before, target = Size(**rec["before"]), Size(**rec["target"])
        inst_id = rec["instance_id"]
        log.warning("%s: resize failed at %s: %s", vm, failed.step, failed.cause)
        lines = [f"❌ Resizing <b>{escape(vm)}</b> failed at the {failed.step} step: {escape(str(failed.cause))}"]
        inst = self._settled(compute, inst_id, ctx)
        if rec["was"] == RUNNING and inst is not None and inst.status == STOPPED:
            try:
                if Size.of(inst) != before:
                    op = compute.update_resources(inst_id, **before.changes_from(Size.of(inst)))
                    p.wait_op(compute, op.id, p.policy.update_wait, ctx.renew_lease)
                op = compute.start(inst_id)
                p.ledger.record(vm, "on", "resize", "restarted after a failed resize")
                p.wait_op(compute, op.id, p.policy.start_wait, ctx.renew_lease)
                p.wait_status(compute, inst_id, {RUNNING}, p.policy.start_wait, ctx.renew_lease)
                p.unpause_if_we_paused(vm)
            except (OperationFailed, OperationTimeout, YandexApiError) as exc:
                lines.append(f"Starting it again with its old size failed too: {escape(str(exc))}")
            inst = self._settled(compute, inst_id, ctx)
        if inst is not None and inst.status in (RUNNING, STOPPED):  # the ledger follows what the VM is
            p.ledger.record(vm, "on" if inst.status == RUNNING else "off", "resize", "after a failed resize")
        lines.append(self._where(vm, inst, before, target, rec["was"]))
        html = "\n".join(lines)
        rep.say("failed", html)
        rep.announce(html)
        return self._end(rep, key, "failed", html.replace("\n", " "))

    def _settled(self, compute: ComputeClient, inst_id: str, ctx: Context) -> Instance | None:
        """The instance once it is RUNNING or STOPPED (or as it is after the wait), None if unreadable."""
        p = self.power
        try:
            return p.wait_status(compute, inst_id, {RUNNING, STOPPED}, p.policy.stop_wait, ctx.renew_lease)
        except OperationTimeout:
            try:
                return compute.get_instance(inst_id)
            except YandexApiError:
                return None
        except YandexApiError:
            return None

    @staticmethod
    def _where(vm: str, inst: Instance | None, before: Size, target: Size, was: str) -> str:
        """'buildfront is STOPPED with its old size 2 cores / 4 GB; start it with /vm_start buildfront'."""
        name = f"<b>{escape(vm)}</b>"
        if inst is None:
            return f"{name} is in an unknown state (Yandex Cloud does not answer); look at it in the console."
        size = Size.of(inst)
        which = "its old size" if size == before else "its new size" if size == target else "the size"
        text = f"{name} is {inst.status} with {which} {size.text()}"
        if inst.status == STOPPED and was == RUNNING:
            text += f"; start it with /vm_start {escape(vm)}"
        elif inst.status not in (STOPPED, RUNNING):
            text += "; look at it in the Yandex Cloud console"
        return text


__all__ = ["SIZES", "Resizer", "Size", "SizeError", "validate_size"]
