"""Autoscaling Celery workers on celery-vitals' signals: the chart's KEDA ScaledObject
(workerAutoscaling) and the prometheus-adapter example (deploy/autoscaling/).

The ScaledObject is off by default, renders exactly the fields KEDA reads, and refuses
incomplete values with one line naming the value. Its queries, and the adapter
example's (the same text for the same values), use only catalogue metrics and labels,
pass promtool, and give exact values on Prometheus' engine (promtool test rules, edge
cases) and on a real Prometheus scraping an exporter's and agents' /metrics.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from celery_vitals.catalogue import BY_NAME, SPECS
from stack.prometheus import PrometheusServer
from tests.support import tools
from tests.support.canned_http import serving
from tests.support.dashboards import metric_names
from tests.support.deploy import CHART, ROOT, helm_template

ADAPTER_RULES = ROOT / "deploy" / "autoscaling" / "prometheus-adapter-rules.yaml"
ADAPTER_HPA = ROOT / "deploy" / "autoscaling" / "hpa-prometheus-adapter.yaml"

BROKER = "redis://redis:6379/0"
PROMETHEUS = "http://prometheus-operated.monitoring.svc:9090"
#: The example of deploy/autoscaling/ as chart values.
VALUES: dict[str, Any] = {
    "workerAutoscaling": {
        "enabled": True,
        "deployment": "payments-worker",
        "namespace": "shop",
        "queues": ["emails", "reports"],
        "broker": BROKER,
        "prometheus": {"serverAddress": PROMETHEUS},
    }
}

B = f'broker="{BROKER}"'
QUEUES = f'{B}, queue_name=~"emails|reports"'
WORKERS = f'{B}, namespace="shop", pod=~"payments-worker-[a-z0-9]+-[a-z0-9]+"'
BACKLOG_QUERY = f"""(
  sum(max by (queue_name) (celery_queue_length{{{QUEUES}}}))
  or vector(0)
)
and on () (max(celery_broker_up{{{B}}}) == 1)
and on () (count(max by (queue_name) (celery_queue_exists{{{QUEUES}}})) == 2)"""
UTILISATION_QUERY = f"""(
  sum(celery_worker_pool_busy_processes{{{WORKERS}}})
  /
  avg(
    celery_worker_pool_processes{{{WORKERS}}}
    and celery_worker_pool_busy_processes{{{WORKERS}}}
  )
)
or vector(0)"""

#: The HPA behaviour values.yaml ships: up at once, down slowly.
BEHAVIOR = {
    "scaleUp": {
        "stabilizationWindowSeconds": 0,
        "selectPolicy": "Max",
        "policies": [
            {"type": "Percent", "value": 100, "periodSeconds": 30},
            {"type": "Pods", "value": 4, "periodSeconds": 30},
        ],
    },
    "scaleDown": {
        "stabilizationWindowSeconds": 300,
        "selectPolicy": "Max",
        "policies": [{"type": "Percent", "value": 25, "periodSeconds": 60}],
    },
}


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def _values_file(tmp_path: Path, changes: dict[str, Any] | None = None) -> str:
    """VALUES with ``changes`` under workerAutoscaling, as a file (--set turns 0.5 into a
    string)."""
    values = _merged(VALUES, {"workerAutoscaling": changes or {}})
    path = tmp_path / "autoscaling-values.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return str(path)


def _scaled_objects(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == "ScaledObject"]


def _scaled_object(helm: str, tmp_path: Path, changes: dict[str, Any] | None = None) -> Any:
    (scaled,) = _scaled_objects(helm_template(helm, "-f", _values_file(tmp_path, changes)))
    return scaled


def _triggers(scaled: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {trigger["name"]: trigger for trigger in scaled["spec"]["triggers"]}


def _chart_queries(helm: str, tmp_path: Path) -> dict[str, str]:
    """The chart's two queries for VALUES, by trigger name."""
    triggers = _triggers(_scaled_object(helm, tmp_path))
    return {name: trigger["metadata"]["query"] for name, trigger in triggers.items()}


def _adapter_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = yaml.safe_load(ADAPTER_RULES.read_text(encoding="utf-8"))[
        "rules"
    ]["external"]
    return rules


