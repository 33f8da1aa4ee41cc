"""``doctor --prometheus-url``'s checks on canned answers of Prometheus' HTTP API (the
shapes /api/v1/rules, /query, /targets and /alerts return), each right and wrong;
tests/alerts/test_doctor_prometheus.py runs them against a real Prometheus."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytest

from celery_vitals.doctor import FAIL, OK, WARN
from celery_vitals.doctor.prometheus import (
    ApiError,
    api,
    diagnose,
    look,
    recorded_series,
    selector_of,
)
from stack.net import free_port
from tests.support.canned_http import Answer, serving
from tests.support.rules import alert_names

URL = "http://prometheus:9090"
FILE = "/etc/prometheus/rules/celery-vitals.rules.yml"
BROKER = "redis://redis:6379/0"
SHIPPED = len(alert_names())
SELECTED = 'the rules\' selector {broker!=""} (from rule CeleryExporterMissing)'

Labels = dict[str, str]


def rule(name: str, query: str, *, kind: str = "alerting", health: str = "ok", error: str = ""):
    found: dict[str, Any] = {
        "name": name,
        "query": query,
        "health": health,
        "evaluationTime": 0.0004,
        "lastEvaluation": "2026-12-07T17:30:00.5Z",
        "type": kind,
    }
    if error:
        found["lastError"] = error
    if kind == "alerting":
        found.update(
            state="inactive",
            duration=300,
            labels={"severity": "critical"},
            annotations={"summary": "..."},
            alerts=[],
        )
    return found


RECORDING = {
    "name": "celery-vitals.recording",
    "file": FILE,
    "interval": 30,
    "rules": [
        rule(
            "queue_name:celery_queue_length:sum",
            'sum by (broker, queue_name) (celery_queue_length{broker!=""})',
            kind="recording",
        ),
    ],
}
ALERTS = {
    "name": "celery-vitals.alerts",
    "file": FILE,
    "interval": 30,
    "rules": [
        rule(
            "CeleryQueueNotDraining",
            "queue_name:celery_queue_length:sum > 0 "
            'unless on (broker) (celery_broker_up{broker!=""} == 0)',
        ),
        rule(
            "CeleryExporterMissing",
            'absent(celery_broker_up{broker!=""}) unless on () ((up == 0) * on (job, instance) '
            "group_left (broker) max by (job, instance, broker) "
            '(max_over_time(celery_broker_up{broker!=""}[1d]) * 0 + 1))',
        ),
    ],
}
OTHER = {
    "name": "node",
    "file": "/etc/prometheus/rules/node.yml",
    "interval": 30,
    "rules": [rule("NodeDown", 'up{job="node"} == 0')],
}

EXPORTER = {"job": "celery-vitals", "instance": "exporter:9808"}
AGENT = {"job": "celery-vitals-workers", "instance": "10.0.0.7:9809"}
BEAT = {"job": "celery-beat", "instance": "10.0.0.5:9809"}
PERSISTENT = "celery.beat:PersistentScheduler"
#: The agent inside one celery beat, and the count of its entries.
ONE_BEAT = ({**BEAT, "broker": BROKER, "hostname": "celerybeat@beat-0", "scheduler": PERSISTENT},)
ENTRIES = ({**BEAT, "__value__": "3"},)


def series(*labels: Labels) -> list[Labels]:
    return list(labels)


class Prometheus:
    """Canned answers of the API, each query answered by the metric it reads."""

    def __init__(
        self,
        *,
        groups: Sequence[Mapping[str, Any]] = (RECORDING, ALERTS, OTHER),
        everywhere: Iterable[Labels] = (EXPORTER, AGENT),
        selected: Iterable[Labels] | None = None,
        down: Iterable[Labels] = (),
        targets: Iterable[Mapping[str, Any]] = (),
        exporters: Iterable[Labels] = ({**EXPORTER, "broker": BROKER},),
        agents: Iterable[Labels] = ({**AGENT, "broker": BROKER, "hostname": "w1@pod-1"},),
        by_exporters: Iterable[Labels] = (),
        by_agents: Iterable[Labels] = (),
        alerts: Iterable[Mapping[str, Any]] = (),
        beats: Iterable[Labels] = ONE_BEAT,
        entries: Iterable[Labels] = ENTRIES,
        shared: Iterable[Labels] = (),
    ) -> None:
        self.groups = list(groups)
        self.everywhere = list(everywhere)
        self.selected = self.everywhere if selected is None else list(selected)
        self.down, self.targets = list(down), list(targets)
        self.exporters, self.agents = list(exporters), list(agents)
        self.by_exporters, self.by_agents = list(by_exporters), list(by_agents)
        self.alerts = list(alerts)
        self.beats, self.entries, self.shared = list(beats), list(entries), list(shared)
        self.asked: list[tuple[str, dict[str, str]]] = []

    def __call__(self, path: str, params: Mapping[str, str]) -> Any:
        self.asked.append((path, dict(params)))
        if path == "rules":
            return {"groups": self.groups}
        if path == "targets":
            return {"activeTargets": self.targets, "droppedTargets": []}
        if path == "alerts":
            return {"alerts": self.alerts}
        assert path == "query", path
        return {
            "resultType": "vector",
            "result": [
                {
                    "metric": {k: v for k, v in labels.items() if k != "__value__"},
                    "value": [1796664600.5, labels.get("__value__", "1")],
                }
                for labels in self.answer(params["query"])
            ],
        }

    def answer(self, query: str) -> list[Labels]:
        if query == "count by (job, instance) (celery_vitals_build_info)":
            return self.everywhere
        if query.startswith("count by (job, instance) (celery_vitals_build_info{"):
            return self.selected
        if query.startswith("(up"):
            return self.down
        if query.startswith("celery_broker_up"):
            return self.exporters
        if query.startswith("celery_vitals_agent_info"):
            return self.agents
        if query.startswith("celery_beat_info"):
            return self.beats
        if query.startswith("count by (job, instance) (celery_beat_entry_interval_seconds"):
            return self.entries
        if query.startswith("count by (broker, entry) (count by (broker, entry, instance)"):
            return self.shared
        if "celery_vitals_event_stream_up" in query:
            return self.by_exporters
        if "celery_vitals_agent_info" in query:
            return self.by_agents
        raise AssertionError(f"unexpected query {query}")


def findings(prometheus: Prometheus, selector: str | None = None) -> list[tuple[str, str, str]]:
    view = look(URL, selector, get=prometheus)
    return [(f.check, f.status, f.detail) for f in diagnose(view)]


def of(check: str, prometheus: Prometheus, selector: str | None = None) -> list[tuple[str, str]]:
    return [
        (status, detail) for name, status, detail in findings(prometheus, selector) if name == check
    ]


def test_a_right_setup_is_all_ok() -> None:
    assert findings(Prometheus()) == [
        ("prometheus", OK, f"{URL}: the HTTP API answered"),
        (
            "prometheus-rules",
            OK,
            f"2 of the {SHIPPED} celery-vitals alerts loaded "
            "(groups celery-vitals.alerts, celery-vitals.recording)",
        ),
        ("prometheus-rule-eval", OK, "3 celery-vitals rules evaluate without errors"),
        (
            "prometheus-targets",
            OK,
            f"{SELECTED} matches the targets that export celery-vitals metrics, all up: "
            "exporters exporter:9808, agents 10.0.0.7:9809",
        ),
        (
            "prometheus-join",
            OK,
            f'every agent\'s broker has an exporter: broker="{BROKER}" (exporter:9808)',
        ),
        (
            "prometheus-doubled",
            OK,
            "no task is counted by both an exporter's event stream and an agent",
        ),
        (
            "prometheus-beat",
            OK,
            f'broker="{BROKER}": one celery beat, celerybeat@beat-0 at 10.0.0.5:9809 (job '
            f"celery-beat; scheduler {PERSISTENT}, 3 entries)",
        ),
        ("prometheus-alerts", OK, "no celery-vitals alert is firing"),
    ]


def test_the_queries_carry_the_rules_selector() -> None:
    prometheus = Prometheus(down=[AGENT], targets=[{"labels": AGENT, "lastError": "x"}])
    look(URL, get=prometheus)
    s = '{broker!=""}'
    assert prometheus.asked == [
        ("rules", {}),
        ("query", {"query": "count by (job, instance) (celery_vitals_build_info)"}),
        ("query", {"query": f"count by (job, instance) (celery_vitals_build_info{s})"}),
        (
            "query",
            {
                "query": f"(up{s} == 0) or ((up == 0) and on (job, instance) "
                f"max_over_time(celery_vitals_build_info{s}[1d]))"
            },
        ),
        ("targets", {"state": "active"}),
        ("query", {"query": f"celery_broker_up{s}"}),
        ("query", {"query": f"celery_vitals_agent_info{s}"}),
        ("query", {"query": f"celery_beat_info{s}"}),
        (
            "query",
            {"query": f"count by (job, instance) (celery_beat_entry_interval_seconds{s})"},
        ),
        (
            "query",
            {
                "query": "count by (broker, entry) (count by (broker, entry, instance) "
                f"(celery_beat_entry_interval_seconds{s})) > 1"
            },
        ),
        (
            "query",
            {
                "query": "group by (broker, name, queue_name, job, instance) "
                f"(celery_task_received_total{s} and on (job, instance) "
                f"(celery_vitals_event_stream_up{s} == 1))"
            },
        ),
        (
            "query",
            {
                "query": "group by (broker, name, queue_name, job) "
                f"(celery_task_received_total{s} and on (job, instance) "
                f"celery_vitals_agent_info{s})"
            },
        ),
        ("alerts", {}),
    ]


def test_a_selector_given_wins_and_may_come_with_braces() -> None:
    prometheus = Prometheus()
    view = look(URL, '{job="celery"}', get=prometheus)
    assert (view.selector, view.selector_from) == ('job="celery"', "--selector")
    assert ("query", {"query": 'celery_broker_up{job="celery"}'}) in prometheus.asked


def test_no_rules_loaded() -> None:
    prometheus = Prometheus(groups=[OTHER])
    assert findings(prometheus) == [
        ("prometheus", OK, f"{URL}: the HTTP API answered"),
        (
            "prometheus-rules",
            FAIL,
            "no celery-vitals alert rule is loaded in Prometheus (1 rule groups, none with an "
            "alert of celery-vitals): no celery-vitals alert can fire",
        ),
        (
            "prometheus-targets",
            WARN,
            "no celery-vitals alert rule is loaded and no --selector given: which targets the "
            "rules would see cannot be told",
        ),
        ("prometheus-alerts", OK, "no celery-vitals alert is firing"),
    ]
    # told the selector, the targets are checked all the same
    assert of("prometheus-targets", prometheus, 'broker!=""')[0][0] == OK


def test_alerts_without_their_recording_rules_can_never_fire() -> None:
    assert of("prometheus-rules", Prometheus(groups=[ALERTS])) == [
        (
            FAIL,
            "alerts read recorded series that no loaded rule records: "
            "queue_name:celery_queue_length:sum (CeleryQueueNotDraining): those alerts can "
            "never fire",
        )
    ]


def test_rules_loaded_twice_page_twice() -> None:
    again = {**ALERTS, "file": "/etc/prometheus/rules/copy.yml"}
    assert of("prometheus-rules", Prometheus(groups=[RECORDING, ALERTS, again])) == [
        (
            WARN,
            f"group celery-vitals.alerts is loaded from 2 files ({FILE}, "
            "/etc/prometheus/rules/copy.yml): every alert in it fires, and pages, once per file",
        ),
        (
            OK,
            f"2 of the {SHIPPED} celery-vitals alerts loaded "
            "(groups celery-vitals.alerts, celery-vitals.recording)",
        ),
    ]


def test_a_rule_that_fails_to_evaluate_and_rules_not_evaluated_yet() -> None:
    error = 'found duplicate series for the match group {broker="x"} on the right hand-side'
    broken = {
        **RECORDING,
        "rules": [
            rule(
                "queue_name:celery_queue_length:sum",
                "sum(x)",
                kind="recording",
                health="err",
                error=error,
            )
        ],
    }
    assert of("prometheus-rule-eval", Prometheus(groups=[broken, ALERTS])) == [
        (
            FAIL,
            "rule queue_name:celery_queue_length:sum (group celery-vitals.recording) fails to "
            f"evaluate: {error}",
        )
    ]
    fresh = {**RECORDING, "rules": [{**RECORDING["rules"][0], "health": "unknown"}]}
    assert of("prometheus-rule-eval", Prometheus(groups=[fresh, ALERTS])) == [
        (OK, "2 celery-vitals rules evaluate without errors (1 not evaluated yet)")
    ]


def test_a_selector_that_matches_nothing() -> None:
    by_job = {
        **ALERTS,
        "rules": [rule("CeleryExporterMissing", 'absent(celery_broker_up{job="celery-vitals"})')],
    }
    prometheus = Prometheus(
        groups=[RECORDING, by_job],
        everywhere=[
            {"job": "celery", "instance": "a:9808"},
            {"job": "celery", "instance": "b:9809"},
        ],
        selected=[],
        exporters=[],
        agents=[],
    )
    assert of("prometheus-targets", prometheus) == [
        (
            FAIL,
            'the rules\' selector {job="celery-vitals"} (from rule CeleryExporterMissing) '
            "matches none of the targets that export celery-vitals metrics (jobs celery): no "
            "celery-vitals alert can fire",
        )
    ]
    view = look(URL, get=prometheus)
    [finding] = [f for f in diagnose(view) if f.check == "prometheus-targets"]
    assert finding.fix == (
        "make the rules' selector see them: scrape them in a job it matches, or generate the "
        "rules with a selector that matches them (`celery-vitals rules --config` with "
        "`selector:`, or the chart's prometheusRule.selector)"
    )


def test_targets_outside_the_selector_by_job_and_targets_down() -> None:
    old = {"job": "legacy", "instance": "old:9808"}
    gone = {"job": "celery-vitals-workers", "instance": "10.0.0.8:9809"}
    prometheus = Prometheus(
        everywhere=[EXPORTER, AGENT, old],
        selected=[EXPORTER, AGENT],
        down=[gone],
        targets=[
            {"labels": AGENT, "health": "up", "lastError": ""},
            {
                "labels": gone,
                "health": "down",
                "lastError": 'Get "http://10.0.0.8:9809/metrics": dial tcp 10.0.0.8:9809: '
                "connect: connection refused",
            },
        ],
    )
    view = look(URL, get=prometheus)
    found = [
        (f.status, f.detail, f.fix, f.subject)
        for f in diagnose(view)
        if f.check == "prometheus-targets"
    ]
    assert found == [
        (
            FAIL,
            f"job legacy: targets old:9808 export celery-vitals metrics outside {SELECTED}: no "
            "celery-vitals alert sees them",
            "make the rules' selector see them: run a celery-vitals there that labels every "
            "series with broker (older versions do not), or generate the rules with a selector "
            "that matches them (`celery-vitals rules --config` with `selector:`, or the "
            "chart's prometheusRule.selector)",
            "legacy",
        ),
        (
            FAIL,
            "target 10.0.0.8:9809 of job celery-vitals-workers is down: Get "
            '"http://10.0.0.8:9809/metrics": dial tcp 10.0.0.8:9809: connect: connection refused',
            "check that the exporter or agent there runs and that Prometheus reaches it "
            "(address, port, network policy, TLS and basic auth of the scrape config)",
            "10.0.0.8:9809",
        ),
    ]


def test_no_target_at_all() -> None:
    prometheus = Prometheus(everywhere=[], exporters=[], agents=[])
    assert of("prometheus-targets", prometheus) == [
        (
            FAIL,
            "no target exports celery_vitals_build_info: Prometheus scrapes no celery-vitals "
            "exporter or agent",
        )
    ]


def test_an_agent_whose_broker_no_exporter_polls() -> None:
    other = {"job": "celery-vitals-workers", "instance": "10.0.0.9:9809"}
    prometheus = Prometheus(
        everywhere=[EXPORTER, AGENT, other],
        agents=[
            {**AGENT, "broker": BROKER, "hostname": "w1@pod-1"},
            {**other, "broker": "redis://redis.prod.svc:6379/0", "hostname": "w2@pod-2"},
        ],
    )
    view = look(URL, get=prometheus)
    [finding] = [f for f in diagnose(view) if f.check == "prometheus-join"]
    assert (finding.status, finding.detail, finding.fix, finding.subject) == (
        FAIL,
        'agents w2@pod-2 (job celery-vitals-workers) report broker="redis://redis.prod.svc:6379/0" '
        f'and no exporter within the selector polls it (exporters: broker="{BROKER}" '
        "(exporter:9808)): the rules cannot join their workers with the queues (queue "
        "alerts, CeleryWorkerDown)",
        "set CELERY_VITALS_BROKER_NAME (--broker-name) to the same value in the exporter and "
        "in the workers' agents, or run and scrape `celery-vitals serve` for that broker",
        "redis://redis.prod.svc:6379/0",
    )


def test_agents_without_an_exporter_at_all() -> None:
    assert of("prometheus-join", Prometheus(exporters=[])) == [
        (
            FAIL,
            f'agents w1@pod-1 (job celery-vitals-workers) report broker="{BROKER}" and no '
            "exporter within the selector polls it (exporters: none): the rules cannot join "
            "their workers with the queues (queue alerts, CeleryWorkerDown)",
        )
    ]


def test_tasks_counted_by_an_exporter_and_by_agents() -> None:
    task = {"broker": BROKER, "name": "billing.charge", "queue_name": "billing"}
    other = {"broker": BROKER, "name": "mail.send", "queue_name": "celery"}
    prometheus = Prometheus(
        by_exporters=[{**task, **EXPORTER}, {**other, **EXPORTER}],
        by_agents=[{**task, "job": AGENT["job"]}],
    )
    view = look(URL, get=prometheus)
    [finding] = [f for f in diagnose(view) if f.check == "prometheus-doubled"]
    assert (finding.status, finding.detail, finding.fix, finding.subject) == (
        FAIL,
        f'broker="{BROKER}": tasks billing.charge (queue billing) counted twice, by the event '
        "stream of exporter exporter:9808 (job celery-vitals) and by the agents of job "
        "celery-vitals-workers",
        "run that exporter with --no-event-stream (CELERY_VITALS_EVENT_STREAM=false): the "
        "agents own task and worker metrics; or remove the agents",
        BROKER,
    )


def test_firing_alerts_by_severity() -> None:
    def alert(name: str, severity: str, state: str = "firing", **labels: str) -> dict[str, Any]:
        return {
            "labels": {"alertname": name, "severity": severity, **labels},
            "annotations": {"runbook_url": f"https://runbooks/#{name.lower()}"},
            "state": state,
            "activeAt": "2026-12-07T17:00:00Z",
            "value": "1e+00",
        }

    prometheus = Prometheus(
        alerts=[
            alert("CeleryQueueNotDraining", "critical", broker=BROKER, queue_name="billing"),
            alert("CeleryQueueNotDraining", "critical", broker=BROKER, queue_name="mail"),
            alert("CeleryWorkerFlapping", "warning", broker=BROKER, hostname="w1@pod-1"),
            alert("CeleryBrokerDown", "critical", "pending", broker=BROKER),
            alert("NodeDown", "critical", instance="n1"),
        ]
    )
    view = look(URL, get=prometheus)
    found = [(f.status, f.detail, f.fix) for f in diagnose(view) if f.check == "prometheus-alerts"]
    assert found == [
        (
            FAIL,
            "CeleryQueueNotDraining (critical) is firing for "
            f"{{broker={BROKER}, queue_name=billing}}, {{broker={BROKER}, queue_name=mail}}",
            "follow its runbook: https://runbooks/#celeryqueuenotdraining",
        ),
        (
            WARN,
            f"CeleryWorkerFlapping (warning) is firing for {{broker={BROKER}, hostname=w1@pod-1}}",
            "follow its runbook: https://runbooks/#celeryworkerflapping",
        ),
    ]


def test_a_prometheus_that_cannot_be_asked_is_one_failure() -> None:
    url = f"http://admin:s3cret@127.0.0.1:{free_port()}"
    [finding] = diagnose(look(url))
    assert (finding.check, finding.status) == ("prometheus", FAIL)
    assert finding.detail == (
        f"cannot reach {url.replace('admin:s3cret@', '')}/api/v1/rules: connection refused: "
        "nothing listens on that port"
    )
    assert finding.fix.startswith("check --prometheus-url: the base URL of the Prometheus")


def test_a_bad_selector_is_named_with_prometheus_error() -> None:
    def refusing(path: str, params: Mapping[str, str]) -> Any:
        if path == "rules":
            return {"groups": [RECORDING, ALERTS]}
        raise ApiError(f"{URL}/api/v1/query ({params['query']}) failed: bad_data: parse error")

    [finding] = diagnose(look(URL, "job=", get=refusing))
    assert (finding.status, finding.detail, finding.fix) == (
        FAIL,
        f"{URL}/api/v1/query (count by (job, instance) (celery_vitals_build_info)) failed: "
        "bad_data: parse error",
        'check --selector: label matchers such as job=~"celery-vitals.*"',
    )


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (
            (200, "text/html; charset=utf-8", "<html>Grafana</html>"),
            "{url}/api/v1/query answered HTTP 200 (text/html), not as Prometheus' HTTP API",
        ),
        (
            (404, "", "404 page not found"),
            "{url}/api/v1/query answered HTTP 404 (no Content-Type), not as Prometheus' HTTP API",
        ),
        (
            (401, "text/plain", "Unauthorized"),
            "{url}/api/v1/query answered HTTP 401: it needs credentials "
            "(http://user:password@host:9090)",
        ),
        (
            (
                400,
                "application/json",
                json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error"}),
            ),
            "{url}/api/v1/query (up{{job=}}) failed: bad_data: parse error",
        ),
    ],
    ids=["html", "404", "401", "error"],
)
def test_answers_that_are_not_the_api(answer: Answer, error: str) -> None:
    with serving({"/prefix/api/v1/query": answer}) as (url, _), pytest.raises(ApiError) as caught:
        api(f"{url}/prefix")("query", {"query": "up{job=}"})
    assert str(caught.value) == error.format(url=f"{url}/prefix")


def test_the_api_answers_its_data_with_basic_auth_and_the_query() -> None:
    body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}})
    with serving({"/api/v1/query": (200, "application/json", body)}) as (url, asked):
        authed = url.replace("http://", "http://admin:s%20cret@")
        data = api(authed)("query", {"query": 'up{job="a b"}'})
    assert data == {"resultType": "vector", "result": []}
    token = base64.b64encode(b"admin:s cret").decode()
    assert asked == [("/api/v1/query?query=up%7Bjob%3D%22a+b%22%7D", f"Basic {token}")]


@pytest.mark.parametrize(
    ("query", "selector"),
    [
        ('up{job=~".*celery-vitals.*"} == 0', 'job=~".*celery-vitals.*"'),
        ('absent(celery_broker_up{broker!=""}) unless on () (up == 0)', 'broker!=""'),
        ('x{job="a}b", queue_name!~"{x}"} > 0', 'job="a}b", queue_name!~"{x}"'),
        ("up == 0 unless on (job) celery_broker_up", ""),
        ("sum by (job) (rate(x[5m]))", ""),
    ],
)
def test_the_selector_is_read_from_the_first_series_selector(query: str, selector: str) -> None:
    assert selector_of(query) == selector


def test_recorded_series_are_names_with_a_colon_outside_strings() -> None:
    query = (
        'name_queue_name:celery_task_failed:ratio_rate5m{name!~"a:b"} > 0.1 and on (broker) '
        "queue_name:celery_queue_length:sum offset 5m + rate(x[5m:1m])"
    )
    assert recorded_series(query) == {
        "name_queue_name:celery_task_failed:ratio_rate5m",
        "queue_name:celery_queue_length:sum",
    }


# -- celery beat -----------------------------------------------------------------------------

NO_BEAT = (
    "no celery beat agent within the selector (celery_beat_info): CeleryBeatDown cannot page "
    "and CeleryPeriodicTaskMissed watches only the tasks of periodic_tasks. Where celery beat "
    "runs (or a worker with -B), call celery_vitals.agent.install(app) in the app module it "
    "loads and scrape its agent"
)


def test_no_beat_agent_is_said_and_its_entries_are_not_asked() -> None:
    prometheus = Prometheus(beats=[], entries=[])
    assert of("prometheus-beat", prometheus) == [(OK, NO_BEAT)]
    asked = [params.get("query", "") for _, params in prometheus.asked]
    assert not [query for query in asked if "celery_beat_entry" in query]


def test_two_beats_of_one_schedule_fail_and_name_their_schedulers() -> None:
    other = {"job": "workers", "instance": "10.0.0.7:9809"}
    prometheus = Prometheus(
        beats=[
            *ONE_BEAT,
            {
                **other,
                "broker": BROKER,
                "hostname": "w1@pod-1",
                "scheduler": "django_celery_beat.schedulers:DatabaseScheduler",
            },
        ],
        entries=[*ENTRIES, {**other, "__value__": "2"}],
        shared=[{"broker": BROKER, "entry": "sync-orders"}, {"broker": BROKER, "entry": "nightly"}],
    )
    view = look(URL, get=prometheus)
    [finding] = [f for f in diagnose(view) if f.check == "prometheus-beat"]
    assert (finding.status, finding.detail, finding.fix, finding.subject) == (
        FAIL,
        f'broker="{BROKER}": 2 celery beats serve the same entries nightly, sync-orders: '
        f"celerybeat@beat-0 at 10.0.0.5:9809 (job celery-beat; scheduler {PERSISTENT}, 3 "
        "entries); w1@pod-1 at 10.0.0.7:9809 (job workers; scheduler "
        "django_celery_beat.schedulers:DatabaseScheduler, 2 entries); each sends them, so "
        "their tasks run 2 times (CeleryBeatDuplicate)",
        "run exactly one beat per schedule: one replica with a Recreate deploy strategy, -B on "
        "one worker only (never beside a separate celery beat), or a scheduler that takes a "
        "lock (RedBeat)",
        BROKER,
    )


def test_two_beats_with_schedules_of_their_own_and_another_brokers_beat() -> None:
    """Two apps sharing a broker, each with its own beat; a second broker with its own."""
    mail = {"job": "celery-beat", "instance": "10.0.0.6:9809"}
    billing = {"job": "billing-beat", "instance": "10.1.0.5:9809"}
    prometheus = Prometheus(
        beats=[
            *ONE_BEAT,
            {**mail, "broker": BROKER, "hostname": "celerybeat@mail-0", "scheduler": PERSISTENT},
            {
                **billing,
                "broker": "redis://billing:6379/0",
                "hostname": "celerybeat@billing-0",
                "scheduler": PERSISTENT,
            },
        ],
        entries=[*ENTRIES, {**mail, "__value__": "1"}, {**billing, "__value__": "12"}],
    )
    assert of("prometheus-beat", prometheus) == [
        (
            OK,
            'broker="redis://billing:6379/0": one celery beat, celerybeat@billing-0 at '
            f"10.1.0.5:9809 (job billing-beat; scheduler {PERSISTENT}, 12 entries)",
        ),
        (
            OK,
            f'broker="{BROKER}": 2 celery beats, no entry served by two: celerybeat@beat-0 at '
            f"10.0.0.5:9809 (job celery-beat; scheduler {PERSISTENT}, 3 entries); "
            f"celerybeat@mail-0 at 10.0.0.6:9809 (job celery-beat; scheduler {PERSISTENT}, 1 "
            "entry)",
        ),
    ]
