"""Builds the celery-vitals Prometheus rules: recording rules and the diagnosis-tree alerts.

    python alerts/build.py          # rewrite alerts/celery-vitals.rules.yml and the
                                    # generated tables in docs/runbooks.md
    python alerts/build.py --check  # exit 1 if either is stale (a test runs this)

Everything tunable is in THRESHOLDS (and PERIODIC_TASKS, RUNBOOK_URL,
DASHBOARD_URL, EXPORTER_JOB) below: change it here, run the script, commit
both outputs. The rules are tested with ``promtool test rules alerts/tests/*.yml``.

Conventions:

- Recording rules are named ``level:metric:operation``; the level lists the
  labels kept besides ``job`` (every aggregation keeps ``job``: one job per
  broker, so series of different brokers are never summed together).
- Alerts are ``Celery...`` in CamelCase, with ``for``, a ``severity``
  (critical pages, warning opens a ticket, info is for dashboards), a stable
  ``summary``, a templated ``description``, ``runbook_url`` (its section of
  docs/runbooks.md) and ``dashboard_url`` (a Grafana dashboard by uid).
- Alerts built on the absence of task events ("nothing left the queue",
  "no success since") carry ``unless`` clauses that silence them while the
  exporter is blind (event stream down, a worker without task events);
  deploy/alertmanager.yml inhibits the same alerts once more.
- Counters of rare events are created by the exporter at their first
  increment, which increase() cannot see; ``_occurrences`` adds the value of a
  series that appeared within the window.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RULES_PATH = ROOT / "alerts" / "celery-vitals.rules.yml"
RUNBOOKS_PATH = ROOT / "docs" / "runbooks.md"

#: Where each alert's runbook_url points (a section per alert, anchored by its name).
RUNBOOK_URL = "https://github.com/celery-vitals/celery-vitals/blob/main/docs/runbooks.md"
#: Prefix of dashboard_url: your Grafana's URL, or "" for links relative to it.
DASHBOARD_URL = ""
#: The label matcher that selects the exporter's scrape job, for CeleryExporterDown.
EXPORTER_JOB = 'job=~".*celery-vitals.*"'

#: Periodic tasks watched by CeleryPeriodicTaskMissed: task name -> the longest
#: time in seconds that may pass between two successes (its interval plus slack).
#: Each entry becomes a PERIODIC_CONFIG recording rule; you can also write such
#: rules in a rule file of your own (docs/runbooks.md shows how).
PERIODIC_TASKS: dict[str, float] = {}
#: The series CeleryPeriodicTaskMissed reads those limits from.
PERIODIC_CONFIG = "name:celery_periodic_task_max_age_seconds:config"


@dataclass(frozen=True)
class Threshold:
    """One tunable: its value (a number, or a duration such as "5m"), unit and meaning."""

    value: float | str
    unit: str
    meaning: str


THRESHOLDS: dict[str, Threshold] = {
    # -- windows ---------------------------------------------------------------
    "rate_window": Threshold(
        "5m", "duration", "Window of the per-task and per-queue rates (failure ratio, retry "
        "amplification, egress, drain-time estimate)."),
    "event_window": Threshold(
        "15m", "duration", "Window in which rare events count (lost workers, time limits, "
        "unregistered tasks, redeliveries, exhausted retries, DLQ ingress, exporter health)."),
    # -- tasks -----------------------------------------------------------------
    "failure_ratio_warning": Threshold(
        0.10, "ratio", "Share of a task's runs that fail (failures no more specific alert "
        "explains) above which CeleryTaskFailureRateHigh opens a ticket."),
    "failure_ratio_critical": Threshold(
        0.50, "ratio", "The same share above which it pages."),
    "failure_min_per_minute": Threshold(
        1, "failures/min", "Fewer failures than this per minute never alert: one failure of "
        "a rare task is not an incident."),
    "retry_amplification": Threshold(
        1, "retries per new task", "Retries per newly received task above which a task is "
        "in a retry storm."),
    "retry_min_per_minute": Threshold(
        1, "retries/min", "Fewer retries than this per minute are no storm."),
    "retries_exhausted_min": Threshold(
        1, "tasks per event window", "Tasks that failed for good after retrying."),
    "worker_lost_min": Threshold(
        1, "failures per event window", "WorkerLostError failures (OOM killer, SIGKILL)."),
    "time_limit_min": Threshold(
        1, "failures per event window", "TimeLimitExceeded or SoftTimeLimitExceeded failures."),
    "not_registered_min": Threshold(
        1, "failures per event window", "Tasks received by a worker that does not know them."),
    "redelivered_min": Threshold(
        1, "tasks per event window", "Tasks the broker delivered a second time."),
    # -- queues ----------------------------------------------------------------
    "queue_min_backlog": Threshold(
        100, "messages", "Backlog below which a queue is neither climbing nor draining slowly."),
    "queue_climb_window": Threshold(
        "30m", "duration", "Window of the long trend (deriv) of a queue's length."),
    "queue_trend_window": Threshold(
        "10m", "duration", "Window of the short trend: still growing, or already draining."),
    "queue_climb_min_per_minute": Threshold(
        1, "messages/min", "Net growth over the long window above which a consumed queue is "
        "climbing (under-provisioned)."),
    "queue_drain_slo": Threshold(
        900, "seconds", "Drain-time estimate (backlog / egress rate) above which a draining "
        "queue drains too slowly."),
    "queue_no_drain_window": Threshold(
        "10m", "duration", "A queue with messages from which no task was received for this "
        "long does not drain."),
    "oldest_message_warning": Threshold(
        600, "seconds", "Age of the oldest task waiting in a queue (from task-sent events) "
        "that opens a ticket."),
    "oldest_message_critical": Threshold(
        3600, "seconds", "The same age that pages."),
    "visibility_timeout_ratio": Threshold(
        0.8, "ratio", "Oldest unacknowledged delivery as a share of the Redis "
        "visibility_timeout: beyond 1 Redis hands the task to a second worker."),
    # -- dead-letter queues ----------------------------------------------------
    "dlq_ingress_min": Threshold(
        1, "messages per event window", "Messages into a dead-letter queue."),
    "dlq_stale_window": Threshold(
        "6h", "duration", "A dead-letter queue that was never empty for this long is not being "
        "drained."),
    # -- workers ---------------------------------------------------------------
    "worker_flap_window": Threshold("30m", "duration", "Window in which worker starts count."),
    "worker_flap_starts": Threshold(
        3, "starts", "Starts (worker-online events) of one worker in the window that make it "
        "flapping."),
    # -- workers, from the agent inside them -------------------------------------
    "worker_killed_min": Threshold(
        1, "pool processes per event window", "Pool processes ended by a signal (the OOM "
        "killer's SIGKILL among them)."),
    "pool_saturation_ratio": Threshold(
        0.95, "ratio", "Busy pool processes as a share of the pool, averaged over the rate "
        "window, above which a worker is saturated (while its broker's queues hold a backlog "
        "of at least queue_min_backlog)."),
    "prefetch_held_min": Threshold(
        1, "tasks", "Tasks a saturated worker holds prefetched (not ETA tasks) while another "
        "worker of the job has idle pool processes."),
    "worker_process_memory_bytes": Threshold(
        2147483648, "bytes", "Resident memory of one worker process (main or a pool child) "
        "that its trend must not reach within memory_horizon: set it a little under what "
        "the container allows one process (its memory limit / (concurrency + 1))."),
    "memory_trend_window": Threshold(
        "30m", "duration", "Window of a worker process' memory trend."),
    "memory_horizon": Threshold(
        3600, "seconds", "How far ahead the memory trend is extrapolated."),
    "worker_remembered": Threshold(
        "6h", "duration", "How long after its last scrape an agent's target that is down still "
        "counts as a worker (CeleryWorkerDown) rather than the exporter (CeleryExporterDown)."),
    # -- the exporter ----------------------------------------------------------
    "heartbeats_missed_min": Threshold(
        1, "heartbeats per event window", "Heartbeats the exporter missed from live workers "
        "(events lost on the way)."),
    "tracker_evictions_min": Threshold(
        1, "tasks per event window", "Unfinished tasks dropped from the exporter's uuid map."),
    "label_values_folded_min": Threshold(
        1, "values per event window", "Label values folded into `other` by the cardinality "
        "guard."),
}

TASK = "job, name, queue_name"
QUEUE = "job, queue_name"
WORKER = "job, hostname"
INSTANCE = "job, instance"

#: Exceptions with an alert of their own: not counted by CeleryTaskFailureRateHigh.
CLASSIFIED_EXCEPTIONS = ("NotRegistered", "WorkerLostError", "TimeLimitExceeded",
                         "SoftTimeLimitExceeded")

OVERVIEW = "celery-vitals-overview"
TASKS = "celery-vitals-tasks"
QUEUES = "celery-vitals-queues"
WORKERS = "celery-vitals-workers"
SLOW = "celery-vitals-slow"


def value(key: str) -> str:
    """A threshold as PromQL (or a duration) text: 0.1, 900, "5m"."""
    raw = THRESHOLDS[key].value
    if isinstance(raw, str):
        return raw
    return f"{raw:g}"


def per_second(key: str) -> str:
    """A per-minute threshold as a per-second PromQL expression, e.g. ``(1 / 60)``."""
    return f"({value(key)} / 60)"


# -- PromQL building blocks ----------------------------------------------------------

def _indent(text: str, spaces: int = 2) -> str:
    return "\n".join(" " * spaces + line if line else line for line in text.splitlines())


def _occurrences(selector: str, by: str, window: str) -> str:
    """Events a counter counted in ``window``, summed ``by``.

    increase() needs two samples, but the exporter creates a labelled counter
    at its first increment: a series that appeared within the window counts
    with its whole value (it started from zero after the window began).
    """
    return (f"sum by ({by}) (\n"
            f"  ({selector} unless {selector} offset {window})\n"
            f"  or increase({selector}[{window}])\n"
            f")")


BROKER_UP = "unless on (job) (celery_broker_up == 0)"
# While the exporter is blind, "no task event" proves nothing.
EXPORTER_SEES = ("unless on (job) (celery_vitals_event_stream_up == 0)\n"
                 "unless on (job) (max by (job) (celery_worker_task_events_missing) == 1)")


def _no_consumers() -> str:
    """Queues with messages that nobody consumes.

    RabbitMQ tells the consumer count. Redis does not: there, a queue nobody
    has received a task from since the exporter started, while workers are
    up, is one they do not listen to (a typo in task_routes, a missing -Q).
    """
    return (
        "(\n"
        "  queue_name:celery_queue_length:sum > 0\n"
        "  and on (job, queue_name) (sum by (job, queue_name) (celery_queue_consumers) == 0)\n"
        ")\n"
        "or\n"
        "(\n"
        "  queue_name:celery_queue_length:sum > 0\n"
        "  unless on (job, queue_name) celery_queue_consumers\n"
        "  unless on (job, queue_name) celery_task_received_total\n"
        "  and on (job) (sum by (job) (celery_worker_up) > 0)\n"
        f"{_indent(EXPORTER_SEES)}\n"
        ")"
    )


# -- rules -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Record:
    record: str
    expr: str


@dataclass(frozen=True)
class Alert:
    name: str
    severity: str  # critical | warning | info
    for_: str
    expr: str
    summary: str
    description: str
    dashboard: str | None = None  # path below DASHBOARD_URL, e.g. /d/<uid>?var-...

    @property
    def anchor(self) -> str:
        """GitHub's anchor for a markdown heading that is exactly the alert name."""
        return self.name.lower()

    @property
    def runbook_url(self) -> str:
        return f"{RUNBOOK_URL}#{self.anchor}"


