"""``ChatOpsServices``: what the bot and the console ask of the outside systems, behind one facade.

Every integration is optional. A missing one raises ``NotConfigured``, whose text is the
dry-run answer ("dry-run: Yandex Compute is not configured (…); would stop buildfront").
Long operations (start, stop, resize) are not done here: they are recorded in the durable
outbox (``IntakeStore.accept``) and handed to the worker's queue, exactly like webhook work,
and the worker edits the "progress" message as it goes.

Methods are synchronous (the clients are ``requests``-based); the bot calls them in a thread.
"""

from __future__ import annotations

import difflib
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import timezone, tzinfo
from typing import Any, Callable
from zoneinfo import ZoneInfo

from gitlab_hook import migration_alert
from gitlab_hook.effects import Context
from gitlab_hook.gitlab_api import GitLabAPI
from gitlab_hook.intake import IntakeStore
from gitlab_hook.kube import PodLogs
from gitlab_hook.ledger import Ledger, VmUsage
from gitlab_hook.migration_alert import Findings
from gitlab_hook.migration_watch import UNREACHABLE_RETRIES, MigrationWatch
from gitlab_hook.planner import VM_RESIZE, VM_START, VM_STOP, Action
from gitlab_hook.rules import Rules, RunnerRule
from gitlab_hook.taskqueue import TaskQueue
from gitlab_hook.telegram_format import MAX_TEXT, escape, to_plain, utf16_len
from gitlab_hook.vm_state import VmState
from gitlab_hook.yandex import ComputeClient, Instance, NotFound

log = logging.getLogger(__name__)

KEEP_LOCK = "keep:{vm}"  # honoured by the idle stopper as a /vm_keep hold
HINTS = {
    "yandex_compute": ("Yandex Compute", "set YC_FOLDER_ID with YC_IAM_TOKEN or YC_SA_KEY_FILE"),
    "gitlab": ("GitLab", "set GITLAB_URL and GITLAB_TOKEN"),
    "kubernetes": ("Kubernetes", "set KUBECONFIG, or KUBE_API_URL and KUBE_TOKEN"),
}


class ServiceError(Exception):
    """A request the services refuse; the text is the answer (plain)."""


class NotConfigured(ServiceError):
    """The integration a command needs is not configured: answered as a dry-run."""

    def __init__(self, integration: str, would: str):
        name, hint = HINTS[integration]
        super().__init__(f"dry-run: {name} is not configured ({hint}); would {would}")
        self.integration, self.would = integration, would


class VmNotFound(ServiceError):
    """No such VM; lists the close names among the VMs the bot may touch."""

    def __init__(self, name: str, suggestions: list[str]):
        hint = f" Did you mean {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"No VM named {name}.{hint}")
        self.name, self.suggestions = name, suggestions


class VmOutOfScope(ServiceError):
    """A VM outside ``vms.name_regex``: the bot does not touch it."""

    def __init__(self, name: str, regex: str):
        super().__init__(f"{name} is not one of the build VMs (vms.name_regex is {regex}): I leave it alone.")
        self.name, self.regex = name, regex


@dataclass(frozen=True)
class Hold:
    """A /vm_keep hold: who, and until when (epoch seconds)."""

    owner: str
    until: float


@dataclass(frozen=True)
class VmView:
    """A VM as the bot shows it."""

    instance: Instance
    runner: RunnerRule | None
    power: tuple[str, str, float] | None  # the ledger's latest (state, cause, at)
    hold: Hold | None
    tz: tzinfo

    @property
    def name(self) -> str:
        return self.instance.name


@dataclass(frozen=True)
class Queued:
    """An operator action put in the outbox; ``new`` is False when one was already pending."""

    kind: str
    vm: str
    action_ids: tuple[int, ...]
    new: bool


@dataclass(frozen=True)
class KeepResult:
    """What /vm_keep did: ``hold`` is the hold in force afterwards (None: released)."""

    vm: str
    hold: Hold | None
    changed: bool
    previous: Hold | None = None
    note: str = ""


@dataclass(frozen=True)
class RunningJob:
    """A job running on one of a VM's runners."""

    id: int
    name: str
    project: str
    ref: str
    url: str


