"""Benchmark: failed-job webhook → last Telegram call, and the worker's memory while reading a 100 MB log.

Run: .venv/bin/python bench/failure_to_alert.py [--runs 50]

Starts the real web and worker processes pointed at fake Kubernetes, GitLab and Bot API servers
on 127.0.0.1 and prints:
  * latency from the POST of a failed migration job event to the alert's last Telegram call
    (the .txt document), p50/p99 over --runs failures, each with its own pod log;
  * the worker's peak RSS growth (VmHWM) while the fake serves a 100 MB pod log.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import BOT_TOKEN, CHAT_ID, SECRET, failed_job_payload  # noqa: E402
from tests.fakes.gitlab_api import FakeGitLab  # noqa: E402
from tests.fakes.kube_api import FakeKubeAPI, terminated  # noqa: E402
from tests.fakes.telegram_api import FakeBotAPI  # noqa: E402
from tests.processes import ServiceProcess, free_port  # noqa: E402

T0 = datetime(2026, 11, 27, 10, tzinfo=timezone.utc)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-alert-"))
    rules = {"migrations": {"namespaces": {"stage": "work"}, "default_namespace": "work",
                            # The longest tail allowed: the 2 MiB byte limit is what bounds the read.
                            "tail_lines": 100_000}}
    (tmp / "rules.yaml").write_text(yaml.safe_dump(rules))
    with FakeKubeAPI(namespaces=["work"]) as kube, FakeGitLab() as gitlab, FakeBotAPI(BOT_TOKEN) as bot:
        gitlab.add_project(380, "group/app")
        env = {"DATA_DIR": str(tmp / "var"), "GITLAB_HOOK_CONFIG": str(tmp / "rules.yaml"),
               "GITLAB_WEBHOOK_SECRET": SECRET, "LOG_LEVEL": "WARNING",
               "TELEGRAM_BOT_TOKEN": BOT_TOKEN, "TELEGRAM_CHAT_ID": str(CHAT_ID), "TELEGRAM_API_URL": bot.url,
               "KUBE_API_URL": kube.url, "KUBE_TOKEN": kube.token, "GITLAB_URL": gitlab.url,
               "GITLAB_TOKEN": gitlab.token}
        port = free_port()
        web = ServiceProcess("web", env, tmp / "web.log", ["--port", str(port), "--quiet"]).start()
        worker = ServiceProcess("worker", env, tmp / "worker.log").start()
        try:
            web.wait_http(f"http://127.0.0.1:{port}/readyz")
            url = f"http://127.0.0.1:{port}/gitlab/webhook"
            session = requests.Session()

            def fail(job_id: int, pod: str) -> float:
                """POST the failure; return seconds until its document reached the Bot API."""
                sent_before = len(bot.documents(CHAT_ID))
                body = json.dumps(failed_job_payload(job_id=job_id))
                t0 = time.monotonic()
                r = session.post(url, data=body, timeout=10, headers={
                    "X-Gitlab-Token": SECRET, "X-Gitlab-Event": "Job Hook", "Content-Type": "application/json",
                    "Idempotency-Key": str(uuid.uuid4())})
                assert r.status_code == 202, r.text
                deadline = t0 + 120
                while len(bot.documents(CHAT_ID)) <= sent_before and time.monotonic() < deadline:
                    time.sleep(0.002)
                last = [c for c in bot.calls if c.method.lower() == "senddocument"][-1]
                return last.at - t0

            latencies = []
            for i in range(args.runs):
                job, pod = 5000 + i, f"pre-migrate-db-run{i}"
                kube.add_pod("work", pod, T0 + timedelta(minutes=i),
                             containers=[{"name": "pre-migrate-db", "state": terminated("Error", 1)}])
                kube.add_log("work", pod, "pre-migrate-db",
                             "".join(f"step {n}: migrating table_{n}\n" for n in range(300)) + "ERROR: boom\n")
                gitlab.add_job(380, job, "migrate-db", "failed")
                latencies.append(fail(job, pod) * 1000)

            before = rss_kib(worker.proc.pid, "VmHWM")
            pad = "." * 1000
            pod = "pre-migrate-db-huge"
            kube.add_pod("work", pod, T0 + timedelta(days=1),
                         containers=[{"name": "pre-migrate-db", "state": terminated("Error", 1)}])
            kube.add_log("work", pod, "pre-migrate-db", generator=lambda: (f"row {n:07d} {pad}\n" for n in range(10**6)),
                         size=100 * 2**20)
            gitlab.add_job(380, 9999, "migrate-db", "failed")
            kube.ignore_limit_bytes = True  # a server that sends all 100 MB: the worker must stop reading itself
            sent_before = kube.bytes_sent
            huge_seconds = fail(9999, pod)
            after = rss_kib(worker.proc.pid, "VmHWM")
            kube.wait_idle(10)
            served = kube.bytes_sent - sent_before
        finally:
            worker.stop()
            web.stop()

    print(f"failed job → last Telegram call (document), {len(latencies)} runs:")
    print(f"  p50 {statistics.median(latencies):7.1f} ms   p99 {percentile(latencies, 99):7.1f} ms   "
          f"max {max(latencies):7.1f} ms   (target: p50 < 300 ms)")
    print(f"100 MB pod log: alert sent after {huge_seconds:.1f} s; worker peak RSS {before / 1024:.1f} → "
          f"{after / 1024:.1f} MiB (growth {(after - before) / 1024:.1f} MiB, target < 30 MiB); "
          f"the fake had sent {served / 2**20:.1f} MiB of it when the worker hung up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