def _rate(metric: str, by: str = TASK, selector: str = "") -> str:
    return f"sum by ({by}) (rate({metric}{selector}[{value('rate_window')}]))"


def recording_rules() -> list[Record]:
    """Per-task, per-queue and periodic-task series that the alerts and dashboards share."""
    w = value("rate_window")
    t = f"name_queue_name:celery_task_{{}}:rate{w}"
    received, succeeded, failed = t.format("received"), t.format("succeeded"), t.format("failed")
    retried, after_retries = t.format("retried"), t.format("failed_after_retries")
    finished, plain = t.format("finished"), t.format("failed_plain")
    length = "queue_name:celery_queue_length:sum"
    egress = f"queue_name:celery_queue_egress:rate{w}"
    classified = "|".join(CLASSIFIED_EXCEPTIONS)
    unclassified = f'{{exception!~"{classified}"}}'
    latch = "name:celery_task_last_success_timestamp_seconds:max"
    rules = [
        Record(received, _rate("celery_task_received_total")),
        Record(succeeded, _rate("celery_task_succeeded_total")),
        Record(failed, _rate("celery_task_failed_total")),
        Record(retried, _rate("celery_task_retried_total")),
        Record(after_retries, _rate("celery_task_failed_after_retries_total")),
        # a task that never succeeded (or never failed) has no such series: fill in zeros
        Record(finished, f"({succeeded} or {failed} * 0)\n+ ({failed} or {succeeded} * 0)"),
        Record(f"name_queue_name:celery_task_failed:ratio_rate{w}",
               f"({failed} or {finished} * 0)\n/ {finished}"),
        # failures that no more specific alert explains: not a classified exception,
        # not the last attempt of a task that retried (CeleryTaskRetriesExhausted)
        Record(plain,
               "clamp_min(\n"
               f"  {_rate('celery_task_failed_total', selector=unclassified)}\n"
               f"  - ({after_retries} or {failed} * 0),\n"
               "  0\n"
               ")"),
        Record(f"name_queue_name:celery_task_failed_plain:ratio_rate{w}",
               f"{plain}\n/ {finished}"),
        # retries per new task: received counts every attempt, so new = received - retried
        Record(f"name_queue_name:celery_task_retry_amplification:rate{w}",
               f"{retried}\n/ clamp_min({received} - {retried}, 0)"),
        Record(length, f"sum by ({QUEUE}) (celery_queue_length)"),
        Record(f"queue_name:celery_queue_length:deriv{value('queue_trend_window')}",
               f"sum by ({QUEUE}) (deriv(celery_queue_length[{value('queue_trend_window')}]))"),
        Record(f"queue_name:celery_queue_length:deriv{value('queue_climb_window')}",
               f"sum by ({QUEUE}) (deriv(celery_queue_length[{value('queue_climb_window')}]))"),
        # a message leaves the queue when a worker receives it (retries and redeliveries too)
        Record(egress, f"sum by ({QUEUE}) ({received})"),
        Record(f"queue_name:celery_queue_ingress:rate{w}",
               _rate("celery_task_sent_total", by=QUEUE)),
        # time to work off the backlog at the current egress, new arrivals ignored;
        # +Inf for a queue with messages that nothing leaves
        Record(f"queue_name:celery_queue_drain_time_seconds:estimate{w}",
               f"{length}\n/ ({egress} or {length} * 0)"),
        # the last success survives an exporter restart (the rule reads its own last value)
        Record(latch, "max by (job, name) (celery_task_last_success_timestamp_seconds)\n"
                      f"or {latch}"),
    ]
    rules += [Record(PERIODIC_CONFIG,
                     f'label_replace(vector({seconds:g}), "name", {json.dumps(name)}, "", "")')
              for name, seconds in sorted(PERIODIC_TASKS.items())]
    return rules


