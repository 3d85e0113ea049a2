"""Build the worker's clients and handlers from validated settings: live where configured, else dry-run."""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Callable

from gitlab_hook.effects import DRY_RUN_HANDLERS, Handler, dry_vm_command
from gitlab_hook.idle_stop import IdleStopper
from gitlab_hook.integrations import integrations
from gitlab_hook.gitlab_api import GitLabAPI
from gitlab_hook.kube import PodLogs, load_api_client
from gitlab_hook.migration_watch import MigrationWatch
from gitlab_hook.planner import ENSURE_RUNNING, REPORT_MIGRATION_FAILURE, VM_RESIZE, VM_START, VM_STOP
from gitlab_hook.power import PowerControl
from gitlab_hook.reconcile import Reconciler
from gitlab_hook.resize import Resizer
from gitlab_hook.runner_control import RunnerControl
from gitlab_hook.settings import Settings
from gitlab_hook.stores import Stores, open_stores
from gitlab_hook.telegram import Notifier, build_notifier
from gitlab_hook.yandex import ComputeClient, choose_token_provider, metadata_folder_id

log = logging.getLogger(__name__)


def _url(value: object) -> str:
    return str(value).rstrip("/")


def make_notifier(settings: Settings) -> Notifier:
    """The Telegram notifier, or the dry-run one that logs what it would send."""
    env = settings.env
    return build_notifier(
        token=env.TELEGRAM_BOT_TOKEN.get_secret_value() if env.TELEGRAM_BOT_TOKEN else None,
        chat_id=env.TELEGRAM_CHAT_ID, thread_id=env.TELEGRAM_THREAD_ID, api_url=_url(env.TELEGRAM_API_URL))


def _lazy(build: Callable[[], object]) -> Callable[[], object]:
    """Build a client on first use (a bad kubeconfig must not stop the worker), then keep it."""
    lock = threading.Lock()
    built: list[object] = []

    def get() -> object:
        with lock:
            if not built:
                built.append(build())
            return built[0]

    return get


def compute_factory(settings: Settings) -> Callable[[], ComputeClient]:
    """A lazy ComputeClient; the folder may come from the metadata service, so not at start-up."""
    env = settings.env

    def build() -> ComputeClient:
        folder = env.YC_FOLDER_ID or metadata_folder_id(_url(env.YC_METADATA_URL))
        tokens = choose_token_provider(
            iam_token=env.YC_IAM_TOKEN.get_secret_value() if env.YC_IAM_TOKEN else None,
            sa_key_file=env.YC_SA_KEY_FILE, iam_url=_url(env.YC_IAM_URL), metadata_url=_url(env.YC_METADATA_URL))
        return ComputeClient(compute_url=_url(env.YC_COMPUTE_URL), operation_url=_url(env.YC_OPERATION_URL),
                             folder_id=folder, token_provider=tokens)

    return _lazy(build)  # type: ignore[return-value]


def pods_factory(settings: Settings) -> Callable[[], PodLogs]:
    """A lazy PodLogs over the configured cluster."""
    env = settings.env

    def build() -> PodLogs:
        return PodLogs(load_api_client(
            kubeconfig=env.KUBECONFIG, api_url=_url(env.KUBE_API_URL) if env.KUBE_API_URL else None,
            token=env.KUBE_TOKEN.get_secret_value() if env.KUBE_TOKEN else None,
            ca_file=str(env.KUBE_CA_FILE) if env.KUBE_CA_FILE else None))

    return _lazy(build)  # type: ignore[return-value]


def gitlab_factory(settings: Settings) -> Callable[[], GitLabAPI]:
    """A lazy GitLab API client."""
    env = settings.env
    return _lazy(lambda: GitLabAPI(_url(env.GITLAB_URL), env.GITLAB_TOKEN.get_secret_value()))  # type: ignore


def every(name: str, seconds: float, chore: Callable[[], object], state: object, owner: str) -> Callable[[], None]:
    """Run ``chore`` at most once per ``seconds`` across every worker (a lock with expiry is the gate).

    The periodic tick comes once a minute, so shorter intervals run each minute.
    """
    def run() -> None:
        # A fresh owner each time: locks are re-entrant per owner, and this one must not be.
        token = f"{owner}:{uuid.uuid4().hex[:8]}"
        if state.try_lock(f"chore:{name}", token, max(1.0, seconds - 5.0)):  # type: ignore[attr-defined]
            chore()

    run.__name__ = name
    return run


def build_worker_parts(settings: Settings, notifier: Notifier, stores: Stores | None = None,
                       owner: str = "worker") -> tuple[dict[str, Handler], list[Callable[[], None]]]:
    """Action kind → handler (live where configured, else dry-run), and the periodic chores."""
    live = {i.name for i in integrations(settings) if i.live}
    handlers: dict[str, Handler] = dict(DRY_RUN_HANDLERS)
    for kind in (VM_START, VM_STOP, VM_RESIZE):
        handlers[kind] = dry_vm_command(kind, notifier)
    chores: list[Callable[[], None]] = []
    gitlab = gitlab_factory(settings) if "gitlab" in live else None
    if "yandex_compute" in live:
        stores = stores or open_stores(settings)
        compute = compute_factory(settings)
        power = PowerControl(compute, notifier, stores.vm_state, stores.ledger, gitlab=gitlab, rules=settings.rules)
        control = RunnerControl(compute, notifier, stores.vm_state, ledger=stores.ledger,
                                on_running=power.unpause_if_we_paused)
        handlers[ENSURE_RUNNING] = control.ensure_running
        handlers[VM_START] = power.start
        handlers[VM_STOP] = power.stop
        handlers[VM_RESIZE] = Resizer(power).resize
        interval = settings.rules.runner_check_interval
        idle = IdleStopper(compute, notifier, stores.vm_state, stores.ledger, gitlab=gitlab, rules=settings.rules,
                           power=power)
        reconciler = Reconciler(compute, notifier, stores.vm_state, stores.ledger, gitlab=gitlab,
                                rules=settings.rules, power=power)
        chores += [every("idle_stop", interval, idle.check, stores.vm_state, owner),
                   every("reconcile", interval, reconciler.check, stores.vm_state, owner)]
    if live & {"telegram", "kubernetes"}:
        # Whatever is configured is used; what is missing becomes a note in the alert.
        stores = stores or open_stores(settings)
        watch = MigrationWatch(
            settings.rules.migrations, notifier, stores.vm_state,
            pods=pods_factory(settings) if "kubernetes" in live else None, gitlab=gitlab)
        handlers[REPORT_MIGRATION_FAILURE] = watch.report_failure
    return handlers, chores


def build_handlers(settings: Settings, notifier: Notifier, stores: Stores | None = None) -> dict[str, Handler]:
    """Action kind → handler: the real one where its integration is configured, else the dry-run one."""
    return build_worker_parts(settings, notifier, stores)[0]
