"""The tap: a worker's own task lifecycle as the event dicts the event stream delivers.

Under every pool (prefork, threads, solo) the worker's MAIN process handles a
task's lifecycle; only the execution runs in a pool child. The consumer's
strategy receives the message, the pool's callbacks report it accepted
(started) and finished (succeeded, failed, retried, WorkerLostError when a
child dies), and the request rejects or revokes it. Celery announces each step
through ``Request.send_event``, which publishes only when task events are on.
The tap sits in front of it, so it sees every step with or without ``-E``:

- task-received: the ``task_received`` signal (main process, whatever the event
  settings), with the message's delivery info: the exact queue, and whether the
  broker flagged a redelivery; and its publication stamp (``published``: the
  header ``stamp.HEADER`` a publisher with the agent wrote, None when it has none),
  from which the tracker measures the queue wait;
- task-started, -failed, -retried, -rejected, -revoked: ``Request.send_event``,
  called before Celery checks whether events are enabled;
- task-succeeded: ``Request.on_success``, because Celery skips ``send_event``
  there when the dispatcher was disabled when the worker started;
- task-failed with NotRegistered: the ``task_unknown`` signal (no request exists).

The request class is tapped by wrapping the function Celery's default
strategy builds it with (``celery.worker.strategy.create_request_cls``): the
class it returns gets a subclass that reports to the tap and then does exactly
what Celery does. Nothing the tap does can raise into Celery. At
``worker_ready`` the agent checks that the consumer's message handler of every
task builds its requests from a tapped class (``untapped_tasks``): the same
in Celery 5.3 to 5.7; a custom ``Task.Strategy`` may not.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from celery_vitals.logs import RateLimitedLogger
from celery_vitals.router import EventRouter
from celery_vitals.stamp import HEADER

rate_limited = RateLimitedLogger(logging.getLogger(__name__))

Event = dict[str, Any]
# fields of Request.send_event the trackers use (never the result: it can be large)
FORWARDED_FIELDS = (
    "exception",
    "traceback",
    "requeue",
    "terminated",
    "signum",
    "expired",
    "runtime",
)
MARK = "_celery_vitals_tapped"
TAPPED_CLASS = "_celery_vitals_tap_class"  # on the classes tapped_request_cls builds
DRAIN_INTERVAL = 0.25  # seconds between two drains by the agent's thread
MAX_QUEUED = 50_000  # events; beyond, the task's own thread drains (never unbounded)


def delivery_queue(delivery_info: Mapping[str, Any], consumer: Any) -> str | None:
    """The queue a task message was consumed from.

    RabbitMQ names the consumer (``consumer_tag``), and the worker's task
    consumer knows which queue each of its tags consumes: exact. Redis (and
    other virtual transports) give the exchange and routing key it was
    published with: the consumed queue of that name, else the one consumed
    queue bound by that exchange and routing key, else the routing key.
    """
    task_consumer = getattr(consumer, "task_consumer", None)
    tag = delivery_info.get("consumer_tag")
    if tag is not None:
        tags = getattr(task_consumer, "_active_tags", None)
        if isinstance(tags, Mapping):
            for queue, active in list(tags.items()):
                if active == tag and isinstance(queue, str):
                    return queue
    exchange, routing_key = delivery_info.get("exchange"), delivery_info.get("routing_key")
    queues = list(getattr(task_consumer, "queues", None) or ())
    if isinstance(routing_key, str) and routing_key in {q.name for q in queues}:
        return routing_key
    bound = [
        q.name
        for q in queues
        if getattr(getattr(q, "exchange", None), "name", None) == exchange
        and getattr(q, "routing_key", None) == routing_key
    ]
    if len(bound) == 1 and isinstance(bound[0], str):
        return bound[0]
    if isinstance(routing_key, str) and routing_key:
        return routing_key
    return None


def _iso(value: Any) -> str | None:
    try:
        return value.isoformat() if value is not None else None
    except AttributeError:
        return None


class Tap:
    """Turns request callbacks into events, queued for the router.

    Events arrive from the consumer's thread and, under the threads pool,
    from pool threads. Routing them where they arrive cost the worker about
    40 us per task (the router and trackers run cold between two tasks, at a
    quarter of the speed they reach in a loop), so the task's path only
    appends the event to a queue (deque appends and pops are thread-safe), and
    ``drain`` routes the queue in order, under the one lock that guards the
    trackers: from the agent's thread every DRAIN_INTERVAL, before every
    scrape, and inline should the queue ever reach MAX_QUEUED.
    """

    def __init__(
        self,
        router: EventRouter,
        hostname: str,
        lock: threading.Lock,
        consumer: Callable[[], Any] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.router = router
        self.hostname = hostname
        self.lock = lock
        self.consumer = consumer  # the worker's consumer, for requests without a signal
        self.clock = clock
        self.queued: deque[Event] = deque()
        self._queues: dict[tuple[Any, ...], str | None] = {}

    def feed(self, event: Event) -> None:
        self.queued.append(event)
        if len(self.queued) >= MAX_QUEUED:  # the agent's thread is not keeping up
            self.drain()

    def drain(self) -> int:
        """Routes every queued event, oldest first; returns how many."""
        queued, routed = self.queued, 0
        with self.lock:
            while queued:
                try:
                    event = queued.popleft()
                except IndexError:  # another thread drained it meanwhile
                    break
                routed += 1
                try:  # the event's time is the tap's clock, read when it was built
                    self.router.handle(event, event["timestamp"])
                except Exception:
                    rate_limited.warn_every(
                        "tap-feed",
                        "celery-vitals agent: could not record a %s event",
                        event.get("type"),
                        exc_info=True,
                    )
        return routed

    def received(self, request: Any, consumer: Any = None) -> None:
        """The task_received signal: the worker took the message (main process)."""
        try:
            event = self._received_event(request, consumer or self.consumer())
        except Exception:
            rate_limited.warn_every(
                "tap-received", "celery-vitals agent: could not read a received task", exc_info=True
            )
            return
        self.feed(event)

    def _received_event(self, request: Any, consumer: Any) -> Event:
        try:  # noqa: SIM105 - not contextlib.suppress: this runs for every task
            setattr(request, MARK, True)
        except AttributeError:  # __slots__: a custom strategy's class
            pass
        # the message's own delivery info (consumer tag, exchange, routing key,
        # redelivered); Celery's request keeps a copy of part of it
        delivery = getattr(getattr(request, "message", None), "delivery_info", None) or (
            getattr(request, "delivery_info", None) or {}
        )
        request_dict = getattr(request, "request_dict", None) or {}
        eta, expires = getattr(request, "eta", None), getattr(request, "expires", None)
        return {
            "type": "task-received",
            "uuid": request.id,
            "name": request.name,
            "hostname": self.hostname,
            "timestamp": self.clock(),
            "retries": request_dict.get("retries", 0),
            "eta": None if eta is None else _iso(eta),
            "expires": None if expires is None else _iso(expires),
            "queue": self._queue(delivery, consumer),
            "redelivered": delivery.get("redelivered") is True,
            "published": request_dict.get(HEADER),  # None: a publisher without the agent
        }

    def _queue(self, delivery: Mapping[str, Any], consumer: Any) -> str | None:
        """delivery_queue(), remembered per consumer tag, exchange and routing key until
        forget_queues() (the agent's heartbeat: a queue added or cancelled shows within
        seconds)."""
        key = (
            id(consumer),
            delivery.get("consumer_tag"),
            delivery.get("exchange"),
            delivery.get("routing_key"),
        )
        try:
            return self._queues[key]
        except KeyError:
            queue = self._queues[key] = delivery_queue(delivery, consumer)
            return queue
        except TypeError:  # an unhashable field: not worth remembering
            return delivery_queue(delivery, consumer)

    def forget_queues(self) -> None:
        self._queues = {}

    def unknown(self, consumer: Any, message: Any, name: object, uuid: object) -> None:
        """The task_unknown signal: a message for a task name this worker does not have.

        Celery sends task-failed with NotRegistered('name') and nothing before it; so
        does the tap, with the queue it came from.
        """
        try:
            delivery = getattr(message, "delivery_info", None) or {}
            event: Event = {
                "type": "task-failed",
                "uuid": uuid,
                "hostname": self.hostname,
                "timestamp": self.clock(),
                "exception": f"NotRegistered({name!r})",
                "queue": delivery_queue(delivery, consumer),
            }
        except Exception:
            rate_limited.warn_every(
                "tap-unknown", "celery-vitals agent: could not read an unknown task", exc_info=True
            )
            return
        self.feed(event)

    def request_event(self, request: Any, event_type: str, fields: Mapping[str, Any]) -> None:
        """Request.send_event: started, failed, retried, rejected, revoked (and cancelled)."""
        try:
            if not getattr(request, MARK, False):
                # revoked or expired on arrival: Celery revokes it before task_received
                self.received(request)
            event: Event = {
                "type": event_type,
                "uuid": request.id,
                "hostname": self.hostname,
                "timestamp": self.clock(),
            }
            if fields:  # none for task-started
                for key in FORWARDED_FIELDS:
                    if key in fields:
                        event[key] = fields[key]
        except Exception:
            rate_limited.warn_every(
                "tap-event",
                "celery-vitals agent: could not read a %s event",
                event_type,
                exc_info=True,
            )
            return
        self.feed(event)

    def succeeded(self, request: Any, outcome: Any) -> bool:
        """Request.on_success; True when it reported a success (not a failure in disguise)."""
        try:
            failed, _, runtime = outcome
            if failed:
                return False  # Celery goes on to on_failure, which sends task-failed
            event: Event = {
                "type": "task-succeeded",
                "uuid": request.id,
                "hostname": self.hostname,
                "timestamp": self.clock(),
                "runtime": runtime,
            }
        except Exception:
            rate_limited.warn_every(
                "tap-success", "celery-vitals agent: could not read a success", exc_info=True
            )
            return False
        self.feed(event)
        return True


class Running(Protocol):
    """What a tapped request reads: the running agent's pid, state and tap."""

    pid: int
    running: bool
    tap: Tap


