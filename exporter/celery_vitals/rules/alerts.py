"""The celery-vitals Prometheus rules: recording rules and the diagnosis-tree alerts.

``render(config)`` is the rule file ``celery-vitals rules`` writes; with the
default RulesConfig it is the shipped ``alerts/celery-vitals.rules.yml``.
The thresholds and their documentation are in ``rules.config``.

Conventions:

- Recording rules are named ``level:metric:operation``; the level lists the
  labels kept besides ``broker`` (every aggregation keeps ``broker``, the
  label the exporter and the agents put on every series: series of different
  brokers are never summed together, and the exporter's view of a queue joins
  the workers' view of it whatever jobs Prometheus scrapes them in; ``job``
  names a scrape target only, in the alerts about targets).
- Alerts are ``Celery...`` in CamelCase, with ``for``, a ``severity``
  (critical pages, warning opens a ticket, info is for dashboards), a stable
  ``summary``, a templated ``description``, ``runbook_url`` (its section of
  docs/runbooks.md) and ``dashboard_url`` (a Grafana dashboard by uid).
- The builders write bare metric names; ``promql.scope`` adds the config's
  selector to every series of every expression at the end.
- Alerts built on the absence of task events ("nothing left the queue",
  "no success since") carry ``unless`` clauses that silence them while the
  exporter is blind (event stream down, a worker without task events);
  deploy/alertmanager.yml inhibits the same alerts once more.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass, replace

from celery_vitals.rules.config import THRESHOLDS, RulesConfig, number_text, regex_text
from celery_vitals.rules.promql import (
    OVERVIEW,
    QUEUES,
    SLOW,
    TASKS,
    WORKERS,
    drain_time,
    failure_ratio,
    finished,
    ingress,
    occurrences,
    or_zero,
    periodic_age,
    pool_busy_ratio,
    retry_amplification,
    scope,
    seconds_until,
    sum_rate,
)

#: The series CeleryPeriodicTaskMissed reads the periodic tasks' limits from.
PERIODIC_CONFIG = "name:celery_periodic_task_max_age_seconds:config"
#: The last success of each task, kept across exporter and agent restarts.
LAST_SUCCESS = "name:celery_task_last_success_timestamp_seconds:max"
#: The longest a task of beat's schedule may go without success: the interval of its most
#: frequent entry plus slack (periodic_slack_ratio of it, at least periodic_slack_min).
PERIODIC_BEAT = "name:celery_periodic_task_max_age_seconds:beat"
#: For a task beat sends that never succeeded (no LAST_SUCCESS): when it was first seen sent.
PERIODIC_UNSUCCEEDED = "name:celery_beat_entry_last_run_timestamp_seconds:first_without_success"
BEAT_LAST_RUN = "celery_beat_entry_last_run_timestamp_seconds"
BEAT_NEXT_RUN = "celery_beat_entry_next_run_timestamp_seconds"
BEAT_INFO = "celery_beat_info"
#: A beat agent: one scrape target's beat (several jobs scraping one target count once).
BEAT = "job, instance, broker"

TASK = "broker, name, queue_name"
QUEUE = "broker, queue_name"
WORKER = "broker, hostname"
INSTANCE = "job, instance, broker"
#: 1 for every worker that is down (a recording rule: CeleryWorkerDown's condition).
WORKER_DOWN = "hostname:celery_worker_down:bool"
#: Workers up per broker; a broker whose workers' series were all purged has none left: 0
#: (from its exporter's ``celery_broker_up``).
WORKERS_UP = "(sum by (broker) (celery_worker_up) or max by (broker) (celery_broker_up) * 0)"

#: Exceptions with an alert of their own: not counted by CeleryTaskFailureRateHigh.
CLASSIFIED_EXCEPTIONS = (
    "Reject",  # Reject(requeue=False): a dead letter, CeleryDeadLetterQueueGrowing explains it
    "NotRegistered",
    "WorkerLostError",
    "TimeLimitExceeded",
    "SoftTimeLimitExceeded",
)


def _per_second(c: RulesConfig, key: str) -> str:
    """A per-minute threshold as a per-second PromQL expression, e.g. ``(1 / 60)``."""
    return f"({c.text(key)} / 60)"


def _indent(text: str, spaces: int = 2) -> str:
    return "\n".join(" " * spaces + line if line else line for line in text.splitlines())


BROKER_UP = "unless on (broker) (celery_broker_up == 0)"
# While the exporter is blind, "no task event" proves nothing.
EXPORTER_SEES = (
    "unless on (broker) (celery_vitals_event_stream_up == 0)\n"
    "unless on (broker) (max by (broker) (celery_worker_task_events_missing) == 1)"
)


def _no_consumers() -> str:
    """Queues with messages that nobody consumes.

    RabbitMQ tells the consumer count. Redis does not: there, a queue nobody
    has received a task from since the exporter started, while workers are
    up, is one they do not listen to (a typo in task_routes, a missing -Q).
    """
    return (
        "(\n"
        "  queue_name:celery_queue_length:sum > 0\n"
        f"  and on ({QUEUE}) (sum by ({QUEUE}) (celery_queue_consumers) == 0)\n"
        ")\n"
        "or\n"
        "(\n"
        "  queue_name:celery_queue_length:sum > 0\n"
        "  unless on (broker, queue_name) celery_queue_consumers\n"
        "  unless on (broker, queue_name) celery_task_received_total\n"
        "  and on (broker) (sum by (broker) (celery_worker_up) > 0)\n"
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
    dashboard: str | None = None  # path below the dashboard_url base, e.g. /d/<uid>?var-...

    @property
    def anchor(self) -> str:
        """GitHub's anchor for a markdown heading that is exactly the alert name."""
        return self.name.lower()

    def unless(self, labels: str, condition: str, *to: str) -> Alert:
        """This alert, silent where ``condition`` (the alerts ``to``'s) holds for the same
        ``labels``: one incident, one page. Between marker lines, so that it yields only
        while one of those alerts is enabled (``yields``)."""
        return replace(
            self,
            expr=f"{self.expr}\n@@yield:{':'.join(to)}@@\n"
            f"unless on ({labels}) (\n{_indent(condition)}\n)\n{YIELD_END}",
        )


#: The marker lines around an Alert.unless (the chart's template reads them too): the
#: alerts it yields to, ``@@yield:<alert>[:<alert>...]@@``, and the end.
YIELD_START = re.compile(r"@@yield:([\w:]+)@@")
YIELD_END = "@@yield_end@@"
_YIELD_BLOCK = re.compile(rf"\n{YIELD_START.pattern}\n(.*?)\n{YIELD_END}", re.S)


