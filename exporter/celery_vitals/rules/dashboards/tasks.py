"""Celery / Tasks: per-task throughput, failure ratio, exceptions, retries and runtime."""

from __future__ import annotations

from celery_vitals.rules.alerts import (
    LAST_SUCCESS,
    PERIODIC_BEAT,
    PERIODIC_CONFIG,
    PERIODIC_UNSUCCEEDED,
)
from celery_vitals.rules.config import RulesConfig
from celery_vitals.rules.dashboards.panels import Board, Column, Link, Panel, Query, Row, ts
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
    NO_BEAT,
    RUNTIME_HELP,
    failure_steps,
)
from celery_vitals.rules.promql import QUEUES, TASKS, periodic_age, periodic_limit, series


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
        "Per-task throughput, failure ratio, exceptions, retries, runtime and celery beat's "
        "schedule.",
        (throughput, failures, retries, runtime, other, _schedule(c)),
    )


#: An entry's row of the schedule table: one per (broker, entry, name).
ENTRY = "broker, entry, name"
BEAT_TASK = 'broker=~"$broker", name=~"$task"'


def _per_entry(expr: str) -> str:
    """``expr`` (by broker and task name) on each beat entry of the task."""
    return (
        f"max by ({ENTRY}) (\n"
        f"  group by ({ENTRY}) (celery_beat_entry_interval_seconds{{{BEAT_TASK}}})\n"
        f"  * on (broker, name) group_left () {expr}\n"
        ")"
    )


def _schedule(c: RulesConfig) -> Row:
    """celery beat's schedule, from the agent inside beat: the beats, and every entry with
    its interval, last and next send, its task's last success and whether it is late."""
    # the agents' and the exporter's, else the rules' latch (it survives their restarts)
    last_success = (
        "(\n  max by (broker, name) "
        f"({series('celery_task_last_success_timestamp_seconds', BEAT_TASK)})\n"
        f"  or {series(LAST_SUCCESS, BEAT_TASK)}\n)"
    )
    late = (
        f"{periodic_age(series(LAST_SUCCESS, BEAT_TASK), series(PERIODIC_UNSUCCEEDED, BEAT_TASK))}"
        f"\n> bool {periodic_limit(series(PERIODIC_BEAT, BEAT_TASK), PERIODIC_CONFIG)}"
    )

    def entry(gauge: str) -> str:
        return f"max by ({ENTRY}) ({series(f'celery_beat_entry_{gauge}', BEAT_TASK)})"

    return Row(
        105,
        "Schedule (celery beat)",
        (
            Panel(
                17,
                "table",
                "celery beat agents",
                "short",
                (
                    Query(
                        "count by (broker, hostname, scheduler, instance) "
                        '(celery_beat_info{broker=~"$broker"})',
                        instant=True,
                    ),
                ),
                description="The beats whose agent Prometheus scrapes, with their scheduler "
                "class: exactly one per broker. Two serving the same entries send each "
                "twice (CeleryBeatDuplicate); none that was there before pages "
                "CeleryBeatDown.",
                width=8,
                empty=NO_BEAT,
                runbook_url=f"{c.runbook_url}#celerybeatdown",
            ),
            Panel(
                18,
                "table",
                "Schedule: every beat entry",
                "s",
                (
                    Query(entry("interval_seconds"), instant=True),
                    Query(f"{entry('last_run_timestamp_seconds')} * 1000", instant=True),
                    Query(f"{entry('next_run_timestamp_seconds')} * 1000", instant=True),
                    Query(f"{_per_entry(last_success)} * 1000", instant=True),
                    Query(_per_entry(f"(\n{late}\n)"), instant=True),
                ),
                description="Every entry of celery beat's schedule (entry: its name; name: its "
                "task): how often it runs (a crontab: the gap between its last and next run), "
                "when beat last sent it and sends it next, when its task last succeeded, and "
                "whether that success is late: older than the interval plus slack "
                "(periodic_slack_ratio, periodic_slack_min), or than the task's "
                "periodic_tasks limit, as CeleryPeriodicTaskMissed counts. A next run in the "
                "past: beat is stuck (CeleryBeatDown). Sort by any column. Late needs the "
                "shipped rules loaded (their recording rules "
                f"{PERIODIC_BEAT} and {PERIODIC_UNSUCCEEDED}, and your periodic_tasks).",
                width=16,
                height=10,
                empty=NO_BEAT,
                columns=(
                    Column("Interval", "s"),
                    Column("Last sent", "dateTimeFromNow"),
                    Column("Next run", "dateTimeFromNow"),
                    Column("Last success", "dateTimeFromNow"),
                    Column("Late", "none", flag=("LATE", "on time")),
                ),
                sort_by="Late",
                task_link=True,
                runbook_url=f"{c.runbook_url}#celeryperiodictaskmissed",
            ),
        ),
    )
