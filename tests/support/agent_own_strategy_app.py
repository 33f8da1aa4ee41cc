"""tests/support/agent_app.py plus one task with a ``Task.Strategy`` of its own, as
libraries such as celery-batches have: its requests are Celery's ``Request``, not
built by celery.worker.strategy.create_request_cls, so the agent's tap misses their
lifecycle (their task-received comes from the task_received signal all the same).
The agent's start check must say so: celery_vitals_agent_feature_up{feature="tap"} 0.
"""

from __future__ import annotations

from typing import Any

from celery import signals
from celery.worker.request import Request
from celery.worker.state import task_reserved

from tests.support.agent_app import app


def own_strategy(task: Any, app: Any, consumer: Any, **_: Any) -> Any:
    """Protocol 2 messages only (what the tests send), no ETA, no rate limit."""
    hostname, eventer = consumer.hostname, consumer.event_dispatcher
    connection_errors, handle = consumer.connection_errors, consumer.on_task_request

    def task_message_handler(message: Any, body: Any, ack: Any, reject: Any, *_: Any) -> None:
        request = Request(
            message,
            on_ack=ack,
            on_reject=reject,
            app=app,
            hostname=hostname,
            eventer=eventer,
            task=task,
            connection_errors=connection_errors,
            body=message.body,
            headers=message.headers,
            decoded=False,
            utc=app.uses_utc_timezone(),
        )
        signals.task_received.send(sender=consumer, request=request)
        task_reserved(request)
        handle(request)

    return task_message_handler


@app.task(name="agent.own_strategy", Strategy=f"{__name__}:own_strategy")
def own() -> str:
    return "done"