def _adapter_queries() -> dict[str, str]:
    """The example's queries by External metric name, as the adapter sends them (no
    selector from the HPA: nothing to substitute but the series)."""
    return {
        rule["name"]["as"]: rule["metricsQuery"].replace(
            "<<.Series>>", rule["seriesQuery"].split("{")[0]
        )
        for rule in _adapter_rules()
    }


# -- the ScaledObject ----------------------------------------------------------------------


def test_no_scaled_object_unless_enabled(helm: str, tmp_path: Path) -> None:
    assert _scaled_objects(helm_template(helm)) == []
    off = _values_file(tmp_path, {"enabled": False})
    kinds = sorted(o["kind"] for o in helm_template(helm, "-f", off))
    assert kinds == ["Deployment", "Secret", "Service"]


def test_scaled_object_scales_the_named_deployment_on_backlog_and_utilisation(
    helm: str, tmp_path: Path
) -> None:
    scaled = _scaled_object(helm, tmp_path)
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["metadata"]["name"] == "test-celery-vitals-payments-worker"
    assert scaled["metadata"]["namespace"] == "shop"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "payments-worker",
    }
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 10)
    assert (spec["pollingInterval"], spec["cooldownPeriod"]) == (30, 300)
    assert spec["fallback"] == {
        "failureThreshold": 3,
        "replicas": 2,
        "behavior": "currentReplicasIfHigher",
    }
    assert spec["advanced"] == {"horizontalPodAutoscalerConfig": {"behavior": BEHAVIOR}}
    assert spec["triggers"] == [
        {
            "type": "prometheus",
            "name": "backlog",
            "metricType": "AverageValue",
            "metadata": {
                "serverAddress": PROMETHEUS,
                "query": BACKLOG_QUERY,
                "threshold": "20",
                "activationThreshold": "0",
                "ignoreNullValues": "false",
            },
        },
        {
            "type": "prometheus",
            "name": "pool-utilisation",
            "metricType": "AverageValue",
            "metadata": {
                "serverAddress": PROMETHEUS,
                "query": UTILISATION_QUERY,
                "threshold": "0.75",
                "ignoreNullValues": "false",
            },
        },
    ]


