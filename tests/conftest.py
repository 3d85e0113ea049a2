"""Shared fixtures: settings on a temp data dir, GitLab's example payloads, the app and its client."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from gitlab_hook.app import create_app
from gitlab_hook.intake import IntakeStore
from gitlab_hook.taskqueue import TaskQueue, make_huey
from gitlab_hook.settings import Settings, load_settings

DATA = Path(__file__).parent / "data" / "gitlab"
SECRET = "test-webhook-secret-123"

RULES: dict[str, Any] = {
    "runners": [
        {"vm": "buildfront", "branches": ["stage", "release/*"], "projects": ["group/app"],
         "gitlab_runner_ids": [12], "idle_stop_after": "30m", "timezone": "Europe/Moscow"},
        {"vm": "buildback", "branches": ["stage"], "projects": ["group/api"]},
    ],
    "migrations": {"job_name_regex": "migrat", "namespaces": {"stage": "work"}, "default_namespace": "work"},
}

HEADERS = {"Push Hook": "push.json", "Tag Push Hook": "tag_push.json", "Pipeline Hook": "pipeline.json",
           "Job Hook": "job.json"}


def payload(name: str) -> dict[str, Any]:
    """A fresh copy of one of GitLab's documented example payloads."""
    return copy.deepcopy(json.loads((DATA / name).read_text()))


def push_payload(branch: str = "stage", project: str = "group/app", **over: Any) -> dict[str, Any]:
    """GitLab's push example, moved to a branch and project of our rules."""
    p = payload("push.json")
    p["ref"] = f"refs/heads/{branch}"
    p["project"]["path_with_namespace"] = project
    p.update(over)
    return p


def failed_job_payload(job_id: int = 1977, name: str = "migrate-db", **over: Any) -> dict[str, Any]:
    """GitLab's job example, turned into a failed migration job on stage."""
    p = payload("job.json")
    p.update({"build_id": job_id, "build_name": name, "build_status": "failed", "ref": "stage"})
    p["project"]["path_with_namespace"] = "group/app"
    p.update(over)
    return p


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Build validated settings from a rules dict and env overrides, the way start-up does."""

    def make(rules: dict[str, Any] | None = None, **env: str) -> Settings:
        cfg = tmp_path / "rules.yaml"
        cfg.write_text(yaml.safe_dump(RULES if rules is None else rules))
        base = {"GITLAB_HOOK_CONFIG": str(cfg), "DATA_DIR": str(tmp_path / "var"),
                "GITLAB_WEBHOOK_SECRET": SECRET}
        base.update(env)
        return load_settings({k: v for k, v in base.items() if v is not None})

    return make


@pytest.fixture
def settings(make_settings) -> Settings:
    return make_settings()


@pytest.fixture
def store(settings: Settings) -> IntakeStore:
    return IntakeStore(settings.data_dir / "intake.db")


@pytest.fixture
def queue(settings: Settings) -> TaskQueue:
    return TaskQueue(make_huey(settings))


@pytest.fixture
def app(settings, store, queue):
    return create_app(settings, store=store, queue=queue)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def post(client) -> Callable[..., Any]:
    """POST a delivery with GitLab's headers; body may be a dict, bytes or str."""

    def send(body: Any, event: str | None = "Push Hook", token: str | None = SECRET,
             headers: dict[str, str] | None = None):
        h = {"Content-Type": "application/json"}
        if event is not None:
            h["X-Gitlab-Event"] = event
        if token is not None:
            h["X-Gitlab-Token"] = token
        h.update(headers or {})
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return client.post("/gitlab/webhook", data=data, headers=h)

    return send


# --- fakes of the outside systems, shared by the tests that need them ----------------------

BOT_TOKEN = "123456:FAKE-token_for-tests-abcdefghijklmnop"
CHAT_ID = -100777
THREAD_ID = 42
IAM_TOKEN = "test-token"


@pytest.fixture
def compute_api():
    """A fake Yandex Compute + Operation API on 127.0.0.1 (STOPPED → STARTING → RUNNING in 0.1 s)."""
    from tests.fakes.yandex_cloud import FakeComputeAPI

    with FakeComputeAPI(tokens=(IAM_TOKEN,), transition_seconds=0.1) as api:
        yield api


@pytest.fixture
def bot_api():
    """A fake Telegram Bot API on 127.0.0.1 that records what was sent."""
    from tests.fakes.telegram_api import FakeBotAPI

    with FakeBotAPI(BOT_TOKEN) as api:
        yield api


@pytest.fixture
def compute_client(compute_api):
    """The real ComputeClient talking to the fake, with quick retries."""
    from gitlab_hook.yandex import ComputeClient, StaticTokenProvider

    client = ComputeClient(compute_url=compute_api.url, operation_url=compute_api.operation_url,
                           folder_id=compute_api.folder_id, token_provider=StaticTokenProvider(IAM_TOKEN),
                           backoff_base=0.01, backoff_cap=0.05, timeout=(1, 2))
    yield client
    client.close()


@pytest.fixture
def notifier(bot_api):
    """The real TelegramNotifier talking to the fake Bot API."""
    from gitlab_hook.telegram import TelegramNotifier

    n = TelegramNotifier(token=BOT_TOKEN, chat_id=CHAT_ID, thread_id=THREAD_ID, api_url=bot_api.url,
                         backoff=0.01)
    yield n
    n.close()


@pytest.fixture
def gitlab():
    """A fake GitLab with project 1 (group/app) and runner 12 on it."""
    from tests.fakes.gitlab_api import FakeGitLab

    with FakeGitLab() as gl:
        gl.add_project(1, "group/app")
        gl.add_runner(12, projects=[1])
        yield gl


@pytest.fixture
def kube():
    """A fake Kubernetes API server with the namespace ``work``."""
    from tests.fakes.kube_api import FakeKubeAPI

    with FakeKubeAPI(namespaces=["work"]) as fake:
        yield fake


@pytest.fixture
def restore_logging():
    """``cli.main`` configures the root logger for the process; give the next tests theirs back."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {n: logging.getLogger(n).level for n in ("urllib3", "httpx", "httpcore", "huey.consumer.Scheduler")}
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    for n, lvl in noisy.items():
        logging.getLogger(n).setLevel(lvl)
