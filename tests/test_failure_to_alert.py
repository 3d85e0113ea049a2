"""End to end through real processes: a failed migration job gives one alert, whichever events say so."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone

import requests
import yaml

from tests.conftest import BOT_TOKEN, CHAT_ID, RULES, SECRET, failed_job_payload, payload
from tests.fakes.gitlab_api import FakeGitLab
from tests.fakes.kube_api import FakeKubeAPI, terminated
from tests.processes import ServiceProcess, free_port

POD = "pre-migrate-db-5d8f"


def pipeline_with_failed_migration(job_id: int) -> dict:
    p = payload("pipeline.json")
    p["object_attributes"].update({"ref": "stage", "status": "failed"})
    p["project"]["path_with_namespace"] = "group/app"
    p["builds"] = [{**p["builds"][0], "id": job_id, "name": "migrate-db", "status": "failed",
                    "failure_reason": "script_failure"}]
    return p


def post(port: int, body: dict, event: str) -> requests.Response:
    return requests.post(f"http://127.0.0.1:{port}/gitlab/webhook", data=json.dumps(body), timeout=10, headers={
        "X-Gitlab-Token": SECRET, "X-Gitlab-Event": event, "Content-Type": "application/json",
        "Idempotency-Key": str(uuid.uuid4())})


def test_job_and_pipeline_events_of_one_failure_give_one_alert_even_after_restart(tmp_path, bot_api):
    with FakeKubeAPI(namespaces=["work"]) as kube, FakeGitLab() as gitlab:
        kube.add_pod("work", POD, datetime(2026, 11, 27, 10, tzinfo=timezone.utc),
                     containers=[{"name": "pre-migrate-db", "state": terminated("Error", 1)}])
        kube.add_log("work", POD, "pre-migrate-db", "applying 0042_users\nERROR: column \"email\" exists\n")
        gitlab.add_project(380, "group/app")
        gitlab.add_job(380, 1977, "migrate-db", "failed")
        cfg = tmp_path / "rules.yaml"
        cfg.write_text(yaml.safe_dump(RULES))
        env = {"DATA_DIR": str(tmp_path / "var"), "GITLAB_HOOK_CONFIG": str(cfg), "GITLAB_WEBHOOK_SECRET": SECRET,
               "TELEGRAM_BOT_TOKEN": BOT_TOKEN, "TELEGRAM_CHAT_ID": str(CHAT_ID), "TELEGRAM_API_URL": bot_api.url,
               "KUBE_API_URL": kube.url, "KUBE_TOKEN": kube.token,
               "GITLAB_URL": gitlab.url, "GITLAB_TOKEN": gitlab.token}
        port = free_port()

        def serve() -> ServiceProcess:
            s = ServiceProcess("serve", env, tmp_path / "serve.log", ["--port", str(port)]).start()
            s.wait_http(f"http://127.0.0.1:{port}/readyz")
            return s

        server = serve()
        try:
            assert post(port, failed_job_payload(job_id=1977), "Job Hook").status_code == 202
            assert post(port, pipeline_with_failed_migration(1977), "Pipeline Hook").json()["actions"] == [
                "report_migration_failure:job/1977"]
            deadline = time.monotonic() + 30
            while not bot_api.documents(CHAT_ID) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            assert server.stop() == 0
        # After a restart, GitLab's "Resend" of both events (new deliveries, same job) alerts no more.
        server = serve()
        try:
            post(port, failed_job_payload(job_id=1977), "Job Hook")
            post(port, pipeline_with_failed_migration(1977), "Pipeline Hook")
            time.sleep(2.0)
        finally:
            assert server.stop() == 0
        messages, documents = bot_api.messages(CHAT_ID), bot_api.documents(CHAT_ID)
        assert len(messages) == 1 and len(documents) == 1, [m.text for m in messages]
        assert 'ERROR: column "email" exists' in messages[0].text
        assert f"work/{POD}" in messages[0].text
        assert "GitLab job log (tail)" in documents[0].document.data.decode()
