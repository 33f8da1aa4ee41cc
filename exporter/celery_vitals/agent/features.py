"""Which parts of the agent work in this worker: checked at start, reported by a gauge.

The agent reads Celery's internals (its request class, the worker's state,
the pool, the consumer's QoS and timer), which are no API: a Celery release
can rename any of them. Each part is therefore read on its own (a failing
part leaves only its own series out) and reported as
``celery_vitals_agent_feature_up{feature}``: 1 when its latest read worked,
0 when it did not. At ``worker_ready`` (the pool and the consumer run, the
worker's logging is set up) every part is read once and whatever cannot work
is ONE warning naming the parts, the reasons and the Celery version; a part
that breaks later is a rate-limited warning. Before that check the gauge is
absent: nothing was checked yet.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from celery_vitals.catalogue import gauge
from celery_vitals.logs import RateLimitedLogger

log = logging.getLogger(__name__)
rate_limited = RateLimitedLogger(log)

#: feature -> the metrics it feeds (for the start warning and docs/agent.md)
FEATURES: dict[str, str] = {
    "tap": "celery_task_* but received (started, succeeded, failed, retried, ...)",
    "pool_processes": "celery_worker_pool_processes",
    "busy_processes": "celery_worker_pool_busy_processes, celery_worker_tasks_active",
    "processed": "celery_worker_tasks_processed",
    "memory": "celery_worker_process_resident_memory_bytes",
    "exits": "celery_worker_pool_process_exits_total",
    "eta_tasks": "celery_worker_eta_tasks",
    "prefetch": "celery_worker_prefetch_limit",
}

T = TypeVar("T")


class Unavailable(Exception):
    """A part cannot be read from this worker; the message says why, for the log."""


class Features:
    """The state of each feature: None (works) or the reason it does not."""

    def __init__(self, celery_version: str) -> None:
        self.celery_version = celery_version
        self.reasons: dict[str, str | None] = {}
        self.checked = False  # set by the start check; until then reads are quiet
        self._lock = threading.Lock()  # the agent's thread and the consumer's read parts

    def read(self, feature: str, part: Callable[[], T]) -> T | None:
        """``part()``, or None when it raises (recorded, and logged once the check ran)."""
        try:
            value = part()
        except Exception as error:
            self.failed(feature, error)
            return None
        self.works(feature)
        return value

    def works(self, feature: str) -> None:
        with self._lock:
            self.reasons[feature] = None

    def failed(self, feature: str, error: BaseException | str) -> None:
        reason = error if isinstance(error, str) else _reason(error)
        with self._lock:
            was_working = self.reasons.get(feature, None) is None and feature in self.reasons
            self.reasons[feature] = reason
            checked = self.checked
        if checked and was_working:  # broke after the start check: say so, at most every minute
            rate_limited.warn_every(
                f"feature-{feature}",
                "celery-vitals agent: %s stopped working on Celery %s (%s are missing): %s",
                feature,
                self.celery_version,
                FEATURES.get(feature, feature),
                reason,
                exc_info=not isinstance(error, (str, Unavailable)),
            )

    def failing(self) -> dict[str, str]:
        with self._lock:
            return {
                feature: reason
                for feature in FEATURES
                if (reason := self.reasons.get(feature)) is not None
            }

    def finish_check(self) -> None:
        """The start check ran: ONE warning for whatever cannot work, the gauge appears."""
        failing = self.failing()
        with self._lock:
            self.checked = True
        if failing:
            log.warning(
                "celery-vitals agent: on Celery %s, %s cannot work, their metrics are "
                "missing (celery_vitals_agent_feature_up 0): %s",
                self.celery_version,
                ", ".join(failing),
                "; ".join(
                    f"{feature} ({FEATURES[feature]}): {reason}"
                    for feature, reason in failing.items()
                ),
            )

    def values(self) -> dict[str, int]:
        """feature -> 1 or 0; empty until the start check ran."""
        with self._lock:
            if not self.checked:
                return {}
            return {
                feature: 0 if self.reasons.get(feature) is not None else 1
                for feature in FEATURES
                if feature in self.reasons
            }


def _reason(error: BaseException) -> str:
    if isinstance(error, Unavailable):
        return str(error)
    return f"{type(error).__name__}: {error}"


class FeatureCollector(Collector):
    """celery_vitals_agent_feature_up{feature}.

    describe() names nothing: ExporterCollector describes the family (the
    catalogue's exporter group), and a registry refuses a name described twice.
    """

    def __init__(self, features: Features) -> None:
        self.features = features

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        values = self.features.values()
        if values:
            family = gauge("celery_vitals_agent_feature_up")
            for feature, value in values.items():
                family.add_metric([feature], value)
            yield family