def yields(expr: str, disabled: Collection[str]) -> str:
    """``expr`` with each ``unless`` of Alert.unless kept while one of the alerts it yields
    to is enabled, without the marker lines."""

    def block(match: re.Match[str]) -> str:
        enabled = set(match.group(1).split(":")) - set(disabled)
        return f"\n{match.group(2)}" if enabled else ""

    return _YIELD_BLOCK.sub(block, expr)


def _rate(c: RulesConfig, metric: str, labels: str = TASK, matchers: str = "") -> str:
    return sum_rate(metric, c.text("rate_window"), labels, matchers)


def recording_rules(c: RulesConfig) -> list[Record]:
    """Per-task, per-queue and periodic-task series that the alerts and dashboards share."""
    w = c.text("rate_window")
    t = f"name_queue_name:celery_task_{{}}:rate{w}"
    received, succeeded, failed = t.format("received"), t.format("succeeded"), t.format("failed")
    retried, after_retries = t.format("retried"), t.format("failed_after_retries")
    done, plain = t.format("finished"), t.format("failed_plain")
    length = "queue_name:celery_queue_length:sum"
    egress = f"queue_name:celery_queue_egress:rate{w}"
    classified = "|".join(CLASSIFIED_EXCEPTIONS)
    unclassified = f'exception!~"{classified}"'
    latch = LAST_SUCCESS
    rules = [
        Record(received, _rate(c, "celery_task_received_total")),
        Record(succeeded, _rate(c, "celery_task_succeeded_total")),
        Record(failed, _rate(c, "celery_task_failed_total")),
        Record(retried, _rate(c, "celery_task_retried_total")),
        Record(after_retries, _rate(c, "celery_task_failed_after_retries_total")),
        # a task that never succeeded (or never failed) has no such series: fill in zeros
        Record(done, finished(succeeded, failed)),
        Record(
            f"name_queue_name:celery_task_failed:ratio_rate{w}",
            failure_ratio(failed, succeeded, done),
        ),
        # failures that no more specific alert explains: not a classified exception,
        # not the last attempt of a task that retried (CeleryTaskRetriesExhausted)
        Record(
            plain,
            "clamp_min(\n"
            f"  {_rate(c, 'celery_task_failed_total', matchers=unclassified)}\n"
            f"  - {or_zero(after_retries, failed)},\n"
            "  0\n"
            ")",
        ),
        Record(f"name_queue_name:celery_task_failed_plain:ratio_rate{w}", f"{plain}\n/ {done}"),
        # retries per new task: received counts every attempt, so new = received - retried
        Record(
            f"name_queue_name:celery_task_retry_amplification:rate{w}",
            retry_amplification(retried, received),
        ),
        Record(length, f"sum by ({QUEUE}) (celery_queue_length)"),
        Record(
            f"queue_name:celery_queue_length:deriv{c.text('queue_trend_window')}",
            f"sum by ({QUEUE}) (deriv(celery_queue_length[{c.text('queue_trend_window')}]))",
        ),
        Record(
            f"queue_name:celery_queue_length:deriv{c.text('queue_climb_window')}",
            f"sum by ({QUEUE}) (deriv(celery_queue_length[{c.text('queue_climb_window')}]))",
        ),
        # a message leaves the queue when a worker receives it (retries and redeliveries too)
        Record(egress, f"sum by ({QUEUE}) ({received})"),
        # what arrives: task-sent counts where the queue has them (event setup with
        # task_send_sent_event), else egress + the depth's change (both setups), >= 0
        Record(
            f"queue_name:celery_queue_ingress:rate{w}",
            ingress(
                _rate(c, "celery_task_sent_total", labels=QUEUE),
                egress,
                f"sum by ({QUEUE}) (deriv(celery_queue_length[{w}]))",
            ),
        ),
        # time to work off the backlog at the current egress, new arrivals ignored (a task
        # published now waits for the messages ahead of it, promql.drain_time); +Inf for
        # a queue with messages that nothing leaves
        Record(
            f"queue_name:celery_queue_drain_time_seconds:estimate{w}", drain_time(length, egress)
        ),
        # 1 for every worker that is down (CeleryWorkerDown's condition, shared by the
        # alerts that yield to it)
        Record(WORKER_DOWN, f"(\n{_indent(_worker_down(c))}\n) * 0 + 1"),
        # the last success survives an exporter restart (the rule reads its own last value)
        Record(
            latch,
            f"max by (broker, name) (celery_task_last_success_timestamp_seconds)\nor {latch}",
        ),
    ]
    rules += _beat_records(c)
    rules += [
        Record(
            PERIODIC_CONFIG,
            f'label_replace(vector({number_text(seconds)}), "name", {json.dumps(name)}, "", "")',
        )
        for name, seconds in sorted(c.periodic_tasks.items())
    ]
    return rules


def _beat_records(c: RulesConfig) -> list[Record]:
    """What CeleryPeriodicTaskMissed reads from beat's own schedule (the beat agent's
    celery_beat_entry_* series), by broker and task name."""
    interval = "celery_beat_entry_interval_seconds"
    ratio, least = c.text("periodic_slack_ratio"), c.text("periodic_slack_min")
    last_run = f"min by (broker, name) ({BEAT_LAST_RUN})"
    return [
        # a task of several entries is due as often as its most frequent one
        Record(
            PERIODIC_BEAT,
            f"min by (broker, name) (\n  {interval}\n"
            f"  + clamp_min({interval} * {ratio}, {least})\n)",
        ),
        # the first send seen of a task beat sends but that has no success at all: the
        # rule reads its own last value; a success, or the entry gone from beat, ends it
        Record(
            PERIODIC_UNSUCCEEDED,
            f"(\n  {PERIODIC_UNSUCCEEDED}\n  or {last_run}\n)\n"
            f"unless on (broker, name) {LAST_SUCCESS}\n"
            f"and on (broker, name) {interval}",
        ),
    ]


def _task_dashboard() -> str:
    return (
        f"/d/{TASKS}?var-broker={{{{ $labels.broker | urlquery }}}}"
        "&var-queue={{ $labels.queue_name | urlquery }}"
        "&var-task={{ $labels.name | urlquery }}"
    )


def _queue_dashboard(with_queue: bool = True) -> str:
    url = f"/d/{QUEUES}?var-broker={{{{ $labels.broker | urlquery }}}}"
    return url + ("&var-queue={{ $labels.queue_name | urlquery }}" if with_queue else "")


def _worker_dashboard() -> str:
    return (
        f"/d/{WORKERS}?var-broker={{{{ $labels.broker | urlquery }}}}"
        "&var-worker={{ $labels.hostname | urlquery }}"
    )


