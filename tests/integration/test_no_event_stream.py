"""`serve --no-event-stream`: the exporter beside agents polls the broker and nothing else.

No event queue, no enable_events broadcast, no task or worker series of its own (the
agents own them), and /readyz follows the broker polls.
"""

from __future__ import annotations

import pytest
from redis import Redis

from tests.support.harness import Harness
from tests.support.messages import push

pytestmark = pytest.mark.integration


def test_the_exporter_polls_queues_and_consumes_no_events(harness: Harness) -> None:
    redis = harness.redis()
    url = redis.url()
    push(url, "jobs", 3)
    exporter = harness.exporter(
        url,
        "--no-event-stream",
        "--queue",
        "jobs",
        "--queue-poll-interval",
        "0.5",
        "--enable-events-interval",
        "1",
    )
    s = exporter.wait_for(
        lambda s: s.get("celery_queue_length", queue_name="jobs") == 3,
        timeout=20,
        what="jobs=3 polled",
    )
    assert exporter.get("/readyz").status == 200
    assert s.get("celery_broker_up") == 1
    assert s.series("celery_vitals_event_stream_up") == {}  # no stream: neither up nor down
    assert s.series("celery_vitals_enable_events_requests_total") == {}
    assert s.series("celery_vitals_events_total") == {
        frozenset({("type", kind)}): 0
        for kind in (
            "task-sent",
            "task-received",
            "task-started",
            "task-succeeded",
            "task-failed",
            "task-retried",
            "task-rejected",
            "task-revoked",
            "worker-online",
            "worker-heartbeat",
            "worker-offline",
            "other",
        )
    }
    with Redis(port=redis.port) as admin:
        assert admin.pubsub_numpat() == 0  # nobody subscribed to the event exchange
        assert admin.pubsub_channels() == []

    redis.kill()
    exporter.wait_unready(timeout=20)  # /readyz follows the polls: 503 once one fails
    assert "200 once the last broker poll succeeded" in exporter.get("/readyz").text
    redis.restart()
    exporter.wait_ready(timeout=20)
