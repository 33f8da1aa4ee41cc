"""The agent on every Celery minor celery-vitals declares (``celery>=5.3``) besides the
main venv's 5.7: 5.3, 5.4, 5.5 and 5.6, each in its own venv with the kombu, billiard,
vine, amqp and redis-py of its release (tests/support/celery_versions.py).

Real ``celery worker`` processes of tests/support/agent_app.py run with that venv's
``celery``, on real Redis and RabbitMQ, without task events; every part of the agent
is asserted with exact values: the start check (celery_vitals_agent_feature_up 1 for
every feature), the tap's task counts, pool processes, busy processes, memory per
slot, a SIGKILLed pool process, one the pool ends for its hard time limit (billiard's
TimeoutHandler._trywaitkill, which the agent wraps), ETA tasks, prefetch. Prefork on
both brokers; the threads and gevent pools (their own timers and process counts) on
Redis.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from celery_vitals.agent.features import FEATURES
from tests.support import celery_versions
from tests.support.agent_workers import AgentWorkers, AppWorker
from tests.support.celery_versions import CeleryVenv
from tests.support.harness import Harness
from tests.support.metrics import Scrape

pytestmark = pytest.mark.integration

ALL_UP = {frozenset({("feature", feature)}): 1.0 for feature in FEATURES}


@pytest.fixture(scope="module", params=list(celery_versions.LOCKS), ids=lambda m: f"celery{m}")
def celery_venv(request: pytest.FixtureRequest) -> CeleryVenv:
    """The minor's venv: built by scripts/celery_versions.sh in CI, else here."""
    return celery_versions.ensure(request.param)


@pytest.fixture
def start(harness: Harness) -> Iterator[Callable[..., AppWorker]]:
    """Starts a worker with ``venv``'s celery, until its agent answers; kills them all at
    the end."""
    workers = AgentWorkers(harness.directory)

    def start_worker(venv: CeleryVenv, broker_url: str, **kwargs: Any) -> AppWorker:
        return workers.start(
            "agent",
            broker_url,
            celery=venv.executable("celery"),
            extra_args=["--without-mingle", "--without-gossip"],
            **kwargs,
        )

    yield start_worker
    workers.close()


def checked_at_start(worker: AppWorker, venv: CeleryVenv, pool: str) -> Scrape:
    """The start check ran (at worker_ready) and found every feature working."""
    s = worker.wait_for(
        lambda s: bool(s.series("celery_vitals_agent_feature_up")),
        what="celery_vitals_agent_feature_up after worker_ready",
    )
    assert s.series("celery_vitals_agent_feature_up") == ALL_UP, s.series_text()
    host = worker.hostname
    assert s.get("celery_worker_info", hostname=host, version=venv.version, pool=pool) == 1
    log = worker.output()
    assert f"celery-vitals agent: serving http://127.0.0.1:{worker.port}/metrics for {host}" in log
    assert "cannot work" not in log
    return s


def agent_said_nothing_else(worker: AppWorker) -> None:
    """The serving line is all the agent logged: no warning, no traceback through it."""
    log = worker.output()
    assert [line for line in log.splitlines() if "celery-vitals agent" in line] == [
        line for line in log.splitlines() if "celery-vitals agent: serving" in line
    ]
    assert "celery_vitals/" not in log


