"""RedisProbe with real Celery workers on a real redis-server (the probe called directly).

The workers run tests/support/queues_app.py: late acks, prefetch 1, ten
priority lists and ":" as the separator; the probe gets the same transport
options, as the exporter gets the workers' options from its configuration.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import redis
from celery import Celery

from celery_vitals.brokers.probe import QueueStats
from celery_vitals.brokers.redis.probe import RedisProbe
from stack.net import LOOPBACK, wait_until
from stack.redis import RedisServer
from stack.workers import CeleryWorker
from tests.support.harness import WORKER_START_TIMEOUT, Harness
from tests.support.queues_app import TRANSPORT_OPTIONS, VISIBILITY_TIMEOUT, make_app

pytestmark = pytest.mark.integration

StartWorker = Callable[[str, str, list[str]], CeleryWorker]


@pytest.fixture
def client(harness: Harness) -> Iterator[Callable[[str], Celery]]:
    """Celery clients with the workers' transport options (same sep, same priority lists)."""
    apps: list[Celery] = []

    def build(url: str) -> Celery:
        apps.append(make_app(url))
        return apps[-1]

    yield build
    for app in apps:
        app.close()


@pytest.fixture
def start_worker(harness: Harness, client: Callable[[str], Celery]) -> Iterator[StartWorker]:
    """A queues_app worker (-c 1) consuming only ``queues``, ready once it answers a ping.

    Killed at the end (before the harness stops redis): a warm shutdown would
    wait for the long task to finish.
    """
    workers: list[CeleryWorker] = []

    def start(name: str, url: str, queues: list[str]) -> CeleryWorker:
        worker = CeleryWorker(
            name, url, harness.directory, app="tests.support.queues_app", concurrency=1
        )
        worker.argv += ["-Q", ",".join(queues)]
        workers.append(worker)
        worker.start()
        app = client(url)

        def answered() -> bool:
            worker.assert_running()
            return bool(app.control.ping(destination=[worker.hostname], timeout=0.5))

        wait_until(
            answered,
            timeout=WORKER_START_TIMEOUT,
            what=f"{worker.hostname} to answer a ping",
            details=worker.tail,
        )
        return worker

    yield start
    for worker in reversed(workers):
        worker.kill()


@pytest.fixture
def probe() -> Iterator[Callable[[str], RedisProbe]]:
    made: list[RedisProbe] = []

    def build(url: str) -> RedisProbe:
        made.append(RedisProbe(url, TRANSPORT_OPTIONS, timeout=5.0))
        return made[-1]

    yield build
    for each in made:
        each.close()


def stats(probe: RedisProbe, queue: str) -> QueueStats:
    (found,) = probe.poll([queue]).queues
    return found


def wait_for_stats(
    probe: RedisProbe,
    queue: str,
    predicate: Callable[[QueueStats], bool],
    *,
    what: str,
    worker: CeleryWorker,
    timeout: float = 20.0,
) -> QueueStats:
    """Polls until ``predicate`` holds for the queue; shows the last poll and the worker's log."""
    last: list[QueueStats] = []

    def check() -> QueueStats | None:
        worker.assert_running()
        last[:] = [stats(probe, queue)]
        return last[0] if predicate(last[0]) else None

    found = wait_until(
        check,
        timeout=timeout,
        what=what,
        interval=0.1,
        details=lambda: f"last poll: {last}\n{worker.tail(30)}",
    )
    assert found is not None
    return found


def raw_client(server: RedisServer) -> redis.Redis:
    return redis.Redis(host=LOOPBACK, port=server.port)


