"""Celery app for the queue-probe tests: late acks, prefetch 1, ten priority lists, ":" as sep.

Late acks keep a running task's message in kombu's unacked hash until it
finishes (what the visibility-timeout alert watches); the transport options
are the ones the probe must be given to find the same keys. Broker from
CELERY_BROKER_URL (the worker), or make_app(url) (the test's client).
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

VISIBILITY_TIMEOUT = 300
TRANSPORT_OPTIONS: dict[str, Any] = {
    "visibility_timeout": VISIBILITY_TIMEOUT,
    "priority_steps": list(range(10)),
    "sep": ":",
    "queue_order_strategy": "priority",
}


def make_app(broker_url: str) -> Celery:
    app = Celery("queues", broker=broker_url, set_as_current=False)
    app.conf.update(
        broker_transport_options=dict(TRANSPORT_OPTIONS),
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_send_sent_event=True,
        worker_send_task_events=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


app = make_app(os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"))


@app.task(name="queues.sleep")
def sleep(seconds: float) -> float:
    """Holds its (late-acked) message unacked for ``seconds``."""
    time.sleep(seconds)
    return seconds


@app.task(name="queues.noop")
def noop() -> None:
    return None
