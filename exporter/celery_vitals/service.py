"""Wiring: config -> guards -> trackers -> router -> stream, collectors -> registry -> HTTP."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from celery import Celery
from celery.app.control import Control
from kombu import Queue
from kombu.pidbox import Mailbox
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
from celery_vitals.dlq import DlqSampler
from celery_vitals.exposition import Exposition
from celery_vitals.http import HttpServer, make_app
from celery_vitals.installation import explain
from celery_vitals.labels import LabelGuard
from celery_vitals.poller import QueuePoller
from celery_vitals.probes import QueueProbe
from celery_vitals.router import EventRouter
from celery_vitals.stream import EventStream
from celery_vitals.tasks import TaskTracker
from celery_vitals.workers import WorkerTracker, pool_from_stats

log = logging.getLogger(__name__)


class ExclusiveRepliesMailbox(Mailbox):  # type: ignore[misc]  # kombu is untyped
    """The remote-control mailbox, its broadcast reply queue always exclusive.

    RabbitMQ 4 refuses transient queues that are not exclusive (error 541), and
    kombu before 5.5 declares the reply queue auto-delete but not exclusive. An
    exclusive queue lives as long as the connection that declared it, which is
    the one that collects the replies.
    """

    @property
    def reply_queue(self) -> Queue:
        return Queue(
            f"{self.oid}.{self.reply_exchange.name}",
            exchange=self.reply_exchange,
            routing_key=self.oid,
            durable=False,
            exclusive=True,
            auto_delete=True,
            expires=self.reply_queue_expires,
            message_ttl=self.reply_queue_ttl,
        )


class ExclusiveRepliesControl(Control):  # type: ignore[misc]  # celery is untyped
    Mailbox = ExclusiveRepliesMailbox


def celery_app(config: Config) -> Celery:
    """A Celery app used only as a connection factory and for control broadcasts (their
    reply queues exclusive, as RabbitMQ 4 wants them)."""
    app = Celery(
        "celery-vitals",
        broker=config.broker_url,
        set_as_current=False,
        control=ExclusiveRepliesControl,
    )
    app.conf.update(
        broker_transport_options=dict(config.broker_transport_options),
        broker_connection_retry_on_startup=False,
        event_queue_ttl=config.event_queue_ttl,
        event_queue_expires=config.event_queue_expires,
    )
    return app


def broker_probe(config: Config) -> QueueProbe:
    """The queue probe of the configured broker's transport (connects lazily)."""
    if config.transport == "redis":
        from celery_vitals.probes.redis import RedisProbe

        return RedisProbe(
            config.broker_url, config.broker_transport_options, timeout=config.probe_timeout
        )
    if config.transport == "sqs":
        from celery_vitals.probes.sqs import SqsProbe

        return SqsProbe(
            config.broker_url,
            config.broker_transport_options,
            timeout=config.probe_timeout,
            max_queues=config.max_queue_names,
        )
    from celery_vitals.probes.amqp import AmqpProbe

    return AmqpProbe(
        config.broker_url,
        config.broker_transport_options,
        timeout=config.probe_timeout,
        management_url=config.rabbitmq_management_url,
    )


class WorkerBroadcasts:
    """What the poller thread asks the workers, rarely: the queues they consume
    (``active_queues``, at discovery) and their pool (``stats``: at discovery, and for
    workers the events showed since, on the next poll). Never on the scrape path."""

    def __init__(self, app: Celery, workers: WorkerTracker | None, timeout: float) -> None:
        self.app = app
        self.workers = workers
        self.timeout = timeout
        self._asked: set[str] = set()  # a worker that does not answer is asked once

    def queues(self) -> set[str]:
        replies = self.app.control.inspect(timeout=self.timeout).active_queues() or {}
        self._asked.clear()
        if replies:  # those that answered: the stats broadcast returns once they all did
            self._ask_stats(None, len(replies))
        return {
            queue["name"]
            for queues in replies.values()
            for queue in queues
            if isinstance(queue, dict) and isinstance(queue.get("name"), str)
        }

    def new_workers(self) -> None:
        known = self.workers.without_stats() if self.workers is not None else []
        hosts = [host for host in known if host not in self._asked]
        if hosts:
            self._asked.update(hosts)
            self._ask_stats(hosts, len(hosts))

    def _ask_stats(self, hosts: list[str] | None, limit: int | None) -> None:
        if self.workers is None:
            return
        inspect = self.app.control.inspect(timeout=self.timeout, destination=hosts, limit=limit)
        for host, reply in (inspect.stats() or {}).items():
            if isinstance(host, str) and isinstance(reply, dict):
                self.workers.on_stats(host, *pool_from_stats(reply))


