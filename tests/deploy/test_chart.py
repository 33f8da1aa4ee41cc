"""charts/celery-vitals: lints, renders, and carries exactly the repo's alerts and dashboards.

The chart cannot read files outside itself, so files/ holds copies of
dashboards/*.json, and templates/prometheusrule.yaml is the rule file with the
overrides of .Values.prometheusRule as Helm expressions; scripts/generate.sh
writes both, and these tests check that they render the repository's files.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from celery_vitals import cli
from celery_vitals.config import OPTIONS
from celery_vitals.rules import alerts
from celery_vitals.rules.config import DEFAULT_RUNBOOK_URL, load
from tests.support import tools
from tests.support.deploy import CHART, ROOT, helm_template

VALUES_ALL = Path(__file__).with_name("values-all.yaml")
SYNC = "bash scripts/generate.sh"
SHIPPED_SELECTOR = 'broker!=""'


def _kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = _kind(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_chart_copies_equal_the_repo_files() -> None:
    pairs = [
        (path, CHART / "files/dashboards" / path.name)
        for path in sorted((ROOT / "dashboards").glob("*.json"))
    ]
    copies = sorted(p.name for p in (CHART / "files/dashboards").glob("*.json"))
    assert copies == sorted(p.name for p in (ROOT / "dashboards").glob("*.json")), SYNC
    for source, copy in pairs:
        assert copy.is_file() and copy.read_bytes() == source.read_bytes(), (
            f"{copy.relative_to(ROOT)} differs from {source.relative_to(ROOT)}; run: {SYNC}"
        )


@pytest.mark.parametrize("values", [[], ["-f", str(VALUES_ALL)]], ids=["default", "all-on"])
def test_helm_lint(helm: str, values: list[str]) -> None:
    result = subprocess.run(
        [helm, "lint", "--strict", str(CHART), *values],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_default_render_is_the_exporter_alone(helm: str) -> None:
    objects = helm_template(helm)
    assert sorted(o["kind"] for o in objects) == ["Deployment", "Secret", "Service"]
    env = _env(_container(objects))
    assert env["CELERY_VITALS_BROKER_URL"] == {
        "secretKeyRef": {"name": "test-celery-vitals-broker", "key": "url"}
    }


@pytest.mark.parametrize("values", [[], ["-f", str(VALUES_ALL)]], ids=["default", "all-on"])
def test_deployment_is_probed_and_locked_down(helm: str, values: list[str]) -> None:
    objects = helm_template(helm, *values)
    (deployment,) = _kind(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(objects)
    scheme = "HTTPS" if values else "HTTP"
    assert container["livenessProbe"]["httpGet"] == {
        "path": "/healthz",
        "port": "http",
        "scheme": scheme,
    }
    assert container["readinessProbe"]["httpGet"] == {
        "path": "/readyz",
        "port": "http",
        "scheme": scheme,
    }
    assert container["resources"]["requests"] and container["resources"]["limits"]
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and pod["securityContext"]["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["ports"] == [{"name": "http", "containerPort": 9808, "protocol": "TCP"}]


def _rules(helm: str, *args: str) -> dict[str, dict[str, Any]]:
    """The rendered PrometheusRule's rules by record name or alert name/severity."""
    (rule,) = _kind(
        helm_template(helm, "--set", "prometheusRule.enabled=true", *args), "PrometheusRule"
    )
    return {
        r.get("record") or f"{r['alert']}/{r['labels']['severity']}": r
        for group in rule["spec"]["groups"]
        for r in group["rules"]
    }


