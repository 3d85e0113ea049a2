"""Prometheus metrics: web counters in-process (or multiprocess under gunicorn), the rest read from storage."""

from __future__ import annotations

import logging
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from gitlab_hook.intake import IntakeStore
from gitlab_hook.ledger import Ledger

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class WebMetrics:
    """Counters and latency of the webhook endpoint."""

    def __init__(self, multiprocess_dir: str | None = None):
        self.multiprocess_dir = multiprocess_dir
        # In multiprocess mode values live in mmap files shared by gunicorn workers; no registry.
        self.registry = None if multiprocess_dir else CollectorRegistry()
        self.deliveries = Counter(
            "gitlab_hook_deliveries", "Webhook deliveries by GitLab event and outcome.",
            ["event", "outcome"], registry=self.registry)
        self.latency = Histogram(
            "gitlab_hook_webhook_seconds", "Time to answer a webhook delivery.", ["outcome"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
            registry=self.registry)

    def exposition(self) -> bytes:
        if self.multiprocess_dir:
            from prometheus_client import multiprocess

            reg = CollectorRegistry()
            multiprocess.MultiProcessCollector(reg, path=self.multiprocess_dir)
            return generate_latest(reg)
        return generate_latest(self.registry)


class StorageCollector(Collector):
    """Queue depth, outbox rows and task outcomes, read at scrape time (shared by every process)."""

    def __init__(self, store: IntakeStore, depth: Callable[[], tuple[int, int]], ledger: Ledger | None = None):
        self.store, self.depth, self.ledger = store, depth, ledger

    def collect(self) -> Iterator:
        try:
            ready, scheduled = self.depth()
            q = GaugeMetricFamily("gitlab_hook_queue_depth", "Tasks in the queue.", labels=["queue"])
            q.add_metric(["ready"], ready)
            q.add_metric(["scheduled"], scheduled)
            yield q
        except Exception as exc:
            log.warning("queue depth unavailable for metrics: %s", exc)
        try:
            rows = GaugeMetricFamily("gitlab_hook_actions", "Outbox rows by action kind and state.",
                                     labels=["kind", "state"])
            for (kind, state), n in sorted(self.store.state_counts().items()):
                rows.add_metric([kind, state], n)
            yield rows
            outcomes = CounterMetricFamily("gitlab_hook_task_outcomes", "Task runs by action kind and outcome.",
                                           labels=["kind", "outcome"])
            for labels, n in sorted(self.store.counters("task_outcomes").items()):
                outcomes.add_metric(list(labels), n)
            yield outcomes
            yield GaugeMetricFamily("gitlab_hook_dedupe_records", "Remembered delivery keys.",
                                    value=self.store.dedupe_size())
            hist = HistogramMetricFamily("gitlab_hook_action_seconds",
                                         "Seconds from an accepted delivery to its effect (start requested, "
                                         "alert sent).", labels=["kind"])
            for kind, (buckets, _count, total) in sorted(self.store.latency_histograms().items()):
                hist.add_metric([kind], buckets, total)
            yield hist
        except Exception as exc:
            log.warning("outbox metrics unavailable: %s", exc)
        if self.ledger is None:
            return
        try:
            power = GaugeMetricFamily("gitlab_hook_vm_running", "1 when the ledger's last word on a VM is 'on'.",
                                      labels=["vm"])
            for vm in self.ledger.vms():
                last = self.ledger.last(vm)
                power.add_metric([vm], 1.0 if last and last[0] == "on" else 0.0)
            yield power
        except Exception as exc:
            log.warning("VM power metrics unavailable: %s", exc)


def storage_exposition(collector: StorageCollector) -> bytes:
    """Render the storage-backed series."""
    reg = CollectorRegistry()
    reg.register(collector)
    return generate_latest(reg)
