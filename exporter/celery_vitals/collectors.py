"""Collectors: metric families built at scrape time from the trackers' plain data.

A scrape copies dicts (atomic under the GIL) and never touches the broker,
so its cost depends on the number of series, not on the broker's size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from celery_vitals.catalogue import (
    BY_NAME,
    build_info,
    counter,
    family,
    gauge,
    histogram,
    info,
)
from celery_vitals.exposition import FamilyText
from celery_vitals.histogram import Histograms
from celery_vitals.labels import OTHER, LabelGuard
from celery_vitals.poller import QueuePoller
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
    """Per-task counters and histograms: nearly all of a large exporter's series.

    Rendered two ways from the same blocks: families for the registry
    (collect), and cached text for /metrics (text_families, see exposition.py).

    celery_task_succeeded_total{name="orders.charge",queue_name="b"} 1041.0
    celery_task_failed_total{exception="TimeLimitExceeded",name="orders.charge",queue_name="b"} 3.0
    celery_task_runtime_seconds_bucket{le="0.5",name="orders.charge",queue_name="b"} 998.0
    """

    metric_names = tuple(name for name, spec in BY_NAME.items() if spec.group == "task")

    def __init__(self, tasks: TaskTracker) -> None:
        self.tasks = tasks
        self._text: dict[tuple[str, tuple[str, ...]], FamilyText] = {}

    def blocks(self) -> list[tuple[str, tuple[str, ...], Mapping[Any, float] | Histograms]]:
        """(catalogue name, label names, plain data) per family, in exposition order."""
        t = self.tasks
        labels = t.label_names
        return [
            ("celery_task_sent_total", labels, t.sent),
            ("celery_task_received_total", labels, t.received),
            ("celery_task_started_total", labels, t.started),
            ("celery_task_succeeded_total", labels, t.succeeded),
            ("celery_task_retried_total", labels, t.retried),
            ("celery_task_revoked_total", labels, t.revoked),
            ("celery_task_expired_total", labels, t.expired),
            ("celery_task_redelivered_total", labels, t.redelivered),
            ("celery_task_unstamped_total", ("queue_name",), t.unstamped),
            ("celery_task_failed_total", (*labels, "exception"), t.failed),
            ("celery_task_rejected_total", (*labels, "requeue"), t.rejected),
            ("celery_task_failed_after_retries_total", labels, t.failed_after_retries),
            ("celery_task_last_success_timestamp_seconds", labels, t.last_success),
            ("celery_task_runtime_seconds", labels, t.runtime),
            ("celery_task_queue_wait_seconds", labels, t.queue_wait),
            ("celery_task_prefetch_wait_seconds", labels, t.prefetch_wait),
        ]

    def collect(self) -> Iterator[Metric]:
        for name, labels, data in self.blocks():
            if isinstance(data, Histograms):
                yield _histogram(name, labels, data)
            elif BY_NAME[name].type == "counter":
                yield _samples(counter(name, labels), data)
            else:
                yield _samples(gauge(name, labels), data)

    def text_families(self) -> Iterator[tuple[FamilyText, Mapping[Any, float] | Histograms]]:
        for name, labels, data in self.blocks():
            text = self._text.get((name, labels))
            if text is None:
                text = self._text[(name, labels)] = FamilyText(name, labels)
            yield text, data


class WorkerCollector(_CatalogueCollector):
    """Per-worker liveness and load.

    celery_worker_up{hostname="celery@web-1"} 1.0
    celery_worker_tasks_reserved{hostname="celery@web-1"} 4.0
    celery_worker_task_events_missing{hostname="celery@web-1"} 0.0
    """

    metric_names = tuple(name for name, spec in BY_NAME.items() if spec.group == "worker")

    def __init__(
        self, workers: WorkerTracker, tasks: TaskTracker, clock: Callable[[], float] = time.time
    ) -> None:
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
        from_heartbeat = {
            name: gauge(name)
            for name in (
                "celery_worker_tasks_active",
                "celery_worker_tasks_processed",
                "celery_worker_load1",
            )
        }
        from_pool = {
            name: gauge(name)
            for name in (
                "celery_worker_pool_processes",
                "celery_worker_pool_busy_processes",
                "celery_worker_prefetch_limit",
                "celery_worker_eta_tasks",
            )
        }
        memory = gauge("celery_worker_process_resident_memory_bytes")
        exits = counter("celery_worker_pool_process_exits_total")
        worker_info = info("celery_worker_info")
        reserved_by_host = dict(self.tasks.reserved_by_host)
        for host, w in list(self.workers.workers.items()):
            labels = [host]
            up.add_metric(labels, 1 if self.workers.is_up(w, now) else 0)
            heartbeat.add_metric(labels, w.last_heartbeat)
            reserved.add_metric(labels, max(reserved_by_host.get(host, 0), 0))
            starts.add_metric(labels, w.starts)
            missing.add_metric(labels, w.task_events_missing)
            for name, value in (
                ("celery_worker_tasks_active", w.active),
                ("celery_worker_tasks_processed", w.processed),
                ("celery_worker_load1", w.load1),
            ):
                if value is not None:  # no heartbeat carried it yet
                    from_heartbeat[name].add_metric(labels, value)
            if w.pool_name is not None:  # the exporter polled its stats
                worker_info.add_metric(
                    [], {"hostname": host, "version": w.version, "pool": w.pool_name}
                )
            pool = w.pool  # the agent's samples, or the exporter's stats polls
            if pool is not None:
                for name, number in (
                    ("celery_worker_pool_processes", pool.processes),
                    ("celery_worker_pool_busy_processes", pool.busy),
                    ("celery_worker_prefetch_limit", pool.prefetch_limit),
                    ("celery_worker_eta_tasks", pool.eta_tasks),
                ):
                    if number is not None:
                        from_pool[name].add_metric(labels, number)
                for process, rss in pool.memory.items():
                    memory.add_metric([host, process], rss)
                for reason, count in pool.exits.items():
                    exits.add_metric([host, reason], count)
        yield from (
            up,
            heartbeat,
            reserved,
            starts,
            missing,
            *from_heartbeat.values(),
            *from_pool.values(),
            memory,
            exits,
            worker_info,
        )


class ExporterCollector(_CatalogueCollector):
    """The exporter's own health: is it seeing everything it should?

    celery_vitals_event_stream_up 1.0
    celery_vitals_events_total{type="task-succeeded"} 52113.0
    celery_vitals_tracker_evictions_total{reason="capacity"} 0.0
    """

    metric_names = tuple(name for name, spec in BY_NAME.items() if spec.group == "exporter")

    def __init__(
        self,
        router: EventRouter,
        guards: Iterable[LabelGuard],
        stream_up: Callable[[], bool | None],
        reconnects: Callable[[], int],
        *,
        enable_events: Callable[[], Mapping[str, int]] = dict,
        scrape_errors: Mapping[str, int] | None = None,
        agent: Mapping[str, str] | None = None,
        render_durations: Callable[[], Histograms | None] = lambda: None,
    ) -> None:
        self.router = router
        self.render_durations = render_durations
        self.scrape_errors = scrape_errors if scrape_errors is not None else {}
        self.guards = list(guards)
        self.stream_up = stream_up
        self.reconnects = reconnects
        self.enable_events = enable_events
        # an agent inside a worker has no event stream: its metrics would only mislead
        # (stream down, no reconnects); it says what it is instead
        self.agent = dict(agent) if agent is not None else None

    def collect(self) -> Iterator[Metric]:
        router, tasks = self.router, self.router.tasks
        up = None if self.agent is not None else self.stream_up()
        streaming = up is not None  # an agent, or --no-event-stream: no stream to report on
        if streaming:
            yield _samples(gauge("celery_vitals_event_stream_up"), {(): 1 if up else 0})
        if self.agent is not None:
            agent = info("celery_vitals_agent_info")
            agent.add_metric([], self.agent)
            yield agent
        yield _samples(counter("celery_vitals_events_total"), router.events_by_type)
        skipped = dict(router.skipped)
        for reason, count in list(tasks.skipped.items()):
            skipped[reason] = skipped.get(reason, 0) + count
        yield _samples(counter("celery_vitals_events_skipped_total"), skipped)
        observations = dict(tasks.observations_skipped)
        for key, count in list(router.workers.observations_skipped.items()):
            observations[key] = observations.get(key, 0) + count
        yield _samples(counter("celery_vitals_observations_skipped_total"), observations)
        if streaming:
            yield _samples(
                counter("celery_vitals_event_stream_reconnects_total"), {(): self.reconnects()}
            )
            lag = gauge("celery_vitals_event_lag_seconds")
            if router.lag is not None:
                lag.add_metric([], router.lag)
            yield lag
        yield _samples(gauge("celery_vitals_tracked_tasks"), {(): len(tasks.tasks)})
        yield _samples(
            counter("celery_vitals_heartbeats_missed_total"), {(): router.workers.heartbeats_missed}
        )
        yield _samples(counter("celery_vitals_tracker_evictions_total"), tasks.evictions)
        yield _samples(counter("celery_vitals_unknown_uuid_events_total"), tasks.unknown_uuid)
        folded: dict[tuple[str, str], int] = {}
        for guard in self.guards:  # task and worker hostname guards share a label
            for reason, count in list(guard.folded.items()):
                key = (guard.label, reason)
                folded[key] = folded.get(key, 0) + count
        yield _samples(counter("celery_vitals_label_values_folded_total"), folded)
        if streaming:
            yield _samples(
                counter("celery_vitals_enable_events_requests_total"), self.enable_events()
            )
            yield _samples(
                gauge("celery_vitals_task_sent_events_missing"), {(): tasks.sent_events_missing}
            )
        yield _samples(counter("celery_vitals_scrape_errors_total"), self.scrape_errors)
        durations = self.render_durations()
        if durations is not None:
            yield _histogram("celery_vitals_scrape_duration_seconds", (), durations)
        yield build_info()


class QueueCollector(_CatalogueCollector):
    """Queues, dead-letter queues and the broker, from the poller's latest result (and the
    oldest message's age from task-sent events where the broker tells no publication time).

    celery_queue_length{queue_name="billing"} 1520.0
    celery_queue_oldest_message_age_seconds{queue_name="billing"} 312.5
    celery_dlq_length{queue_name="billing.dead"} 3.0
    celery_broker_up 1.0
    """

    metric_names = tuple(
        name for name, spec in BY_NAME.items() if spec.group in ("queue", "broker")
    )
    FACTS = ("celery_broker_memory_used_bytes", "celery_broker_memory_limit_bytes")

    def __init__(
        self,
        poller: QueuePoller | None,
        tasks: TaskTracker,
        queue_names: LabelGuard,
        clock: Callable[[], float] = time.time,
        task_names: LabelGuard | None = None,
    ) -> None:
        self.poller = poller
        self.tasks = tasks
        self.queue_names = queue_names
        self.task_names = task_names
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        yield self._oldest_message_age(self.clock())
        if self.poller is not None:
            yield from self._from_broker(self.poller)

    def _oldest_message_age(self, now: float) -> Metric:
        """One series per queue, one owner each: the broker's head stamp where the last poll
        read one (what is really waiting, whoever published it and whatever the events
        missed), else the oldest task-sent event not followed by task-received. A
        dead-letter queue holds messages by design: it has no age."""
        poller = self.poller
        result = poller.latest if poller is not None else None
        targets = result.dead_letter_targets if result is not None else ()
        published: dict[str, float] = {}
        if poller is not None and result is not None:
            for stats in result.queues:
                at, name = stats.oldest_published, self.queue_names(stats.name)
                if at is None or name == OTHER or poller.is_dlq(stats.name, targets):
                    continue
                published[name] = min(published.get(name, at), at)
        for queue, sent_at in self.tasks.oldest_pending().items():
            if queue not in published and (poller is None or not poller.is_dlq(queue, targets)):
                published[queue] = sent_at
        oldest = gauge("celery_queue_oldest_message_age_seconds")
        for queue, at in published.items():
            oldest.add_metric([queue], max(now - at, 0.0))
        return oldest

    def _dlq_messages(self, poller: QueuePoller) -> Metric:
        family = gauge("celery_dlq_messages")
        folded: dict[tuple[str, str], int] = {}
        for queue, tasks in poller.dlq_messages.items():
            queue_name = self.queue_names(queue)
            if queue_name == OTHER:
                continue
            for task, count in tasks.items():
                name = self.task_names(task) if self.task_names is not None else task
                folded[(queue_name, name)] = folded.get((queue_name, name), 0) + count
        for labels, count in sorted(folded.items()):
            family.add_metric(list(labels), count)
        return family

    def _from_broker(self, poller: QueuePoller) -> Iterator[Metric]:
        length, unacked = gauge("celery_queue_length"), gauge("celery_queue_unacked")
        consumers, exists = gauge("celery_queue_consumers"), gauge("celery_queue_exists")
        oldest_unacked = gauge("celery_queue_oldest_unacked_age_seconds")
        delayed = gauge("celery_queue_delayed")
        visibility = gauge("celery_queue_visibility_timeout_seconds")
        receives = gauge("celery_queue_max_receives")
        dlq_length = gauge("celery_dlq_length")
        facts = {name: gauge(name) for name in self.FACTS}
        persistence = gauge("celery_broker_persistence_enabled")
        broker = info("celery_broker_info")
        result = poller.latest
        if result is not None:
            for queue in result.queues:
                name = self.queue_names(queue.name)
                if name == OTHER:
                    continue  # past the cap: counted by the guard, never summed into one
                if poller.is_dlq(queue.name, result.dead_letter_targets):
                    if queue.ready is not None:
                        dlq_length.add_metric([name], queue.ready)
                    continue
                exists.add_metric([name], 1 if queue.exists else 0)
                timeout = queue.visibility_timeout  # SQS: per queue; Redis: the transport's
                if timeout is None and queue.exists:
                    timeout = result.visibility_timeout
                for fam, value in (
                    (length, queue.ready),
                    (unacked, queue.unacked),
                    (consumers, queue.consumers),
                    (oldest_unacked, queue.oldest_unacked_age),
                    (delayed, queue.delayed),
                    (visibility, timeout),
                    (receives, queue.max_receive_count),
                ):
                    if value is not None:
                        fam.add_metric([name], value)
            for fact, fam in facts.items():
                if fact in result.facts:
                    fam.add_metric([], result.facts[fact])
            for kind, enabled in result.persistence.items():
                persistence.add_metric([kind], 1 if enabled else 0)
            if result.info:
                broker.add_metric([], dict(result.info))
        yield from (
            length,
            unacked,
            consumers,
            exists,
            oldest_unacked,
            delayed,
            visibility,
            receives,
            dlq_length,
        )
        yield self._dlq_messages(poller)
        yield _samples(counter("celery_dlq_ingress_total"), poller.dlq_ingress)
        yield _samples(gauge("celery_broker_up"), {(): 1 if poller.up else 0})
        yield _histogram("celery_broker_probe_duration_seconds", (), poller.durations)
        yield _samples(counter("celery_broker_probe_errors_total"), poller.errors)
        yield from (*facts.values(), persistence, broker)