def _task_dashboard() -> str:
    return (f"/d/{TASKS}?var-job={{{{ $labels.job | urlquery }}}}"
            "&var-queue={{ $labels.queue_name | urlquery }}"
            "&var-task={{ $labels.name | urlquery }}")


def _queue_dashboard(with_queue: bool = True) -> str:
    url = f"/d/{QUEUES}?var-job={{{{ $labels.job | urlquery }}}}"
    return url + ("&var-queue={{ $labels.queue_name | urlquery }}" if with_queue else "")


def _worker_dashboard() -> str:
    return (f"/d/{WORKERS}?var-job={{{{ $labels.job | urlquery }}}}"
            "&var-worker={{ $labels.hostname | urlquery }}")


def _job_dashboard(uid: str) -> str:
    return f"/d/{uid}?var-job={{{{ $labels.job | urlquery }}}}"


def _task_alerts() -> list[Alert]:
    w, ew = value("rate_window"), value("event_window")
    plain = f"name_queue_name:celery_task_failed_plain:rate{w}"
    plain_ratio = f"name_queue_name:celery_task_failed_plain:ratio_rate{w}"
    failure_description = (
        "{{ $value | humanizePercentage }} of the runs of {{ $labels.name }} (queue "
        f"{{{{ $labels.queue_name }}}}) failed over the last {w}. Counted are failures no more "
        "specific alert explains: time limits, lost workers, unregistered tasks and exhausted "
        "retries have their own.")
    failure = [
        Alert("CeleryTaskFailureRateHigh", severity, "5m",
              f"{plain_ratio} > {value(key)}\n"
              f"and {plain} > {per_second('failure_min_per_minute')}",
              "A Celery task fails often.", failure_description, _task_dashboard())
        for severity, key in (("warning", "failure_ratio_warning"),
                              ("critical", "failure_ratio_critical"))]

    def failures(exceptions: str) -> str:
        return f'celery_task_failed_total{{exception{exceptions}}}'

    def event(name: str, selector: str, threshold: str, summary: str, *, happened: str,
              consequence: str, by: str = TASK) -> Alert:
        """An alert on events a task counter counted in the event window."""
        return Alert(name, "warning", "1m",
                     f"{_occurrences(selector, by, ew)} >= {value(threshold)}", summary,
                     f"{{{{ $labels.name }}}} (queue {{{{ $labels.queue_name }}}}) {happened} "
                     f"({{{{ $value | humanize }}}} in the last {ew}): {consequence}",
                     _task_dashboard())

    return [
        *failure,
        Alert("CeleryTaskRetryStorm", "warning", "10m",
              f"name_queue_name:celery_task_retry_amplification:rate{w}"
              f" > {value('retry_amplification')}\n"
              f"and name_queue_name:celery_task_retried:rate{w}"
              f" > {per_second('retry_min_per_minute')}",
              "A Celery task retries itself into a storm.",
              "{{ $labels.name }} (queue {{ $labels.queue_name }}) was retried "
              "{{ $value | humanize }} times per new task over the last " + w + ": each retry "
              "is another message and another run, so a failing dependency multiplies the load.",
              _task_dashboard()),
        event("CeleryTaskRetriesExhausted", "celery_task_failed_after_retries_total",
              "retries_exhausted_min", "Celery tasks failed for good after retrying.",
              happened="failed for good after retrying",
              consequence="the retries did not help, the work is lost or dead-lettered."),
        event("CeleryTaskWorkerLost", failures('="WorkerLostError"'), "worker_lost_min",
              "Celery tasks died with their worker process (WorkerLostError).",
              happened="failed with WorkerLostError",
              consequence="the pool process running it was killed (OOM killer, SIGKILL) or "
                          "crashed."),
        event("CeleryTaskTimeLimitExceeded",
              failures('=~"TimeLimitExceeded|SoftTimeLimitExceeded"'), "time_limit_min",
              "Celery tasks hit their time limit.",
              happened="failed with {{ $labels.exception }}",
              consequence="the task ran longer than its time limit allows.",
              by=f"{TASK}, exception"),
        event("CeleryTaskNotRegistered", failures('="NotRegistered"'), "not_registered_min",
              "Workers received Celery tasks they do not know (NotRegistered).",
              happened="reached workers that do not know the task",
              consequence="producers and workers run different code, or the name is "
                          "misspelled. Celery drops these messages."),
        event("CeleryTaskRedelivered", "celery_task_redelivered_total", "redelivered_min",
              "The broker delivered Celery tasks a second time.",
              happened="was received again without a retry",
              consequence="the Redis visibility timeout passed or a worker was lost before "
                          "acknowledging. It may run twice."),
        Alert("CeleryPeriodicTaskMissed", "warning", "5m",
              "(time() - name:celery_task_last_success_timestamp_seconds:max)\n"
              f"  > on (name) group_left () {PERIODIC_CONFIG}\n"
              + EXPORTER_SEES,
              "A periodic Celery task has not succeeded within its interval.",
              "{{ $labels.name }} last succeeded {{ $value | humanizeDuration }} ago, longer "
              "than its configured interval allows.",
              f"/d/{TASKS}?var-job={{{{ $labels.job | urlquery }}}}"
              "&var-task={{ $labels.name | urlquery }}"),
    ]


