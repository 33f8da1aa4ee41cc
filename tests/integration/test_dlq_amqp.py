"""``celery-vitals dlq`` on a real RabbitMQ node: a DLX fed by a real worker's
``Reject(requeue=False)`` and by message TTL expiry (tests/support/replay_app.py).

One node serves the module; every test starts from empty queues.
"""

from __future__ import annotations

import json
import pickle
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection

from stack.net import wait_until
from stack.rabbitmq import RabbitMQServer
from stack.redis import RedisServer
from stack.workers import CeleryWorker
from tests.support import dlq_cli
from tests.support.harness import Harness
from tests.support.metrics import Scrape
from tests.support.replay_app import DEAD, MAXLEN, TTL, WORK, declare

pytestmark = pytest.mark.integration

QUEUES = ("work", "work.ttl", "work.max", "work.dead", "target")


@pytest.fixture(scope="module")
def store_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as running:
        yield running


@pytest.fixture
def broker(rabbit: RabbitMQServer) -> Iterator[Connection]:
    """The test's own connection (publisher confirms); the queues declared and empty."""
    with Connection(
        rabbit.url, transport_options={"confirm_publish": True}, connect_timeout=5
    ) as connection:
        connection.ensure_connection(max_retries=3)
        declare(connection)
        channel = connection.default_channel
        channel.queue_declare(queue="target", durable=True, auto_delete=False)
        for queue in QUEUES:
            channel.queue_purge(queue)
        yield connection