class Holder(Protocol):
    agent: Any  # a Running agent, or None


def tappable(cls: object) -> bool:
    """Whether ``cls`` has the shape of the request class Celery's create_request_cls
    builds: the methods the tapped subclass overrides."""
    return (
        isinstance(cls, type)
        and callable(getattr(cls, "send_event", None))
        and callable(getattr(cls, "on_success", None))
    )


def untapped_tasks(consumer: Any) -> str | None:
    """Why the tap misses tasks of this consumer, or None when every task's message
    handler builds its requests from a tapped class.

    Celery's default strategy (5.3 to 5.7) returns a closure over the class
    create_request_cls built (its ``Req``); a handler holding no tapped class
    builds its requests some other way (a custom ``Task.Strategy``)."""
    strategies = getattr(consumer, "strategies", None)
    if not isinstance(strategies, Mapping) or not strategies:
        return "the consumer has no task strategies (consumer.strategies) to check"
    untapped = sorted(
        str(name) for name, handler in list(strategies.items()) if not _builds_tapped(handler)
    )
    if not untapped:
        return None
    shown = ", ".join(untapped[:5])
    if len(untapped) > 5:
        shown += f" and {len(untapped) - 5} more"
    return (
        f"the message handlers of {shown} do not build their requests with "
        "celery.worker.strategy.create_request_cls (a custom Task.Strategy?): only the "
        "task-received of those tasks is seen"
    )