def test_queue_with_messages_and_no_consumer(
    harness: Harness,
    client: Callable[[str], Celery],
    start_worker: StartWorker,
    probe: Callable[[str], RedisProbe],
) -> None:
    """A misspelled queue next to a busy worker: exact depth, consumers unknown, not an error."""
    server = harness.redis()
    url = server.url()
    worker = start_worker("busy", url, ["work"])
    app = client(url)
    for _ in range(7):
        app.send_task("queues.noop", queue="wrok")  # nobody consumes it
    for _ in range(3):
        app.send_task("queues.noop", queue="work")
    tested = probe(url)

    wait_for_stats(
        tested,
        "work",
        lambda s: s.ready == 0 and s.unacked == 0,
        what="the worker to drain its queue",
        worker=worker,
    )
    result = tested.poll(["wrok", "work"])
    assert result.queues == (
        QueueStats("wrok", exists=True, ready=7, unacked=0),
        QueueStats("work", exists=True, ready=0, unacked=0),
    )
    assert all(queue.consumers is None for queue in result.queues)

    # The worker's own plumbing is in Redis, but only task queues are discovered.
    admin = raw_client(server)
    try:
        bindings = {key.decode() for key in admin.scan_iter("_kombu.binding.*")}
    finally:
        admin.close()
    assert {"_kombu.binding.celeryev", "_kombu.binding.celery.pidbox"} <= bindings
    assert tested.discover() == {"wrok", "work"}


def test_priority_tasks_are_counted_in_depth_with_a_worker_on_another_queue(
    harness: Harness,
    client: Callable[[str], Celery],
    start_worker: StartWorker,
    probe: Callable[[str], RedisProbe],
) -> None:
    server = harness.redis()
    url = server.url()
    app = client(url)
    priorities = {0: 2, 3: 1, 7: 2, 9: 4}
    for queue in ("prio", "work"):
        for priority, count in priorities.items():
            for _ in range(count):
                app.send_task("queues.noop", queue=queue, priority=priority)
    admin = raw_client(server)
    try:
        lists = {key: admin.llen(key) for key in ("prio", "prio:3", "prio:7", "prio:9")}
    finally:
        admin.close()
    assert lists == {"prio": 2, "prio:3": 1, "prio:7": 2, "prio:9": 4}
    tested = probe(url)
    assert tested.poll(["prio", "work"]).queues == (
        QueueStats("prio", exists=True, ready=9, unacked=0),
        QueueStats("work", exists=True, ready=9, unacked=0),
    )

    worker = start_worker("other", url, ["work"])
    wait_for_stats(
        tested,
        "work",
        lambda s: s.ready == 0 and s.unacked == 0,
        what="the worker to drain every priority list of its queue",
        worker=worker,
    )
    assert stats(tested, "prio") == QueueStats("prio", exists=True, ready=9, unacked=0)


def test_long_acks_late_task_is_unacked_with_a_growing_age(
    harness: Harness,
    client: Callable[[str], Celery],
    start_worker: StartWorker,
    probe: Callable[[str], RedisProbe],
) -> None:
    server = harness.redis()
    url = server.url()
    worker = start_worker("slow", url, ["slow"])
    app = client(url)
    tested = probe(url)

    sent = time.time()
    for _ in range(2):  # -c 1, prefetch 1, late acks: one runs, one waits
        app.send_task("queues.sleep", args=(20,), queue="slow")
    first = wait_for_stats(
        tested,
        "slow",
        lambda s: s.unacked == 1,
        what="the running task's message to be unacked",
        worker=worker,
    )
    seen = time.time()
    assert (first.ready, first.unacked, first.consumers) == (1, 1, None)
    assert first.oldest_unacked_age is not None
    assert 0 <= first.oldest_unacked_age <= seen - sent

    # The index holds the delivery time kombu wrote in the worker: the age is exact.
    admin = raw_client(server)
    try:
        ((_, delivered),) = admin.zrange("unacked_index", 0, -1, withscores=True)
    finally:
        admin.close()
    assert sent <= delivered <= seen

    time.sleep(1.0)  # the age must grow with the wall clock: let some pass
    before = time.time()
    result = tested.poll(["slow"])
    after = time.time()
    (second,) = result.queues
    assert (second.ready, second.unacked) == (1, 1)
    assert second.oldest_unacked_age is not None
    assert second.oldest_unacked_age > first.oldest_unacked_age + 0.9
    assert before - delivered <= second.oldest_unacked_age <= after - delivered
    assert result.visibility_timeout == float(VISIBILITY_TIMEOUT)
    worker.assert_running()  # still running the task: it was not redelivered meanwhile
