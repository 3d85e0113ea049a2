"""A worker killed with SIGKILL mid-queue loses nothing and repeats nothing once restarted."""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import yaml

from gitlab_hook.intake import IntakeStore
from tests.conftest import RULES, SECRET, failed_job_payload
from tests.processes import ServiceProcess, free_port

JOBS = 600


def _env(tmp_path: Path) -> dict[str, str]:
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(yaml.safe_dump(RULES))
    return {"DATA_DIR": str(tmp_path / "var"), "GITLAB_HOOK_CONFIG": str(cfg), "GITLAB_WEBHOOK_SECRET": SECRET,
            "WORKER_THREADS": "4", "WEB_WORKERS": "1"}


def _wait(cond, timeout: float, what: str, step: float = 0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkill_worker_mid_queue_then_restart_does_every_task_exactly_once(tmp_path):
    env = _env(tmp_path)
    port = free_port()
    web = ServiceProcess("web", env, tmp_path / "web.log", ["--port", str(port), "--quiet"]).start()
    worker = None
    try:
        web.wait_http(f"http://127.0.0.1:{port}/readyz")
        url = f"http://127.0.0.1:{port}/gitlab/webhook"

        def deliver(i: int) -> int:
            body = json.dumps(failed_job_payload(job_id=10_000 + i))
            return requests.post(url, data=body, timeout=10, headers={
                "X-Gitlab-Token": SECRET, "X-Gitlab-Event": "Job Hook", "Content-Type": "application/json"}).status_code

        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(deliver, range(JOBS)))
        assert codes == [202] * JOBS

        store = IntakeStore(tmp_path / "var" / "intake.db")
        assert len(store.rows("pending")) == JOBS  # accepted = on disk, before any worker ran

        worker = ServiceProcess("worker", env, tmp_path / "worker1.log").start()
        done_before = _wait(lambda: len(store.rows("done")) >= 40 and len(store.rows("done")), 30, "first tasks")
        worker.kill_group()
        done_at_kill = len(store.rows("done"))
        assert done_before <= done_at_kill < JOBS, "the kill must land while tasks are still queued"

        worker = ServiceProcess("worker", env, tmp_path / "worker2.log").start()
        _wait(lambda: len(store.rows("done")) == JOBS, 60, "all tasks done after restart", step=0.05)

        rows = store.rows()
        assert [r.state for r in rows] == ["done"] * JOBS
        journal = Counter(action_id for action_id, _ in store.journal())
        assert set(journal) == {r.id for r in rows}
        assert max(journal.values()) == 1, "an effect ran twice"
        assert {r.payload["job_id"] for r in rows} == {10_000 + i for i in range(JOBS)}
        assert "worker start:" in worker.log()
    finally:
        if worker:
            worker.stop()
        web.stop()
