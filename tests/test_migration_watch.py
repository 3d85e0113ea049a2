"""Failed migration → pod logs in Telegram, through the real kubernetes, python-gitlab and PTB clients."""

from __future__ import annotations

import tracemalloc
from datetime import datetime, timedelta, timezone

import pytest

from gitlab_hook.effects import Context, TransientError
from gitlab_hook.gitlab_api import GitLabAPI
from gitlab_hook.kube import PodLogs, load_api_client
from gitlab_hook.migration_watch import MigrationWatch, namespace_for
from gitlab_hook.rules import MigrationsRule
from gitlab_hook.vm_state import VmState
from tests.conftest import CHAT_ID, THREAD_ID
from tests.fakes.gitlab_api import FakeGitLab
from tests.fakes.kube_api import FakeKubeAPI, terminated, waiting

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=timezone.utc)
RULE = MigrationsRule(namespaces={"stage": "work"}, default_namespace="work", tail_lines=5000,
                      redact_patterns=[r"customer_id=(\d+)"])
FAILED = {"job_id": 501, "job_name": "migrate-db", "stage": "deploy", "failure_reason": "script_failure",
          "pipeline_id": 2366, "project": "group/app", "project_id": 1,
          "web_url": "https://gitlab.example.com/group/app", "branch": "stage",
          "sha": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7", "user": "jsmith"}
POD = "pre-migrate-db-7f9c"
CONTAINER = "pre-migrate-db"


def ctx(attempt: int = 1) -> Context:
    return Context(1, attempt, lambda: None)


@pytest.fixture
def kube():
    with FakeKubeAPI(namespaces=["work"]) as fake:
        yield fake


@pytest.fixture
def gitlab():
    with FakeGitLab() as gl:
        gl.add_project(1, "group/app")
        gl.add_job(1, 501, "migrate-db", "failed")
        yield gl


@pytest.fixture
def watch(kube, gitlab, notifier, tmp_path):
    pods = PodLogs(load_api_client(kubeconfig=None, api_url=kube.url, token=kube.token, ca_file=None,
                                   request_timeout=3))
    api = GitLabAPI(gitlab.url, gitlab.token, timeout=3, retries=1)
    return MigrationWatch(RULE, notifier, VmState(tmp_path / "s.db"), pods=lambda: pods, gitlab=lambda: api)


def add_failed_pod(kube, name=POD, created=T0, **kw):
    kube.add_pod("work", name, created, containers=[
        {"name": CONTAINER, "state": terminated("Error", 1), "restartCount": 0}], **kw)


STACK = "\n".join(["Traceback (most recent call last):"]
                  + [f'  File "/app/migrate.py", line {i}, in step_{i} <module> & co' for i in range(4000)]
                  + ["psycopg.errors.UndefinedTable: relation \"users\" does not exist",
                     "connecting to postgres://app:hunter2@db:5432/app customer_id=12345"])


def test_alert_has_a_readable_header_the_last_lines_and_the_full_log_attached(watch, kube, bot_api):
    add_failed_pod(kube, labels={"git-sha": "da15608"})
    add_failed_pod(kube, name="pre-migrate-db-newer", created=T0 + timedelta(minutes=5))
    kube.add_log("work", POD, CONTAINER, STACK + "\n")
    effect = watch.report_failure(FAILED, ctx())
    (msg,) = bot_api.messages(CHAT_ID)
    assert msg.thread_id == THREAD_ID and msg.parse_mode == "HTML"
    lines = msg.text.split("\n")
    assert lines[0] == "❌ Migration failed: group/app · stage"
    assert lines[1] == "Job: migrate-db #501 · reason: script_failure"
    assert lines[2] == "Pipeline #2366 · commit da156088 by @jsmith"
    assert lines[3].startswith(f"Pod: work/{POD} (container pre-migrate-db")
    assert "da15608" in lines[4]  # how the pod was chosen: by the commit label, not by age
    assert 'relation "users" does not exist' in msg.text
    assert '<module> & co' in msg.text and "&lt;module&gt; &amp; co" in msg.raw_text
    assert len(msg.text) <= 4096
    assert "hunter2" not in msg.text and "12345" not in msg.text
    assert 'href="https://gitlab.example.com/group/app/-/jobs/501"' in msg.raw_text
    (doc,) = bot_api.documents(CHAT_ID)
    body = doc.document.data.decode()
    assert doc.thread_id == THREAD_ID and doc.document.filename == "migration-job-501.txt"
    assert body.count("in step_") == 4000 and "hunter2" not in body
    assert "customer_id=12345" not in body and "customer_id=" in body
    assert "GitLab job log (tail)" in body and "\x1b[" not in body
    assert POD in effect.summary


def test_newest_pod_is_chosen_when_nothing_ties_a_pod_to_the_deploy(watch, kube, bot_api):
    for minutes, name in ((0, "pre-migrate-db-a"), (20, "pre-migrate-db-c"), (10, "pre-migrate-db-b")):
        add_failed_pod(kube, name=name, created=T0 + timedelta(minutes=minutes))
        kube.add_log("work", name, CONTAINER, f"log of {name}\n")
    watch.report_failure(FAILED, ctx())
    text = bot_api.messages(CHAT_ID)[0].text
    assert "log of pre-migrate-db-c" in text and "newest" in text


def test_container_that_never_started_reports_its_state_and_events(watch, kube, bot_api):
    kube.add_pod("work", POD, T0, containers=[{"name": CONTAINER, "state": waiting("ImagePullBackOff",
                                                                                     "Back-off pulling image")}])
    kube.add_event("work", POD, "Failed", 'Failed to pull image "registry/app:da15608": not found')
    watch.report_failure(FAILED, ctx())
    text = bot_api.messages(CHAT_ID)[0].text
    assert "waiting: ImagePullBackOff" in text
    assert "Last lines of the pod events" in text and "Failed to pull image" in text


def test_restarted_container_quotes_the_previous_run(watch, kube, bot_api):
    kube.add_pod("work", POD, T0, containers=[{"name": CONTAINER, "state": waiting("CrashLoopBackOff"),
                                                "restartCount": 3, "lastState": terminated("OOMKilled", 137)}])
    kube.add_log("work", POD, CONTAINER, "migrating 1/3\nKilled\n", previous=True)
    watch.report_failure(FAILED, ctx())
    text = bot_api.messages(CHAT_ID)[0].text
    assert "restarts 3" in text and "OOMKilled" in text and "migrating 1/3" in text


@pytest.mark.parametrize("setup, expected", [
    (lambda k: None, "no pod"),
    (lambda k: k.deny("list", "pods", "work"), "list"),
    (lambda k: (add_failed_pod(k), k.deny("get", "pods/log", "work")), "pods/log"),
])
def test_kubernetes_problems_become_a_short_alert_not_silence(watch, kube, bot_api, setup, expected):
    setup(kube)
    watch.report_failure(FAILED, ctx())
    text = bot_api.messages(CHAT_ID)[0].text
    assert text.startswith("❌ Migration failed") and "⚠️" in text
    assert expected in text.lower()


def test_missing_namespace_is_named(watch, bot_api):
    other = MigrationWatch(MigrationsRule(namespaces={"stage": "nope"}), watch.notifier, watch.state,
                           pods=watch.pods)
    other.report_failure(FAILED, ctx())
    (msg,) = bot_api.messages(CHAT_ID)
    assert "⚠️" in msg.text and "nope" in msg.text


def test_branch_without_namespace_says_how_to_configure_it(notifier, tmp_path, bot_api, kube):
    w = MigrationWatch(MigrationsRule(), notifier, VmState(tmp_path / "s.db"), pods=lambda: None)
    w.report_failure(FAILED, ctx())
    assert "migrations.default_namespace" in bot_api.messages(CHAT_ID)[0].text


def test_unreachable_cluster_is_retried_then_reported(notifier, tmp_path, bot_api):
    pods = PodLogs(load_api_client(kubeconfig=None, api_url="http://127.0.0.1:9", token="t", ca_file=None,
                                   request_timeout=1))
    w = MigrationWatch(RULE, notifier, VmState(tmp_path / "s.db"), pods=lambda: pods)
    with pytest.raises(TransientError):
        w.report_failure(FAILED, ctx(attempt=1))
    assert bot_api.messages(CHAT_ID) == []
    w.report_failure(FAILED, ctx(attempt=4))
    assert "unreachable" in bot_api.messages(CHAT_ID)[0].text


def test_telegram_429_in_the_middle_loses_nothing_and_doubles_nothing(watch, kube, bot_api):
    add_failed_pod(kube)
    kube.add_log("work", POD, CONTAINER, "boom\n")
    bot_api.inject_429("sendDocument", retry_after=1)
    watch.report_failure(FAILED, ctx())
    assert len(bot_api.messages(CHAT_ID)) == 1 and len(bot_api.documents(CHAT_ID)) == 1


def test_a_failed_document_is_retried_alone(watch, kube, bot_api):
    add_failed_pod(kube)
    kube.add_log("work", POD, CONTAINER, "boom\n")
    bot_api.inject_error("sendDocument", 502, "Bad Gateway", times=10)
    with pytest.raises(TransientError):
        watch.report_failure(FAILED, ctx())
    bot_api._faults.clear()
    watch.report_failure(FAILED, ctx(attempt=2))
    assert len(bot_api.messages(CHAT_ID)) == 1 and len(bot_api.documents(CHAT_ID)) == 1


def test_markup_refused_by_telegram_is_resent_as_plain_text(watch, kube, bot_api):
    add_failed_pod(kube)
    kube.add_log("work", POD, CONTAINER, "boom\n")
    bot_api.inject_error("sendMessage", 400, "Bad Request: can't parse entities: unexpected end tag")
    watch.report_failure(FAILED, ctx())
    (msg,) = bot_api.messages(CHAT_ID)
    assert msg.parse_mode is None and msg.text.startswith("❌ Migration failed: group/app · stage")


def test_a_100_mb_log_keeps_memory_bounded(kube, notifier, tmp_path, bot_api):
    # The fake computes the tail of 100 MB in Python, far slower than a kubelet: allow it time.
    pods = PodLogs(load_api_client(kubeconfig=None, api_url=kube.url, token=kube.token, ca_file=None,
                                   request_timeout=60))
    # A tail longer than the log, so only the byte limit bounds what is read.
    watch = MigrationWatch(MigrationsRule(default_namespace="work", tail_lines=100_000), notifier,
                           VmState(tmp_path / "s.db"), pods=lambda: pods)
    add_failed_pod(kube)
    pad = "." * 1000  # 1 KB lines: 100 MB in ~100,000 lines, which keeps the fake quick
    kube.add_log("work", POD, CONTAINER, generator=lambda: (f"row {i:07d} {pad}\n" for i in range(10**6)),
                 size=100 * 2**20)
    tracemalloc.start()
    try:
        watch.report_failure(FAILED, ctx())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 30 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    (doc,) = bot_api.documents(CHAT_ID)
    assert len(doc.document.data) <= watch.log_limit_bytes + 300 * 1024
    body = doc.document.data.decode()
    assert "cut to the last part" in body
    # The end of the log is what was kept (where the error would be), not its beginning.
    rows = [int(line.split()[1]) for line in body.splitlines() if line.startswith("row ")]
    assert rows and min(rows) > 95_000  # ~101,000 rows make 100 MB: only the last ones are here


def test_namespace_for_branch():
    assert namespace_for(RULE, "stage") == "work"
    assert namespace_for(MigrationsRule(), "stage") is None
