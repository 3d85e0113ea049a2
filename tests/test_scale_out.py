"""Scaled out on Redis: two web and two worker processes, each with its own DATA_DIR, behave as one.

A burst of pushes split across both web replicas gives one start call and one pair of chat
messages; a failed migration reported by its job event to one replica and by its pipeline
event to the other gives one alert. Nothing can be shared through SQLite: every process has
its own data directory; only REDIS_URL is common.
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import requests
import yaml

from tests.conftest import BOT_TOKEN, CHAT_ID, IAM_TOKEN, RULES, SECRET, failed_job_payload, push_payload
from tests.fakes.gitlab_api import FakeGitLab
from tests.fakes.kube_api import FakeKubeAPI, terminated
from tests.processes import ServiceProcess, free_port, wait_quiet
from tests.redis_fixtures import redis_server_fixture, redis_url_fixture  # noqa: F401
from tests.test_failure_to_alert import POD, pipeline_with_failed_migration

PUSHES = 500


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_two_webs_and_two_workers_on_redis_act_once(tmp_path, redis_url, compute_api, bot_api):
    vm = compute_api.add_instance("buildfront")
    with FakeKubeAPI(namespaces=["work"]) as kube, FakeGitLab() as gitlab:
        kube.add_pod("work", POD, datetime(2026, 11, 27, 10, tzinfo=timezone.utc),
                     containers=[{"name": "pre-migrate-db", "state": terminated("Error", 1)}])
        kube.add_log("work", POD, "pre-migrate-db", "applying 0042_users\nERROR: column \"email\" exists\n")
        gitlab.add_project(380, "group/app")
        gitlab.add_job(380, 1977, "migrate-db", "failed")
        cfg = tmp_path / "rules.yaml"
        # Chores (idle stop, reconciliation) run once at worker start, then not again during the test.
        cfg.write_text(yaml.safe_dump({**RULES, "runner_check_interval": "1h"}))
        common = {
            "REDIS_URL": redis_url, "GITLAB_HOOK_CONFIG": str(cfg), "GITLAB_WEBHOOK_SECRET": SECRET,
            "YC_COMPUTE_URL": compute_api.url, "YC_OPERATION_URL": compute_api.operation_url,
            "YC_FOLDER_ID": compute_api.folder_id, "YC_IAM_TOKEN": IAM_TOKEN,
            "TELEGRAM_BOT_TOKEN": BOT_TOKEN, "TELEGRAM_CHAT_ID": str(CHAT_ID), "TELEGRAM_API_URL": bot_api.url,
            "KUBE_API_URL": kube.url, "KUBE_TOKEN": kube.token, "GITLAB_URL": gitlab.url,
            "GITLAB_TOKEN": gitlab.token, "WORKER_THREADS": "4",
        }
        ports = [free_port(), free_port()]
        procs: list[ServiceProcess] = []

        def start(role: str, name: str, args: list[str] | None = None) -> ServiceProcess:
            env = {**common, "DATA_DIR": str(tmp_path / name)}  # its own: nothing shared on disk
            p = ServiceProcess(role, env, tmp_path / f"{name}.log", args).start()
            procs.append(p)
            return p

        try:
            webs = [start("web", f"web{i}", ["--port", str(port), "--quiet"]) for i, port in enumerate(ports)]
            workers = [start("worker", f"worker{i}") for i in range(2)]
            for web, port in zip(webs, ports):
                web.wait_http(f"http://127.0.0.1:{port}/readyz")
            _wait(lambda: all("worker started" in w.log() for w in workers), 20, "both workers")

            session = requests.Session()
            body = json.dumps(push_payload())

            def push(i: int) -> int:
                return session.post(f"http://127.0.0.1:{ports[i % 2]}/gitlab/webhook", data=body, timeout=10,
                                    headers={"X-Gitlab-Token": SECRET, "X-Gitlab-Event": "Push Hook",
                                             "Content-Type": "application/json",
                                             "Idempotency-Key": str(uuid.uuid4())}).status_code

            before = wait_quiet(lambda: len(compute_api.calls))
            with ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(push, range(PUSHES)))
            assert codes == [202] * PUSHES

            def texts() -> list[str]:
                return [m.text or "" for m in bot_api.messages(CHAT_ID)]

            _wait(lambda: any("RUNNING" in t for t in texts()), 30, "the RUNNING message")
            time.sleep(1.0)  # let any straggling duplicate show itself
            assert compute_api.status(vm) == "RUNNING"
            assert compute_api.count("POST", ":start") == 1
            burst = compute_api.calls[before:]
            others = len(burst) - 1
            assert others <= 10, [f"{c.method} {c.path}" for c in burst]
            start_texts = texts()
            assert len(start_texts) == 2, start_texts
            assert start_texts[0].startswith("▶️ buildfront: starting for a push by @jsmith to stage")
            assert start_texts[1].startswith("✅ buildfront is RUNNING")

            # One failure, told to each replica by a different event: one alert, one document.
            def post(port: int, payload: dict, event: str) -> requests.Response:
                return requests.post(f"http://127.0.0.1:{port}/gitlab/webhook", data=json.dumps(payload),
                                     timeout=10, headers={"X-Gitlab-Token": SECRET, "X-Gitlab-Event": event,
                                                          "Content-Type": "application/json",
                                                          "Idempotency-Key": str(uuid.uuid4())})

            job = post(ports[0], failed_job_payload(job_id=1977), "Job Hook")
            pipeline = post(ports[1], pipeline_with_failed_migration(1977), "Pipeline Hook")
            assert job.status_code == 202 and pipeline.status_code == 202
            assert pipeline.json()["actions"] == ["report_migration_failure:job/1977"]
            _wait(lambda: bot_api.documents(CHAT_ID), 30, "the alert's document")
            time.sleep(1.5)  # a second alert, if any, would arrive now
            alerts = [t for t in texts() if 'ERROR: column "email" exists' in t]
            assert len(alerts) == 1, texts()
            assert f"work/{POD}" in alerts[0]
            assert len(bot_api.documents(CHAT_ID)) == 1
            assert len(texts()) == 3, texts()  # the start pair and the alert: nothing else (no give-up)

            # Both workers took part, and neither kept anything of it on its own disk.
            assert all("worker start:" in w.log() and " done in " in w.log() for w in workers)
            for name in ("web0", "web1", "worker0", "worker1"):
                leftovers = {p.name for p in (tmp_path / name).glob("*.db")}
                assert not leftovers, f"{name} wrote {leftovers} to its DATA_DIR: state not shared through Redis"
        finally:
            codes = [p.stop() for p in procs]
        assert codes == [0] * len(procs), "\n".join(p.log()[-2000:] for p in procs)
