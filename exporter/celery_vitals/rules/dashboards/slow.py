"""Celery / Celery is slow: the diagnosis tree from top to bottom (task runtime, queue
wait, prefetch wait, broker latency, then what the exporter may be missing)."""

from __future__ import annotations

from celery_vitals.rules.config import RulesConfig
from celery_vitals.rules.dashboards.panels import Board, Link, Query, Row, ts
from celery_vitals.rules.dashboards.queries import (
    BROKER,
    RUNTIME_PERCENTILES,
    TASK,
    WORKER,
    occurrences,
    percentiles,
    quantile,
    sum_rate,
)
from celery_vitals.rules.dashboards.shared import (
    COUNT_HELP,
    NO_EVENT_STREAM,
    NO_QUEUE_WAIT,
    PREFETCH_HELP,
    QUEUE_WAIT_HELP,
    RUNTIME_HELP,
    oldest_by_queue,
    queue_wait_by_queue,
)
from celery_vitals.rules.promql import QUEUES, SLOW, WORKERS


def board(c: RulesConfig) -> Board:
    """ "Celery is slow": the diagnosis tree, top to bottom."""
    runtime = Row(
        100,
        "1. Task runtime: are the tasks themselves slow?",
        (
            ts(1, "Runtime p50 / p95 / p99", "s", *RUNTIME_PERCENTILES, description=RUNTIME_HELP),
            ts(
                2,
                "Runtime p95 by task",
                "s",
                Query(quantile(0.95, "celery_task_runtime_seconds", TASK, "name"), "{{name}}"),
                description=RUNTIME_HELP + " Slow here: look at the task and what it calls.",
                task_link=True,
            ),
        ),
    )
    queue_wait = Row(
        101,
        "2. Queue wait: do tasks wait for a free worker?",
        (
            ts(
                3,
                "Queue wait p50 / p95 / p99",
                "s",
                *percentiles("celery_task_queue_wait_seconds", TASK),
                description=QUEUE_WAIT_HELP,
                empty=NO_QUEUE_WAIT,
                width=8,
            ),
            queue_wait_by_queue(4),
            oldest_by_queue(c, 5, links=(Link("Queues & DLQ", QUEUES),)),
        ),
    )
    prefetch = Row(
        102,
        "3. Prefetch wait: do tasks sit in a busy worker's prefetch buffer?",
        (
            ts(
                6,
                "Prefetch wait p50 / p95 / p99",
                "s",
                *percentiles("celery_task_prefetch_wait_seconds", TASK),
                description=PREFETCH_HELP,
                width=8,
            ),
            ts(
                7,
                "Prefetch wait p95 by task",
                "s",
                Query(
                    quantile(0.95, "celery_task_prefetch_wait_seconds", TASK, "name"), "{{name}}"
                ),
                description=PREFETCH_HELP,
                width=8,
                task_link=True,
            ),
            ts(
                8,
                "Reserved (prefetched) tasks by worker",
                "short",
                Query(
                    f"sum by (hostname) (celery_worker_tasks_reserved{{{WORKER}}})", "{{hostname}}"
                ),
                description="Received and not started: prefetched behind running tasks.",
                width=8,
                min=0,
                links=(Link("Workers", WORKERS),),
            ),
        ),
    )
    broker = Row(
        103,
        "4. Broker: is the broker slow, unreachable or full?",
        (
            ts(
                9,
                "Broker poll duration p50 / p95 / p99",
                "s",
                *percentiles("celery_broker_probe_duration_seconds", BROKER),
                description="Time one queue poll of the broker took (a few round trips): the "
                "broker's latency as a client sees it.",
                width=6,
            ),
            ts(
                10,
                "Broker up",
                "short",
                Query(f"min by (broker) (celery_broker_up{{{BROKER}}})", "{{broker}}"),
                description="1 when the last queue poll reached the broker.",
                width=6,
                min=0,
            ),
            ts(
                11,
                "Broker memory used vs limit",
                "bytes",
                Query(
                    f"max by (broker) (celery_broker_memory_used_bytes{{{BROKER}}})",
                    "{{broker}} used",
                ),
                Query(
                    f"max by (broker) (celery_broker_memory_limit_bytes{{{BROKER}}})",
                    "{{broker}} limit",
                ),
                description="Redis: used_memory and maxmemory (limit 0 = unlimited); RabbitMQ: "
                "memory used and the high watermark.",
                width=6,
                min=0,
            ),
            ts(
                12,
                "Broker poll errors by error",
                "short",
                Query(
                    occurrences("celery_broker_probe_errors_total", BROKER, "error"), "{{error}}"
                ),
                description="Failed queue polls by error class." + COUNT_HELP,
                width=6,
            ),
        ),
    )
    blind = Row(
        104,
        "5. The exporter's blind spots: is the picture complete?",
        (
            ts(
                13,
                "Event lag",
                "s",
                Query(
                    f"max by (instance) (celery_vitals_event_lag_seconds{{{BROKER}}})",
                    "{{instance}}",
                ),
                description="Exporter receive time minus the newest event's timestamp. Growing: "
                "the exporter falls behind the event stream; constant offset: clock "
                "skew between workers and exporter.",
                width=8,
                empty=NO_EVENT_STREAM,
            ),
            ts(
                14,
                "Event stream up and reconnects",
                "short",
                Query(
                    f"min by (instance) (celery_vitals_event_stream_up{{{BROKER}}})",
                    "{{instance}} up",
                ),
                Query(
                    f"sum by (instance) (increase(celery_vitals_event_stream_reconnects_total"
                    f"{{{BROKER}}}[$__rate_interval]))",
                    "{{instance}} reconnects",
                ),
                description="Up: connected to the broker's event exchange. Reconnects: lost and "
                "regained connections (events in between are lost).",
                width=8,
                min=0,
                empty=NO_EVENT_STREAM,
            ),
            ts(
                15,
                "Heartbeats missed per second",
                "ops",
                Query(
                    sum_rate("celery_vitals_heartbeats_missed_total", BROKER, "instance"),
                    "{{instance}}",
                ),
                description="Worker heartbeats that never arrived while the worker stayed online: "
                "the event stream is losing events, so task counts are low too.",
                width=8,
            ),
            ts(
                16,
                "Tracker evictions per second by reason",
                "ops",
                Query(
                    sum_rate("celery_vitals_tracker_evictions_total", BROKER, "reason"),
                    "{{reason}}",
                ),
                description="Unfinished tasks dropped from the uuid map (capacity: raise "
                "--max-tracked-tasks; age: raise --max-task-age for long ETAs). Their "
                "later events count under name=unknown.",
                width=6,
            ),
            ts(
                17,
                "Events with an unknown uuid by type",
                "short",
                Query(
                    occurrences("celery_vitals_unknown_uuid_events_total", BROKER, "type"),
                    "{{type}}",
                ),
                description="Task events for a uuid the exporter never saw sent or received: it "
                "started late, or lost or evicted the first events." + COUNT_HELP,
                width=6,
            ),
            ts(
                18,
                "Label values folded into other",
                "short",
                Query(
                    occurrences(
                        "celery_vitals_label_values_folded_total", BROKER, "label", "reason"
                    ),
                    "{{label}} {{reason}}",
                ),
                description="The cardinality guard replaced label values by 'other': raise the "
                "--max-* caps, or stop generating task or queue names dynamically." + COUNT_HELP,
                width=6,
            ),
            ts(
                19,
                "Events skipped by reason",
                "short",
                Query(
                    occurrences("celery_vitals_events_skipped_total", BROKER, "reason"),
                    "{{reason}}",
                ),
                description="Events or message bodies the exporter could not use." + COUNT_HELP,
                width=6,
            ),
            ts(
                20,
                "Events received per second by type",
                "ops",
                Query(sum_rate("celery_vitals_events_total", BROKER, "type"), "{{type}}"),
                description="No task-* types while workers are busy: task events are off.",
                stack=True,
            ),
            ts(
                21,
                "Tasks tracked by uuid",
                "short",
                Query(
                    f"sum by (instance) (celery_vitals_tracked_tasks{{{BROKER}}})", "{{instance}}"
                ),
                description="Sent or received and not finished; evictions start at "
                "--max-tracked-tasks.",
                min=0,
            ),
        ),
    )
    return Board(
        SLOW,
        "Celery / Celery is slow",
        "The diagnosis tree from top to bottom: task runtime, queue wait, prefetch "
        "wait, broker latency, then what the exporter may be missing.",
        (runtime, queue_wait, prefetch, broker, blind),
    )
