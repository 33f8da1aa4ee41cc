"""The metric catalogue: every metric celery-vitals exports, named once.

Collectors build their families from these specs, ``docs/metrics.md`` is
generated from them (``python -m celery_vitals.catalogue``), and the tests
check dashboards and alert rules against them. A metric that is not here
does not exist.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)

from celery_vitals.brokers import BROKER_LABEL

MetricType = Literal["counter", "gauge", "histogram", "info"]
# Who exports a metric: the exporter (event stream and broker polls), the agent inside
# each worker (celery_vitals.agent), or both under the same name and labels.
Source = Literal["both", "exporter", "agent"]

TASK_LABELS = ("name", "queue_name")
OPTIONAL_TASK_LABEL = "hostname"  # added to task metrics by --task-hostname-label
WORKER_LABELS = ("hostname",)
QUEUE_LABELS = ("queue_name",)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...] = ()
    group: str = "exporter"
    source: Source = "both"

    @property
    def family_name(self) -> str:
        """The name prometheus_client wants: counters without ``_total``, info without ``_info``."""
        if self.type == "counter":
            return self.name.removesuffix("_total")
        if self.type == "info":
            return self.name.removesuffix("_info")
        return self.name

    @property
    def series_names(self) -> tuple[str, ...]:
        """Every sample name this metric puts on /metrics (what PromQL may use)."""
        if self.type == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        if self.type == "counter":
            return (self.name, f"{self.family_name}_created")
        return (self.name,)


def _task(
    name: str, type_: MetricType, help_: str, extra: tuple[str, ...] = (), source: Source = "both"
) -> MetricSpec:
    return MetricSpec(name, type_, help_, TASK_LABELS + extra, group="task", source=source)


def _worker(
    name: str,
    type_: MetricType,
    help_: str,
    labels: tuple[str, ...] = WORKER_LABELS,
    source: Source = "both",
) -> MetricSpec:
    return MetricSpec(name, type_, help_, labels, group="worker", source=source)


def _queue(
    name: str, type_: MetricType, help_: str, labels: tuple[str, ...] = QUEUE_LABELS
) -> MetricSpec:
    return MetricSpec(name, type_, help_, labels, group="queue", source="exporter")


def _broker(name: str, type_: MetricType, help_: str, labels: tuple[str, ...] = ()) -> MetricSpec:
    return MetricSpec(name, type_, help_, labels, group="broker", source="exporter")


SPECS: tuple[MetricSpec, ...] = (
    # -- tasks -------------------------------------------------------------
    _task(
        "celery_task_sent_total",
        "counter",
        "Tasks published by a client (task-sent events; needs task_send_sent_event). None "
        "in the agent setup, where the rules derive a queue's ingress from the received "
        "counts and the queue's depth.",
        source="exporter",
    ),
    _task(
        "celery_task_received_total",
        "counter",
        "Tasks received by a worker (task-received events), redeliveries included.",
    ),
    _task("celery_task_started_total", "counter", "Tasks a worker started executing."),
    _task("celery_task_succeeded_total", "counter", "Tasks that finished successfully."),
    _task(
        "celery_task_failed_total",
        "counter",
        "Tasks that failed, by exception class name (NotRegistered for unknown task names).",
        ("exception",),
    ),
    _task("celery_task_retried_total", "counter", "Task executions that ended in a retry."),
    _task(
        "celery_task_rejected_total",
        "counter",
        "Tasks rejected by a worker; requeue=false sends them to the dead-letter route.",
        ("requeue",),
    ),
    _task(
        "celery_task_revoked_total",
        "counter",
        "Tasks revoked, expired ones included (see celery_task_expired_total).",
    ),
    _task(
        "celery_task_expired_total",
        "counter",
        "Tasks discarded because their expiry passed (a subset of revoked).",
    ),
    _task(
        "celery_task_failed_after_retries_total",
        "counter",
        "Tasks that failed for good after at least one retry (retries exhausted, or a "
        "different error on a later attempt): what precedes the dead-letter queue.",
    ),
    _task(
        "celery_task_redelivered_total",
        "counter",
        "A second task-received for a uuid with the same retry count: the broker "
        "redelivered it (visibility timeout or lost worker).",
    ),
    _task(
        "celery_task_runtime_seconds",
        "histogram",
        "Task execution time reported by the worker on success.",
    ),
    _task(
        "celery_task_queue_wait_seconds",
        "histogram",
        "Time from publication (or ETA) to start of execution: from task-sent events "
        "(exporter), or from the publication stamp of publishers with the agent (agent).",
    ),
    MetricSpec(
        "celery_task_unstamped_total",
        "counter",
        "Tasks the worker received without a publication stamp, by the queue it took them "
        "from: their publisher does not run celery_vitals.agent.install(app), so they have "
        "no celery_task_queue_wait_seconds in the agent setup.",
        QUEUE_LABELS,
        group="task",
        source="agent",
    ),
    _task(
        "celery_task_prefetch_wait_seconds",
        "histogram",
        "Time a worker held a task before starting it (received to started).",
    ),
    _task(
        "celery_task_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful run (dead-man's switch for periodic tasks).",
    ),
    # -- workers -----------------------------------------------------------
    _worker(
        "celery_worker_up",
        "gauge",
        "1 while the worker sends heartbeats, 0 once it went offline or missed them "
        "for the worker timeout.",
    ),
    _worker(
        "celery_worker_last_heartbeat_timestamp_seconds",
        "gauge",
        "Unix time (exporter clock) at which the worker's last heartbeat arrived.",
    ),
    _worker(
        "celery_worker_tasks_active",
        "gauge",
        "Tasks the worker is executing, from its last heartbeat.",
    ),
    _worker(
        "celery_worker_tasks_reserved",
        "gauge",
        "Tasks the worker received but has not started (prefetched).",
    ),
    _worker(
        "celery_worker_tasks_processed",
        "gauge",
        "Tasks the worker processed since it started, from its heartbeat (resets on restart).",
    ),
    _worker("celery_worker_load1", "gauge", "One-minute load average of the worker's host."),
    _worker("celery_worker_starts_total", "counter", "worker-online events: starts and restarts."),
    _worker(
        "celery_worker_task_events_missing",
        "gauge",
        "1 when the worker's heartbeats report processed tasks but no task event arrived "
        "from it: task events are disabled on that worker.",
    ),
    _worker(
        "celery_worker_info",
        "info",
        "What each worker runs: its Celery version and pool. The agent knows both; the "
        "exporter takes the version from worker events and the pool from its stats polls "
        "of the workers (at queue discovery, and on the next poll after a worker appears).",
        ("hostname", "version", "pool"),
    ),
    _worker(
        "celery_worker_pool_processes",
        "gauge",
        "Processes (or threads) in the worker's pool: its concurrency. The agent samples "
        "it; the exporter polls the workers' stats for it.",
    ),
    _worker(
        "celery_worker_prefetch_limit",
        "gauge",
        "The consumer's current prefetch count (QoS): how many unacknowledged tasks "
        "the worker may hold, 0 for no limit. The agent samples it; the exporter polls "
        "the workers' stats for it.",
    ),
    # -- workers, from the agent inside the worker (absent from the exporter) --
    _worker(
        "celery_worker_pool_busy_processes",
        "gauge",
        "Pool processes currently executing a task.",
        source="agent",
    ),
    _worker(
        "celery_worker_eta_tasks",
        "gauge",
        "Tasks with an ETA or countdown the worker holds in memory, waiting for their time.",
        source="agent",
    ),
    _worker(
        "celery_worker_process_resident_memory_bytes",
        "gauge",
        'Resident memory of the worker\'s main process (process="main") and of each '
        'pool process by slot index (process="0" to N-1; a replacement process takes '
        "over its slot's series).",
        ("hostname", "process"),
        source="agent",
    ),
    _worker(
        "celery_worker_pool_process_exits_total",
        "counter",
        "Pool processes that exited while the worker ran, by reason: recycled (exit "
        "code 0: max tasks or max memory per child), time_limit (ended by the pool "
        "itself, SIGTERM then SIGKILL, because its task exceeded its hard time limit; "
        "that task failed with TimeLimitExceeded), terminated (signalled by the pool "
        "on request: revoke(terminate=True), or a long-running task cancelled when the "
        "worker lost its broker connection), killed (by any other signal: the "
        "OOM killer's SIGKILL, kill -9; a task it ran failed with WorkerLostError), "
        "failed (another exit code).",
        ("hostname", "reason"),
        source="agent",
    ),
    # -- celery beat, from the agent inside beat (celery_vitals.agent.install) --
    MetricSpec(
        "celery_beat_info",
        "info",
        "Present (value 1) only on the /metrics of the agent inside a celery beat (or the "
        "beat of a worker started with -B): one per running beat. hostname: beat's node "
        "name (celerybeat@host; a -B beat: its worker's hostname); scheduler: the "
        "scheduler class as module:Class.",
        ("hostname", "scheduler"),
        group="beat",
        source="agent",
    ),
    MetricSpec(
        "celery_beat_entry_interval_seconds",
        "gauge",
        "Expected seconds between runs of a schedule entry (entry: its name; name: its "
        "task): an interval schedule's run_every; a crontab or solar schedule's next run "
        "minus its last run (minus now before its first run), read at every beat tick.",
        ("entry", "name"),
        group="beat",
        source="agent",
    ),
    MetricSpec(
        "celery_beat_entry_next_run_timestamp_seconds",
        "gauge",
        "Unix time at which beat will next send the entry's task.",
        ("entry", "name"),
        group="beat",
        source="agent",
    ),
    MetricSpec(
        "celery_beat_entry_last_run_timestamp_seconds",
        "gauge",
        "Unix time at which beat last sent the entry's task (the entry's last_run_at, "
        "persisted by the scheduler across restarts); absent until it has run once.",
        ("entry", "name"),
        group="beat",
        source="agent",
    ),
    MetricSpec(
        "celery_beat_entry_sent_total",
        "counter",
        "Times this beat process sent the entry's task since it started. Entries past "
        'CELERY_VITALS_AGENT_MAX_BEAT_ENTRIES share entry="other" (the loosest '
        "interval, the earliest next run, the latest last run, the sum of sends).",
        ("entry", "name"),
        group="beat",
        source="agent",
    ),
    MetricSpec(
        "celery_vitals_beat_agent_errors_total",
        "counter",
        "Failures inside the beat agent, which never stop beat, by part: entry (an "
        "entry's schedule raised when read: its interval and next run are left out), "
        "snapshot (the schedule could not be read at a tick: the last read is served), "
        "send (a send could not be counted).",
        ("part",),
        group="beat",
        source="agent",
    ),
    # -- queues and dead-letter queues (polled from the broker) -------------
    _queue(
        "celery_queue_length",
        "gauge",
        "Messages ready in the queue (all priority levels; SQS: "
        "ApproximateNumberOfMessages); absent when the queue is.",
    ),
    _queue(
        "celery_queue_unacked",
        "gauge",
        "Messages delivered to a consumer and not acknowledged (Redis; RabbitMQ with "
        "the management API; SQS: ApproximateNumberOfMessagesNotVisible, in flight until "
        "deleted or back after the visibility timeout).",
    ),
    _queue(
        "celery_queue_delayed",
        "gauge",
        "Messages sent with a delay that has not passed yet (SQS: "
        "ApproximateNumberOfMessagesDelayed).",
    ),
    _queue("celery_queue_consumers", "gauge", "Consumers of the queue (RabbitMQ)."),
    _queue(
        "celery_queue_exists",
        "gauge",
        "1 when the broker knows the queue, 0 for a configured queue it does not know.",
    ),
    _queue(
        "celery_queue_oldest_message_age_seconds",
        "gauge",
        "Age of the oldest message waiting in the queue: from the publication stamp "
        "(celery_vitals.agent.install in publishers) of the message at its head on Redis "
        "and RabbitMQ (management API), else from task-sent events (sent, not yet received); "
        "never for a dead-letter queue.",
    ),
    _queue(
        "celery_queue_oldest_unacked_age_seconds",
        "gauge",
        "Time since the oldest unacknowledged delivery from the queue (Redis); Redis "
        "redelivers it once this passes the visibility timeout.",
    ),
    _queue(
        "celery_queue_visibility_timeout_seconds",
        "gauge",
        "Time a delivered, unacknowledged message stays with its consumer before the "
        "broker hands it out again: Redis, the transport's visibility_timeout as the "
        "exporter is configured (the same for every queue); SQS, the queue's "
        "VisibilityTimeout attribute.",
    ),
    _queue(
        "celery_queue_max_receives",
        "gauge",
        "Receives after which SQS moves a message of the queue to its dead-letter queue "
        "(maxReceiveCount of the queue's RedrivePolicy).",
    ),
    _queue("celery_dlq_length", "gauge", "Messages in the dead-letter queue."),
    _queue(
        "celery_dlq_messages",
        "gauge",
        "Messages in the dead-letter queue by task name, from a bounded sample read "
        "without consuming on the poller thread (--dlq-sample; scaled up to the depth "
        "when the DLQ holds more). Messages that are not Celery tasks are not counted.",
        ("queue_name", "name"),
    ),
    _queue(
        "celery_dlq_ingress_total",
        "counter",
        "Messages that entered the dead-letter queue: from the broker's publish counter "
        "where it has one, else from depth increases between polls (a lower bound).",
    ),
    # -- the broker ------------------------------------------------------------
    _broker("celery_broker_up", "gauge", "1 when the last queue poll reached the broker."),
    _broker(
        "celery_broker_probe_duration_seconds",
        "histogram",
        "Time one queue poll of the broker took.",
    ),
    _broker(
        "celery_broker_probe_errors_total",
        "counter",
        "Queue polls that failed, by error class.",
        ("error",),
    ),
    _broker("celery_broker_memory_used_bytes", "gauge", "Memory the broker uses."),
    _broker(
        "celery_broker_memory_limit_bytes",
        "gauge",
        "The broker's memory limit (Redis maxmemory, 0 when unlimited).",
    ),
    _broker(
        "celery_broker_persistence_enabled",
        "gauge",
        "1 when the broker persists to disk, by kind (Redis: rdb, aof).",
        ("kind",),
    ),
    _broker(
        "celery_broker_info",
        "info",
        "What the broker is.",
        ("transport", "version", "eviction_policy"),
    ),
    # -- the exporter itself -----------------------------------------------
    MetricSpec(
        "celery_vitals_event_stream_up",
        "gauge",
        "1 while the event stream is connected to the broker.",
        source="exporter",
    ),
    MetricSpec(
        "celery_vitals_events_total",
        "counter",
        "Events received, by type (unknown types as other).",
        ("type",),
    ),
    MetricSpec(
        "celery_vitals_events_skipped_total",
        "counter",
        "Event messages, or events in them, dropped because they could not be used, by "
        "reason: the message (undecodable_body, malformed_envelope, malformed_headers, "
        "unsupported_compression, too_large, malformed_body) or one event "
        "(malformed_event, missing_type, missing_uuid, "
        "duplicate_terminal, handler_error).",
        ("reason",),
    ),
    MetricSpec(
        "celery_vitals_observations_skipped_total",
        "counter",
        "Values from events not used because they were meaningless (bad_runtime, "
        "negative_duration: clock skew between hosts) or not a number in range (bad_value: "
        "a heartbeat's freq, active, processed or load; an event's timestamp; a task's "
        "publication stamp), by the metric they would have fed (timestamp: an event's "
        "own, which feeds several; eta: a task's ETA).",
        ("metric", "reason"),
    ),
    MetricSpec(
        "celery_vitals_event_stream_reconnects_total",
        "counter",
        "Times the event stream lost its broker connection and reconnected.",
        source="exporter",
    ),
    MetricSpec(
        "celery_vitals_event_lag_seconds",
        "gauge",
        "Exporter receive time minus the timestamp of the latest event.",
        source="exporter",
    ),
    MetricSpec(
        "celery_vitals_heartbeats_missed_total",
        "counter",
        "Worker heartbeats that never arrived although the worker stayed online: the "
        "event stream is losing events (slow consumer, queue TTL, buffer overflow).",
    ),
    MetricSpec(
        "celery_vitals_tracked_tasks",
        "gauge",
        "Tasks in the uuid map (received or sent, not finished).",
    ),
    MetricSpec(
        "celery_vitals_tracker_evictions_total",
        "counter",
        "Unfinished tasks dropped from the uuid map, by reason (capacity or age).",
        ("reason",),
    ),
    MetricSpec(
        "celery_vitals_unknown_uuid_events_total",
        "counter",
        "Task events whose uuid the exporter had not seen sent or received.",
        ("type",),
    ),
    MetricSpec(
        "celery_vitals_label_values_folded_total",
        "counter",
        "Label values replaced by 'other' by the cardinality guard.",
        ("label", "reason"),
    ),
    MetricSpec(
        "celery_vitals_enable_events_requests_total",
        "counter",
        "enable_events broadcasts sent to workers, by result.",
        ("result",),
        source="exporter",
    ),
    MetricSpec(
        "celery_vitals_task_sent_events_missing",
        "gauge",
        "1 when, in the last complete minute, workers received tasks that no task-sent "
        "event announced: their publishers lack task_send_sent_event, so those tasks "
        "get the --default-queue as queue_name and no queue wait. 0 otherwise.",
        source="exporter",
    ),
    MetricSpec(
        "celery_vitals_agent_info",
        "info",
        "Present (value 1) only on the /metrics of an agent inside a worker "
        "(celery_vitals.agent), never on the exporter's: tells the two sources apart.",
        ("hostname", "pool"),
        source="agent",
    ),
    MetricSpec(
        "celery_vitals_agent_feature_up",
        "gauge",
        "1 when a part of the agent works with this worker's Celery, 0 when it does not "
        "(its metrics are then missing; the worker's log says why): tap (task lifecycle), "
        "pool_processes, busy_processes, processed, memory, exits, eta_tasks, prefetch. "
        "Checked at worker_ready, then at every sample; absent before.",
        ("feature",),
        source="agent",
    ),
    MetricSpec(
        "celery_vitals_scrape_errors_total",
        "counter",
        "Metric families left out of a scrape because they could not be rendered "
        "(family: the family, or the collector that failed before naming one); "
        "the rest of the scrape is served.",
        ("family",),
    ),
    MetricSpec(
        "celery_vitals_scrape_duration_seconds",
        "histogram",
        "Time to render the whole /metrics body (before compression), observed after "
        "each render: a scrape shows the renders before it.",
    ),
    MetricSpec(
        "celery_vitals_build_info",
        "info",
        "Build information of the exporter.",
        ("version", "celery_version", "python_version"),
    ),
)

BY_NAME: dict[str, MetricSpec] = {spec.name: spec for spec in SPECS}

Family = CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily | InfoMetricFamily


def _spec(name: str, expected: MetricType) -> MetricSpec:
    spec = BY_NAME[name]  # KeyError: the metric is not in the catalogue
    if spec.type != expected:
        raise TypeError(f"{name} is a {spec.type}, not a {expected}")
    return spec


def _labels(spec: MetricSpec, labels: Sequence[str] | None) -> list[str]:
    """``labels`` overrides the catalogue's (task metrics with the optional hostname label)."""
    return list(spec.labels if labels is None else labels)


