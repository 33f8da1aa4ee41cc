"""The Celery app of benchmarks/worker_overhead.py: one no-op task that counts itself.

BROKER_URL names the broker; OVERHEAD_AGENT=1 installs the celery-vitals agent
(on CELERY_VITALS_AGENT_LISTEN_ADDRESS). Each run of the task increments one
Redis counter, OVERHEAD_COUNTER, so the benchmark knows when the queue is done
without events; every mode pays that same INCR.
"""

from __future__ import annotations

import os

import redis
from celery import Celery

app = Celery("overhead", broker=os.environ["BROKER_URL"])
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=4,  # Celery's default
)
_counter = redis.Redis.from_url(os.environ["BROKER_URL"])
COUNTER = os.environ.get("OVERHEAD_COUNTER", "overhead:done")

if os.environ.get("OVERHEAD_AGENT") == "1":
    from celery_vitals import agent

    agent.install(app)


@app.task(name="overhead.noop")
def noop() -> None:
    _counter.incr(COUNTER)
