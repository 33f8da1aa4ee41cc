"""Per-task and per-worker metrics from a real worker running every kind of task outcome.

One scenario per module (redis-server, the exporter, one prefork worker with
-E): tasks that succeed, raise, retry then succeed, retry until exhausted,
exceed the hard time limit, and one that is not registered. The tests assert
exact values scraped from /metrics once the worker reported all of it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)

from celery_vitals import __version__
from stack.workers import CeleryWorker
from tests.support import tools
from tests.support.harness import Harness
from tests.support.metrics import Labels, Scrape
from tests.support.processes import ExporterProcess

pytestmark = pytest.mark.integration

QUEUE = "celery"
HOST = "w1@test"

# Expected values, reasoned from Celery's behaviour (demo/app.py):
# - demo.flaky(2) fails twice, retrying each time: one uuid delivered three times
#   (received and started 3x); each retry republishes it, which emits task-sent again.
# - demo.hopeless has max_retries=2: three runs, two retries, then its TimeoutError.
# - demo.slow(3) hits the 1 s hard time limit: the pool kills the process,
#   TimeLimitExceeded. Celery 5.7 sends task-failed twice for it; the exporter
#   must count it once and the duplicate as a skip.
# - demo.nope is not registered: the worker sends task-failed (NotRegistered) and
#   nothing before it, so the only other event for it is the client's task-sent.
SENT = {
    "demo.add": 3,
    "demo.fail": 2,
    "demo.flaky": 3,
    "demo.hopeless": 3,
    "demo.slow": 1,
    "demo.nope": 1,
}
RUN = {"demo.add": 3, "demo.fail": 2, "demo.flaky": 3, "demo.hopeless": 3, "demo.slow": 1}
SUCCEEDED = {"demo.add": 3, "demo.flaky": 1}
FAILED = {
    ("demo.fail", "ValueError"): 2,
    ("demo.hopeless", "TimeoutError"): 1,
    ("demo.slow", "TimeLimitExceeded"): 1,
    ("demo.nope", "NotRegistered"): 1,
}
RETRIED = {"demo.flaky": 2, "demo.hopeless": 2}
DUPLICATE_TERMINAL = 1  # the second task-failed of demo.slow
PROCESSED = sum(RUN.values())  # a worker counts the tasks it accepted: not the unregistered one

EVENTS = {
    "task-sent": sum(SENT.values()),
    "task-received": sum(RUN.values()),
    "task-started": sum(RUN.values()),
    "task-succeeded": sum(SUCCEEDED.values()),
    "task-failed": sum(FAILED.values()) + DUPLICATE_TERMINAL,
    "task-retried": sum(RETRIED.values()),
    "task-rejected": 0,
    "task-revoked": 0,
    "worker-online": 1,
    "worker-offline": 0,
    "other": 0,
}


def labels(**values: str) -> Labels:
    return frozenset(values.items())


def per_task(counts: Mapping[str, int]) -> dict[Labels, float]:
    return {labels(name=name, queue_name=QUEUE): float(n) for name, n in counts.items()}


def per_failure(counts: Mapping[tuple[str, str], int]) -> dict[Labels, float]:
    return {
        labels(name=name, queue_name=QUEUE, exception=exc): float(n)
        for (name, exc), n in counts.items()
    }


@dataclass(frozen=True)
class Scenario:
    exporter: ExporterProcess
    worker: CeleryWorker
    began: float  # wall clock before the first task was sent
    reached: float  # wall clock once every expected count was seen
    final: Scrape  # the first scrape after a worker heartbeat that followed `reached`


def _reached(scrape: Scrape) -> bool:
    """Every expected count reached (>=: the exact check comes after settling)."""
    wanted = [
        ("celery_task_sent_total", per_task(SENT)),
        ("celery_task_started_total", per_task(RUN)),
        ("celery_task_succeeded_total", per_task(SUCCEEDED)),
        ("celery_task_failed_total", per_failure(FAILED)),
        ("celery_task_retried_total", per_task(RETRIED)),
    ]
    for metric, series in wanted:
        seen = scrape.series(metric)
        if any(seen.get(key, 0) < value for key, value in series.items()):
            return False
    return (
        scrape.value("celery_vitals_events_skipped_total", reason="duplicate_terminal")
        >= DUPLICATE_TERMINAL
        and scrape.value("celery_worker_tasks_processed", hostname=HOST) >= PROCESSED
    )


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    with Harness(tmp_path_factory.mktemp("task-metrics")) as harness:
        redis = harness.redis()
        exporter = harness.exporter(redis.url())
        worker = harness.worker("w1", redis.url(), exporter=exporter)
        client = harness.client(redis.url())

        began = time.time()
        client.send_task("demo.slow", args=(3,))  # first: its time limit overlaps the rest
        for _ in range(3):
            client.send_task("demo.add", args=(1, 2))
        for _ in range(2):
            client.send_task("demo.fail")
        client.send_task("demo.flaky", args=(2,))
        client.send_task("demo.hopeless")
        client.send_task("demo.nope")

        scrape = exporter.wait_for(_reached, timeout=30, what="every expected task count")
        reached = time.time()
        # Settle: one more heartbeat from the worker, sent after everything above. Task
        # events a worker still buffered then have arrived, so extra counts would show.
        heartbeat = scrape.value("celery_worker_last_heartbeat_timestamp_seconds", hostname=HOST)
        final = exporter.wait_for(
            lambda s: (
                s.value("celery_worker_last_heartbeat_timestamp_seconds", hostname=HOST) > heartbeat
            ),
            timeout=10,
            what="a worker heartbeat after the last expected event",
        )
        yield Scenario(exporter, worker, began, reached, final)


def test_task_counters_are_exact(scenario: Scenario) -> None:
    s = scenario.final
    assert s.series("celery_task_sent_total") == per_task(SENT)
    assert s.series("celery_task_received_total") == per_task(RUN)
    assert s.series("celery_task_started_total") == per_task(RUN)
    assert s.series("celery_task_succeeded_total") == per_task(SUCCEEDED)
    assert s.series("celery_task_failed_total") == per_failure(FAILED)
    assert s.series("celery_task_retried_total") == per_task(RETRIED)
    for nothing_happened in (
        "celery_task_rejected_total",
        "celery_task_revoked_total",
        "celery_task_expired_total",
        "celery_task_redelivered_total",
    ):
        assert s.series(nothing_happened) == {}, nothing_happened


def test_duplicate_time_limit_failure_is_counted_once(scenario: Scenario) -> None:
    s = scenario.final
    assert (
        s.get(
            "celery_task_failed_total",
            name="demo.slow",
            queue_name=QUEUE,
            exception="TimeLimitExceeded",
        )
        == 1
    )
    assert s.get("celery_vitals_events_total", type="task-failed") == (
        sum(FAILED.values()) + DUPLICATE_TERMINAL
    )
    assert s.series("celery_vitals_events_skipped_total") == {
        labels(reason="duplicate_terminal"): DUPLICATE_TERMINAL
    }


def test_duration_histograms(scenario: Scenario) -> None:
    s = scenario.final
    # runtime comes from task-succeeded; both waits are observed at every start
    for metric, counts in (
        ("celery_task_runtime_seconds", SUCCEEDED),
        ("celery_task_prefetch_wait_seconds", RUN),
    ):
        assert s.series(f"{metric}_count") == per_task(counts), metric
    assert s.get("celery_task_runtime_seconds_count", name="demo.add", queue_name=QUEUE) == 3
    # every observation lies between the first send and the last count seen
    longest = scenario.reached - scenario.began
    for metric in (
        "celery_task_runtime_seconds",
        "celery_task_queue_wait_seconds",
        "celery_task_prefetch_wait_seconds",
    ):
        for series in s.series(f"{metric}_count"):
            count = s.samples[(f"{metric}_count", series)]
            assert s.samples[(f"{metric}_bucket", series | {("le", "+Inf")})] == count
            assert 0 <= s.samples[(f"{metric}_sum", series)] <= count * longest, (metric, series)

    # queue wait: observed at every start, retries included (a retry's task-sent can
    # overtake the task-started of the attempt that retried; see TaskTracker.on_sent)
    assert s.series("celery_task_queue_wait_seconds_count") == per_task(RUN)


def test_last_success_timestamp(scenario: Scenario) -> None:
    s = scenario.final
    stamps = s.series("celery_task_last_success_timestamp_seconds")
    assert set(stamps) == set(per_task(SUCCEEDED))
    for series, stamp in stamps.items():
        assert scenario.began <= stamp <= scenario.reached, (dict(series), stamp)


def test_exporter_health_after_the_scenario(scenario: Scenario) -> None:
    s = scenario.final
    for event_type, count in EVENTS.items():
        assert s.get("celery_vitals_events_total", type=event_type) == count, event_type
    assert s.value("celery_vitals_events_total", type="worker-heartbeat") >= 2
    assert s.get("celery_vitals_event_stream_up") == 1
    assert s.get("celery_vitals_event_stream_reconnects_total") == 0
    assert s.get("celery_vitals_tracked_tasks") == 0  # everything finished
    assert s.series("celery_vitals_tracker_evictions_total") == {
        labels(reason="capacity"): 0,
        labels(reason="age"): 0,
    }
    for absent in (
        "celery_vitals_unknown_uuid_events_total",
        "celery_vitals_label_values_folded_total",
    ):
        assert s.series(absent) == {}, absent
    assert s.series("celery_vitals_observations_skipped_total") == {}
    assert s.value("celery_vitals_enable_events_requests_total", result="ok") >= 1
    assert s.get("celery_vitals_enable_events_requests_total", result="error") == 0
    (build,) = s.series("celery_vitals_build_info")
    assert dict(build)["version"] == __version__
    # the latest event was sent after `began` and received before this moment (one host,
    # one clock): no lag can exceed that, however slow the host
    lag = s.get("celery_vitals_event_lag_seconds")
    assert lag is not None and -1 < lag <= time.time() - scenario.began


def test_promtool_accepts_metrics(scenario: Scenario) -> None:
    promtool = tools.require_tool("promtool", tools.PROMTOOL)
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=scenario.final.text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_openmetrics_on_request(scenario: Scenario) -> None:
    response = scenario.exporter.get(
        "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.status == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text;")
    assert response.text.endswith("# EOF\n")
    families = {family.name: family for family in openmetrics_families(response.text)}
    sent = families["celery_task_sent"]
    assert sent.type == "counter"
    assert {
        (sample.labels["name"], sample.value)
        for sample in sent.samples
        if sample.name == "celery_task_sent_total"
    } == set(SENT.items())


def test_worker_gauges_then_graceful_shutdown(scenario: Scenario) -> None:
    """Runs last in this module: it stops the scenario's worker."""
    s = scenario.final
    assert s.get("celery_worker_up", hostname=HOST) == 1
    assert s.get("celery_worker_starts_total", hostname=HOST) == 1
    assert s.get("celery_worker_tasks_processed", hostname=HOST) == PROCESSED
    assert s.get("celery_worker_task_events_missing", hostname=HOST) == 0
    assert s.get("celery_worker_tasks_active", hostname=HOST) == 0
    assert s.get("celery_worker_tasks_reserved", hostname=HOST) == 0
    assert s.get("celery_worker_load1", hostname=HOST) is not None
    heartbeat = s.value("celery_worker_last_heartbeat_timestamp_seconds", hostname=HOST)
    assert scenario.began <= heartbeat <= time.time()

    assert scenario.worker.stop_gracefully() == 0  # SIGTERM: warm shutdown, worker-offline
    after = scenario.exporter.wait_for(
        lambda scrape: scrape.get("celery_worker_up", hostname=HOST) == 0,
        timeout=10,
        what="celery_worker_up 0 after the worker's warm shutdown",
    )
    assert after.get("celery_vitals_events_total", type="worker-offline") == 1
    assert after.get("celery_worker_starts_total", hostname=HOST) == 1
    assert after.get("celery_worker_tasks_processed", hostname=HOST) == PROCESSED
    assert after.get("celery_worker_tasks_active", hostname=HOST) == 0
