"""The rule file: generated and current, valid for promtool, tested for every alert,
built only from metrics the exporter exports, and documented in docs/runbooks.md."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from celery_vitals.brokers import BROKER_LABEL
from celery_vitals.catalogue import SPECS, all_series_names
from celery_vitals.rules import alerts as build
from celery_vitals.rules.config import DEFAULT_RUNBOOK_URL, THRESHOLDS, RulesConfig
from tests.support import tools
from tests.support.rules import (
    PROMTOOL_TESTS,
    RULES_PATH,
    RUNBOOKS_PATH,
    Rule,
    alert_names,
    alerts,
    load_yaml,
    rules,
)

SEVERITIES = {"critical", "warning", "info"}
DASHBOARD_UIDS = {
    "celery-vitals-overview",
    "celery-vitals-tasks",
    "celery-vitals-queues",
    "celery-vitals-workers",
    "celery-vitals-slow",
}
#: Labels Prometheus adds to every scraped series.
# Prometheus' target labels, and the label the exporter and the agents put on every series
TARGET_LABELS = {"job", "instance", BROKER_LABEL}
#: Series the rules may use besides the catalogue's and their own recordings:
#: Prometheus's own ``up``, and the periodic-task configuration users provide.
EXTERNAL_SERIES = {"up", build.PERIODIC_CONFIG}
CLI = (sys.executable, "-m", "celery_vitals")
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def promtool() -> str:
    return tools.require_tool("promtool", tools.PROMTOOL)


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=100, check=False)


# -- generated and valid -------------------------------------------------------------------


def test_committed_rule_file_is_what_the_command_writes_without_overrides() -> None:
    """`celery-vitals rules` with no config writes exactly alerts/celery-vitals.rules.yml."""
    result = run(*CLI, "rules")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == RULES_PATH.read_text(encoding="utf-8"), (
        f"{RULES_PATH} is stale: run scripts/generate.sh"
    )


def test_promtool_check_rules() -> None:
    result = run(promtool(), "check", "rules", str(RULES_PATH))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_there_are_promtool_tests() -> None:
    assert len(PROMTOOL_TESTS) >= 10, PROMTOOL_TESTS


@pytest.mark.parametrize("path", PROMTOOL_TESTS, ids=lambda path: path.name)
def test_promtool_test_rules(path: Path) -> None:
    """Every promtool test case of each file passes (alerts/tests/*.yml; one file per
    test: together they take a minute, and a busy machine would stretch that)."""
    result = run(promtool(), "test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == 1, result.stdout


# -- every alert tested: it fires on its incident, stays quiet elsewhere ----------------------


def _alert_checks() -> list[tuple[str, str, str, list[Any]]]:
    """(file, test name, alertname, exp_alerts) for every alert_rule_test."""
    checks = []
    for path in PROMTOOL_TESTS:
        for case in load_yaml(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                assert "exp_alerts" in check, (
                    f"{path.name}/{case['name']}: write exp_alerts: [] for a quiet check"
                )
                checks.append((path.name, case["name"], check["alertname"], check["exp_alerts"]))
    return checks


HEALTHY = ("healthy traffic", "healthy traffic, agent setup")


def test_every_alert_fires_and_stays_quiet_in_promtool_tests() -> None:
    """Each alert fires in some test; stays quiet on healthy traffic in both setups
    (alerts/tests/healthy.yml, healthy_agent.yml); and stays quiet in a
    test where another alert fires (a neighbouring incident it must not be confused with)."""
    fired: dict[tuple[str, str], set[str]] = defaultdict(set)  # test -> alerts that fire
    quiet: dict[tuple[str, str], set[str]] = defaultdict(set)
    for file, case, alertname, expected in _alert_checks():
        (fired if expected else quiet)[(file, case)].add(alertname)
    tested = set().union(*fired.values(), *quiet.values())
    assert tested <= alert_names(), f"tests of unknown alerts: {tested - alert_names()}"
    for name in sorted(alert_names()):
        assert any(name in names for names in fired.values()), f"no test fires {name}"
        for healthy in HEALTHY:  # the event setup's and the agent setup's
            assert any(name in quiet[case] for case in quiet if case[1] == healthy), (
                f"the test {healthy!r} does not check that {name} is quiet"
            )
        assert any(name in quiet[case] and fired[case] - {name} for case in quiet), (
            f"no test checks {name} quiet while a neighbouring alert fires"
        )


def test_every_fired_alert_is_checked_with_its_annotations() -> None:
    """Firing expectations carry severity and all annotations (promtool compares them exactly)."""
    for file, case, alertname, expected in _alert_checks():
        for alert in expected:
            where = f"{file}/{case}/{alertname}"
            assert alert["exp_labels"]["severity"] in SEVERITIES, where
            assert {"summary", "description", "runbook_url"} <= set(alert["exp_annotations"]), where


def test_promtool_tests_evaluate_recordings_before_alerts() -> None:
    """Without group_eval_order promtool evaluates the groups in random order."""
    groups = [group["name"] for group in load_yaml(RULES_PATH)["groups"]]
    for path in PROMTOOL_TESTS:
        assert load_yaml(path).get("group_eval_order") == groups, path.name


# -- only metrics that exist --------------------------------------------------------------


def _strip(expr: str) -> str:
    """The expression without strings, ranges and offsets."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    return re.sub(r"\boffset\s+\w+", "", expr)


def metric_names(expr: str) -> set[str]:
    """Names of the series an expression selects: identifiers that are not functions,
    keywords, or label names (in {matchers} and by/on/... lists)."""
    text = re.sub(r"\{[^}]*\}", "", _strip(expr))
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?", text):
        if match.group(2) is None and match.group(1) not in PROMQL_WORDS:
            names.add(match.group(1))
    return names


def label_names(expr: str) -> set[str]:
    """Label names an expression matches on or aggregates by."""
    text = _strip(expr)
    names = set()
    for matchers in re.findall(r"\{([^}]*)\}", text):
        names |= set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    for listed in re.findall(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*"
        r"\(([^)]*)\)",
        text,
    ):
        names |= {name.strip() for name in listed.split(",") if name.strip()}
    return names


def test_metric_name_extraction() -> None:
    expr = (
        'sum by (job, name) (rate(celery_task_failed_total{exception!~"a|b"}[5m])) '
        "/ on (job) group_left () x:y:rate5m > 0.5 unless up offset 5m "
        'and label_replace(vector(1), "name", "n", "", "")'
    )
    assert metric_names(expr) == {"celery_task_failed_total", "x:y:rate5m", "up"}
    assert label_names(expr) == {"job", "name", "exception"}


def test_every_metric_in_the_rules_exists_in_the_catalogue() -> None:
    recorded = {rule.name for rule in rules() if not rule.is_alert}
    known = all_series_names() | recorded | EXTERNAL_SERIES
    used = {name for rule in rules() for name in metric_names(rule.expr)}
    assert used - known == set(), "not in the exporter's catalogue"
    # every metric the rules rely on is really used (the extraction works)
    assert {
        "celery_task_failed_total",
        "celery_queue_length",
        "celery_worker_up",
        "celery_dlq_ingress_total",
        "celery_vitals_event_stream_up",
        "up",
    } <= used


def test_every_label_in_the_rules_exists() -> None:
    catalogue_labels = {label for spec in SPECS for label in spec.labels}
    known = catalogue_labels | TARGET_LABELS | {"hostname"}
    used = {label for rule in rules() for label in label_names(rule.expr)}
    assert used - known == set()


def test_promtool_test_series_exist_in_the_catalogue() -> None:
    """Input series of the promtool tests are real metrics (a typo would test nothing)."""
    known = all_series_names() | {rule.name for rule in rules()} | EXTERNAL_SERIES
    for path in PROMTOOL_TESTS:
        for case in load_yaml(path)["tests"]:
            for series in case["input_series"]:
                name = series["series"].split("{", 1)[0]
                assert name in known, f"{path.name}/{case['name']}: {name}"


# -- conventions and documentation --------------------------------------------------------


def _runbook_anchors() -> dict[str, str]:
    """GitHub's anchors of the runbook's headings -> heading text."""
    anchors = {}
    for heading in re.findall(
        r"^#{1,6} (.+)$", RUNBOOKS_PATH.read_text(encoding="utf-8"), re.MULTILINE
    ):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors[slug] = heading.strip()
    return anchors


@pytest.mark.parametrize(
    "rule", alerts(), ids=lambda rule: f"{rule.name}-{rule.labels['severity']}"
)
def test_alert_conventions(rule: Rule) -> None:
    assert re.fullmatch(r"Celery(?:[A-Z][a-z]+)+", rule.name), "Celery + CamelCase"
    assert re.fullmatch(r"\d+[smh]", str(rule.raw["for"])), "needs for:"
    assert rule.labels["severity"] in SEVERITIES
    summary, description = rule.annotations["summary"], rule.annotations["description"]
    assert summary and "{{" not in summary, "the summary is stable (no template)"
    if rule.name != "CeleryExporterMissing":  # an absence has no labels to name
        assert "{{ $labels." in description, "the description names the task/queue/worker"
    assert re.fullmatch(
        r"https://github\.com/celery-vitals/celery-vitals/blob/main/docs/"
        r"runbooks\.md#[a-z0-9-]+",
        rule.annotations["runbook_url"],
    )
    dashboard = rule.annotations.get("dashboard_url")
    if dashboard is not None:
        uid = re.fullmatch(
            r"/d/([a-z-]+)\?var-broker=\{\{ \$labels\.broker \| urlquery \}\}.*", dashboard
        )
        assert uid is not None and uid.group(1) in DASHBOARD_UIDS, dashboard


def test_every_runbook_url_anchor_exists() -> None:
    anchors = _runbook_anchors()
    for rule in alerts():
        anchor = rule.annotations["runbook_url"].split("#", 1)[1]
        assert anchor in anchors, f"{rule.name}: no heading with anchor #{anchor}"
        assert anchors[anchor] == rule.name, "the section heading is the alert name"


def test_every_runbook_section_belongs_to_an_alert() -> None:
    sections = set(
        re.findall(r"^## (Celery\w+)$", RUNBOOKS_PATH.read_text(encoding="utf-8"), re.MULTILINE)
    )
    assert sections == alert_names()


def test_runbook_sections_are_complete() -> None:
    """Each section says what it means, how to confirm, the likely causes and what to do."""
    text = RUNBOOKS_PATH.read_text(encoding="utf-8")
    for name in alert_names():
        section = text.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
        for part in ("**Means**", "**Confirm**", "**Likely causes**", "**Do**"):
            assert part in section, f"{name}: missing {part}"
        assert "```promql" in section, f"{name}: no query to confirm it"


def test_thresholds_are_documented() -> None:
    text = RUNBOOKS_PATH.read_text(encoding="utf-8")
    defaults = RulesConfig()
    for key in THRESHOLDS:
        assert f"| `{key}` | {defaults.text(key)} |" in text


LAST_SUCCESS = (
    'celery_task_last_success_timestamp_seconds{job="celery-vitals",broker="prod",'
    'instance="e:9808",name="reports.nightly",queue_name="celery"}'
)
MISSED_ANNOTATIONS = {
    "summary": "A periodic Celery task has not succeeded within its interval.",
    "description": "reports.nightly has not succeeded for 1d 2h 0m 0s (since its last "
    "success, or since beat first sent it), longer than its schedule allows: its beat "
    "interval plus slack, or its periodic_tasks limit.",
    "runbook_url": f"{DEFAULT_RUNBOOK_URL}#celeryperiodictaskmissed",
    "dashboard_url": "/d/celery-vitals-tasks?var-broker=prod&var-task=reports.nightly",
}


def test_periodic_tasks_configured_in_the_overrides_fire(tmp_path: Path) -> None:
    """periodic_tasks becomes config rules that CeleryPeriodicTaskMissed reads."""
    overrides = tmp_path / "overrides.yml"
    overrides.write_text("periodic_tasks:\n  reports.nightly: 90000\n", encoding="utf-8")
    rules_file = tmp_path / "rules.yml"
    result = run(*CLI, "rules", "--config", str(overrides), "--output", str(rules_file))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert (
        'label_replace(vector(90000), "name", "reports.nightly", "", "")'
        in rules_file.read_text(encoding="utf-8")
    )
    (tmp_path / "test.yml").write_text(
        json.dumps(
            {
                "rule_files": [str(rules_file)],
                "evaluation_interval": "1m",
                "group_eval_order": ["celery-vitals.recording", "celery-vitals.alerts"],
                "tests": [
                    {
                        "interval": "10m",
                        "input_series": [
                            {
                                "series": LAST_SUCCESS,
                                "values": "0x200",
                            }
                        ],
                        "alert_rule_test": [
                            {
                                "eval_time": "24h",
                                "alertname": "CeleryPeriodicTaskMissed",
                                "exp_alerts": [],
                            },
                            {
                                "eval_time": "26h",
                                "alertname": "CeleryPeriodicTaskMissed",
                                "exp_alerts": [
                                    {
                                        "exp_labels": {
                                            "severity": "warning",
                                            "broker": "prod",
                                            "name": "reports.nightly",
                                        },
                                        "exp_annotations": MISSED_ANNOTATIONS,
                                    }
                                ],
                            },
                        ],
                    }
                ],
            }
        )
    )
    result = run(promtool(), "test", "rules", str(tmp_path / "test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