def _queue_alerts() -> list[Alert]:
    w = value("rate_window")
    length = "queue_name:celery_queue_length:sum"
    egress = f"queue_name:celery_queue_egress:rate{w}"
    short = f"queue_name:celery_queue_length:deriv{value('queue_trend_window')}"
    long = f"queue_name:celery_queue_length:deriv{value('queue_climb_window')}"
    drain = f"queue_name:celery_queue_drain_time_seconds:estimate{w}"
    no_drain = value("queue_no_drain_window")
    received = _occurrences("celery_task_received_total", QUEUE, no_drain)
    stale = value("dlq_stale_window")
    oldest = [
        Alert("CeleryQueueOldestMessageTooOld", severity, "5m",
              f"max by ({QUEUE}) (celery_queue_oldest_message_age_seconds) > {value(key)}\n"
              + EXPORTER_SEES,
              "Tasks wait too long in a Celery queue.",
              "The oldest task sent to queue {{ $labels.queue_name }} and not yet received by a "
              "worker has waited {{ $value | humanizeDuration }}.",
              _queue_dashboard())
        for severity, key in (("warning", "oldest_message_warning"),
                              ("critical", "oldest_message_critical"))]
    return [
        Alert("CeleryQueueClimbing", "warning", "30m",
              f"{long} * 60 > {value('queue_climb_min_per_minute')}\n"
              f"and {short} > 0\n"
              f"and {length} > {value('queue_min_backlog')}\n"
              f"and {egress} > 0\n"
              + BROKER_UP,
              "A Celery queue keeps growing although workers consume it.",
              "Queue {{ $labels.queue_name }} grew by {{ $value | humanize }} messages per "
              f"minute over the last {value('queue_climb_window')} while workers took tasks "
              "from it: more arrives than the workers finish.",
              _queue_dashboard()),
        Alert("CeleryQueueSlowDrain", "warning", "10m",
              f"{drain} > {value('queue_drain_slo')}\n"
              f"and {length} > {value('queue_min_backlog')}\n"
              f"and {egress} > 0\n"
              f"and {short} <= 0\n"
              + BROKER_UP,
              "A Celery queue drains too slowly.",
              "At the rate workers take tasks from queue {{ $labels.queue_name }}, its backlog "
              "takes {{ $value | humanizeDuration }} to drain, more than the "
              f"{value('queue_drain_slo')}s objective.",
              _queue_dashboard()),
        Alert("CeleryQueueNotDraining", "critical", "5m",
              f"{length} > 0\n"
              f"unless on ({QUEUE}) (\n{_indent(received)} > 0\n)\n"
              f"unless on ({QUEUE}) (\n{_indent(_no_consumers())}\n)\n"
              + EXPORTER_SEES + "\n" + BROKER_UP,
              "A Celery queue has messages and nothing takes them.",
              "{{ $value | humanize }} messages wait in queue {{ $labels.queue_name }} and no "
              f"worker received a task from it for {no_drain}: its workers are stopped or stuck.",
              _queue_dashboard()),
        Alert("CeleryQueueNoConsumers", "critical", "5m",
              f"(\n{_indent(_no_consumers())}\n)\n" + BROKER_UP,
              "A Celery queue has messages and no consumer.",
              "{{ $value | humanize }} messages wait in queue {{ $labels.queue_name }}, which no "
              "worker consumes: a misspelled queue in task_routes, or no worker started with "
              "-Q for it.",
              _queue_dashboard()),
        *oldest,
        Alert("CeleryQueueUnackedNearVisibilityTimeout", "warning", "1m",
              f"max by ({QUEUE}) (\n"
              "  celery_queue_oldest_unacked_age_seconds\n"
              "  / celery_queue_visibility_timeout_seconds\n"
              f") > {value('visibility_timeout_ratio')}",
              "A Celery task is close to the Redis visibility timeout.",
              "The oldest unacknowledged delivery from queue {{ $labels.queue_name }} is at "
              "{{ $value | humanizePercentage }} of the visibility timeout: past it, Redis "
              "delivers the task to another worker and it runs twice.",
              _queue_dashboard()),
        Alert("CeleryDeadLetterQueueGrowing", "warning", "1m",
              _occurrences("celery_dlq_ingress_total", QUEUE, value("event_window"))
              + f" >= {value('dlq_ingress_min')}",
              "Messages are entering a Celery dead-letter queue.",
              "Messages entered dead-letter queue {{ $labels.queue_name }} "
              "({{ $value | humanize }} in the last " + value("event_window") + ").",
              _queue_dashboard(with_queue=False)),
        Alert("CeleryDeadLetterQueueNotDrained", "warning", "15m",
              # never empty within the window, and already there when it began
              f"max by ({QUEUE}) (min_over_time(celery_dlq_length[{stale}])) > 0\n"
              f"and on ({QUEUE}) max by ({QUEUE}) (celery_dlq_length offset {stale}) > 0",
              "A Celery dead-letter queue is not being drained.",
              "Dead-letter queue {{ $labels.queue_name }} has held at least "
              "{{ $value | humanize }} messages for " + stale + ": nobody "
              "replays or discards them.",
              _queue_dashboard(with_queue=False)),
    ]