def test_prometheus_rule_is_the_repo_rules(helm: str) -> None:
    """With the shipped selector the chart renders exactly alerts/celery-vitals.rules.yml."""
    objects = helm_template(
        helm, "-f", str(VALUES_ALL), "--set-string", f"prometheusRule.selector={SHIPPED_SELECTOR}"
    )
    (rule,) = _kind(objects, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    expected = yaml.safe_load((ROOT / "alerts/celery-vitals.rules.yml").read_text())["groups"]
    assert rule["spec"]["groups"] == expected
    assert any("{{ $labels" in str(r.get("annotations")) for g in expected for r in g["rules"])


@pytest.mark.parametrize(
    ("args", "job"),
    [
        ((), 'job=~"test-celery-vitals|default/test-celery-vitals-workers"'),
        (
            ("--set", "fullnameOverride=jobs-exporter", "--namespace", "celery"),
            'job=~"jobs-exporter|celery/jobs-exporter-workers"',
        ),
        (("--set", "nameOverride=cv"), 'job=~"test-cv|default/test-cv-workers"'),
    ],
)
def test_default_selector_is_the_releases_jobs(helm: str, args: tuple[str, ...], job: str) -> None:
    """The jobs Prometheus Operator gives the ServiceMonitor's Service and the PodMonitor,
    whatever the release name or name overrides."""
    objects = helm_template(
        helm, "--set", "prometheusRule.enabled=true", "--set", "serviceMonitor.enabled=true", *args
    )
    (service,) = _kind(objects, "Service")
    assert job.startswith(f'job=~"{service["metadata"]["name"]}|')
    (rule,) = _kind(objects, "PrometheusRule")
    exporter_down = next(
        r
        for g in rule["spec"]["groups"]
        for r in g["rules"]
        if r.get("alert") == "CeleryExporterDown"
    )
    # up is joined with the exporter's own series, which carry the selector
    assert f"max_over_time(celery_broker_up{{{job}}}[1d])" in exporter_down["expr"]


def test_values_override_threshold_for_selector_disabled_labels(helm: str, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"  # a file: --set would pass 0.25 as a string
    values.write_text(
        yaml.safe_dump(
            {
                "prometheusRule": {
                    "thresholds": {"failure_ratio_warning": 0.25, "rate_window": "10m"},
                    "for": {"CeleryQueueClimbing": "45m"},
                    "disabledAlerts": ["CeleryWorkerFlapping", "CeleryBrokerDown"],
                    "selector": 'namespace="prod"',
                    "ignoredQueues": ["scratch"],
                    "labels": {"team": "payments"},
                    "periodicTasks": {"nightly": 90000},
                    "runbookUrl": "https://wiki.example/rb",
                }
            }
        ),
        encoding="utf-8",
    )
    rules = _rules(helm, "-f", str(values))
    warning = rules["CeleryTaskFailureRateHigh/warning"]
    assert warning["expr"].startswith(
        "name_queue_name:celery_task_failed_plain:ratio_rate10m > 0.25\n"
    )
    assert warning["labels"] == {"severity": "warning", "team": "payments"}
    assert (
        warning["annotations"]["runbook_url"] == "https://wiki.example/rb#celerytaskfailureratehigh"
    )
    assert rules["CeleryQueueClimbing/warning"]["for"] == "45m"
    assert not {"CeleryWorkerFlapping/warning", "CeleryBrokerDown/critical"} & set(rules)
    assert "CeleryWorkerDown/warning" in rules
    assert rules["name_queue_name:celery_task_received:rate10m"]["expr"] == (
        "sum by (broker, name, queue_name) (rate(celery_task_received_total"
        '{namespace="prod", queue_name!~"scratch"}[10m]))'
    )
    assert (
        rules["name:celery_periodic_task_max_age_seconds:config"]["expr"]
        == 'label_replace(vector(90000), "name", "nightly", "", "")'
    )


#: Per-task overrides, as the overrides file and as Helm values (camelCase) write them:
#: a task with its own warning, a regex with both thresholds, an ignored regex, and an
#: ignored task whose threshold therefore counts for nothing.
TASK_OVERRIDES = [
    {"name": "reports.flaky", "failure_ratio_warning": 0.5},
    {"pattern": "billing\\..*", "failure_ratio_warning": 0.25, "failure_ratio_critical": 0.75},
    {"pattern": "scratch\\..*", "ignore": True},
    {"name": "legacy.sync", "ignore": True, "failure_ratio_critical": 0.9},
]


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part.title() for part in rest)


def _chart_and_command(
    helm: str, tmp_path: Path, overrides: dict[str, Any], values: dict[str, Any]
) -> tuple[list[Any], list[Any]]:
    """The rule groups the chart renders with ``values`` (under prometheusRule), and those
    `celery-vitals rules --config` writes with the same ``overrides``; both with the
    shipped selector."""
    path = tmp_path / "overrides.yml"
    path.write_text(yaml.safe_dump({"selector": SHIPPED_SELECTOR, **overrides}), encoding="utf-8")
    written = yaml.safe_load(alerts.render(load(path, alerts.alert_names())))["groups"]
    file = tmp_path / "values.yaml"  # a file: --set would pass 0.25 as a string
    rule = {"enabled": True, "selector": SHIPPED_SELECTOR, **values}
    file.write_text(yaml.safe_dump({"prometheusRule": rule}), encoding="utf-8")
    (rendered,) = _kind(helm_template(helm, "-f", str(file)), "PrometheusRule")
    return rendered["spec"]["groups"], written


def test_task_overrides_render_what_the_rules_command_writes(helm: str, tmp_path: Path) -> None:
    """prometheusRule.tasks gives the rules of `celery-vitals rules --config` with the same
    tasks: per-task thresholds in the failure-rate alerts, ignored tasks left out of
    every task alert."""
    tasks = [{_camel(k): v for k, v in t.items()} for t in TASK_OVERRIDES]
    groups, expected = _chart_and_command(
        helm, tmp_path, {"tasks": TASK_OVERRIDES}, {"tasks": tasks}
    )
    assert groups == expected
    rendered = {
        f"{r['alert']}/{r['labels']['severity']}": r["expr"]
        for g in groups
        for r in g["rules"]
        if "alert" in r
    }
    assert rendered["CeleryTaskFailureRateHigh/critical"].startswith(
        "(\n"
        "  name_queue_name:celery_task_failed_plain:ratio_rate5m"
        '{name!~"reports\\\\.flaky|billing\\\\..*|scratch\\\\..*|legacy\\\\.sync",'
        ' name!~"scratch\\\\..*|legacy\\\\.sync"} > 0.5\n'
        "  or name_queue_name:celery_task_failed_plain:ratio_rate5m"
        '{name=~"billing\\\\..*", name!~"reports\\\\.flaky",'
        ' name!~"scratch\\\\..*|legacy\\\\.sync"} > 0.75\n'
        ")\n"
    )
    assert 'name!~"scratch\\\\..*|legacy\\\\.sync"' in rendered["CeleryTaskRetryStorm/warning"]


@pytest.mark.parametrize(
    "disabled",
    [
        ["CeleryWorkerDown"],
        ["CeleryQueueNotDraining", "CeleryQueueNoConsumers"],
        ["CeleryQueueNotDraining"],
        ["CeleryTaskRetryStorm", "CeleryBrokerDown"],
    ],
)
def test_disabled_alerts_render_what_the_rules_command_writes(
    helm: str, tmp_path: Path, disabled: list[str]
) -> None:
    """A disabled alert is left out, and the alerts that yield to it no longer do."""
    groups, expected = _chart_and_command(
        helm, tmp_path, {"disabled_alerts": disabled}, {"disabledAlerts": disabled}
    )
    assert groups == expected


def test_rendered_rules_pass_promtool(helm: str, tmp_path: Path) -> None:
    promtool = tools.require_tool("promtool", tools.PROMTOOL)
    (rule,) = _kind(
        helm_template(
            helm,
            "--set",
            "prometheusRule.enabled=true",
            "--set",
            "prometheusRule.thresholds.worker_process_memory_bytes=4294967296",
            "--set",
            "prometheusRule.disabledAlerts={CeleryExporterDown}",
            "--set",
            "prometheusRule.periodicTasks.a=60",
        ),
        "PrometheusRule",
    )
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}), encoding="utf-8")
    result = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (memory,) = [
        alert["expr"]
        for group in rule["spec"]["groups"]
        for alert in group["rules"]
        if alert.get("alert") == "CeleryWorkerMemoryGrowing"
    ]
    assert "(4294967296 - celery_worker_process_resident_memory_bytes" in memory


