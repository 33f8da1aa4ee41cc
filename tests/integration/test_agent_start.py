"""What the agent says and does at a real worker's start (main venv, Redis):

- the start check at worker_ready: a task whose Task.Strategy does not build its
  requests with create_request_cls leaves the tap blind to it: ONE warning in the
  worker's log and celery_vitals_agent_feature_up{feature="tap"} 0, the rest 1;
- a port range (CELERY_VITALS_AGENT_LISTEN_ADDRESS=HOST:FIRST-LAST) gives each
  worker of one environment (celery multi) a port of its own, the first free
  one, named in the worker's --logfile; a worker that finds none says which
  range, in its log.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import celery
import pytest

from celery_vitals.agent.features import FEATURES
from stack.net import LOOPBACK, free_ports, http_get, wait_until
from tests.support.agent_workers import AgentWorkers
from tests.support.harness import Harness

pytestmark = pytest.mark.integration


@pytest.fixture
def workers(harness: Harness) -> Iterator[AgentWorkers]:
    started = AgentWorkers(harness.directory)
    yield started
    started.close()


def test_a_task_the_tap_cannot_see_is_one_warning_and_tap_feature_0(
    harness: Harness, workers: AgentWorkers
) -> None:
    redis = harness.redis()
    jobs = f"jobs-{uuid.uuid4().hex[:8]}"
    worker = workers.start(
        "agent",
        redis.url(),
        app="tests.support.agent_own_strategy_app",
        pool="prefork",
        concurrency=1,
        queues=jobs,
    )
    host = worker.hostname
    s = worker.wait_for(
        lambda s: bool(s.series("celery_vitals_agent_feature_up")),
        what="the start check's celery_vitals_agent_feature_up",
    )
    assert s.series("celery_vitals_agent_feature_up") == {
        frozenset({("feature", feature)}): 0 if feature == "tap" else 1 for feature in FEATURES
    }
    warnings = [line for line in worker.output().splitlines() if "cannot work" in line]
    assert len(warnings) == 1, warnings
    assert warnings[0].endswith(
        f"celery-vitals agent: on Celery {celery.__version__}, tap cannot work, their metrics "
        "are missing (celery_vitals_agent_feature_up 0): tap (celery_task_* but received "
        "(started, succeeded, failed, retried, ...)): the message handlers of "
        "agent.own_strategy do not build their requests with "
        "celery.worker.strategy.create_request_cls (a custom Task.Strategy?): only the "
        "task-received of those tasks is seen"
    )
    assert "WARNING/MainProcess" in warnings[0]  # in the worker's log, in its format

    # what the gauge stands for: that task's lifecycle is missing, the others' is there
    client = harness.client(redis.url())
    client.send_task("agent.own_strategy", queue=jobs)
    client.send_task("agent.add", args=(1, 2), queue=jobs)
    s = worker.wait_for(
        lambda s: (
            s.value("celery_task_succeeded_total", name="agent.add", queue_name=jobs) == 1
            and s.value("celery_worker_tasks_processed", hostname=host) == 2
        ),
        what="both tasks run, one of them seen by the tap",
    )
    assert s.get("celery_task_received_total", name="agent.own_strategy", queue_name=jobs) == 1
    assert s.get("celery_task_started_total", name="agent.own_strategy", queue_name=jobs) is None
    assert s.get("celery_task_succeeded_total", name="agent.own_strategy", queue_name=jobs) is None
    assert "Task agent.own_strategy" in worker.output()  # Celery ran it
    assert len([line for line in worker.output().splitlines() if "cannot work" in line]) == 1


def free_range(count: int) -> tuple[int, int]:
    """``count`` consecutive free loopback ports: (first, last)."""
    ports = free_ports(count)
    return ports[0], ports[-1]


def test_celery_multi_nodes_share_a_port_range_each_on_its_first_free_port(
    harness: Harness, workers: AgentWorkers, tmp_path: Path
) -> None:
    redis = harness.redis()
    first, last = free_range(2)
    address = f"{LOOPBACK}:{first}-{last}"  # one environment for every node, as celery multi
    nodes = []
    for name in ("node1", "node2"):
        logfile = tmp_path / f"{name}.log"
        worker = workers.start(
            name, redis.url(), address=address, logfile=logfile, pool="solo", concurrency=1
        )
        nodes.append(worker)
    assert sorted(node.port for node in nodes) == [first, last]
    for node in nodes:
        s = node.scrape()
        assert s.get("celery_vitals_agent_info", hostname=node.hostname, pool="solo") == 1
        assert s.series("celery_vitals_agent_info") == {
            frozenset({("hostname", node.hostname), ("pool", "solo")}): 1
        }
        line = (
            f"celery-vitals agent: serving http://{LOOPBACK}:{node.port}/metrics for "
            f"{node.hostname} (the first free port of {first}-{last})"
        )
        log = node.log()
        assert line in log
        assert f"INFO/MainProcess] {line}\n" in log  # Celery's format, in its --logfile
        assert "celery-vitals agent: serving" not in node.output()  # not on stderr as well

    # a third node finds the range taken: it runs its tasks, its log says why no /metrics
    logfile = tmp_path / "node3.log"
    third = workers.start(
        "node3",
        redis.url(),
        address=address,
        logfile=logfile,
        pool="solo",
        concurrency=1,
        wait=False,
    )
    wait_until(
        lambda: "celery-vitals agent not started" in third.log(),
        timeout=30,
        what="node3's warning",
        details=lambda: third.log()[-3000:],
    )
    assert (
        "celery-vitals agent not started, the worker runs without its /metrics: cannot "
        f"listen on {LOOPBACK}:{first}-{last}: every port is in use\n"
    ) in third.log()
    third.assert_running()
    for node in nodes:
        assert http_get(node.port, "/healthz").status == 200
