"""A pipeline fed directly with message bodies, for the unit tests: its own registry and a
fake clock (PipelineHarness), event builders (event, lifecycle), a scripted queue probe and a
harness that has seen every kind of event and poll (busy_harness)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from celery_vitals.brokers.probe import ProbeResult, QueueStats
from celery_vitals.config import build
from celery_vitals.pipeline import Pipeline
from celery_vitals.poller import QueuePoller
from celery_vitals.workers import pool_from_stats

T0 = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class PipelineHarness:
    """A pipeline fed directly with message bodies, read back through its registry."""

    def __init__(self, **options: Any) -> None:
        self.clock = Clock()
        self.registry = CollectorRegistry()
        self.config = build({"broker_url": "redis://localhost:6379/0", **options})
        self.pipeline = Pipeline(self.config, self.registry, clock=self.clock)
        self.router = self.pipeline.router
        self.tasks = self.pipeline.tasks

    def feed(self, *bodies: object) -> None:
        for body in bodies:
            self.router.handle(body)

    def value(self, metric: str, /, **labels: str) -> float | None:
        return self.registry.get_sample_value(metric, labels)

    def task(self, metric: str, task: str, queue: str = "celery", **labels: str) -> float | None:
        return self.registry.get_sample_value(metric, {"name": task, "queue_name": queue, **labels})


def event(type_: str, ts: float = T0, hostname: str = "w1@host", **fields: Any) -> dict[str, Any]:
    return {
        "type": type_,
        "timestamp": ts,
        "hostname": hostname,
        "utcoffset": 0,
        "pid": 1,
        "clock": 1,
        **fields,
    }


def lifecycle(
    uuid: str,
    name: str,
    *,
    queue: str | None = "celery",
    t: float = T0,
    runtime: float = 0.5,
    hostname: str = "w1@host",
) -> list[dict[str, Any]]:
    """sent, received, started, succeeded for one task: sent at t, received t+1,
    started t+3, succeeded t+3+runtime."""
    sent = event("task-sent", t, "client", uuid=uuid, name=name, retries=0, eta=None, queue=queue)
    return [
        sent,
        event("task-received", t + 1, hostname, uuid=uuid, name=name, retries=0),
        event("task-started", t + 3, hostname, uuid=uuid),
        event("task-succeeded", t + 3 + runtime, hostname, uuid=uuid, runtime=runtime),
    ]


class ScriptedProbe:
    """Answers each poll with the next scripted result; an exception instance is raised."""

    def __init__(self, *answers: ProbeResult | Exception, discovered: Iterable[str] = ()) -> None:
        self.answers = list(answers)
        self.discovered = set(discovered)
        self.polled: list[list[str]] = []
        self.closed = False

    def discover(self) -> set[str]:
        return set(self.discovered)

    def poll(self, queues: Iterable[str]) -> ProbeResult:
        self.polled.append(list(queues))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self) -> None:
        self.closed = True


def with_poller(h: PipelineHarness, probe: ScriptedProbe, **options: object) -> QueuePoller:
    poller = QueuePoller(
        probe,
        queues=("billing", "missing"),
        dlqs=("*.dead",),
        interval=15,
        discovery_interval=300,
        queue_names=h.pipeline.guards["queue_name"],
        worker_queues=lambda: {"from-worker"},
        **options,
    )  # type: ignore[arg-type]
    h.pipeline.queue_collector.poller = poller
    return poller


def redis_result(dead: int, billing: int = 7) -> ProbeResult:
    return ProbeResult(
        queues=(
            QueueStats("billing", True, ready=billing, unacked=2, oldest_unacked_age=42.0),
            QueueStats("billing.dead", True, ready=dead),
            QueueStats("missing", False),
        ),
        facts={"celery_broker_memory_used_bytes": 1e6, "celery_broker_memory_limit_bytes": 0},
        info={"transport": "redis", "version": "7.0.15", "eviction_policy": "noeviction"},
        persistence={"rdb": False, "aof": True},
        visibility_timeout=3600.0,
    )


def busy_harness() -> PipelineHarness:
    h = PipelineHarness()
    h.feed(
        event(
            "worker-online",
            freq=2.0,
            active=0,
            processed=0,
            loadavg=[0.1, 0.1, 0.1],
            sw_ver="5.7.0",
        )
    )
    # the poller's stats broadcast (celery_worker_info, pool processes, prefetch limit)
    h.pipeline.workers.on_stats(
        "w1@host",
        *pool_from_stats(
            {
                "pool": {
                    "implementation": "celery.concurrency.prefork:TaskPool",
                    "max-concurrency": 2,
                },
                "prefetch_count": 8,
            }
        ),
    )
    h.feed(*lifecycle("u1", "t"))
    h.feed(
        event("task-received", uuid="u2", name="t"),
        event("task-failed", uuid="u2", exception="ValueError()"),
        event("task-received", uuid="u3", name="t"),
        event("task-rejected", uuid="u3", requeue=False),
        event("task-received", uuid="u4", name="t"),
        event("task-revoked", uuid="u4", expired=True),
        event("task-received", uuid="u5", name="t", retries=0),
        event("task-retried", uuid="u5"),
        event("task-received", uuid="u5", name="t", retries=0),
    )
    h.feed(
        "garbage",
        event("task-started", uuid="never-seen"),
        event("task-received", uuid="u6", name="x" * 1000),
        event("task-sent", 2e9, uuid="u7", name="t", queue="celery"),
        event("task-started", uuid="u7"),
    )
    h.pipeline.enable_events = lambda: {"ok": 1, "error": 0}
    h.feed(
        event("task-sent", uuid="u8", name="t", queue="celery"),  # still in its queue
        event("task-received", uuid="u9", name="t", retries=1),
        event("task-failed", uuid="u9", exception="TimeoutError()"),
        event("worker-heartbeat", ts=h.clock.now + 60, freq=2.0, active=0, processed=1),
    )
    last = redis_result(2)
    sqs = QueueStats(
        "sqs-work",
        True,
        ready=1,
        unacked=2,
        delayed=3,
        visibility_timeout=30.0,
        max_receive_count=5,
    )  # what only the SQS probe tells
    last = replace(last, queues=(*last.queues, QueueStats("work", True, ready=0, consumers=2), sqs))
    poller = with_poller(
        h,
        ScriptedProbe(redis_result(1), ConnectionError(), last),
        dlq_sampler=lambda queue: {"billing.charge": 3},
    )
    for _ in range(3):
        poller.poll_once()
    # one scrape that had to leave a broken collector out (celery_vitals_scrape_errors_total)
    h.pipeline.exposition.collectors.append(BrokenCollector())
    h.pipeline.exposition.render()
    h.pipeline.exposition.collectors.pop()
    return h


class BrokenCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        raise RuntimeError("a collector bug")