@dataclass(frozen=True)
class JobsCheck:
    """Jobs running on a VM's runners; ``note`` says why the answer is incomplete or unknown."""

    jobs: list[RunningJob] = field(default_factory=list)
    note: str = ""

    @property
    def checked(self) -> bool:
        return not self.note


@dataclass(frozen=True)
class ReportRow:
    usage: VmUsage
    recorded: bool  # the ledger has any record of this VM


@dataclass(frozen=True)
class Report:
    """/runner_report: per VM figures over the period, and the chart."""

    start: float
    end: float
    days: int
    tz: tzinfo
    rows: list[ReportRow]
    chart_png: bytes | None


@dataclass(frozen=True)
class MigrationLogs:
    """/migration_logs: the message (HTML) and the whole record as a file."""

    namespace: str
    html: str
    document: bytes
    filename: str
    pod: str | None


@dataclass(frozen=True)
class BranchResult:
    project: str
    branch: str
    changed: bool


def _tz(name: str | None) -> tzinfo:
    try:
        return ZoneInfo(name) if name else timezone.utc
    except Exception:  # validated by the rules; stay safe
        return timezone.utc


class ChatOpsServices:
    """The operations behind the commands; each integration is a lazy factory or None (dry-run)."""

    def __init__(self, rules: Rules, *, compute: Callable[[], ComputeClient] | None = None,
                 gitlab: Callable[[], GitLabAPI] | None = None, pods: Callable[[], PodLogs] | None = None,
                 store: IntakeStore | None = None, queue: TaskQueue | None = None, state: VmState | None = None,
                 ledger: Ledger | None = None, clock: Callable[[], float] = time.time,
                 chart: Callable[..., bytes] | None = None):
        self.rules = rules
        self.compute, self.gitlab, self.pods = compute, gitlab, pods
        self.store, self.queue, self.state, self.ledger = store, queue, state, ledger
        self.clock = clock
        if chart is None:
            from bot.chart import timeline_png as chart
        self.chart = chart

    @classmethod
    def from_settings(cls, settings: Any) -> "ChatOpsServices":
        """Live clients where configured, None (dry-run) elsewhere; local stores in DATA_DIR/intake.db."""
        from gitlab_hook.integrations import integrations
        from gitlab_hook.taskqueue import make_huey
        from gitlab_hook.wiring import compute_factory, gitlab_factory, pods_factory

        live = {i.name for i in integrations(settings) if i.live}
        try:  # the shared store opener (SQLite in DATA_DIR, or Redis with REDIS_URL), where this version has it
            from gitlab_hook.stores import open_stores
        except ImportError:
            db = settings.data_dir / "intake.db"
            store, state, ledger = IntakeStore(db), VmState(db), Ledger(db)
        else:
            stores = open_stores(settings)
            store, state, ledger = stores.intake, stores.vm_state, stores.ledger
        return cls(settings.rules,
                   compute=compute_factory(settings) if "yandex_compute" in live else None,
                   gitlab=gitlab_factory(settings) if "gitlab" in live else None,
                   pods=pods_factory(settings) if "kubernetes" in live else None,
                   store=store, queue=TaskQueue(make_huey(settings)), state=state, ledger=ledger)

    # --- what is configured -------------------------------------------------------------------

    def configured(self) -> dict[str, bool]:
        return {"yandex_compute": self.compute is not None, "gitlab": self.gitlab is not None,
                "kubernetes": self.pods is not None}

    def _compute(self, would: str) -> ComputeClient:
        if self.compute is None:
            raise NotConfigured("yandex_compute", would)
        return self.compute()

    # --- VMs ---------------------------------------------------------------------------------

    @property
    def name_regex(self) -> str:
        return self.rules.vms.name_regex

    def in_scope(self, name: str) -> bool:
        return re.search(self.name_regex, name) is not None

    def runner_rule(self, inst_or_name: Instance | str) -> RunnerRule | None:
        names = {inst_or_name} if isinstance(inst_or_name, str) else {inst_or_name.name, inst_or_name.id}
        return next((r for r in self.rules.runners if r.vm in names), None)

    def tz_for(self, vm: str) -> tzinfo:
        """The time zone to show a VM's times in: its runner rule's, else UTC."""
        rule = self.runner_rule(vm)
        return _tz(rule.timezone if rule else None)

    def _view(self, inst: Instance) -> VmView:
        rule = self.runner_rule(inst)
        power = self.ledger.last(inst.name) if self.ledger else None
        return VmView(inst, rule, power, self.hold(inst.name), _tz(rule.timezone if rule else None))

    def list_vms(self) -> list[VmView]:
        """Every VM of the folder whose name matches vms.name_regex, by name."""
        client = self._compute(f"list the VMs matching {self.name_regex}")
        found = [i for i in client.list_instances() if self.in_scope(i.name)]
        return [self._view(i) for i in sorted(found, key=lambda i: i.name)]

    def find_vm(self, name: str, would: str = "look it up") -> Instance:
        """The VM by name (or id), only within vms.name_regex; close names when it does not exist."""
        looks_like_id = re.fullmatch(r"[a-z0-9]{20}", name) is not None
        if not self.in_scope(name) and not looks_like_id:
            raise VmOutOfScope(name, self.name_regex)
        client = self._compute(f"{would} {name}")
        try:
            inst = client.find_instance(name)
        except NotFound:
            names = [i.name for i in client.list_instances() if self.in_scope(i.name)]
            raise VmNotFound(name, difflib.get_close_matches(name, names, n=3, cutoff=0.5)) from None
        if not self.in_scope(inst.name):
            raise VmOutOfScope(inst.name, self.name_regex)
        return inst

    def vm_status(self, name: str) -> VmView:
        """One VM with its runner rule, last power change and hold."""
        return self._view(self.find_vm(name, "show"))

    # --- holds (/vm_keep) ----------------------------------------------------------------------

    def hold(self, vm: str) -> Hold | None:
        """The unexpired /vm_keep hold on a VM, if any."""
        if self.state is None:
            return None
        key = KEEP_LOCK.format(vm=vm)
        if hasattr(self.state, "lock_info"):  # the Redis state store (and VmState, once it has the reader)
            info = self.state.lock_info(key)
            return Hold(info[0], info[1]) if info else None
        # VmState without lock_info: read its table (same database, same schema).
        row = self.state.db.conn().execute("select owner, expires from vm_locks where name = ? and expires > ?",
                                           (key, self.clock())).fetchone()
        return Hold(row[0], row[1]) if row else None

    def keep(self, vm: str, by: str, seconds: float) -> KeepResult:
        """Hold off the idle auto-stop for ``seconds`` (0: release); a longer hold of someone else stays."""
        if self.state is None:  # pragma: no cover - from_settings always has one
            raise ServiceError("no local state store: cannot hold a VM")
        note = ""
        if self.compute is not None:
            vm = self.find_vm(vm, "hold").name
        elif not self.in_scope(vm):
            raise VmOutOfScope(vm, self.name_regex)
        else:
            note = "Yandex Compute is not configured: I could not check that this VM exists."
        key = KEEP_LOCK.format(vm=vm)
        current = self.hold(vm)
        if seconds <= 0:
            if current is None:
                return KeepResult(vm, None, False, note=note)
            self.state.unlock(key, current.owner)
            return KeepResult(vm, None, True, previous=current, note=note)
        until = self.clock() + seconds
        if current is not None and current.owner != by:
            if current.until >= until:
                return KeepResult(vm, current, False, previous=current, note=note)
            self.state.unlock(key, current.owner)
        if not self.state.try_lock(key, by, seconds):  # someone took it in between
            return KeepResult(vm, self.hold(vm), False, previous=current, note=note)
        return KeepResult(vm, Hold(by, until), True, previous=current, note=note)

    # --- queued operations ---------------------------------------------------------------------

    def _queue(self, kind: str, vm: str, by: str, progress: dict[str, int] | None, **extra: Any) -> Queued:
        if self.compute is None:
            raise NotConfigured("yandex_compute", f"{kind.removeprefix('vm_')} {vm}")
        if self.store is None or self.queue is None:  # pragma: no cover - from_settings always has both
            raise ServiceError("no task queue: cannot queue the operation")
        payload = {"vm": vm, "by": by, "progress": progress, **extra}
        action = Action(kind, f"{kind}:{vm}", payload)
        accepted = self.store.accept(f"bot:{uuid.uuid4().hex}", f"bot {kind}", [action])
        if accepted.new_ids:
            try:
                self.queue.submit(accepted.new_ids)
            except Exception:  # the outbox row is on disk: the worker's redriver will pick it up
                log.exception("queueing %s for %s failed; the worker will re-drive outbox rows %s",
                              kind, vm, accepted.new_ids)
        log.info("queued %s for %s by %s: actions %s%s", kind, vm, by, accepted.action_ids,
                 "" if accepted.new_ids else " (one was already pending)")
        return Queued(kind, vm, accepted.action_ids, bool(accepted.new_ids))

    def queue_start(self, vm: str, by: str, progress: dict[str, int] | None = None) -> Queued:
        return self._queue(VM_START, vm, by, progress)

    def queue_stop(self, vm: str, by: str, progress: dict[str, int] | None = None) -> Queued:
        return self._queue(VM_STOP, vm, by, progress)

    def queue_resize(self, vm: str, by: str, cores: int, memory_gb: float, core_fraction: int | None,
                     progress: dict[str, int] | None = None) -> Queued:
        return self._queue(VM_RESIZE, vm, by, progress, cores=cores, memory_gb=memory_gb,
                           core_fraction=core_fraction)

    # --- GitLab --------------------------------------------------------------------------------

    def running_jobs(self, vm: str) -> JobsCheck:
        """Jobs running on the VM's GitLab runners; never raises (a problem becomes the note)."""
        rule = self.runner_rule(vm)
        if rule is None or not rule.gitlab_runner_ids:
            return JobsCheck(note=f"no gitlab_runner_ids for {vm} in the rules: I cannot tell whether jobs run on it")
        if self.gitlab is None:
            return JobsCheck(note="GitLab is not configured: I cannot tell whether jobs run on it")
        jobs: list[RunningJob] = []
        try:
            api = self.gitlab()
            for runner_id in rule.gitlab_runner_ids:
                for j in api.runner_jobs(runner_id, "running", limit=50):
                    project = (j.get("project") or {}).get("path_with_namespace") or ""
                    jobs.append(RunningJob(int(j.get("id") or 0), str(j.get("name") or "?"), project,
                                           str(j.get("ref") or ""), str(j.get("web_url") or "")))
        except Exception as exc:
            log.warning("running jobs of %s unknown: %s", vm, exc)
            return JobsCheck(jobs, note=f"could not check running jobs: {str(exc)[:200]}")
        return JobsCheck(jobs)

    def default_project(self) -> str:
        """The project of the rules when there is exactly one; else ask for it."""
        concrete = sorted({p for r in self.rules.runners for p in r.projects if not any(c in p for c in "*?[")})
        if len(concrete) == 1:
            return concrete[0]
        if concrete:
            raise ServiceError(f"Which project? The rules name several ({', '.join(concrete)}): add it after "
                               "the branch, e.g. /protect_branch stage " + concrete[0])
        raise ServiceError("Which project? The rules name none: add it after the branch, e.g. "
                           "/protect_branch stage group/app")

    def _gitlab(self, would: str) -> GitLabAPI:
        if self.gitlab is None:
            raise NotConfigured("gitlab", would)
        return self.gitlab()

    def protect_branch(self, branch: str, project: str | None = None) -> BranchResult:
        project = project or self.default_project()
        self._gitlab(f"protect branch {branch} of {project}").protect_branch(project, branch)
        return BranchResult(project, branch, True)

    def unprotect_branch(self, branch: str, project: str | None = None) -> BranchResult:
        project = project or self.default_project()
        changed = self._gitlab(f"unprotect branch {branch} of {project}").unprotect_branch(project, branch)
        return BranchResult(project, branch, changed)

    # --- the ledger ----------------------------------------------------------------------------

    def report_tz(self) -> tzinfo:
        return _tz(self.rules.runners[0].timezone if self.rules.runners else None)

    def runner_report(self, days: int, *, with_chart: bool = True) -> Report:
        """Hours on and saved per VM over the last ``days`` days (ledger + rules' runners), with a chart."""
        if self.ledger is None:  # pragma: no cover - from_settings always has one
            raise ServiceError("no uptime ledger")
        end = self.clock()
        start = end - days * 86400
        usages = {u.vm: u for u in self.ledger.usage(start, end, dict(self.rules.price_per_hour))}
        missing = [r.vm for r in self.rules.runners if r.vm not in usages]
        if missing:
            usages.update({u.vm: u for u in self.ledger.usage(start, end, dict(self.rules.price_per_hour),
                                                               vms=missing)})
        rows = [ReportRow(usages[name], self.ledger.last(name) is not None) for name in sorted(usages)]
        tz = self.report_tz()
        chart = None
        if with_chart:
            try:
                chart = self.chart([r.usage for r in rows if r.recorded], start, end, tz)
            except Exception:  # the figures still answer the question
                log.exception("runner report chart failed")
        return Report(start, end, days, tz, rows, chart)

    # --- Kubernetes ----------------------------------------------------------------------------

    def migration_logs(self, namespace: str) -> MigrationLogs:
        """The newest migration pod of a namespace: state, notes and the last lines; the whole log as a file."""
        if self.pods is None:
            raise NotConfigured("kubernetes", f"read the migration pod's logs in namespace {namespace}")
        rule = self.rules.migrations.model_copy(update={"namespaces": {}, "default_namespace": namespace})
        # MigrationWatch.gather finds the pod, reads and masks the logs, and turns every problem into a
        # note; it needs neither the notifier nor the state (used only when sending an alert).
        watch = MigrationWatch(rule, notifier=None, state=None, pods=self.pods)  # type: ignore[arg-type]
        found = watch.gather({}, Context(0, UNREACHABLE_RETRIES, lambda: None))
        html = _logs_message(namespace, rule.container, found)
        return MigrationLogs(namespace, html, _logs_document(namespace, found), f"migration-logs-{namespace}.txt",
                             found.pod)


