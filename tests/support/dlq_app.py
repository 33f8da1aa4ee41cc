"""A Celery app on RabbitMQ whose task queue dead-letters into a DLQ.

Queue ``work`` is declared with ``x-dead-letter-exchange=dlx`` and
``x-dead-letter-routing-key=work.dead``; the direct exchange ``dlx`` routes
that key to queue ``work.dead``. ``dlq.reject`` raises
``Reject(requeue=False)`` with acks_late, so the worker rejects the message
and RabbitMQ dead-letters it: the path a poisoned task takes in production.

Run the worker with ``-Q work`` (it must not consume its own DLQ); it
declares ``work.dead`` when it is ready, as an operator's setup would have.
Broker from CELERY_BROKER_URL.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals
from celery.exceptions import Reject
from kombu import Exchange, Queue

DEAD_LETTER_EXCHANGE = Exchange("dlx", type="direct", durable=True)
DEAD_LETTER_QUEUE = Queue("work.dead", DEAD_LETTER_EXCHANGE, routing_key="work.dead")
WORK_QUEUE = Queue(
    "work",
    Exchange("work", type="direct", durable=True),
    routing_key="work",
    queue_arguments={"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "work.dead"},
)

app = Celery("dlq", broker=os.environ.get("CELERY_BROKER_URL", "amqp://127.0.0.1:5672//"))
app.conf.update(
    task_queues=[WORK_QUEUE, DEAD_LETTER_QUEUE],
    task_default_queue="work",
    task_default_exchange="work",
    task_default_routing_key="work",
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    worker_send_task_events=True,
    task_send_sent_event=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="dlq.reject")
def reject(reason: str = "poisoned") -> None:
    """Refuses its message for good: RabbitMQ dead-letters it into work.dead."""
    raise Reject(reason, requeue=False)


@signals.worker_ready.connect
def declare_dead_letter_queue(**_: Any) -> None:
    """The worker consumes only ``work``; the DLQ must exist before anything is rejected."""
    with app.connection_for_write() as connection:
        DEAD_LETTER_QUEUE(connection.default_channel).declare()
