"""Queue depth, dead-letter queues and broker health through the running exporter.

The probes have their own tests (test_queues_redis.py, test_queues_amqp.py);
these check what a user scrapes: the poller thread, the collector, the
options, and that a broker outage is reported and recovered from by the same
exporter process on both brokers.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from demo.app import use_dead_letter_route
from kombu import Connection, Exchange, Queue

from stack.rabbitmq import RabbitMQServer
from tests.support.harness import Harness
from tests.support.messages import push
from tests.support.metrics import Scrape

pytestmark = pytest.mark.integration

POLL = ("--queue-poll-interval", "0.5", "--queue-discovery-interval", "1")


def test_redis_queues_dlq_and_broker_facts(harness: Harness) -> None:
    redis = harness.redis()
    url = redis.url()
    exporter = harness.exporter(
        url,
        *POLL,
        "--queue",
        "idle",
        "--queue",
        "ghost",
        "--queue",
        "jobs.dead",
        "--dlq",
        "*.dead",
        "--broker-transport-option",
        "visibility_timeout=120",
    )
    client = harness.client(url)
    sent_before = time.time()
    for _ in range(5):
        client.send_task("demo.add", args=(1, 1), queue="idle")  # nobody consumes "idle"
    push(url, "jobs.dead", 2)

    def settled(s: Scrape) -> bool:
        return (
            s.get("celery_queue_length", queue_name="idle") == 5
            and s.get("celery_dlq_length", queue_name="jobs.dead") == 2
        )

    s = exporter.wait_for(settled, timeout=30, what="idle=5 and jobs.dead=2")
    assert s.get("celery_queue_exists", queue_name="idle") == 1
    assert s.get("celery_queue_exists", queue_name="ghost") == 0
    assert s.get("celery_queue_length", queue_name="ghost") is None  # absent, not 0
    assert s.get("celery_queue_length", queue_name="jobs.dead") is None  # a DLQ, not a queue
    assert s.get("celery_queue_unacked", queue_name="idle") == 0
    assert s.get("celery_queue_visibility_timeout_seconds", queue_name="idle") == 120
    age = s.get("celery_queue_oldest_message_age_seconds", queue_name="idle")
    assert age is not None and 0 <= age <= time.time() - sent_before + 1
    assert s.get("celery_broker_up") == 1
    assert s.get("celery_broker_persistence_enabled", kind="aof") == 0
    assert s.get("celery_broker_persistence_enabled", kind="rdb") == 0
    (info,) = s.series("celery_broker_info")
    assert dict(info)["transport"] == "redis"
    assert s.value("celery_broker_probe_duration_seconds_count") >= 1
    assert s.get("celery_dlq_ingress_total", queue_name="jobs.dead") == 0  # the baseline

    push(url, "jobs.dead", 3)
    s = exporter.wait_for(
        lambda s: s.get("celery_dlq_length", queue_name="jobs.dead") == 5,
        timeout=20,
        what="jobs.dead=5",
    )
    assert s.get("celery_dlq_ingress_total", queue_name="jobs.dead") == 3


def test_redis_broker_down_is_reported_and_recovered(harness: Harness) -> None:
    redis = harness.redis()
    exporter = harness.exporter(redis.url(), *POLL, "--queue", "idle")
    push(redis.url(), "idle", 4)
    exporter.wait_for(
        lambda s: s.get("celery_queue_length", queue_name="idle") == 4, timeout=20, what="idle=4"
    )
    pid = exporter.pid
    redis.kill()
    down = exporter.wait_for(
        lambda s: s.get("celery_broker_up") == 0, timeout=20, what="celery_broker_up 0"
    )
    errors = {
        dict(labels)["error"]: value
        for labels, value in down.series("celery_broker_probe_errors_total").items()
    }
    # redis-py's error on the open connection, kombu's when reconnecting fails
    assert set(errors) <= {"ConnectionError", "OperationalError"} and sum(errors.values()) >= 1
    redis.restart()  # empty: no persistence
    push(redis.url(), "idle", 2)
    # the poller and the event stream reconnect independently, each with its own pace
    exporter.wait_for(
        lambda s: (
            s.get("celery_broker_up") == 1
            and s.get("celery_queue_length", queue_name="idle") == 2
            and s.get("celery_vitals_event_stream_up") == 1
        ),
        timeout=40,
        what="broker up, idle=2 and the event stream up again",
    )
    assert exporter.pid == pid


@pytest.fixture(scope="module")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQServer]:
    server = RabbitMQServer(Path(tmp_path_factory.mktemp("rabbit")))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def management_url(server: RabbitMQServer) -> str:
    return server.management_url.replace("http://", "http://guest:guest@")


def test_rabbitmq_queues_consumers_and_discovered_dlq(
    rabbitmq: RabbitMQServer, harness: Harness
) -> None:
    url = rabbitmq.url
    # "orders" dead-letters into "orders.dead" through exchange "orders.dlx"
    dead = Queue("orders.dead", Exchange("orders.dlx", type="direct"), routing_key="orders")
    orders_args = {"x-dead-letter-exchange": "orders.dlx", "x-dead-letter-routing-key": "orders"}
    with Connection(url) as connection:
        dead(connection.default_channel).declare()
    push(url, "orders", 3, queue_arguments=orders_args)
    exporter = harness.exporter(
        url,
        *POLL,
        "--rabbitmq-management-url",
        management_url(rabbitmq),
        "--event-queue-ttl",
        "7",
        "--event-queue-max-length",
        "5000",
    )
    s = exporter.wait_for(
        lambda s: s.get("celery_queue_length", queue_name="orders") == 3,
        timeout=30,
        what="orders=3",
    )
    assert s.get("celery_queue_consumers", queue_name="orders") == 0
    assert s.get("celery_queue_unacked", queue_name="orders") == 0
    assert s.get("celery_queue_exists", queue_name="orders") == 1
    assert s.get("celery_dlq_length", queue_name="orders.dead") == 0  # found, not configured

    with Connection(url) as connection:  # a consumer rejects two without requeue
        queue = Queue(
            "orders",
            Exchange("orders", type="direct"),
            routing_key="orders",
            queue_arguments=orders_args,
        )(connection.default_channel)
        for _ in range(2):
            message = queue.get(no_ack=False)
            assert message is not None
            message.reject(requeue=False)
    s = exporter.wait_for(
        lambda s: s.get("celery_dlq_length", queue_name="orders.dead") == 2,
        timeout=30,
        what="orders.dead=2",
    )
    assert s.get("celery_queue_length", queue_name="orders") == 1
    assert s.get("celery_dlq_ingress_total", queue_name="orders.dead") == 2
    (info,) = s.series("celery_broker_info")
    assert dict(info)["transport"] == "amqp"
    assert s.value("celery_broker_memory_used_bytes") > 0

    # the exporter's own event queue: bounded in time and length, gone when it is
    request = urllib.request.Request(
        rabbitmq.management_url + "api/queues/%2F",
        headers={"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        queues = json.load(response)
    (events,) = [q for q in queues if q["name"].startswith("celeryev.celery-vitals.")]
    assert events["arguments"] == {"x-message-ttl": 7000, "x-max-length": 5000, "x-expires": 60000}
    assert events["auto_delete"] is True and events["durable"] is False


def test_rabbitmq_broker_down_is_reported_and_recovered(
    rabbitmq: RabbitMQServer, harness: Harness
) -> None:
    exporter = harness.exporter(rabbitmq.url, *POLL, "--queue", "celery")
    pid = exporter.pid
    exporter.wait_for(
        lambda s: s.get("celery_broker_up") == 1, timeout=30, what="celery_broker_up 1"
    )
    rabbitmq.kill()
    exporter.wait_unready(timeout=30)
    exporter.wait_for(
        lambda s: s.get("celery_broker_up") == 0, timeout=30, what="celery_broker_up 0"
    )
    rabbitmq.restart()
    exporter.wait_ready(timeout=60)
    up = exporter.wait_for(
        lambda s: s.get("celery_broker_up") == 1, timeout=30, what="celery_broker_up 1 again"
    )
    assert up.value("celery_vitals_event_stream_reconnects_total") >= 1
    assert exporter.pid == pid


def test_demo_dead_letter_route_on_rabbitmq(rabbitmq: RabbitMQServer, harness: Harness) -> None:
    """The compose stack's dead-letter demo: demo.poison is rejected into demo.jobs.dead,
    found as a DLQ through the management API without any --dlq."""
    url = rabbitmq.url
    exporter = harness.exporter(url, *POLL, "--rabbitmq-management-url", management_url(rabbitmq))
    harness.worker(
        "dead",
        url,
        exporter=exporter,
        queues="celery,demo.jobs",
        extra_env={"DEMO_DEAD_LETTER": "1"},
    )
    client = harness.client(url)
    use_dead_letter_route(client)
    exporter.wait_for(
        lambda s: s.get("celery_dlq_length", queue_name="demo.jobs.dead") == 0,
        timeout=30,
        what="demo.jobs.dead found as an empty DLQ",
    )
    for _ in range(3):
        client.send_task("demo.poison")
    s = exporter.wait_for(
        lambda s: s.get("celery_dlq_length", queue_name="demo.jobs.dead") == 3,
        timeout=40,
        what="3 poison messages in demo.jobs.dead",
    )
    assert (
        s.get(
            "celery_task_rejected_total",
            name="demo.poison",
            queue_name="demo.jobs",
            requeue="false",
        )
        == 3
    )
    assert s.get("celery_dlq_ingress_total", queue_name="demo.jobs.dead") == 3
    assert s.get("celery_queue_consumers", queue_name="demo.jobs") == 1
