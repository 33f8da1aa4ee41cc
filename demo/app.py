"""Demo Celery app: one task per behaviour celery-vitals must report.

Broker from CELERY_BROKER_URL. Events are on (worker -E and task-sent
events), as a production app should have them for celery-vitals.
"""

from __future__ import annotations

import os
import time

from celery import Celery, Task

app = Celery("demo", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    worker_send_task_events=True,
    task_send_sent_event=True,
    task_acks_late=False,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="demo.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="demo.fail")
def fail(message: str = "boom") -> None:
    raise ValueError(message)


@app.task(name="demo.flaky", bind=True, max_retries=5, default_retry_delay=0)
def flaky(self: Task, failures: int) -> str:
    """Fails `failures` times, retrying each time, then succeeds."""
    if self.request.retries < failures:
        raise self.retry(exc=ConnectionError("flaky dependency"), countdown=0)
    return "ok"


@app.task(name="demo.hopeless", bind=True, max_retries=2, default_retry_delay=0)
def hopeless(self: Task) -> None:
    """Retries until max_retries is exhausted, then fails with the last error."""
    raise self.retry(exc=TimeoutError("dependency never answers"), countdown=0)


@app.task(name="demo.slow", time_limit=1, soft_time_limit=None)
def slow(seconds: float) -> float:
    """Sleeps; past one second the hard time limit kills it (TimeLimitExceeded)."""
    time.sleep(seconds)
    return seconds
