"""End to end: every panel query returns data from a real Prometheus scraping a real exporter.

redis-server, `celery-vitals serve`, a Celery worker (prefork) running the
demo app, and Debian's Prometheus scraping the exporter every second and
evaluating alerts/*.yml (as the compose stack does). Two waves of tasks (so
every counter and histogram grows between scrapes) produce successes,
failures by exception, retries, exhausted retries, unregistered and expired
tasks; tasks wait in a queue nobody consumes and messages sit in a
dead-letter queue. Then every query of every dashboard,
with its variables at All, must return at least one sample that is not NaN,
except the ones NEEDS_INCIDENT lists with the reason they cannot here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from celery import Celery
from kombu import Connection, Exchange, Queue

from tests.dashboards.queries import Expr, all_exprs, substitute
from tests.support.harness import Harness
from tests.support.metrics import Scrape
from tests.support.net import LOOPBACK, wait_until
from tests.support.prometheus import PrometheusServer, Sample

pytestmark = pytest.mark.integration

JOB = "celery-vitals"
# Loaded as the compose stack loads them: ALERTS exists when one fires.
RULE_FILES = sorted((Path(__file__).resolve().parents[2] / "alerts").glob("*.yml"))
WAITING = "waiting"  # a queue no worker consumes
DEAD = "jobs.dead"  # a dead-letter queue (--dlq '*.dead')
AGENT_QUEUE = "agent.jobs"  # consumed by the worker with the agent only

# (dashboard uid, panel title, refId) -> why it has no data in this scenario
NEEDS_INCIDENT = {
    (
        "celery-vitals-overview",
        "Firing Celery alerts by name",
        "A",
    ): 'ALERTS{alertstate="firing"} exists only once an alert fired for its `for:`',
    (
        "celery-vitals-tasks",
        "Rejected by task",
        "A",
    ): "a task must raise Reject: the demo app has none",
    (
        "celery-vitals-tasks",
        "Redelivered by task",
        "A",
    ): "a redelivery needs a visibility timeout to pass or a worker lost holding a task",
    (
        "celery-vitals-queues",
        "Consumers by queue",
        "A",
    ): "RabbitMQ only: Redis cannot tell who consumes a list",
    (
        "celery-vitals-queues",
        "Messages waiting by queue",
        "B",
    ): "SQS only: messages sent with a delay (celery_queue_delayed)",
    (
        "celery-vitals-queues",
        "Oldest unacked delivery vs visibility timeout",
        "A",
    ): "only while a delivery is unacknowledged (a long task with acks_late)",
    (
        "celery-vitals-queues",
        "Rejected without requeue by task",
        "A",
    ): "a task must raise Reject(requeue=False)",
    ("celery-vitals-slow", "Broker poll errors by error", "A"): "the broker must fail a poll",
    (
        "celery-vitals-slow",
        "Events with an unknown uuid by type",
        "A",
    ): "the exporter must miss a task's first events (start late, evict)",
    (
        "celery-vitals-slow",
        "Label values folded into other",
        "A",
    ): "a label value must pass a cardinality cap or the length limit",
    ("celery-vitals-slow", "Events skipped by reason", "A"): "needs a malformed event",
}


def push(broker_url: str, queue: str, count: int) -> None:
    """Plain messages into a queue (kombu declares it, so the broker binds it)."""
    with Connection(broker_url) as connection:
        target = Queue(queue, Exchange(queue, type="direct"), routing_key=queue)
        producer = connection.Producer()
        for number in range(count):
            producer.publish(
                {"n": number},
                exchange=target.exchange,
                routing_key=queue,
                declare=[target],
                retry=True,
            )


def wave(client: Celery) -> None:
    """One of each behaviour the dashboards show."""
    expired = datetime.now(UTC) - timedelta(seconds=30)
    for number in range(4):
        client.send_task("demo.add", args=(number, 1))
    for _ in range(2):
        client.send_task("demo.fail")
    client.send_task("demo.flaky", args=(1,))
    client.send_task("demo.hopeless")
    client.send_task("demo.renamed_in_a_deploy")  # NotRegistered on the worker
    client.send_task("demo.add", args=(0, 0), expires=expired)
    client.send_task("demo.add", args=(0, 0), queue=WAITING)


def _count(scrape: Scrape, metric: str, **labels: str) -> float:
    """Sum of every series of ``metric`` whose labels include ``labels``."""
    return sum(
        value
        for series, value in scrape.series(metric).items()
        if set(labels.items()) <= set(series)
    )


def _settled(waves: int) -> Callable[[Scrape], bool]:
    """The exporter has counted ``waves`` waves and polled the waiting queue since."""

    def check(s: Scrape) -> bool:
        return (
            _count(s, "celery_task_failed_after_retries_total", name="demo.hopeless") == waves
            and _count(s, "celery_task_succeeded_total", name="demo.flaky") == waves
            and _count(s, "celery_task_succeeded_total", name="demo.add") == 4 * waves
            and _count(s, "celery_task_failed_total", name="demo.fail") == 2 * waves
            and _count(s, "celery_task_failed_total", exception="NotRegistered") == waves
            and _count(s, "celery_task_expired_total") == waves
            and s.get("celery_queue_length", queue_name=WAITING) == waves
        )

    return check


def _has_data(samples: list[Sample]) -> bool:
    """At least one sample that is a number (a 0/0 ratio or quantile is NaN)."""
    return any(not math.isnan(sample.value) for sample in samples)


def _wait_for_sample(prometheus: PrometheusServer, expr: str) -> None:
    wait_until(
        lambda: _has_data(prometheus.query(expr)),
        timeout=20,
        what=f"Prometheus to scrape {expr}",
        details=prometheus.tail,
    )


def _wait_for_data(
    prometheus: PrometheusServer, exprs: list[Expr], timeout: float = 20.0
) -> list[Expr]:
    """The expressions still without data at the deadline (none: it returns at once)."""
    deadline = time.monotonic() + timeout
    while True:
        missing = [expr for expr in exprs if not _has_data(prometheus.query(substitute(expr.expr)))]
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(1.0)


def test_every_panel_query_returns_data(harness: Harness, tmp_path: Path) -> None:
    """Every panel, annotation and variable query answers with numbers, or needs an incident."""
    started = time.monotonic()
    exprs = all_exprs()
    assert set(NEEDS_INCIDENT) <= {expr.key for expr in exprs}, "stale NEEDS_INCIDENT entry"

    redis = harness.redis()
    url = redis.url()
    push(url, DEAD, 2)
    dead_letter = Celery("dead-letter", broker=url, set_as_current=False)
    dead_letter.send_task("demo.hopeless", queue=DEAD)  # a Celery task: celery_dlq_messages
    exporter = harness.exporter(
        url,
        "--queue-poll-interval",
        "1",
        "--queue-discovery-interval",
        "1",
        "--queue",
        WAITING,
        "--queue",
        DEAD,
        "--dlq",
        "*.dead",
        "--broker-transport-option",
        "visibility_timeout=120",
    )
    # a worker with the agent inside, under the same job (README "The agent"), for the
    # panels only an agent fills: it consumes a queue of its own and recycles its child
    # after each task
    agent = harness.agent_worker(
        "dash-agent",
        url,
        queues=AGENT_QUEUE,
        concurrency=1,
        extra_args=["--max-tasks-per-child", "1"],
    )
    with PrometheusServer(
        tmp_path / "prometheus",
        {JOB: [f"{LOOPBACK}:{exporter.port}", f"{LOOPBACK}:{agent.port}"]},
        rule_files=RULE_FILES,
    ) as prometheus:
        harness.worker("dash", url, exporter=exporter)
        client = harness.client(url)
        client.send_task("agent.add", args=(1, 2), queue=AGENT_QUEUE)
        agent.wait_for(
            lambda s: (
                s.get(
                    "celery_worker_pool_process_exits_total",
                    hostname=agent.hostname,
                    reason="recycled",
                )
                == 1
            ),
            what="the agent's child recycled once",
        )
        assert prometheus.rule_health(), f"no rules loaded from {RULE_FILES}"
        _wait_for_sample(prometheus, 'celery_worker_up{hostname="dash@test"} == 1')
        for number in (1, 2):
            wave(client)
            exporter.wait_for(_settled(number), timeout=30, what=f"wave {number} counted")
            _wait_for_sample(
                prometheus,
                f'celery_task_failed_after_retries_total{{name="demo.hopeless"}} == {number}',
            )
            push(url, DEAD, 1)  # dead-letter ingress between scrapes
        missing = _wait_for_data(prometheus, [e for e in exprs if e.key not in NEEDS_INCIDENT])
        # the table stays exact: what it lists really has no data without its incident
        unexpected = [
            expr
            for expr in exprs
            if expr.key in NEEDS_INCIDENT and _has_data(prometheus.query(substitute(expr.expr)))
        ]
    assert missing == [], f"{len(missing)} queries without data:\n" + "\n".join(
        str(expr) for expr in missing
    )
    assert unexpected == [], "NEEDS_INCIDENT lists queries that have data:\n" + "\n".join(
        str(expr) for expr in unexpected
    )
    assert time.monotonic() - started < 90
