"""Collectors: metric families built at scrape time from the trackers' plain data.

A scrape copies dicts (atomic under the GIL) and never touches the broker,
so its cost depends on the number of series, not on the broker's size.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import celery
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from celery_vitals import __version__
from celery_vitals.catalogue import BY_NAME, counter, family, gauge, histogram, info
from celery_vitals.histogram import Histograms
from celery_vitals.labels import LabelGuard
from celery_vitals.router import EventRouter
from celery_vitals.tasks import TaskTracker
from celery_vitals.workers import WorkerTracker

Simple = TypeVar("Simple", CounterMetricFamily, GaugeMetricFamily)


def _samples(fam: Simple, data: Mapping[Any, float]) -> Simple:
    """One sample per entry; tuple keys are label values, a str key is the only one."""
    for key, value in list(data.items()):
        fam.add_metric(list(key) if isinstance(key, tuple) else [key], value)
    return fam


def _histogram(name: str, labels: tuple[str, ...], data: Histograms) -> HistogramMetricFamily:
    fam = histogram(name, labels)
    for key, buckets, total in data.snapshot():
        fam.add_metric(list(key), buckets, total)
    return fam


class _CatalogueCollector(Collector):
    """describe() from the catalogue, so registering never runs a collect."""

    metric_names: tuple[str, ...] = ()

    def describe(self) -> Iterator[Metric]:
        for name in self.metric_names:
            yield family(name)


class TaskCollector(_CatalogueCollector):
    """Per-task counters and histograms.

    celery_task_succeeded_total{name="orders.charge",queue_name="b"} 1041.0
    celery_task_failed_total{exception="TimeLimitExceeded",name="orders.charge",queue_name="b"} 3.0
    celery_task_runtime_seconds_bucket{le="0.5",name="orders.charge",queue_name="b"} 998.0
    """

    metric_names = tuple(name for name, spec in BY_NAME.items() if spec.group == "task")

    def __init__(self, tasks: TaskTracker) -> None:
        self.tasks = tasks

    def collect(self) -> Iterator[Metric]:
        t = self.tasks
        labels = t.label_names
        counters = {
            "celery_task_sent_total": t.sent,
            "celery_task_received_total": t.received,
            "celery_task_started_total": t.started,
            "celery_task_succeeded_total": t.succeeded,
            "celery_task_retried_total": t.retried,
            "celery_task_revoked_total": t.revoked,
            "celery_task_expired_total": t.expired,
            "celery_task_redelivered_total": t.redelivered,
        }
        for name, data in counters.items():
            yield _samples(counter(name, labels), data)
        yield _samples(counter("celery_task_failed_total", (*labels, "exception")), t.failed)
        yield _samples(counter("celery_task_rejected_total", (*labels, "requeue")), t.rejected)
        yield _samples(gauge("celery_task_last_success_timestamp_seconds", labels),
                       t.last_success)
        yield _histogram("celery_task_runtime_seconds", labels, t.runtime)
        yield _histogram("celery_task_queue_wait_seconds", labels, t.queue_wait)
        yield _histogram("celery_task_prefetch_wait_seconds", labels, t.prefetch_wait)


class WorkerCollector(_CatalogueCollector):
    """Per-worker liveness and load.

    celery_worker_up{hostname="celery@web-1"} 1.0
    celery_worker_tasks_reserved{hostname="celery@web-1"} 4.0
    celery_worker_task_events_missing{hostname="celery@web-1"} 0.0
    """

    metric_names = tuple(name for name, spec in BY_NAME.items() if spec.group == "worker")

    def __init__(self, workers: WorkerTracker, tasks: TaskTracker,
                 clock: Callable[[], float] = time.time) -> None:
        self.workers = workers
        self.tasks = tasks
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        up = gauge("celery_worker_up")
        heartbeat = gauge("celery_worker_last_heartbeat_timestamp_seconds")
        reserved = gauge("celery_worker_tasks_reserved")
        starts = counter("celery_worker_starts_total")
        missing = gauge("celery_worker_task_events_missing")
        from_heartbeat = {name: gauge(name) for name in (
            "celery_worker_tasks_active", "celery_worker_tasks_processed", "celery_worker_load1")}
        reserved_by_host = dict(self.tasks.reserved_by_host)
        for host, w in list(self.workers.workers.items()):
            labels = [host]
            up.add_metric(labels, 1 if self.workers.is_up(w, now) else 0)
            heartbeat.add_metric(labels, w.last_heartbeat)
            reserved.add_metric(labels, max(reserved_by_host.get(host, 0), 0))
            starts.add_metric(labels, w.starts)
            missing.add_metric(labels, w.task_events_missing)
            for name, value in (("celery_worker_tasks_active", w.active),
                                ("celery_worker_tasks_processed", w.processed),
                                ("celery_worker_load1", w.load1)):
                if value is not None:  # no heartbeat carried it yet
                    from_heartbeat[name].add_metric(labels, value)
        yield from (up, heartbeat, reserved, starts, missing, *from_heartbeat.values())


class ExporterCollector(_CatalogueCollector):
    """The exporter's own health: is it seeing everything it should?

    celery_vitals_event_stream_up 1.0
    celery_vitals_events_total{type="task-succeeded"} 52113.0
    celery_vitals_tracker_evictions_total{reason="capacity"} 0.0
    """

    metric_names = tuple(name for name, spec in BY_NAME.items() if spec.group == "exporter")

    def __init__(self, router: EventRouter, guards: Iterable[LabelGuard],
                 stream_up: Callable[[], bool], reconnects: Callable[[], int],
                 enable_events: Callable[[], Mapping[str, int]] = dict) -> None:
        self.router = router
        self.guards = list(guards)
        self.stream_up = stream_up
        self.reconnects = reconnects
        self.enable_events = enable_events

    def collect(self) -> Iterator[Metric]:
        router, tasks = self.router, self.router.tasks
        yield _samples(gauge("celery_vitals_event_stream_up"),
                               {(): 1 if self.stream_up() else 0})
        yield _samples(counter("celery_vitals_events_total"), router.events_by_type)
        skipped = dict(router.skipped)
        for reason, count in list(tasks.skipped.items()):
            skipped[reason] = skipped.get(reason, 0) + count
        yield _samples(counter("celery_vitals_events_skipped_total"), skipped)
        yield _samples(counter("celery_vitals_observations_skipped_total"),
                               tasks.observations_skipped)
        yield _samples(counter("celery_vitals_event_stream_reconnects_total"),
                               {(): self.reconnects()})
        lag = gauge("celery_vitals_event_lag_seconds")
        if router.lag is not None:
            lag.add_metric([], router.lag)
        yield lag
        yield _samples(gauge("celery_vitals_tracked_tasks"), {(): len(tasks.tasks)})
        yield _samples(counter("celery_vitals_tracker_evictions_total"), tasks.evictions)
        yield _samples(counter("celery_vitals_unknown_uuid_events_total"),
                               tasks.unknown_uuid)
        folded: dict[tuple[str, str], int] = {}
        for guard in self.guards:  # task and worker hostname guards share a label
            for reason, count in list(guard.folded.items()):
                key = (guard.label, reason)
                folded[key] = folded.get(key, 0) + count
        yield _samples(counter("celery_vitals_label_values_folded_total"), folded)
        yield _samples(counter("celery_vitals_enable_events_requests_total"),
                               self.enable_events())
        build = info("celery_vitals_build_info")
        build.add_metric([], {"version": __version__, "celery_version": celery.__version__,
                             "python_version": platform.python_version()})
        yield build
