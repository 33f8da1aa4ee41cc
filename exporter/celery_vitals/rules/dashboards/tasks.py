"""Celery / Tasks: per-task throughput, failure ratio, exceptions, retries and runtime."""

from __future__ import annotations

from celery_vitals.rules.config import RulesConfig
from celery_vitals.rules.dashboards.panels import Board, Link, Query, Row, ts
from celery_vitals.rules.dashboards.queries import (
    FAILED,
    RETRIED,
    RUNTIME_PERCENTILES,
    SUCCEEDED,
    TASK,
    failure_ratio,
    occurrences,
    quantile,
    retry_amplification,
    sum_rate,
)
from celery_vitals.rules.dashboards.shared import (
    COUNT_HELP,
    FAILURE_RATIO_HELP,
    RUNTIME_HELP,
    failure_steps,
)
from celery_vitals.rules.promql import QUEUES, TASKS


def board(c: RulesConfig) -> Board:
    """Per-task throughput, failures, exceptions, retries and runtime."""
    throughput = Row(
        100,
        "Throughput: the total hides per-task failures, read it with the breakdown beside it",
        (
            ts(
                1,
                "All selected tasks: outcomes per second",
                "ops",
                Query(sum_rate(SUCCEEDED, TASK), "succeeded"),
                Query(sum_rate(FAILED, TASK), "failed"),
                Query(sum_rate(RETRIED, TASK), "retried"),
                description="Sums over every selected task: a failing low-volume task disappears "
                "in it. The panels beside it break it down per task.",
                width=8,
            ),
            ts(
                2,
                "Succeeded per second by task",
                "ops",
                Query(sum_rate(SUCCEEDED, TASK, "name"), "{{name}}"),
                width=8,
                task_link=True,
            ),
            ts(
                3,
                "Failed per second by task",
                "ops",
                Query(sum_rate(FAILED, TASK, "name"), "{{name}}"),
                width=8,
                task_link=True,
            ),
        ),
    )
    failures = Row(
        101,
        "Failures",
        (
            ts(
                4,
                "Failure ratio by task",
                "percentunit",
                Query(failure_ratio("name"), "{{name}}"),
                description=FAILURE_RATIO_HELP,
                task_link=True,
                min=0,
                thresholds=failure_steps(c),
            ),
            ts(
                5,
                "Top exceptions: failures per second by task and exception",
                "ops",
                Query(
                    f"topk(10, {sum_rate(FAILED, TASK, 'name', 'exception')})",
                    "{{name}}: {{exception}}",
                ),
                description="Exception class names only (never messages). WorkerLostError: the "
                "pool process died (OOM killer, SIGKILL); TimeLimitExceeded: hard time "
                "limit; NotRegistered: the worker does not know the task name.",
                task_link=True,
            ),
        ),
    )
    retries = Row(
        102,
        "Retries",
        (
            ts(
                6,
                "Retries per second by task",
                "ops",
                Query(sum_rate(RETRIED, TASK, "name"), "{{name}}"),
                width=8,
                task_link=True,
            ),
            ts(
                7,
                "Retry amplification: retries per new task",
                "short",
                Query(retry_amplification("name"), "{{name}}"),
                description="Retries per newly received task (received minus retried), the "
                "measure of CeleryTaskRetryStorm (red: its threshold). 0 is healthy; a "
                "climbing value is a retry storm multiplying the load on whatever the "
                "task depends on.",
                width=8,
                task_link=True,
                thresholds=((c.number("retry_amplification"), "red"),),
            ),
            ts(
                8,
                "Failed after retries by task",
                "short",
                Query(
                    occurrences("celery_task_failed_after_retries_total", TASK, "name"), "{{name}}"
                ),
                description="Tasks that failed for good after at least one retry: retries "
                "exhausted. What comes before the dead-letter queue." + COUNT_HELP,
                width=8,
                task_link=True,
            ),
        ),
    )
    runtime = Row(
        103,
        "Runtime",
        (
            ts(
                9,
                "Runtime p50 / p95 / p99 (selected tasks)",
                "s",
                *RUNTIME_PERCENTILES,
                description=RUNTIME_HELP,
            ),
            ts(
                10,
                "Runtime p95 by task",
                "s",
                Query(quantile(0.95, "celery_task_runtime_seconds", TASK, "name"), "{{name}}"),
                description=RUNTIME_HELP,
                task_link=True,
            ),
            ts(
                11,
                "Mean runtime by task",
                "s",
                Query(
                    f"{sum_rate('celery_task_runtime_seconds_sum', TASK, 'name')} / "
                    f"{sum_rate('celery_task_runtime_seconds_count', TASK, 'name')}",
                    "{{name}}",
                ),
                description=RUNTIME_HELP,
                task_link=True,
            ),
            ts(
                12,
                "Time since last success by task",
                "s",
                Query(
                    f"time() - max by (name) "
                    f"(celery_task_last_success_timestamp_seconds{{{TASK}}})",
                    "{{name}}",
                ),
                description="Dead-man's switch for periodic tasks: it should drop back every "
                "schedule interval.",
                task_link=True,
            ),
        ),
    )
    other = Row(
        104,
        "Other outcomes",
        (
            ts(
                13,
                "Unregistered tasks (NotRegistered failures)",
                "short",
                Query(
                    occurrences(FAILED, f'{TASK}, exception="NotRegistered"', "name"), "{{name}}"
                ),
                description="Messages for task names no worker has registered: a deploy changed "
                "task names or signatures, or a worker runs old code." + COUNT_HELP,
                width=6,
            ),
            ts(
                14,
                "Rejected by task",
                "short",
                Query(
                    occurrences("celery_task_rejected_total", TASK, "name", "requeue"),
                    "{{name}} requeue={{requeue}}",
                ),
                description="requeue=false goes to the dead-letter route (or is dropped)."
                + COUNT_HELP,
                width=6,
            ),
            ts(
                15,
                "Revoked and expired by task",
                "short",
                Query(occurrences("celery_task_revoked_total", TASK, "name"), "{{name}} revoked"),
                Query(occurrences("celery_task_expired_total", TASK, "name"), "{{name}} expired"),
                description="Expired tasks are a subset of revoked ones." + COUNT_HELP,
                width=6,
            ),
            ts(
                16,
                "Redelivered by task",
                "short",
                Query(occurrences("celery_task_redelivered_total", TASK, "name"), "{{name}}"),
                description="A second task-received with the same retry count: Redis visibility "
                "timeout passed, or a worker was lost holding the task. With acks_late "
                "the task runs twice." + COUNT_HELP,
                width=6,
                links=(Link("Queues & DLQ (unacked vs visibility timeout)", QUEUES),),
            ),
        ),
    )
    return Board(
        TASKS,
        "Celery / Tasks",
        "Per-task throughput, failure ratio, exceptions, retries and runtime.",
        (throughput, failures, retries, runtime, other),
    )
