"""Celery / Overview: is Celery healthy right now? Failures, queue wait, dead letters,
workers, the broker, the exporter itself and the alerts firing."""

from __future__ import annotations

from celery_vitals.rules import promql
from celery_vitals.rules.alerts import WORKER_DOWN
from celery_vitals.rules.config import RulesConfig
from celery_vitals.rules.dashboards.panels import Board, Empty, Link, Panel, Query, Row, single, ts
from celery_vitals.rules.dashboards.queries import (
    ALERTS_FIRING,
    BROKER,
    DLQ,
    FAILED,
    QUEUE,
    TASK,
    WORKER,
    failure_ratio,
    quantile,
    sum_rate,
    workers_down,
)
from celery_vitals.rules.dashboards.shared import (
    DLQ_HELP,
    DLQ_INGRESS_HELP,
    FAILURE_RATIO_HELP,
    NO_EVENT_STREAM,
    NO_PUBLICATION_TIME,
    NO_QUEUE_WAIT,
    OLDEST_HELP,
    QUEUE_WAIT_HELP,
    WORKERS_DOWN_HELP,
    failure_steps,
    oldest_by_queue,
    oldest_steps,
    queue_wait_by_queue,
)
from celery_vitals.rules.promql import OVERVIEW, QUEUES, SLOW, TASKS, WORKERS


def _targets(c: RulesConfig) -> Panel:
    """The celery-vitals targets Prometheus scrapes, by broker: none says why every other
    panel is empty (the broker variable has no value then)."""
    series = promql.scope("celery_vitals_build_info", c.selector)
    return single(
        22,
        "celery-vitals targets by broker",
        "short",
        Query("count by (broker) (celery_vitals_build_info)", "{{broker}}"),
        description="Targets (the exporter and the workers' agents) that export "
        "celery_vitals_build_info, by the broker they watch: the values of the broker "
        "variable. None: Prometheus scrapes no celery-vitals target that the selector "
        "matches, and every other panel is empty (CeleryExporterMissing).",
        width=24,
        height=3,
        named=True,
        empty=Empty(
            f"No celery-vitals target is scraped: Prometheus has no {series}. Check the "
            "scrape configuration and the selector (runbook: CeleryExporterMissing)."
        ),
        runbook_url=f"{c.runbook_url}#celeryexportermissing",
    )


def _exporters_up(c: RulesConfig) -> Query:
    """Prometheus' up of the selected brokers' exporters: the targets that exported
    celery_broker_up within exporter_remembered, as CeleryExporterDown counts them (a target
    that is down exports nothing, so its broker comes from before). up has no broker label
    (promql.scope leaves it alone): the join picks the targets."""
    remembered = c.text("exporter_remembered")
    return Query(
        "min(up and on (job, instance) max by (job, instance) "
        f"(max_over_time(celery_broker_up{{{BROKER}}}[{remembered}])))",
        "up",
    )


