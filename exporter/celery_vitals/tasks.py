"""TaskTracker: per-task counters and durations from task events.

Only task-sent and task-received carry the task name; started, succeeded,
failed, retried, rejected and revoked carry just the uuid. A bounded uuid map
(entries and age) remembers name, queue and timestamps between them.
Finished uuids are remembered in a bounded ring so that a duplicate terminal
event is counted once.

Everything here is plain data written by the consumer thread only; the
collectors copy it at scrape time. No lock is taken per event.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from celery_vitals.histogram import Histograms
from celery_vitals.labels import OTHER, UNKNOWN, LabelGuard, exception_class, not_registered_name

Event = dict[str, Any]
Key = tuple[str, ...]


# An event's numbers are range-checked where they enter: none larger than this (2**53,
# the largest integer a float holds exactly) reaches a tracker, so nothing derived from
# them overflows or turns into inf/NaN.
MAX_NUMBER = float(2**53)
# Event timestamps (seconds since the epoch, the sender's clock) are accepted up to
# the year 5138; Celery stamps every event, so one outside [0, this] is not Celery's.
MAX_TIMESTAMP = 1e11
# celery_vitals_task_sent_events_missing looks at tasks received in windows this long.
SENT_WINDOW = 60.0


def number(value: object) -> float | None:
    """A float within +-MAX_NUMBER from an event field, or None (bools, strings, 10**400)."""
    if type(value) is float:
        return value if -MAX_NUMBER <= value <= MAX_NUMBER else None  # NaN fails both
    if type(value) is int:
        return float(value) if -MAX_NUMBER <= value <= MAX_NUMBER else None
    return None


def bad_timestamp(value: object) -> bool:
    """True for a timestamp field that is present but not a plausible epoch time."""
    if value is None:
        return False
    seconds = number(value)
    return seconds is None or not 0.0 <= seconds <= MAX_TIMESTAMP


def _eta_timestamp(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        eta = datetime.fromisoformat(value)
    except ValueError:
        return None
    if eta.tzinfo is None:
        eta = eta.replace(tzinfo=UTC)
    seconds = eta.timestamp()
    return None if bad_timestamp(seconds) else seconds


MAX_RETRIES = 2**31  # Celery's retries count: a non-negative int, far below this


def _retries(event: Event) -> int:
    retries = event.get("retries")
    return retries if type(retries) is int and 0 <= retries < MAX_RETRIES else 0


class Task:
    """What the exporter remembers of one unfinished task."""

    __slots__ = (
        "hostname",
        "key",
        "name",
        "next_queued",
        "pending",
        "queue",
        "queued_at",
        "queued_retries",
        "received",
        "received_at",
        "reserved_on",
        "retries",
        "seen_at",
    )

    def __init__(self, name: str, queue: str, seen_at: float) -> None:
        self.name = name
        self.queue = queue
        self.key = (name, queue)  # its label values, built once: most events only count
        self.seen_at = seen_at  # exporter clock: drives age eviction
        self.hostname = UNKNOWN
        # when the attempt with `queued_retries` became runnable: sent, or its ETA if later
        self.queued_at: float | None = None
        self.queued_retries = 0
        # a retry published while the current attempt still runs: (retries, queued_at)
        self.next_queued: tuple[int, float | None] | None = None
        self.received = False
        self.pending = False  # in TaskTracker.pending: sent, not received yet
        self.received_at: float | None = None
        self.retries = 0
        self.reserved_on: str | None = None  # worker holding it, received but not started

    def relabel(self, name: str, queue: str) -> None:
        self.name, self.queue, self.key = name, queue, (name, queue)


class TaskTracker:
    def __init__(
        self,
        *,
        max_tasks: int,
        max_age: float,
        default_queue: str,
        runtime_buckets: tuple[float, ...],
        wait_buckets: tuple[float, ...],
        names: LabelGuard,
        queues: LabelGuard,
        exceptions: LabelGuard,
        hostnames: LabelGuard,
        hostname_label: bool = False,
    ) -> None:
        self.max_tasks = max_tasks
        self.max_age = max_age
        self.names = names
        self.queues = queues
        self.exceptions = exceptions
        self.hostnames = hostnames
        self.hostname_label = hostname_label
        self.default_queue = queues(default_queue)

        self.tasks: OrderedDict[str, Task] = OrderedDict()
        # finished uuids, bounded like the live map: dedup of terminal events, and the
        # name for a task-retried that arrives after the retry itself finished
        # (a tuple of str, which the garbage collector does not track: cheap to keep)
        self._finished: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self.queue_by_name: dict[str, str] = {}  # learned from task-sent
        self.reserved_by_host: dict[str, int] = {}
        # per queue, tasks sent and not yet received, oldest first: uuid -> sent time
        self.pending: dict[str, OrderedDict[str, float]] = {}
        # the same for ETA/countdown tasks, uuid -> their ETA: out of sending order, so
        # kept apart (one at the head of `pending` would hide the age of those after it)
        self.pending_eta: dict[str, dict[str, float]] = {}

        self.sent: dict[Key, int] = {}
        self.received: dict[Key, int] = {}
        self.started: dict[Key, int] = {}
        self.succeeded: dict[Key, int] = {}
        self.failed: dict[Key, int] = {}  # key + (exception,)
        self.failed_after_retries: dict[Key, int] = {}
        self.retried: dict[Key, int] = {}
        self.rejected: dict[Key, int] = {}  # key + (requeue,)
        self.revoked: dict[Key, int] = {}
        self.expired: dict[Key, int] = {}
        self.redelivered: dict[Key, int] = {}
        self.unstamped: dict[tuple[str], int] = {}  # per queue: received without a stamp
        self.last_success: dict[Key, float] = {}
        self.runtime = Histograms(runtime_buckets)
        self.queue_wait = Histograms(wait_buckets)
        self.prefetch_wait = Histograms(wait_buckets)

        # tasks received that no task-sent announced; per SENT_WINDOW, the gauge
        self.unannounced = 0
        self.sent_events_missing = 0
        self._window: tuple[float, int] | None = None  # (ends at, unannounced at its start)
        self.evictions = {"capacity": 0, "age": 0}
        self.unknown_uuid: dict[str, int] = {}
        self.skipped: dict[str, int] = {}  # whole events, by reason
        self.observations_skipped: dict[tuple[str, str], int] = {}

    # -- helpers -------------------------------------------------------------

    @property
    def label_names(self) -> tuple[str, ...]:
        base = ("name", "queue_name")
        return (*base, "hostname") if self.hostname_label else base

    def _key(self, task: Task, event: Event) -> Key:
        if self.hostname_label:
            return (*task.key, self.hostnames(event.get("hostname")))
        return task.key

    def _uuid(self, event: Event) -> str | None:
        """The event's task uuid; an event without one is a counted skip."""
        uuid = event.get("uuid")
        if type(uuid) is str:
            return uuid
        self._skip("missing_uuid")
        return None

    def _live(self, uuid: str, event_type: str, now: float) -> Task:
        """The unfinished task with this uuid, tracked from now on if it was unknown."""
        task = self.tasks.get(uuid)
        if task is None:
            task = self._track(uuid, self._unknown(event_type, now))
        return task

    def _skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def skip_observation(self, metric: str, reason: str) -> None:
        key = (metric, reason)
        self.observations_skipped[key] = self.observations_skipped.get(key, 0) + 1

    def _track(self, uuid: str, task: Task) -> Task:
        if len(self.tasks) >= self.max_tasks:
            evicted, oldest = self.tasks.popitem(last=False)
            self._release(evicted, oldest)
            self.evictions["capacity"] += 1
        self.tasks[uuid] = task
        return task

    def _new(self, name: str, now: float) -> Task:
        """A task record; its queue is the one task-sent showed for that name, else the default."""
        return Task(name, self.queue_by_name.get(name, self.default_queue), now)

    def _unknown(self, event_type: str, now: float) -> Task:
        """A task first seen mid-life (exporter started late, or task-sent/received lost)."""
        self.unknown_uuid[event_type] = self.unknown_uuid.get(event_type, 0) + 1
        return self._new(self.names(UNKNOWN), now)

    def _release(self, uuid: str, task: Task) -> None:
        """The task no longer waits anywhere: not in its queue, not in a worker's prefetch."""
        if task.reserved_on is not None:
            self._unreserve(task)
        if task.pending:
            self._unpend(uuid, task)

    def _unpend(self, uuid: str, task: Task) -> None:
        if task.pending:
            task.pending = False
            queue = self.pending.get(task.queue)
            if queue is not None:
                queue.pop(uuid, None)
            later = self.pending_eta.get(task.queue)
            if later is not None:
                later.pop(uuid, None)

    def _unreserve(self, task: Task) -> None:
        host = task.reserved_on
        if host is not None:
            task.reserved_on = None
            self.reserved_by_host[host] = self.reserved_by_host.get(host, 1) - 1

    def _finish(self, uuid: str, task: Task) -> None:
        finished = self._finished
        finished[uuid] = task.key
        if len(finished) > self.max_tasks:
            finished.popitem(last=False)

    def _terminal(self, event: Event, event_type: str, now: float) -> Task | None:
        """The task a terminal event ends, or None for a duplicate or a bad event."""
        uuid = self._uuid(event)
        if uuid is None:
            return None
        task = self.tasks.pop(uuid, None)
        if task is None:
            if uuid in self._finished:
                self._skip("duplicate_terminal")
                return None
            task = self._unknown(event_type, now)
        else:
            self._release(uuid, task)
        self._finish(uuid, task)
        return task

    # -- event handlers (one per Celery task event type) -----------------------

    def on_sent(self, event: Event, now: float) -> None:
        uuid = self._uuid(event)
        if uuid is None:
            return
        name = self.names(event.get("name"))
        queue_field = event.get("queue")
        queue = self.queues(queue_field) if queue_field else self.default_queue
        if name != OTHER:
            self.queue_by_name[name] = queue
        task = self.tasks.get(uuid)
        if task is None and uuid in self._finished:
            # Its end came first (a worker that discards an unregistered task can report
            # task-failed before the client's task-sent arrives): count the send, but a
            # finished task waits in no queue and must never enter the pending map.
            late = Task(name, queue, now)
            key = self._key(late, event)
            self.sent[key] = self.sent.get(key, 0) + 1
            return
        if task is None:
            task = self._track(uuid, Task(name, queue, now))
        else:
            self._unpend(uuid, task)  # before the queue may change
            task.relabel(name, queue)
        retries = _retries(event)
        queued_at = number(event.get("timestamp"))
        eta = event.get("eta")  # None unless countdown/eta: most tasks
        deferred = False
        if eta is not None and queued_at is not None:
            runnable_at = _eta_timestamp(eta)
            if runnable_at is not None:
                deferred = runnable_at > queued_at
                queued_at = max(queued_at, runnable_at)
            else:  # not an ISO 8601 time of this or the next millennia
                self.skip_observation("eta", "bad_value")
        if task.received and retries > task.retries:
            # The retry's task-sent (published at once by the pool process) can arrive
            # before the running attempt's task-started: keep it for the next attempt.
            task.next_queued = (retries, queued_at)
        else:
            task.queued_at, task.queued_retries = queued_at, retries
        if queued_at is not None and not (task.received and retries <= task.retries):
            task.pending = True
            if deferred:
                self.pending_eta.setdefault(queue, {})[uuid] = queued_at
            else:
                waiting = self.pending.get(queue)
                if waiting is None:
                    waiting = self.pending[queue] = OrderedDict()
                waiting[uuid] = queued_at
        key = self._key(task, event)
        self.sent[key] = self.sent.get(key, 0) + 1

    def on_received(self, event: Event, now: float) -> None:
        uuid = self._uuid(event)
        if uuid is None:
            return
        retries = _retries(event)
        task = self.tasks.get(uuid)
        redelivered = False
        if task is None:
            task = self._track(uuid, self._new(self.names(event.get("name")), now))
            if uuid in self._finished:
                # already finished once: the broker handed out a copy again
                del self._finished[uuid]
                redelivered = True
            else:
                self.unannounced += 1
        else:
            redelivered = task.received and task.retries == retries
            self._release(uuid, task)
        # The agent knows what the event stream cannot: the queue the message was
        # delivered from, and whether the broker flagged it as a redelivery.
        queue_field = event.get("queue")
        if type(queue_field) is str and queue_field:
            queue = self.queues(queue_field)
            if queue != task.queue:
                task.relabel(task.name, queue)
        if event.get("redelivered") is True:
            redelivered = True
        upcoming = task.next_queued
        if upcoming is not None and upcoming[0] == retries:
            task.queued_retries, task.queued_at = upcoming
            task.next_queued = None
        if "published" in event:  # the agent's: the message's publication stamp, or None
            self._stamped(task, event, retries)
        host = self.hostnames(event.get("hostname"))
        task.received = True
        task.retries = retries
        task.received_at = number(event.get("timestamp"))
        task.hostname = host
        task.reserved_on = host
        self.reserved_by_host[host] = self.reserved_by_host.get(host, 0) + 1
        key = self._key(task, event)
        self.received[key] = self.received.get(key, 0) + 1
        if redelivered:
            self.redelivered[key] = self.redelivered.get(key, 0) + 1

    def _stamped(self, task: Task, event: Event, retries: int) -> None:
        """The agent's task-received carries the publication stamp of the message (the
        agent's publishers write it; no task-sent exists in the agent setup): this
        attempt became runnable then, or at its ETA if later. None: a publisher without
        the agent, counted per queue."""
        published = event.get("published")
        if published is None:
            key = (task.queue,)
            self.unstamped[key] = self.unstamped.get(key, 0) + 1
            return
        queued_at = number(published)
        if queued_at is None or bad_timestamp(queued_at):
            self.skip_observation("celery_task_queue_wait_seconds", "bad_value")
            return
        eta = event.get("eta")  # None unless countdown/eta: most tasks
        if eta is not None:
            runnable_at = _eta_timestamp(eta)
            if runnable_at is not None:
                queued_at = max(queued_at, runnable_at)
            else:
                self.skip_observation("eta", "bad_value")
        task.queued_at, task.queued_retries = queued_at, retries

    def on_started(self, event: Event, now: float) -> None:
        uuid = self._uuid(event)
        if uuid is None:
            return
        task = self._live(uuid, "task-started", now)
        self._release(uuid, task)
        key = self._key(task, event)
        self.started[key] = self.started.get(key, 0) + 1
        started_at = number(event.get("timestamp"))
        if started_at is None:
            return  # no end to measure the waits to
        # A wait needs its start event seen; a negative one is clock skew between hosts.
        # Only the send of this very attempt says how long it queued.
        queued_at = task.queued_at
        if queued_at is not None and task.queued_retries == task.retries:
            wait = started_at - queued_at
            if wait >= 0:
                self.queue_wait.observe(key, wait)
            else:
                self.skip_observation("celery_task_queue_wait_seconds", "negative_duration")
        received_at = task.received_at
        if received_at is not None:
            wait = started_at - received_at
            if wait >= 0:
                self.prefetch_wait.observe(key, wait)
            else:
                self.skip_observation("celery_task_prefetch_wait_seconds", "negative_duration")

    def on_succeeded(self, event: Event, now: float) -> None:
        task = self._terminal(event, "task-succeeded", now)
        if task is None:
            return
        key = self._key(task, event)
        self.succeeded[key] = self.succeeded.get(key, 0) + 1
        self.last_success[key] = number(event.get("timestamp")) or now
        runtime = number(event.get("runtime"))
        if runtime is None or runtime < 0:
            self.skip_observation("celery_task_runtime_seconds", "bad_runtime")
        else:
            self.runtime.observe(key, runtime)

    def on_failed(self, event: Event, now: float) -> None:
        exception = event.get("exception")
        unregistered = not_registered_name(exception)
        if unregistered is not None:
            self._fail_unregistered(event, unregistered, now)
            return
        task = self._terminal(event, "task-failed", now)
        if task is None:
            return
        key = self._key(task, event)
        if task.retries > 0:  # retried before, failed for good: on its way to a DLQ
            self.failed_after_retries[key] = self.failed_after_retries.get(key, 0) + 1
        key = (*key, self.exceptions(exception_class(exception, event.get("traceback"))))
        self.failed[key] = self.failed.get(key, 0) + 1

    def _fail_unregistered(self, event: Event, name: str, now: float) -> None:
        """NotRegistered: the worker sends task-failed and nothing before it."""
        uuid = self._uuid(event)
        if uuid is None:
            return
        if uuid in self._finished:
            self._skip("duplicate_terminal")
            return
        task = self.tasks.pop(uuid, None)
        if task is None:
            task = self._new(self.names(name), now)
            queue = event.get("queue")  # only the agent knows it
            if type(queue) is str and queue:
                task.relabel(task.name, self.queues(queue))
        else:
            self._release(uuid, task)
        self._finish(uuid, task)
        key = (*self._key(task, event), self.exceptions("NotRegistered"))
        self.failed[key] = self.failed.get(key, 0) + 1

    def on_retried(self, event: Event, now: float) -> None:
        uuid = self._uuid(event)
        if uuid is None:
            return
        # The retry's new message can be received and finished before the worker
        # reports task-retried for the first attempt: look among finished tasks too.
        task = self.tasks.get(uuid)
        if task is None:
            finished = self._finished.get(uuid)
            if finished is not None:
                task = Task(*finished, now)
            else:
                task = self._track(uuid, self._unknown("task-retried", now))
        key = self._key(task, event)
        self.retried[key] = self.retried.get(key, 0) + 1

    def on_rejected(self, event: Event, now: float) -> None:
        requeue = event.get("requeue") is True
        uuid = self._uuid(event)
        if uuid is None:
            return
        finished = None if requeue else self._finished.get(uuid)
        if requeue:  # the message goes back to the queue: the task lives on
            task = self._live(uuid, "task-rejected", now)
            self._release(uuid, task)
        elif finished is not None:
            # Reject(requeue=False) raised by a task: Celery 5.7 reports task-failed
            # (exception Reject), then task-rejected: the message went to the
            # dead-letter route, a fact of its own, counted although the task ended.
            task = Task(*finished, now)
        else:
            ended = self._terminal(event, "task-rejected", now)
            if ended is None:
                return
            task = ended
        key = (*self._key(task, event), "true" if requeue else "false")
        self.rejected[key] = self.rejected.get(key, 0) + 1

    def on_revoked(self, event: Event, now: float) -> None:
        task = self._terminal(event, "task-revoked", now)
        if task is None:
            return
        key = self._key(task, event)
        self.revoked[key] = self.revoked.get(key, 0) + 1
        if event.get("expired") is True:
            self.expired[key] = self.expired.get(key, 0) + 1

    # -- housekeeping ------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Drop unfinished tasks older than max_age (oldest first, insertion order), and
        close the task-sent window when it is over."""
        self._close_sent_window(now)
        cutoff = now - self.max_age
        tasks = self.tasks
        while tasks:
            uuid, task = next(iter(tasks.items()))
            if task.seen_at > cutoff:
                break
            del tasks[uuid]
            self._release(uuid, task)
            self.evictions["age"] += 1

    def _close_sent_window(self, now: float) -> None:
        if self._window is None:
            self._window = (now + SENT_WINDOW, self.unannounced)
        elif now >= self._window[0]:
            self.sent_events_missing = int(self.unannounced > self._window[1])
            self._window = (now + SENT_WINDOW, self.unannounced)

    def release_host(self, host: str) -> None:
        """A worker went away: what it had prefetched goes back to the broker."""
        if not self.reserved_by_host.get(host):
            return
        for task in list(self.tasks.values()):
            if task.reserved_on == host:
                task.reserved_on = None
        self.reserved_by_host[host] = 0

    def oldest_pending(self) -> dict[str, float]:
        """Per queue, since when its oldest task still waiting to be received has waited:
        its sending, or for an ETA/countdown task its ETA (a future one: no wait yet).

        Plain tasks are kept in sending order (the first is the oldest, O(1)); ETA
        tasks apart, their earliest ETA found by a scan of only those."""
        oldest: dict[str, float] = {}
        for queue, waiting in list(self.pending.items()):
            try:
                oldest[queue] = next(iter(waiting.values()))
            except (StopIteration, RuntimeError):  # empty, or changed under our feet
                continue
        for queue, later in list(self.pending_eta.items()):
            try:
                earliest = min(later.values(), default=None)
            except RuntimeError:  # changed under our feet: the next scrape has it
                continue
            if earliest is not None:
                oldest[queue] = min(oldest.get(queue, earliest), earliest)
        return oldest

    def forget_host(self, host: str) -> None:
        self.reserved_by_host.pop(host, None)
