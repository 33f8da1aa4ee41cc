"""Celery app for the agent tests: celery_vitals.agent.install(app), the one line users add.

Broker from CELERY_BROKER_URL; the agent's address from
CELERY_VITALS_AGENT_LISTEN_ADDRESS (the environment variable the agent reads
itself), so each test worker gets its own free port. Task events stay off:
the workers run without -E, and the agent must not need them.
"""

from __future__ import annotations

import os
import time

from celery import Celery
from celery.exceptions import Reject

import celery_vitals.agent

BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
app = Celery("agent", broker=BROKER_URL)
app.conf.update(
    worker_send_task_events=False,
    task_send_sent_event=False,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    # Redis hands an unacknowledged message out again after this long (the redelivery
    # test), looking for such messages every second (kombu scans every 10th look)
    broker_transport_options={
        "visibility_timeout": float(os.environ.get("AGENT_VISIBILITY_TIMEOUT", "3600")),
        "unacked_restore_interval": 1,
    },
)

if BROKER_URL.startswith("sqs://"):  # moto on loopback: short long-polls, moto's region
    app.conf.broker_transport_options.update(
        region="us-east-1", wait_time_seconds=1, polling_interval=0.1
    )

celery_vitals.agent.install(app)


@app.task(name="agent.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="agent.fail")
def fail() -> None:
    raise ValueError("agent test failure")


@app.task(name="agent.sleep")
def sleep(seconds: float) -> None:
    time.sleep(seconds)


@app.task(name="agent.wait_for_file")
def wait_for_file(path: str, timeout: float = 60.0) -> None:
    """Runs until ``path`` exists (the test's go-ahead), for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)


@app.task(name="agent.suicide")
def suicide() -> None:
    """SIGKILLs its own pool process, as the OOM killer would."""
    os.kill(os.getpid(), 9)


@app.task(name="agent.hold", bind=True, max_retries=1)
def retry_once(self: object) -> None:
    task = self
    if task.request.retries == 0:  # type: ignore[attr-defined]
        raise task.retry(countdown=0)  # type: ignore[attr-defined]


@app.task(name="agent.touch")
def touch(path: str) -> None:
    """Leaves a trace the test can see without a result backend."""
    with open(path, "w") as done:
        done.write("done\n")


@app.task(name="agent.late_sleep", acks_late=True)
def late_sleep(seconds: float) -> None:
    """Acknowledged when done: a worker lost meanwhile leaves it to the broker to redeliver."""
    time.sleep(seconds)


@app.task(name="agent.reject", acks_late=True)
def reject() -> None:
    """Rejected without requeue: SQS redelivers it until its redrive policy dead-letters it."""
    raise Reject("agent test rejection", requeue=False)


@app.task(name="agent.record_start")
def record_start(path: str) -> None:
    """Writes the time it started: the queue wait tests' own measure of its start."""
    started = time.time()
    with open(path, "w") as out:
        out.write(repr(started))
