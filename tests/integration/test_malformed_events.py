"""Hostile and broken event messages, published through the real broker.

Each one must be a counted skip (or a folded label, or a skipped observation),
never a crash and never a disconnect; a normal task afterwards still counts.
"""

from __future__ import annotations

import pickle
import time
import uuid

import pytest

from tests.support import events
from tests.support.events import Raw
from tests.support.harness import Harness
from tests.support.metrics import Labels

pytestmark = pytest.mark.integration

EVIL = "evil@test"  # hostname on the crafted task events (no such worker)
QUEUE = "celery"


def labels(**values: str) -> Labels:
    return frozenset(values.items())


def task_event(event_type: str, task_id: str | None, **fields: object) -> dict[str, object]:
    return {
        "type": event_type,
        "uuid": task_id,
        "hostname": EVIL,
        "timestamp": time.time(),
        **fields,
    }


def test_malformed_events_are_counted_skips(harness: Harness) -> None:
    redis = harness.redis()
    exporter = harness.exporter(redis.url())
    harness.sync_events(exporter, redis.url())
    pid = exporter.pid

    runtime_id, long_name_id, odd_name_id = (str(uuid.uuid4()) for _ in range(3))
    events.publish(
        redis.url(),
        [
            # undecodable_body: claims JSON but is not, and pickle (never accepted)
            Raw(b"\xff\xfe{not json at all", content_type="application/json"),
            Raw(
                pickle.dumps({"type": "worker-heartbeat"}),
                content_type="application/x-python-serialize",
                content_encoding="binary",
            ),
            # malformed_body: valid JSON, but neither an event nor a list of events
            "just a string",
            42,
            # malformed_event: a batch whose good event still counts
            [events.heartbeat("batch@test"), "not an event", 7],
            # missing_type
            {"uuid": str(uuid.uuid4()), "hostname": EVIL},
            {"type": 17, "hostname": EVIL},
            # unknown type: counted as "other"
            {"type": "task-bogus", "hostname": EVIL},
            # missing_uuid
            task_event("task-started", None),
            # a non-numeric runtime: the success counts, the observation is skipped
            task_event("task-received", runtime_id, name="evil.runtime"),
            task_event("task-succeeded", runtime_id, runtime="fast"),
            # a 10 kB task name, then its failure with a non-string exception
            task_event("task-received", long_name_id, name="x" * 10_240),
            task_event("task-failed", long_name_id, exception=42),
            # a name that is not a string at all
            task_event("task-received", odd_name_id, name={"not": "a name"}),
            # marks the end: events on one channel arrive in order
            events.heartbeat("end@test"),
        ],
    )
    s = exporter.wait_for(
        lambda scrape: scrape.get("celery_worker_up", hostname="end@test") == 1,
        timeout=10,
        what="the end marker heartbeat",
    )

    assert exporter.running and exporter.pid == pid
    assert exporter.get("/readyz").status == 200
    assert s.get("celery_vitals_event_stream_up") == 1
    assert s.get("celery_vitals_event_stream_reconnects_total") == 0
    assert s.series("celery_vitals_events_skipped_total") == {
        labels(reason="undecodable_body"): 2,
        labels(reason="malformed_body"): 2,
        labels(reason="malformed_event"): 2,
        labels(reason="missing_type"): 2,
        labels(reason="missing_uuid"): 1,
    }
    assert s.get("celery_vitals_events_total", type="other") == 1
    assert s.get("celery_vitals_events_total", type="task-received") == 3
    assert s.get("celery_vitals_events_total", type="task-started") == 1
    assert s.get("celery_vitals_events_total", type="task-succeeded") == 1
    assert s.get("celery_vitals_events_total", type="task-failed") == 1
    assert s.get("celery_worker_up", hostname="batch@test") == 1

    assert s.series("celery_vitals_observations_skipped_total") == {
        labels(metric="celery_task_runtime_seconds", reason="bad_runtime"): 1
    }
    assert s.get("celery_task_succeeded_total", name="evil.runtime", queue_name=QUEUE) == 1
    assert s.series("celery_task_runtime_seconds_count") == {}

    assert s.series("celery_vitals_label_values_folded_total") == {
        labels(label="name", reason="too_long"): 1,
        labels(label="name", reason="not_a_string"): 1,
    }
    assert s.series("celery_task_received_total") == {
        labels(name="evil.runtime", queue_name=QUEUE): 1,
        labels(name="other", queue_name=QUEUE): 2,
    }
    assert s.series("celery_task_failed_total") == {
        labels(name="other", queue_name=QUEUE, exception="unknown"): 1
    }
    assert "x" * 201 not in s.text
    assert s.get("celery_vitals_tracked_tasks") == 1  # odd_name_id never finished

    # A real task afterwards counts as usual.
    harness.worker("w1", redis.url(), exporter=exporter)
    harness.client(redis.url()).send_task("demo.add", args=(1, 2))
    after = exporter.wait_for(
        lambda scrape: (
            scrape.get("celery_task_succeeded_total", name="demo.add", queue_name=QUEUE) == 1
        ),
        timeout=20,
        what="demo.add succeeded once",
    )
    assert after.get("celery_task_sent_total", name="demo.add", queue_name=QUEUE) == 1
    assert after.get("celery_task_received_total", name="demo.add", queue_name=QUEUE) == 1
    assert after.get("celery_task_runtime_seconds_count", name="demo.add", queue_name=QUEUE) == 1
    assert after.series("celery_vitals_events_skipped_total") == s.series(
        "celery_vitals_events_skipped_total"
    )
    assert exporter.pid == pid and exporter.get("/readyz").status == 200
