"""Every dashboard query uses only catalogue metrics and parses on a real Prometheus."""

from __future__ import annotations

import pytest

from celery_vitals.catalogue import SPECS, all_series_names
from stack.prometheus import PrometheusServer
from tests.support.dashboards import (
    UIDS,
    Expr,
    all_exprs,
    metric_names,
    range_function_arguments,
    substitute,
)
from tests.support.rules import rules

# Not from the exporter: Prometheus' own series, and the recorded series of two conditions, so
# that a panel agrees with its alert: CeleryWorkerDown's (Workers down), and
# CeleryPeriodicTaskMissed's (the schedule's Late column, and its tasks' last success after
# an exporter restart); every other panel works without alerts/ loaded.
PROMETHEUS_SERIES = {"ALERTS", "up"}
RECORDED = {
    "hostname:celery_worker_down:bool",
    "name:celery_task_last_success_timestamp_seconds:max",
    "name:celery_periodic_task_max_age_seconds:beat",
    "name:celery_periodic_task_max_age_seconds:config",
    "name:celery_beat_entry_last_run_timestamp_seconds:first_without_success",
}
EXPRS = all_exprs()


def _ids(exprs: list[Expr]) -> list[str]:
    return [f"{e.uid.removeprefix('celery-vitals-')}:{e.title}:{e.ref}" for e in exprs]


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, name) (rate(a_bucket{broker=~"$broker", '
        'name="x y"}[$__rate_interval]))) / on (name) group_left b_total * 1e-3 '
        '+ count(c{d="rate(e)"} == 0) or vector(0) > bool 2 unless '
        "time() - max without (x) (f_timestamp_seconds offset $__rate_interval)"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c", "f_timestamp_seconds"}
    assert metric_names('{__name__=~"g|h_total", job="x"}') == {"g", "h_total"}
    assert range_function_arguments(
        "sum(rate(a_total[1m])) / sum(increase(b_bucket{x='y'}[1m])) + c"
    ) == ["a_total", "b_bucket"]


def test_every_dashboard_has_queries() -> None:
    per_dashboard = {uid: sum(1 for e in EXPRS if e.uid == uid) for uid in UIDS}
    assert all(count >= 10 for count in per_dashboard.values()), per_dashboard


@pytest.mark.parametrize("expr", EXPRS, ids=_ids(EXPRS))
def test_only_catalogue_metrics(expr: Expr) -> None:
    names = metric_names(expr.expr)
    assert names, f"no metric found in {expr}"
    assert names - all_series_names() - PROMETHEUS_SERIES - RECORDED == set(), str(expr)


def test_the_recorded_series_used_are_the_shipped_rules_own() -> None:
    used = {name for expr in EXPRS for name in metric_names(expr.expr) if ":" in name}
    assert used == RECORDED
    recorded = {rule.name for rule in rules() if not rule.is_alert}
    # the shipped file has no periodic_tasks: a user's overrides add its series
    assert RECORDED - recorded == {"name:celery_periodic_task_max_age_seconds:config"}


def test_rate_and_increase_only_over_counters_and_histograms() -> None:
    allowed = {spec.name for spec in SPECS if spec.type == "counter"}
    allowed |= {
        series for spec in SPECS if spec.type == "histogram" for series in spec.series_names
    }
    for expr in EXPRS:
        assert set(range_function_arguments(expr.expr)) <= allowed, str(expr)


@pytest.mark.parametrize("expr", EXPRS, ids=_ids(EXPRS))
def test_query_parses_on_prometheus(expr: Expr, empty_prometheus: PrometheusServer) -> None:
    """Prometheus 2.42 has no parse endpoint: a query that does not parse is a 400 bad_data."""
    try:
        data = empty_prometheus.api("query", query=substitute(expr.expr))
    except AssertionError as error:
        raise AssertionError(f"{expr}\n{error}") from None
    assert data["resultType"] == "vector", str(expr)
