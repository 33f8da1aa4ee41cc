"""The publish stamp: every task a process with the agent publishes carries its
publication time (celery_vitals.stamp).

``install(app)`` connects ``before_task_publish`` in every process that imports the
app: a web server, a script, ``celery beat``, and the worker itself (a retry, a
subtask: a retry's wait counts from its republication, so a republished message is
stamped again, whatever stamp it carried). Celery sends the signal from
``send_task_message`` (celery/app/amqp.py, 5.3 to 5.7) with the very ``headers`` and
``properties`` dicts it then hands to ``producer.publish(headers=headers2,
**properties)``: what the receiver writes into them travels with the message.

- the header ``stamp.HEADER``: ``time.time()``, a float (every transport);
- on RabbitMQ also the AMQP ``timestamp`` property, whole seconds (an int: py-amqp
  packs it as an unsigned 64-bit integer, a float or a datetime fails the publish),
  which the management API reports as ``head_message_timestamp``.

No thread, no server, no state beyond a cache of which app is on RabbitMQ and a count
of failures: a stamp that cannot be written is skipped (logged once), and the publish
goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

from celery_vitals.brokers import for_url
from celery_vitals.stamp import HEADER

log = logging.getLogger(__name__)

#: The receiver's dispatch_uid: connected once per process, whatever install() is called for.
DISPATCH_UID = "celery-vitals-agent-publish-stamp"


class Stamper:
    """The ``before_task_publish`` receiver of a process's installed apps.

    It runs for every publish, so its path is short: the decision "RabbitMQ?" is kept for
    the last app it was made for.
    """

    def __init__(
        self,
        installed: Callable[[], Sequence[tuple[Any, Any]]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.installed = installed  # (app, anything) per install()
        self.clock = clock
        self.failures = 0  # stamps not written; the first is logged
        self._timestamp_property: dict[int, bool] = {}  # id(app) -> on RabbitMQ
        self._last: tuple[Any, bool] = (None, False)  # (app, on RabbitMQ), the last decided

    def __call__(
        self,
        headers: MutableMapping[str, Any] | None = None,
        properties: MutableMapping[str, Any] | None = None,
        **_: Any,
    ) -> None:
        try:
            now = self.clock()
            if headers is None:  # not Celery's send_task_message
                raise TypeError("before_task_publish sent without headers")
            headers[HEADER] = now
            if properties is not None and self.timestamp_property():
                properties["timestamp"] = int(now)
        except Exception:
            self.failures += 1
            if self.failures == 1:
                log.warning(
                    "celery-vitals: could not stamp a published task with its publication "
                    "time (the task is published unstamped; this is logged once)",
                    exc_info=True,
                )

    def timestamp_property(self) -> bool:
        """Whether the publishing app's broker takes the AMQP timestamp property.

        The signal does not name the app: the one installed app, else Celery's
        current app when it is installed (none: no guess, False); read once per app
        (its configuration is complete by its first publish)."""
        installed = self.installed()
        if len(installed) == 1:
            app = installed[0][0]
            last, decided = self._last
            if app is last:
                return decided
        else:
            from celery.app import app_or_default

            app = app_or_default()
            if not any(app is known for known, _ in installed):
                return False
        known = self._timestamp_property.get(id(app))
        if known is None:
            known = for_url(_write_url(app)).stamps_timestamp_property
        self.assume(app, known)
        return known

    def assume(self, app: Any, timestamp_property: bool) -> None:
        """Takes the decision for ``app`` as given (as its broker says; or a test's)."""
        self._timestamp_property[id(app)] = timestamp_property
        self._last = (app, timestamp_property)


def _write_url(app: Any) -> str:
    """The URL the app publishes to (Celery's default when it sets none)."""
    url = app.conf.broker_write_url or app.conf.broker_url or "amqp://guest@localhost:5672//"
    if isinstance(url, (list, tuple)):  # a failover list
        url = url[0] if url else ""
    return str(url).split(";", 1)[0]