def _dashboards(helm: str, *args: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    objects = helm_template(helm, "-f", str(VALUES_ALL), *args)
    maps = [
        o
        for o in _kind(objects, "ConfigMap")
        if o["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    return maps, {name: text for m in maps for name, text in m["data"].items()}


def test_dashboard_config_maps_are_the_repo_dashboards(helm: str) -> None:
    """With the shipped selector, exactly dashboards/*.json."""
    maps, rendered = _dashboards(
        helm, "--set-string", f"prometheusRule.selector={SHIPPED_SELECTOR}"
    )
    expected = {p.name: p.read_text() for p in (ROOT / "dashboards").glob("*.json")}
    assert sorted(rendered) == sorted(expected)
    for name, text in rendered.items():
        assert text.rstrip("\n") == expected[name].rstrip("\n"), name
        assert json.loads(text) == json.loads(expected[name])
    assert all(m["metadata"]["annotations"]["grafana_folder"] == "Celery" for m in maps)


def test_dashboards_select_the_releases_jobs(helm: str) -> None:
    """The release's selector replaces the shipped one in every query of every dashboard."""
    _, rendered = _dashboards(helm, "--set", "fullnameOverride=jobs-exporter")
    selector = 'job=~"jobs-exporter|default/jobs-exporter-workers"'
    for name, text in rendered.items():
        shipped = (ROOT / "dashboards" / name).read_text()
        assert SHIPPED_SELECTOR not in text.replace('\\"', '"'), name
        assert json.loads(text) == json.loads(
            shipped.replace(json.dumps(SHIPPED_SELECTOR)[1:-1], json.dumps(selector)[1:-1])
        ), name


def test_service_monitor_follows_kube_prometheus_stack_conventions(helm: str) -> None:
    objects = helm_template(helm, "-f", str(VALUES_ALL))
    (monitor,) = _kind(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "http" and endpoint["interval"] == "15s"
    assert endpoint["scheme"] == "https" and endpoint["basicAuth"]["username"]["key"]
    (service,) = _kind(objects, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["spec"]["selector"].items()
    assert "celery-vitals" in service["metadata"]["name"]  # the job CeleryExporterDown matches


def test_worker_pod_monitor_scrapes_the_agents_in_the_worker_pods(helm: str) -> None:
    objects = helm_template(helm, "-f", str(VALUES_ALL))
    (monitor,) = _kind(objects, "PodMonitor")
    assert monitor["metadata"]["name"] == "test-celery-vitals-workers"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"] == {
        "matchLabels": {"app.kubernetes.io/name": "payments-worker"}
    }
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["default"]}
    assert monitor["spec"]["podMetricsEndpoints"] == [
        {"port": "celery-metrics", "path": "/metrics", "scheme": "http", "interval": "15s"}
    ]
    other = helm_template(
        helm,
        "--set",
        "workerPodMonitor.enabled=true",
        "--set",
        "workerPodMonitor.selector.app=w",
        "--set",
        "workerPodMonitor.namespaces={jobs,batch}",
    )
    (monitor,) = _kind(other, "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["jobs", "batch"]}


def test_a_worker_pod_monitor_without_a_selector_is_refused(helm: str) -> None:
    result = subprocess.run(
        [helm, "template", "test", str(CHART), "--set", "workerPodMonitor.enabled=true"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "workerPodMonitor.selector" in result.stderr


def test_secrets_and_web_config_are_wired(helm: str) -> None:
    objects = helm_template(helm, "-f", str(VALUES_ALL))
    secrets = {s["metadata"]["name"]: s for s in _kind(objects, "Secret")}
    broker = secrets["test-celery-vitals-broker"]["stringData"]
    assert broker["url"].startswith("amqp://celery:s3cret@")
    web = yaml.safe_load(secrets["test-celery-vitals-web-config"]["stringData"]["web.yml"])
    assert web["basic_auth_users"]["prometheus"].startswith("$2b$")
    container = _container(objects)
    env = _env(container)
    assert env["CELERY_VITALS_WEB_CONFIG_FILE"] == "/etc/celery-vitals/web/web.yml"
    assert env["CELERY_VITALS_RABBITMQ_MANAGEMENT_URL"]["secretKeyRef"]["key"] == (
        "rabbitmq-management-url"
    )
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/etc/celery-vitals/web", "/etc/celery-vitals/tls", "/tmp"} <= mounts
    # no password in the Deployment itself
    (deployment,) = _kind(objects, "Deployment")
    assert "s3cret" not in json.dumps(deployment)


def test_an_existing_secret_replaces_the_charts(helm: str) -> None:
    objects = helm_template(
        helm,
        "--set",
        "broker.existingSecret=mine",
        "--set",
        "broker.existingSecretKey=broker-url",
        "--set",
        "broker.existingSecretManagementUrlKey=mgmt",
    )
    assert not _kind(objects, "Secret")
    env = _env(_container(objects))
    assert env["CELERY_VITALS_BROKER_URL"] == {
        "secretKeyRef": {"name": "mine", "key": "broker-url"}
    }
    assert env["CELERY_VITALS_RABBITMQ_MANAGEMENT_URL"] == {
        "secretKeyRef": {"name": "mine", "key": "mgmt"}
    }


def test_every_exporter_option_is_settable_from_values(helm: str) -> None:
    """`config` maps any option to its variable: the same name the CLI reads."""
    options = [
        option.flag
        for option in OPTIONS
        if option.kind == "value" and option.flag != "--broker-url"
    ]
    args: list[str] = []
    for option in options:
        args += ["--set-string", f"config.{option.lstrip('-')}=x"]
    env = _env(_container(helm_template(helm, *args)))
    for option in options:
        assert env[cli.envvar(option)] == "x", option
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert {"queues", "dlqs", "brokerTransportOptions", "logLevel", "logFormat"} <= set(values)


def test_values_are_rendered_as_the_exporter_reads_them(helm: str) -> None:
    env = _env(_container(helm_template(helm, "-f", str(VALUES_ALL))))
    assert env["CELERY_VITALS_QUEUE"] == "celery emails"
    assert env["CELERY_VITALS_DLQ"] == "*.dead"
    assert env["CELERY_VITALS_BROKER_TRANSPORT_OPTION"] == (
        'global_keyprefix="prod:" visibility_timeout=3600'
    )
    assert env["CELERY_VITALS_ENABLE_EVENTS"] == "false"
    assert env["CELERY_VITALS_MAX_TASK_NAMES"] == "1000"
    assert env["CELERY_VITALS_LISTEN_ADDRESS"] == ":9808"


@pytest.mark.parametrize(
    "bad",
    [
        "replicaCount=notanumber",
        "logLevel=loud",
        "serviceMonitor.interval=soon",
        "unknownKey=1",
        "prometheusRule.thresholds.rate_windw=5m",
        "prometheusRule.thresholds.rate_window=5",
        "prometheusRule.for.CeleryWorkerDown=soon",
        "prometheusRule.disabledAlerts={CeleryTypo}",
        "prometheusRule.tasks[0].failureRatioWarning=0.5",  # neither name nor pattern
        "prometheusRule.tasks[0].name=a,prometheusRule.tasks[0].pattern=b",  # both
        "prometheusRule.tasks[0].name=a,prometheusRule.tasks[0].failureRatioWarning=2",
        "prometheusRule.tasks[0].name=a,prometheusRule.tasks[0].failure_ratio_warning=0.5",
    ],
)
def test_schema_rejects_bad_values(helm: str, bad: str) -> None:
    result = subprocess.run(
        [helm, "template", "test", str(CHART), "--set", bad],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "schema" in result.stderr, result.stderr


# -- the chart's agent setup: exporter and agents in the two jobs the chart makes ---------

#: The jobs Prometheus Operator gives release "prod" in namespace "shop": the exporter's
#: Service (ServiceMonitor) and the worker PodMonitor.
EXPORTER_JOB, AGENTS_JOB = "prod-celery-vitals", "shop/prod-celery-vitals-workers"
BROKER = 'broker="redis://redis:6379/0"'


def _series(metric: str, job: str, instance: str, values: str, **labels: str) -> dict[str, str]:
    pairs = ",".join(f'{k}="{v}"' for k, v in {"job": job, "instance": instance}.items())
    more = "".join(f',{k}="{v}"' for k, v in labels.items())
    prefix = "" if metric == "up" else f"{BROKER},"
    return {"series": f"{metric}{{{prefix}{pairs}{more}}}", "values": values}


def _agent_setup_case(name: str, agents_gone_at: int | None) -> dict[str, Any]:
    """40 messages wait in queue work; the only worker's agent takes 10 tasks a second,
    or stops answering at ``agents_gone_at`` minutes."""
    alive = "1x30" if agents_gone_at is None else f"1x{agents_gone_at}"
    received = "0+600x30" if agents_gone_at is None else f"0+600x{agents_gone_at}"
    up = "1x30" if agents_gone_at is None else f"1x{agents_gone_at} 0x{30 - agents_gone_at}"
    exporter, agent = "10.0.0.1:9808", "10.0.1.7:9809"
    worker = {"hostname": "w1@pod"}
    return {
        "name": name,
        "interval": "1m",
        "input_series": [
            _series("up", EXPORTER_JOB, exporter, "1x30"),
            _series("celery_broker_up", EXPORTER_JOB, exporter, "1x30"),
            _series("celery_queue_length", EXPORTER_JOB, exporter, "40x30", queue_name="work"),
            _series("up", AGENTS_JOB, agent, up),
            _series("celery_vitals_agent_info", AGENTS_JOB, agent, alive, pool="prefork", **worker),
            _series("celery_worker_up", AGENTS_JOB, agent, alive, **worker),
            _series(
                "celery_task_received_total",
                AGENTS_JOB,
                agent,
                received,
                name="shop.work",
                queue_name="work",
            ),
        ],
    }


def test_chart_rules_join_exporter_and_agents_in_their_two_jobs(helm: str, tmp_path: Path) -> None:
    """The rules the chart renders for its agent setup (ServiceMonitor and PodMonitor, two
    jobs): a healthy cluster pages nothing, the only worker gone pages CeleryWorkerDown
    (critical) and the queue alerts yield to it. Before the broker label, the queue
    alerts joined depth and receive counters on job, and a healthy cluster paged
    CeleryQueueNotDraining."""
    result = subprocess.run(
        [
            helm,
            "template",
            "prod",
            str(CHART),
            "--namespace",
            "shop",
            "--set",
            "prometheusRule.enabled=true",
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "workerPodMonitor.enabled=true",
            "--set",
            "workerPodMonitor.selector.app=shop-worker",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    (rule,) = _kind(objects, "PrometheusRule")
    (service,) = _kind(objects, "Service")
    (pod_monitor,) = _kind(objects, "PodMonitor")
    # the jobs Prometheus Operator names after them
    assert service["metadata"]["name"] == EXPORTER_JOB
    assert f"shop/{pod_monitor['metadata']['name']}" == AGENTS_JOB
    rules_path = tmp_path / "rules.yml"
    rules_path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}), encoding="utf-8")
    quiet = [
        {"eval_time": "25m", "alertname": name, "exp_alerts": []}
        for name in (
            "CeleryQueueNotDraining",
            "CeleryQueueNoConsumers",
            "CeleryWorkerDown",
            "CeleryExporterDown",
            "CeleryExporterMissing",
        )
    ]
    healthy = _agent_setup_case("healthy, two jobs", None)
    healthy["alert_rule_test"] = quiet
    gone = _agent_setup_case("the only worker gone, two jobs", 5)
    down = {"broker": "redis://redis:6379/0", "hostname": "w1@pod"}
    links = {
        "runbook_url": f"{DEFAULT_RUNBOOK_URL}#celeryworkerdown",
        "dashboard_url": "/d/celery-vitals-workers?var-broker=redis%3A%2F%2Fredis%3A6379%2F0"
        "&var-worker=w1%40pod",
    }
    gone["alert_rule_test"] = [
        {
            "eval_time": "25m",
            "alertname": "CeleryWorkerDown",
            "exp_alerts": [
                {
                    "exp_labels": {"severity": "warning", **down},
                    "exp_annotations": {
                        "summary": "A Celery worker is down.",
                        "description": "Worker w1@pod went offline or stopped sending heartbeats.",
                        **links,
                    },
                },
                {
                    "exp_labels": {"severity": "critical", **down},
                    "exp_annotations": {
                        "summary": "Every Celery worker of a broker is down while tasks wait.",
                        "description": "Worker w1@pod is down and no other worker of broker "
                        "redis://redis:6379/0 is up, while tasks wait in its queues: nothing "
                        "runs them.",
                        **links,
                    },
                },
            ],
        },
        *(entry for entry in quiet if entry["alertname"] != "CeleryWorkerDown"),
    ]
    test_file = tmp_path / "test.yml"
    test_file.write_text(
        json.dumps(
            {
                "rule_files": [str(rules_path)],
                "evaluation_interval": "1m",
                "group_eval_order": ["celery-vitals.recording", "celery-vitals.alerts"],
                "tests": [healthy, gone],
            }
        ),
        encoding="utf-8",
    )
    tools.promtool_test_rules(test_file)
