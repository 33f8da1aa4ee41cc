"""What several boards show alike: help texts, what a setup cannot show (``Empty``),
the alerts' thresholds as colour steps, and the oldest-message panel."""

from __future__ import annotations

from typing import Any

from celery_vitals.rules.alerts import WORKER_DOWN
from celery_vitals.rules.config import RulesConfig
from celery_vitals.rules.dashboards.panels import Empty, Panel, Query, ts
from celery_vitals.rules.dashboards.queries import QUEUE, TASK, quantile

FAILURE_RATIO_HELP = (
    "failed / (succeeded + failed) over $__rate_interval. Retries are not "
    "failures (see retry amplification); a task that only ever fails shows 100 %."
)
QUEUE_WAIT_HELP = (
    "Time from publication (or ETA) to the start of execution, from "
    "celery_task_queue_wait_seconds: task-sent events (event setup), or the publication "
    "stamp of publishers running celery_vitals.agent.install(app) (agent setup; tasks of "
    "other publishers: celery_task_unstamped_total). High here but not in runtime: not "
    "enough workers."
)
OLDEST_HELP = (
    "Age of the oldest task waiting in the queue: from the publication stamp of the "
    "message at its head (Redis; RabbitMQ with the management API), else from task-sent "
    "events (sent, not received yet)."
)
DLQ_HELP = (
    "Messages in the dead-letter queues the exporter polls (--dlq names or globs; on "
    "RabbitMQ also the queues others dead-letter into)."
)
DLQ_INGRESS_HELP = (
    "Messages entering dead-letter queues per second: RabbitMQ's publish counter "
    "with the management API, else depth increases between polls (a lower "
    "bound)."
)
RUNTIME_HELP = "Execution time of successful tasks, from celery_task_runtime_seconds."
PREFETCH_HELP = (
    "Time a worker held a task before starting it (received -> started): high "
    "when long tasks block short ones prefetched behind them; lower "
    "worker_prefetch_multiplier or use -O fair."
)
WORKERS_DOWN_HELP = (
    "Workers CeleryWorkerDown counts as down (its recording rule "
    f"{WORKER_DOWN}, from the shipped rules): offline or silent for the worker timeout, "
    "purged since while their broker has fewer workers up, or a worker whose agent "
    "Prometheus cannot scrape. Needs the rules loaded (without them: 0)."
)
COUNT_HELP = (
    " Counted per $__rate_interval window (a series' first increment included, "
    "which rate() would miss)."
)
STARTS_HELP = (
    "worker-online events per worker: restarts in a loop mean OOM kills, crashes or "
    "max-tasks-per-child recycling."
)

# What a setup that works cannot show (docs/metrics.md, column source): said, not "No data".
NO_EVENT_STREAM = Empty(
    "no event stream (agent setup)",
    "Only the exporter's event stream makes this metric: in the agent setup (`celery-vitals "
    "serve --no-event-stream`, the agents in the workers count tasks and workers) it does "
    "not exist, by design.",
)
NO_BEAT = Empty(
    "no celery beat agent",
    "Only the agent inside celery beat serves its schedule: celery_vitals.agent.install(app) "
    "in the app module beat loads (or a worker started with -B), its /metrics scraped by "
    "Prometheus. Empty without one, and for a cluster without periodic tasks.",
)
NO_QUEUE_WAIT = Empty(
    "no publication times",
    "Queue wait needs when each task was published: the stamp that "
    "celery_vitals.agent.install(app) adds in publishers (read by the workers' agents), or "
    "task-sent events (the event stream, task_send_sent_event=True). Empty where publishers "
    "send neither; celery_task_unstamped_total counts the agent setup's unstamped tasks.",
)
NO_PUBLICATION_TIME = Empty(
    "no waiting message with a publication time",
    "The age needs when the oldest waiting message was published: the stamp that "
    "celery_vitals.agent.install(app) adds in publishers, which the exporter reads at each "
    "queue's head (Redis; RabbitMQ with --rabbitmq-management-url), or task-sent events "
    "(the event stream, task_send_sent_event=True). Empty while no message waits, on SQS, "
    "and where publishers send neither.",
)
NO_AGENT = Empty(
    "needs the agent in the workers",
    "Only the agent inside the worker (celery_vitals.agent.install) measures this: empty "
    "where the exporter alone watches the workers.",
)
RABBITMQ_ONLY = Empty(
    "RabbitMQ only",
    "Only RabbitMQ counts a queue's consumers: empty on Redis and SQS, which cannot tell.",
)


def failure_steps(c: RulesConfig) -> tuple[tuple[float, str], ...]:
    """CeleryTaskFailureRateHigh's warning and critical failure ratios."""
    return (
        (c.number("failure_ratio_warning"), "orange"),
        (c.number("failure_ratio_critical"), "red"),
    )


def oldest_steps(c: RulesConfig) -> tuple[tuple[float, str], ...]:
    """CeleryQueueOldestMessageTooOld's warning and critical ages."""
    return (
        (c.number("oldest_message_warning"), "orange"),
        (c.number("oldest_message_critical"), "red"),
    )


def oldest_by_queue(c: RulesConfig, pid: int, **options: Any) -> Panel:
    """The age of each queue's oldest waiting message, coloured at the alert's ages."""
    return ts(
        pid,
        "Oldest waiting message by queue",
        "s",
        Query(
            f"max by (queue_name) (celery_queue_oldest_message_age_seconds{{{QUEUE}}})",
            "{{queue_name}}",
        ),
        description=OLDEST_HELP,
        width=8,
        thresholds=oldest_steps(c),
        empty=NO_PUBLICATION_TIME,
        **options,
    )


def queue_wait_by_queue(pid: int, **options: Any) -> Panel:
    """The p95 queue wait of each queue (the Overview and "Celery is slow" boards)."""
    return ts(
        pid,
        "Queue wait p95 by queue",
        "s",
        Query(
            quantile(0.95, "celery_task_queue_wait_seconds", TASK, "queue_name"),
            "{{queue_name}}",
        ),
        description=QUEUE_WAIT_HELP,
        empty=NO_QUEUE_WAIT,
        width=8,
        **options,
    )
