"""``/metrics``: the dashboard's view of the fleet in Prometheus' text format, by ``prometheus_client``.

One registry per dashboard (never the global one, so two apps in one interpreter do not collide). Counters
count what this dashboard saw since it started; the gauges are refreshed at each scrape (a records listing
a passive queue declare and the workers' answers, each bounded).
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "DashboardMetrics"]

#: Latency buckets (seconds) of a control call or a records query: a broker round trip to a deadline.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class DashboardMetrics:
    """The metrics of one dashboard: processes by state, launches, state changes, control and query latencies."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.processes = Gauge(
            "process_comms_processes",
            "Processes of the fleet by state at the last scrape (the records listing: at most 10,000, newest first)",
            ["state"],
            registry=self.registry,
        )
        self.state_changes = Counter(
            "process_comms_state_changes",
            "state_changed broadcasts seen by this dashboard, by the new state",
            ["state"],
            registry=self.registry,
        )
        self.launches = Counter(
            "process_comms_launches",
            "Processes created (a state_changed broadcast from no state), as seen by this dashboard",
            registry=self.registry,
        )
        self.control = Histogram(
            "process_comms_control_seconds",
            "Pause, play and kill calls made through this dashboard: latency by action and outcome",
            ["action", "outcome"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.queries = Histogram(
            "process_comms_records_query_seconds",
            "Records queries (list, get) this dashboard made: latency by query and outcome",
            ["query", "outcome"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.queue_messages = Gauge(
            "process_comms_task_queue_messages", "Tasks waiting in the task queue", ["queue"], registry=self.registry
        )
        self.queue_consumers = Gauge(
            "process_comms_task_queue_consumers",
            "Consumers (workers) of the task queue",
            ["queue"],
            registry=self.registry,
        )
        self.scrape_ok = Gauge(
            "process_comms_dashboard_source_up",
            "1 if the source answered at the last scrape (records: a worker answered; queue: the broker did)",
            ["source"],
            registry=self.registry,
        )
        self.worker_slots = Gauge(
            "process_comms_worker_slots",
            "Task slots of the workers that answered at the last scrape, by worker, queue and kind (used, total)",
            ["worker", "host", "queue", "kind"],
            registry=self.registry,
        )
        self.streams = Gauge(
            "process_comms_dashboard_event_streams", "Open server-sent-event streams", registry=self.registry
        )

    def saw_transition(self, before: str, after: str) -> None:
        """Count one ``state_changed.<before>.<after>`` broadcast."""
        self.state_changes.labels(state=after).inc()
        if before == "None":
            self.launches.inc()

    def set_processes(self, states: list[str]) -> None:
        """Processes by state from one listing (states no process is in any more disappear)."""
        self.processes.clear()
        for state, count in Tally(states).items():
            self.processes.labels(state=state or "unknown").set(count)

    def set_worker_slots(self, workers: Sequence[Mapping[str, object]]) -> None:
        """Slots used and total per worker and queue (a total of no limit is not exported)."""
        self.worker_slots.clear()
        for info in workers:
            slots = info.get("slots")
            for queue, use in slots.items() if isinstance(slots, dict) else ():
                if not isinstance(use, dict):
                    continue
                labels = {"worker": str(info.get("worker")), "host": str(info.get("host")), "queue": str(queue)}
                for kind in ("used", "total"):
                    value = use.get(kind)
                    if isinstance(value, (int, float)):
                        self.worker_slots.labels(kind=kind, **labels).set(value)

    @contextmanager
    def timed(self, histogram: Histogram, **labels: str) -> Iterator[None]:
        """Observe the latency of the block, labelled ``outcome`` ok or the error's type name."""
        start = time.perf_counter()
        outcome = "ok"
        try:
            yield
        except BaseException as exc:
            outcome = type(exc).__name__
            raise
        finally:
            histogram.labels(outcome=outcome, **labels).observe(time.perf_counter() - start)

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)
