"""WorkerTracker: liveness and load per worker from worker-* events.

Liveness uses the exporter's own clock (when the last heartbeat arrived), so
a worker whose clock is off is neither dead nor immortal. A worker silent
for ``timeout`` is down; after ``purge_after`` its series are dropped so a
churning Kubernetes deployment does not leave series behind forever.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from celery_vitals.labels import LabelGuard
from celery_vitals.tasks import MAX_NUMBER, number

Event = dict[str, Any]

# Heartbeat fields outside these ranges are not a real worker's: each is a skipped
# observation (celery_vitals_observations_skipped_total{metric, reason="bad_value"}).
FREQ_RANGE = (0.1, 3600.0)  # seconds between heartbeats (Celery's default: 2)
MAX_GAP = 86_400.0  # a longer silence is a restart, not heartbeats lost on the way
MAX_LOAD = 1e6

EXIT_REASONS = ("recycled", "time_limit", "terminated", "killed", "failed")
MAX_VERSION_LENGTH = 40  # a Celery version is "5.4.0rc1" at most: longer is not one


@dataclass(frozen=True)
class PoolStats:
    """What only the worker itself knows about its pool: sampled by the agent.

    None (or empty) means unknown: the series is absent, as it is on the
    exporter, which never sees these.
    """

    processes: int | None = None
    busy: int | None = None
    prefetch_limit: int | None = None
    eta_tasks: int | None = None
    memory: dict[str, float] = field(default_factory=dict)  # "main" or slot index -> bytes
    exits: dict[str, int] = field(default_factory=dict)  # reason -> count since start


def pool_from_stats(reply: Mapping[str, Any]) -> tuple[str, PoolStats]:
    """A worker's answer to the ``stats`` broadcast: its pool's name (prefork, thread,
    solo, ... as the pool class's module names it; "" if unknown) and size and prefetch."""
    pool = reply.get("pool")
    pool = pool if isinstance(pool, dict) else {}
    implementation = pool.get("implementation")
    name = (
        implementation.rpartition(":")[0].rpartition(".")[2]
        if isinstance(implementation, str)
        else ""
    )
    processes, prefetch = pool.get("max-concurrency"), reply.get("prefetch_count")
    return name, PoolStats(
        processes=processes if type(processes) is int and processes >= 0 else None,
        prefetch_limit=prefetch if type(prefetch) is int and prefetch >= 0 else None,
    )


class Worker:
    __slots__ = (
        "active",
        "events_at_last",
        "events_at_previous",
        "heartbeat_sent_at",
        "last_heartbeat",
        "load1",
        "online",
        "pool",
        "pool_name",
        "processed",
        "processed_at_last",
        "processed_at_previous",
        "starts",
        "task_events",
        "task_events_missing",
        "version",
    )

    def __init__(self, now: float) -> None:
        self.online = True
        self.last_heartbeat = now
        self.heartbeat_sent_at: float | None = None  # worker clock, for gap detection
        self.active: float | None = None
        self.processed: float | None = None
        self.load1: float | None = None
        self.starts = 0
        self.task_events = 0  # task events from this host, any type
        # snapshots (processed, task_events) at the last two heartbeats
        self.processed_at_last: float | None = None
        self.events_at_last = 0
        self.processed_at_previous: float | None = None
        self.events_at_previous = 0
        self.task_events_missing = 0
        self.pool: PoolStats | None = None  # the agent's samples, or the exporter's stats polls
        self.pool_name: str | None = None  # from the exporter's stats polls
        self.version = ""  # Celery version, from worker events (sw_ver)


class WorkerTracker:
    def __init__(self, *, timeout: float, purge_after: float, hostnames: LabelGuard) -> None:
        self.timeout = timeout
        self.purge_after = purge_after
        self.hostnames = hostnames
        self.workers: dict[str, Worker] = {}
        self.heartbeats_missed = 0
        self.observations_skipped: dict[tuple[str, str], int] = {}

    def _checked(self, value: object, metric: str, low: float, high: float) -> float | None:
        """A field's number within [low, high]; present and outside it: a skipped observation."""
        if value is None:
            return None
        checked = number(value)
        if checked is not None and low <= checked <= high:
            return checked
        key = (metric, "bad_value")
        self.observations_skipped[key] = self.observations_skipped.get(key, 0) + 1
        return None

    def _worker(self, event: Event, now: float) -> tuple[str, Worker]:
        host = self.hostnames(event.get("hostname"))
        worker = self.workers.get(host)
        if worker is None:
            worker = self.workers[host] = Worker(now)
        return host, worker

    def on_online(self, event: Event, now: float) -> None:
        _, worker = self._worker(event, now)
        worker.starts += 1
        worker.heartbeat_sent_at = None  # a (re)start: no gap to measure
        self._heartbeat(worker, event, now)

    def on_heartbeat(self, event: Event, now: float) -> None:
        _, worker = self._worker(event, now)
        self._count_missed(worker, event)
        self._heartbeat(worker, event, now)

    def _count_missed(self, worker: Worker, event: Event) -> None:
        """Heartbeats come every `freq` seconds (worker clock): a longer gap means the
        stream lost events (consumer too slow, TTL or buffer overflow, reconnect)."""
        # the router admits only plausible timestamps
        sent_at = number(event.get("timestamp"))
        freq = self._checked(
            event.get("freq"), "celery_vitals_heartbeats_missed_total", *FREQ_RANGE
        )
        previous = worker.heartbeat_sent_at
        if sent_at is None:
            return
        worker.heartbeat_sent_at = sent_at
        if previous is not None and freq is not None:
            gap = sent_at - previous
            if 1.5 * freq < gap <= MAX_GAP:
                self.heartbeats_missed += round(gap / freq) - 1

    def on_offline(self, event: Event, now: float) -> str:
        host, worker = self._worker(event, now)
        worker.online = False
        worker.active = 0
        return host

    def on_pool(
        self, hostname: object, stats: PoolStats, now: float, pool_name: str | None = None
    ) -> None:
        """The agent's latest sample of its own pool (one object, replaced whole)."""
        _, worker = self._worker({"hostname": hostname}, now)
        worker.pool = stats
        if pool_name is not None:
            worker.pool_name = pool_name

    def on_stats(self, hostname: str, pool_name: str, stats: PoolStats) -> None:
        """The exporter's poll of a worker's ``stats`` (from the poller thread: only whole
        attributes are replaced, and only on workers the events already told of)."""
        worker = self.workers.get(hostname)
        if worker is not None:
            worker.pool = stats
            worker.pool_name = pool_name

    def without_stats(self) -> list[str]:
        """Workers seen in events whose pool no stats poll told yet."""
        return [
            host
            for host, worker in list(self.workers.items())
            if worker.pool_name is None and worker.online
        ]

    def on_task_events(self, hostname: object, count: int) -> None:
        """Task events from a worker (sent ones excepted) prove its task events are on."""
        if type(hostname) is str:
            worker = self.workers.get(hostname)
            if worker is not None:
                worker.task_events += count

    def _heartbeat(self, worker: Worker, event: Event, now: float) -> None:
        worker.online = True
        worker.last_heartbeat = now
        version = event.get("sw_ver")
        if type(version) is str and len(version) <= MAX_VERSION_LENGTH:
            worker.version = version
        active = self._checked(event.get("active"), "celery_worker_tasks_active", 0, MAX_NUMBER)
        processed = self._checked(
            event.get("processed"), "celery_worker_tasks_processed", 0, MAX_NUMBER
        )
        if active is not None:
            worker.active = active
        if processed is not None:
            worker.processed = processed
        loadavg = event.get("loadavg")
        if isinstance(loadavg, list | tuple) and loadavg:
            load1 = self._checked(loadavg[0], "celery_worker_load1", 0, MAX_LOAD)
            if load1 is not None:
                worker.load1 = load1
        self._check_task_events(worker)

    @staticmethod
    def _check_task_events(worker: Worker) -> None:
        """Heartbeats say tasks were processed; did their task events arrive?

        Compared with the heartbeat before the previous one, so that task
        events still buffered by the worker when a heartbeat left are not
        mistaken for missing ones.
        """
        processed = worker.processed
        before = worker.processed_at_previous
        if processed is not None and before is not None:
            if worker.task_events != worker.events_at_previous:
                worker.task_events_missing = 0
            elif processed > before:
                worker.task_events_missing = 1
        worker.processed_at_previous, worker.events_at_previous = (
            worker.processed_at_last,
            worker.events_at_last,
        )
        worker.processed_at_last, worker.events_at_last = processed, worker.task_events

    def is_up(self, worker: Worker, now: float) -> bool:
        return worker.online and now - worker.last_heartbeat < self.timeout

    def purge(self, now: float) -> list[str]:
        """Drop workers silent for purge_after; returns their hostnames."""
        cutoff = now - self.purge_after
        gone = [
            host for host, worker in list(self.workers.items()) if worker.last_heartbeat < cutoff
        ]
        for host in gone:
            del self.workers[host]
            self.hostnames.admitted.discard(host)  # its series are gone: free its slot
        return gone
