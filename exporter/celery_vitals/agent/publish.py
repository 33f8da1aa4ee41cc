"""The publish stamp: every task an app with the agent publishes carries its publication
time (celery_vitals.stamp).

``install(app)`` stamps what that app publishes, in every process that imports it: a web
server, a script, ``celery beat``, and the worker itself (a retry, a subtask: a retry's
wait counts from its republication, so a republished message is stamped again, whatever
stamp it carried).

Every publish of a Celery app (``send_task``, so ``apply_async``, ``retry``, beat's
sends and canvas alike) goes through the one function its ``app.amqp`` builds once,
``send_task_message(producer, name, message, ...)`` (celery/app/amqp.py,
``AMQP._create_task_sender``, 5.3 to 5.7), whose ``message`` is Celery's
``task_message(headers, properties, body, sent_event)``: the very ``headers`` and
``properties`` dicts it then hands to ``producer.publish(headers=headers,
**properties)``. The agent wraps that function, per app:

- the header ``stamp.HEADER``: ``time.time()``, a float (every transport);
- on RabbitMQ also the AMQP ``timestamp`` property, whole seconds (an int: py-amqp
  packs it as an unsigned 64-bit integer, a float or a datetime fails the publish),
  which the management API reports as ``head_message_timestamp``.

Why not the ``before_task_publish`` signal, which carries the same two dicts: Celery's
dispatch of a signal to a receiver costs 1.9-3.6 us a publish by itself
(docs/benchmarks.md), the wrapper 0.4-0.5 us in all.

How the wrapper gets there depends on how far the app got when ``install(app)`` runs
(``app.amqp`` and its ``send_task_message`` are cached properties, built at first use):
before ``app.amqp`` exists, the app's ``amqp_cls`` becomes a StampingAMQP, which builds
the app's AMQP (Celery's, or the app's own class) and hooks it; once it exists, the
instance is hooked: its ``_create_task_sender`` wraps what Celery builds; once the sender
exists, the sender itself is wrapped. Either way the sender is built by Celery from the
app's configuration as it is at first publish, and the app's classes stay what they
were (an app pickles its ``amqp_cls``: a StampingAMQP pickles too).

No thread, no server, no state beyond each app's "RabbitMQ?" decision (made at its first
publish, when its configuration is complete) and a count of failures: a stamp that
cannot be written is skipped (logged once), and the publish goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery_vitals.brokers import for_url
from celery_vitals.stamp import HEADER

log = logging.getLogger(__name__)

#: set on what the agent built: a sender it wrapped, an AMQP class it derived
MARK = "_celery_vitals_stamps"

Sender = Callable[..., Any]


class Stamper:
    """Wraps apps' task senders so that each publish carries its publication time."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.failures = 0  # stamps not written; the first is logged

    def install(self, app: Any) -> None:
        """Stamps every task ``app`` publishes from now on (idempotent)."""
        amqp = app.__dict__.get("amqp")  # Celery's cached property: built at first use
        if amqp is not None:
            self.hook(amqp)
        elif not isinstance(app.amqp_cls, StampingAMQP):
            app.amqp_cls = StampingAMQP(app.amqp_cls, self)

    def hook(self, amqp: Any) -> None:
        """Makes an app's AMQP build (or, built already, use) a stamping task sender."""
        sender = amqp.__dict__.get("send_task_message")
        if sender is not None:  # built already: wrap it where it is cached
            if not getattr(sender, MARK, False):
                amqp.__dict__["send_task_message"] = self.wrap(sender, amqp.app)
            return
        if getattr(amqp.__dict__.get("_create_task_sender"), MARK, False):
            return
        create = amqp._create_task_sender  # Celery's, bound to this instance

        def _create_task_sender() -> Sender:
            return self.wrap(create(), amqp.app)

        setattr(_create_task_sender, MARK, True)
        amqp._create_task_sender = _create_task_sender  # the instance's, before the class's

    def wrap(self, send: Sender, app: Any) -> Sender:
        """``send`` (an app's ``send_task_message``), stamping each message first."""
        clock = self.clock
        timestamp_property: list[bool] = []  # decided at the first publish

        def send_task_message(
            producer: Any, name: str, message: Any, *args: Any, **kwargs: Any
        ) -> Any:
            try:
                now = clock()
                message[0][HEADER] = now  # task_message.headers
                if not timestamp_property:
                    timestamp_property.append(self.decide(app))
                if timestamp_property[0]:
                    message[1]["timestamp"] = int(now)  # task_message.properties
            except Exception:
                self.failed()
            return send(producer, name, message, *args, **kwargs)

        setattr(send_task_message, MARK, True)
        send_task_message.__wrapped__ = send  # type: ignore[attr-defined]
        return send_task_message

    def decide(self, app: Any) -> bool:
        """Whether the app's broker takes the AMQP timestamp property (RabbitMQ); a URL
        that names no broker the agent knows: no (the header still goes)."""
        try:
            return for_url(_write_url(app)).stamps_timestamp_property
        except Exception:
            self.failed()
            return False

    def failed(self) -> None:
        self.failures += 1
        if self.failures == 1:
            log.warning(
                "celery-vitals: could not stamp a published task with its publication "
                "time (the task is published unstamped; this is logged once)",
                exc_info=True,
            )


def _write_url(app: Any) -> str:
    """The URL the app publishes to (Celery's default when it sets none)."""
    url = app.conf.broker_write_url or app.conf.broker_url or "amqp://guest@localhost:5672//"
    if isinstance(url, (list, tuple)):  # a failover list
        url = url[0] if url else ""
    return str(url).split(";", 1)[0]


class StampingAMQP:
    """An app's ``amqp_cls`` while ``app.amqp`` is not built yet: builds the AMQP the app
    had (a class, or Celery's ``module:Class`` string) and hooks it. A plain object of
    this module, so an app that pickles its ``amqp_cls`` (Celery's ``__reduce__``) still
    pickles."""

    def __init__(self, base: Any, stamper: Stamper) -> None:
        self.base = base
        self.stamper = stamper

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from celery.utils.imports import symbol_by_name

        amqp = symbol_by_name(self.base)(*args, **kwargs)
        try:
            self.stamper.hook(amqp)
        except Exception:  # the app publishes regardless, unstamped
            self.stamper.failed()
        return amqp
