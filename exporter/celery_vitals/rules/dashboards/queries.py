"""The dashboards' PromQL, built from the vocabulary the rules share (``rules.promql``):
the variables' matchers, rates and quantiles over ``$__rate_interval``, and the queries
more than one board runs."""

from __future__ import annotations

from celery_vitals.rules import promql
from celery_vitals.rules.alerts import WORKER_DOWN
from celery_vitals.rules.dashboards.panels import Query

TASK = 'broker=~"$broker", queue_name=~"$queue", name=~"$task"'
QUEUE = 'broker=~"$broker", queue_name=~"$queue"'
WORKER = 'broker=~"$broker", hostname=~"$worker"'
BROKER = 'broker=~"$broker"'
ALERTS_FIRING = 'ALERTS{alertstate="firing", alertname=~"Celery.*"}'
DLQ = QUEUE

FAILED = "celery_task_failed_total"
SUCCEEDED = "celery_task_succeeded_total"
RETRIED = "celery_task_retried_total"

WINDOW = "$__rate_interval"  # at least four scrapes, whatever the zoom


def _labels(labels: tuple[str, ...]) -> str:
    return ", ".join(labels)


def rate(metric: str, matchers: str) -> str:
    """rate() over ``$__rate_interval``."""
    return f"rate({metric}{{{matchers}}}[{WINDOW}])"


def sum_rate(metric: str, matchers: str, *labels: str) -> str:
    """Per-second rate summed by ``labels`` (everything when none)."""
    return promql.sum_rate(metric, WINDOW, _labels(labels), matchers)


def quantile(q: float, histogram: str, matchers: str, *labels: str) -> str:
    """A quantile of a catalogue histogram over ``$__rate_interval``, by ``labels``."""
    return (
        f"histogram_quantile({q}, sum{promql.by(_labels(('le', *labels)))} "
        f"({rate(histogram + '_bucket', matchers)}))"
    )


def occurrences(metric: str, matchers: str, *labels: str) -> str:
    """Events a counter counted in each ``$__rate_interval`` window (promql.occurrences)."""
    return promql.occurrences(promql.series(metric, matchers), _labels(labels), WINDOW)


def failure_ratio(*labels: str) -> str:
    """failed / (succeeded + failed), by ``labels``: the rules' failure ratio."""
    failed = sum_rate("celery_task_failed_total", TASK, *labels)
    succeeded = sum_rate("celery_task_succeeded_total", TASK, *labels)
    return promql.failure_ratio(failed, succeeded)


def retry_amplification(*labels: str) -> str:
    """Retries per new task: CeleryTaskRetryStorm's definition."""
    return promql.retry_amplification(
        sum_rate("celery_task_retried_total", TASK, *labels),
        sum_rate("celery_task_received_total", TASK, *labels),
    )


def percentiles(histogram: str, matchers: str) -> tuple[Query, ...]:
    """p50, p95 and p99 of a histogram, one query each."""
    return tuple(
        Query(quantile(q, histogram, matchers), f"p{int(q * 100)}") for q in (0.5, 0.95, 0.99)
    )


RUNTIME_PERCENTILES = percentiles("celery_task_runtime_seconds", TASK)


def workers_down() -> Query:
    """How many workers are down, from CeleryWorkerDown's own condition (the recording rule):
    the exporter's view, the workers it purged since, and agents whose target is down (their
    series are gone, so celery_worker_up == 0 cannot count them)."""
    return Query(f"count({WORKER_DOWN}{{{WORKER}}}) or vector(0)", "down")