def test_every_part_of_the_agent_on_prefork(
    celery_venv: CeleryVenv,
    broker_url: str,
    harness: Harness,
    start: Callable[..., AppWorker],
    tmp_path: Path,
) -> None:
    url = broker_url
    jobs = f"jobs-{uuid.uuid4().hex[:8]}"
    worker = start(celery_venv, url, pool="prefork", concurrency=2, queues=jobs)
    host = worker.hostname
    checked_at_start(worker, celery_venv, "prefork")
    client = harness.client(url)

    # two ETA tasks held in memory, then both pool processes busy until the gate opens
    gate = tmp_path / "gate"
    for _ in range(2):
        client.send_task("agent.add", args=(1, 1), queue=jobs, countdown=600)
    for _ in range(2):
        client.send_task("agent.wait_for_file", args=(str(gate),), queue=jobs)
    s = worker.wait_for(
        lambda s: (
            s.value("celery_worker_pool_busy_processes", hostname=host) == 2
            and s.value("celery_worker_eta_tasks", hostname=host) == 2
        ),
        what="2 busy pool processes and 2 ETA tasks",
    )
    assert s.get("celery_worker_tasks_active", hostname=host) == 2
    assert s.get("celery_worker_pool_processes", hostname=host) == 2
    assert s.get("celery_worker_prefetch_limit", hostname=host) == 2 + 2  # raised per ETA task
    assert s.get("celery_worker_tasks_reserved", hostname=host) == 2  # the ETA tasks
    gate.touch()

    # successes, a failure, an unknown task name, a pool process SIGKILLed, and one the
    # pool ends because its task ran past its hard time limit
    for _ in range(3):
        client.send_task("agent.add", args=(2, 3), queue=jobs)
    client.send_task("agent.fail", queue=jobs)
    client.send_task("agent.renamed", queue=jobs)
    client.send_task("agent.suicide", queue=jobs)
    client.send_task("agent.sleep", args=(60,), queue=jobs, time_limit=1)

    def failed(name: str, exception: str) -> float:
        return s.value("celery_task_failed_total", name=name, queue_name=jobs, exception=exception)

    def done(scrape: Scrape) -> bool:
        nonlocal s
        s = scrape
        return (
            s.value("celery_task_succeeded_total", name="agent.add", queue_name=jobs) == 3
            and s.value("celery_task_succeeded_total", name="agent.wait_for_file", queue_name=jobs)
            == 2
            and failed("agent.fail", "ValueError") == 1
            and failed("agent.renamed", "NotRegistered") == 1
            and failed("agent.suicide", "WorkerLostError") == 1
            and failed("agent.sleep", "TimeLimitExceeded") == 1
            and s.value("celery_worker_pool_process_exits_total", hostname=host, reason="killed")
            == 1
            and s.value(
                "celery_worker_pool_process_exits_total", hostname=host, reason="time_limit"
            )
            == 1
            and s.value("celery_worker_pool_busy_processes", hostname=host) == 0
        )

    worker.wait_for(
        done, timeout=45, what="every task counted, one pool process killed, one timed out"
    )
    assert s.series("celery_task_received_total") == {
        frozenset({("name", "agent.add"), ("queue_name", jobs)}): 3 + 2,
        frozenset({("name", "agent.wait_for_file"), ("queue_name", jobs)}): 2,
        frozenset({("name", "agent.fail"), ("queue_name", jobs)}): 1,
        frozenset({("name", "agent.suicide"), ("queue_name", jobs)}): 1,
        frozenset({("name", "agent.sleep"), ("queue_name", jobs)}): 1,
    }
    assert s.series("celery_task_started_total") == {
        frozenset({("name", "agent.add"), ("queue_name", jobs)}): 3,
        frozenset({("name", "agent.wait_for_file"), ("queue_name", jobs)}): 2,
        frozenset({("name", "agent.fail"), ("queue_name", jobs)}): 1,
        frozenset({("name", "agent.suicide"), ("queue_name", jobs)}): 1,
        frozenset({("name", "agent.sleep"), ("queue_name", jobs)}): 1,
    }
    assert len(s.series("celery_task_failed_total")) == 4
    assert s.get("celery_task_runtime_seconds_count", name="agent.add", queue_name=jobs) == 3
    assert s.series("celery_task_redelivered_total") == {}
    assert s.series("celery_vitals_unknown_uuid_events_total") == {}
    assert s.series("celery_vitals_events_skipped_total") == {}
    for reason in ("recycled", "failed"):
        assert s.get("celery_worker_pool_process_exits_total", hostname=host, reason=reason) == 0
    assert s.get("celery_worker_eta_tasks", hostname=host) == 2  # still waiting
    assert s.get("celery_worker_pool_processes", hostname=host) == 2
    assert s.get("celery_worker_up", hostname=host) == 1

    # the killed process's replacement takes its slot; every slot's memory is there
    def memory(scrape: Scrape) -> dict[str, float]:
        return {
            dict(labels)["process"]: value
            for labels, value in scrape.series(
                "celery_worker_process_resident_memory_bytes"
            ).items()
        }

    s = worker.wait_for(
        lambda s: (
            set(memory(s)) == {"main", "0", "1"}
            and s.value("celery_worker_tasks_processed", hostname=host) == 8
        ),
        what="the memory of main, 0 and 1, and 8 tasks processed",
    )
    assert all(value > 1_000_000 for value in memory(s).values()), memory(s)
    assert s.series("celery_vitals_agent_feature_up") == ALL_UP
    agent_said_nothing_else(worker)