def test_values_reach_the_scaled_object(helm: str, tmp_path: Path) -> None:
    scaled = _scaled_object(
        helm,
        tmp_path,
        {
            "namespace": "",
            "minReplicas": 0,
            "maxReplicas": 40,
            "pollingInterval": 10,
            "cooldownPeriod": 600,
            "backlog": {"targetPerReplica": 80, "activation": 5},
            "poolUtilisation": {"target": 0.9},
            "fallback": {"failureThreshold": 5, "replicas": 6, "behavior": "static"},
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 900}},
            "prometheus": {"authModes": "basic", "authenticationRef": "prometheus-auth"},
            "labels": {"team": "payments"},
            "annotations": {"autoscaling.keda.sh/paused": "false"},
        },
    )
    spec = scaled["spec"]
    assert scaled["metadata"]["namespace"] == "default"  # the release's
    assert scaled["metadata"]["labels"]["team"] == "payments"
    assert scaled["metadata"]["annotations"] == {"autoscaling.keda.sh/paused": "false"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (0, 40)
    assert (spec["pollingInterval"], spec["cooldownPeriod"]) == (10, 600)
    assert spec["fallback"] == {"failureThreshold": 5, "replicas": 6, "behavior": "static"}
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 900
    assert behavior["scaleUp"] == BEHAVIOR["scaleUp"]
    triggers = _triggers(scaled)
    backlog, utilisation = triggers["backlog"], triggers["pool-utilisation"]
    assert (backlog["metadata"]["threshold"], backlog["metadata"]["activationThreshold"]) == (
        "80",
        "5",
    )
    assert utilisation["metadata"]["threshold"] == "0.9"
    for trigger in (backlog, utilisation):
        assert trigger["metadata"]["authModes"] == "basic"
        assert trigger["authenticationRef"] == {"name": "prometheus-auth"}
    # the default worker matchers follow the namespace the ScaledObject goes to
    assert 'namespace="default", pod=~"payments-worker-' in utilisation["metadata"]["query"]


def test_queue_names_are_escaped_and_the_broker_defaults_to_the_exporters(
    helm: str, tmp_path: Path
) -> None:
    """A queue name is a literal, not a regex; without workerAutoscaling.broker the
    exporter's --broker-name (config) names the broker."""
    values = _merged(
        VALUES,
        {
            "config": {"broker-name": "shop"},
            "workerAutoscaling": {"broker": "", "queues": ["reports.high", "a+b", "c"]},
        },
    )
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    (scaled,) = _scaled_objects(helm_template(helm, "-f", str(path)))
    query = _triggers(scaled)["backlog"]["metadata"]["query"]
    assert query == BACKLOG_QUERY.replace(BROKER, "shop").replace(
        '"emails|reports"', '"reports\\\\.high|a\\\\+b|c"'
    ).replace("== 2", "== 3")


def test_utilisation_can_be_left_out_and_its_workers_chosen(helm: str, tmp_path: Path) -> None:
    without = _scaled_object(helm, tmp_path, {"poolUtilisation": {"enabled": False}})
    assert [t["name"] for t in without["spec"]["triggers"]] == ["backlog"]
    chosen = _scaled_object(
        helm,
        tmp_path,
        {
            "poolUtilisation": {"workerSelector": 'job="shop/workers"'},
            "fallback": {"behavior": ""},
        },
    )
    assert "behavior" not in chosen["spec"]["fallback"]  # KEDA before 2.17
    query = _triggers(chosen)["pool-utilisation"]["metadata"]["query"]
    assert query == UTILISATION_QUERY.replace(WORKERS, f'{B}, job="shop/workers"')


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"deployment": ""}, "workerAutoscaling.deployment: name the Celery worker Deployment"),
        ({"queues": []}, "workerAutoscaling.queues: list the queues"),
        ({"broker": ""}, "workerAutoscaling.broker: set the broker label"),
        (
            {"prometheus": {"serverAddress": ""}},
            "workerAutoscaling.prometheus.serverAddress: set the URL of the Prometheus",
        ),
        (
            {"minReplicas": 5, "maxReplicas": 3},
            "workerAutoscaling.minReplicas (5) is above maxReplicas (3)",
        ),
        (
            {"fallback": {"replicas": 12}},
            "workerAutoscaling.fallback.replicas (12) is above maxReplicas (10)",
        ),
        (
            {"prometheus": {"authModes": "bearer"}},
            "workerAutoscaling.prometheus.authModes needs authenticationRef",
        ),
    ],
    ids=["deployment", "queues", "broker", "prometheus", "min-max", "fallback", "auth"],
)
def test_incomplete_values_fail_naming_the_value(
    helm: str, tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    result = subprocess.run(
        [helm, "template", "test", str(CHART), "-f", _values_file(tmp_path, changes)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    "changes",
    [
        {"backlog": {"targetPerReplica": 0}},
        {"poolUtilisation": {"target": 1.5}},
        {"fallback": {"behavior": "currentReplicasIfBigger"}},
        {"minReplicas": -1},
        {"queues": [""]},
        {"prometheus": {"serverAddress": "prometheus:9090"}},
        {"targetPerReplica": 20},  # not under backlog
    ],
)
def test_schema_rejects_bad_autoscaling_values(
    helm: str, tmp_path: Path, changes: dict[str, Any]
) -> None:
    result = subprocess.run(
        [helm, "template", "test", str(CHART), "-f", _values_file(tmp_path, changes)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "schema" in result.stderr, result.stderr


def test_helm_lint_with_autoscaling(helm: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [helm, "lint", "--strict", str(CHART), "-f", _values_file(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- the prometheus-adapter example ----------------------------------------------------------


def test_adapter_example_runs_the_charts_queries(helm: str, tmp_path: Path) -> None:
    """The same scaling without KEDA: for the example's values the adapter rules hold the
    chart's queries, and the HPA the chart's targets, bounds and behaviour."""
    chart = _chart_queries(helm, tmp_path)
    adapter = _adapter_queries()
    assert adapter == {
        "celery_payments_worker_backlog": chart["backlog"],
        "celery_payments_worker_busy_workers": chart["pool-utilisation"],
    }
    for rule in _adapter_rules():
        series = rule["seriesQuery"].split("{")[0]
        assert rule["name"]["matches"] == f"^{series}$"
        assert series in metric_names(rule["metricsQuery"])
        assert rule["resources"] == {"namespaced": False}
    hpa = yaml.safe_load(ADAPTER_HPA.read_text(encoding="utf-8"))
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["kind"] == "HorizontalPodAutoscaler"
    assert hpa["metadata"]["namespace"] == "shop"
    spec = hpa["spec"]
    scaled = _scaled_object(helm, tmp_path)["spec"]
    assert spec["scaleTargetRef"] == scaled["scaleTargetRef"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (
        scaled["minReplicaCount"],
        scaled["maxReplicaCount"],
    )
    targets = {
        metric["external"]["metric"]["name"]: metric["external"]["target"]
        for metric in spec["metrics"]
    }
    assert targets == {
        "celery_payments_worker_backlog": {"type": "AverageValue", "averageValue": "20"},
        "celery_payments_worker_busy_workers": {"type": "AverageValue", "averageValue": "750m"},
    }
    assert all("selector" not in m["external"]["metric"] for m in spec["metrics"])
    assert (
        spec["behavior"]
        == BEHAVIOR
        == scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    )


# -- the queries: catalogue, promtool, Prometheus ------------------------------------------

#: Labels a series has beside the catalogue's: every series' broker, and the pod and
#: namespace a PodMonitor (Kubernetes service discovery) gives each agent's series.
TARGET_LABELS = {"broker", "namespace", "pod", "job", "instance"}
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\{([^}]*)\}")
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"')


def _selectors(query: str) -> Iterator[tuple[str, list[str]]]:
    """(metric, label names) of every selector with braces."""
    for match in _SELECTOR.finditer(query):
        yield match.group(1), _MATCHER.findall(match.group(2))


def _doc_queries() -> list[str]:
    """The PromQL blocks of docs/deploy.md's "Autoscaling the workers", each query of a
    block (blank-line separated) on its own."""
    text = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    section = text.split("\n## Autoscaling the workers\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```promql\n(.*?)\n```", section, flags=re.DOTALL)
    return [query.strip() for block in blocks for query in block.split("\n\n")]


def test_the_docs_show_the_charts_queries(helm: str, tmp_path: Path) -> None:
    """docs/deploy.md explains the queries the chart renders for its example values."""
    backlog, utilisation, *choosing = _doc_queries()
    chart = _chart_queries(helm, tmp_path)
    assert (backlog, utilisation) == (chart["backlog"], chart["pool-utilisation"])
    assert len(choosing) == 2  # the mean runtime and the pool size


def _all_queries(helm: str, tmp_path: Path) -> dict[str, str]:
    """Every query shipped: the chart's, the adapter example's, the docs' for the targets."""
    chart = {f"chart {name}": query for name, query in _chart_queries(helm, tmp_path).items()}
    adapter = {f"adapter {name}": query for name, query in _adapter_queries().items()}
    docs = {f"docs {index}": query for index, query in enumerate(_doc_queries()[2:])}
    return chart | adapter | docs


def test_queries_use_catalogue_metrics_and_labels(helm: str, tmp_path: Path) -> None:
    """Every metric is in the catalogue, every label matcher names one of its labels, and
    each query scopes every series to the broker."""
    catalogue = {series: spec for spec in SPECS for series in spec.series_names}
    for name, query in _all_queries(helm, tmp_path).items():
        assert metric_names(query) <= set(catalogue), name
        selectors = list(_selectors(query))
        assert {metric for metric, _ in selectors} == metric_names(query), name
        for metric, labels in selectors:
            assert "broker" in labels, f"{name}: {metric} not scoped to the broker"
            allowed = set(catalogue[metric].labels) | TARGET_LABELS
            assert set(labels) <= allowed, f"{name}: {metric}{{{labels}}}"
    # what each signal reads, and from which setup
    assert BY_NAME["celery_queue_length"].source == "exporter"
    assert BY_NAME["celery_worker_pool_busy_processes"].source == "agent"


def _recording_rules(queries: dict[str, str], path: Path) -> Path:
    """The queries as recording rules, in a rule file promtool reads."""
    rules = [
        {"record": "autoscaling:" + re.sub(r"\W+", "_", name), "expr": query}
        for name, query in queries.items()
    ]
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "autoscaling", "rules": rules}]}), encoding="utf-8"
    )
    return path


def test_queries_pass_promtool_check(helm: str, tmp_path: Path) -> None:
    promtool = tools.require_tool("promtool", tools.PROMTOOL)
    path = _recording_rules(_all_queries(helm, tmp_path), tmp_path / "autoscaling.rules.yml")
    result = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


OTHER_BROKER = "redis://other:6379/0"
POD = "payments-worker-7d4b9c5f6-{}"


def _series(metric: str, value: float | str, **labels: str) -> dict[str, str]:
    pairs = ", ".join(f'{k}="{v}"' for k, v in {"broker": BROKER, **labels}.items())
    values = value if isinstance(value, str) else f"{value:g}x10"
    return {"series": f"{metric}{{{pairs}}}", "values": values}


def _exporter(
    lengths: dict[str, float], exists: dict[str, float], up: float = 1, **labels: str
) -> list[dict[str, str]]:
    """One exporter's queue series and broker_up."""
    series = [
        _series("celery_queue_length", value, queue_name=queue, **labels)
        for queue, value in lengths.items()
    ]
    series += [
        _series("celery_queue_exists", value, queue_name=queue, **labels)
        for queue, value in exists.items()
    ]
    return [*series, _series("celery_broker_up", up, **labels)]


def _agent(pod: str, busy: float, processes: float, namespace: str = "shop") -> list[Any]:
    labels = {"namespace": namespace, "pod": pod, "hostname": f"celery@{pod}"}
    return [
        _series("celery_worker_pool_busy_processes", busy, **labels),
        _series("celery_worker_pool_processes", processes, **labels),
    ]


#: Three workers of the Deployment (4, 4 and 8 pool processes; 4, 3 and 2 busy), and
#: what the query must leave out: a Deployment whose name begins with the same words, the
#: same Deployment in another namespace, the exporter's pool sizes (from its stats
#: polls), another broker's worker.
AGENTS = [
    *_agent(POD.format("x2x7q"), 4, 4),
    *_agent(POD.format("k9m2p"), 3, 4),
    *_agent(POD.format("z8r4t"), 2, 8),
    *_agent("payments-worker-batch-5c8d7f9b4-abcde", 8, 8),
    *_agent(POD.format("s7a2b"), 8, 8, namespace="staging"),
    _series(
        "celery_worker_pool_processes",
        4,
        namespace="monitoring",
        pod="test-celery-vitals-6f7c9d8b5-q1w2e",
        hostname=f"celery@{POD.format('x2x7q')}",
    ),
    {
        "series": "celery_worker_pool_busy_processes"
        f'{{broker="{OTHER_BROKER}", namespace="shop", pod="{POD.format("o0o0o")}"}}',
        "values": "8x10",
    },
]
#: 4 + 3 + 2 busy processes over a mean pool of (4 + 4 + 8) / 3: 27/16 workers busy.
BUSY_WORKERS = 1.6875


def _case(name: str, series: list[Any], backlog: float | None, busy: float | None) -> Any:
    def expected(value: float | None) -> list[dict[str, Any]]:
        return [] if value is None else [{"labels": "{}", "value": value}]

    return {
        "name": name,
        "interval": "1m",
        "input_series": series,
        "promql_expr_test": [
            {"expr": BACKLOG_QUERY, "eval_time": "5m", "exp_samples": expected(backlog)},
            {"expr": UTILISATION_QUERY, "eval_time": "5m", "exp_samples": expected(busy)},
        ],
    }


def test_queries_give_exact_values_on_prometheus_engine(tmp_path: Path) -> None:
    """promtool test rules evaluates the queries as Prometheus does, on known series: the
    backlog counts each listed queue once, and answers nothing (KEDA's fallback) unless
    the exporter reaches the broker and polls every listed queue."""
    both = {"emails": 1, "reports": 1}
    second = {"instance": "exporter-2"}  # a second exporter polling the same broker
    others = [  # a queue not listed, with a name the regex must not take; another broker
        _series("celery_queue_length", 99, queue_name="emails2"),
        _series("celery_queue_exists", 1, queue_name="emails2"),
        {
            "series": f'celery_queue_length{{broker="{OTHER_BROKER}", queue_name="emails"}}',
            "values": "500x10",
        },
    ]
    cases = [
        _case(
            "30 + 12 ready, two exporters, workers busy",
            [
                *_exporter({"emails": 30, "reports": 12}, both),
                *_exporter({"emails": 30}, both, **second),
                *others,
                *AGENTS,
            ],
            42,
            BUSY_WORKERS,
        ),
        _case("queues empty, no worker", _exporter({}, {"emails": 0, "reports": 0}), 0, 0),
        _case(
            "broker unreachable: stale depths",
            _exporter({"emails": 30, "reports": 12}, both, up=0),
            None,
            0,
        ),
        _case(
            "a listed queue not polled",
            _exporter({"emails": 30}, {"emails": 1}),
            None,
            0,
        ),
        _case(
            "only another broker's exporter",
            [
                {"series": f'celery_broker_up{{broker="{OTHER_BROKER}"}}', "values": "1x10"},
                *others[2:],
            ],
            None,
            0,
        ),
        _case(
            "the exporter stopped answering (stale series)",
            [
                _series("celery_queue_length", "30x3 stale", queue_name="emails"),
                _series("celery_queue_exists", "1x3 stale", queue_name="emails"),
                _series("celery_queue_exists", "1x3 stale", queue_name="reports"),
                _series("celery_broker_up", "1x3 stale"),
            ],
            None,
            0,
        ),
    ]
    rules = _recording_rules({}, tmp_path / "none.rules.yml")
    test_file = tmp_path / "autoscaling.test.yml"
    test_file.write_text(
        json.dumps({"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": cases}),
        encoding="utf-8",
    )
    tools.promtool_test_rules(test_file)


def _exposition(series: list[tuple[str, dict[str, str], float]]) -> str:
    lines = []
    for metric, labels, value in series:
        pairs = ",".join(f'{k}="{v}"' for k, v in labels.items())
        lines.append(f"{metric}{{{pairs}}} {value:g}")
    return "\n".join(lines) + "\n"


def test_queries_on_a_real_prometheus_scraping_exporter_and_agents(
    helm: str, tmp_path: Path
) -> None:
    """The queries as the chart renders them, sent to a real Prometheus that scrapes an
    exporter's and two agents' /metrics in two jobs: the exact backlog and busy workers."""
    queries = _chart_queries(helm, tmp_path)
    broker = {"broker": BROKER}
    exporter = _exposition(
        [
            ("celery_broker_up", broker, 1),
            ("celery_queue_length", {**broker, "queue_name": "emails"}, 17),
            ("celery_queue_length", {**broker, "queue_name": "reports"}, 4),
            ("celery_queue_length", {**broker, "queue_name": "other"}, 1000),
            ("celery_queue_exists", {**broker, "queue_name": "emails"}, 1),
            ("celery_queue_exists", {**broker, "queue_name": "reports"}, 1),
        ]
    )

    def agent(pod: str, busy: float, processes: float) -> str:
        labels = {**broker, "hostname": f"celery@{pod}", "namespace": "shop", "pod": pod}
        return _exposition(
            [
                ("celery_worker_pool_busy_processes", labels, busy),
                ("celery_worker_pool_processes", labels, processes),
            ]
        )

    text = "text/plain; version=0.0.4"
    with (
        serving({"/metrics": (200, text, exporter)}) as (exporter_url, _),
        serving({"/metrics": (200, text, agent(POD.format("x2x7q"), 3, 4))}) as (one, _),
        serving({"/metrics": (200, text, agent(POD.format("k9m2p"), 4, 4))}) as (two, _),
        PrometheusServer(
            tmp_path / "prometheus",
            {
                "test-celery-vitals": [exporter_url.removeprefix("http://")],
                "shop/test-celery-vitals-workers": [
                    one.removeprefix("http://"),
                    two.removeprefix("http://"),
                ],
            },
        ) as prometheus,
    ):
        prometheus.wait_scraped("test-celery-vitals")
        prometheus.wait_scraped("shop/test-celery-vitals-workers")
        (backlog,) = prometheus.query(queries["backlog"])
        (busy,) = prometheus.query(queries["pool-utilisation"])
    assert (backlog.labels, backlog.value) == ({}, 21.0)
    assert (busy.labels, busy.value) == ({}, 1.75)  # 7 busy of 2 x 4 processes
