"""The demo app plus the incidents the alert tests need: dead letters and a lost worker.

``alerts.hopeless`` retries until its retries are exhausted and then, as many
Redis deployments do by hand (Redis has no dead-lettering), publishes the
failed message to the dead-letter queue ``dead``; ``alerts.refuse`` fails at once, without
retrying, and is dead-lettered the same way. ``alerts.crash`` kills its
own pool process, as the OOM killer would: Celery reports WorkerLostError.
``alerts.storm`` retries forever: a retry storm; ``alerts.storm_bounded`` retries fifty
times a second apart (``autoretry_for``), a storm too, bounded (``hopeless`` and the demo's
``flaky`` retry a few times, which is none). For benchmarks/time_to_page.py:
``alerts.charge`` fails when its caller says so (one task name whose failure share
the caller chooses), ``alerts.hang`` blocks its pool process, ``alerts.backoff``
retries a few times with exponential backoff before it succeeds, ``alerts.slow``
sleeps without a time limit (the demo's ``demo.slow`` has a 1 s hard limit) and
``alerts.leak`` makes its pool process grow at a steady rate.
With DEMO_AGENT=1 in a worker's environment the demo app runs the celery-vitals
agent and sends no task events: the same tasks serve the agent setup.
The worker declares ``dead`` (bound, empty) when it is ready, so the exporter
sees the queue before the first dead letter and counts it as ingress.
Broker from CELERY_BROKER_URL.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from celery import Task, signals
from demo.app import app
from kombu import Exchange, Queue

DEAD_LETTER_QUEUE = Queue("dead", Exchange("dead", type="direct"), routing_key="dead")


class DeadLettering(Task):  # type: ignore[misc]  # celery is untyped
    """A task whose final failure publishes its message to the dead-letter queue."""

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        with self.app.producer_or_acquire() as producer:
            producer.publish(
                {
                    "task": self.name,
                    "id": task_id,
                    "args": args,
                    "kwargs": kwargs,
                    "exception": type(exc).__name__,
                },
                exchange=DEAD_LETTER_QUEUE.exchange,
                routing_key="dead",
                declare=[DEAD_LETTER_QUEUE],
                serializer="json",
                retry=True,
            )


@app.task(
    name="alerts.hopeless", base=DeadLettering, bind=True, max_retries=2, default_retry_delay=0
)
def hopeless(self: Task) -> None:
    """Retries twice, then fails with TimeoutError and is dead-lettered."""
    raise self.retry(exc=TimeoutError("dependency never answers"), countdown=0)


@app.task(name="alerts.refuse", base=DeadLettering)
def refuse() -> None:
    """Fails at once, without retrying (a message it cannot use), and is dead-lettered:
    dead letters that no exhausted retries explain."""
    raise ValueError("malformed order")


@app.task(name="alerts.storm", bind=True, max_retries=None)
def storm(self: Task) -> None:
    """Retries forever (no max_retries) against a dependency that never answers: the
    retries compound and the task never finishes, a retry storm."""
    raise self.retry(exc=ConnectionError("dependency down"), countdown=0.5)


STORM_MAX_RETRIES = 50


@app.task(
    name="alerts.storm_bounded",
    autoretry_for=(ConnectionError,),
    max_retries=STORM_MAX_RETRIES,
    default_retry_delay=1,
)
def storm_bounded() -> None:
    """Fails against a dependency that never answers; ``autoretry_for`` retries it 50 times,
    1 s apart, then it fails for good: 51 runs per new task, a storm although bounded."""
    raise ConnectionError("dependency down")


@app.task(name="alerts.charge")
def charge(fail: bool = False) -> str:
    """Succeeds, or fails with ValueError when ``fail``: the caller sets the failure share."""
    if fail:
        raise ValueError("card declined")
    return "charged"


@app.task(name="alerts.hang")
def hang(seconds: float) -> None:
    """Blocks its pool process (no time limit) while the main process keeps heartbeating."""
    time.sleep(seconds)


@app.task(name="alerts.slow")
def slow(seconds: float) -> None:
    """Runs ``seconds`` (no time limit): slow work that keeps a pool process busy."""
    time.sleep(seconds)


LEAKED: list[bytes] = []  # what alerts.leak keeps: the pool process' memory grows
MIB = 1024 * 1024


@app.task(name="alerts.leak")
def leak(mib_per_minute: float, seconds: float) -> int:
    """Keeps ``mib_per_minute`` / 60 more MiB a second, for ``seconds``, in its pool
    process (written, so resident), and never frees it: a leak in one child.
    Returns the MiB kept."""
    chunk = max(int(mib_per_minute * MIB / 60), 1)
    start = time.monotonic()
    for second in range(int(seconds)):
        LEAKED.append(b"\x01" * chunk)
        time.sleep(max(start + second + 1 - time.monotonic(), 0))
    return len(LEAKED) * chunk // MIB


@app.task(name="alerts.backoff", bind=True, max_retries=3, retry_backoff=True)
def backoff(self: Task, failures: int) -> str:
    """Fails ``failures`` times, retrying after 1 s, 2 s, 4 s ... each time, then succeeds."""
    if self.request.retries < failures:
        raise self.retry(exc=ConnectionError("dependency busy"), countdown=2**self.request.retries)
    return "ok"


@app.task(name="alerts.crash")
def crash() -> None:
    """SIGKILLs its pool process: the task fails with WorkerLostError."""
    os.kill(os.getpid(), signal.SIGKILL)


@signals.worker_ready.connect
def declare_dead_letter_queue(**_: Any) -> None:
    with app.connection_for_write() as connection:
        DEAD_LETTER_QUEUE(connection.default_channel).declare()


__all__ = ["app"]
