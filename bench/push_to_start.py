"""Benchmark: webhook POST → start call at the (fake) Compute API, and Compute calls per burst.

Run: .venv/bin/python bench/push_to_start.py [--runs 100] [--burst 500]

Starts the real service (``gitlab-hook serve``) pointed at fake Compute and Bot API servers on
127.0.0.1, exactly as a user points it at the real ones, and prints:
  * latency from the moment a push is POSTed to the moment its start call reaches Compute
    (p50/p99 over --runs pushes, each to its own stopped VM);
  * for a burst of --burst pushes to one stopped VM: start calls and other Compute calls.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import BOT_TOKEN, CHAT_ID, IAM_TOKEN, SECRET, push_payload  # noqa: E402
from tests.fakes.telegram_api import FakeBotAPI  # noqa: E402
from tests.fakes.yandex_cloud import FakeComputeAPI  # noqa: E402
from tests.processes import ServiceProcess, free_port  # noqa: E402


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--burst", type=int, default=500)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-push-"))
    rules = {"runners": [{"vm": f"bench-{i}", "branches": [f"b{i}"]} for i in range(args.runs)]
             + [{"vm": "burst", "branches": ["stage"]}],
             "runner_check_interval": "1h"}  # chores run once at start, not during the runs
    (tmp / "rules.yaml").write_text(yaml.safe_dump(rules))
    with FakeComputeAPI(tokens=(IAM_TOKEN,), transition_seconds=0.3) as compute, FakeBotAPI(BOT_TOKEN) as bot:
        ids = {f"bench-{i}": compute.add_instance(f"bench-{i}") for i in range(args.runs)}
        burst_vm = compute.add_instance("burst")
        port = free_port()
        env = {"DATA_DIR": str(tmp / "var"), "GITLAB_HOOK_CONFIG": str(tmp / "rules.yaml"),
               "GITLAB_WEBHOOK_SECRET": SECRET, "LOG_LEVEL": "WARNING",
               "YC_COMPUTE_URL": compute.url, "YC_OPERATION_URL": compute.operation_url,
               "YC_FOLDER_ID": compute.folder_id, "YC_IAM_TOKEN": IAM_TOKEN,
               "TELEGRAM_BOT_TOKEN": BOT_TOKEN, "TELEGRAM_CHAT_ID": str(CHAT_ID), "TELEGRAM_API_URL": bot.url}
        serve = ServiceProcess("serve", env, tmp / "serve.log", ["--port", str(port)]).start()
        try:
            serve.wait_http(f"http://127.0.0.1:{port}/readyz")
            url = f"http://127.0.0.1:{port}/gitlab/webhook"
            session = requests.Session()
            headers = {"X-Gitlab-Token": SECRET, "X-Gitlab-Event": "Push Hook", "Content-Type": "application/json"}

            latencies = []
            for i in range(args.runs):
                body = json.dumps(push_payload(branch=f"b{i}", project="group/app"))
                suffix = f"/instances/{ids[f'bench-{i}']}:start"
                t0 = time.monotonic()
                r = session.post(url, data=body, headers={**headers, "Idempotency-Key": str(uuid.uuid4())},
                                 timeout=10)
                assert r.status_code == 202, r.text
                deadline = t0 + 10
                while not compute.count("POST", suffix) and time.monotonic() < deadline:
                    time.sleep(0.0005)
                calls = compute.calls_matching("POST", suffix)
                if not calls:
                    print(f"run {i}: no start call within 10 s", file=sys.stderr)
                    continue
                latencies.append((calls[0].time - t0) * 1000)
                # Measure each push on a quiet service: wait until this start is confirmed and told.
                while (sum("RUNNING" in (m.text or "") for m in bot.messages(CHAT_ID)) < len(latencies)
                       and time.monotonic() < deadline):
                    time.sleep(0.01)

            before = len(compute.calls)
            body = json.dumps(push_payload(branch="stage", project="group/app"))

            def push(_: int) -> int:
                return session.post(url, data=body, timeout=10,
                                    headers={**headers, "Idempotency-Key": str(uuid.uuid4())}).status_code

            t0 = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(push, range(args.burst)))
            posted = time.monotonic() - t0
            deadline = time.monotonic() + 30
            while compute.status(burst_vm) != "RUNNING" and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(2.0)  # stragglers
            burst_calls = compute.calls[before:]
            starts = sum(1 for c in burst_calls if c.method == "POST" and c.path.endswith(":start"))
            running_msgs = sum(1 for m in bot.messages(CHAT_ID) if "burst" in (m.text or ""))
        finally:
            serve.stop()

    print(f"push → start call, {len(latencies)} runs (each push to its own stopped VM):")
    print(f"  p50 {statistics.median(latencies):7.1f} ms   p99 {percentile(latencies, 99):7.1f} ms   "
          f"max {max(latencies):7.1f} ms   (targets: p50 < 150 ms, p99 < 500 ms)")
    print(f"burst of {args.burst} pushes to one stopped VM (posted in {posted:.2f} s, "
          f"{codes.count(202)} answered 202):")
    print(f"  start calls {starts}   other Compute calls {len(burst_calls) - starts}   "
          f"chat messages about it {running_msgs}   (targets: 1 start, ≤ 10 others, 2 messages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