def _job_dashboard(uid: str) -> str:
    return f"/d/{uid}?var-broker={{{{ $labels.broker | urlquery }}}}"


def _failure_ratio_above(c: RulesConfig, ratio_series: str, key: str) -> str:
    """``ratio_series`` above the threshold ``key``: the task overrides' own (the first
    override whose pattern matches a task wins), the global one for every other task."""
    parts: list[str] = []
    earlier: list[str] = []
    for override in c.tasks:
        own = getattr(override, key)
        if own is not None and not override.ignore:
            matchers = [f'name=~"{regex_text(override.pattern)}"']
            if earlier:
                matchers.append(f'name!~"{regex_text("|".join(earlier))}"')
            parts.append(f"{ratio_series}{{{', '.join(matchers)}}} > {number_text(own)}")
        earlier.append(override.pattern)
    rest = f'{{name!~"{regex_text("|".join(earlier))}"}}' if parts else ""
    default = f"{ratio_series}{rest} > {c.text(key)}"
    if not parts:
        return default
    return "(\n" + _indent("\nor ".join([default, *parts])) + "\n)"


def _retry_storm(c: RulesConfig) -> str:
    """Tasks retrying themselves into a storm: many retries per new task. The load is the
    new tasks times their retries, whether the retries are bounded (max_retries=50 with a
    short countdown: every task ends, failed, after fifty runs) or not; a task that retries
    twice and then dead-letters is no storm, CeleryTaskRetriesExhausted reports it."""
    w = c.text("rate_window")
    t = f"name_queue_name:celery_task_{{}}:rate{w}"
    return (
        f"name_queue_name:celery_task_retry_amplification:rate{w}"
        f" >= {c.text('retry_amplification')}\n"
        f"and {t.format('retried')} > {_per_second(c, 'retry_min_per_minute')}"
    )


def _task_alerts(c: RulesConfig) -> list[Alert]:
    w, ew = c.text("rate_window"), c.text("event_window")
    plain = f"name_queue_name:celery_task_failed_plain:rate{w}"
    plain_ratio = f"name_queue_name:celery_task_failed_plain:ratio_rate{w}"
    failure_description = (
        "{{ $value | humanizePercentage }} of the runs of {{ $labels.name }} (queue "
        f"{{{{ $labels.queue_name }}}}) failed over the last {w}. Counted are failures no more "
        "specific alert explains: time limits, lost workers, unregistered tasks and exhausted "
        "retries have their own."
    )
    failure = [
        Alert(
            "CeleryTaskFailureRateHigh",
            severity,
            "5m",
            f"{_failure_ratio_above(c, plain_ratio, key)}\n"
            f"and {plain} > {_per_second(c, 'failure_min_per_minute')}",
            "A Celery task fails often.",
            failure_description,
            _task_dashboard(),
        ).unless(
            # its failed messages land in a dead-letter queue: that queue's alert pages
            "broker, name",
            _dead_lettered_tasks(c),
            "CeleryDeadLetterQueueGrowing",
        )
        for severity, key in (
            ("warning", "failure_ratio_warning"),
            ("critical", "failure_ratio_critical"),
        )
    ]

    def failures(exceptions: str) -> str:
        return f"celery_task_failed_total{{exception{exceptions}}}"

    def event(
        name: str,
        selector: str,
        threshold: str,
        summary: str,
        *,
        happened: str,
        consequence: str,
        by: str = TASK,
    ) -> Alert:
        """An alert on events a task counter counted in the event window."""
        return Alert(
            name,
            "warning",
            "1m",
            f"{occurrences(selector, by, ew)} >= {c.text(threshold)}",
            summary,
            f"{{{{ $labels.name }}}} (queue {{{{ $labels.queue_name }}}}) {happened} "
            f"({{{{ $value | humanize }}}} in the last {ew}): {consequence}",
            _task_dashboard(),
        )

    return [
        *failure,
        Alert(
            "CeleryTaskRetryStorm",
            "warning",
            "5m",
            _retry_storm(c),
            "A Celery task retries itself into a storm.",
            "{{ $labels.name }} (queue {{ $labels.queue_name }}) was retried "
            "{{ $value | humanize }} times per new task over the last " + w + ": each retry "
            "is another message and another run, so a failing dependency multiplies the load.",
            _task_dashboard(),
        ),
        # during a storm the exhausted retries are its symptom: one page, the storm's
        event(
            "CeleryTaskRetriesExhausted",
            "celery_task_failed_after_retries_total",
            "retries_exhausted_min",
            "Celery tasks failed for good after retrying.",
            happened="failed for good after retrying",
            consequence="the retries did not help, the work is lost or dead-lettered.",
        ).unless(TASK, _retry_storm(c), "CeleryTaskRetryStorm"),
        event(
            "CeleryTaskWorkerLost",
            failures('="WorkerLostError"'),
            "worker_lost_min",
            "Celery tasks died with their worker process (WorkerLostError).",
            happened="failed with WorkerLostError",
            consequence="the pool process running it was killed (OOM killer, SIGKILL) or crashed.",
        ),
        event(
            "CeleryTaskTimeLimitExceeded",
            failures('=~"TimeLimitExceeded|SoftTimeLimitExceeded"'),
            "time_limit_min",
            "Celery tasks hit their time limit.",
            happened="failed with {{ $labels.exception }}",
            consequence="the task ran longer than its time limit allows (past the hard "
            "limit the pool also ends the process running it).",
            by=f"{TASK}, exception",
        ),
        event(
            "CeleryTaskNotRegistered",
            failures('="NotRegistered"'),
            "not_registered_min",
            "Workers received Celery tasks they do not know (NotRegistered).",
            happened="reached workers that do not know the task",
            consequence="producers and workers run different code, or the name is "
            "misspelled. Celery drops these messages.",
        ),
        event(
            "CeleryTaskRedelivered",
            "celery_task_redelivered_total",
            "redelivered_min",
            "The broker delivered Celery tasks a second time.",
            happened="was received again without a retry",
            consequence="the Redis visibility timeout passed or a worker was lost before "
            "acknowledging. It may run twice.",
        ),
        Alert(
            "CeleryPeriodicTaskMissed",
            "warning",
            "5m",
            f"{_periodic_missed()}\n{EXPORTER_SEES}",
            "A periodic Celery task has not succeeded within its interval.",
            "{{ $labels.name }} has not succeeded for {{ $value | humanizeDuration }} (since "
            "its last success, or since beat first sent it), longer than its schedule allows: "
            "its beat interval plus slack, or its periodic_tasks limit.",
            f"/d/{TASKS}?var-broker={{{{ $labels.broker | urlquery }}}}"
            "&var-task={{ $labels.name | urlquery }}",
        )
        # beat sends nothing: one page for every periodic task, CeleryBeatDown's
        .unless("broker", _beat_down(c), "CeleryBeatDown"),
    ]


