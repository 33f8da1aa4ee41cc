"""End to end: every panel query returns data from a real Prometheus, in both setups.

redis-server, Celery workers (prefork) running the demo app, and Debian's
Prometheus scraping every second and evaluating the shipped rules
(alerts/*.yml, as the compose stack does), in the two setups users run:

- events: `celery-vitals serve` alone, consuming the event stream of workers
  started with -E, in one job named as a user might ("celery");
- agent: the agent inside each worker (DEMO_AGENT=1, no -E) and `celery-vitals
  serve --no-event-stream` polling queues and the broker, in separate jobs
  ("celery-exporter" and "workers"), as the Helm chart's ServiceMonitor and
  PodMonitor scrape them: only the ``broker`` label ties them together.

Two waves of tasks (so every counter and histogram grows between scrapes)
produce successes, failures by exception, retries, exhausted retries,
unregistered and expired tasks; tasks wait in a queue nobody consumes
(stamped with their publication time, as a publisher with the agent does), an
ETA task waits unacknowledged in a worker, and messages sit in a dead-letter
queue. Then every query of every dashboard, with
its variables at All (the broker variable's values as Grafana sends them),
must return at least one sample that is not NaN, except the ones
NEEDS_INCIDENT lists with the reason they cannot here, and exactly the ones
the setup cannot fill (WITHOUT_AGENT, WITHOUT_EVENT_STREAM): each of those
panels says why (its noValue text, or its description for a query beside
others). Last, a worker goes down and Workers down says 1, the worker that
CeleryWorkerDown's expression returns, in both setups.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from celery import Celery

from celery_vitals.rules import dashboards
from celery_vitals.stamp import HEADER
from stack.net import LOOPBACK, free_port, wait_until
from stack.prometheus import Labels, PrometheusServer, Sample
from stack.workers import CeleryWorker
from tests.support.dashboards import (
    UIDS,
    Expr,
    all_exprs,
    load,
    panels,
    regex_all,
    substitute,
)
from tests.support.harness import Harness
from tests.support.messages import push
from tests.support.processes import ExporterProcess
from tests.support.rules import alerts

pytestmark = pytest.mark.integration

# Loaded as the compose stack loads them: the recorded series Workers down reads, and
# ALERTS when one fires.
RULE_FILES = sorted((Path(__file__).resolve().parents[2] / "alerts").glob("*.yml"))
EVENTS_JOB = "celery"
EXPORTER_JOB, WORKERS_JOB = "celery-exporter", "workers"
WAITING = "waiting"  # a queue no worker consumes
DEAD = "jobs.dead"  # a dead-letter queue (--dlq '*.dead')
GONE = "gone"  # the queue of the worker that goes down at the end: one ETA task goes there
Key = tuple[str, str, str]

# (dashboard uid, panel title, refId) -> why it has no data in either setup here
NEEDS_INCIDENT: dict[Key, str] = {
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
    ): "RabbitMQ only: Redis cannot tell who consumes a list (the panel says so)",
    (
        "celery-vitals-queues",
        "Messages waiting by queue",
        "B",
    ): "SQS only: messages sent with a delay (celery_queue_delayed)",
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
    # celery beat's schedule: tests/alerts/test_beat_alerts.py runs these with a real beat
    ("celery-vitals-tasks", "celery beat agents", "A"): "no celery beat runs here",
    **{
        ("celery-vitals-tasks", "Schedule: every beat entry", ref): "no celery beat runs here"
        for ref in "ABCDE"
    },
}

# What the exporter alone cannot fill: only the agent inside a worker measures it.
WITHOUT_AGENT: frozenset[Key] = frozenset(
    {
        ("celery-vitals-workers", "Pool utilisation by worker", "A"),
        ("celery-vitals-workers", "Resident memory by process", "A"),
        ("celery-vitals-workers", "Pool process exits by reason", "A"),
        ("celery-vitals-workers", "Reserved (prefetched) by worker", "B"),  # ETA tasks
    }
)
# What the agent setup cannot fill: only the exporter's event stream makes it.
WITHOUT_EVENT_STREAM: frozenset[Key] = frozenset(
    {
        ("celery-vitals-overview", "Event stream up", "A"),
        ("celery-vitals-overview", "Event lag", "A"),
        ("celery-vitals-workers", "Task events missing by worker", "B"),  # publishers' events
        ("celery-vitals-slow", "Event lag", "A"),
        ("celery-vitals-slow", "Event stream up and reconnects", "A"),
        ("celery-vitals-slow", "Event stream up and reconnects", "B"),
    }
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
    # stamped as a publisher with the agent stamps it: the exporter reads the stamp at the
    # queue's head (the oldest waiting message's age, in both setups)
    client.send_task("demo.add", args=(0, 0), queue=WAITING, headers={HEADER: time.time()})


def _counted(waves: int) -> dict[str, float]:
    """What Prometheus holds once ``waves`` waves were counted and the queues polled since,
    whichever jobs the series come from."""
    return {
        'sum(celery_task_failed_after_retries_total{name="demo.hopeless"})': waves,
        'sum(celery_task_succeeded_total{name="demo.flaky"})': waves,
        'sum(celery_task_succeeded_total{name="demo.add"})': 4 * waves,
        'sum(celery_task_failed_total{name="demo.fail"})': 2 * waves,
        'sum(celery_task_failed_total{exception="NotRegistered"})': waves,
        "sum(celery_task_expired_total)": waves,
        f'sum(celery_queue_length{{queue_name="{WAITING}"}})': waves,
    }


def _values(prometheus: PrometheusServer, expr: str) -> list[float]:
    return [sample.value for sample in prometheus.query(expr)]


def _wait_counted(prometheus: PrometheusServer, waves: int) -> None:
    expected = _counted(waves)
    last: dict[str, list[float]] = {}

    def counted() -> bool:
        last.update({expr: _values(prometheus, expr) for expr in expected})
        return all(last[expr] == [value] for expr, value in expected.items())

    wait_until(
        counted,
        timeout=45,
        what=f"wave {waves} counted in Prometheus",
        details=lambda: "\n".join(f"{e}: {last.get(e)} (want {v})" for e, v in expected.items()),
        interval=0.25,
    )


def _has_data(samples: list[Sample]) -> bool:
    """At least one sample that is a number (a 0/0 ratio or quantile is NaN)."""
    return any(not math.isnan(sample.value) for sample in samples)


class Queries:
    """The dashboards' queries as Grafana sends them, against one Prometheus."""

    def __init__(self, prometheus: PrometheusServer, broker: str) -> None:
        self.prometheus = prometheus
        self.exprs = all_exprs()
        self.broker = broker
        variable = self.one("celery-vitals-overview", "variable: broker")
        # the broker variable's values: one, for every target of the cluster whatever its job
        values = {s.labels["broker"] for s in prometheus.query(substitute(variable.expr))}
        assert values == {broker}
        self.broker_regex = regex_all(sorted(values))

    def one(self, uid: str, title: str, ref: str = "A") -> Expr:
        (found,) = (expr for expr in self.exprs if expr.key == (uid, title, ref))
        return found

    def run(self, expr: Expr) -> list[Sample]:
        return self.prometheus.query(substitute(expr.expr, broker=self.broker_regex))

    def value(self, uid: str, title: str, ref: str = "A") -> dict[str, float]:
        """The query's samples as {hostname or "": value}."""
        samples = self.run(self.one(uid, title, ref))
        return {sample.labels.get("hostname", ""): sample.value for sample in samples}

    def missing(self, keys: set[Key], timeout: float = 20.0) -> list[Expr]:
        """The queries among ``keys`` still without data at the deadline (none: at once)."""
        exprs = [expr for expr in self.exprs if expr.key in keys]
        deadline = time.monotonic() + timeout
        while True:
            missing = [expr for expr in exprs if not _has_data(self.run(expr))]
            if not missing or time.monotonic() >= deadline:
                return missing
            time.sleep(1.0)

    def with_data(self, keys: set[Key]) -> list[Expr]:
        return [e for e in self.exprs if e.key in keys and _has_data(self.run(e))]


