"""Storage-backed metrics: the same numbers whichever process serves /metrics."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from gitlab_hook.effects import DRY_RUN_HANDLERS
from gitlab_hook.ledger import Ledger
from gitlab_hook.worker import ActionRunner
from tests.conftest import failed_job_payload, push_payload


def scrape(client) -> dict[str, list]:
    text = client.get("/metrics").get_data(as_text=True)
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_action_latency_histogram_and_outcomes_after_the_worker_ran(client, post, store, settings):
    post(push_payload())
    post(failed_job_payload(job_id=77), event="Job Hook")
    runner = ActionRunner(store, DRY_RUN_HANDLERS, alert=lambda t: None)
    for row in store.rows("pending"):
        runner(row.id)
    m = scrape(client)
    buckets = {(s.labels["kind"], s.labels["le"]): s.value for s in m["gitlab_hook_action_seconds"]
               if s.name.endswith("_bucket")}
    assert buckets[("ensure_running", "+Inf")] == 1 and buckets[("report_migration_failure", "+Inf")] == 1
    assert buckets[("ensure_running", "60.0")] == 1  # done within a minute of being accepted
    outcomes = {(s.labels["kind"], s.labels["outcome"]): s.value for s in m["gitlab_hook_task_outcomes"]}
    assert outcomes == {("ensure_running", "done"): 1, ("report_migration_failure", "done"): 1}
    states = {(s.labels["kind"], s.labels["state"]): s.value for s in m["gitlab_hook_actions"]}
    assert states[("ensure_running", "done")] == 1


def test_vm_power_follows_the_ledger(client, settings):
    ledger = Ledger(settings.data_dir / "intake.db")
    ledger.record("buildfront", "on", "push")
    ledger.record("buildback", "on", "push")
    ledger.record("buildback", "off", "idle_stop")
    power = {s.labels["vm"]: s.value for s in scrape(client)["gitlab_hook_vm_running"]}
    assert power == {"buildfront": 1.0, "buildback": 0.0}
