"""End to end through real processes: a burst of pushes starts the VM once and says so once."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests
import yaml

from tests.conftest import BOT_TOKEN, CHAT_ID, IAM_TOKEN, RULES, SECRET, push_payload
from tests.processes import ServiceProcess, free_port, wait_quiet

PUSHES = 500


def service_env(tmp_path, compute_api, bot_api) -> dict[str, str]:
    """Environment that points the service at the fakes, as a user would point it at the real APIs."""
    cfg = tmp_path / "rules.yaml"
    # Chores (idle stop, reconciliation) run once at worker start, then not again during the test.
    cfg.write_text(yaml.safe_dump({**RULES, "runner_check_interval": "1h"}))
    return {
        "DATA_DIR": str(tmp_path / "var"), "GITLAB_HOOK_CONFIG": str(cfg), "GITLAB_WEBHOOK_SECRET": SECRET,
        "YC_COMPUTE_URL": compute_api.url, "YC_OPERATION_URL": compute_api.operation_url,
        "YC_FOLDER_ID": compute_api.folder_id, "YC_IAM_TOKEN": IAM_TOKEN,
        "TELEGRAM_BOT_TOKEN": BOT_TOKEN, "TELEGRAM_CHAT_ID": str(CHAT_ID), "TELEGRAM_API_URL": bot_api.url,
    }


def test_burst_of_500_pushes_gives_one_start_and_one_pair_of_messages(tmp_path, compute_api, bot_api):
    vm = compute_api.add_instance("buildfront")
    port = free_port()
    serve = ServiceProcess("serve", service_env(tmp_path, compute_api, bot_api), tmp_path / "serve.log",
                           ["--port", str(port)]).start()
    try:
        serve.wait_http(f"http://127.0.0.1:{port}/readyz")
        session = requests.Session()
        body = json.dumps(push_payload())

        def push(_: int) -> int:
            return session.post(f"http://127.0.0.1:{port}/gitlab/webhook", data=body, timeout=10, headers={
                "X-Gitlab-Token": SECRET, "X-Gitlab-Event": "Push Hook", "Content-Type": "application/json",
                "Idempotency-Key": str(uuid.uuid4())}).status_code

        before = wait_quiet(lambda: len(compute_api.calls))
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(push, range(PUSHES)))
        assert codes == [202] * PUSHES

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("RUNNING" in (m.text or "") for m in bot_api.messages(CHAT_ID)):
            time.sleep(0.05)
        time.sleep(1.0)  # let any straggling duplicate show itself
        assert compute_api.status(vm) == "RUNNING"
        assert compute_api.count("POST", ":start") == 1
        burst = compute_api.calls[before:]
        others = len(burst) - 1
        assert others <= 10, [f"{c.method} {c.path}" for c in burst]
        texts = [m.text for m in bot_api.messages(CHAT_ID)]
        assert len(texts) == 2, texts
        assert texts[0] == "▶️ buildfront: starting for a push by @jsmith to stage (da15608, 'fixed readme')"
        assert texts[1].startswith("✅ buildfront is RUNNING")
    finally:
        assert serve.stop() == 0, serve.log()
