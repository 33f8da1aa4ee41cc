"""EventRouter: one broker message body in, tracker updates out.

Workers batch task events, so a body is either one event (a dict) or a list
of them. Every event is counted by type; anything unusable is a counted,
logged skip. A handler that raises is caught here: one poisonous event must
not stop the stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery_vitals.logs import RateLimitedLogger
from celery_vitals.tasks import MAX_TIMESTAMP, Event, TaskTracker, bad_timestamp, number
from celery_vitals.workers import WorkerTracker

# Task events a worker sends about its own work (task-sent comes from clients).
WORKER_TASK_EVENTS = frozenset(
    {
        "task-received",
        "task-started",
        "task-succeeded",
        "task-failed",
        "task-retried",
        "task-rejected",
        "task-revoked",
    }
)
OTHER_TYPE = "other"

rate_limited = RateLimitedLogger(logging.getLogger(__name__))


class EventRouter:
    def __init__(
        self, tasks: TaskTracker, workers: WorkerTracker, clock: Callable[[], float] = time.time
    ) -> None:
        self.tasks = tasks
        self.workers = workers
        self.clock = clock
        self.handlers: dict[str, Callable[[Event, float], Any]] = {
            "task-sent": tasks.on_sent,
            "task-received": tasks.on_received,
            "task-started": tasks.on_started,
            "task-succeeded": tasks.on_succeeded,
            "task-failed": tasks.on_failed,
            "task-retried": tasks.on_retried,
            "task-rejected": tasks.on_rejected,
            "task-revoked": tasks.on_revoked,
            "worker-online": workers.on_online,
            "worker-heartbeat": workers.on_heartbeat,
            "worker-offline": self._on_worker_offline,
        }
        self.events_by_type: dict[str, int] = dict.fromkeys((*self.handlers, OTHER_TYPE), 0)
        self.skipped: dict[str, int] = {}
        self.lag: float | None = None

    def handle(self, body: object, now: float | None = None) -> None:
        """Route one message body (an event or a list of events)."""
        if now is None:
            now = self.clock()
        if type(body) is dict:
            events: list[Any] | tuple[Any, ...] = (body,)
        elif type(body) is list:
            events = body
        else:
            self.skip(
                "malformed_body",
                "message body is %s, not an event or a list of events",
                type(body).__name__,
            )
            return
        handlers = self.handlers
        counts = self.events_by_type
        worker_task_events = 0
        last = None
        for event in events:
            try:
                event_type = event.get("type")
                handler = handlers.get(event_type)
            except (AttributeError, TypeError):  # not a mapping, or an unhashable type field
                handler = None
            if handler is None:
                self._unhandled(event)
                continue
            # a handler was found: the event is a dict with a string type (its key)
            stamp = event.get("timestamp")  # a plausible float, nearly always: checked inline
            if not (type(stamp) is float and 0.0 <= stamp <= MAX_TIMESTAMP) and bad_timestamp(
                stamp
            ):
                # the event counts; what its time would have fed is not observed
                event["timestamp"] = None
                self.tasks.skip_observation("timestamp", "bad_value")
            counts[event_type] += 1
            if event_type in WORKER_TASK_EVENTS:
                worker_task_events += 1
            try:
                handler(event, now)
            except Exception:
                self.skip(
                    "handler_error", "could not process a %s event", event_type, exc_info=True
                )
            last = event
        if last is not None:
            sent_at = number(last.get("timestamp"))
            if sent_at is not None:
                self.lag = now - sent_at
            if worker_task_events:
                self.workers.on_task_events(last.get("hostname"), worker_task_events)

    def _unhandled(self, event: object) -> None:
        """An event no handler takes: malformed, without a string type, or of another type."""
        if type(event) is not dict:
            self.skip("malformed_event", "event is %s, not a mapping", type(event).__name__)
        elif type(event.get("type")) is not str:
            self.skip("missing_type", "event without a string type field")
        else:
            self.events_by_type[OTHER_TYPE] += 1

    def count_skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def skip(self, reason: str, message: str, *args: object, exc_info: bool = False) -> None:
        self.count_skip(reason)
        rate_limited.warn_every(reason, "skipped: " + message, *args, exc_info=exc_info)

    def _on_worker_offline(self, event: Event, now: float) -> None:
        host = self.workers.on_offline(event, now)
        self.tasks.release_host(host)

    def tick(self, now: float | None = None) -> None:
        """Housekeeping, about once a second from the stream thread: age-out and purge."""
        if now is None:
            now = self.clock()
        self.tasks.sweep(now)
        for host in self.workers.purge(now):
            self.tasks.forget_host(host)
