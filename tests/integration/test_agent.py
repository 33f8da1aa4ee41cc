"""The agent inside real `celery worker` processes, started WITHOUT -E.

Every worker runs tests/support/agent_app.py, which calls
celery_vitals.agent.install(app); each gets its own free port through
CELERY_VITALS_AGENT_LISTEN_ADDRESS and is scraped directly (no exporter, no
task events). Redis and RabbitMQ, pools prefork (with child recycling),
threads, solo and gevent. Queue names are unique per test: the RabbitMQ node is
shared by the module.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from stack.net import LOOPBACK, free_port, http_get, port_open, wait_until
from stack.processes import REPO_ROOT, ManagedProcess, venv_executable
from tests.support.harness import Harness
from tests.support.metrics import Scrape

pytestmark = pytest.mark.integration

APP = "tests.support.agent_app"
POOL_ARGS = {"prefork": ["--max-tasks-per-child=2"], "threads": [], "solo": [], "gevent": []}


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:8]


def vmrss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


@pytest.mark.parametrize("pool", list(POOL_ARGS))
def test_exact_counts_per_task_and_delivery_queue(
    harness: Harness, broker_url: str, pool: str, uid: str
) -> None:
    """Two queues, one worker, no task events: every task under its real queue."""
    two_queue_workload(harness, broker_url, pool, uid, POOL_ARGS[pool])


@pytest.mark.parametrize(
    "args",
    [
        ["-E"],  # Celery sends task-succeeded itself too: still counted once
        # the event dispatcher itself disabled: Celery's on_success skips send_event
        ["--without-heartbeat", "--without-gossip", "--without-mingle"],
    ],
    ids=["task-events-on", "dispatcher-disabled"],
)
def test_event_settings_change_nothing(harness: Harness, uid: str, args: list[str]) -> None:
    two_queue_workload(harness, harness.redis().url(), "prefork", uid, args)


def two_queue_workload(
    harness: Harness, broker_url: str, pool: str, uid: str, extra_args: list[str]
) -> None:
    alpha, beta = f"alpha-{uid}", f"beta-{uid}"
    concurrency = 1 if pool == "solo" else 2
    worker = harness.agent_worker(
        "agent",
        broker_url,
        pool=pool,
        concurrency=concurrency,
        queues=f"{alpha},{beta}",
        extra_args=extra_args,
    )
    host = worker.hostname
    client = harness.client(broker_url)
    for _ in range(3):
        client.send_task("agent.add", args=(1, 2), queue=alpha)
    for _ in range(2):
        client.send_task("agent.add", args=(2, 3), queue=beta)
    client.send_task("agent.fail", queue=beta)
    client.send_task("agent.renamed", queue=alpha)  # a name this worker does not have

    def done(s: Scrape) -> bool:
        return (
            s.value("celery_task_succeeded_total", name="agent.add", queue_name=alpha) == 3
            and s.value("celery_task_succeeded_total", name="agent.add", queue_name=beta) == 2
            and s.value(
                "celery_task_failed_total",
                name="agent.fail",
                queue_name=beta,
                exception="ValueError",
            )
            == 1
            and s.value(
                "celery_task_failed_total",
                name="agent.renamed",
                queue_name=alpha,
                exception="NotRegistered",
            )
            == 1
            and s.value("celery_worker_tasks_processed", hostname=host) == 6
            and s.value("celery_worker_tasks_active", hostname=host) == 0
        )

    s = worker.wait_for(done, timeout=45, what="6 tasks counted by the agent")
    for metric in ("celery_task_received_total", "celery_task_started_total"):
        assert s.series(metric) == {
            frozenset({("name", "agent.add"), ("queue_name", alpha)}): 3,
            frozenset({("name", "agent.add"), ("queue_name", beta)}): 2,
            frozenset({("name", "agent.fail"), ("queue_name", beta)}): 1,
        }, metric
    assert len(s.series("celery_task_succeeded_total")) == 2
    assert s.series("celery_task_failed_total") == {
        frozenset({("name", "agent.fail"), ("queue_name", beta), ("exception", "ValueError")}): 1,
        frozenset(
            {("name", "agent.renamed"), ("queue_name", alpha), ("exception", "NotRegistered")}
        ): 1,
    }
    assert s.series("celery_task_redelivered_total") == {}
    assert s.series("celery_vitals_unknown_uuid_events_total") == {}
    assert s.get("celery_task_runtime_seconds_count", name="agent.add", queue_name=alpha) == 3
    assert s.get("celery_worker_up", hostname=host) == 1
    assert s.get("celery_worker_starts_total", hostname=host) == 1
    assert s.get("celery_worker_tasks_reserved", hostname=host) == 0
    assert s.get("celery_worker_task_events_missing", hostname=host) == 0
    assert s.get("celery_worker_pool_processes", hostname=host) == concurrency
    assert s.get("celery_worker_prefetch_limit", hostname=host) == concurrency  # multiplier 1
    assert s.get("celery_worker_eta_tasks", hostname=host) == 0
    assert s.get("celery_vitals_agent_info", hostname=host, pool=pool) == 1
    assert s.get("celery_vitals_event_stream_up") is None  # the agent has no event stream
    # prefork recycles its children after 2 tasks: a slot is empty until its replacement runs
    slots = {"main", "0", "1"} if pool == "prefork" else {"main"}
    worker.wait_for(
        lambda s: (
            s.get("celery_worker_pool_busy_processes", hostname=host) == 0
            and {
                dict(labels)["process"]
                for labels in s.series("celery_worker_process_resident_memory_bytes")
            }
            == slots
        ),
        what=f"no busy pool process and the memory of {sorted(slots)}",
    )
    assert s.series("celery_vitals_events_skipped_total") == {}  # no duplicate counted
    events = "ON" if "-E" in extra_args else "OFF"  # the agent needs none
    assert f"task events: {events}" in worker.output()


@pytest.mark.parametrize("broker_url", ["redis", "rabbitmq"], indirect=True)
def test_killed_child_is_a_worker_lost_failure_and_a_killed_exit(
    harness: Harness, broker_url: str, uid: str
) -> None:
    jobs = f"jobs-{uid}"
    worker = harness.agent_worker("agent", broker_url, pool="prefork", concurrency=2, queues=jobs)
    host = worker.hostname
    client = harness.client(broker_url)
    client.send_task("agent.suicide", queue=jobs)
    client.send_task("agent.add", args=(1, 1), queue=jobs)

    s = worker.wait_for(
        lambda s: (
            s.value(
                "celery_task_failed_total",
                name="agent.suicide",
                queue_name=jobs,
                exception="WorkerLostError",
            )
            == 1
            and s.value("celery_worker_pool_process_exits_total", hostname=host, reason="killed")
            == 1
            and s.value("celery_task_succeeded_total", name="agent.add", queue_name=jobs) == 1
        ),
        timeout=45,
        what="WorkerLostError failure and one killed pool process",
    )
    assert s.get("celery_task_started_total", name="agent.suicide", queue_name=jobs) == 1
    assert s.value("celery_task_succeeded_total", name="agent.suicide", queue_name=jobs) == 0
    assert s.get("celery_worker_pool_process_exits_total", hostname=host, reason="failed") == 0
    assert s.get("celery_worker_pool_process_exits_total", hostname=host, reason="recycled") == 0
    # the replacement takes the dead child's slot: still slots 0 and 1 only
    s = worker.wait_for(
        lambda s: (
            {
                dict(labels)["process"]
                for labels in s.series("celery_worker_process_resident_memory_bytes")
            }
            == {"main", "0", "1"}
        ),
        what="memory series of slots 0 and 1 after the replacement",
    )
    assert s.get("celery_worker_pool_processes", hostname=host) == 2


def test_recycled_children_are_counted(harness: Harness, uid: str) -> None:
    redis = harness.redis()
    jobs = f"jobs-{uid}"
    worker = harness.agent_worker(
        "agent",
        redis.url(),
        pool="prefork",
        concurrency=1,
        queues=jobs,
        extra_args=["--max-tasks-per-child=2"],
    )
    host = worker.hostname
    client = harness.client(redis.url())
    for i in range(5):
        client.send_task("agent.add", args=(i, i), queue=jobs)
    # the child exits after tasks 2 and 4; the one that ran task 5 lives on
    s = worker.wait_for(
        lambda s: (
            s.value("celery_task_succeeded_total", name="agent.add", queue_name=jobs) == 5
            and s.value("celery_worker_pool_process_exits_total", hostname=host, reason="recycled")
            == 2
        ),
        timeout=45,
        what="5 tasks and 2 recycled pool processes",
    )
    assert s.get("celery_worker_pool_process_exits_total", hostname=host, reason="killed") == 0
    assert s.get("celery_worker_pool_process_exits_total", hostname=host, reason="failed") == 0
    s = worker.wait_for(
        lambda s: (
            {
                dict(labels)["process"]
                for labels in s.series("celery_worker_process_resident_memory_bytes")
            }
            == {"main", "0"}
        ),
        what="the third child in slot 0",
    )
    assert s.value("celery_worker_pool_process_exits_total", hostname=host, reason="recycled") == 2


def test_resident_memory_matches_proc_status(harness: Harness, uid: str) -> None:
    redis = harness.redis()
    worker = harness.agent_worker(
        "agent", redis.url(), pool="prefork", concurrency=2, queues=f"jobs-{uid}"
    )
    host = worker.hostname

    def sampled(s: Scrape) -> bool:
        processes = {
            dict(labels)["process"]
            for labels in s.series("celery_worker_process_resident_memory_bytes")
        }
        return processes == {"main", "0", "1"} and len(children(worker.pid)) == 2

    worker.wait_for(sampled, what="memory of main and slots 0, 1")
    settled = time.time()  # compare with a sample the agent took after this moment
    s = worker.wait_for(
        lambda s: (
            s.value("celery_worker_last_heartbeat_timestamp_seconds", hostname=host) > settled
        ),
        what="a pool sample after the children settled",
    )
    real_children = sorted(vmrss(pid) for pid in children(worker.pid))
    main_rss = vmrss(worker.pid)
    reported = {
        dict(labels)["process"]: value
        for labels, value in s.series("celery_worker_process_resident_memory_bytes").items()
    }
    assert abs(reported["main"] - main_rss) <= 0.1 * main_rss, (reported, main_rss)
    for value, real in zip(sorted([reported["0"], reported["1"]]), real_children, strict=True):
        assert abs(value - real) <= 0.1 * real, (reported, real_children)
    assert all(
        labels >= frozenset({("hostname", host)})
        for labels in s.series("celery_worker_process_resident_memory_bytes")
    )


def test_server_answers_while_every_child_is_busy(
    harness: Harness, uid: str, tmp_path: Path
) -> None:
    """/metrics and /healthz answer from the main process while both children run tasks
    that finish only when the test says so: each answer shows them still busy."""
    redis = harness.redis()
    jobs = f"jobs-{uid}"
    worker = harness.agent_worker("agent", redis.url(), pool="prefork", concurrency=2, queues=jobs)
    host = worker.hostname
    client = harness.client(redis.url())
    go = tmp_path / "go"
    for _ in range(2):
        client.send_task("agent.wait_for_file", args=(str(go),), queue=jobs)
    task = {"name": "agent.wait_for_file", "queue_name": jobs}
    s = worker.wait_for(
        lambda s: (
            s.value("celery_worker_pool_busy_processes", hostname=host) == 2
            and s.value("celery_task_started_total", **task) == 2
        ),
        timeout=30,
        what="both pool processes busy",
    )
    busy_since = time.monotonic()  # both started before this moment
    assert s.get("celery_worker_pool_processes", hostname=host) == 2
    assert s.get("celery_worker_tasks_active", hostname=host) == 2
    for _ in range(10):
        s = worker.scrape()  # the server would answer only after the tasks if it waited on them
        assert s.get("celery_worker_pool_busy_processes", hostname=host) == 2
        assert s.value("celery_task_succeeded_total", **task) == 0
        assert http_get(worker.port, "/healthz").status == 200
    released = time.monotonic()
    go.touch()
    s = worker.wait_for(
        lambda s: s.value("celery_task_succeeded_total", **task) == 2,
        timeout=30,
        what="both tasks finished once released",
    )
    assert s.get("celery_task_runtime_seconds_count", **task) == 2
    # each ran from before busy_since until after released (one monotonic clock per host)
    assert s.value("celery_task_runtime_seconds_sum", **task) >= 2 * (released - busy_since)


def test_eta_tasks_held_in_memory(harness: Harness, uid: str) -> None:
    redis = harness.redis()
    jobs = f"jobs-{uid}"
    worker = harness.agent_worker("agent", redis.url(), pool="threads", concurrency=2, queues=jobs)
    host = worker.hostname
    client = harness.client(redis.url())
    for _ in range(3):
        client.send_task("agent.add", args=(1, 1), queue=jobs, countdown=600)
    s = worker.wait_for(
        lambda s: s.value("celery_worker_eta_tasks", hostname=host) == 3,
        what="3 ETA tasks held by the worker",
    )
    assert s.get("celery_task_received_total", name="agent.add", queue_name=jobs) == 3
    assert s.get("celery_worker_tasks_reserved", hostname=host) == 3
    assert s.get("celery_worker_prefetch_limit", hostname=host) == 2 + 3  # raised per ETA task


def test_occupied_port_leaves_the_worker_running_tasks(
    harness: Harness, uid: str, tmp_path: Path
) -> None:
    import socket

    redis = harness.redis()
    jobs = f"jobs-{uid}"
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = harness.agent_worker(
            "agent",
            redis.url(),
            port=port,
            pool="prefork",
            concurrency=1,
            queues=jobs,
            wait_listening=False,
        )
        wait_until(
            lambda: "celery-vitals agent not started" in worker.output(),
            timeout=30,
            what="the agent's warning",
            details=worker.tail,
        )
        trace = tmp_path / "touched"
        harness.client(redis.url()).send_task("agent.touch", args=(str(trace),), queue=jobs)
        wait_until(trace.exists, timeout=30, what="the task to run", details=worker.tail)
    worker.assert_running()
    line = next(
        line for line in worker.output().splitlines() if "celery-vitals agent not started" in line
    )
    assert line.endswith(
        "the worker runs without its /metrics: cannot listen on "
        f"{LOOPBACK}:{port}: [Errno 98] Address already in use"
    )
    assert "WARNING/MainProcess" in line  # in the worker's log, in its format


def test_processes_that_are_not_workers_serve_nothing(harness: Harness) -> None:
    redis = harness.redis()
    worker = harness.agent_worker("agent", redis.url(), pool="solo", concurrency=1)
    wait_until(
        lambda: f"{worker.hostname} ready." in worker.output(),
        timeout=30,
        what=f"{worker.hostname} ready",
        details=worker.tail,
    )
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("CELERY_VITALS_")}
    env.update(
        CELERY_BROKER_URL=redis.url(),
        PYTHONPATH=str(REPO_ROOT),
        CELERY_VITALS_AGENT_LISTEN_ADDRESS=f"{LOOPBACK}:{port}",
    )
    inspect = ManagedProcess(
        "celery inspect ping",
        [
            venv_executable("celery"),
            "-A",
            APP,
            "inspect",
            "ping",
            "-d",
            worker.hostname,
            "--timeout",
            "3",
        ],
        harness.directory / "inspect.log",
        env=env,
        cwd=REPO_ROOT,
    )
    inspect.spawn()
    try:
        opened = False
        while inspect.running:
            opened = opened or port_open(port)
            time.sleep(0.02)
    finally:
        inspect.stop()
    assert inspect.returncode == 0, inspect.tail()
    assert "pong" in inspect.output()
    assert not opened
    assert "celery-vitals agent" not in inspect.output()

    # a plain import (a web server importing the app): no thread, no socket
    check = (
        f"import socket, threading, {APP}\n"
        "assert not [t for t in threading.enumerate() if 'vitals' in t.name]\n"
        f"socket.create_server(('{LOOPBACK}', {port})).close()\n"
        "print('nothing served')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", check],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "nothing served"
    # and the worker itself still serves
    assert worker.listening()


@pytest.mark.parametrize("broker_url", ["redis", "rabbitmq"], indirect=True)
def test_broker_redelivery_after_a_lost_worker(harness: Harness, broker_url: str, uid: str) -> None:
    """A worker SIGKILLed mid-task (acks_late): the broker hands the message to the next
    worker flagged as redelivered; that worker's agent has never seen it before."""
    jobs = f"jobs-{uid}"
    env = {"AGENT_VISIBILITY_TIMEOUT": "2"}
    first = harness.agent_worker(
        "first", broker_url, pool="prefork", concurrency=1, queues=jobs, extra_env=env
    )
    harness.client(broker_url).send_task("agent.late_sleep", args=(3,), queue=jobs)
    first.wait_for(
        lambda s: (
            s.value("celery_task_started_total", name="agent.late_sleep", queue_name=jobs) == 1
        ),
        what="the first worker started it",
    )
    first.kill()
    second = harness.agent_worker(
        "second", broker_url, pool="prefork", concurrency=1, queues=jobs, extra_env=env
    )
    s = second.wait_for(
        lambda s: (
            s.value("celery_task_succeeded_total", name="agent.late_sleep", queue_name=jobs) == 1
        ),
        timeout=60,
        what="the redelivered task to succeed on the second worker",
    )
    assert s.get("celery_task_received_total", name="agent.late_sleep", queue_name=jobs) == 1
    assert s.get("celery_task_redelivered_total", name="agent.late_sleep", queue_name=jobs) == 1


def test_scrapes_during_warm_shutdown_then_the_server_stops(harness: Harness, uid: str) -> None:
    redis = harness.redis()
    jobs = f"jobs-{uid}"
    worker = harness.agent_worker("agent", redis.url(), pool="prefork", concurrency=1, queues=jobs)
    host = worker.hostname
    harness.client(redis.url()).send_task("agent.sleep", args=(3,), queue=jobs)
    worker.wait_for(
        lambda s: s.value("celery_worker_pool_busy_processes", hostname=host) == 1,
        what="the pool process busy",
    )
    assert worker.process is not None
    worker.process.send_signal(signal.SIGTERM)  # warm shutdown: the running task finishes
    wait_until(
        lambda: "Warm shutdown" in worker.output(),
        timeout=10,
        what="the warm shutdown to begin",
        details=worker.tail,
    )
    s = worker.scrape()  # the running task still shows
    assert s.get("celery_worker_tasks_active", hostname=host) == 1
    assert worker.wait(timeout=30) == 0
    assert not port_open(worker.port)
    assert "Traceback" not in worker.output()