def _agent_targets() -> str:
    """Scrape targets that were agents inside workers (they export celery_vitals_agent_info)."""
    return ("max by (job, instance, hostname) "
            f"(max_over_time(celery_vitals_agent_info[{value('worker_remembered')}]))")


def _worker_alerts() -> list[Alert]:
    flap, w, ew = value("worker_flap_window"), value("rate_window"), value("event_window")
    memory = "celery_worker_process_resident_memory_bytes"
    trend = value("memory_trend_window")
    return [
        Alert("CeleryWorkerDown", "warning", "5m",
              # the exporter's view (heartbeats), or an agent's target that stopped answering
              f"(\n  max by ({WORKER}) (celery_worker_up) == 0\n"
              "  unless on (job) (celery_vitals_event_stream_up == 0)\n)\n"
              f"or\nmax by ({WORKER}) (\n"
              f"  (up == 0) * on (job, instance) group_left (hostname) {_agent_targets()}\n)",
              "A Celery worker is down.",
              "Worker {{ $labels.hostname }} went offline or stopped sending heartbeats.",
              _worker_dashboard()),
        Alert("CeleryWorkerFlapping", "warning", "1m",
              f"sum by ({WORKER}) (increase(celery_worker_starts_total[{flap}]))"
              f" >= {value('worker_flap_starts')}",
              "A Celery worker keeps restarting.",
              "Worker {{ $labels.hostname }} started {{ $value | humanize }} times in the last "
              f"{flap}.",
              _worker_dashboard()),
        Alert("CeleryWorkerTaskEventsMissing", "critical", "5m",
              f"max by ({WORKER}) (celery_worker_task_events_missing) == 1",
              "A Celery worker sends no task events: celery-vitals is blind to its tasks.",
              "Worker {{ $labels.hostname }} reports processed tasks in its heartbeats but no "
              "task event arrived from it. Task, queue and periodic-task alerts that rely on "
              "task events are silenced while this fires.",
              _worker_dashboard()),
        Alert("CeleryWorkerPoolProcessKilled", "warning", "1m",
              _occurrences('celery_worker_pool_process_exits_total{reason="killed"}', WORKER, ew)
              + f" >= {value('worker_killed_min')}",
              "Celery pool processes were killed (OOM killer or SIGKILL).",
              "{{ $value | humanize }} pool processes of worker {{ $labels.hostname }} were "
              f"ended by a signal in the last {ew}: the kernel's OOM killer (SIGKILL) is the "
              "usual cause. The task each was running failed with WorkerLostError.",
              _worker_dashboard()),
        Alert("CeleryWorkerMemoryGrowing", "warning", "15m",
              f"predict_linear({memory}[{trend}], {value('memory_horizon')})"
              f" > {value('worker_process_memory_bytes')}\n"
              f"and deriv({memory}[{trend}]) > 0",
              "A Celery worker process' memory grows toward its limit.",
              "Process {{ $labels.process }} of worker {{ $labels.hostname }} grows and is on "
              "course for {{ $value | humanize1024 }}B within "
              f"{value('memory_horizon')}s: without child recycling the OOM killer ends it.",
              _worker_dashboard()),
        Alert("CeleryWorkerPoolSaturated", "warning", "5m",
              f"avg_over_time(celery_worker_pool_busy_processes[{w}])\n"
              f"/ avg_over_time(celery_worker_pool_processes[{w}])"
              f" >= {value('pool_saturation_ratio')}\n"
              "and on (job) (sum by (job) (queue_name:celery_queue_length:sum)"
              f" >= {value('queue_min_backlog')})",
              "A Celery worker's pool is saturated while a backlog waits.",
              "{{ $value | humanizePercentage }} of the pool processes of worker "
              f"{{{{ $labels.hostname }}}} were busy over the last {w} while messages wait in "
              "the broker's queues: add workers or concurrency, or look for tasks that hang.",
              _worker_dashboard()),
        Alert("CeleryWorkerPrefetchHoarding", "warning", "10m",
              "(celery_worker_tasks_reserved - celery_worker_eta_tasks)"
              f" >= {value('prefetch_held_min')}\n"
              "and celery_worker_pool_busy_processes >= celery_worker_pool_processes\n"
              "and on (job) (\n"
              "  sum by (job) (celery_worker_pool_processes - celery_worker_pool_busy_processes)"
              " > 0\n)",
              "A busy Celery worker holds prefetched tasks other workers could run.",
              "Worker {{ $labels.hostname }} has every pool process busy and holds "
              "{{ $value | humanize }} more tasks prefetched while other workers have idle "
              "processes: lower worker_prefetch_multiplier, or use -O fair / acks_late for "
              "long tasks.",
              _worker_dashboard()),
    ]


