"""The overrides file of `celery-vitals rules` / `dashboards`: every key takes effect,
every bad key or value is named in one line, exit code 2, no traceback."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from celery_vitals.config import ConfigError
from celery_vitals.rules import alerts, dashboards
from celery_vitals.rules.config import RulesConfig, from_mapping
from celery_vitals.rules.promql import scope
from tests.support import tools

NAMES = alerts.alert_names()


def rules_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery_vitals", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def rule_file(config: RulesConfig) -> dict[str, dict[str, object]]:
    """Rule name (alert name + severity) -> rule, of the rendered file."""
    data = yaml.safe_load(alerts.render(config))
    found = {}
    for group in data["groups"]:
        for rule in group["rules"]:
            key = rule.get("record") or f"{rule['alert']}/{rule['labels']['severity']}"
            found[key] = rule
    return found


# -- scoping -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        # up has no broker label: the rules join it with the target's own series
        ("up == 0", "up == 0"),
        (
            'sum by (job, name) (rate(celery_task_failed_total{exception!~"x|y"}[5m]))',
            'sum by (job, name) (rate(celery_task_failed_total{exception!~"x|y", job="a"}[5m]))',
        ),
        (
            "x:y:rate5m > 0.5 unless on (job) (celery_broker_up == 0) offset 5m",
            'x:y:rate5m > 0.5 unless on (job) (celery_broker_up{job="a"} == 0) offset 5m',
        ),
        (
            'label_replace(vector(1), "name", "celery_x", "", "")',
            'label_replace(vector(1), "name", "celery_x", "", "")',
        ),
        ('{__name__=~"a|b", job=~"$job"}', '{__name__=~"a|b", job=~"$job", job="a"}'),
        (
            "max(celery_q[$__rate_interval]) / count(ALERTS) + Inf",
            'max(celery_q{job="a"}[$__rate_interval]) / count(ALERTS) + Inf',
        ),
    ],
)
def test_scope_adds_the_selector_to_every_series_and_nothing_else(expr: str, expected: str) -> None:
    assert scope(expr, 'job="a"') == expected


def test_scope_of_recorded_series_on_request() -> None:
    assert scope("x:y:rate5m > 1", 'name!~"t"', recorded=True) == 'x:y:rate5m{name!~"t"} > 1'


def test_scope_leaves_the_chart_templates_placeholders_alone() -> None:
    """rules/helm.py builds the chart's rules with @@...@@ placeholders for values: one
    inside a recorded name is part of it, one alone is a value, never a series."""
    assert scope(
        "x:y:rate@@threshold:rate_window@@ > @@threshold:ratio@@", 'name!~"t"', recorded=True
    ) == ('x:y:rate@@threshold:rate_window@@{name!~"t"} > @@threshold:ratio@@')


def _selectors(expr: str) -> list[str]:
    """The matchers of every celery-vitals series of an expression; "" for a series without
    any (``up`` is Prometheus': never scoped, the rules join it with the target's own)."""
    strings = re.compile(r'"(?:[^"\\]|\\.)*"')
    blank = strings.sub(lambda m: '"' + "_" * (len(m.group()) - 2) + '"', expr)
    found = []
    for match in re.finditer(r"(?<![\w:])(celery_\w+)\b(?![:(])", blank):
        if blank[match.end() : match.end() + 1] != "{":
            found.append("")
            continue
        found.append(expr[match.end() : blank.index("}", match.end())])
    return found


def test_custom_selector_reaches_every_rule_and_panel_query() -> None:
    config = from_mapping({"selector": 'namespace="prod", job=~"cv-.*"'}, NAMES)
    text = alerts.render(config)
    assert "celery-vitals.*" not in text
    for rule in rule_file(config).values():
        found = _selectors(str(rule["expr"]))
        assert all('namespace="prod", job=~"cv-.*"' in s for s in found), rule["expr"]
    # up is never scoped (no broker label): joined with the selected celery_broker_up
    assert re.search(r"(?<![\w:])up\{", text) is None
    assert 'celery_broker_up{namespace="prod", job=~"cv-.*"}[1d]' in text
    for name, board in dashboards.build(config).items():
        exprs = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
        exprs += [
            variable["query"]
            for variable in board["templating"]["list"]
            if variable["type"] == "query"
        ]
        assert exprs, name
        for expr in exprs:
            found = _selectors(expr)
            # recorded series (level:metric:op) were scoped where they were recorded
            assert (
                found
                or expr.startswith(("count(ALERTS", "sum by (alertname", "label_values({"))
                or re.search(r"\w:\w+:\w", expr)
            ), expr
            assert not expr.startswith("label_values({") or "cv-.*" in expr
            assert all('namespace="prod", job=~"cv-.*"' in s for s in found), expr


# -- every key takes effect ----------------------------------------------------------------


def test_thresholds_for_disabled_labels_urls() -> None:
    config = from_mapping(
        {
            "thresholds": {
                "failure_ratio_warning": 0.2,
                "oldest_message_critical": "2h",
                "rate_window": "10m",
            },
            "for": {"CeleryQueueClimbing": "45m"},
            "disabled_alerts": ["CeleryRedisBrokerNotPersistent"],
            "labels": {"team": "payments", "route": 7},
            "runbook_url": "https://wiki.example/celery",
            "dashboard_url": "https://grafana.example/",
        },
        NAMES,
    )
    rules = rule_file(config)
    assert (
        "name_queue_name:celery_task_failed_plain:ratio_rate10m > 0.2"
        in rules["CeleryTaskFailureRateHigh/warning"]["expr"]
    )
    assert "> 7200\n" in rules["CeleryQueueOldestMessageTooOld/critical"]["expr"]
    assert rules["CeleryQueueClimbing/warning"]["for"] == "45m"
    assert not any(key.startswith("CeleryRedisBrokerNotPersistent") for key in rules)
    alert = rules["CeleryWorkerDown/warning"]
    assert alert["labels"] == {"severity": "warning", "team": "payments", "route": "7"}
    annotations = alert["annotations"]
    assert isinstance(annotations, dict)
    assert annotations["runbook_url"] == "https://wiki.example/celery#celeryworkerdown"
    assert annotations["dashboard_url"].startswith("https://grafana.example/d/celery-vitals-")
    board = dashboards.build(config)["celery-vitals-overview"]
    steps = next(panel for panel in board["panels"] if panel["title"] == "Failure ratio")[
        "fieldConfig"
    ]["defaults"]["thresholds"]["steps"]
    assert [step["value"] for step in steps] == [None, 0.2, 0.5]


@pytest.mark.parametrize(
    ("disabled", "yielding", "not_yielding"),
    [
        # the queue alerts yield to the worker-down page only while it exists
        (
            ["CeleryWorkerDown"],
            ["CeleryTaskRetriesExhausted/warning"],
            [
                "CeleryQueueNotDraining/critical",
                "CeleryQueueNoConsumers/critical",
                "CeleryQueueOldestMessageTooOld/warning",
            ],
        ),
        # the oldest message yields to "not draining or no consumers" while either exists
        (["CeleryQueueNotDraining"], ["CeleryQueueOldestMessageTooOld/critical"], []),
        (
            ["CeleryQueueNotDraining", "CeleryQueueNoConsumers"],
            [],
            ["CeleryQueueOldestMessageTooOld/critical"],
        ),
        (["CeleryTaskRetryStorm"], [], ["CeleryTaskRetriesExhausted/warning"]),
    ],
)
def test_an_alert_yields_only_to_enabled_alerts(
    disabled: list[str], yielding: list[str], not_yielding: list[str]
) -> None:
    """A disabled alert pages nothing, so no other alert may stay silent for it."""
    shipped = rule_file(RulesConfig())
    rules = rule_file(from_mapping({"disabled_alerts": disabled}, alerts.alert_names()))
    for key in yielding:
        assert rules[key]["expr"] == shipped[key]["expr"], key
    for key in not_yielding:
        expr = str(rules[key]["expr"])
        assert len(expr) < len(str(shipped[key]["expr"])), key
        if "CeleryWorkerDown" in disabled:
            assert "hostname:celery_worker_down:bool" not in expr, key
        if "CeleryTaskRetryStorm" in disabled:
            assert "retry_amplification" not in expr, key
    assert not any("@@" in str(rule["expr"]) for rule in rules.values())


def test_task_overrides_and_ignored_queues() -> None:
    config = from_mapping(
        {
            "tasks": [
                {"name": "flaky.scrape", "failure_ratio_warning": 0.6},
                {
                    "pattern": "reports\\..*",
                    "failure_ratio_warning": 0.3,
                    "failure_ratio_critical": 0.9,
                },
                {"name": "probe.canary", "ignore": True},
            ],
            "ignored_queues": ["scratch", "tmp-.*"],
        },
        NAMES,
    )
    rules = rule_file(config)
    warning = rules["CeleryTaskFailureRateHigh/warning"]["expr"]
    ratio = "name_queue_name:celery_task_failed_plain:ratio_rate5m"
    assert f'{ratio}{{name!~"flaky\\\\.scrape|reports\\\\..*|probe\\\\.canary", ' in warning
    assert f'{ratio}{{name=~"flaky\\\\.scrape", name!~"probe\\\\.canary"}} > 0.6' in warning
    assert (
        f'{ratio}{{name=~"reports\\\\..*", name!~"flaky\\\\.scrape", '
        f'name!~"probe\\\\.canary"}} > 0.3'
    ) in warning
    assert 'name!~"probe\\\\.canary"' in rules["CeleryTaskRetryStorm/warning"]["expr"]
    assert 'queue_name!~"scratch|tmp-.*"' in rules["queue_name:celery_queue_length:sum"]["expr"]


def test_overridden_rule_file_passes_promtool(tmp_path: Path) -> None:
    promtool = tools.require_tool("promtool", tools.PROMTOOL)
    overrides = tmp_path / "overrides.yml"
    overrides.write_text(
        yaml.safe_dump(
            {
                "selector": 'job=~"celery-.*", env!="dev"',
                "thresholds": {"event_window": "30m"},
                "for": {"CeleryWorkerDown": "2m"},
                "disabled_alerts": ["CeleryQueueClimbing"],
                "periodic_tasks": {"nightly": 90000},
                "ignored_queues": ["a.b"],
                "tasks": [
                    {"pattern": "x.*", "failure_ratio_critical": 0.8},
                    {"name": "y", "ignore": True},
                ],
                "labels": {"team": "core"},
            }
        ),
        encoding="utf-8",
    )
    output = tmp_path / "rules.yml"
    result = rules_cli("rules", "--config", str(overrides), "--output", str(output))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    check = subprocess.run(
        [promtool, "check", "rules", str(output)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


# -- bad input -----------------------------------------------------------------------------


def test_every_problem_is_named() -> None:
    with pytest.raises(ConfigError) as caught:
        from_mapping(
            {
                "selektor": "x",
                "selector": "job=celery",
                "thresholds": {
                    "failure_ratio_warning": "high",
                    "rate_window": "5 minutes",
                    "nope": 1,
                },
                "for": {"CeleryWorkerDown": "soon", "CeleryMadeUp": "5m"},
                "disabled_alerts": ["CeleryNope"],
                "periodic_tasks": {"t": -1},
                "tasks": [
                    {"pattern": "(", "ignore": "yes"},
                    {"name": "a", "pattern": "b"},
                    {"name": "c", "colour": 1},
                ],
                "ignored_queues": ["[x"],
                "labels": {"severity": "x", "bad-name": "y"},
                "runbook_url": 3,
            },
            NAMES,
        )
    keys = [problem.split(":")[0] for problem in caught.value.problems]
    assert keys == [
        "selektor",
        "selector",
        "thresholds.failure_ratio_warning",
        "thresholds.rate_window",
        "thresholds.nope",
        "for.CeleryWorkerDown",
        "for.CeleryMadeUp",
        "disabled_alerts",
        "periodic_tasks.t",
        "tasks[0].pattern",
        "tasks[0].ignore",
        "tasks[1]",
        "tasks[2].colour",
        "ignored_queues",
        "runbook_url",
        "labels.severity",
        "labels.bad-name",
    ], caught.value.problems


@pytest.mark.parametrize("command", [("rules",), ("dashboards", "--output-dir", "out")])
def test_bad_file_is_one_line_exit_2(tmp_path: Path, command: tuple[str, ...]) -> None:
    overrides = tmp_path / "o.yml"
    overrides.write_text(
        json.dumps({"thresholds": {"rate_windw": "5m"}, "disabled_alerts": ["CeleryTypo"]}),
        encoding="utf-8",
    )
    result = rules_cli(*command, "--config", str(overrides))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"celery-vitals: error: {overrides}: thresholds.rate_windw: unknown threshold "
        f"(known: {', '.join(RulesConfig().thresholds)}); {overrides}: disabled_alerts: "
        "unknown alert 'CeleryTypo'\n"
    )


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("selector: [1\n", "not YAML"),
        ("- a\n- b\n", "file: expected a mapping"),
    ],
)
def test_unreadable_files(tmp_path: Path, content: str, problem: str) -> None:
    overrides = tmp_path / "o.yml"
    overrides.write_text(content, encoding="utf-8")
    result = rules_cli("rules", "--config", str(overrides))
    assert result.returncode == 2 and problem in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
    missing = rules_cli("rules", "--config", str(tmp_path / "missing.yml"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr, missing.stderr


def test_an_ignored_tasks_exhausted_retries_never_silence_its_dead_letters() -> None:
    """CeleryDeadLetterQueueGrowing yields to CeleryTaskRetriesExhausted task by task; a task
    the config ignores has no such alert, so its exhaustion explains none of the DLQ."""
    config = from_mapping({"tasks": [{"pattern": r"scratch\..*", "ignore": True}]}, NAMES)
    dlq = str(rule_file(config)["CeleryDeadLetterQueueGrowing/warning"]["expr"])
    ignored = 'celery_task_failed_after_retries_total{name!~"scratch\\\\..*"'
    # the series (twice, for the new-series case) and the increase()
    assert dlq.count(ignored) == 3, dlq
    shipped = str(rule_file(RulesConfig())["CeleryDeadLetterQueueGrowing/warning"]["expr"])
    assert "name!~" not in shipped
