"""Queue probes: queue depth, unacked messages, consumers and broker facts, polled in
the background (never on the scrape path).

A probe answers one poll with a ``ProbeResult`` of plain, immutable data; the
QueuePoller keeps the latest one and the QueueCollector turns it into metric
families at scrape time. One probe per broker: brokers/redis, brokers/amqp and brokers/sqs.
"""

from __future__ import annotations

import fnmatch
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

# Celery's own plumbing (event receivers, remote-control mailboxes and replies,
# native delayed delivery levels), server-named queues and the exporter's own.
_PLUMBING = re.compile(r"^(celeryev\.|amq\.|celery-vitals\.)|\.pidbox$|^(.+_)?celery_delayed_\d+$")


def is_plumbing(name: str) -> bool:
    """Queues no task is ever routed to by name: never worth a series of their own."""
    return bool(_PLUMBING.search(name))


def is_glob(pattern: str) -> bool:
    """Whether a queue pattern (``--dlq``, ``--queue``) is a glob rather than a name."""
    return any(c in pattern for c in "*?[")


def split_patterns(patterns: Iterable[str]) -> tuple[set[str], list[str]]:
    """Queue patterns as (the plain names, the globs), the globs in the order given."""
    given = list(patterns)
    return {p for p in given if not is_glob(p)}, [p for p in given if is_glob(p)]


def matches_any(name: str, globs: Iterable[str]) -> bool:
    """Whether a queue name matches any of the globs (case-sensitive, as the broker names)."""
    return any(fnmatch.fnmatchcase(name, glob) for glob in globs)


@dataclass(frozen=True)
class QueueStats:
    """One queue as the broker sees it. None: the broker does not tell (or not cheaply)."""

    name: str
    exists: bool
    ready: int | None = None  # messages waiting for a consumer (all priority levels)
    unacked: int | None = None  # delivered to a consumer, not acknowledged yet
    consumers: int | None = None
    oldest_unacked_age: float | None = None  # seconds since the oldest unacked delivery
    published_total: int | None = None  # broker's own publish counter (RabbitMQ management)
    delayed: int | None = None  # sent with a delay that has not passed yet (SQS)
    visibility_timeout: float | None = None  # the queue's own (SQS queue attribute)
    max_receive_count: int | None = None  # receives before SQS moves a message to the DLQ
    # publication time (Unix seconds) of the oldest waiting message, from the stamp of
    # celery_vitals.stamp at the queue's head (Redis; RabbitMQ's head_message_timestamp)
    oldest_published: float | None = None


@dataclass(frozen=True)
class ProbeResult:
    queues: tuple[QueueStats, ...] = ()
    # queues the broker says others dead-letter into (RabbitMQ queue arguments)
    dead_letter_targets: frozenset[str] = frozenset()
    # numeric broker facts by metric name, e.g. {"celery_broker_memory_used_bytes": 1e6}
    facts: Mapping[str, float] = field(default_factory=dict)
    # labels of celery_broker_info, e.g. {"transport": "redis", "version": "7.0.15"}
    info: Mapping[str, str] = field(default_factory=dict)
    # persistence per kind (Redis: "rdb", "aof") -> enabled
    persistence: Mapping[str, bool] = field(default_factory=dict)
    visibility_timeout: float | None = None  # Redis transport option, for the unacked alert


class Deadline:
    """One call's time budget: every wait gets what is left of it."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        remaining = self.at - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("broker probe ran out of time")
        return remaining


class QueueProbe(Protocol):
    """What the poller needs from a transport-specific probe.

    Both methods may raise any exception when the broker is unreachable; the
    poller counts it, reports the broker down and tries again next interval.
    They must not block longer than ``timeout`` seconds given at construction.
    """

    def discover(self) -> set[str]:
        """Queue names the broker knows of (Redis binding keys, RabbitMQ management)."""
        ...

    def poll(self, queues: Iterable[str]) -> ProbeResult:
        """Stats for these queues (absent ones with exists=False) and the broker's facts."""
        ...

    def close(self) -> None: ...