def _periodic_missed() -> str:
    """Periodic tasks without success for longer than they may go: the limit of
    periodic_tasks where the overrides list the task, else its beat schedule's (the beat
    agent's entries). Age is the time since the last success, or for a task that never
    succeeded, since beat was first seen sending it. Where beat has the task, only a task
    that beat sent after its last success counts (a listed one too): when beat sends
    nothing, CeleryBeatDown pages, not one alert per task."""
    age = periodic_age(LAST_SUCCESS, PERIODIC_UNSUCCEEDED)
    last_run = f"max by (broker, name) ({BEAT_LAST_RUN})"
    sent_since = f"{last_run} > on (broker, name) {LAST_SUCCESS}"
    # a listed task that beat sends, not sent since it last succeeded: beat's incident
    not_sent_since = f"{LAST_SUCCESS} >= on (broker, name) {last_run}"
    return (
        "(\n"
        f"{_indent(age)} > on (name) group_left () {PERIODIC_CONFIG}\n"
        f"  unless on (broker, name) ({not_sent_since})\n"
        "  or\n"
        "  (\n"
        f"    time() - {LAST_SUCCESS} > on (broker, name) {PERIODIC_BEAT}\n"
        f"    and on (broker, name) ({sent_since})\n"
        f"    or time() - {PERIODIC_UNSUCCEEDED} > on (broker, name) {PERIODIC_BEAT}\n"
        "  )\n"
        f"  unless on (name) {PERIODIC_CONFIG}\n"
        ")"
    )


def _beat_down(c: RulesConfig) -> str:
    """Beats that send nothing, by broker and beat hostname: stuck (an entry overdue by
    beat_late_slack while the beat sent no entry for as long; its agent still answers from
    another thread), or gone (a beat agent seen within beat_remembered whose series
    vanished: process killed, target down or removed, while no beat of its broker is up).
    Prometheus marks a vanished target's series stale at once, so the absence shows on the
    next evaluation."""
    late = c.text("beat_late_slack")
    stuck = (
        f"count by ({BEAT}) (time() - {BEAT_NEXT_RUN} > {late})\n"
        f"unless on ({BEAT}) (\n"
        f"  time() - max by ({BEAT}) ({BEAT_LAST_RUN}) <= {late}\n"
        ")"
    )
    gone = (
        f"max by (broker, hostname) (max_over_time({BEAT_INFO}[{c.text('beat_remembered')}]))\n"
        f"unless on (broker) {BEAT_INFO}"
    )
    return (
        "max by (broker, hostname) (\n"
        f"  (\n{_indent(stuck, 4)}\n  )\n"
        f"  * on ({BEAT}) group_left (hostname) {BEAT_INFO}\n"
        ")\n"
        f"or\n{gone}"
    )


def _beat_duplicate() -> str:
    """Brokers with more than one beat agent serving the same schedule entry: each sends
    it, so its task runs once per beat. The value: the beat agents of the broker. Two
    beats of different apps on one broker, with schedules of their own, are no duplicate;
    one target scraped by two jobs is one beat."""
    entries = (
        "count by (broker, entry, name) (\n"
        "  count by (broker, entry, name, instance) (celery_beat_entry_interval_seconds)\n"
        ") > 1"
    )
    return (
        f"count by (broker) (count by (broker, instance, hostname) ({BEAT_INFO})) > 1\n"
        f"and on (broker) (\n{_indent(entries)}\n)"
    )


def _beat_alerts(c: RulesConfig) -> list[Alert]:
    late = c.text("beat_late_slack")
    return [
        Alert(
            "CeleryBeatDown",
            "critical",
            "5m",
            _beat_down(c),
            "celery beat sends no periodic task.",
            "celery beat {{ $labels.hostname }} (broker {{ $labels.broker }}) is gone or "
            f"stuck: its agent vanished, or its schedule's entries are overdue by more than "
            f"{late}s while it sent none. No periodic task of its schedule is sent.",
            _job_dashboard(TASKS),
        ),
        Alert(
            "CeleryBeatDuplicate",
            "warning",
            "5m",
            _beat_duplicate(),
            "More than one celery beat sends the same schedule.",
            "{{ $value | humanize }} celery beat agents serve the same schedule entries for "
            "broker {{ $labels.broker }}: each of them sends those entries, so their tasks "
            "run more than once per interval.",
            _job_dashboard(TASKS),
        ),
    ]