def _broker_exporter_alerts() -> list[Alert]:
    ew = value("event_window")
    persistence = 'celery_broker_persistence_enabled{kind=~"rdb|aof"}'
    return [
        Alert("CeleryBrokerDown", "critical", "1m",
              "celery_broker_up == 0",
              "celery-vitals cannot reach the Celery broker.",
              "The exporter {{ $labels.instance }} could not poll the broker: queue depths are "
              "stale and the queue alerts are silenced.",
              _job_dashboard(SLOW)),
        Alert("CeleryRedisBrokerNotPersistent", "warning", "15m",
              # both kinds known (RDB is unknown on a Redis that refuses CONFIG and has
              # taken no snapshot yet) and both off
              f"max by ({INSTANCE}) ({persistence}) == 0\n"
              f"and on ({INSTANCE}) count by ({INSTANCE}) ({persistence}) == 2\n"
              f'and on ({INSTANCE}) celery_broker_info{{transport="redis"}}',
              "The Redis broker does not persist to disk.",
              "The Redis broker behind {{ $labels.instance }} has neither RDB snapshots nor "
              "AOF: a Redis restart loses every queued task."),
        Alert("CeleryExporterDown", "critical", "5m",
              f"up{{{EXPORTER_JOB}}} == 0\n"
              f"unless on (job, instance) {_agent_targets()}",
              "Prometheus cannot scrape celery-vitals.",
              "Prometheus could not scrape {{ $labels.instance }} (job {{ $labels.job }}): no "
              "Celery alert can fire while it is down.",
              _job_dashboard(OVERVIEW)),
        Alert("CeleryExporterEventStreamDown", "critical", "2m",
              "celery_vitals_event_stream_up == 0\n"
              "unless on (job, instance) (celery_broker_up == 0)",
              "celery-vitals receives no Celery events.",
              "The event stream of {{ $labels.instance }} is disconnected although the broker "
              "answers: task and worker metrics are frozen, and alerts built on them are "
              "silenced.",
              _job_dashboard(SLOW)),
        Alert("CeleryExporterEventsLost", "warning", "5m",
              f"increase(celery_vitals_heartbeats_missed_total[{ew}])"
              f" >= {value('heartbeats_missed_min')}",
              "celery-vitals is losing Celery events.",
              "{{ $value | humanize }} worker heartbeats never reached {{ $labels.instance }} in "
              f"the last {ew} although the workers stayed online: task events are lost too, "
              "and task counts are too low.",
              _job_dashboard(SLOW)),
        Alert("CeleryExporterTrackerEvicting", "warning", "5m",
              f"sum by (job, instance, reason) (increase(celery_vitals_tracker_evictions_total"
              f"[{ew}])) >= {value('tracker_evictions_min')}",
              "celery-vitals forgets unfinished tasks.",
              "{{ $labels.instance }} dropped {{ $value | humanize }} unfinished tasks from its "
              f"uuid map in the last {ew} (reason {{{{ $labels.reason }}}}): their later events "
              "are counted as name=\"unknown\".",
              _job_dashboard(SLOW)),
        Alert("CeleryExporterLabelValuesFolded", "info", "5m",
              _occurrences("celery_vitals_label_values_folded_total",
                           "job, instance, label, reason", ew)
              + f" >= {value('label_values_folded_min')}",
              "celery-vitals folds label values into \"other\".",
              "{{ $labels.instance }} replaced {{ $value | humanize }} values of label "
              "{{ $labels.label }} by \"other\" in the last " + ew + " (reason "
              "{{ $labels.reason }}): series of those values are merged.",
              _job_dashboard(SLOW)),
    ]


