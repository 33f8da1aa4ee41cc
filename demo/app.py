"""Demo Celery app: one task per behaviour celery-vitals must report.

Broker from CELERY_BROKER_URL. Events are on (worker -E and task-sent
events), as an app monitored by the exporter alone has them; with DEMO_AGENT=1
the celery-vitals agent runs in each worker instead.
"""

from __future__ import annotations

import os
import signal
import time

from celery import Celery, Task, signals
from celery.exceptions import Reject
from kombu import Exchange, Queue

# DEMO_AGENT=1 (the compose stack): the celery-vitals agent inside each worker owns the
# task metrics, and task events stay off.
AGENT = os.environ.get("DEMO_AGENT") == "1"

app = Celery("demo", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    worker_send_task_events=not AGENT,
    task_send_sent_event=True,
    task_acks_late=False,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


# A dead-letter route (RabbitMQ), on when DEMO_DEAD_LETTER=1 (the compose stack): tasks
# routed to demo.jobs that a worker rejects without requeue land in demo.jobs.dead.
# Workers then consume `-Q celery,demo.jobs`; nothing consumes the dead-letter queue.
DEAD_LETTER = os.environ.get("DEMO_DEAD_LETTER") == "1"
DEAD_LETTER_QUEUE = Queue(
    "demo.jobs.dead", Exchange("demo.dlx", type="direct"), routing_key="demo.jobs.dead"
)


def use_dead_letter_route(celery_app: Celery) -> None:
    """Queues and routes of the dead-letter demo, for workers and clients alike."""
    celery_app.conf.task_queues = (
        Queue("celery"),
        Queue(
            "demo.jobs",
            queue_arguments={
                "x-dead-letter-exchange": "demo.dlx",
                "x-dead-letter-routing-key": "demo.jobs.dead",
            },
        ),
    )
    celery_app.conf.task_routes = {"demo.poison": {"queue": "demo.jobs"}}


if DEAD_LETTER:
    use_dead_letter_route(app)

if AGENT:
    import celery_vitals.agent

    celery_vitals.agent.install(app)


@signals.worker_ready.connect
def declare_dead_letter_queue(**_: object) -> None:
    """The dead-letter queue must exist before the first message is dead-lettered."""
    if DEAD_LETTER:
        with app.connection_for_write() as connection:
            DEAD_LETTER_QUEUE(connection.default_channel).declare()


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


@app.task(name="demo.poison", acks_late=True)
def poison() -> None:
    """A message no worker can handle: rejected without requeue, so dead-lettered."""
    raise Reject("poison message", requeue=False)


@app.task(name="demo.slow", time_limit=1, soft_time_limit=None)
def slow(seconds: float) -> float:
    """Sleeps; past one second the hard time limit kills it (TimeLimitExceeded)."""
    time.sleep(seconds)
    return seconds


# -- the tasks of the demo's timeline (demo/timeline.py) ----------------------------


class CardDeclined(ValueError):
    """The payment provider said no."""


@app.task(name="demo.charge")
def charge(declined: bool = False) -> str:
    """A payment: fails with CardDeclined when the provider declines the card."""
    if declined:
        raise CardDeclined("card declined")
    return "charged"


@app.task(name="demo.sync", bind=True, max_retries=None)
def sync(self: Task, until: float = 0.0) -> str:
    """Syncs with a dependency that is down until ``until`` (a Unix time): till then it
    retries every 5 s without limit (max_retries=None), as a retry storm does."""
    if time.time() < until:
        raise self.retry(exc=ConnectionError("dependency down"), countdown=5)
    return "synced"


@app.task(name="demo.report")
def report() -> str:
    """A report the timeline routes to a queue no worker consumes (no-consumers)."""
    return "report"


@app.task(name="demo.resize")
def resize() -> None:
    """Runs out of memory: SIGKILLs its own pool process as the OOM killer would
    (the task fails with WorkerLostError, the pool starts a new process)."""
    os.kill(os.getpid(), signal.SIGKILL)
