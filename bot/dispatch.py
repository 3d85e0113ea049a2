"""One place that runs a parsed command for a person in a chat: access, services, texts, confirmations, audit.

Both front ends (Telegram in ``bot.app``, stdin/stdout in ``bot.console``) call this and only
deliver what it returns, so a command behaves the same in both. Synchronous: the bot calls it in
a worker thread. Outside-system failures are not caught here: each front end has one error
handler that logs and answers with ``error_text``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter

from bot import commands as C
from bot.access import Actor, Place, Policy
from bot.audit import AuditLog, announcement
from bot.commands import Command, CommandError, UnknownCommand
from bot.confirm import ConfirmStore
from bot.services import (
    ChatOpsServices,
    JobsCheck,
    NotConfigured,
    Report,
    ServiceError,
    VmView,
)
from gitlab_hook.durations import format_duration
from gitlab_hook.planner import VM_RESIZE, VM_START, VM_STOP
from gitlab_hook.resize import size_problem
from gitlab_hook.telegram_format import escape, link
from gitlab_hook.yandex.compute import (
    CRASHED,
    ERROR,
    RUNNING,
    STOPPED,
    STOPPING,
    UP_STATUSES,
)

log = logging.getLogger("bot")

STALE_AFTER = 300.0  # a state-changing command older than this (sent while the bot was down) is not run
DOWN = {STOPPED, STOPPING}
_ICON = {RUNNING: "🟢", STOPPED: "⚪", ERROR: "🔴", CRASHED: "🔴"}

REGISTRY = CollectorRegistry()
COMMANDS = Counter("gitlab_hook_bot_commands", "Bot commands by command and outcome.", ["command", "outcome"],
                   registry=REGISTRY)
REFUSALS = Counter("gitlab_hook_bot_refusals", "Refused bot commands by reason.", ["reason"], registry=REGISTRY)


@dataclass(frozen=True)
class Attachment:
    """A file to send with the answer: a photo (the chart) or a document (a whole log)."""

    filename: str
    data: bytes
    caption: str = ""  # HTML
    photo: bool = False


@dataclass(frozen=True)
class Pending:
    """A queued operation waiting for its progress message (start) or its confirmation (stop, resize)."""

    kind: str
    vm: str
    params: dict[str, Any] = field(default_factory=dict)
    command: str = ""  # the line as typed

    def doing(self) -> str:
        return {VM_START: "Starting", VM_STOP: "Stopping", VM_RESIZE: "Resizing"}[self.kind]

    def noun(self) -> str:
        return {VM_START: "start", VM_STOP: "stop", VM_RESIZE: "resize"}[self.kind]

    def verb(self) -> str:
        return {VM_START: "started", VM_STOP: "stopped", VM_RESIZE: "resized"}[self.kind]

    def size(self) -> str:
        p = self.params
        text = f"{p['cores']} cores, {p['memory_gb']:g} GB"
        return text + (f", {p['core_fraction']}% CPU" if p.get("core_fraction") else "")


@dataclass
class Reply:
    """What to show. ``pending``: send ``html`` as the progress message, then ``commit``.

    ``confirm_token``: show Confirm/Cancel for that token. ``announce``: HTML for the alerts chat.
    ``edit_progress`` (from ``commit``): replace the progress message's text with ``html``.
    """

    html: str
    files: list[Attachment] = field(default_factory=list)
    confirm_token: str | None = None
    pending: Pending | None = None
    announce: str | None = None
    outcome: str = "ok"
    edit_progress: bool = False


@dataclass(frozen=True)
class TapResult:
    """What a tap on Confirm/Cancel did: the callback answer, the prompt's new text, the work to commit."""

    callback_text: str
    alert: bool = False
    edit_html: str | None = None
    pending: Pending | None = None


