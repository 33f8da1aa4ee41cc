"""The exporter beside agents, end to end, in every scrape layout: nothing counted or paged
twice, nothing missed.

A real Prometheus scrapes `celery-vitals serve --no-event-stream` (queues and the
broker) and a real worker running the agent (task and worker metrics), with the
shipped rules (windows shortened as in test_alerts_e2e), in one job, or in two
jobs under names nobody chose for celery-vitals (the Helm chart's ServiceMonitor
and PodMonitor make two). Both name the broker alike from their own URLs (the
worker's without a database number or credentials: the identity fills them in),
and the rules join them on it.
Each task is counted once in the job, a failing task is one alert series, the
queue alerts that compare the exporter's queue depth with the agents'
receive counters stay quiet while the worker drains, the exporter's blind-spot
alerts stay quiet, and the agent's target going down is CeleryWorkerDown for
that worker, not CeleryExporterDown.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from celery_vitals.brokers import identity
from celery_vitals.rules import alerts
from celery_vitals.rules.config import from_mapping
from stack.net import LOOPBACK
from stack.prometheus import PrometheusServer
from tests.support.expressions import Expressions, labels, shortened
from tests.support.harness import Harness
from tests.support.rules import RULES_PATH

pytestmark = pytest.mark.integration

QUEUE = "celery"


@pytest.mark.parametrize(
    ("exporter_job", "agents_job"),
    [("celery-vitals", "celery-vitals"), ("celery-exporter", "shop/workers")],
    ids=["one-job", "two-jobs-any-names"],
)
def test_exporter_beside_an_agent_counts_and_pages_once(
    harness: Harness, tmp_path: Path, exporter_job: str, agents_job: str
) -> None:
    rules_path = tmp_path / "celery-vitals.rules.yml"
    rules_path.write_text(shortened(RULES_PATH.read_text(encoding="utf-8")), encoding="utf-8")
    redis = harness.redis()
    url = redis.url()
    port = url.rsplit(":", 1)[1].split("/", 1)[0]
    worker_url = f"redis://{LOOPBACK}:{port}"  # the same broker, written otherwise
    broker = identity(url)
    assert identity(worker_url) == broker
    exporter = harness.exporter(
        url, "--no-event-stream", "--queue", QUEUE, "--queue-poll-interval", "1"
    )
    worker = harness.agent_worker("beside", worker_url, concurrency=1)
    targets: dict[str, list[str]] = {}
    targets.setdefault(exporter_job, []).append(f"{LOOPBACK}:{exporter.port}")
    targets.setdefault(agents_job, []).append(f"{LOOPBACK}:{worker.port}")
    B = f'broker="{broker}"'

    def here(**values: str) -> frozenset[tuple[str, str]]:
        return labels(broker=broker, **values)

    with PrometheusServer(tmp_path / "prometheus", targets, [rules_path]) as prometheus:
        for job in targets:
            prometheus.wait_scraped(job)
        prometheus.wait_rules_evaluated()
        expressions = Expressions(prometheus, rules_path)
        client = harness.client(url)
        for number in range(5):
            client.send_task("agent.add", args=(number, 1))
        client.send_task("agent.fail")
        # the failure counter exists and was scraped: what follows is a rate
        prometheus.wait_nonempty(
            f"celery_task_failed_total{{{B}}} == 1",
            timeout=30,
            what="the first failure scraped",
        )
        for _ in range(6):
            client.send_task("agent.fail")
        # a backlog the worker drains, one task at a time
        for _ in range(8):
            client.send_task("agent.sleep", args=(1.0,))
        expressions.fires(
            "CeleryTaskFailureRateHigh",
            here(name="agent.fail", queue_name=QUEUE),
            severity="critical",
        )
        prometheus.wait_nonempty(
            f"sum(celery_queue_length{{{B}}}) > 0",
            timeout=20,
            what="the exporter sees the backlog",
        )
        # while it drains: the queue alerts join the exporter's depth with the agent's
        # receive counter within the job, and see a queue that drains
        expressions.quiet(
            "CeleryQueueNotDraining",
            "CeleryQueueNoConsumers",
            "CeleryExporterEventStreamDown",
            "CeleryWorkerTaskEventsMissing",
            "CeleryExporterDown",
            "CeleryWorkerDown",
        )
        worker.wait_for(
            lambda s: (
                s.get("celery_task_succeeded_total", name="agent.sleep", queue_name=QUEUE) == 8
            ),
            timeout=60,
            what="the backlog drained",
        )
        # one series per task in the job, each counted once
        for name, count in (("agent.add", 5), ("agent.sleep", 8)):
            prometheus.wait_for(
                f"sum by (broker, name, queue_name) (celery_task_succeeded_total{{{B}}})"
                f" == {count}",
                {here(name=name, queue_name=QUEUE)},
                timeout=20,
                what=f"{count} successes of {name}, once",
            )
        assert len(prometheus.query(f"celery_task_succeeded_total{{{B}}}")) == 2
        failed = prometheus.query(f"celery_task_failed_total{{{B}}}")
        assert [(s.labels["name"], s.labels["exception"], s.value) for s in failed] == [
            ("agent.fail", "ValueError", 7.0)
        ]
        assert prometheus.query(f"celery_vitals_event_stream_up{{{B}}}") == []
        assert len(prometheus.query(f"celery_worker_up{{{B}}}")) == 1  # the agent's

        # the worker dies: its agent's target is down; that is the worker, not the exporter
        worker.kill()
        prometheus.wait_for(
            expressions.expr("CeleryWorkerDown", "warning"),
            {here(hostname=worker.hostname)},
            timeout=15,
            what="the dead worker's agent down as CeleryWorkerDown",
        )
        expressions.quiet("CeleryExporterDown")


@pytest.mark.parametrize(
    ("selector", "missing"),
    [('job="celery-vitals"', True), (None, False)],
    ids=["selector-matches-no-job", "shipped-selector"],
)
def test_a_selector_that_matches_no_exporter_pages(
    harness: Harness, tmp_path: Path, selector: str | None, missing: bool
) -> None:
    """The exporter scraped as job "celery": rules selecting job="celery-vitals" see no
    exporter, and CeleryExporterMissing's expression holds (it pages after its for:);
    with the shipped selector (broker!="", any job) nothing is missing."""
    config = alerts.alert_names()
    overrides = {"selector": selector} if selector else {}
    rules_path = tmp_path / "celery-vitals.rules.yml"
    rules_path.write_text(
        shortened(alerts.render(from_mapping(overrides, config))), encoding="utf-8"
    )
    url = harness.redis().url()
    exporter = harness.exporter(url, "--queue", QUEUE, "--queue-poll-interval", "1")
    targets = {"celery": [f"{LOOPBACK}:{exporter.port}"]}
    with PrometheusServer(tmp_path / "prometheus", targets, [rules_path]) as prometheus:
        prometheus.wait_scraped("celery")
        prometheus.wait_rules_evaluated()
        expressions = Expressions(prometheus, rules_path)
        # the exporter is scraped and answers in either case
        prometheus.wait_nonempty(
            'celery_broker_up{job="celery"} == 1', timeout=20, what="the exporter scraped"
        )
        if missing:
            prometheus.wait_for(
                expressions.expr("CeleryExporterMissing"),
                # absent() keeps the selector's equality matchers: the job it looked for
                {frozenset({("job", "celery-vitals")})},
                timeout=20,
                what="CeleryExporterMissing for a selector that matches no exporter",
            )
        else:
            expressions.quiet("CeleryExporterMissing", "CeleryExporterDown")
