"""Celery app for the beat agent tests: celery_vitals.agent.install(app) and a schedule.

``celery -A tests.support.beat_app beat`` runs its schedule (and serves it, the
agent's address from CELERY_VITALS_AGENT_LISTEN_ADDRESS); ``... worker`` runs
its tasks. The broker comes from CELERY_BROKER_URL. With BEAT_DJANGO=1 the
app configures Django first (tests/support/beat_django_settings.py, its SQLite
file from BEAT_DJANGO_DB), for django-celery-beat's DatabaseScheduler.
"""

from __future__ import annotations

import os
from datetime import timedelta

from celery import Celery
from celery.schedules import crontab

import celery_vitals.agent

if os.environ.get("BEAT_DJANGO") == "1":  # before any django_celery_beat import
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.support.beat_django_settings")
    import django

    django.setup()

BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
app = Celery("beat", broker=BROKER_URL)
app.conf.update(
    worker_send_task_events=False,
    task_send_sent_event=False,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    timezone="UTC",
    result_expires=None,  # no celery.backend_cleanup entry: the schedule is exactly ours
)

#: entry name -> (task, seconds between runs) of the interval entries
INTERVALS = {"every-second": ("beat.tick", 1.0), "hourly-report": ("beat.report", 3600.0)}
#: the crontab entry: every day at 04:30 UTC
NIGHTLY = ("nightly-cleanup", "beat.cleanup", crontab(minute="30", hour="4"))

if os.environ.get("BEAT_DJANGO") != "1":  # the database scheduler reads its own table
    app.conf.beat_schedule = {
        **{
            entry: {"task": task, "schedule": timedelta(seconds=every)}
            for entry, (task, every) in INTERVALS.items()
        },
        NIGHTLY[0]: {"task": NIGHTLY[1], "schedule": NIGHTLY[2]},
    }

celery_vitals.agent.install(app)


@app.task(name="beat.tick")
def tick() -> None:
    """What beat sends every second."""


@app.task(name="beat.report")
def report() -> None:
    """Hourly: not sent during a test."""


@app.task(name="beat.cleanup")
def cleanup() -> None:
    """Nightly: not sent during a test."""
