"""A Celery app whose tasks record every run, for the ``celery-vitals dlq replay`` tests.

``replay.record`` and ``replay.other`` add 1 to ``ran[<task id>]`` in the Redis
of ``RECORD_REDIS_URL`` (a hash, so a task that ran twice shows 2). While that
Redis' key ``mode`` is ``reject`` they raise ``Reject(requeue=False)`` instead:
on RabbitMQ the broker then dead-letters the message, as a poisoned task is in
production.

On RabbitMQ, queue ``work`` dead-letters into exchange ``dlx`` (routing key
``work.dead``, bound to queue ``work.dead``); ``work.ttl`` has no consumer and
a 50 ms message TTL into the same DLX, so what is published there expires into
``work.dead``; ``work.max`` holds one message and dead-letters the older ones
when more arrive (reason ``maxlen``). The worker runs with ``-Q work``;
declare() sets everything up. Broker from CELERY_BROKER_URL.
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery, Task
from celery.exceptions import Reject
from kombu import Exchange, Queue

DLX = Exchange("dlx", type="direct", durable=True)
DEAD = Queue("work.dead", DLX, routing_key="work.dead")
WORK = Queue(
    "work",
    Exchange("", type="direct"),
    routing_key="work",
    queue_arguments={"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "work.dead"},
)
TTL = Queue(
    "work.ttl",
    Exchange("", type="direct"),
    routing_key="work.ttl",
    queue_arguments={
        "x-dead-letter-exchange": "dlx",
        "x-dead-letter-routing-key": "work.dead",
        "x-message-ttl": 50,
    },
)
MAXLEN = Queue(
    "work.max",
    Exchange("", type="direct"),
    routing_key="work.max",
    queue_arguments={
        "x-dead-letter-exchange": "dlx",
        "x-dead-letter-routing-key": "work.dead",
        "x-max-length": 1,
    },
)

BROKER = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
app = Celery("replay", broker=BROKER)
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=4,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_default_queue="work",
)
if BROKER.startswith("amqp"):
    app.conf.task_queues = [WORK, TTL, MAXLEN, DEAD]

_record: redis.Redis | None = None


def record_store() -> redis.Redis:
    global _record  # noqa: PLW0603  # one client per pool process
    if _record is None:
        _record = redis.Redis.from_url(os.environ["RECORD_REDIS_URL"])
    return _record


def _run(task: Task) -> None:
    store = record_store()
    if store.get("mode") == b"reject":
        raise Reject("poisoned", requeue=False)
    store.hincrby("ran", task.request.id, 1)


@app.task(name="replay.record", bind=True)
def record(self: Task, *args: Any, **kwargs: Any) -> None:
    _run(self)


@app.task(name="replay.other", bind=True)
def other(self: Task, *args: Any, **kwargs: Any) -> None:
    _run(self)


def declare(connection: Any) -> None:
    channel = connection.default_channel
    for queue in (DEAD, WORK, TTL, MAXLEN):
        queue(channel).declare()