def _queue_alerts(c: RulesConfig) -> list[Alert]:
    w = c.text("rate_window")
    length = "queue_name:celery_queue_length:sum"
    egress = f"queue_name:celery_queue_egress:rate{w}"
    short = f"queue_name:celery_queue_length:deriv{c.text('queue_trend_window')}"
    long = f"queue_name:celery_queue_length:deriv{c.text('queue_climb_window')}"
    drain = f"queue_name:celery_queue_drain_time_seconds:estimate{w}"
    no_drain = c.text("queue_no_drain_window")
    received = occurrences("celery_task_received_total", QUEUE, no_drain)
    stale = c.text("dlq_stale_window")
    # messages wait and nothing took one for the no-drain window (CeleryQueueNotDraining's
    # and CeleryQueueNoConsumers' incident)
    stuck = f"{length} > 0\nunless on ({QUEUE}) (\n{_indent(received)} > 0\n)"
    all_down = _all_workers_down()  # every worker of the broker is down: CeleryWorkerDown pages
    oldest = [
        Alert(
            "CeleryQueueOldestMessageTooOld",
            severity,
            "5m",
            f"max by ({QUEUE}) (celery_queue_oldest_message_age_seconds) > {c.text(key)}\n"
            + EXPORTER_SEES,
            "Tasks wait too long in a Celery queue.",
            "The oldest task sent to queue {{ $labels.queue_name }} and not yet received by a "
            "worker has waited {{ $value | humanizeDuration }}.",
            _queue_dashboard(),
        )
        # not draining or no consumers: that alert pages instead
        .unless(QUEUE, stuck, "CeleryQueueNotDraining", "CeleryQueueNoConsumers")
        .unless("broker", all_down, "CeleryWorkerDown")
        for severity, key in (
            ("warning", "oldest_message_warning"),
            ("critical", "oldest_message_critical"),
        )
    ]
    return [
        Alert(
            "CeleryQueueClimbing",
            "warning",
            "15m",
            f"{long} * 60 > {c.text('queue_climb_min_per_minute')}\n"
            f"and {short} > 0\n"
            f"and {length} > {c.text('queue_min_backlog')}\n"
            f"and {egress} > 0\n" + BROKER_UP,
            "A Celery queue keeps growing although workers consume it.",
            "Queue {{ $labels.queue_name }} grew by {{ $value | humanize }} messages per "
            f"minute over the last {c.text('queue_climb_window')} while workers took tasks "
            "from it: more arrives than the workers finish.",
            _queue_dashboard(),
        ).unless(
            # its every consumer's pool is saturated: the workers' lack of capacity pages
            QUEUE,
            _saturated_consumers(c),
            "CeleryWorkerPoolSaturated",
        ),
        Alert(
            "CeleryQueueSlowDrain",
            "warning",
            "10m",
            f"{drain} > {c.text('queue_drain_slo')}\n"
            f"and {length} > {c.text('queue_min_backlog')}\n"
            f"and {egress} > 0\n"
            f"and {short} <= 0\n" + BROKER_UP,
            "A Celery queue drains too slowly.",
            "At the rate workers take tasks from queue {{ $labels.queue_name }}, its backlog "
            "takes {{ $value | humanizeDuration }} to drain, more than the "
            f"{c.text('queue_drain_slo')}s objective.",
            _queue_dashboard(),
        ),
        Alert(
            "CeleryQueueNotDraining",
            "critical",
            "3m",
            f"{stuck}\n"
            f"unless on ({QUEUE}) (\n{_indent(_no_consumers())}\n)\n"
            + EXPORTER_SEES
            + "\n"
            + BROKER_UP,
            "A Celery queue has messages and nothing takes them.",
            "{{ $value | humanize }} messages wait in queue {{ $labels.queue_name }} and no "
            f"worker received a task from it for {no_drain}: its workers are stopped or stuck.",
            _queue_dashboard(),
        ).unless("broker", all_down, "CeleryWorkerDown"),
        Alert(
            "CeleryQueueNoConsumers",
            "critical",
            "5m",
            f"(\n{_indent(_no_consumers())}\n)\n" + BROKER_UP,
            "A Celery queue has messages and no consumer.",
            "{{ $value | humanize }} messages wait in queue {{ $labels.queue_name }}, which no "
            "worker consumes: a misspelled queue in task_routes, or no worker started with "
            "-Q for it.",
            _queue_dashboard(),
        ).unless("broker", all_down, "CeleryWorkerDown"),
        *oldest,
        Alert(
            "CeleryQueueUnackedNearVisibilityTimeout",
            "warning",
            "1m",
            f"max by ({QUEUE}) (\n"
            "  celery_queue_oldest_unacked_age_seconds\n"
            "  / celery_queue_visibility_timeout_seconds\n"
            f") > {c.text('visibility_timeout_ratio')}",
            "A Celery task is close to the Redis visibility timeout.",
            "The oldest unacknowledged delivery from queue {{ $labels.queue_name }} is at "
            "{{ $value | humanizePercentage }} of the visibility timeout: past it, Redis "
            "delivers the task to another worker and it runs twice.",
            _queue_dashboard(),
        ),
        Alert(
            "CeleryDeadLetterQueueGrowing",
            "warning",
            "1m",
            occurrences("celery_dlq_ingress_total", QUEUE, c.text("event_window"))
            + f" >= {c.text('dlq_ingress_min')}",
            "Messages are entering a Celery dead-letter queue.",
            "Messages entered dead-letter queue {{ $labels.queue_name }} "
            "({{ $value | humanize }} in the last " + c.text("event_window") + ").",
            _queue_dashboard(with_queue=False),
        )
        # the dead letters of tasks whose retries ran out are that alert's incident; one
        # task more in the DLQ, and it pages again
        .unless(QUEUE, _dead_letters_explained(c), "CeleryTaskRetriesExhausted"),
        Alert(
            "CeleryDeadLetterQueueNotDrained",
            "warning",
            "15m",
            # never empty within the window, and already there when it began
            f"max by ({QUEUE}) (min_over_time(celery_dlq_length[{stale}])) > 0\n"
            f"and on ({QUEUE}) max by ({QUEUE}) (celery_dlq_length offset {stale}) > 0",
            "A Celery dead-letter queue is not being drained.",
            "Dead-letter queue {{ $labels.queue_name }} has held at least "
            "{{ $value | humanize }} messages for " + stale + ": nobody "
            "replays or discards them.",
            _queue_dashboard(with_queue=False),
        ),
    ]


def _retries_exhausted(c: RulesConfig) -> str:
    """CeleryTaskRetriesExhausted's condition, by broker and task name."""
    return (
        f"{occurrences('celery_task_failed_after_retries_total', TASK, c.text('event_window'))}"
        f" >= {c.text('retries_exhausted_min')}"
    )


def _dead_letters_explained(c: RulesConfig) -> str:
    """Dead-letter queues where every task whose dead letters grew in the event window
    (``celery_dlq_messages`` by name, sampled by the exporter) exhausted its retries: the
    growth is CeleryTaskRetriesExhausted's incident. A DLQ without that sample (foreign
    messages, no --dlq-sample), or with a task that did not exhaust retries, is not."""
    ew = c.text("event_window")
    by = "broker, queue_name, name"
    now = f"max by ({by}) (celery_dlq_messages)"
    then = f"max by ({by}) (celery_dlq_messages offset {ew})"
    grown = f"(\n  {now} > {then}\n  or ({now} unless {then})\n)"
    # a task the config ignores has no CeleryTaskRetriesExhausted: its dead letters page
    exhausted = f"max by (broker, name) (\n{_indent(_retries_exhausted(c))}\n)"
    exhausted = _without_ignored_tasks(c, exhausted)
    return (
        f"count by ({QUEUE}) {grown}\n"
        f"== count by ({QUEUE}) (\n{_indent(grown)}\n  and on (broker, name) "
        f"{exhausted.replace(chr(10), chr(10) + '  ')}\n)"
    )


def _dead_lettered_tasks(c: RulesConfig) -> str:
    """Tasks whose dead letters grew in the event window (``celery_dlq_messages`` by name,
    sampled by the exporter): their failures reach a dead-letter queue, whose growth is
    CeleryDeadLetterQueueGrowing's incident."""
    ew = c.text("event_window")
    by = "broker, name"
    now = f"max by ({by}) (celery_dlq_messages)"
    then = f"max by ({by}) (celery_dlq_messages offset {ew})"
    return f"{now} > {then}\nor ({now} unless {then})"