@pytest.mark.parametrize("pool", ["threads", "gevent"])
def test_eta_busy_and_processes_on_the_threads_and_gevent_pools(
    celery_venv: CeleryVenv,
    pool: str,
    harness: Harness,
    start: Callable[..., AppWorker],
    tmp_path: Path,
) -> None:
    """Their timers (timer2's thread, gevent's greenlets) hold the ETA tasks; their size
    is the pool's limit (gevent's num_processes counted running greenlets before 5.7)."""
    url = harness.redis().url()
    jobs = f"jobs-{uuid.uuid4().hex[:8]}"
    worker = start(celery_venv, url, pool=pool, concurrency=3, queues=jobs)
    host = worker.hostname
    s = checked_at_start(worker, celery_venv, pool)
    assert s.get("celery_worker_pool_processes", hostname=host) == 3
    client = harness.client(url)
    gate = tmp_path / "gate"
    client.send_task("agent.add", args=(1, 1), queue=jobs, countdown=600)
    for _ in range(2):
        client.send_task("agent.wait_for_file", args=(str(gate),), queue=jobs)
    s = worker.wait_for(
        lambda s: (
            s.value("celery_worker_pool_busy_processes", hostname=host) == 2
            and s.value("celery_worker_eta_tasks", hostname=host) == 1
        ),
        what="2 busy of 3 and 1 ETA task",
    )
    assert s.get("celery_worker_pool_processes", hostname=host) == 3
    assert s.get("celery_worker_prefetch_limit", hostname=host) == 3 + 1
    gate.touch()
    s = worker.wait_for(
        lambda s: (
            s.value("celery_task_succeeded_total", name="agent.wait_for_file", queue_name=jobs) == 2
            and s.value("celery_worker_pool_busy_processes", hostname=host) == 0
        ),
        what="both tasks done",
    )
    assert s.get("celery_task_received_total", name="agent.add", queue_name=jobs) == 1
    assert s.get("celery_worker_eta_tasks", hostname=host) == 1
    assert s.get("celery_worker_tasks_processed", hostname=host) == 2
    assert set(s.series("celery_worker_process_resident_memory_bytes")) == {
        frozenset({("hostname", host), ("process", "main")})
    }
    assert s.series("celery_vitals_agent_feature_up") == ALL_UP
    agent_said_nothing_else(worker)


STAMP_SCRIPT = """
import json, time
from celery import Celery
from celery_vitals.agent.publish import Stamper
from celery_vitals.stamp import HEADER

class RabbitStamper(Stamper):
    def decide(self, app):
        return True  # memory:// keeps the AMQP properties as they are

out = {}
for built in ("nothing", "amqp", "sender"):
    app = Celery("stamp-" + built, broker="memory://", set_as_current=False)
    if built != "nothing":
        app.amqp
    if built == "sender":
        app.amqp.send_task_message
    stamper = RabbitStamper()
    stamper.install(app)
    before = time.time()
    app.send_task("t.add", (1, 2), queue="q-" + built)
    after = time.time()
    with app.connection_for_read() as connection:
        message = connection.SimpleQueue("q-" + built).get(timeout=5)
    published = message.headers.get(HEADER)
    out[built] = {
        "in_time": published is not None and before <= published <= after,
        "timestamp": message.properties.get("timestamp") == int(published or -1),
        "failures": stamper.failures,
    }
print(json.dumps(out, sort_keys=True))
"""


def test_the_publication_stamp_on_every_minor(celery_venv: CeleryVenv) -> None:
    """Celery's task sender (AMQP._create_task_sender's send_task_message) is where the
    agent stamps, on each minor, whether install() ran before the app's amqp existed,
    after, or after its sender was built: the header and the AMQP timestamp reach the
    message."""
    import json
    import subprocess

    done = subprocess.run(
        [celery_venv.executable("python"), "-c", STAMP_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    fine = {"failures": 0, "in_time": True, "timestamp": True}
    assert json.loads(done.stdout) == {"amqp": fine, "nothing": fine, "sender": fine}