def _check_every_query(
    queries: Queries, cannot: frozenset[Key], empties: tuple[dashboards.Empty, ...]
) -> None:
    """Data from every query but NEEDS_INCIDENT's and the ones the setup ``cannot`` fill,
    which have none and say why."""
    keys = {expr.key for expr in queries.exprs}
    assert set(NEEDS_INCIDENT) | cannot <= keys, "stale NEEDS_INCIDENT or setup entry"
    missing = queries.missing(keys - set(NEEDS_INCIDENT) - cannot)
    # the tables stay exact: what they list really has no data here
    unexpected = queries.with_data(set(NEEDS_INCIDENT) | cannot)
    assert missing == [], f"{len(missing)} queries without data:\n" + "\n".join(
        str(expr) for expr in missing
    )
    assert unexpected == [], "listed as empty, but have data:\n" + "\n".join(
        str(expr) for expr in unexpected
    )
    assert _explained(cannot, empties) == []


def _explained(cannot: frozenset[Key], empties: tuple[dashboards.Empty, ...]) -> list[str]:
    """The panels of ``cannot`` that do not say why, and the panels that say so but are
    not empty here. A panel with no query left shows one of ``empties``' texts instead of
    No data, and no other panel does; a query beside others is named in the description
    (by the same words as the empties': "agent setup", "the exporter alone")."""
    words = ("agent setup", "the exporter alone")
    texts = {empty.text for empty in empties}
    unexplained = []
    for uid in UIDS:
        for panel in panels(load(uid)):
            keys = {(uid, panel["title"], target["refId"]) for target in panel["targets"]}
            where = f"{uid} / {panel['title']}"
            says = panel["fieldConfig"]["defaults"].get("noValue") in texts
            if keys <= cannot and not says:
                unexplained.append(f"{where}: empty here, without one of {sorted(texts)}")
            elif says and not keys <= cannot:
                unexplained.append(f"{where}: says it is empty here, but has data")
            elif keys & cannot and not any(word in panel["description"] for word in words):
                unexplained.append(f"{where}: the description does not say")
    return unexplained


