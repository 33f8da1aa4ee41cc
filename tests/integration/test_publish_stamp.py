"""The publish stamp end to end: a publisher process with the agent, a real broker, a real
worker with the agent (no -E, no task-sent anywhere), and the queue wait it observes.

The publisher (tests/support/stamp_publisher.py) notes the time just before each publish;
each task (agent.record_start) writes the time it started. A blocker holds the worker's
one slot for a known span, so every task waits behind it: the agent's
celery_task_queue_wait_seconds must agree with start - publication (or - ETA) within
50 ms, per task (each task has a queue of its own, so its series is its wait alone).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

from stack.net import wait_until
from stack.processes import REPO_ROOT
from stack.rabbitmq import RabbitMQServer
from tests.support import celery_versions
from tests.support.agent_workers import AgentWorkers
from tests.support.harness import Harness
from tests.support.metrics import Scrape
from tests.support.processes import AgentWorker

pytestmark = pytest.mark.integration

TOLERANCE = 0.05  # seconds: the bar
HELD = 1.5  # seconds the blocker holds the worker after everything was published
COUNTDOWN = 1.0


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest, harness: Harness) -> str:
    """As the conftest's, with a virtual host of its own on RabbitMQ (queue contents
    compared exactly)."""
    if request.param == "redis":
        return harness.redis().url()
    server: RabbitMQServer = request.getfixturevalue("rabbit")
    return server.vhost(f"stamp-{uuid.uuid4().hex[:8]}")


def publish(
    kind: str, broker_url: str, tasks: list[list[object]], python: str = sys.executable
) -> list[float]:
    """Runs a publisher process (``agent``: with the agent installed; ``plain``: without);
    the time.time() it read just before each publish."""
    env = dict(os.environ, CELERY_BROKER_URL=broker_url)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [python, "-m", "tests.support.stamp_publisher", kind, json.dumps(tasks)],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    published: list[float] = json.loads(done.stdout.strip().splitlines()[-1])
    return published


QUEUES = ["block", "q0", "q1", "q2", "eta", "plain"]


@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_queue_wait_from_the_publishers_stamp_within_50_ms(
    harness: Harness, broker_url: str, pool: str, tmp_path: Path
) -> None:
    worker = harness.agent_worker(
        "stamp", broker_url, pool=pool, concurrency=1, queues=",".join(QUEUES)
    )
    waits_match(worker, broker_url, tmp_path)


@pytest.mark.parametrize("minor", list(celery_versions.LOCKS))
def test_queue_wait_from_the_stamp_on_older_celery(
    harness: Harness, minor: str, tmp_path: Path
) -> None:
    """Publisher and worker on Celery 5.3 to 5.6 (their venvs): the same, on Redis."""
    venv = celery_versions.ensure(minor)
    workers = AgentWorkers(harness.directory)
    try:
        url = harness.redis().url()
        worker = workers.start(
            "stamp",
            url,
            celery=venv.executable("celery"),
            pool="prefork",
            concurrency=1,
            queues=",".join(QUEUES),
            extra_args=["--without-mingle", "--without-gossip"],
        )
        waits_match(worker, url, tmp_path, venv.executable("python"))
    finally:
        workers.close()


def waits_match(
    worker: AgentWorker, broker_url: str, tmp_path: Path, python: str = sys.executable
) -> None:
    """Stamped tasks queued behind a blocker for HELD seconds, one ETA task, one task of a
    publisher without the agent: the agent's queue waits are the test's own within 50 ms."""
    queues = QUEUES
    go = tmp_path / "go"
    started = {q: tmp_path / f"started-{q}" for q in queues if q != "block"}
    published = publish(
        "agent",
        broker_url,
        python=python,
        tasks=[
            ["block", "agent.wait_for_file", [str(go)], None],
            *[[q, "agent.record_start", [str(started[q])], None] for q in ("q0", "q1", "q2")],
            ["eta", "agent.record_start", [str(started["eta"])], COUNTDOWN],
        ],
    )
    publish(
        "plain",
        broker_url,
        [["plain", "agent.record_start", [str(started["plain"])], None]],
        python,
    )
    time.sleep(HELD)
    go.touch()  # the blocker ends: the others start one by one
    wait_until(
        lambda: all(path.exists() and path.read_text() for path in started.values()),
        timeout=30,
        what="every task started",
        details=worker.tail,
    )
    starts = {q: float(path.read_text()) for q, path in started.items()}
    expected = {q: starts[q] - published[i] for i, q in enumerate(("q0", "q1", "q2"), 1)}
    expected["eta"] = starts["eta"] - (published[4] + COUNTDOWN)

    def observed(s: Scrape) -> bool:
        return all(
            s.get("celery_task_queue_wait_seconds_count", name="agent.record_start", queue_name=q)
            == 1
            for q in expected
        ) and (s.get("celery_task_unstamped_total", queue_name="plain") == 1)

    s = worker.wait_for(observed, what="a queue wait per stamped task, the plain one unstamped")
    for q, wait in expected.items():
        seen = s.value(
            "celery_task_queue_wait_seconds_sum", name="agent.record_start", queue_name=q
        )
        assert abs(seen - wait) <= TOLERANCE, (q, seen, wait)
        assert wait >= (0 if q == "eta" else HELD), (q, wait)  # they did wait, behind it
    blocker = s.value(
        "celery_task_queue_wait_seconds_sum", name="agent.wait_for_file", queue_name="block"
    )
    assert 0 <= blocker < 1.0  # an idle worker took it at once
    assert s.series("celery_task_unstamped_total") == {frozenset({("queue_name", "plain")}): 1}
    assert (
        s.get("celery_task_queue_wait_seconds_count", name="agent.record_start", queue_name="plain")
        is None
    )
    assert s.series("celery_vitals_observations_skipped_total") == {}


STAMP_APP = "tests.support.stamp_app"  # agent_app and agent.retry_later
RETRY_QUEUES = ["block", "retry", "countdown"]


@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_a_retry_waits_from_its_republication_and_a_countdown_from_its_eta(
    harness: Harness, pool: str, tmp_path: Path
) -> None:
    """Redis, no task events. A task retried with self.retry(countdown=1) is two queue
    waits: the first attempt's from the publisher's stamp, the second's from the worker's
    own republication plus the countdown (its ETA), not from the first publication (which
    would add the first wait, the first run and the countdown: over 2.5 s here). A
    countdown task waits from its ETA. Both queued behind a blocker for HELD seconds."""
    url = harness.redis().url()
    workers = AgentWorkers(harness.directory)
    try:
        worker = workers.start(
            "retry",
            url,
            app=STAMP_APP,
            pool=pool,
            concurrency=1,
            queues=",".join(RETRY_QUEUES),
        )
        go, prefix, countdown = tmp_path / "go", tmp_path / "retry", tmp_path / "countdown"
        published = publish(
            "agent",
            url,
            tasks=[
                ["block", "agent.wait_for_file", [str(go)], None],
                ["retry", "agent.retry_later", [str(prefix), COUNTDOWN], None],
                ["countdown", "agent.record_start", [str(countdown)], COUNTDOWN],
            ],
        )
        time.sleep(HELD)
        go.touch()  # the blocker ends
        notes = {
            name: tmp_path / f"retry-{name}" for name in ("started-0", "republished", "started-1")
        }
        notes["countdown"] = countdown
        wait_until(
            lambda: all(path.exists() and path.read_text() for path in notes.values()),
            timeout=30,
            what="both attempts and the countdown task started",
            details=worker.tail,
        )
        at = {name: float(path.read_text()) for name, path in notes.items()}
        retry_waits = [
            at["started-0"] - published[1],  # the publisher's stamp
            at["started-1"] - (at["republished"] + COUNTDOWN),  # republication + countdown
        ]
        countdown_wait = at["countdown"] - (published[2] + COUNTDOWN)
        retry = {"name": "agent.retry_later", "queue_name": "retry"}
        timed = {"name": "agent.record_start", "queue_name": "countdown"}

        def observed(s: Scrape) -> bool:
            return (
                s.get("celery_task_queue_wait_seconds_count", **retry) == 2
                and s.get("celery_task_queue_wait_seconds_count", **timed) == 1
            )

        s = worker.wait_for(observed, what="two queue waits of the retried task, one countdown")
        seen = s.value("celery_task_queue_wait_seconds_sum", **retry)
        assert abs(seen - sum(retry_waits)) <= 2 * TOLERANCE, (seen, retry_waits)
        seen_countdown = s.value("celery_task_queue_wait_seconds_sum", **timed)
        assert abs(seen_countdown - countdown_wait) <= TOLERANCE, (seen_countdown, countdown_wait)
        # they did wait as staged: the first attempt behind the blocker, the second only
        # from its ETA on (the slot was free by then)
        assert retry_waits[0] >= HELD and 0 <= retry_waits[1] < 0.5, retry_waits
        assert countdown_wait >= 0 and at["countdown"] >= published[2] + HELD, countdown_wait
        assert s.get("celery_task_retried_total", **retry) == 1
        assert s.get("celery_task_received_total", **retry) == 2
        assert s.get("celery_task_succeeded_total", **retry) == 1
        # the worker stamped its own republication: nothing arrived unstamped, nothing skipped
        assert s.series("celery_task_unstamped_total") == {}
        assert s.series("celery_vitals_observations_skipped_total") == {}
    finally:
        workers.close()


def test_rabbitmq_reports_the_stamp_as_head_message_timestamp(rabbit: RabbitMQServer) -> None:
    """The AMQP timestamp property arrives: the management API's head_message_timestamp of
    a queue holding a stamped message (no consumer); none for an unstamped one."""
    vhost = f"stamp-{uuid.uuid4().hex[:8]}"
    url = rabbit.vhost(vhost)
    published = publish("agent", url, [["held", "agent.add", [1, 2], None]])[0]
    publish("plain", url, [["held-plain", "agent.add", [1, 2], None]])

    def queue(name: str) -> dict[str, object]:
        info = rabbit.api("GET", f"queues/{quote(vhost, safe='')}/{name}")
        assert isinstance(info, dict)
        return info

    def listed() -> bool:  # the management API's statistics lag (5 s by default)
        return all(queue(name).get("messages_ready") == 1 for name in ("held", "held-plain"))

    wait_until(listed, timeout=30, what="both queues' statistics list their message")
    stamped = queue("held").get("head_message_timestamp")
    assert stamped in (int(published), int(published) + 1), stamped  # whole seconds
    assert queue("held-plain").get("head_message_timestamp") in (None, ""), queue("held-plain")
