"""celery beat's alerts on a real Prometheus (and Alertmanager), from a real ``celery beat``
running the agent (tests/support/beat_app.py: ``every-second`` sends ``beat.tick`` each
second, ``hourly-report`` and the ``nightly-cleanup`` crontab never run during a test),
real workers running the agent on Redis, and ``celery-vitals serve --no-event-stream``, as
the agent setup runs them. The shipped rules come from ``celery-vitals rules --config``
with beat's slacks and the alerts' ``for:`` shortened to seconds:

- a healthy beat pages nothing, and the Tasks dashboard's schedule row shows its entries
  with their exact intervals, sends and successes, none late;
- beat SIGKILLed pages CeleryBeatDown (critical), and the runs it then misses are no
  page of their own: CeleryPeriodicTaskMissed's own condition holds for the task listed
  under periodic_tasks, the rule yields, and Alertmanager (deploy/alertmanager.yml) holds
  the one page;
- two beats sending one schedule page CeleryBeatDuplicate;
- a task that fails on every run pages CeleryPeriodicTaskMissed, from beat's interval
  alone (no list), though it never succeeded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celery_vitals.brokers import identity
from celery_vitals.rules import alerts
from celery_vitals.rules.config import from_mapping
from stack.alertmanager import AlertmanagerServer
from stack.net import LOOPBACK, wait_until
from stack.prometheus import Labels, PrometheusServer
from tests.support.agent_workers import AgentWorkers
from tests.support.beat_processes import BeatProcess
from tests.support.dashboards import all_exprs, substitute
from tests.support.expressions import Expressions
from tests.support.harness import Harness
from tests.support.rules import ALERTMANAGER_CONFIG

pytestmark = pytest.mark.integration

APP = "tests.support.beat_app"
FAILING_APP = "tests.support.beat_failing_app"
JOB = "celery"
TICK = "beat.tick"
BEAT_ALERTS = ("CeleryBeatDown", "CeleryBeatDuplicate", "CeleryPeriodicTaskMissed")
#: every-second may go 1 + max(1 x 0.5, 4) = 5 s without success; beat is stuck 5 s past a
#: next run; a vanished beat counts for 10 minutes; each alert fires 3 s after its condition
OVERRIDES: dict[str, Any] = {
    "thresholds": {"periodic_slack_min": 4, "beat_late_slack": 5, "beat_remembered": "10m"},
    "for": dict.fromkeys(BEAT_ALERTS, "3s"),
}


class Cluster:
    """Redis, an exporter, agent workers and beats, scraped by one Prometheus job."""

    def __init__(self, harness: Harness, tmp_path: Path) -> None:
        self.harness, self.tmp_path = harness, tmp_path
        self.url = harness.redis().url()
        self.broker = identity(self.url)
        self.exporter = harness.exporter(
            self.url, "--no-event-stream", "--queue", "celery", "--queue-poll-interval", "1"
        )
        self.workers = AgentWorkers(harness.directory)
        self.beats: list[BeatProcess] = []

    def worker(self, name: str, app: str = APP) -> str:
        worker = self.workers.start(name, self.url, app=app, pool="solo", concurrency=1)
        return f"{LOOPBACK}:{worker.port}"

    def beat(self, name: str) -> BeatProcess:
        beat = BeatProcess(
            self.url, self.harness.directory, name=name, schedule=self.tmp_path / name
        )
        self.beats.append(beat)
        return beat.start()

    def close(self) -> None:
        for beat in self.beats:
            beat.kill()
        self.workers.close()

    def labels(self, **values: str) -> Labels:
        return frozenset({"broker": self.broker, **values}.items())


@pytest.fixture
def cluster(harness: Harness, tmp_path: Path) -> Iterator[Cluster]:
    started = Cluster(harness, tmp_path)
    yield started
    started.close()


def rules(tmp_path: Path, **overrides: Any) -> Path:
    path = tmp_path / "celery-vitals.rules.yml"
    config = from_mapping({**OVERRIDES, **overrides}, alerts.alert_names())
    path.write_text(alerts.render(config), encoding="utf-8")
    return path


def targets(cluster: Cluster, *agents: str) -> dict[str, list[str]]:
    beats = [f"{LOOPBACK}:{beat.port}" for beat in cluster.beats]
    return {JOB: [f"{LOOPBACK}:{cluster.exporter.port}", *agents, *beats]}


def firing(prometheus: PrometheusServer, alert: str) -> set[Labels]:
    """The label sets (alertname, alertstate and severity left out) of ``alert`` firing."""
    return {
        frozenset(
            (k, v)
            for k, v in sample.labels.items()
            if k not in ("__name__", "alertname", "alertstate")
        )
        for sample in prometheus.query(f'ALERTS{{alertname="{alert}", alertstate="firing"}}')
    }


def wait_firing(prometheus: PrometheusServer, alert: str, expected: set[Labels]) -> None:
    wait_until(
        lambda: firing(prometheus, alert) == expected,
        timeout=45,
        interval=0.25,
        what=f"{alert} firing for {expected}",
        details=lambda: f"{firing(prometheus, alert)}\n{prometheus.tail()}",
    )


def stays_quiet(prometheus: PrometheusServer, expressions: Expressions, seconds: float) -> None:
    """For ``seconds``: no celery-vitals alert fires, and the beat alerts' expressions hold
    for nothing (not even pending)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert prometheus.query('ALERTS{alertname=~"Celery.*", alertstate="firing"}') == []
        expressions.quiet(*BEAT_ALERTS)
        time.sleep(0.5)