def _builds_tapped(handler: object) -> bool:
    for cell in getattr(handler, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if isinstance(value, type) and getattr(value, TAPPED_CLASS, False):
            return True
    return False


def tapped_request_cls(cls: type, holder: Holder) -> type:
    """A subclass of Celery's request class that reports to the tap of ``holder.agent``
    while that agent runs in this very process (nothing in pool children, nothing once
    it stopped). The check is inline: these methods run for every task."""
    getpid = os.getpid

    class TappedRequest(cls):  # type: ignore[misc]
        def send_event(self, type: str, **fields: Any) -> Any:  # Celery's names
            agent: Running | None = holder.agent
            if (
                agent is not None
                and agent.running
                and agent.pid == getpid()
                and not (
                    type == "task-succeeded" and getattr(self, "_celery_vitals_succeeded", False)
                )
            ):
                agent.tap.request_event(self, type, fields)
            return super().send_event(type, **fields)

        def on_success(self, failed__retval__runtime: Any, **kwargs: Any) -> Any:
            agent: Running | None = holder.agent
            if (
                agent is not None
                and agent.running
                and agent.pid == getpid()
                and agent.tap.succeeded(self, failed__retval__runtime)
            ):
                self._celery_vitals_succeeded = True  # Celery may send task-succeeded too
            return super().on_success(failed__retval__runtime, **kwargs)

    setattr(TappedRequest, TAPPED_CLASS, True)
    TappedRequest.__name__ = cls.__name__
    TappedRequest.__qualname__ = cls.__qualname__
    TappedRequest.__module__ = cls.__module__
    return TappedRequest
