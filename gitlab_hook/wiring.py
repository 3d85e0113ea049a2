"""Build the worker's clients and handlers from validated settings: live where configured, else dry-run."""

from __future__ import annotations

import logging
import threading
from typing import Callable

from gitlab_hook.effects import DRY_RUN_HANDLERS, Handler
from gitlab_hook.integrations import integrations
from gitlab_hook.gitlab_api import GitLabAPI
from gitlab_hook.kube import PodLogs, load_api_client
from gitlab_hook.migration_watch import MigrationWatch
from gitlab_hook.planner import ENSURE_RUNNING, REPORT_MIGRATION_FAILURE
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


def build_handlers(settings: Settings, notifier: Notifier, stores: Stores | None = None) -> dict[str, Handler]:
    """Action kind → handler: the real one where its integration is configured, else the dry-run one.

    Locks, progress records and the ledger come from ``stores`` (opened from the settings when None).
    """
    live = {i.name for i in integrations(settings) if i.live}
    handlers: dict[str, Handler] = dict(DRY_RUN_HANDLERS)
    if "yandex_compute" in live:
        stores = stores or open_stores(settings)
        control = RunnerControl(compute_factory(settings), notifier, stores.vm_state, ledger=stores.ledger)
        handlers[ENSURE_RUNNING] = control.ensure_running
    if live & {"telegram", "kubernetes"}:
        # Whatever is configured is used; what is missing becomes a note in the alert.
        stores = stores or open_stores(settings)
        watch = MigrationWatch(
            settings.rules.migrations, notifier, stores.vm_state,
            pods=pods_factory(settings) if "kubernetes" in live else None,
            gitlab=gitlab_factory(settings) if "gitlab" in live else None)
        handlers[REPORT_MIGRATION_FAILURE] = watch.report_failure
    return handlers
