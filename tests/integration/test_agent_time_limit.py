"""A child the pool ends for its hard time limit is told apart from one killed from outside.

Both die by a signal: billiard's TimeoutHandler ends the process running a task past its
hard time limit with SIGTERM (SIGKILL 0.1 s later), the OOM killer sends SIGKILL. The
agent counts the first as ``celery_worker_pool_process_exits_total{reason="time_limit"}``
(the task: TimeLimitExceeded) and the second as ``reason="killed"`` (the task:
WorkerLostError), so CeleryWorkerPoolProcessKilled pages only the second. A real
redis-server and rabbitmq-server, a real prefork worker of tests/support/agent_app.py
without -E, its agent scraped directly; exact counts, polled until a deadline. The
other Celery minors: tests/integration/test_agent_celery_versions.py.
"""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import pytest

from tests.support.harness import Harness
from tests.support.metrics import Scrape

pytestmark = pytest.mark.integration

EXITS = "celery_worker_pool_process_exits_total"
FAILED = "celery_task_failed_total"
WAIT = "agent.wait_for_file"


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def test_time_limit_exits_are_not_kills_from_outside(
    harness: Harness, broker_url: str, tmp_path: Path
) -> None:
    jobs = f"jobs-{uuid.uuid4().hex[:8]}"  # unique: the RabbitMQ node is the module's
    worker = harness.agent_worker("agent", broker_url, pool="prefork", concurrency=2, queues=jobs)
    host = worker.hostname
    client = harness.client(broker_url)

    def exits(s: Scrape) -> dict[str, float]:
        return {dict(labels)["reason"]: value for labels, value in s.series(EXITS).items()}

    # both children busy; one is SIGKILLed from outside, as the OOM killer does
    gate = tmp_path / "gate"
    for _ in range(2):
        client.send_task(WAIT, args=(str(gate),), queue=jobs)
    worker.wait_for(
        lambda s: (
            s.value("celery_worker_pool_busy_processes", hostname=host) == 2
            and len(children(worker.pid)) == 2
        ),
        what="both pool processes busy",
    )
    os.kill(children(worker.pid)[0], signal.SIGKILL)
    s = worker.wait_for(
        lambda s: (
            s.value(FAILED, name=WAIT, queue_name=jobs, exception="WorkerLostError") == 1
            and s.value(EXITS, hostname=host, reason="killed") == 1
        ),
        timeout=45,
        what="one WorkerLostError and one killed pool process",
    )
    assert exits(s) == {"recycled": 0, "time_limit": 0, "terminated": 0, "killed": 1, "failed": 0}
    gate.touch()

    # two runs past their hard time limit at once: the pool ends both children
    for _ in range(2):
        client.send_task("agent.sleep", args=(60,), queue=jobs, time_limit=2)

    def ended(scrape: Scrape) -> bool:
        nonlocal s
        s = scrape
        return (
            s.value(FAILED, name="agent.sleep", queue_name=jobs, exception="TimeLimitExceeded") == 2
            and s.value(EXITS, hostname=host, reason="time_limit") == 2
            and s.value("celery_task_succeeded_total", name=WAIT, queue_name=jobs) == 1
        )

    worker.wait_for(ended, timeout=45, what="two TimeLimitExceeded and two time_limit exits")
    assert exits(s) == {"recycled": 0, "time_limit": 2, "terminated": 0, "killed": 1, "failed": 0}

    # the replacements run tasks; every exit was counted once, by its own reason
    client.send_task("agent.add", args=(1, 2), queue=jobs)
    s = worker.wait_for(
        lambda s: (
            s.value("celery_task_succeeded_total", name="agent.add", queue_name=jobs) == 1
            and s.value("celery_worker_pool_processes", hostname=host) == 2
            and s.value("celery_worker_pool_busy_processes", hostname=host) == 0
            and len(children(worker.pid)) == 2
        ),
        timeout=30,
        what="a task on the replaced pool, two pool processes, none busy",
    )
    assert exits(s) == {"recycled": 0, "time_limit": 2, "terminated": 0, "killed": 1, "failed": 0}
    assert s.series(FAILED) == {
        frozenset({("name", WAIT), ("queue_name", jobs), ("exception", "WorkerLostError")}): 1,
        frozenset(
            {("name", "agent.sleep"), ("queue_name", jobs), ("exception", "TimeLimitExceeded")}
        ): 2,
    }
    assert s.get("celery_task_started_total", name="agent.sleep", queue_name=jobs) == 2
    assert s.value("celery_task_succeeded_total", name="agent.sleep", queue_name=jobs) == 0
    assert s.series("celery_vitals_agent_feature_up")[frozenset({("feature", "exits")})] == 1
    log = worker.output()
    assert log.count("Hard time limit (2") == 2  # Celery's Request.on_timeout, once per run

    # revoke(terminate=True), by SIGTERM and by SIGKILL: asked for, not an outside killer
    for signame in ("SIGTERM", "SIGKILL"):
        before = len(children(worker.pid))
        task = client.send_task(WAIT, args=(str(tmp_path / f"never-{signame}"),), queue=jobs)
        worker.wait_for(
            lambda s: s.value("celery_worker_pool_busy_processes", hostname=host) == 1,
            what=f"the task to terminate by {signame} running",
        )
        client.control.revoke(task.id, terminate=True, signal=signame)
        worker.wait_for(
            lambda s, signame=signame, before=before: (
                s.value(EXITS, hostname=host, reason="terminated")
                == ("SIGTERM", "SIGKILL").index(signame) + 1
                and s.value("celery_worker_pool_processes", hostname=host) == before
            ),
            timeout=30,
            what=f"a terminated exit after revoke(terminate=True, signal={signame})",
        )
    s = worker.scrape()
    assert exits(s) == {"recycled": 0, "time_limit": 2, "terminated": 2, "killed": 1, "failed": 0}
    assert "celery-vitals agent: could not" not in worker.output()