def _best_log(f: Findings) -> tuple[str, str]:
    for label, text in (("pod log", f.current_log), ("previous container's log", f.previous_log),
                        ("pod events", "\n".join(f.events))):
        if text.strip():
            return label, text
    return "", ""


def _logs_message(namespace: str, container: str, f: Findings, limit: int = MAX_TEXT) -> str:
    lines = [f"📜 <b>Migration logs</b> · namespace <code>{escape(namespace)}</code>"]
    if f.pod:
        bits = [f"container {escape(f.container or container)}"]
        if f.container_state:
            bits.append(escape(f.container_state))
        if f.restarts:
            bits.append(f"restarts {f.restarts}")
        lines.append(f"Pod: <code>{escape(f.pod)}</code> ({', '.join(bits)})")
        if f.how_chosen:
            lines.append(f"<i>{escape(f.how_chosen)}</i>")
    lines.extend(f"⚠️ {escape(n)}" for n in f.notes)
    head = "\n".join(lines)
    label, text = _best_log(f)
    if not text:
        return head + ("\n<i>no logs were found</i>" if f.pod else "")
    caption = f"\n<b>Last lines of the {label}</b> (whole log attached):\n"
    budget = max(0, limit - utf16_len(to_plain(head + caption)) - migration_alert.SAFETY)
    return f"{head}{caption}<pre>{escape(migration_alert.tail_that_fits(text, budget))}</pre>"


def _logs_document(namespace: str, f: Findings) -> bytes:
    parts = [f"Migration pod logs in namespace {namespace}"
             + (f": pod {f.pod}, container {f.container}, {f.container_state or 'no state'}, restarts {f.restarts}. "
                f"{f.how_chosen}" if f.pod else ": no pod")]
    parts.extend(f"Note: {n}" for n in f.notes)
    parts.extend(migration_alert.log_sections(f))
    return ("\n\n".join(parts) + "\n").encode("utf-8")