def alerting_rules() -> list[Alert]:
    return [*_task_alerts(), *_queue_alerts(), *_worker_alerts(), *_broker_exporter_alerts()]


# -- output ------------------------------------------------------------------------

HEADER = """\
# Generated by alerts/build.py: do not edit. Change THRESHOLDS there and run
#   python alerts/build.py
# Tests: promtool check rules / promtool test rules alerts/tests/*.yml
"""


def _quoted(text: str) -> str:
    """A YAML double-quoted scalar (a JSON string is one)."""
    return json.dumps(text)


def _block(text: str, indent: int) -> str:
    pad = " " * indent
    return "|-\n" + "\n".join(pad + line if line else "" for line in text.splitlines())


def render_rules() -> str:
    """The rule file, as YAML written by hand: stable order, block-scalar expressions."""
    lines = [HEADER.rstrip("\n"), "groups:", "  - name: celery-vitals.recording", "    rules:"]
    for record in recording_rules():
        lines += [f"      - record: {record.record}",
                  f"        expr: {_block(record.expr, 10)}"]
    lines += ["  - name: celery-vitals.alerts", "    rules:"]
    for alert in alerting_rules():
        lines += [f"      - alert: {alert.name}",
                  f"        expr: {_block(alert.expr, 10)}",
                  f"        for: {alert.for_}",
                  "        labels:",
                  f"          severity: {alert.severity}",
                  "        annotations:",
                  f"          summary: {_quoted(alert.summary)}",
                  f"          description: {_quoted(alert.description)}",
                  f"          runbook_url: {_quoted(alert.runbook_url)}"]
        if alert.dashboard is not None:
            lines.append(f"          dashboard_url: {_quoted(DASHBOARD_URL + alert.dashboard)}")
    return "\n".join(lines) + "\n"