def fmt_time(epoch: float, tz: tzinfo, now: float) -> str:
    """'14:02 MSK' today, '27 Nov 14:02 MSK' otherwise."""
    t = datetime.fromtimestamp(epoch, tz)
    same_day = t.date() == datetime.fromtimestamp(now, tz).date()
    return t.strftime("%H:%M %Z" if same_day else "%d %b %H:%M %Z")


def gb(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def error_text(exc: BaseException) -> str:
    """A brief, safe description of an outside failure for the user (details are in the log)."""
    from gitlab_hook.gitlab_api import GitLabError
    from gitlab_hook.kube import KubeError
    from gitlab_hook.sqlite_db import StorageError
    from gitlab_hook.yandex import YandexError

    for kinds, name in ((YandexError, "Yandex Compute"), (GitLabError, "GitLab"), (KubeError, "Kubernetes"),
                        (StorageError, "the local storage")):
        if isinstance(exc, kinds):
            detail = " ".join(str(exc).split())
            return f"{name} failed: {detail[:300]}" if detail else f"{name} failed"
    try:
        from telegram.error import TelegramError

        if isinstance(exc, TelegramError):
            return f"Telegram failed: {str(exc)[:200]}"
    except ImportError:  # pragma: no cover
        pass
    return f"an internal error ({type(exc).__name__}; details are in the bot's log)"


class Dispatcher:
    """Runs commands for the front ends."""

    def __init__(self, services: ChatOpsServices, policy: Policy, confirms: ConfirmStore, audit: AuditLog, *,
                 clock: Callable[[], float] = time.time):
        self.services, self.policy, self.confirms, self.audit = services, policy, confirms, audit
        self.clock = clock

    # --- entry points ------------------------------------------------------------------------------

    def handle_text(self, text: str, actor: Actor, place: Place, *, bot_username: str | None = None,
                    sent_at: float | None = None) -> Reply | None:
        """Parse and run one line; None when the line is not for us (chatter, another bot's command)."""
        try:
            cmd = C.parse(text, bot_username)
        except UnknownCommand as exc:
            if not self.policy.chat_allowed(actor, place):
                refusal = self.policy.check(C.BY_NAME["help"], actor, place)
                return self._refused(exc.word, refusal, actor, place, {}) if refusal else None
            # In a group, an unknown /word may belong to another bot: answer only when addressed to us.
            if place.chat_type in ("group", "supergroup", "channel") and f"@{bot_username or ''}".lower() \
                    not in text.split(None, 1)[0].lower():
                return None
            return self._count("unknown", Reply(escape(str(exc)), outcome="usage"))
        except CommandError as exc:
            refusal = self.policy.check(exc.spec, actor, place) if exc.spec else None
            if refusal:  # strangers learn nothing about the commands' arguments
                return self._refused(exc.spec.name, refusal, actor, place, {})
            return self._count(exc.spec.name if exc.spec else "unknown", Reply(escape(str(exc)), outcome="usage"))
        if cmd is None:
            return None
        return self.handle(cmd, actor, place, sent_at=sent_at)

    def handle(self, cmd: Command, actor: Actor, place: Place, *, sent_at: float | None = None) -> Reply:
        """Run a parsed command: refusal, usage problem, dry-run, answer, prompt or pending operation."""
        refusal = self.policy.check(cmd.spec, actor, place)
        if refusal:
            return self._refused(cmd.name, refusal, actor, place, cmd.args)
        if cmd.spec.changes_state and sent_at is not None and self.clock() - sent_at > STALE_AFTER:
            ago = format_duration(self.clock() - sent_at)
            self._audit(cmd, actor, place, "ignored", f"sent {ago} ago while the bot was offline")
            return self._count(cmd.name, Reply(escape(f"I was offline when you sent this ({ago} ago), so I did "
                                                      "nothing. Send it again if you still want it."),
                                               outcome="stale"))
        handler = getattr(self, f"_do_{cmd.name}")
        try:
            reply = handler(cmd, actor, place)
        except NotConfigured as exc:
            if cmd.spec.changes_state:
                self._audit(cmd, actor, place, "dry-run", str(exc))
            log.info("%s by %s: %s", C.describe(cmd), actor.mention, exc)
            reply = Reply(escape(str(exc)), outcome="dry-run")
        except ServiceError as exc:
            reply = Reply(escape(str(exc)), outcome="refused")
        return self._count(cmd.name, reply)

    def commit(self, pending: Pending, actor: Actor, place: Place,
               progress: tuple[int, int] | None = None) -> Reply:
        """Queue a pending operation; ``progress`` is the (chat id, message id) the worker will edit."""
        prog = {"chat_id": progress[0], "message_id": progress[1]} if progress else None
        s = self.services
        args = {"vm": pending.vm, **pending.params}
        try:
            if pending.kind == VM_START:
                q = s.queue_start(pending.vm, actor.by, prog)
            elif pending.kind == VM_STOP:
                q = s.queue_stop(pending.vm, actor.by, prog)
            else:
                q = s.queue_resize(pending.vm, actor.by, pending.params["cores"], pending.params["memory_gb"],
                                   pending.params.get("core_fraction"), prog)
        except NotConfigured as exc:
            self._audit_raw(pending.kind, args, actor, place, "dry-run", str(exc))
            return Reply(escape(str(exc)), outcome="dry-run", edit_progress=True)
        ids = ", ".join(f"#{i}" for i in q.action_ids)
        if not q.new:
            self._audit_raw(pending.kind, args, actor, place, "unchanged", f"already pending: {ids}")
            return Reply(f"ℹ️ A {pending.noun()} of <b>{escape(pending.vm)}</b> is already queued (action {ids}): "
                         "nothing more to do.", outcome="unchanged", edit_progress=True)
        self._audit_raw(pending.kind, args, actor, place, "queued", f"actions {ids}")
        extra = f"to {pending.size()}" if pending.kind == VM_RESIZE else ""
        where = ("I will update the message above." if progress else
                 "The worker reports progress in the alerts chat.")
        return Reply(f"✅ Queued: {escape(pending.doing().lower())} <b>{escape(pending.vm)}</b> (action {ids}). "
                     f"{where}", outcome="queued",
                     announce=self._announce(place, announcement(actor.mention, pending.verb(), pending.vm, extra)))

    def tap(self, token: str, answer: str, actor: Actor, place: Place) -> TapResult:
        """A tap on a Confirm/Cancel button (or the console's y/n)."""
        res = self.confirms.resolve(token, actor.user_id, answer)
        conf = res.confirmation
        if res.outcome == "unknown" or conf is None:
            return TapResult("This question is no longer known.", alert=True,
                             edit_html="⌛ This question is no longer valid: nothing was done.")
        pending = Pending(conf.command["kind"], conf.command["vm"], conf.command.get("params") or {},
                          conf.command.get("command", ""))
        args = {"vm": pending.vm, **pending.params}
        vm = f"<b>{escape(pending.vm)}</b>"
        if res.outcome == "already":
            return TapResult(f"Already answered ({conf.state}).")
        if res.outcome == "not_yours":
            REFUSALS.labels("not_yours").inc()
            log.warning("refused: %s (id %s) tapped %s's confirmation of %s", actor.mention, actor.user_id,
                        conf.asker, pending.command)
            return TapResult(f"Only {conf.asker} can answer this question.", alert=True)
        if res.outcome == "expired":
            self._audit_raw(pending.kind, args, actor, place, "expired", "answered after expiry")
            return TapResult("Too late: this question expired.", alert=True,
                             edit_html=f"⌛ Expired: nothing was done to {vm}. Send {escape(pending.command)} again "
                                       "if you still want it.")
        if res.outcome == "cancelled":
            self._audit_raw(pending.kind, args, actor, place, "cancelled")
            return TapResult("Cancelled.", edit_html=f"✖️ Cancelled by {escape(actor.mention)}: nothing was done "
                                                      f"to {vm}.")
        refusal = self.policy.check(C.BY_NAME[_spec_name(pending.kind)], actor, place)
        if refusal:  # the rules changed between the question and the answer
            REFUSALS.labels(refusal.reason).inc()
            return TapResult(refusal.text, alert=True, edit_html=escape(refusal.text))
        return TapResult(f"{pending.doing()} {pending.vm}…", pending=pending,
                         edit_html=f"⏳ {pending.doing()} {vm}"
                                   + (f" to {escape(pending.size())}" if pending.kind == VM_RESIZE else "")
                                   + f" (confirmed by {escape(actor.mention)})…" + _will_update(place))

    def sweep(self) -> list[tuple[int, int, str]]:
        """Expire unanswered prompts: (chat id, message id, new text) for each one to edit; forget old ones."""
        self.confirms.prune()
        out = []
        for conf in self.confirms.expire_due():
            self.audit.record(actor_id=conf.user_id, actor=conf.asker, role=None, chat_id=conf.chat_id,
                              command=conf.command.get("kind", "?"), args={"vm": conf.command.get("vm")},
                              outcome="expired", detail="nobody answered")
            if conf.chat_id is not None and conf.message_id is not None:
                out.append((conf.chat_id, conf.message_id,
                            f"⌛ Expired: nothing was done to <b>{escape(conf.command.get('vm', '?'))}</b>. "
                            f"Send {escape(conf.command.get('command', 'the command'))} again if you still want it."))
        return out

    def report_error(self, exc: BaseException, what: str, actor: Actor | None = None,
                     place: Place | None = None) -> str:
        """Log a failure first (with its traceback), then return the brief answer (HTML)."""
        log.error("%s failed for %s: %s", what, actor.mention if actor else "?", exc, exc_info=exc)
        COMMANDS.labels(what.lstrip("/").split("@")[0] if what.startswith("/") else "other", "error").inc()
        if actor is not None and place is not None:
            try:
                self.audit.record(actor_id=actor.user_id, actor=actor.mention, role=self.policy.role_of(actor),
                                  chat_id=place.chat_id, command=what, args={}, outcome="failed",
                                  detail=str(exc)[:500])
            except Exception:  # the storage itself may be what failed
                log.warning("could not record the failure of %s in the audit trail", what)
        return f"⚠️ {escape(what)} failed: {escape(error_text(exc))}"

    # --- commands ----------------------------------------------------------------------------------

    def _do_help(self, cmd: Command, actor: Actor, place: Place) -> Reply:
        return Reply(C.help_html(self.policy.role_of(actor), cmd.args.get("topic")))

    def _do_whoami(self, cmd: Command, actor: Actor, place: Place) -> Reply:
        role = self.policy.role_of(actor)
        if actor.console:
            return Reply("You are the local console operator, with the <b>admin</b> role.")
        who = f"You are {escape(actor.mention)}, Telegram id <code>{actor.user_id}</code>"
        lines = [who + (f", role <b>{role}</b>." if role else ", with no role here.")]
        if role is None and not actor.anonymous:
            lines.append(f"To get one, ask an admin to add <code>{actor.user_id}: viewer</code> (or operator) "
                         "under telegram.users in the rules file.")
        if actor.anonymous:
            lines.append("You post anonymously or as a channel, so I cannot tell who you are.")
        if place.chat_id is not None and place.chat_id == self.policy.alerts_chat_id:
            lines.append("This is the alerts chat: I take commands here.")
        elif self.policy.chat_allowed(actor, place):
            lines.append("I take your commands in this private chat.")
        else:
            lines.append(f"I do not take commands in this chat (id <code>{place.chat_id}</code>).")
        return Reply("\n".join(lines))

    def _do_vms(self, cmd: Command, actor: Actor, place: Place) -> Reply:
        views = self.services.list_vms()
        now = self.clock()
        if not views:
            return Reply(f"No VMs match vms.name_regex <code>{escape(self.services.name_regex)}</code>.")
        lines = [f"<b>Build VMs</b> ({len(views)}, matching <code>{escape(self.services.name_regex)}</code>):"]
        for v in views:
            lines.append(self._vm_line(v, now))
        return Reply("\n".join(lines))

    def _do_vm_status(self, cmd: Command, actor: Actor, place: Place) -> Reply:
        v = self.services.vm_status(cmd.args["vm"])
        now = self.clock()
        i = v.instance
        lines = [f"{_ICON.get(i.status, '🟡')} <b>{escape(i.name)}</b> — {escape(i.status or 'UNKNOWN')}",
                 escape(f"{_size(i)} · preemptible: {'yes' if i.preemptible else 'no'}"),
                 escape(f"id {i.id} · {i.platform_id or '?'} · {i.zone_id or '?'}")]
        up = self._uptime(v, now)
        if up:
            lines.append(escape(up[:1].upper() + up[1:]))
        if v.runner:
            r = v.runner
            bits = [f"branches {', '.join(r.branches)}"]
            bits.append(f"idle stop after {format_duration(r.idle_stop_after)}" if r.idle_stop_after
                        else "no idle stop")
            if r.keep_running:
                kr = r.keep_running if isinstance(r.keep_running, str) else "; ".join(r.keep_running)
                bits.append(f"kept running {kr} ({r.timezone})")
            lines.append(escape("Runner: " + "; ".join(bits)))
        if v.hold:
            lines.append(escape(f"⏸ Kept on until {fmt_time(v.hold.until, v.tz, now)} by {v.hold.owner}"))
        if v.runner and v.runner.gitlab_runner_ids:
            lines.append(self._jobs_text(self.services.running_jobs(i.name), i.name, short=True))
        return Reply("\n".join(x for x in lines if x))

    def _do_vm_start(self, cmd: Command, actor: Actor, place: Place) -> Reply:
        inst = self.services.find_vm(cmd.args["vm"], "start")
        if inst.status in UP_STATUSES:
            self._audit(cmd, actor, place, "unchanged", f"already {inst.status}")
            return Reply(f"<b>{escape(inst.name)}</b> is already {escape(inst.status)}: nothing to do.",
                         outcome="unchanged")
        pending = Pending(VM_START, inst.name, {}, cmd.text)
        return Reply(f"⏳ Starting <b>{escape(inst.name)}</b> (asked by {escape(actor.mention)})…"
                     + _will_update(place), pending=pending)

    def _do_vm_stop(self, cmd: Command, actor: Actor, place: Place) -> Reply:
        inst = self.services.find_vm(cmd.args["vm"], "stop")
        if inst.status in DOWN:
            self._audit(cmd, actor, place, "unchanged", f"already {inst.status}")
            return Reply(f"<b>{escape(inst.name)}</b> is already {escape(inst.status)}: nothing to do.",
                         outcome="unchanged")
        jobs = self.services.running_jobs(inst.name)
        text = f"Stop <b>{escape(inst.name)}</b> ({escape(inst.status)}, {escape(_size(inst))})?"
        return self._prompt(cmd, actor, place, Pending(VM_STOP, inst.name, {}, cmd.text),
                            text + "\n" + self._jobs_text(jobs, inst.name))

    def _do_vm_upgrade(self, cmd: Command, actor: Actor, place: Place) -> Reply:
        a = cmd.args
        inst = self.services.find_vm(a["vm"], "resize")
        fraction = a["core_fraction"] or inst.core_fraction
        problem = size_problem(inst.platform_id, a["cores"], a["memory_gb"], fraction)
        if problem:
            return Reply(escape(f"Not a size {inst.name} can have: {problem}."), outcome="usage")
        if (inst.cores, round(inst.memory_gb, 3), inst.core_fraction) == (a["cores"], round(a["memory_gb"], 3),
                                                                           fraction):
            self._audit(cmd, actor, place, "unchanged", "already that size")
            return Reply(f"<b>{escape(inst.name)}</b> already has {escape(_size(inst))}: nothing to do.",
                         outcome="unchanged")
        params = {"cores": a["cores"], "memory_gb": a["memory_gb"], "core_fraction": a["core_fraction"]}
        pending = Pending(VM_RESIZE, inst.name, params, cmd.text)
        target = f"{a['cores']} cores · {gb(a['memory_gb'])} GB · {fraction}% CPU"
        lines = [f"Resize <b>{escape(inst.name)}</b> from {escape(_size(inst))} to <b>{escape(target)}</b>?"]
        if inst.status in UP_STATUSES:
            lines.append(f"It is {escape(inst.status)}: it will be stopped, resized and started again.")
            lines.append(self._jobs_text(self.services.running_jobs(inst.name), inst.name))
        else:
            lines.append(f"It is {escape(inst.status)}: it will be resized and stay stopped.")
        return self._prompt(cmd, actor, place, pending, "\n".join(lines))

    def _do_vm_keep(self, cmd: Command, actor: Actor, place: Place) -> Reply:
        res = self.services.keep(cmd.args["vm"], actor.by, cmd.args["seconds"])
        now = self.clock()
        rule = self.services.runner_rule(res.vm)
        tz = self.services.tz_for(res.vm)
        vm = f"<b>{escape(res.vm)}</b>"
        lines: list[str] = []
        announce = None
        if cmd.args["seconds"] <= 0:
            if res.changed and res.previous:
                lines.append(f"⏯ Released the hold on {vm} ({escape(res.previous.owner)}'s, until "
                             f"{escape(fmt_time(res.previous.until, tz, now))}): the idle auto-stop applies again.")
                announce = announcement(actor.mention, "released", res.vm, "for the idle auto-stop")
            else:
                lines.append(f"{vm} had no hold: nothing changed.")
        elif not res.changed and res.hold:
            lines.append(f"{vm} is already held until {escape(fmt_time(res.hold.until, tz, now))} by "
                         f"{escape(res.hold.owner)}, longer than you asked: nothing changed.")
        else:
            until = fmt_time(res.hold.until, tz, now) if res.hold else "?"
            lines.append(f"⏸ {vm} will not be auto-stopped until {escape(until)} "
                         f"(for {escape(format_duration(cmd.args['seconds']))}).")
            if res.previous and res.previous.owner != actor.by:
                lines.append(escape(f"It replaces {res.previous.owner}'s hold, which ended sooner."))
            if rule is None or not rule.idle_stop_after:
                lines.append(escape(f"Note: {res.vm} has no idle_stop_after in the rules, so it is not auto-stopped "
                                    "anyway."))
            announce = announcement(actor.mention, "kept", res.vm, f"running until {until}")
        if res.note:
            lines.append(escape(res.note))
        self._audit(cmd, actor, place, "done" if res.changed else "unchanged",
                    f"hold until {res.hold.until:.0f} by {res.hold.owner}" if res.hold else "no hold")
        return Reply("\n".join(lines), announce=self._announce(place, announce),
                     outcome="done" if res.changed else "unchanged")

    def _do_runner_report(self, cmd: Command, actor: Actor, place: Place) -> Reply:
        report = self.services.runner_report(cmd.args["days"])
        files = []
        if report.chart_png:
            files.append(Attachment(f"runner-report-{report.days}d.png", report.chart_png,
                                    f"On/off timeline, last {report.days} days", photo=True))
        return Reply(_report_html(report, self.clock()), files=files)

    def _do_migration_logs(self, cmd: Command, actor: Actor, place: Place) -> Reply:
        res = self.services.migration_logs(cmd.args["namespace"])
        files = []
        if res.pod:
            files.append(Attachment(res.filename, res.document, f"Whole log of <code>{escape(res.pod)}</code>"))
        return Reply(res.html, files=files)

    def _do_protect_branch(self, cmd: Command, actor: Actor, place: Place) -> Reply:
        res = self.services.protect_branch(cmd.args["branch"], cmd.args.get("project"))
        self._audit(cmd, actor, place, "done", f"{res.project}:{res.branch}")
        what = f"{res.branch} of {res.project}"
        return Reply(f"🔒 Protected branch <b>{escape(res.branch)}</b> of {escape(res.project)}: only maintainers "
                     "may push and merge.", outcome="done",
                     announce=self._announce(place, announcement(actor.mention, "protected", what)))

    def _do_unprotect_branch(self, cmd: Command, actor: Actor, place: Place) -> Reply:
        res = self.services.unprotect_branch(cmd.args["branch"], cmd.args.get("project"))
        what = f"{res.branch} of {res.project}"
        self._audit(cmd, actor, place, "done" if res.changed else "unchanged", f"{res.project}:{res.branch}")
        if not res.changed:
            return Reply(f"Branch <b>{escape(res.branch)}</b> of {escape(res.project)} was not protected: nothing "
                         "changed.", outcome="unchanged")
        return Reply(f"🔓 Branch <b>{escape(res.branch)}</b> of {escape(res.project)} is no longer protected.",
                     outcome="done", announce=self._announce(place, announcement(actor.mention, "unprotected", what)))

    # --- helpers -----------------------------------------------------------------------------------

    def _prompt(self, cmd: Command, actor: Actor, place: Place, pending: Pending, text: str) -> Reply:
        conf = self.confirms.create(user_id=actor.user_id if actor.user_id is not None else -1, asker=actor.mention,
                                    chat_id=place.chat_id, thread_id=place.thread_id,
                                    command={"kind": pending.kind, "vm": pending.vm, "params": pending.params,
                                             "command": cmd.text})
        minutes = max(1, round(self.confirms.ttl / 60))
        text += (f"\nOnly {escape(actor.mention)} can answer; the question expires in {minutes} min.")
        return Reply(text, confirm_token=conf.token, outcome="asked")

    def _jobs_text(self, jobs: JobsCheck, vm: str, short: bool = False) -> str:
        if not jobs.checked:
            return f"❔ {escape(jobs.note[:1].upper() + jobs.note[1:])}."
        if not jobs.jobs:
            return "No jobs are running on it." if not short else "Jobs running: none."
        shown = []
        for j in jobs.jobs[:5]:
            label = f"#{j.id} {j.name}" + (f" ({j.project} {j.ref})" if j.project else "")
            shown.append(link(j.url, label) if j.url.startswith(("http://", "https://")) else escape(label))
        more = f" and {len(jobs.jobs) - 5} more" if len(jobs.jobs) > 5 else ""
        n = len(jobs.jobs)
        if short:
            return f"Jobs running: {n}: " + ", ".join(shown) + more
        return (f"⚠️ <b>{n} job{'s are' if n > 1 else ' is'} running on it</b>: " + ", ".join(shown) + more
                + ". They will fail if it goes down now.")

    def _vm_line(self, v: VmView, now: float) -> str:
        i = v.instance
        bits = [_size(i), f"preemptible: {'yes' if i.preemptible else 'no'}"]
        up = self._uptime(v, now)
        if up:
            bits.append(up)
        if v.hold:
            bits.append(f"kept on until {fmt_time(v.hold.until, v.tz, now)} by {v.hold.owner}")
        return (f"{_ICON.get(i.status, '🟡')} <b>{escape(i.name)}</b> {escape(i.status or 'UNKNOWN')} · "
                + escape(" · ".join(bits)))

    @staticmethod
    def _uptime(v: VmView, now: float) -> str:
        status = v.instance.status
        if status == RUNNING:
            if v.power and v.power[0] == "on":
                return (f"on for {format_duration(max(0.0, now - v.power[2]))} (since "
                        f"{fmt_time(v.power[2], v.tz, now)}, woken by {v.power[1]})")
            return "on for: unknown"
        if status == STOPPED and v.power and v.power[0] == "off":
            return f"off since {fmt_time(v.power[2], v.tz, now)}"
        return ""

    def _announce(self, place: Place, html: str | None) -> str | None:
        """Announce in the alerts chat only what was done elsewhere (there, the answer is seen anyway)."""
        if html is None:
            return None
        if place.chat_id is not None and place.chat_id == self.policy.alerts_chat_id:
            return None
        return html

    def _refused(self, name: str, refusal: Any, actor: Actor, place: Place, args: dict[str, Any]) -> Reply:
        REFUSALS.labels(refusal.reason).inc()
        who = actor.mention if "(id " in actor.mention else f"{actor.mention} (id {actor.user_id})"
        log.warning("refused /%s from %s in chat %s (%s): %s", name, who, place.chat_id, place.chat_type,
                    refusal.reason)
        try:
            self.audit.record(actor_id=actor.user_id, actor=actor.mention, role=self.policy.role_of(actor),
                              chat_id=place.chat_id, command=name, args=args, outcome="refused",
                              detail=refusal.reason)
        except Exception:
            log.warning("could not record the refusal in the audit trail", exc_info=True)
        return self._count(name, Reply(escape(refusal.text), outcome="refused"))

    def _audit(self, cmd: Command, actor: Actor, place: Place, outcome: str, detail: str = "") -> None:
        self._audit_raw(cmd.name, cmd.args, actor, place, outcome, detail)

    def _audit_raw(self, command: str, args: dict[str, Any], actor: Actor, place: Place, outcome: str,
                   detail: str = "") -> None:
        self.audit.record(actor_id=actor.user_id, actor=actor.mention, role=self.policy.role_of(actor),
                          chat_id=place.chat_id, command=command, args=args, outcome=outcome, detail=detail)

    @staticmethod
    def _count(name: str, reply: Reply) -> Reply:
        COMMANDS.labels(name, reply.outcome).inc()
        return reply


def _will_update(place: Place) -> str:
    """Telegram: the worker edits the message as it goes; the console has no message to edit."""
    return "" if place.chat_type == "console" else " I will update this message."


def _spec_name(kind: str) -> str:
    return {VM_START: "vm_start", VM_STOP: "vm_stop", VM_RESIZE: "vm_upgrade"}[kind]


def _size(i: Any) -> str:
    return f"{i.cores} cores · {gb(i.memory_gb)} GB · {i.core_fraction}% CPU"


def _report_html(r: Report, now: float) -> str:
    span = (f"{datetime.fromtimestamp(r.start, r.tz):%d %b %H:%M} – "
            f"{datetime.fromtimestamp(r.end, r.tz):%d %b %H:%M %Z}")
    lines = [f"📊 <b>Runner report</b>, last {r.days} day{'s' if r.days != 1 else ''} ({escape(span)})"]
    total_on = total_saved = 0.0
    money = 0.0
    priced = False
    for row in r.rows:
        u = row.usage
        if not row.recorded:
            lines.append(f"<b>{escape(u.vm)}</b>: no power changes recorded yet")
            continue
        period = max(1e-9, (r.end - r.start) / 3600)
        text = (f"<b>{escape(u.vm)}</b>: on {u.hours_on:.1f} h, saved {u.hours_saved:.1f} h "
                f"({100 * u.hours_saved / period:.0f}% of always-on)")
        if u.cost_saved is not None:
            text += f" · saved {u.cost_saved:.2f} (spent {u.cost_spent:.2f})"
            money += u.cost_saved
            priced = True
        wakes = ", ".join(f"{cause} ×{n}" for cause, n in u.wakes.most_common())
        text += f" · woken by {escape(wakes)}" if wakes else " · not woken in this period"
        lines.append(text)
        total_on += u.hours_on
        total_saved += u.hours_saved
    if not r.rows:
        lines.append("No runner VMs in the ledger or the rules yet.")
    elif sum(1 for row in r.rows if row.recorded) > 1:
        lines.append(f"<b>Total</b>: on {total_on:.1f} h, saved {total_saved:.1f} h"
                     + (f", saved {money:.2f}" if priced else ""))
    return "\n".join(lines)
