"""The broker dies (SIGKILL) and comes back: the exporter reconnects and keeps counting.

Same exporter process throughout: /readyz goes 503 and back to 200, the
stream-up gauge follows, reconnects are counted, and the task counters
resume from where they were (they never go backwards while the process lives).
"""

from __future__ import annotations

import os
import signal

import pytest
from redis import Redis

from tests.support import events
from tests.support.harness import Harness
from tests.support.metrics import Scrape

pytestmark = pytest.mark.integration

ADD = {"name": "demo.add", "queue_name": "celery"}
COUNTERS = (
    "celery_task_sent_total",
    "celery_task_received_total",
    "celery_task_started_total",
    "celery_task_succeeded_total",
)


def counts(scrape: Scrape) -> dict[str, float]:
    return {metric: scrape.value(metric, **ADD) for metric in COUNTERS}


def test_exporter_survives_broker_kill_and_restart(harness: Harness) -> None:
    redis = harness.redis()
    exporter = harness.exporter(redis.url())
    pid = exporter.pid
    worker = harness.worker("before", redis.url(), exporter=exporter)
    client = harness.client(redis.url())
    for _ in range(3):
        client.send_task("demo.add", args=(1, 2))
    before = exporter.wait_for(
        lambda s: counts(s) == dict.fromkeys(COUNTERS, 3.0),
        timeout=20,
        what="3 demo.add sent/received/started/succeeded",
    )
    assert before.get("celery_vitals_event_stream_up") == 1
    assert before.get("celery_vitals_event_stream_reconnects_total") == 0

    redis.kill()
    exporter.wait_unready(timeout=20)
    down = exporter.wait_for(
        lambda s: s.get("celery_vitals_event_stream_up") == 0,
        timeout=10,
        what="celery_vitals_event_stream_up 0",
    )
    assert counts(down) == counts(before)  # nothing lost, nothing invented while down
    assert exporter.get("/healthz").status == 200  # alive, just not ready

    redis.restart()  # same port, empty (no persistence)
    exporter.wait_ready(timeout=30)
    up = exporter.wait_for(
        lambda s: s.get("celery_vitals_event_stream_up") == 1,
        timeout=10,
        what="celery_vitals_event_stream_up 1",
    )
    assert up.value("celery_vitals_event_stream_reconnects_total") >= 1
    assert counts(up) == counts(before)

    # The old worker may or may not have reconnected yet: a new one proves the
    # stream carries events again (its worker-online must arrive).
    worker.stop(timeout=10)
    fresh = harness.worker("after", redis.url(), exporter=exporter)
    for _ in range(4):
        client.send_task("demo.add", args=(2, 3))
    after = exporter.wait_for(
        lambda s: counts(s)["celery_task_succeeded_total"] >= 7,
        timeout=30,
        what="4 more demo.add succeeded",
    )
    heartbeat = after.value(
        "celery_worker_last_heartbeat_timestamp_seconds", hostname=fresh.hostname
    )
    final = exporter.wait_for(
        lambda s: (
            s.value("celery_worker_last_heartbeat_timestamp_seconds", hostname=fresh.hostname)
            > heartbeat
        ),
        timeout=10,
        what="one more heartbeat of the new worker",
    )
    assert counts(final) == dict.fromkeys(COUNTERS, 3.0 + 4.0)
    assert final.get("celery_worker_starts_total", hostname=fresh.hostname) == 1
    assert exporter.running and exporter.pid == pid  # reconnected, never restarted


def test_redis_drops_a_slow_subscriber_and_the_exporter_reconnects(harness: Harness) -> None:
    """Redis closes a pub/sub client whose output buffer overflows (32 MB by default):
    the exporter must notice, reconnect and count it, with no restart of its own."""
    redis = harness.redis()
    exporter = harness.exporter(redis.url())
    harness.sync_events(exporter, redis.url())
    with Redis(port=redis.port) as admin:  # a small limit, so a small burst overflows it
        admin.config_set("client-output-buffer-limit", "pubsub 64kb 32kb 1")
    pid = exporter.pid
    os.kill(pid, signal.SIGSTOP)  # the exporter stops reading; Redis buffers for it
    try:
        # more than the kernel's socket buffers can hide: ~24 MB
        events.publish(
            redis.url(), [events.heartbeat("flood@test", padding="x" * 8192) for _ in range(3000)]
        )
    finally:
        os.kill(pid, signal.SIGCONT)
    up = exporter.wait_for(
        lambda s: (
            s.value("celery_vitals_event_stream_reconnects_total") >= 1
            and s.get("celery_vitals_event_stream_up") == 1
        ),
        timeout=30,
        what="a reconnect after Redis dropped the subscriber",
    )
    assert up.get("celery_vitals_event_stream_reconnects_total") == 1
    assert exporter.pid == pid
    harness.sync_events(exporter, redis.url())  # and events flow again