def counter(name: str, labels: Sequence[str] | None = None) -> CounterMetricFamily:
    spec = _spec(name, "counter")
    return CounterMetricFamily(spec.family_name, spec.help, labels=_labels(spec, labels))


def gauge(name: str, labels: Sequence[str] | None = None) -> GaugeMetricFamily:
    spec = _spec(name, "gauge")
    return GaugeMetricFamily(spec.name, spec.help, labels=_labels(spec, labels))


def histogram(name: str, labels: Sequence[str] | None = None) -> HistogramMetricFamily:
    spec = _spec(name, "histogram")
    return HistogramMetricFamily(spec.name, spec.help, labels=_labels(spec, labels))


def info(name: str) -> InfoMetricFamily:
    spec = _spec(name, "info")
    return InfoMetricFamily(spec.family_name, spec.help)


def build_info() -> InfoMetricFamily:
    """celery_vitals_build_info, filled: this package's, Celery's and Python's versions
    (the exporter, a worker's agent and beat's agent serve the same one)."""
    import platform

    import celery

    from celery_vitals import __version__

    family = info("celery_vitals_build_info")
    family.add_metric(
        [],
        {
            "version": __version__,
            "celery_version": celery.__version__,
            "python_version": platform.python_version(),
        },
    )
    return family


