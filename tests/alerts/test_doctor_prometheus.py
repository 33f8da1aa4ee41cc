"""``celery-vitals doctor --prometheus-url`` against a real Prometheus.

One redis-server, two exporters on it (``quiet``: --no-event-stream, as beside agents;
``events``: with its event stream, which turns task events on in every worker) and
two agent workers (``a``; ``b``, whose agent names its broker ``elsewhere``) serve the
whole module. Each test starts its own Prometheus with the shipped rules (every
``for:`` set to 1h, so that no alert fires unless the test makes one fire) and scrapes
a right or a wrong setup; the doctor runs as a user runs it and its Prometheus
findings are compared exactly, with its exit code.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from celery import Celery

from celery_vitals.rules.alerts import render
from celery_vitals.rules.config import RulesConfig
from stack.net import LOOPBACK, free_port, wait_until
from stack.processes import REPO_ROOT, venv_executable
from stack.prometheus import PrometheusServer
from tests.support.dlq_cli import env
from tests.support.harness import Harness
from tests.support.processes import AgentWorker, ExporterProcess
from tests.support.rules import RULES_PATH, alert_names, rules

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

JOB = "celery-vitals"
#: What the doctor reads from the shipped rules, and from rules made for a job.
SHIPPED = 'the rules\' selector {broker!=""} (from rule CeleryExporterMissing)'
BY_JOB = 'job="celery-vitals"'
FROM_JOB = 'the rules\' selector {job="celery-vitals"} (from rule CeleryExporterMissing)'


@dataclass
class Cluster:
    broker_url: str
    broker: str  # the broker label of every series on that broker
    quiet: ExporterProcess  # --no-event-stream
    events: ExporterProcess  # with its event stream
    a: AgentWorker
    b: AgentWorker  # CELERY_VITALS_BROKER_NAME=elsewhere

    @staticmethod
    def at(process: ExporterProcess | AgentWorker) -> str:
        return f"{LOOPBACK}:{process.port}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Harness(tmp_path_factory.mktemp("doctor-prometheus")) as harness:
        redis = harness.redis()
        url = redis.url()
        quiet = harness.exporter(
            url,
            "--no-event-stream",
            "--queue",
            "celery",
            "--queue-poll-interval",
            "1",
            name="quiet",
        )
        events = harness.exporter(url, "--queue-poll-interval", "1", name="events")
        a = harness.agent_worker("a", url, concurrency=1)
        b = harness.agent_worker(
            "b", url, concurrency=1, extra_env={"CELERY_VITALS_BROKER_NAME": "elsewhere"}
        )
        yield Cluster(url, f"redis://{LOOPBACK}:{redis.port}/0", quiet, events, a, b)


def rules_file(directory: Path, selector: str | None = None, **for_: str) -> Path:
    """The shipped rule file (or the one `celery-vitals rules` writes for ``selector``),
    each alert's ``for:`` 1h unless given here."""
    text = (
        RULES_PATH.read_text(encoding="utf-8")
        if selector is None
        else render(RulesConfig(selector=selector))
    )
    document = yaml.safe_load(text)
    for group in document["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = for_.get(rule["alert"], "1h")
    path = directory / "celery-vitals.rules.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def doctor(cluster: Cluster, prometheus: PrometheusServer, *args: str) -> tuple[int, Any]:
    """The doctor with --prometheus-url (scheme-less, as users type it) and --json."""
    done = subprocess.run(
        [
            venv_executable("celery-vitals"),
            "doctor",
            "--listen",
            "1",
            "--timeout",
            "2",
            "--prometheus-url",
            f"{LOOPBACK}:{prometheus.port}",
            "--json",
            *args,
        ],
        env=env(cluster.broker_url),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout)


def prometheus_findings(findings: Any) -> list[tuple[str, str, str, str | None]]:
    return [
        (f["check"], f["status"], f["detail"], f.get("subject"))
        for f in findings
        if f["check"].startswith("prometheus")
    ]


def failures(findings: Any) -> list[str]:
    return [f["check"] for f in findings if f["status"] == "fail"]


def ready(prometheus: PrometheusServer, *jobs: str) -> None:
    for job in jobs:
        prometheus.wait_scraped(job)
    prometheus.wait_rules_evaluated()


def counted(cluster: Cluster, prometheus: PrometheusServer, *sources: str) -> None:
    """Tasks sent until Prometheus has agent.add's receive counter from each source."""
    app = Celery("doctor-prometheus", broker=cluster.broker_url, set_as_current=False)
    try:

        def stored() -> bool:
            app.send_task("agent.add", args=(1, 2))
            found = prometheus.query('celery_task_received_total{name="agent.add"}')
            return {sample.labels["instance"] for sample in found} >= set(sources)

        wait_until(stored, timeout=60, what=f"agent.add counted by {sources}", interval=0.5)
    finally:
        app.close()


def rules_ok(path: Path) -> list[tuple[str, str, str, str | None]]:
    names = alert_names(path)
    return [
        (
            "prometheus-rules",
            "ok",
            f"{len(names)} of the {len(names)} celery-vitals alerts loaded "
            "(groups celery-vitals.alerts, celery-vitals.recording)",
            None,
        ),
        (
            "prometheus-rule-eval",
            "ok",
            f"{len(rules(path))} celery-vitals rules evaluate without errors",
            None,
        ),
    ]


def test_the_right_setup_is_all_ok(cluster: Cluster, tmp_path: Path) -> None:
    path = rules_file(tmp_path)
    quiet, a = cluster.at(cluster.quiet), cluster.at(cluster.a)
    with PrometheusServer(tmp_path / "prometheus", {JOB: [quiet, a]}, [path]) as prometheus:
        ready(prometheus, JOB)
        counted(cluster, prometheus, a)
        code, findings = doctor(cluster, prometheus)
    assert prometheus_findings(findings) == [
        ("prometheus", "ok", f"{prometheus.url}: the HTTP API answered", None),
        *rules_ok(path),
        (
            "prometheus-targets",
            "ok",
            f"{SHIPPED} matches the targets that export celery-vitals metrics, all up: "
            f"exporters {quiet}, agents {a}",
            None,
        ),
        (
            "prometheus-join",
            "ok",
            f'every agent\'s broker has an exporter: broker="{cluster.broker}" ({quiet})',
            None,
        ),
        (
            "prometheus-doubled",
            "ok",
            "no task is counted by both an exporter's event stream and an agent",
            None,
        ),
        (
            "prometheus-beat",
            "ok",
            "no celery beat agent within the selector (celery_beat_info): CeleryBeatDown "
            "cannot page and CeleryPeriodicTaskMissed watches only the tasks of "
            "periodic_tasks. Where celery beat runs (or a worker with -B), call "
            "celery_vitals.agent.install(app) in the app module it loads and scrape its agent",
            None,
        ),
        ("prometheus-alerts", "ok", "no celery-vitals alert is firing", None),
    ]
    assert (code, failures(findings)) == (0, [])


def test_a_selector_that_matches_nothing(cluster: Cluster, tmp_path: Path) -> None:
    """Rules made for job celery-vitals, the targets scraped as job celery."""
    path = rules_file(tmp_path, BY_JOB)
    quiet, a = cluster.at(cluster.quiet), cluster.at(cluster.a)
    with PrometheusServer(tmp_path / "prometheus", {"celery": [quiet, a]}, [path]) as prometheus:
        ready(prometheus, "celery")
        code, findings = doctor(cluster, prometheus)
        fixed_code, fixed = doctor(cluster, prometheus, "--selector", 'job="celery"')
    found = prometheus_findings(findings)
    assert found[3:5] == [
        (
            "prometheus-targets",
            "fail",
            f"{FROM_JOB} matches none of the targets that export celery-vitals metrics "
            "(jobs celery): no celery-vitals alert can fire",
            None,
        ),
        ("prometheus-join", "ok", "no agent within the selector: nothing to join", None),
    ]
    [targets] = [f for f in findings if f["check"] == "prometheus-targets"]
    assert targets["fix"] == (
        "make the rules' selector see them: scrape them in a job it matches, or generate "
        "the rules with a selector that matches them (`celery-vitals rules --config` with "
        "`selector:`, or the chart's prometheusRule.selector)"
    )
    assert (code, failures(findings)) == (1, ["prometheus-targets"])
    # told the selector the rules should have, the same targets are all right
    assert prometheus_findings(fixed)[3] == (
        "prometheus-targets",
        "ok",
        'the rules\' selector {job="celery"} (from --selector) matches the targets that '
        f"export celery-vitals metrics, all up: exporters {quiet}, agents {a}",
        None,
    )
    assert (fixed_code, failures(fixed)) == (0, [])


def test_agents_outside_the_selector_are_named_by_job(cluster: Cluster, tmp_path: Path) -> None:
    path = rules_file(tmp_path, BY_JOB)
    quiet, a = cluster.at(cluster.quiet), cluster.at(cluster.a)
    targets = {JOB: [quiet], "workers": [a]}
    with PrometheusServer(tmp_path / "prometheus", targets, [path]) as prometheus:
        ready(prometheus, JOB, "workers")
        code, findings = doctor(cluster, prometheus)
    assert prometheus_findings(findings)[3:5] == [
        (
            "prometheus-targets",
            "fail",
            f"job workers: targets {a} export celery-vitals metrics outside {FROM_JOB}: no "
            "celery-vitals alert sees them",
            "workers",
        ),
        ("prometheus-join", "ok", "no agent within the selector: nothing to join", None),
    ]
    assert (code, failures(findings)) == (1, ["prometheus-targets"])


def test_an_agent_whose_broker_no_exporter_polls(cluster: Cluster, tmp_path: Path) -> None:
    path = rules_file(tmp_path)
    quiet, a, b = cluster.at(cluster.quiet), cluster.at(cluster.a), cluster.at(cluster.b)
    with PrometheusServer(tmp_path / "prometheus", {JOB: [quiet, a, b]}, [path]) as prometheus:
        ready(prometheus, JOB)
        code, findings = doctor(cluster, prometheus)
    assert prometheus_findings(findings)[4] == (
        "prometheus-join",
        "fail",
        f'agents {cluster.b.hostname} (job {JOB}) report broker="elsewhere" and no exporter '
        f'within the selector polls it (exporters: broker="{cluster.broker}" ({quiet})): the '
        "rules cannot join their workers with the queues (queue alerts, CeleryWorkerDown)",
        "elsewhere",
    )
    assert (code, failures(findings)) == (1, ["prometheus-join"])


def test_tasks_counted_by_the_exporter_and_an_agent(cluster: Cluster, tmp_path: Path) -> None:
    path = rules_file(tmp_path)
    events, a = cluster.at(cluster.events), cluster.at(cluster.a)
    with PrometheusServer(tmp_path / "prometheus", {JOB: [events, a]}, [path]) as prometheus:
        ready(prometheus, JOB)
        counted(cluster, prometheus, events, a)
        code, findings = doctor(cluster, prometheus)
    assert prometheus_findings(findings)[5] == (
        "prometheus-doubled",
        "fail",
        f'broker="{cluster.broker}": tasks agent.add (queue celery) counted twice, by the '
        f"event stream of exporter {events} (job {JOB}) and by the agents of job {JOB}",
        cluster.broker,
    )
    assert (code, failures(findings)) == (1, ["prometheus-doubled"])


def test_a_target_down_and_the_alert_it_fires(
    cluster: Cluster, harness: Harness, tmp_path: Path
) -> None:
    """An exporter Prometheus scraped stops: its target is down, and CeleryExporterDown
    (its for: 0s here) fires."""
    path = rules_file(tmp_path, CeleryExporterDown="0s")
    doomed = harness.exporter(cluster.broker_url, "--no-event-stream", name="doomed")
    quiet, a, gone = cluster.at(cluster.quiet), cluster.at(cluster.a), cluster.at(doomed)
    with PrometheusServer(tmp_path / "prometheus", {JOB: [quiet, a, gone]}, [path]) as prometheus:
        ready(prometheus, JOB)
        doomed.stop()

        def firing() -> bool:
            alerts = prometheus.api("alerts")["alerts"]
            return [x["labels"]["alertname"] for x in alerts if x["state"] == "firing"] == [
                "CeleryExporterDown"
            ]

        wait_until(firing, timeout=30, what="CeleryExporterDown firing", details=prometheus.tail)
        code, findings = doctor(cluster, prometheus)
    found = prometheus_findings(findings)
    assert found[3] == (
        "prometheus-targets",
        "fail",
        f'target {gone} of job {JOB} is down: Get "http://{gone}/metrics": dial tcp '
        f"{gone}: connect: connection refused",
        gone,
    )
    assert found[-1] == (
        "prometheus-alerts",
        "fail",
        f"CeleryExporterDown (critical) is firing for "
        f"{{broker={cluster.broker}, instance={gone}, job={JOB}}}",
        "CeleryExporterDown",
    )
    [alert] = [f for f in findings if f["check"] == "prometheus-alerts"]
    assert alert["fix"] == (
        "follow its runbook: https://github.com/celery-vitals/celery-vitals/blob/main/docs/"
        "runbooks.md#celeryexporterdown"
    )
    assert (code, failures(findings)) == (1, ["prometheus-targets", "prometheus-alerts"])


def test_no_rules_loaded(cluster: Cluster, tmp_path: Path) -> None:
    quiet, a = cluster.at(cluster.quiet), cluster.at(cluster.a)
    with PrometheusServer(tmp_path / "prometheus", {JOB: [quiet, a]}) as prometheus:
        prometheus.wait_scraped(JOB)
        code, findings = doctor(cluster, prometheus)
    assert prometheus_findings(findings)[1:3] == [
        (
            "prometheus-rules",
            "fail",
            "no celery-vitals alert rule is loaded in Prometheus (0 rule groups, none with an "
            "alert of celery-vitals): no celery-vitals alert can fire",
            None,
        ),
        (
            "prometheus-targets",
            "warn",
            "no celery-vitals alert rule is loaded and no --selector given: which targets the "
            "rules would see cannot be told",
            None,
        ),
    ]
    assert (code, failures(findings)) == (1, ["prometheus-rules"])


def test_an_unreachable_or_foreign_url_is_one_failure(cluster: Cluster, tmp_path: Path) -> None:
    """Nothing listening, and the exporter's port (not Prometheus): one finding each."""
    for url, detail in (
        (
            f"{LOOPBACK}:{free_port()}",
            "cannot reach http://{url}/api/v1/rules: connection refused: nothing listens on "
            "that port",
        ),
        (
            cluster.at(cluster.quiet),
            "http://{url}/api/v1/rules answered HTTP 404 (text/plain), not as Prometheus' HTTP API",
        ),
    ):
        done = subprocess.run(
            [
                venv_executable("celery-vitals"),
                "doctor",
                "--listen",
                "1",
                "--prometheus-url",
                url,
                "--json",
            ],
            env=env(cluster.broker_url),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        findings = json.loads(done.stdout)
        [finding] = [f for f in findings if f["check"].startswith("prometheus")]
        assert (finding["status"], finding["detail"]) == ("fail", detail.format(url=url))
        assert finding["fix"].startswith("check --prometheus-url: the base URL of the Prometheus")
        assert done.returncode == 1
