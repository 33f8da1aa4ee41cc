"""Unit-test helpers: a pipeline with its own registry and a fake clock, and event builders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from celery_vitals.config import build
from celery_vitals.service import Pipeline

T0 = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Harness:
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


@pytest.fixture
def harness() -> Callable[..., Harness]:
    return Harness