def table(prometheus: PrometheusServer, broker: str, title: str, ref: str) -> dict[str, float]:
    """A dashboard query's answer with the variables at All: entry (or hostname) -> value."""
    (expr,) = (
        e.expr
        for e in all_exprs()
        if (e.uid, e.title, e.ref) == ("celery-vitals-tasks", title, ref)
    )
    return {
        sample.labels.get("entry", sample.labels.get("hostname", "")): sample.value
        for sample in prometheus.query(substitute(expr, broker=broker))
    }


def test_a_healthy_beat_pages_nothing_and_its_schedule_is_on_the_tasks_dashboard(
    cluster: Cluster, tmp_path: Path
) -> None:
    agent = cluster.worker("healthy")
    beat = cluster.beat("beat")
    path = rules(tmp_path)
    with PrometheusServer(tmp_path / "prometheus", targets(cluster, agent), [path]) as prometheus:
        prometheus.wait_scraped(JOB)
        prometheus.wait_rules_evaluated()
        expressions = Expressions(prometheus, path)
        B = f'broker="{cluster.broker}"'
        prometheus.wait_nonempty(
            f'time() - name:celery_task_last_success_timestamp_seconds:max{{{B}, name="{TICK}"}}'
            " < 3",
            timeout=30,
            what="every-second's task succeeding, latched by the rules",
        )
        stays_quiet(prometheus, expressions, 15)

        # the Tasks dashboard's schedule row, as Grafana asks it
        now = time.time()
        (info,) = beat.scrape().series("celery_beat_info")
        hostname = dict(info)["hostname"]
        assert table(prometheus, cluster.broker, "celery beat agents", "A") == {hostname: 1.0}
        title = "Schedule: every beat entry"
        interval = table(prometheus, cluster.broker, title, "A")
        assert set(interval) == {"every-second", "hourly-report", "nightly-cleanup"}
        assert (interval["every-second"], interval["hourly-report"]) == (1.0, 3600.0)
        assert 0 < interval["nightly-cleanup"] <= 86400
        last_sent = table(prometheus, cluster.broker, title, "B")
        assert set(last_sent) == {"every-second"}  # the others never ran
        assert now - 5 <= last_sent["every-second"] / 1000 <= now + 1
        next_run = table(prometheus, cluster.broker, title, "C")
        assert set(next_run) == set(interval)
        assert next_run["hourly-report"] / 1000 > now + 3500
        last_success = table(prometheus, cluster.broker, title, "D")
        assert set(last_success) == {"every-second"}
        assert now - 5 <= last_success["every-second"] / 1000 <= now + 1
        # late: only where the task has a success or a send to count from; on time
        assert table(prometheus, cluster.broker, title, "E") == {"every-second": 0.0}


