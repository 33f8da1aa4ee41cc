"""Celery / Workers: liveness, heartbeat age, active vs reserved (prefetch), load,
restarts, missing task events, and from the agent: pool utilisation, memory and exits."""

from __future__ import annotations

from celery_vitals.rules.alerts import WORKER_DOWN
from celery_vitals.rules.config import RulesConfig
from celery_vitals.rules.dashboards.panels import Board, Panel, Query, Row, single, ts
from celery_vitals.rules.dashboards.queries import (
    BROKER,
    WORKER,
    occurrences,
    workers_down,
)
from celery_vitals.rules.dashboards.shared import (
    COUNT_HELP,
    NO_AGENT,
    STARTS_HELP,
    WORKERS_DOWN_HELP,
)
from celery_vitals.rules.promql import WORKERS


def board(c: RulesConfig) -> Board:
    """Worker liveness, load, prefetch and restarts."""
    liveness = Row(
        100,
        "Liveness",
        (
            single(
                1,
                "Workers up",
                "short",
                Query(f"sum(celery_worker_up{{{WORKER}}})", "up"),
                description="Workers sending heartbeats.",
            ),
            single(
                2,
                "Workers down",
                "short",
                workers_down(),
                description=WORKERS_DOWN_HELP,
                thresholds=((1, "red"),),
            ),
            single(
                3,
                "Workers without task events",
                "short",
                Query(f"sum(celery_worker_task_events_missing{{{WORKER}}})", "missing"),
                description="Workers whose heartbeats report processed tasks while no task "
                "event arrived from them: start them with -E.",
                thresholds=((1, "red"),),
            ),
            Panel(
                4,
                "state-timeline",
                "Up by worker",
                "short",
                (
                    Query(
                        f"max by (hostname) (celery_worker_up{{{WORKER}}})\n"
                        f"or max by (hostname) ({WORKER_DOWN}{{{WORKER}}}) * 0",
                        "{{hostname}}",
                    ),
                ),
                description="UP while heartbeats arrive; DOWN after worker-offline or the "
                "worker timeout, and while CeleryWorkerDown counts the worker as down (an "
                "agent Prometheus cannot scrape, a purged worker; from the shipped rules).",
                width=12,
                height=4,
                up_down=True,
            ),
        ),
    )
    load = Row(
        101,
        "Load and prefetch",
        (
            ts(
                5,
                "Active vs reserved (prefetched) by worker",
                "short",
                Query(
                    f"sum by (hostname) (celery_worker_tasks_active{{{WORKER}}})",
                    "{{hostname}} active",
                ),
                Query(
                    f"sum by (hostname) (celery_worker_tasks_reserved{{{WORKER}}})",
                    "{{hostname}} reserved",
                ),
                description="Active: executing now (from heartbeats). Reserved: received and not "
                "started, waiting in the worker's prefetch buffer while other workers "
                "may idle.",
                min=0,
            ),
            ts(
                6,
                "Heartbeat age by worker",
                "s",
                Query(
                    f"time() - max by (hostname) "
                    f"(celery_worker_last_heartbeat_timestamp_seconds{{{WORKER}}})",
                    "{{hostname}}",
                ),
                description="Seconds since the worker's last heartbeat arrived (Celery sends one "
                "every 2 s): a saw-tooth below 2-4 s is healthy.",
                thresholds=((10, "orange"), (30, "red")),
            ),
            ts(
                7,
                "Load average (1 min) by worker",
                "short",
                Query(f"max by (hostname) (celery_worker_load1{{{WORKER}}})", "{{hostname}}"),
                description="The worker host's one-minute load average, from heartbeats.",
                min=0,
            ),
            ts(
                8,
                "Starts and restarts by worker",
                "short",
                Query(
                    occurrences("celery_worker_starts_total", WORKER, "hostname"), "{{hostname}}"
                ),
                description=STARTS_HELP + COUNT_HELP,
                min=0,
            ),
            ts(
                9,
                "Task events missing by worker",
                "short",
                Query(
                    f"max by (hostname) (celery_worker_task_events_missing{{{WORKER}}})",
                    "{{hostname}}",
                ),
                Query(
                    f"max(celery_vitals_task_sent_events_missing{{{BROKER}}})",
                    "publishers without task-sent events",
                ),
                description="1: the worker processes tasks but sends no task events, so none of "
                "its tasks is counted (start it with -E). Publishers without task-sent "
                "events: tasks were received last minute that no task-sent announced "
                "(set task_send_sent_event=True where tasks are published), so their "
                "queue is the default one and they have no queue wait; the exporter's event "
                "stream tells, so it is absent in the agent setup (`serve "
                "--no-event-stream`). `celery-vitals doctor` names both.",
                min=0,
                width=24,
                height=6,
            ),
        ),
    )
    agent = Row(
        102,
        "Pool, memory and exits (from the agent inside each worker)",
        (
            ts(
                10,
                "Pool utilisation by worker",
                "percentunit",
                Query(
                    f"sum by (hostname) (celery_worker_pool_busy_processes{{{WORKER}}})\n"
                    # max: the exporter's stats polls report the same pool as the agent
                    f"/ max by (hostname) (celery_worker_pool_processes{{{WORKER}}})",
                    "{{hostname}}",
                ),
                description="Busy pool processes / pool processes. At 100 % with a backlog "
                "waiting (CeleryWorkerPoolSaturated) the pool is too small, or its "
                "tasks hang.",
                min=0,
                empty=NO_AGENT,
                thresholds=((c.number("pool_saturation_ratio"), "red"),),
            ),
            ts(
                11,
                "Resident memory by process",
                "bytes",
                Query(
                    f"max by (hostname, process) "
                    f"(celery_worker_process_resident_memory_bytes{{{WORKER}}})",
                    "{{hostname}} {{process}}",
                ),
                description="RSS of the worker's main process and of each pool slot (a recycled "
                "child takes its slot's series). Red: the per-process limit of "
                "CeleryWorkerMemoryGrowing.",
                min=0,
                empty=NO_AGENT,
                thresholds=((c.number("worker_process_memory_bytes"), "red"),),
            ),
            ts(
                12,
                "Pool process exits by reason",
                "short",
                Query(
                    occurrences(
                        "celery_worker_pool_process_exits_total", WORKER, "hostname", "reason"
                    ),
                    "{{hostname}} {{reason}}",
                ),
                description="recycled: max-tasks or max-memory recycling (healthy); "
                "time_limit: ended by the pool because its task exceeded its hard time "
                "limit; terminated: signalled by the pool on request (revoke with "
                "terminate=True); killed: ended by another signal, the OOM killer's SIGKILL among "
                "them; failed: another non-zero exit." + COUNT_HELP,
                min=0,
                empty=NO_AGENT,
            ),
            ts(
                13,
                "Reserved (prefetched) by worker",
                "short",
                Query(
                    f"sum by (hostname) (celery_worker_tasks_reserved{{{WORKER}}})",
                    "{{hostname}} reserved",
                ),
                Query(
                    f"sum by (hostname) (celery_worker_eta_tasks{{{WORKER}}})",
                    "{{hostname}} ETA/countdown",
                ),
                Query(
                    f"max by (hostname) (celery_worker_prefetch_limit{{{WORKER}}})",
                    "{{hostname}} prefetch limit",
                ),
                description="Tasks the worker holds and has not started (ETA tasks among them, "
                "which a deploy loses unless acks_late), against the consumer's "
                "prefetch count. ETA/countdown: from the agent only, absent where the exporter "
                "alone watches the workers.",
                min=0,
            ),
        ),
    )
    return Board(
        WORKERS,
        "Celery / Workers",
        "Workers up, heartbeat age, active vs reserved (prefetch), load, restarts, "
        "missing task events, and from the agent: pool utilisation, memory and "
        "exits.",
        (liveness, load, agent),
    )
