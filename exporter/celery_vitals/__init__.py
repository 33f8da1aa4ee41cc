"""celery-vitals: a Prometheus exporter for Celery.

The flow, one module per step::

    broker --events--> stream.EventStream --> router.EventRouter
        --> tasks.TaskTracker / workers.WorkerTracker  (plain data)
        --> collectors (metric families built at scrape time)
        --> http (/metrics, /healthz, /readyz)

``catalogue`` names every metric once; docs, dashboards and alerts are
checked against it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("celery-vitals")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

#: Set in a worker's app config while the celery-vitals agent runs in it (its listen
#: address): `celery inspect conf`, and so `celery-vitals doctor`, can tell.
AGENT_CONF_KEY = "celery_vitals_agent"
