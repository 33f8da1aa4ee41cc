"""QueuePoller: polls a broker probe on its own thread and keeps the latest answer.

A scrape reads ``latest`` (an immutable ProbeResult swapped in whole), so it
never waits on the broker. The queue set is the configured queues, those the
broker shows (discovery, every few minutes), and those workers consume from
(``active_queues``, as rarely). Dead-letter queues are the ones matching
``--dlq`` patterns plus those RabbitMQ says other queues dead-letter into.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from celery_vitals.brokers.probe import (
    ProbeResult,
    QueueProbe,
    is_plumbing,
    matches_any,
    split_patterns,
)
from celery_vitals.histogram import Histograms
from celery_vitals.installation import explain
from celery_vitals.labels import OTHER, LabelGuard
from celery_vitals.logs import RateLimitedLogger

rate_limited = RateLimitedLogger(logging.getLogger(__name__))

PROBE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class QueuePoller:
    def __init__(
        self,
        probe: QueueProbe,
        *,
        queues: Sequence[str],
        dlqs: Sequence[str],
        interval: float,
        discovery_interval: float,
        queue_names: LabelGuard,
        worker_queues: Callable[[], set[str]] | None = None,
        worker_stats: Callable[[], None] | None = None,
        dlq_sampler: Callable[[str], Mapping[str, int]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.probe = probe
        self.configured = tuple(queues)
        self.dlqs = tuple(dlqs)
        self.interval = interval
        self.discovery_interval = discovery_interval
        self.queue_names = queue_names
        self.worker_queues = worker_queues
        self.worker_stats = worker_stats
        self.dlq_sampler = dlq_sampler
        # DLQ -> task name -> messages (celery_dlq_messages), swapped in whole per poll
        self.dlq_messages: Mapping[str, Mapping[str, int]] = {}
        self.clock = clock
        self.latest: ProbeResult | None = None
        self.up = False
        self.errors: dict[str, int] = {}
        self.durations = Histograms(PROBE_BUCKETS)
        self.dlq_ingress: dict[str, int] = {}
        self.dead_letter_queues: frozenset[str] = frozenset()
        self._discovered: set[str] = set()
        self._from_workers: set[str] = set()
        self._next_discovery = 0.0
        self._last_dlq: dict[str, tuple[int | None, int | None]] = {}  # (ready, published)
        self._stopping = threading.Event()

    # -- the queue set -----------------------------------------------------------

    def queue_set(self) -> list[str]:
        named_dlqs, _ = split_patterns(self.dlqs)
        # the DLQs RabbitMQ showed other queues dead-lettering into: polled from the next
        # poll on, not only after the next discovery (minutes later)
        targets = self.latest.dead_letter_targets if self.latest is not None else ()
        names = {*self.configured, *named_dlqs, *self._discovered, *self._from_workers, *targets}
        return sorted(name for name in names if name and not is_plumbing(name))

    def is_dlq(self, name: str, targets: Iterable[str] = ()) -> bool:
        return name in targets or matches_any(name, self.dlqs)

    def _discover(self, now: float) -> None:
        if now < self._next_discovery:
            return
        self._next_discovery = now + self.discovery_interval
        try:
            self._discovered = self.probe.discover()
        except Exception as error:
            self._count_error(error, "queue discovery")
        if self.worker_queues is not None:
            try:
                self._from_workers = self.worker_queues()
            except Exception as error:  # a broadcast: workers may not answer
                rate_limited.warn_every(
                    "active_queues",
                    "asking workers for their queues failed (%s)",
                    explain(error),
                )

    def _ask_new_workers(self) -> None:
        if self.worker_stats is None:
            return
        try:
            self.worker_stats()
        except Exception as error:  # a broadcast: workers may not answer
            rate_limited.warn_every(
                "stats",
                "asking workers for their stats failed (%s)",
                explain(error),
            )

    # -- one poll ----------------------------------------------------------------

    def poll_once(self) -> None:
        self._discover(self.clock())
        self._ask_new_workers()
        started = time.perf_counter()
        try:
            result = self.probe.poll(self.queue_set())
        except Exception as error:
            self.up = False
            self._count_error(error, "queue poll")
            return
        self.durations.observe((), time.perf_counter() - started)
        self._count_dlq_ingress(result)
        self.latest = result
        self.up = True
        self._sample_dlqs()

    def _sample_dlqs(self) -> None:
        """Messages per task name in each DLQ, from a bounded sample (celery_vitals.dlq)."""
        if self.dlq_sampler is None:
            return
        sampled: dict[str, Mapping[str, int]] = {}
        for queue in sorted(self.dead_letter_queues):
            try:
                sampled[queue] = self.dlq_sampler(queue)
            except Exception as error:  # the DLQ's series go until a sample succeeds again
                self._count_error(error, "dlq sample")
        self.dlq_messages = sampled

    def _count_error(self, error: Exception, what: str) -> None:
        kind = type(error).__name__
        self.errors[kind] = self.errors.get(kind, 0) + 1
        rate_limited.warn_every(what, "%s failed (%s)", what, explain(error))

    def _count_dlq_ingress(self, result: ProbeResult) -> None:
        """Ingress from the broker's publish counter where it has one, else depth growth."""
        targets = result.dead_letter_targets
        dlqs = set()
        for queue in result.queues:
            if not (queue.exists and self.is_dlq(queue.name, targets)):
                continue
            name = self.queue_names(queue.name)
            if name == OTHER:
                continue
            dlqs.add(queue.name)
            before = self._last_dlq.get(queue.name)
            self._last_dlq[queue.name] = (queue.ready, queue.published_total)
            self.dlq_ingress.setdefault(name, 0)
            if before is None:
                continue  # first sight: a baseline, not an ingress
            ready_before, published_before = before
            if queue.published_total is not None and published_before is not None:
                entered = queue.published_total - published_before
            elif queue.ready is not None and ready_before is not None:
                entered = queue.ready - ready_before
            else:
                entered = 0
            self.dlq_ingress[name] += max(entered, 0)
        self.dead_letter_queues = frozenset(dlqs)

    # -- the thread ---------------------------------------------------------------

    def run(self) -> None:
        while not self._stopping.is_set():
            self.poll_once()
            self._stopping.wait(self.interval)
        self.probe.close()
        close = getattr(self.dlq_sampler, "close", None)
        if close is not None:
            close()

    def stop(self) -> None:
        self._stopping.set()
