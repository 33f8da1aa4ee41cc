"""Celery / Queues & DLQ: queue depth, ingress vs egress, oldest message, drain time,
consumers, unacked deliveries and dead-letter queues."""

from __future__ import annotations

from celery_vitals.rules import promql
from celery_vitals.rules.config import RulesConfig
from celery_vitals.rules.dashboards.panels import Board, Link, Panel, Query, Row, ts
from celery_vitals.rules.dashboards.queries import (
    BROKER,
    DLQ,
    QUEUE,
    TASK,
    WINDOW,
    occurrences,
    sum_rate,
)
from celery_vitals.rules.dashboards.shared import (
    COUNT_HELP,
    DLQ_HELP,
    DLQ_INGRESS_HELP,
    RABBITMQ_ONLY,
    oldest_by_queue,
)
from celery_vitals.rules.promql import QUEUES, TASKS


def board(c: RulesConfig) -> Board:
    """Queue depth, flow, unacked deliveries and dead-letter queues."""
    depth = Row(
        100,
        "Depth",
        (
            ts(
                1,
                "Messages waiting by queue",
                "short",
                Query(f"sum by (queue_name) (celery_queue_length{{{QUEUE}}})", "{{queue_name}}"),
                Query(
                    f"sum by (queue_name) (celery_queue_delayed{{{QUEUE}}})",
                    "{{queue_name}} delayed",
                ),
                description="Messages ready in the broker queue, every priority level "
                "(celery_queue_length; absent for a queue the broker does not know). "
                "SQS: also messages sent with a delay that has not passed yet "
                "(celery_queue_delayed).",
                width=8,
                min=0,
            ),
            oldest_by_queue(c, 2),
            ts(
                3,
                "Drain-time estimate by queue",
                "s",
                Query(
                    promql.drain_time(
                        f"sum by (queue_name) (celery_queue_length{{{QUEUE}}})",
                        sum_rate("celery_task_received_total", QUEUE, "queue_name"),
                    ),
                    "{{queue_name}}",
                ),
                description="Messages waiting / messages taken by workers per second: how long "
                "the backlog lasts at the current egress, ignoring new arrivals, which wait "
                "behind it: what a task published now waits (CeleryQueueSlowDrain's "
                "estimate; red: its objective). Whether the backlog shrinks at all: Ingress "
                "vs egress. +Inf: nothing was received from that queue (see consumers).",
                width=8,
                thresholds=((c.number("queue_drain_slo"), "red"),),
            ),
        ),
    )
    egress = sum_rate("celery_task_received_total", QUEUE, "queue_name")
    flow = Row(
        101,
        "Flow",
        (
            ts(
                4,
                "Ingress vs egress by queue",
                "ops",
                Query(
                    promql.ingress(
                        sum_rate("celery_task_sent_total", QUEUE, "queue_name"),
                        egress,
                        f"sum by (queue_name) (deriv(celery_queue_length{{{QUEUE}}}[{WINDOW}]))",
                    ),
                    "{{queue_name}} in",
                ),
                Query(egress, "{{queue_name}} out"),
                description="In: tasks published to the queue per second. From task-sent "
                "events where the queue has them (the event setup, with task_send_sent_event "
                "in the publishers); otherwise, in both setups, out plus the change of the "
                "queue's depth, never below 0 (the rules' "
                f"queue_name:celery_queue_ingress:rate{c.text('rate_window')}). Out: tasks "
                "workers received from "
                "it (retries and redeliveries too). In above out for long: the queue climbs; "
                "add workers.",
                width=12,
            ),
            ts(
                5,
                "Consumers by queue",
                "short",
                Query(f"sum by (queue_name) (celery_queue_consumers{{{QUEUE}}})", "{{queue_name}}"),
                description="Consumers of the queue. 0 with messages waiting: nobody consumes "
                "the queue (a misspelled queue name or no worker started with -Q for it).",
                width=6,
                min=0,
                empty=RABBITMQ_ONLY,
            ),
            Panel(
                6,
                "state-timeline",
                "Queue known to the broker",
                "short",
                (Query(f"min by (queue_name) (celery_queue_exists{{{QUEUE}}})", "{{queue_name}}"),),
                description="0 for a configured queue the broker does not know (a typo in "
                "--queue or in the workers' -Q).",
                width=6,
                up_down=True,
            ),
        ),
    )
    unacked = Row(
        102,
        "Unacknowledged deliveries (Redis visibility timeout)",
        (
            ts(
                7,
                "Unacked messages by queue",
                "short",
                Query(f"sum by (queue_name) (celery_queue_unacked{{{QUEUE}}})", "{{queue_name}}"),
                description="Messages delivered to a worker and not acknowledged yet (prefetched, "
                "or running with acks_late). SQS: in flight, received and not deleted; "
                "back in the queue after its VisibilityTimeout.",
                min=0,
            ),
            ts(
                8,
                "Oldest unacked delivery vs visibility timeout",
                "s",
                Query(
                    f"max by (queue_name) (celery_queue_oldest_unacked_age_seconds{{{QUEUE}}})",
                    "{{queue_name}}",
                ),
                Query(
                    f"max(celery_queue_visibility_timeout_seconds{{{BROKER}}})",
                    "visibility timeout",
                ),
                description="On Redis an unacked message is handed to another worker once its "
                "age passes visibility_timeout: a long task with acks_late or an ETA "
                "task then runs twice.",
                links=(Link("Tasks (redelivered)", TASKS),),
            ),
        ),
    )
    dlq = Row(
        103,
        "Dead-letter queues",
        (
            ts(
                9,
                "Messages in dead-letter queues",
                "short",
                Query(f"sum by (queue_name) (celery_dlq_length{{{DLQ}}})", "{{queue_name}}"),
                description=DLQ_HELP,
                width=6,
                min=0,
            ),
            ts(
                10,
                "Into dead-letter queues per second",
                "ops",
                Query(sum_rate("celery_dlq_ingress_total", DLQ, "queue_name"), "{{queue_name}}"),
                description=DLQ_INGRESS_HELP,
                width=6,
            ),
            ts(
                11,
                "Failed after retries by task",
                "short",
                Query(
                    occurrences("celery_task_failed_after_retries_total", TASK, "name"), "{{name}}"
                ),
                description="Retries exhausted: the task-level signal that precedes dead letters."
                + COUNT_HELP,
                width=6,
                task_link=True,
            ),
            ts(
                12,
                "Rejected without requeue by task",
                "short",
                Query(
                    occurrences("celery_task_rejected_total", f'{TASK}, requeue="false"', "name"),
                    "{{name}}",
                ),
                description="Reject(requeue=False): the broker dead-letters the message (RabbitMQ "
                "with a dead-letter exchange) or drops it." + COUNT_HELP,
                width=6,
                task_link=True,
            ),
            ts(
                13,
                "Dead letters by task",
                "short",
                Query(
                    f'sum by (queue_name, name) (celery_dlq_messages{{{DLQ}, name=~"$task"}})',
                    "{{queue_name}} {{name}}",
                ),
                description="Messages in each dead-letter queue by task name, from a sample the "
                "exporter reads without consuming (--dlq-sample; scaled to the depth "
                "beyond it). `celery-vitals dlq list` shows the same with origins, "
                "reasons and ages.",
                width=24,
                min=0,
                task_link=True,
            ),
        ),
    )
    return Board(
        QUEUES,
        "Celery / Queues & DLQ",
        "Queue depth, ingress vs egress, oldest message, drain time, consumers, "
        "unacked deliveries and dead-letter queues.",
        (depth, flow, unacked, dlq),
    )
