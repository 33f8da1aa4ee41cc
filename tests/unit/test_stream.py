"""EventStream on kombu's in-memory transport: decoding, skips and backoff."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from celery import Celery
from celery.events.event import get_exchange
from kombu import Connection, Producer

from celery_vitals.stream import EventStream, backoff_delay
from tests.unit.conftest import Harness, event


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.01)


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    assert backoff_delay(0, 0.5, 30, lambda: 0.0) == 0.25
    assert backoff_delay(0, 0.5, 30, lambda: 1.0) == 0.5
    assert backoff_delay(3, 0.5, 30, lambda: 1.0) == 4.0
    assert backoff_delay(50, 0.5, 30, lambda: 1.0) == 30.0
    assert backoff_delay(50, 0.5, 30, lambda: 0.0) == 15.0


def test_stream_decodes_bodies_and_counts_undecodable_ones() -> None:
    h = Harness()
    app = Celery("t", broker="memory://", set_as_current=False)
    stream = EventStream(app, h.router.handle, h.router.tick, h.router.count_skip,
                         queue_ttl=5, queue_expires=60)
    thread = threading.Thread(target=stream.run, daemon=True)
    thread.start()
    try:
        wait_until(stream.connected.is_set)
        with Connection("memory://") as connection:
            producer = Producer(connection.default_channel, exchange=get_exchange(connection))
            producer.publish([event("task-received", uuid="u1", name="t"),
                              event("task-started", uuid="u1")], routing_key="task.multi")
            producer.publish(b"{not json", routing_key="task.started",
                             content_type="application/json", content_encoding="utf-8")
            producer.publish(b"\x80\x04pickled", routing_key="task.started",
                             content_type="application/x-python-serialize",
                             content_encoding="binary")
        wait_until(lambda: h.value("celery_vitals_events_skipped_total",
                                   reason="undecodable_body") == 2)
        assert h.task("celery_task_started_total", "t") == 1
    finally:
        stream.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert not stream.connected.is_set()
