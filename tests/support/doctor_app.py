"""Celery app for the doctor tests: DOCTOR_SETUP=wrong or right (the environment).

wrong: acks_late tasks with a 60 s time limit on Redis with visibility_timeout=30,
task_reject_on_worker_lost left unset, prefetch multiplier 4 (Celery's default), no child
recycling, and a task that retries forever (max_retries=None).
right: the same tasks with visibility_timeout=3600, task_reject_on_worker_lost=False set
explicitly, prefetch multiplier 1, children recycled after 100 tasks, every retry bounded.
"""

from __future__ import annotations

import os

from celery import Celery

WRONG = os.environ.get("DOCTOR_SETUP", "right") == "wrong"
TIME_LIMIT = 60
VISIBILITY_TIMEOUT = 30 if WRONG else 3600


def make_app(broker_url: str, *, sent_events: bool) -> Celery:
    """The app of a worker (and of a publisher, with or without task-sent events)."""
    app = Celery("doctor", broker=broker_url, set_as_current=False)
    app.conf.update(
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
        task_acks_late=True,
        task_time_limit=TIME_LIMIT,
        task_send_sent_event=sent_events,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    if not WRONG:
        app.conf.update(
            task_reject_on_worker_lost=False,
            worker_prefetch_multiplier=1,
            worker_max_tasks_per_child=100,
        )
    return app


app = make_app(
    os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"), sent_events=not WRONG
)


@app.task(name="doctor.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="doctor.flaky", max_retries=None if WRONG else 5)
def flaky() -> None:
    return None