def family(name: str) -> Family:
    """An empty family of any type, for describe()."""
    kind = BY_NAME[name].type
    if kind == "counter":
        return counter(name)
    if kind == "gauge":
        return gauge(name)
    if kind == "histogram":
        return histogram(name)
    return info(name)


def all_series_names() -> set[str]:
    """Every sample name any catalogue metric can produce."""
    return {series for spec in SPECS for series in spec.series_names}


def markdown() -> str:
    """docs/metrics.md, generated: the reference users read."""
    titles = {
        "task": "Tasks",
        "worker": "Workers",
        "queue": "Queues and dead-letter queues",
        "broker": "The broker",
        "beat": "Celery beat (the schedule)",
        "exporter": "The exporter itself",
    }
    lines = [
        "# Metric reference",
        "",
        "Generated from `exporter/celery_vitals/catalogue.py` by",
        "`python -m celery_vitals.catalogue > docs/metrics.md`; a test fails when it is stale.",
        "",
        f"Task metrics carry `{'`, `'.join(TASK_LABELS)}`; `--task-hostname-label` adds "
        f"`{OPTIONAL_TASK_LABEL}` (beware: one series per worker on Kubernetes). Every label "
        "value passes a cardinality guard: past its cap, or when it is not a usable string, "
        "it becomes `other` and `celery_vitals_label_values_folded_total` counts it.",
        "",
        f"Every series, of every metric below and of the process metrics, also carries "
        f"`{BROKER_LABEL}`: the broker the exporter or the agent talks to "
        "(`redis://host:6379/0`, `amqp://host:5672/vhost`, `sqs://region/prefix`, never a "
        "credential; `--broker-name` or `CELERY_VITALS_BROKER_NAME` sets it). It is one "
        "value per scrape target, like a target label: the alert rules and the dashboards "
        "join the exporter's queues and the agents' workers on it, whatever jobs "
        "Prometheus scrapes them in. It is not listed in the tables.",
        "",
        "Source: `exporter` (`celery-vitals serve`: the event stream and broker polls), "
        "`agent` (`celery_vitals.agent.install(app)`, inside each worker), or `both` "
        "(the same name and labels from either; `celery_vitals_agent_info` is only on an "
        "agent's /metrics). A queue's ingress, egress and drain time are recorded by the "
        "rules in both setups (ingress from `celery_task_sent_total` where the queue has it, "
        "else from the received counts and the queue's depth): "
        "[metrics-overview.md](metrics-overview.md#queue-flow-ingress-egress-and-drain-time).",
        "",
        "The exporter's /metrics also carries prometheus_client's standard process and "
        "Python metrics: `process_*` (CPU, resident memory, open file descriptors, start "
        "time), `python_info` and `python_gc_*`.",
        "",
    ]
    for group, title in titles.items():
        lines += [
            f"## {title}",
            "",
            "| metric | type | labels | source | meaning |",
            "|---|---|---|---|---|",
        ]
        for spec in SPECS:
            if spec.group == group:
                labels = ", ".join(f"`{label}`" for label in spec.labels) or "-"
                lines.append(
                    f"| `{spec.name}` | {spec.type} | {labels} | {spec.source} | {spec.help} |"
                )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(markdown())
