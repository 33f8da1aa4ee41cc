"""Django settings for django-celery-beat's DatabaseScheduler in the beat agent tests: one
SQLite file (BEAT_DJANGO_DB, in the test's tmp_path), django_celery_beat's tables only."""

from __future__ import annotations

import os

SECRET_KEY = "celery-vitals-beat-tests"  # a test database's, nothing to protect
INSTALLED_APPS = ["django_celery_beat"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("BEAT_DJANGO_DB", ":memory:"),
    }
}
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
