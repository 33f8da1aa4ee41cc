"""Workers without task events: detected per worker, and repaired by the enable_events option.

The workers run tests/support/quiet_app.py: the demo app with
worker_send_task_events off and no -E, the misconfiguration that makes
exporters show nothing. The client still emits task-sent events.
"""

from __future__ import annotations

import time

import celery
import pytest

from tests.support.harness import Harness
from tests.support.metrics import Scrape

pytestmark = pytest.mark.integration

QUIET_APP = "tests.support.quiet_app"
QUEUE = "celery"


def test_missing_task_events_are_detected(harness: Harness) -> None:
    redis = harness.redis()
    exporter = harness.exporter(redis.url(), "--no-enable-events", "--queue-poll-interval", "1")
    worker = harness.worker(
        "quiet", redis.url(), exporter=exporter, app=QUIET_APP, task_events=False
    )
    host = worker.hostname
    # the poll after the worker appeared asked it for its stats: pool and prefetch
    exporter.wait_for(
        lambda scrape: (
            scrape.get(
                "celery_worker_info", hostname=host, version=celery.__version__, pool="prefork"
            )
            == 1
        ),
        what=f'celery_worker_info{{hostname="{host}", pool="prefork"}} 1',
    )
    info = exporter.scrape()
    assert info.get("celery_worker_pool_processes", hostname=host) == 2  # -c 2
    assert info.get("celery_worker_prefetch_limit", hostname=host) == 2  # multiplier 1
    assert info.get("celery_vitals_task_sent_events_missing") == 0
    client = harness.client(redis.url())
    for _ in range(3):
        client.send_task("demo.add", args=(1, 2))

    # Heartbeats say tasks were processed, yet no task event came from the worker.
    s = exporter.wait_for(
        lambda scrape: (
            scrape.get("celery_worker_task_events_missing", hostname=host) == 1
            and scrape.get("celery_worker_tasks_processed", hostname=host) == 3
        ),
        timeout=30,
        what=f'celery_worker_task_events_missing{{hostname="{host}"}} 1 with 3 tasks processed',
    )
    assert s.get("celery_worker_tasks_processed", hostname=host) == 3
    assert s.get("celery_worker_up", hostname=host) == 1
    assert s.get("celery_task_sent_total", name="demo.add", queue_name=QUEUE) == 3  # client
    for worker_side in (
        "celery_task_received_total",
        "celery_task_started_total",
        "celery_task_succeeded_total",
    ):
        assert s.series(worker_side) == {}, worker_side
    assert s.series("celery_vitals_enable_events_requests_total") == {}  # option off


def test_enable_events_turns_task_events_on(harness: Harness) -> None:
    redis = harness.redis()
    exporter = harness.exporter(redis.url(), "--enable-events-interval", "1")
    worker = harness.worker(
        "quiet", redis.url(), exporter=exporter, app=QUIET_APP, task_events=False
    )
    host = worker.hostname
    client = harness.client(redis.url())

    # Probes (demo.add) until one is seen started: from then on the worker sends task
    # events. Tasks counted below use another name, so late probes cannot blur them.
    last_probe = [0.0]

    def probe_started(scrape: Scrape) -> bool:
        if scrape.value("celery_task_started_total", name="demo.add", queue_name=QUEUE) >= 1:
            return True
        if time.monotonic() - last_probe[0] >= 0.5:
            client.send_task("demo.add", args=(0, 0))
            last_probe[0] = time.monotonic()
        return False

    s = exporter.wait_for(
        probe_started,
        timeout=30,
        what="a probe task started after enable_events reached the worker",
    )
    assert s.value("celery_vitals_enable_events_requests_total", result="ok") >= 1
    assert s.get("celery_worker_up", hostname=host) == 1

    for _ in range(4):
        client.send_task("demo.fail")
    for _ in range(2):
        client.send_task("demo.flaky", args=(1,))
    done = exporter.wait_for(
        lambda scrape: (
            scrape.value(
                "celery_task_failed_total",
                name="demo.fail",
                queue_name=QUEUE,
                exception="ValueError",
            )
            >= 4
            and scrape.value("celery_task_succeeded_total", name="demo.flaky", queue_name=QUEUE)
            >= 2
        ),
        timeout=30,
        what="4 demo.fail failures and 2 demo.flaky successes",
    )
    # Settle for one heartbeat, then the counts must be exact.
    heartbeat = done.value("celery_worker_last_heartbeat_timestamp_seconds", hostname=host)
    s = exporter.wait_for(
        lambda scrape: (
            scrape.value("celery_worker_last_heartbeat_timestamp_seconds", hostname=host)
            > heartbeat
        ),
        timeout=10,
        what="one more heartbeat",
    )
    fail = {"name": "demo.fail", "queue_name": QUEUE}
    flaky = {"name": "demo.flaky", "queue_name": QUEUE}
    assert s.get("celery_task_sent_total", **fail) == 4
    assert s.get("celery_task_received_total", **fail) == 4
    assert s.get("celery_task_started_total", **fail) == 4
    assert s.get("celery_task_failed_total", **fail, exception="ValueError") == 4
    assert s.get("celery_task_sent_total", **flaky) == 4  # 2 sent + 2 republished by retry
    assert s.get("celery_task_received_total", **flaky) == 4
    assert s.get("celery_task_started_total", **flaky) == 4
    assert s.get("celery_task_retried_total", **flaky) == 2
    assert s.get("celery_task_succeeded_total", **flaky) == 2
    assert s.get("celery_worker_task_events_missing", hostname=host) == 0
