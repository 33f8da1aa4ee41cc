"""The demo app with task events off: a worker as ``celery worker`` without ``-E`` runs it.

demo/app.py turns task events on in its configuration (as production apps
should), so leaving out ``-E`` alone would not reproduce the common
misconfiguration the exporter must detect and repair.
"""

from __future__ import annotations

from demo.app import app

app.conf.worker_send_task_events = False

__all__ = ["app"]
