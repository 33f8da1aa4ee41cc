"""Every alert's `for:` is pinned by alerts/tests/for.yml: a changed `for:` fails CI.

Each case of for.yml is named "<alert> <severity>: condition from <S>, for <for>": the
alert's condition starts at S. The case shows the alert quiet at a time q and firing at
a time f with q < S + for <= f, at most two evaluations apart; and checks S itself
(ALERTS_FOR_STATE, the moment the alert became active, is S in seconds).
"""

from __future__ import annotations

import functools
import re
from typing import Any

import pytest

from tests.support import tools
from tests.support.rules import ALERTS_DIR, Rule, alerts, load_yaml

FOR_TESTS = ALERTS_DIR / "tests" / "for.yml"
CASE_NAME = re.compile(
    r"(?P<alert>Celery\w+) (?P<severity>\w+): condition from (?P<start>\w+), for (?P<for_>\w+)"
)
UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def seconds(duration: str) -> int:
    """A Prometheus duration ("6h10m", "90s") in seconds."""
    parts = re.findall(r"(\d+)([dhms])", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration}"
    return sum(int(number) * UNITS[unit] for number, unit in parts)


@functools.cache
def cases() -> dict[tuple[str, str], dict[str, Any]]:
    """for.yml's cases by (alertname, severity), from their names."""
    by_rule: dict[tuple[str, str], dict[str, Any]] = {}
    for case in load_yaml(FOR_TESTS)["tests"]:
        match = CASE_NAME.fullmatch(case["name"])
        assert match is not None, f"for.yml: {case['name']!r} is not named like {CASE_NAME}"
        key = (match["alert"], match["severity"])
        assert key not in by_rule, f"for.yml: two cases for {key}"
        by_rule[key] = case | match.groupdict()
    return by_rule


def test_promtool_runs_the_for_cases() -> None:
    tools.promtool_test_rules(FOR_TESTS, timeout=100)


def test_every_case_is_for_a_rule() -> None:
    rules = {(rule.name, rule.labels["severity"]) for rule in alerts()}
    assert set(cases()) - rules == set(), "cases in for.yml for rules that do not exist"


@pytest.mark.parametrize(
    "rule", alerts(), ids=lambda rule: f"{rule.name}-{rule.labels['severity']}"
)
def test_for_is_pinned(rule: Rule) -> None:
    severity, for_ = rule.labels["severity"], seconds(str(rule.raw["for"]))
    case = cases().get((rule.name, severity))
    assert case is not None, f"for.yml has no case '{rule.name} {severity}: ...'"
    assert seconds(case["for_"]) == for_, f"{case['name']!r}, but the rule says for: {for_}s"
    start, interval = seconds(case["start"]), seconds(load_yaml(FOR_TESTS)["evaluation_interval"])

    # promtool checks that the alert became active at S
    active_since = [
        sample["value"]
        for check in case.get("promql_expr_test", [])
        if check["expr"] == f'ALERTS_FOR_STATE{{alertname="{rule.name}",severity="{severity}"}}'
        for sample in check["exp_samples"]
    ]
    assert active_since == [start], f"{case['name']!r}: check ALERTS_FOR_STATE is {start}"

    # the alert (of this severity) quiet at q, firing at f
    quiet: list[int] = []
    firing: list[int] = []
    for check in case["alert_rule_test"]:
        if check["alertname"] == rule.name:
            fired = any(a["exp_labels"]["severity"] == severity for a in check["exp_alerts"])
            (firing if fired else quiet).append(seconds(check["eval_time"]))
    assert firing, f"{case['name']!r}: never fires"
    fires = min(firing)
    assert [q for q in quiet if q < fires], f"{case['name']!r}: not quiet before {fires}s"
    quiet_until = max(q for q in quiet if q < fires)
    assert fires - quiet_until <= 2 * interval, "quiet and firing checks too far apart"
    assert quiet_until < start + for_ <= fires, (
        f"{case['name']!r}: quiet at {quiet_until}s and firing at {fires}s do not bracket "
        f"S + for = {start}s + {for_}s"
    )