def board(c: RulesConfig) -> Board:
    """Is Celery healthy right now?"""
    now = Row(
        100,
        "Right now",
        (
            _targets(c),
            single(
                1,
                "Failure ratio",
                "percentunit",
                Query(failure_ratio(), "failure ratio"),
                description=FAILURE_RATIO_HELP,
                thresholds=failure_steps(c),
                links=(Link("Tasks", TASKS),),
            ),
            single(
                2,
                "Queue wait p95",
                "s",
                Query(quantile(0.95, "celery_task_queue_wait_seconds", TASK), "p95"),
                description=QUEUE_WAIT_HELP,
                empty=NO_QUEUE_WAIT,
                thresholds=((10, "orange"), (60, "red")),
                links=(Link("Celery is slow", SLOW),),
            ),
            single(
                3,
                "Oldest waiting message",
                "s",
                Query(f"max(celery_queue_oldest_message_age_seconds{{{QUEUE}}})", "oldest"),
                description=OLDEST_HELP,
                thresholds=oldest_steps(c),
                links=(Link("Queues & DLQ", QUEUES),),
                empty=NO_PUBLICATION_TIME,
            ),
            single(
                4,
                "Messages in DLQs",
                "short",
                Query(f"sum(celery_dlq_length{{{DLQ}}})", "dlq"),
                description=DLQ_HELP,
                thresholds=((1, "orange"),),
                links=(Link("Queues & DLQ", QUEUES),),
            ),
            single(
                5,
                "Into DLQs",
                "ops",
                Query(sum_rate("celery_dlq_ingress_total", DLQ), "in"),
                description=DLQ_INGRESS_HELP,
                thresholds=((0.001, "red"),),
                links=(Link("Queues & DLQ", QUEUES),),
            ),
            single(
                6,
                "Celery alerts firing",
                "short",
                Query(f"count({ALERTS_FIRING}) or vector(0)", "firing"),
                description="Alerts named Celery* firing now (Prometheus' ALERTS series).",
                thresholds=((1, "red"),),
            ),
            single(
                7,
                "Workers up",
                "short",
                Query(f"sum(celery_worker_up{{{WORKER}}})", "up"),
                description="Workers sending heartbeats.",
                thresholds=(),
                links=(Link("Workers", WORKERS),),
            ),
            single(
                8,
                "Workers down",
                "short",
                workers_down(),
                description=WORKERS_DOWN_HELP,
                thresholds=((1, "red"),),
                links=(Link("Workers", WORKERS),),
            ),
            single(
                9,
                "Broker up",
                "short",
                Query(f"min(celery_broker_up{{{BROKER}}})", "broker"),
                description="1 when the exporter's last queue poll reached the broker.",
                up_down=True,
                thresholds=((1, "green"),),
            ),
            single(
                10,
                "Event stream up",
                "short",
                Query(f"min(celery_vitals_event_stream_up{{{BROKER}}})", "stream"),
                description="1 while the exporter's event stream is connected: with 0 every "
                "task and worker metric is frozen.",
                up_down=True,
                links=(Link("Celery is slow (exporter blind spots)", SLOW),),
                empty=NO_EVENT_STREAM,
            ),
            single(
                11,
                "Exporter scraped",
                "short",
                _exporters_up(c),
                description="Prometheus' up for the exporters of the selected brokers, whatever "
                "their job (the targets that exported celery_broker_up within "
                f"{c.text('exporter_remembered')}, as CeleryExporterDown counts them): DOWN "
                "means no queue, dead-letter or broker metrics. A worker's agent that cannot be "
                "scraped counts under Workers down.",
                up_down=True,
            ),
            single(
                12,
                "Event lag",
                "s",
                Query(f"max(celery_vitals_event_lag_seconds{{{BROKER}}})", "lag"),
                description="Exporter receive time minus the newest event's timestamp: a "
                "growing lag means the exporter falls behind (or clocks are skewed).",
                thresholds=((5, "orange"), (30, "red")),
                empty=NO_EVENT_STREAM,
            ),
        ),
    )
    tasks = Row(
        101,
        "Tasks",
        (
            ts(
                13,
                "Failure ratio by task (top 5)",
                "percentunit",
                Query(f"topk(5, {failure_ratio('name')})", "{{name}}"),
                description=FAILURE_RATIO_HELP,
                task_link=True,
                links=(Link("Tasks", TASKS),),
                min=0,
            ),
            ts(
                14,
                "Failures per second by task and exception (top 5)",
                "ops",
                Query(
                    f"topk(5, {sum_rate(FAILED, TASK, 'name', 'exception')})",
                    "{{name}} {{exception}}",
                ),
                description="Failed tasks by exception class: WorkerLostError means OOM kills, "
                "TimeLimitExceeded time limits, NotRegistered a deploy that changed "
                "task names.",
                task_link=True,
                links=(Link("Tasks", TASKS),),
            ),
        ),
    )
    queues = Row(
        102,
        "Queues",
        (
            queue_wait_by_queue(15, links=(Link("Celery is slow", SLOW),)),
            ts(
                16,
                "Messages waiting by queue",
                "short",
                Query(f"sum by (queue_name) (celery_queue_length{{{QUEUE}}})", "{{queue_name}}"),
                description="Messages ready in the broker queue (every priority level).",
                width=8,
                links=(Link("Queues & DLQ", QUEUES),),
            ),
            oldest_by_queue(c, 17, links=(Link("Queues & DLQ", QUEUES),)),
        ),
    )
    dead = Row(
        103,
        "Dead letters, workers, alerts",
        (
            ts(
                18,
                "Messages in dead-letter queues",
                "short",
                Query(f"sum by (queue_name) (celery_dlq_length{{{DLQ}}})", "{{queue_name}}"),
                description=DLQ_HELP,
                width=6,
                links=(Link("Queues & DLQ", QUEUES),),
            ),
            ts(
                19,
                "Into dead-letter queues per second",
                "ops",
                Query(sum_rate("celery_dlq_ingress_total", DLQ, "queue_name"), "{{queue_name}}"),
                description=DLQ_INGRESS_HELP,
                width=6,
                links=(Link("Queues & DLQ", QUEUES),),
            ),
            ts(
                20,
                "Workers up vs known",
                "short",
                Query(f"sum(celery_worker_up{{{WORKER}}})", "up"),
                Query(
                    f"count(max by (broker, hostname) (celery_worker_up{{{WORKER}}}) "
                    f"or max by (broker, hostname) ({WORKER_DOWN}{{{WORKER}}}))",
                    "known",
                ),
                description="Workers sending heartbeats, and every worker known: up, or down "
                "as CeleryWorkerDown sees it (dead agents and purged workers included).",
                width=6,
                min=0,
                links=(Link("Workers", WORKERS),),
            ),
            Panel(
                21,
                "table",
                "Firing Celery alerts by name",
                "short",
                (Query(f"sum by (alertname, severity) ({ALERTS_FIRING})", instant=True),),
                description="Firing alerts named Celery*, by name and severity (value: how many "
                "series fire). Each alert's runbook_url says what to do.",
                width=6,
            ),
        ),
    )
    return Board(
        OVERVIEW,
        "Celery / Overview",
        "Is Celery healthy right now: failures, queue wait, dead letters, workers, "
        "broker, the exporter itself and the alerts firing.",
        (now, tasks, queues, dead),
    )
