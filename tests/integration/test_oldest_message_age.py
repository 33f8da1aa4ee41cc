"""The age of the oldest waiting message from the broker, in the agent setup and beside events.

Publishers stamp their tasks (celery_vitals.stamp.HEADER, and on RabbitMQ the AMQP
``timestamp`` property, as ``celery_vitals.agent.install(app)`` does in a publisher),
with times in the past so that the age to expect is known; no worker consumes. The
exporter reads the stamp at each queue's head (Redis: LINDEX of every priority list;
RabbitMQ: the management API's ``head_message_timestamp``), consumes nothing, and
exports one series per queue.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from celery import Celery
from kombu import Connection
from redis import Redis

from celery_vitals.stamp import HEADER
from stack.rabbitmq import RabbitMQServer
from tests.support.harness import Harness
from tests.support.metrics import Scrape
from tests.support.processes import ExporterProcess

pytestmark = pytest.mark.integration

POLL = ("--queue-poll-interval", "0.5", "--queue-discovery-interval", "1")
SEP = "\x06\x16"  # kombu's Redis priority separator (default transport options)
TOLERANCE = 2.0  # seconds the exported age may differ from the truth


def publisher(harness: Harness, broker_url: str, *, sent_events: bool = False) -> Celery:
    """A Celery client (closed by the harness), with or without task-sent events."""
    app = harness.client(broker_url)
    app.conf.task_send_sent_event = sent_events
    return app


def stamped(published: float, *, amqp: bool = False) -> dict[str, Any]:
    """send_task options that stamp a task as published at ``published`` (Unix seconds)."""
    options: dict[str, Any] = {"headers": {HEADER: published}}
    if amqp:  # whole seconds: py-amqp writes the property as an unsigned 64-bit integer
        options["timestamp"] = int(published)
    return options


def polls(s: Scrape) -> float:
    return s.value("celery_broker_probe_duration_seconds_count")


def age_within(exporter: ExporterProcess, queue: str, published: float) -> Scrape:
    """Scrapes until the queue's age is within TOLERANCE of now - published; returns it."""

    def close(s: Scrape) -> bool:
        age = s.get("celery_queue_oldest_message_age_seconds", queue_name=queue)
        return age is not None and abs(age - (time.time() - published)) <= TOLERANCE

    return exporter.wait_for(close, timeout=30, what=f"{queue}'s age from {published:.3f}")


def ages(s: Scrape) -> dict[str, float]:
    return {
        dict(labels)["queue_name"]: value
        for labels, value in s.series("celery_queue_oldest_message_age_seconds").items()
    }


def test_redis_oldest_stamp_of_every_priority_list_without_events(harness: Harness) -> None:
    redis = harness.redis()
    url = redis.url()
    app = publisher(harness, url)
    now = time.time()
    app.send_task("t.unstamped", queue="idle", priority=3)  # older, but tells nothing
    app.send_task("t.a", queue="idle", **stamped(now - 120.5))
    app.send_task("t.b", queue="idle", priority=9, **stamped(now - 300.25))
    app.send_task("t.c", queue="idle", **stamped(now - 60))
    app.send_task("t.d", queue="idle", priority=9, **stamped(now - 30))
    for _ in range(2):
        app.send_task("t.unstamped", queue="plain")
    with Redis(port=redis.port) as admin:
        keys = [b"idle", f"idle{SEP}3".encode(), f"idle{SEP}9".encode(), b"plain"]
        before = {key: admin.lrange(key, 0, -1) for key in keys}
        assert [len(before[key]) for key in keys] == [2, 1, 2, 2]

        exporter = harness.exporter(
            url, "--no-event-stream", *POLL, "--queue", "idle", "--queue", "plain"
        )
        s = age_within(exporter, "idle", now - 300.25)
        # a few more polls, then nothing was consumed: every list as it was
        exporter.wait_for(lambda later: polls(later) >= polls(s) + 3, timeout=20, what="3 polls")
        s = age_within(exporter, "idle", now - 300.25)
        assert {key: admin.lrange(key, 0, -1) for key in keys} == before
    assert s.get("celery_queue_length", queue_name="idle") == 5
    assert s.get("celery_queue_length", queue_name="plain") == 2
    assert set(ages(s)) == {"idle"}  # plain's messages have no stamp: no age, not 0


def test_redis_the_broker_stamp_owns_the_series_where_events_also_tell(harness: Harness) -> None:
    redis = harness.redis()
    url = redis.url()
    exporter = harness.exporter(url, *POLL, "--queue", "idle", "--queue", "plain")
    harness.sync_events(exporter, url)
    app = publisher(harness, url, sent_events=True)
    now = time.time()
    # the task-sent events say "now"; the stamps say when the tasks were really
    # published (e.g. before this exporter started)
    app.send_task("t.a", queue="idle", **stamped(now - 500))
    app.send_task("t.b", queue="idle", **stamped(now - 400))
    app.send_task("t.unstamped", queue="plain")  # only the events tell its age
    s = age_within(exporter, "idle", now - 500)
    s = exporter.wait_for(
        lambda s: s.get("celery_queue_oldest_message_age_seconds", queue_name="plain") is not None,
        timeout=20,
        what="plain's age from its task-sent event",
    )
    assert set(ages(s)) == {"idle", "plain"}  # one series each
    assert abs(ages(s)["idle"] - (time.time() - (now - 500))) <= TOLERANCE
    assert ages(s)["plain"] <= time.time() - now + TOLERANCE
    assert s.get("celery_task_sent_total", name="t.a", queue_name="idle") == 1
    assert s.get("celery_queue_length", queue_name="idle") == 2


def ready(url: str, queue: str) -> int:
    """Messages in a RabbitMQ queue, by a passive declare (which consumes nothing)."""
    with Connection(url) as connection:
        _, count, _ = connection.default_channel.queue_declare(queue, passive=True)
        return int(count)


def test_rabbitmq_head_message_timestamp_without_events(
    rabbit: RabbitMQServer, harness: Harness
) -> None:
    url = rabbit.url
    queue, plain = f"idle-{uuid.uuid4().hex[:6]}", f"plain-{uuid.uuid4().hex[:6]}"
    app = publisher(harness, url)
    now = time.time()
    app.send_task("t.a", queue=queue, **stamped(now - 300.75, amqp=True))
    app.send_task("t.b", queue=queue, **stamped(now - 200, amqp=True))
    app.send_task("t.c", queue=queue, **stamped(now - 100, amqp=True))
    app.send_task("t.unstamped", queue=plain)
    exporter = harness.exporter(
        url,
        "--no-event-stream",
        *POLL,
        "--rabbitmq-management-url",
        rabbit.management_url,
        "--queue",
        queue,
        "--queue",
        plain,
    )
    # the property holds whole seconds: published at int(now - 300.75)
    s = age_within(exporter, queue, int(now - 300.75))
    exporter.wait_for(lambda later: polls(later) >= polls(s) + 3, timeout=20, what="3 polls")
    s = age_within(exporter, queue, int(now - 300.75))
    assert s.get("celery_queue_length", queue_name=queue) == 3
    assert ready(url, queue) == 3 and ready(url, plain) == 1  # nothing consumed
    assert queue in ages(s) and plain not in ages(s)