def _saturated_consumers(c: RulesConfig) -> str:
    """Queues whose every consumer (a scrape target whose workers received from the queue
    in the climb's short window) has a saturated pool: the climb is those workers' lack of
    capacity, CeleryWorkerPoolSaturated's incident (agent setup; without pool series,
    nothing)."""
    window = c.text("queue_trend_window")
    consumers = (
        f"max by (broker, queue_name, job, instance) "
        f"(increase(celery_task_received_total[{window}]) > 0)"
    )
    saturated = f"{pool_busy_ratio(c.text('rate_window'))} >= {c.text('pool_saturation_ratio')}"
    return (
        f"count by ({QUEUE}) ({consumers})\n"
        f"== count by ({QUEUE}) (\n  {consumers}\n  and on (job, instance) (\n"
        f"{_indent(_indent(saturated))}\n  )\n)"
    )


def _agent_targets(c: RulesConfig) -> str:
    """Scrape targets that were agents inside workers (they export celery_vitals_agent_info)."""
    return (
        "max by (job, instance, broker, hostname) "
        f"(max_over_time(celery_vitals_agent_info[{c.text('worker_remembered')}]))"
    )


def _purged_worker_down(c: RulesConfig) -> str:
    """Workers that went down and whose series the exporter has purged since, while their
    broker has fewer workers up than it had: nothing recovered (a replacement under another
    hostname brings the count back and ends it)."""
    remembered = c.text("worker_down_remembered")
    up = "sum by (broker) (celery_worker_up)"
    now = WORKERS_UP
    return (
        f"max by ({WORKER}) (\n"
        f"  max_over_time((max by ({WORKER}) (celery_worker_up) == 0)[{remembered}:])\n"
        ")\n"
        f"unless on ({WORKER}) celery_worker_up\n"
        f"and on (broker) ({now} < max_over_time(({up})[{remembered}:]))\n"
        "unless on (broker) (celery_vitals_event_stream_up == 0)"
    )


def _worker_down(c: RulesConfig) -> str:
    """Down workers: the exporter's view (heartbeats), the same after the exporter purged
    the worker's series, or an agent's target that stopped answering."""
    return (
        f"(\n  max by ({WORKER}) (celery_worker_up) == 0\n"
        "  unless on (broker) (celery_vitals_event_stream_up == 0)\n)\n"
        f"or\n(\n{_indent(_purged_worker_down(c))}\n)\n"
        f"or\nmax by ({WORKER}) (\n"
        f"  (up == 0) * on (job, instance) group_left (broker, hostname) {_agent_targets(c)}\n)"
    )


def _all_workers_down() -> str:
    """Down workers of a broker that has no worker up while tasks wait in its queues: nothing
    will run them. The queues' own alerts yield to it (one incident, one page)."""
    return (
        f"{WORKER_DOWN} == 1\n"
        f"and on (broker) ({WORKERS_UP} == 0)\n"
        "and on (broker) (sum by (broker) (queue_name:celery_queue_length:sum) > 0)"
    )


MEMORY = "celery_worker_process_resident_memory_bytes"


def _memory_growing(c: RulesConfig) -> str:
    """Seconds until a worker process reaches the memory bound, for processes that leak: fast
    (the short trend reaches it within memory_fast_horizon; a warm-up levels off before
    that) or slowly (the long trend within memory_slow_horizon, its growth kept: the floor
    of its last memory_slow_floor_window above its peak of the same span a window earlier,
    which neither a warm-up that levelled off nor a child recycled by max_memory_per_child
    shows)."""
    bound = c.text("worker_process_memory_bytes")
    slow, floor = c.text("memory_slow_window"), c.text("memory_slow_floor_window")
    fast_until = seconds_until(MEMORY, c.text("memory_fast_window"), bound)
    slow_until = seconds_until(MEMORY, slow, bound)
    return (
        f"{fast_until} < {c.text('memory_fast_horizon')}\n"
        "or\n(\n"
        f"{_indent(slow_until)} < {c.text('memory_slow_horizon')}\n"
        f"  and min_over_time({MEMORY}[{floor}])"
        f" > max_over_time({MEMORY}[{floor}] offset {slow})\n"
        ")"
    )


def _prefetch_hoarding(c: RulesConfig) -> str:
    """Workers whose pool was saturated over the rate window while they held prefetched
    tasks (not ETA tasks), on average, and another worker of the broker idled. Averages,
    so that a task ending at a scrape, or an idle worker's short task, does not restart
    the for:. The value: the tasks held."""
    w = c.text("rate_window")
    return (
        f"avg_over_time(celery_worker_tasks_reserved[{w}])"
        f" - avg_over_time(celery_worker_eta_tasks[{w}])"
        f" >= {c.text('prefetch_held_min')}\n"
        f"and {pool_busy_ratio(w)} >= {c.text('pool_saturation_ratio')}\n"
        "and on (broker) (\n"
        f"  count by (broker) (\n{_indent(pool_busy_ratio(w), 4)}"
        f" <= {c.text('prefetch_idle_ratio')}\n  )\n)"
    )