BEGIN = "<!-- generated by alerts/build.py: begin -->"
END = "<!-- generated by alerts/build.py: end -->"


def _tables() -> str:
    """The alert index and the thresholds table of docs/runbooks.md."""
    lines = ["| alert | severity | for | summary |", "|---|---|---|---|"]
    seen: set[tuple[str, str]] = set()
    for alert in alerting_rules():
        if (alert.name, alert.severity) in seen:
            continue
        seen.add((alert.name, alert.severity))
        lines.append(f"| [{alert.name}](#{alert.anchor}) | {alert.severity} | {alert.for_} "
                     f"| {alert.summary} |")
    lines += ["", "| threshold | value | unit | meaning |", "|---|---|---|---|"]
    for key, threshold in THRESHOLDS.items():
        lines.append(f"| `{key}` | {value(key)} | {threshold.unit} | {threshold.meaning} |")
    return "\n".join(lines)


def render_runbook(text: str) -> str:
    """``text`` (docs/runbooks.md) with the generated tables between the markers replaced."""
    head, begin, rest = text.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"{RUNBOOKS_PATH} lacks the markers {BEGIN!r} ... {END!r}")
    return f"{head}{BEGIN}\n{_tables()}\n{END}{tail}"


def outputs() -> dict[Path, str]:
    """Every file this script writes, with the content it writes."""
    return {RULES_PATH: render_rules(),
            RUNBOOKS_PATH: render_runbook(RUNBOOKS_PATH.read_text(encoding="utf-8"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a generated file differs from what this builds")
    args = parser.parse_args(argv)
    stale = []
    for path, content in outputs().items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == content:
            continue
        if args.check:
            stale.append(path)
        else:
            path.write_text(content, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    for path in stale:
        print(f"stale: {path.relative_to(ROOT)} (run python alerts/build.py)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