@pytest.fixture
def store(store_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(store_server.url(0))
    client.flushdb()
    yield client
    client.close()


def depth(connection: Connection, queue: str) -> int:
    _, ready, _ = connection.default_channel.queue_declare(queue=queue, passive=True)
    return int(ready)


def publisher(rabbit: RabbitMQServer) -> Celery:
    app = Celery("publisher", broker=rabbit.url, set_as_current=False)
    app.conf.update(
        task_queues=[DEAD, WORK, TTL, MAXLEN],
        broker_connection_retry_on_startup=False,
        broker_transport_options={"confirm_publish": True},
    )
    return app


def send(app: Celery, task: str, queue: str, count: int) -> list[str]:
    with app.producer_or_acquire() as producer:
        return [
            app.send_task(task, args=(n,), queue=queue, producer=producer).id for n in range(count)
        ]


def ids_in(rabbit: RabbitMQServer, queue: str) -> list[str]:
    """Every message id of a queue, read without consuming (``dlq show``)."""
    shown = dlq_cli.run_json(rabbit.url, "show", queue, "--limit", "5000")
    return [message["id"] for message in shown]


def worker(rabbit: RabbitMQServer, store_server: RedisServer, tmp_path: Path) -> CeleryWorker:
    return CeleryWorker(
        "replay",
        rabbit.url,
        tmp_path,
        app="tests.support.replay_app",
        task_events=False,
        concurrency=4,
        queues="work",
        extra_env={"RECORD_REDIS_URL": store_server.url(0)},
    )


def test_list_counts_rejected_and_expired_per_task_and_reason_exactly(
    rabbit: RabbitMQServer,
    store_server: RedisServer,
    broker: Connection,
    store: redis.Redis,
    tmp_path: Path,
) -> None:
    store.set("mode", "reject")
    app = publisher(rabbit)
    rejecting = worker(rabbit, store_server, tmp_path).start()
    sent_from = time.time()  # every message is dead-lettered after this
    try:
        send(app, "replay.record", "work", 4)
        send(app, "replay.other", "work", 2)
        send(app, "replay.other", "work.ttl", 3)
        send(app, "replay.record", "work.max", 3)  # holds 1: the 2 older are dead-lettered
        wait_until(
            lambda: depth(broker, "work.dead") == 11,
            timeout=60,
            what="11 dead-lettered messages",
            details=rejecting.tail,
        )
    finally:
        rejecting.stop_gracefully()

    listed = dlq_cli.run_json(
        rabbit.url, "list", "--rabbitmq-management-url", rabbit.management_url
    )
    [summary] = [s for s in listed if s["queue"] == "work.dead"]  # found by its DLX route
    assert (summary["depth"], summary["sampled"], summary["sample_size"]) == (11, False, 11)
    assert summary["tasks"] == {"replay.record": 6, "replay.other": 5}
    assert summary["reasons"] == {"rejected": 6, "expired": 3, "maxlen": 2}
    assert summary["origins"] == {"work": 6, "work.ttl": 3, "work.max": 2}
    assert summary["not_tasks"] == {}
    assert 0 <= summary["newest_age_seconds"] <= summary["oldest_age_seconds"]
    # + 1: RabbitMQ stamps x-death with whole seconds
    assert summary["oldest_age_seconds"] <= time.time() - sent_from + 1
    wait_until(
        lambda: depth(broker, "work.dead") == 11,
        timeout=10,
        what="the listed messages back in the DLQ",
    )

    shown = dlq_cli.run_json(rabbit.url, "show", "work.dead", "--task", "replay.record")
    assert len(shown) == 6
    assert Counter(m["reason"] for m in shown) == {"rejected": 4, "maxlen": 2}
    rejected = next(m for m in shown if m["reason"] == "rejected")
    assert rejected["x_death"][0]["queue"] == "work" and rejected["x_death"][0]["count"] == 1


def test_replay_runs_each_of_1000_rejected_messages_exactly_once_on_a_real_worker(
    rabbit: RabbitMQServer,
    store_server: RedisServer,
    broker: Connection,
    store: redis.Redis,
    tmp_path: Path,
) -> None:
    store.set("mode", "reject")
    ids = send(publisher(rabbit), "replay.record", "work", 1000)
    running = worker(rabbit, store_server, tmp_path).start()
    try:
        wait_until(
            lambda: depth(broker, "work.dead") == 1000,
            timeout=90,
            what="1000 rejected messages dead-lettered",
            details=running.tail,
        )
        assert store.hlen("ran") == 0
        store.set("mode", "record")
        done = dlq_cli.run(rabbit.url, "replay", "work.dead", "--rate", "1000/s")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("replayed 1000 messages from work.dead: work 1000;")
        wait_until(
            lambda: store.hlen("ran") == 1000,
            timeout=60,
            what="the worker to run the 1000 replayed tasks",
            details=running.tail,
        )
        wait_until(lambda: depth(broker, "work") == 0, timeout=30, what="work drained")
        running.assert_running()
    finally:
        running.stop_gracefully()
    ran = {key.decode(): int(value) for key, value in store.hgetall("ran").items()}
    assert set(ran) == set(ids)
    assert set(ran.values()) == {1}
    assert depth(broker, "work.dead") == 0


def test_a_replay_killed_at_a_random_point_loses_nothing(
    rabbit: RabbitMQServer, broker: Connection, tmp_path: Path
) -> None:
    ids = send(publisher(rabbit), "replay.record", "work.ttl", 1000)
    wait_until(
        lambda: depth(broker, "work.dead") == 1000,
        timeout=30,
        what="1000 expired messages dead-lettered",
    )
    seed = random.randrange(1 << 30)
    delay = random.Random(seed).uniform(0.2, 1.5)
    process = dlq_cli.spawn(
        rabbit.url, tmp_path, "replay", "replay", "work.dead", "--to", "target", "--rate", "400/s"
    )
    wait_until(
        lambda: depth(broker, "target") > 0 or not process.running,
        timeout=30,
        what="the replay to start",
        details=process.tail,
    )
    time.sleep(delay)  # the random point: the kill itself is what is tested
    process.kill()
    wait_until(
        lambda: depth(broker, "work.dead") + depth(broker, "target") >= 1000,
        timeout=30,
        what="the killed replay's unacked messages back in the DLQ",
    )
    places = Counter(ids_in(rabbit, "work.dead") + ids_in(rabbit, "target"))
    assert set(places) == set(ids), f"seed {seed}"  # nothing lost
    assert sum(places.values()) - 1000 <= 1, f"seed {seed}"  # at most the one in flight twice
    moved = depth(broker, "target")
    assert 0 < moved < 1000, f"seed {seed}"

    again = dlq_cli.run_json(rabbit.url, "replay", "work.dead", "--to", "target", "--rate", "0")
    assert again["replayed"] == 1000 - moved + (sum(places.values()) - 1000)
    in_target = Counter(ids_in(rabbit, "target"))
    assert set(in_target) == set(ids) and sum(in_target.values()) - 1000 <= 1
    assert depth(broker, "work.dead") == 0


def publish_raw(connection: Connection, queue: str, body: bytes, **properties: Any) -> None:
    producer = connection.Producer()
    producer.publish(body, exchange="", routing_key=queue, serializer=None, **properties)


def test_dry_run_and_foreign_messages_change_nothing(
    rabbit: RabbitMQServer, broker: Connection
) -> None:
    ids = send(publisher(rabbit), "replay.record", "work.ttl", 5)
    wait_until(lambda: depth(broker, "work.dead") == 5, timeout=30, what="5 expired")
    publish_raw(
        broker,
        "work.dead",
        b"hello from elsewhere",
        content_type="text/plain",
        content_encoding="utf-8",
    )
    publish_raw(
        broker,
        "work.dead",
        pickle.dumps(["never", "unpickled"]),
        content_type="application/x-python-serialize",
        content_encoding="binary",
        headers={"task": "legacy.pickled", "id": "pickled-1"},
    )
    publish_raw(
        broker,
        "work.dead",
        b"[[1], {",
        content_type="application/json",
        content_encoding="utf-8",
        headers={"task": "replay.record", "id": "broken-1"},
    )
    before = ids_in(rabbit, "work.dead")
    assert before[:5] == ids and before[6:] == ["pickled-1", "broken-1"]

    [summary] = dlq_cli.run_json(rabbit.url, "list", "work.dead")
    assert summary["not_tasks"] == {"unknown-content-type": 1, "pickle": 1, "broken-json": 1}

    dry = dlq_cli.run_json(rabbit.url, "replay", "work.dead", "--dry-run", "--rate", "0")
    assert (dry["replayed"], dry["targets"]) == (5, {"work.ttl": 5})
    wait_until(lambda: depth(broker, "work.dead") == 8, timeout=10, what="all back")
    assert ids_in(rabbit, "work.dead") == before  # same messages, same order
    assert depth(broker, "work.ttl") == 0

    done = dlq_cli.run_json(
        rabbit.url, "replay", "work.dead", "--to", "target", "--task", "legacy.*"
    )
    assert done["replayed"] == 0  # not a Celery task it can read: only by id
    done = dlq_cli.run_json(
        rabbit.url, "replay", "work.dead", "--to", "target", "--id", "pickled-1"
    )
    assert done["replayed"] == 1
    wait_until(lambda: depth(broker, "target") == 1, timeout=10, what="pickled-1 replayed")
    [moved] = dlq_cli.run_json(rabbit.url, "show", "target")
    assert (moved["id"], moved["kind"], moved["task"]) == ("pickled-1", "pickle", "legacy.pickled")


def test_purge_exports_before_acking(
    rabbit: RabbitMQServer, broker: Connection, tmp_path: Path
) -> None:
    app = publisher(rabbit)
    purged = send(app, "replay.other", "work.ttl", 3)
    kept = send(app, "replay.record", "work.ttl", 2)
    wait_until(lambda: depth(broker, "work.dead") == 5, timeout=30, what="5 expired")
    export = tmp_path / "purged.jsonl"
    done = dlq_cli.run_json(
        rabbit.url, "purge", "work.dead", "--task", "replay.other", "--export", str(export), "--yes"
    )
    assert (done["purged"], done["exported"]) == (3, 3)
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    assert [line["id"] for line in lines] == purged
    assert lines[0]["amqp"]["headers"]["task"] == "replay.other"
    wait_until(lambda: depth(broker, "work.dead") == 2, timeout=10, what="2 kept")
    assert ids_in(rabbit, "work.dead") == kept


def test_concurrent_replays_do_not_duplicate(
    rabbit: RabbitMQServer, broker: Connection, tmp_path: Path
) -> None:
    ids = send(publisher(rabbit), "replay.record", "work.ttl", 500)
    wait_until(lambda: depth(broker, "work.dead") == 500, timeout=30, what="500 expired")
    replays = [
        dlq_cli.spawn(
            rabbit.url,
            tmp_path,
            f"replay-{n}",
            "replay",
            "work.dead",
            "--to",
            "target",
            "--rate",
            "0",
            "--json",
        )
        for n in range(2)
    ]
    for process in replays:
        assert process.wait(60) == 0, process.tail()
        process.stop()
    assert Counter(ids_in(rabbit, "target")) == Counter(ids)


def test_the_exporter_gauges_dlq_messages_per_task(
    rabbit: RabbitMQServer, broker: Connection, harness: Harness
) -> None:
    app = publisher(rabbit)
    send(app, "replay.record", "work.ttl", 3)
    send(app, "replay.other", "work.ttl", 2)
    wait_until(lambda: depth(broker, "work.dead") == 5, timeout=30, what="5 expired")
    exporter = harness.exporter(
        rabbit.url,
        "--queue-poll-interval",
        "0.5",
        "--rabbitmq-management-url",
        rabbit.management_url,
        "--no-enable-events",
    )

    def counted(s: Scrape) -> bool:
        return (
            s.get("celery_dlq_messages", queue_name="work.dead", name="replay.record") == 3
            and s.get("celery_dlq_messages", queue_name="work.dead", name="replay.other") == 2
        )

    exporter.wait_for(counted, timeout=40, what="celery_dlq_messages of work.dead")
    exporter.stop()
    wait_until(
        lambda: depth(broker, "work.dead") == 5,
        timeout=10,
        what="the sampled messages back in the DLQ",
    )


def test_unknown_queue_and_unreachable_broker(rabbit: RabbitMQServer) -> None:
    done = dlq_cli.run(rabbit.url, "show", "no.such.queue")
    assert (done.returncode, done.stderr) == (
        2,
        "celery-vitals: error: no queue 'no.such.queue' on the broker\n",
    )
    down = dlq_cli.run("amqp://guest:hunter2-secret@127.0.0.1:1//", "list", "work.dead")
    assert down.returncode == 1 and len(down.stderr.splitlines()) == 1
    assert "hunter2" not in down.stderr and "amqp://guest:***@127.0.0.1:1//" in down.stderr
