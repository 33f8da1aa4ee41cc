"""``celery-vitals serve``: the exporter. Wiring: config -> pipeline (guards, trackers,
router, collectors) fed by the event stream, the broker's queue poller -> registry -> HTTP."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from celery import Celery
from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from celery_vitals.brokers.dead_letters import DeadLetterSampler
from celery_vitals.config import Config
from celery_vitals.control import celery_app
from celery_vitals.http import HttpServer, make_app
from celery_vitals.installation import explain
from celery_vitals.labels import LabelGuard
from celery_vitals.pipeline import Pipeline
from celery_vitals.poller import QueuePoller
from celery_vitals.stream import EventStream
from celery_vitals.workers import WorkerTracker, pool_from_stats

log = logging.getLogger(__name__)


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
    broker = config.broker
    # Without remote control (SQS) no active_queues or stats broadcast; a DLQ is sampled
    # only where reading it costs nothing and hides nothing (not SQS: receiving hides)
    asks = (
        WorkerBroadcasts(app, workers, config.probe_timeout)
        if broker.supports_remote_control
        else None
    )
    return QueuePoller(
        broker.probe(config),
        queues=config.queues,
        dlqs=config.dlqs,
        interval=config.queue_poll_interval,
        discovery_interval=config.queue_discovery_interval,
        queue_names=queue_names,
        worker_queues=asks.queues if asks is not None else None,
        worker_stats=asks.new_workers if asks is not None and workers is not None else None,
        dlq_sampler=(
            DeadLetterSampler(config) if config.dlq_sample and broker.samples_dead_letters else None
        ),
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
            if not config.broker.supports_events:
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