def _worker_alerts(c: RulesConfig) -> list[Alert]:
    flap, w, ew = c.text("worker_flap_window"), c.text("rate_window"), c.text("event_window")
    return [
        Alert(
            "CeleryWorkerDown",
            "warning",
            "5m",
            f"{WORKER_DOWN} == 1",
            "A Celery worker is down.",
            "Worker {{ $labels.hostname }} went offline or stopped sending heartbeats.",
            _worker_dashboard(),
        ),
        Alert(
            "CeleryWorkerDown",
            "critical",
            "5m",
            _all_workers_down(),
            "Every Celery worker of a broker is down while tasks wait.",
            "Worker {{ $labels.hostname }} is down and no other worker of broker "
            "{{ $labels.broker }} is up, while tasks wait in its queues: nothing runs them.",
            _worker_dashboard(),
        ),
        Alert(
            "CeleryWorkerFlapping",
            "warning",
            "1m",
            f"sum by ({WORKER}) (increase(celery_worker_starts_total[{flap}]))"
            f" >= {c.text('worker_flap_starts')}",
            "A Celery worker keeps restarting.",
            "Worker {{ $labels.hostname }} started {{ $value | humanize }} times in the last "
            f"{flap}.",
            _worker_dashboard(),
        ),
        Alert(
            "CeleryWorkerTaskEventsMissing",
            "critical",
            "5m",
            f"max by ({WORKER}) (celery_worker_task_events_missing) == 1",
            "A Celery worker sends no task events: celery-vitals is blind to its tasks.",
            "Worker {{ $labels.hostname }} reports processed tasks in its heartbeats but no "
            "task event arrived from it. Task, queue and periodic-task alerts that rely on "
            "task events are silenced while this fires.",
            _worker_dashboard(),
        ),
        Alert(
            "CeleryWorkerPoolProcessKilled",
            "warning",
            "1m",
            # killed only: the children the pool itself ends for a hard time limit are
            # reason="time_limit", and CeleryTaskTimeLimitExceeded pages those
            occurrences('celery_worker_pool_process_exits_total{reason="killed"}', WORKER, ew)
            + f" >= {c.text('worker_killed_min')}",
            "Celery pool processes were killed from outside (OOM killer, kill -9).",
            "{{ $value | humanize }} pool processes of worker {{ $labels.hostname }} were "
            f"killed by a signal from outside the pool in the last {ew}: the kernel's OOM "
            "killer (SIGKILL) is the usual cause, else a kill -9 or a crash. A task such a "
            "process was running failed with WorkerLostError. Children the pool ended for "
            "a hard time limit are not counted here.",
            _worker_dashboard(),
        ),
        Alert(
            "CeleryWorkerMemoryGrowing",
            "warning",
            "5m",
            _memory_growing(c),
            "A Celery worker process' memory grows toward its limit.",
            "Process {{ $labels.process }} of worker {{ $labels.hostname }} grows and, at "
            "its current growth, reaches the memory bound "
            f"({c.text('worker_process_memory_bytes')} bytes) in about "
            "{{ $value | humanizeDuration }}: without child recycling the OOM killer ends it.",
            _worker_dashboard(),
        ),
        Alert(
            "CeleryWorkerPoolSaturated",
            "warning",
            "2m",
            f"{pool_busy_ratio(w)} >= {c.text('pool_saturation_ratio')}\n"
            "and on (broker) (sum by (broker) (queue_name:celery_queue_length:sum)"
            f" >= {c.text('queue_min_backlog')})\n"
            # it still starts tasks: a pool that starts none hangs (CeleryQueueNotDraining)
            f"and on ({WORKER}) (delta(celery_worker_tasks_processed[{w}]) > 0)",
            "A Celery worker's pool is saturated while a backlog waits.",
            "{{ $value | humanizePercentage }} of the pool processes of worker "
            f"{{{{ $labels.hostname }}}} were busy over the last {w}, starting tasks as they "
            "finish others, while messages wait in the broker's queues: add workers or "
            "concurrency, or make the tasks faster.",
            _worker_dashboard(),
        ).unless(
            # a worker hoarding prefetched tasks while another idles: one incident, one page
            WORKER,
            _prefetch_hoarding(c),
            "CeleryWorkerPrefetchHoarding",
        ),
        Alert(
            "CeleryWorkerPrefetchHoarding",
            "warning",
            "2m",
            _prefetch_hoarding(c),
            "A busy Celery worker holds prefetched tasks other workers could run.",
            "Worker {{ $labels.hostname }} had every pool process busy and held "
            "{{ $value | humanize }} more tasks prefetched on average over the last "
            f"{w}, while another worker of the broker idled: lower "
            "worker_prefetch_multiplier, or use -O fair / acks_late for long tasks.",
            _worker_dashboard(),
        ),
    ]


def _exporter_down(c: RulesConfig) -> str:
    """Exporter targets Prometheus cannot scrape. ``up`` has no broker label: the targets
    that exported celery_broker_up (the exporters, never the agents) within
    exporter_remembered lend it theirs."""
    return (
        "(up == 0)\n"
        "* on (job, instance) group_left (broker)\n"
        "max by (job, instance, broker) "
        f"(max_over_time(celery_broker_up[{c.text('exporter_remembered')}]) * 0 + 1)"
    )


def _broker_exporter_alerts(c: RulesConfig) -> list[Alert]:
    ew = c.text("event_window")
    persistence = 'celery_broker_persistence_enabled{kind=~"rdb|aof"}'
    return [
        Alert(
            "CeleryBrokerDown",
            "critical",
            "1m",
            "celery_broker_up == 0",
            "celery-vitals cannot reach the Celery broker.",
            "The exporter {{ $labels.instance }} could not poll the broker: queue depths are "
            "stale and the queue alerts are silenced.",
            _job_dashboard(SLOW),
        ),
        Alert(
            "CeleryRedisBrokerNotPersistent",
            "warning",
            "15m",
            # both kinds known (RDB is unknown on a Redis that refuses CONFIG and has
            # taken no snapshot yet) and both off
            f"max by ({INSTANCE}) ({persistence}) == 0\n"
            f"and on ({INSTANCE}) count by ({INSTANCE}) ({persistence}) == 2\n"
            f'and on ({INSTANCE}) celery_broker_info{{transport="redis"}}',
            "The Redis broker does not persist to disk.",
            "The Redis broker behind {{ $labels.instance }} has neither RDB snapshots nor "
            "AOF: a Redis restart loses every queued task.",
        ),
        Alert(
            "CeleryExporterMissing",
            "critical",
            "10m",
            # absent() of a selector that matches nothing: the rules' selector and the
            # scrape configuration disagree, or no exporter is scraped at all
            "absent(celery_broker_up)\n"
            # a known exporter that is down: CeleryExporterDown's page says more
            f"unless on () (\n{_indent(_exporter_down(c))}\n)",
            "No celery-vitals exporter matches the rules' selector.",
            "Prometheus has no celery_broker_up series that the celery-vitals rules select: "
            "no exporter is scraped, or the rules' selector does not match its series. Every "
            "other Celery alert is silent until this is fixed.",
        ),
        Alert(
            "CeleryExporterDown",
            "critical",
            "5m",
            _exporter_down(c),
            "Prometheus cannot scrape celery-vitals.",
            "Prometheus could not scrape {{ $labels.instance }} (job {{ $labels.job }}): no "
            "Celery alert can fire while it is down.",
            _job_dashboard(OVERVIEW),
        ),
        Alert(
            "CeleryExporterEventStreamDown",
            "critical",
            "2m",
            "celery_vitals_event_stream_up == 0\nunless on (job, instance) (celery_broker_up == 0)",
            "celery-vitals receives no Celery events.",
            "The event stream of {{ $labels.instance }} is disconnected although the broker "
            "answers: task and worker metrics are frozen, and alerts built on them are "
            "silenced.",
            _job_dashboard(SLOW),
        ),
        Alert(
            "CeleryAgentFeatureDown",
            "warning",
            "5m",
            "celery_vitals_agent_feature_up == 0",
            "A part of the celery-vitals agent does not work with this worker's Celery.",
            "The agent at {{ $labels.instance }} cannot read {{ $labels.feature }} from its "
            "worker's Celery: those metrics are missing, and the alerts built on them "
            "cannot fire for it. The worker's log names the cause.",
            _job_dashboard(WORKERS),
        ),
        Alert(
            "CeleryExporterEventsLost",
            "warning",
            "5m",
            f"increase(celery_vitals_heartbeats_missed_total[{ew}])"
            f" >= {c.text('heartbeats_missed_min')}",
            "celery-vitals is losing Celery events.",
            "{{ $value | humanize }} worker heartbeats never reached {{ $labels.instance }} in "
            f"the last {ew} although the workers stayed online: task events are lost too, "
            "and task counts are too low.",
            _job_dashboard(SLOW),
        ),
        Alert(
            "CeleryExporterTrackerEvicting",
            "warning",
            "5m",
            f"sum by ({INSTANCE}, reason) "
            f"(increase(celery_vitals_tracker_evictions_total[{ew}]))"
            f" >= {c.text('tracker_evictions_min')}",
            "celery-vitals forgets unfinished tasks.",
            "{{ $labels.instance }} dropped {{ $value | humanize }} unfinished tasks from its "
            f"uuid map in the last {ew} (reason {{{{ $labels.reason }}}}): their later events "
            'are counted as name="unknown".',
            _job_dashboard(SLOW),
        ),
        Alert(
            "CeleryExporterLabelValuesFolded",
            "info",
            "5m",
            occurrences(
                "celery_vitals_label_values_folded_total",
                "job, instance, broker, label, reason",
                ew,
            )
            + f" >= {c.text('label_values_folded_min')}",
            'celery-vitals folds label values into "other".',
            "{{ $labels.instance }} replaced {{ $value | humanize }} values of label "
            '{{ $labels.label }} by "other" in the last ' + ew + " (reason "
            "{{ $labels.reason }}): series of those values are merged.",
            _job_dashboard(SLOW),
        ),
    ]