def _down(queries: Queries, gone: CeleryWorker, alive: CeleryWorker) -> None:
    """Workers down counts the worker CeleryWorkerDown's condition returns, on both
    dashboards; the worker is known and shown DOWN."""
    wait_until(
        lambda: queries.value("celery-vitals-overview", "Workers down") == {"": 1},
        timeout=30,
        what=f"Workers down: 1 ({gone.hostname})",
        details=queries.prometheus.tail,
        interval=0.25,
    )
    (warning,) = (
        rule.expr
        for rule in alerts()
        if rule.name == "CeleryWorkerDown" and rule.labels["severity"] == "warning"
    )
    firing = {s.label_set for s in queries.prometheus.query(warning)}
    assert firing == {_labels(broker=queries.broker, hostname=gone.hostname)}
    assert queries.value("celery-vitals-workers", "Workers down") == {"": 1}
    assert queries.value("celery-vitals-workers", "Up by worker") == {
        alive.hostname: 1,
        gone.hostname: 0,
    }
    assert queries.value("celery-vitals-overview", "Workers up vs known", "A") == {"": 1}
    assert queries.value("celery-vitals-overview", "Workers up vs known", "B") == {"": 2}


def _labels(**values: str) -> Labels:
    return frozenset(values.items())


def _start(harness: Harness, *extra: str) -> tuple[str, str, ExporterProcess, Celery]:
    """redis-server with a dead-letter queue holding messages, and the exporter watching
    the waiting and the dead-letter queue: (broker URL, broker label, exporter, client)."""
    redis = harness.redis()
    url = redis.url()
    push(url, DEAD, 2)
    dead_letter = Celery("dead-letter", broker=url, set_as_current=False)
    dead_letter.send_task("demo.hopeless", queue=DEAD)  # a Celery task: celery_dlq_messages
    exporter = harness.exporter(
        url,
        *extra,
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
    return url, f"redis://{LOOPBACK}:{redis.port}/0", exporter, harness.client(url)


def _waves(prometheus: PrometheusServer, client: Celery, url: str) -> None:
    # held unacknowledged by the worker of GONE until it goes down: the oldest unacked
    # delivery (else only there by chance, while a wave is delivered)
    client.send_task("demo.add", args=(0, 0), queue=GONE, countdown=3600)
    for number in (1, 2):
        wave(client)
        _wait_counted(prometheus, number)
        push(url, DEAD, 1)  # dead-letter ingress between scrapes


def test_events_setup_every_panel_has_data_or_says_why(harness: Harness, tmp_path: Path) -> None:
    """The exporter alone: everything but what only the agent measures."""
    url, broker, exporter, client = _start(harness)
    targets = {EVENTS_JOB: [f"{LOOPBACK}:{exporter.port}"]}
    with PrometheusServer(tmp_path / "prometheus", targets, RULE_FILES) as prometheus:
        alive = harness.worker("dash", url, exporter=exporter)
        gone = harness.worker("gone", url, exporter=exporter, queues=GONE)
        assert prometheus.rule_health(), f"no rules loaded from {RULE_FILES}"
        _waves(prometheus, client, url)
        queries = Queries(prometheus, broker)
        _check_every_query(queries, WITHOUT_AGENT, (dashboards.NO_AGENT,))
        assert queries.value("celery-vitals-overview", "Workers down") == {"": 0}
        gone.stop_gracefully()  # worker-offline: the exporter's celery_worker_up 0
        _down(queries, gone, alive)


def test_agent_setup_every_panel_has_data_or_says_why(harness: Harness, tmp_path: Path) -> None:
    """Agents in one job, `serve --no-event-stream` in another: everything but what only
    the event stream makes; a dead agent is a worker down."""
    url, broker, exporter, client = _start(harness, "--no-event-stream")
    ports = free_port(), free_port()

    def agent_worker(name: str, port: int, *args: str, **options: str) -> CeleryWorker:
        return harness.worker(
            name,
            url,
            exporter=None,
            task_events=False,
            extra_env={
                "DEMO_AGENT": "1",
                "CELERY_VITALS_AGENT_LISTEN_ADDRESS": f"{LOOPBACK}:{port}",
            },
            extra_args=args,
            **options,  # type: ignore[arg-type]
        )

    targets = {
        EXPORTER_JOB: [f"{LOOPBACK}:{exporter.port}"],
        WORKERS_JOB: [f"{LOOPBACK}:{port}" for port in ports],
    }
    with PrometheusServer(tmp_path / "prometheus", targets, RULE_FILES) as prometheus:
        # recycling its pool process after each task: pool process exits
        alive = agent_worker("dash", ports[0], "--max-tasks-per-child", "1")
        gone = agent_worker("gone", ports[1], queues=GONE)
        assert prometheus.rule_health(), f"no rules loaded from {RULE_FILES}"
        prometheus.wait_scraped(WORKERS_JOB)
        _waves(prometheus, client, url)
        queries = Queries(prometheus, broker)
        _check_every_query(queries, WITHOUT_EVENT_STREAM, (dashboards.NO_EVENT_STREAM,))
        assert queries.value("celery-vitals-overview", "Workers down") == {"": 0}
        gone.kill()  # its agent's target down: its series gone, not 0
        _down(queries, gone, alive)
        assert prometheus.query(f'celery_worker_up{{hostname="{gone.hostname}"}}') == []