def queue_poller(
    config: Config, app: Celery, queue_names: LabelGuard, workers: WorkerTracker | None = None
) -> QueuePoller | None:
    """The broker's queue poller, with the probe for its transport (None: polling off).
    With ``workers`` (the event stream's tracker) it also polls the workers' stats."""
    if config.queue_poll_interval == 0:
        return None
    if config.transport == "sqs":
        # No remote control on SQS (no active_queues or stats broadcast); no DLQ sample
        # either: reading a DLQ means receiving its messages, which costs calls and hides them
        return QueuePoller(
            broker_probe(config),
            queues=config.queues,
            dlq_patterns=config.dlqs,
            interval=config.queue_poll_interval,
            discovery_interval=config.queue_discovery_interval,
            queue_names=queue_names,
        )
    asks = WorkerBroadcasts(app, workers, config.probe_timeout)
    return QueuePoller(
        broker_probe(config),
        queues=config.queues,
        dlq_patterns=config.dlqs,
        interval=config.queue_poll_interval,
        discovery_interval=config.queue_discovery_interval,
        queue_names=queue_names,
        worker_queues=asks.queues,
        worker_stats=asks.new_workers if workers is not None else None,
        dlq_sampler=DlqSampler(config) if config.dlq_sample else None,
    )


class EventsEnabler:
    """Periodically asks every worker to turn task events on (``celery control enable_events``).

    The most common reason an exporter shows nothing is workers started
    without ``-E``. Runs on its own thread: never on the scrape path.
    """

    def __init__(self, app: Celery, interval: float) -> None:
        self.app = app
        self.interval = interval
        self.results = {"ok": 0, "error": 0}
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                with self.app.connection_for_write() as connection:
                    # fail fast while the broker is down instead of in kombu's retry loop
                    connection.ensure_connection(max_retries=0)
                    self.app.control.enable_events(connection=connection)
                self.results["ok"] += 1
            except Exception as error:
                self.results["error"] += 1
                log.warning("enable_events broadcast failed (%s)", explain(error))
            self._stopping.wait(self.interval)

    def stop(self) -> None:
        self._stopping.set()


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


def process_collectors(registry: CollectorRegistry) -> list[Collector]:
    """prometheus_client's standard process_*, python_info and python_gc_* collectors,
    registered on ``registry`` (never the global one)."""
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

    return [
        ProcessCollector(registry=registry),
        PlatformCollector(registry=registry),
        GCCollector(registry=registry),
    ]


class Exporter:
    """A running exporter: the pipeline fed by the event stream, served over HTTP."""

    def __init__(
        self, config: Config, registry: CollectorRegistry, app: Celery | None = None
    ) -> None:
        self.config = config
        self.pipeline = pipeline = Pipeline(config, registry)
        pipeline.exposition.collectors.extend(process_collectors(registry))
        self.app = app or celery_app(config)
        router = pipeline.router
        self.stream = (
            EventStream(
                self.app,
                router.handle,
                router.tick,
                router.count_skip,
                queue_ttl=config.event_queue_ttl,
                queue_expires=config.event_queue_expires,
                queue_max_length=config.event_queue_max_length,
            )
            if config.event_stream
            else None
        )
        self.poller = queue_poller(
            config,
            self.app,
            pipeline.guards["queue_name"],
            pipeline.workers if self.stream is not None else None,
        )
        pipeline.queue_collector.poller = self.poller
        self.enabler = (
            EventsEnabler(self.app, config.enable_events_interval)
            if config.enable_events and self.stream is not None
            else None
        )
        ready: Callable[[], bool]
        ready_means = "the event stream is connected"
        if self.stream is not None:
            stream = self.stream
            ready = pipeline.stream_up = stream.connected.is_set
            pipeline.reconnects = lambda: stream.reconnects
        else:  # the agents own task and worker metrics: ready means the broker answers
            poller = self.poller
            assert poller is not None  # config.build refuses neither stream nor polling
            ready = lambda: poller.up  # noqa: E731
            ready_means = "the last broker poll succeeded"
            pipeline.stream_up = None
            if config.transport == "sqs":
                log.info(
                    "SQS broker: no event stream and no remote control on SQS, so the "
                    "exporter only polls queues and dead-letter queues; task and worker "
                    "metrics come from celery_vitals.agent in each worker"
                )
        if self.enabler is not None:
            enabler = self.enabler
            pipeline.enable_events = lambda: enabler.results
        self.http = HttpServer(
            make_app(
                registry, ready=ready, exposition=pipeline.exposition, ready_means=ready_means
            ),
            config.listen_host,
            config.listen_port,
            web_config=config.web_config,
        )
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self.http.start()
        targets = [] if self.stream is None else [("events", self.stream.run)]
        if self.enabler is not None:
            targets.append(("enable-events", self.enabler.run))
        if self.poller is not None:
            targets.append(("queue-poller", self.poller.run))
        for name, target in targets:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        if self.stream is not None:
            self.stream.stop()
        if self.enabler is not None:
            self.enabler.stop()
        if self.poller is not None:
            self.poller.stop()
        for thread in self._threads:
            thread.join(timeout=5)
        self.http.stop()
