"""Pipeline: guards, trackers, router and collectors, everything between a message body and
/metrics, with no I/O. The exporter feeds it from the event stream, an agent from inside
its worker; unit tests and benchmarks build it alone."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from celery_vitals.brokers import BROKER_LABEL
from celery_vitals.collectors import (
    ExporterCollector,
    QueueCollector,
    TaskCollector,
    WorkerCollector,
)
from celery_vitals.config import Config
from celery_vitals.exposition import Exposition
from celery_vitals.labels import LabelGuard
from celery_vitals.router import EventRouter
from celery_vitals.tasks import TaskTracker
from celery_vitals.workers import WorkerTracker


class Pipeline:
    """Guards, trackers, router and collectors: everything between a message body and
    /metrics, with no I/O. Unit tests and benchmarks build this alone."""

    def __init__(
        self,
        config: Config,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        agent: Mapping[str, str] | None = None,
    ) -> None:
        """``agent``: the labels of celery_vitals_agent_info when an agent inside a worker
        feeds this pipeline (it has no event stream), None for the exporter."""
        length = config.max_label_length
        self.guards = {
            "name": LabelGuard("name", config.max_task_names, length),
            "queue_name": LabelGuard("queue_name", config.max_queue_names, length),
            "exception": LabelGuard("exception", config.max_exception_names, length),
            "task_hostname": LabelGuard("hostname", config.max_workers, length),
            "worker_hostname": LabelGuard("hostname", config.max_workers, length),
        }
        self.tasks = TaskTracker(
            max_tasks=config.max_tracked_tasks,
            max_age=config.max_task_age,
            default_queue=config.default_queue,
            runtime_buckets=config.runtime_buckets,
            wait_buckets=config.wait_buckets,
            names=self.guards["name"],
            queues=self.guards["queue_name"],
            exceptions=self.guards["exception"],
            hostnames=self.guards["task_hostname"],
            hostname_label=config.task_hostname_label,
        )
        self.workers = WorkerTracker(
            timeout=config.worker_timeout,
            purge_after=config.worker_purge_after,
            hostnames=self.guards["worker_hostname"],
        )
        self.router = EventRouter(self.tasks, self.workers, clock=clock)
        self.scrape_errors: dict[str, int] = {}  # families a scrape had to leave out
        # None: no event stream at all (--no-event-stream), so no stream-up gauge either
        self.stream_up: Callable[[], bool] | None = lambda: False
        self.reconnects: Callable[[], int] = lambda: 0
        self.enable_events: Callable[[], Mapping[str, int]] = dict
        # the broker poller is plugged in by Exporter; without one, queue metrics come
        # from events only
        self.queue_collector = QueueCollector(
            None, self.tasks, self.guards["queue_name"], clock=clock, task_names=self.guards["name"]
        )
        self.collectors: list[Collector] = [
            TaskCollector(self.tasks),
            self.queue_collector,
            WorkerCollector(self.workers, self.tasks, clock=clock),
            ExporterCollector(
                self.router,
                self.guards.values(),
                # late-bound on purpose: Exporter plugs in the stream's state afterwards
                stream_up=lambda: None if self.stream_up is None else self.stream_up(),
                reconnects=lambda: self.reconnects(),  # noqa: PLW0108
                enable_events=lambda: self.enable_events(),  # noqa: PLW0108
                scrape_errors=self.scrape_errors,
                agent=agent,
                render_durations=lambda: self.exposition.durations,
            ),
        ]
        # every series names the broker (label ``broker``): the rules join the exporter's
        # queues and the agents' workers on it, whatever jobs Prometheus puts them in
        self.exposition = Exposition(
            self.collectors,
            errors=self.scrape_errors,
            constant_labels={BROKER_LABEL: config.broker_label},
        )
        if registry is not None:
            for collector in self.collectors:
                registry.register(collector)