def test_beat_killed_pages_once_and_the_runs_it_misses_do_not(
    cluster: Cluster, tmp_path: Path
) -> None:
    agent = cluster.worker("alive")
    beat = cluster.beat("beat")
    # listed by hand too, with 8 s: its own condition holds 8 s after beat's last send
    path = rules(tmp_path, periodic_tasks={TICK: 8})
    manager = AlertmanagerServer(tmp_path / "alertmanager", ALERTMANAGER_CONFIG)
    manager.start()
    try:
        with PrometheusServer(
            tmp_path / "prometheus",
            targets(cluster, agent),
            [path],
            alertmanager=manager.address,
        ) as prometheus:
            prometheus.wait_scraped(JOB)
            prometheus.wait_rules_evaluated()
            expressions = Expressions(prometheus, path)
            B = f'broker="{cluster.broker}"'
            info = prometheus.wait_nonempty(
                f"celery_beat_info{{{B}}}", timeout=20, what="the beat agent scraped"
            )
            hostname = info[0].labels["hostname"]
            prometheus.wait_nonempty(
                f'name:celery_task_last_success_timestamp_seconds:max{{{B}, name="{TICK}"}}',
                timeout=30,
                what="every-second's task succeeding",
            )
            expressions.quiet(*BEAT_ALERTS)

            beat.kill()
            down = cluster.labels(hostname=hostname, severity="critical")
            wait_firing(prometheus, "CeleryBeatDown", {down})
            # the task stopped succeeding: its own condition holds, the rule yields to beat
            own = expressions.yielding("CeleryPeriodicTaskMissed", "CeleryBeatDown", "critical")
            prometheus.wait_for(
                own,
                {cluster.labels(name=TICK)},
                timeout=30,
                what="CeleryPeriodicTaskMissed's own condition for the task beat no longer sends",
            )
            assert prometheus.query(expressions.expr("CeleryPeriodicTaskMissed")) == []
            assert firing(prometheus, "CeleryPeriodicTaskMissed") == set()
            expressions.quiet("CeleryBeatDuplicate")

            # Alertmanager holds one page: beat's
            def held() -> dict[str, str]:
                return {
                    alert["labels"]["alertname"]: alert["status"]["state"]
                    for alert in manager.alerts()
                    if alert["labels"]["alertname"].startswith("CeleryBeat")
                    or alert["labels"]["alertname"] == "CeleryPeriodicTaskMissed"
                }

            wait_until(
                lambda: held() == {"CeleryBeatDown": "active"},
                timeout=30,
                interval=0.25,
                what="Alertmanager to hold CeleryBeatDown alone",
                details=lambda: str(held()),
            )
            (page,) = [a for a in manager.alerts() if a["labels"]["alertname"] == "CeleryBeatDown"]
            assert {k: page["labels"][k] for k in ("broker", "hostname", "severity")} == {
                "broker": cluster.broker,
                "hostname": hostname,
                "severity": "critical",
            }
    finally:
        manager.stop()


def test_two_beats_of_one_schedule_page_the_duplicate(cluster: Cluster, tmp_path: Path) -> None:
    agent = cluster.worker("twice")
    cluster.beat("beat-1")
    cluster.beat("beat-2")
    path = rules(tmp_path)
    with PrometheusServer(tmp_path / "prometheus", targets(cluster, agent), [path]) as prometheus:
        prometheus.wait_scraped(JOB)
        prometheus.wait_rules_evaluated()
        expressions = Expressions(prometheus, path)
        wait_firing(prometheus, "CeleryBeatDuplicate", {cluster.labels(severity="warning")})
        (duplicate,) = prometheus.query(expressions.expr("CeleryBeatDuplicate"))
        assert duplicate.value == 2.0  # the beat agents of the broker
        # both send: the worker receives every-second's task about twice a second
        expressions.quiet("CeleryBeatDown", "CeleryPeriodicTaskMissed")


def test_a_task_failing_on_every_run_pages_missed_from_beats_interval(
    cluster: Cluster, tmp_path: Path
) -> None:
    agent = cluster.worker("broken", app=FAILING_APP)
    cluster.beat("beat")
    path = rules(tmp_path)  # no periodic_tasks: beat's interval alone
    with PrometheusServer(tmp_path / "prometheus", targets(cluster, agent), [path]) as prometheus:
        prometheus.wait_scraped(JOB)
        prometheus.wait_rules_evaluated()
        expressions = Expressions(prometheus, path)
        B = f'broker="{cluster.broker}"'
        prometheus.wait_nonempty(
            f'celery_task_failed_total{{{B}, name="{TICK}", exception="ReportUnavailable"}} > 0',
            timeout=30,
            what="the periodic task failing",
        )
        wait_firing(
            prometheus,
            "CeleryPeriodicTaskMissed",
            {cluster.labels(name=TICK, severity="warning")},
        )
        # never succeeded: timed from the first send Prometheus saw
        assert prometheus.query(f"name:celery_task_last_success_timestamp_seconds:max{{{B}}}") == []
        (first,) = prometheus.query(
            "name:celery_beat_entry_last_run_timestamp_seconds:first_without_success"
            f'{{{B}, name="{TICK}"}}'
        )
        assert time.time() - 60 < first.value < time.time() - 5
        expressions.quiet("CeleryBeatDown", "CeleryBeatDuplicate")
