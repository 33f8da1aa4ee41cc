"""A worker's app for tests/alerts/test_beat_alerts.py: the task celery beat sends every
second (tests/support/beat_app.py's ``beat.tick``) fails on every run here, as a periodic
task broken since its deploy does. The broker comes from CELERY_BROKER_URL."""

from __future__ import annotations

import os

from celery import Celery

import celery_vitals.agent

app = Celery("beat", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    worker_send_task_events=False,
    task_send_sent_event=False,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    timezone="UTC",
)
celery_vitals.agent.install(app)


class ReportUnavailable(Exception):
    """What the broken periodic task raises on every run."""


@app.task(name="beat.tick")
def tick() -> None:
    """beat_app's every-second task, broken."""
    raise ReportUnavailable("the upstream report service is gone")
