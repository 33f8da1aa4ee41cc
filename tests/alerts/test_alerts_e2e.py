"""End to end: the alert expressions on real exported data.

A real Prometheus (Debian's binary, stack/prometheus.py) scrapes a
real exporter every second; the exporter watches a real redis-server and real
Celery workers (tests/support/alerts_app.py: the demo app plus a dead-lettering
task and one that kills its pool process). The tests cause incidents and ask
Prometheus, through its HTTP API, what each alert's expression returns: the
exact label sets of the series that would fire.

Prometheus loads the committed rule file with its windows shortened (WINDOWS:
every ``[range]`` and ``offset`` in every recording and alerting rule), so
that an incident shows within seconds. Thresholds, ``for`` durations and the
expressions themselves are the committed ones; ``for`` does not matter here,
as the expressions are evaluated directly.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack.net import LOOPBACK
from stack.prometheus import PrometheusServer
from tests.support.expressions import BROKER, SETTLE, Expressions, labels, shortened
from tests.support.harness import Harness
from tests.support.metrics import Scrape
from tests.support.processes import ExporterProcess
from tests.support.rules import RULES_PATH, rules

pytestmark = pytest.mark.integration

JOB = "celery-vitals"
APP = "tests.support.alerts_app"


#: What each task's completion looks like: its counter and the labels besides queue_name.
FINISHED = {
    "fail": ("celery_task_failed_total", {"name": "demo.fail", "exception": "ValueError"}),
    "flaky": ("celery_task_succeeded_total", {"name": "demo.flaky"}),
    "hopeless": ("celery_task_failed_after_retries_total", {"name": "alerts.hopeless"}),
    "slow": ("celery_task_failed_total", {"name": "demo.slow", "exception": "TimeLimitExceeded"}),
    "nonexistent": (
        "celery_task_failed_total",
        {"name": "demo.nonexistent", "exception": "NotRegistered"},
    ),
    "crash": ("celery_task_failed_total", {"name": "alerts.crash", "exception": "WorkerLostError"}),
}


def _wait_counts(exporter: ExporterProcess, what: str, **counts: int) -> None:
    """Scrapes until the FINISHED counters of the named tasks have exactly these values."""

    def done(scrape: Scrape) -> bool:
        return all(
            scrape.value(FINISHED[task][0], queue_name="celery", **FINISHED[task][1]) == count
            for task, count in counts.items()
        )

    exporter.wait_for(done, timeout=30, what=what)


@pytest.fixture
def rules_path(tmp_path: Path) -> Path:
    path = tmp_path / "celery-vitals.rules.yml"
    path.write_text(shortened(RULES_PATH.read_text(encoding="utf-8")), encoding="utf-8")
    return path


@contextlib.contextmanager
def _started(
    harness: Harness, tmp_path: Path, rules_path: Path, *exporter_args: str
) -> Iterator[tuple[ExporterProcess, PrometheusServer]]:
    """redis-server, the exporter, and Prometheus scraping it with every rule evaluated."""
    exporter = harness.exporter(harness.redis().url(), "--broker-name", BROKER, *exporter_args)
    with PrometheusServer(
        tmp_path / "prometheus", {JOB: [f"{LOOPBACK}:{exporter.port}"]}, [rules_path]
    ) as prometheus:
        prometheus.wait_scraped(JOB)
        health = prometheus.wait_rules_evaluated()
        # every rule of the file loaded, and none failed to evaluate
        assert set(health) == {f"{rule.group}/{rule.name}" for rule in rules(rules_path)}
        assert set(health.values()) == {"ok"}, health
        yield exporter, prometheus


def test_task_incidents(harness: Harness, tmp_path: Path, rules_path: Path) -> None:
    """Failure burst, retry storm, exhausted retries, time limit, lost worker, NotRegistered."""
    with _started(harness, tmp_path, rules_path) as (exporter, prometheus):
        worker = harness.worker("w1", exporter.broker_url, exporter=exporter, app=APP)
        client = harness.client(exporter.broker_url)
        alerts_ = Expressions(prometheus, rules_path)

        # Warm-up: one of each, so that the counters exist before the burst and the
        # burst is an increase (a counter's first sample is no increase to rate()).
        client.send_task("demo.fail")
        client.send_task("demo.flaky", args=(3,))
        client.send_task("alerts.hopeless")
        _wait_counts(exporter, "the warm-up tasks finished", fail=1, flaky=1, hopeless=1)
        for stored in (
            'celery_task_failed_total{name="demo.fail"} == 1',
            'celery_task_succeeded_total{name="demo.flaky"} == 1',
            'celery_task_failed_after_retries_total{name="alerts.hopeless"} == 1',
        ):
            prometheus.wait_nonempty(stored, timeout=SETTLE, what=f"Prometheus: {stored}")
        time.sleep(1.5)  # one more scrape at these values

        # The incidents, spread over a few scrapes; the storm goes on until the end.
        for _ in range(2):
            client.send_task("alerts.storm")
        for _ in range(4):
            for _ in range(5):
                client.send_task("demo.fail")
            for _ in range(3):
                client.send_task("demo.flaky", args=(3,))
            time.sleep(0.7)
        for _ in range(2):
            client.send_task("alerts.hopeless")
        client.send_task("demo.slow", args=(3,))
        client.send_task("demo.nonexistent")
        client.send_task("alerts.crash")
        _wait_counts(
            exporter,
            "every incident task finished",
            fail=21,
            flaky=13,
            hopeless=3,
            slow=1,
            nonexistent=1,
            crash=1,
        )

        # Rate-based first, while the burst is inside the 45 s window. Only the plain
        # failure burst is a failure-rate incident: the time limit, the lost worker,
        # NotRegistered and the exhausted retries have alerts of their own.
        fail = labels(name="demo.fail", queue_name="celery")
        alerts_.fires("CeleryTaskFailureRateHigh", fail, severity="warning")
        alerts_.fires("CeleryTaskFailureRateHigh", fail, severity="critical")
        # only the unbounded one: flaky (three retries, then success) and hopeless (two,
        # then a dead letter) retry a bounded few times and finish
        alerts_.fires("CeleryTaskRetryStorm", labels(name="alerts.storm", queue_name="celery"))
        alerts_.fires(
            "CeleryTaskRetriesExhausted", labels(name="alerts.hopeless", queue_name="celery")
        )
        alerts_.fires(
            "CeleryTaskTimeLimitExceeded",
            labels(name="demo.slow", queue_name="celery", exception="TimeLimitExceeded"),
        )
        alerts_.fires(
            "CeleryTaskNotRegistered", labels(name="demo.nonexistent", queue_name="celery")
        )
        alerts_.fires("CeleryTaskWorkerLost", labels(name="alerts.crash", queue_name="celery"))
        alerts_.quiet(
            "CeleryTaskRedelivered",
            "CeleryWorkerDown",
            "CeleryWorkerFlapping",
            "CeleryWorkerTaskEventsMissing",
            "CeleryExporterEventStreamDown",
            "CeleryExporterDown",
            "CeleryExporterEventsLost",
            "CeleryExporterTrackerEvicting",
            "CeleryExporterLabelValuesFolded",
            "CeleryBrokerDown",
        )
        worker.assert_running()


def test_queue_incidents(harness: Harness, tmp_path: Path, rules_path: Path) -> None:
    """Dead letters, a misspelled queue, then stopped workers with a growing queue."""
    with _started(
        harness,
        tmp_path,
        rules_path,
        "--queue-poll-interval",
        "0.5",
        "--queue",
        "celery",
        "--queue",
        "typo",
        "--queue",
        "dead",
        "--dlq",
        "dead",
    ) as (exporter, prometheus):
        worker = harness.worker("w1", exporter.broker_url, exporter=exporter, app=APP)
        client = harness.client(exporter.broker_url)
        alerts_ = Expressions(prometheus, rules_path)

        def polled(scrape: Scrape) -> bool:
            return (
                scrape.get("celery_queue_length", queue_name="celery") == 0
                and scrape.get("celery_dlq_length", queue_name="dead") == 0
            )

        exporter.wait_for(polled, timeout=15, what="queue celery and DLQ dead polled")

        # Incident 1, workers up: dead letters, and tasks routed to a queue nobody consumes.
        for _ in range(3):
            client.send_task("alerts.hopeless")
        # Its own task name, as a task_routes typo would send it: a task-received that
        # overtakes its task-sent is attributed by name, and one name in two queues
        # would make that guess ambiguous.
        for _ in range(5):
            client.send_task("alerts.misrouted", args=(1, 2), queue="typo")
        for _ in range(3):
            client.send_task("demo.add", args=(1, 2))
        exporter.wait_for(
            lambda s: (
                s.get("celery_dlq_length", queue_name="dead") == 3
                and s.get("celery_dlq_messages", queue_name="dead", name="alerts.hopeless") == 3
                and s.get("celery_queue_length", queue_name="typo") == 5
                and s.value("celery_task_succeeded_total", name="demo.add", queue_name="celery")
                == 3
            ),
            timeout=30,
            what="3 dead letters, 5 tasks in typo, 3 done from celery",
        )
        instance = f"{LOOPBACK}:{exporter.port}"
        # the dead letters are those of a task whose retries ran out: that alert's incident
        alerts_.fires(
            "CeleryTaskRetriesExhausted", labels(name="alerts.hopeless", queue_name="celery")
        )
        alerts_.quiet("CeleryDeadLetterQueueGrowing")
        # another task's dead letters: news, the DLQ pages
        for _ in range(2):
            client.send_task("alerts.refuse")
        exporter.wait_for(
            lambda s: s.get("celery_dlq_length", queue_name="dead") == 5,
            timeout=30,
            what="2 more dead letters, of alerts.refuse",
        )
        alerts_.fires("CeleryDeadLetterQueueGrowing", labels(queue_name="dead"))
        alerts_.fires("CeleryQueueNoConsumers", labels(queue_name="typo"))
        # the fixture's redis-server runs with --save "" --appendonly no
        alerts_.fires("CeleryRedisBrokerNotPersistent", labels(job=JOB, instance=instance))
        alerts_.quiet(
            "CeleryQueueNotDraining",
            "CeleryQueueClimbing",
            "CeleryQueueSlowDrain",
            "CeleryWorkerDown",
            "CeleryBrokerDown",
            "CeleryQueueUnackedNearVisibilityTimeout",
        )

        # Incident 2: the worker stops (warm shutdown) and tasks keep coming.
        worker.stop_gracefully()
        for _ in range(10):
            client.send_task("demo.add", args=(1, 2))
        alerts_.fires("CeleryWorkerDown", labels(hostname=worker.hostname), severity="warning")
        prometheus.wait_for(
            'celery_queue_length{queue_name="celery"} == 10',
            {labels(job=JOB, instance=instance, queue_name="celery")},
            timeout=SETTLE,
            what="10 tasks waiting in queue celery",
        )
        # Nothing received for the (shortened: 45 s) no-drain window: queue celery does
        # not drain; typo, with no worker up at all, is now the same case, not "no consumer".
        # But the job has no worker up while tasks wait: CeleryWorkerDown pages that, and
        # the queues' alerts yield to it (one incident, one page).
        prometheus.wait_for(
            alerts_.yielding("CeleryQueueNotDraining", to="CeleryWorkerDown", severity="critical"),
            {labels(queue_name="celery"), labels(queue_name="typo")},
            timeout=SETTLE + 45,
            what="queues celery and typo not draining",
        )
        alerts_.fires("CeleryWorkerDown", labels(hostname=worker.hostname), severity="critical")
        alerts_.quiet(
            "CeleryQueueNotDraining",
            "CeleryQueueNoConsumers",
            "CeleryQueueClimbing",
            "CeleryQueueSlowDrain",
            "CeleryQueueOldestMessageTooOld",
            "CeleryWorkerFlapping",
        )
        # the three dead letters stayed longer than the (shortened) window
        alerts_.fires("CeleryDeadLetterQueueNotDrained", labels(queue_name="dead"))