def _without_ignored_tasks(c: RulesConfig, expr: str) -> str:
    """``expr`` without the tasks the config ignores."""
    ignored = [override.pattern for override in c.tasks if override.ignore]
    if not ignored:
        return expr
    return scope(expr, f'name!~"{regex_text("|".join(ignored))}"', recorded=True)


def _ignoring_tasks(c: RulesConfig, alerts: list[Alert]) -> list[Alert]:
    """The task alerts without the tasks the config ignores."""
    return [replace(alert, expr=_without_ignored_tasks(c, alert.expr)) for alert in alerts]


def all_alerts(c: RulesConfig) -> list[Alert]:
    """Every alert the rules define, before the config disables any or changes for:."""
    return [
        *_ignoring_tasks(c, _task_alerts(c)),
        *_queue_alerts(c),
        *_worker_alerts(c),
        *_beat_alerts(c),
        *_broker_exporter_alerts(c),
    ]


def alert_names() -> frozenset[str]:
    """The names a config may disable or change the for: of."""
    return frozenset(alert.name for alert in all_alerts(RulesConfig()))


def alerting_rules(c: RulesConfig, *, markers: bool = False) -> list[Alert]:
    """The alerts of the rule file: enabled ones, with the config's for: and selector; an
    alert yields to another only while that one is enabled (``markers``: the yields stay
    between their marker lines, for the chart's template to decide)."""
    return [
        replace(
            alert,
            for_=c.for_.get(alert.name, alert.for_),
            expr=(
                scope(alert.expr, c.rule_selector)
                if markers
                else yields(scope(alert.expr, c.rule_selector), c.disabled_alerts)
            ),
        )
        for alert in all_alerts(c)
        if alert.name not in c.disabled_alerts
    ]


def scoped_recording_rules(c: RulesConfig) -> list[Record]:
    """The recording rules of the rule file, with the config's selector."""
    return [
        replace(record, expr=scope(record.expr, c.rule_selector)) for record in recording_rules(c)
    ]


# -- output ------------------------------------------------------------------------

HEADER = """\
# Generated by `celery-vitals rules`: do not edit. Tune it with an overrides file
# (docs/rules-config.md) and run
#   celery-vitals rules --config overrides.yml --output celery-vitals.rules.yml
"""


def _quoted(text: str) -> str:
    """A YAML double-quoted scalar (a JSON string is one)."""
    return json.dumps(text)


def _block(text: str, indent: int) -> str:
    pad = " " * indent
    return "|-\n" + "\n".join(pad + line if line else "" for line in text.splitlines())


def alert_lines(c: RulesConfig, alert: Alert) -> list[str]:
    lines = [
        f"      - alert: {alert.name}",
        f"        expr: {_block(alert.expr, 10)}",
        f"        for: {alert.for_}",
        "        labels:",
        f"          severity: {alert.severity}",
    ]
    lines += [f"          {name}: {_quoted(text)}" for name, text in sorted(c.labels.items())]
    lines += [
        "        annotations:",
        f"          summary: {_quoted(alert.summary)}",
        f"          description: {_quoted(alert.description)}",
        f"          runbook_url: {_quoted(f'{c.runbook_url}#{alert.anchor}')}",
    ]
    if alert.dashboard is not None:
        lines.append(f"          dashboard_url: {_quoted(c.dashboard_url + alert.dashboard)}")
    return lines


def record_lines(record: Record) -> list[str]:
    return [f"      - record: {record.record}", f"        expr: {_block(record.expr, 10)}"]


RECORDING_GROUP = ["  - name: celery-vitals.recording", "    rules:"]
ALERTS_GROUP = ["  - name: celery-vitals.alerts", "    rules:"]


def render(c: RulesConfig) -> str:
    """The rule file, as YAML written by hand: stable order, block-scalar expressions."""
    lines = [HEADER.rstrip("\n"), "groups:", *RECORDING_GROUP]
    for record in scoped_recording_rules(c):
        lines += record_lines(record)
    lines += ALERTS_GROUP
    for alert in alerting_rules(c):
        lines += alert_lines(c, alert)
    return "\n".join(lines) + "\n"


def runbook_tables(c: RulesConfig) -> str:
    """The alert index and the thresholds table of docs/runbooks.md."""
    lines = ["| alert | severity | for | summary |", "|---|---|---|---|"]
    seen: set[tuple[str, str]] = set()
    for alert in alerting_rules(c):
        if (alert.name, alert.severity) in seen:
            continue
        seen.add((alert.name, alert.severity))
        lines.append(
            f"| [{alert.name}](#{alert.anchor}) | {alert.severity} | {alert.for_} "
            f"| {alert.summary} |"
        )
    lines += ["", "| threshold | value | unit | meaning |", "|---|---|---|---|"]
    for key, threshold in THRESHOLDS.items():
        lines.append(f"| `{key}` | {c.text(key)} | {threshold.unit} | {threshold.meaning} |")
    return "\n".join(lines)
