"""The AMQP queue probe against a real RabbitMQ 3.10 node (management plugin on).

One node serves the whole module (it takes seconds to start and to stop);
tests isolate themselves by unique queue names. Messages are published with
publisher confirms, so they are in their queues when ``publish`` returns and
counts can be asserted exactly. The management API's numbers lag by about
5 s (3.10 refreshes them that often, whatever collect_statistics_interval
says), so management assertions poll until they hold.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from amqp.exceptions import AccessRefused
from kombu import Connection
from kombu.exceptions import OperationalError

from celery_vitals.brokers.amqp.management import ManagementError
from celery_vitals.brokers.amqp.probe import AmqpProbe
from celery_vitals.brokers.probe import ProbeResult, QueueStats, is_plumbing
from stack.net import LOOPBACK, free_port, http_get, wait_until
from stack.rabbitmq import RabbitMQServer
from stack.workers import CeleryWorker
from tests.support.bounded import bounded_call

pytestmark = pytest.mark.integration

PASSWORD = "s3cret-Pa55"


@pytest.fixture
def uid() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def client(rabbit: RabbitMQServer) -> Iterator[Connection]:
    """The test's own connection, publishing with confirms."""
    with Connection(
        rabbit.url, transport_options={"confirm_publish": True}, connect_timeout=5
    ) as connection:
        connection.ensure_connection(max_retries=3)
        yield connection


@pytest.fixture
def probes() -> Iterator[Callable[..., AmqpProbe]]:
    """Builds probes and closes them after the test."""
    made: list[AmqpProbe] = []

    def make(broker_url: str, **options: Any) -> AmqpProbe:
        probe = AmqpProbe(broker_url, options.pop("transport_options", {}), **options)
        made.append(probe)
        return probe

    yield make
    for probe in made:
        probe.close()


def declare(connection: Connection, name: str, arguments: dict[str, Any] | None = None) -> None:
    connection.default_channel.queue_declare(
        queue=name, durable=False, auto_delete=False, arguments=arguments or {}
    )


def publish(connection: Connection, queue: str, count: int) -> None:
    producer = connection.Producer(connection.default_channel)
    for number in range(count):
        producer.publish({"n": number}, exchange="", routing_key=queue, serializer="json")


def by_name(result: ProbeResult) -> dict[str, QueueStats]:
    return {queue.name: queue for queue in result.queues}


def poll_until(
    probe: AmqpProbe,
    queues: list[str],
    condition: Callable[[dict[str, QueueStats]], bool],
    what: str,
    timeout: float = 25,
    *,
    broker_may_be_down: bool = False,
) -> ProbeResult:
    """Polls until the condition holds; the last result is in the failure message."""
    last: list[ProbeResult | Exception] = []

    def check() -> ProbeResult | None:
        try:
            result = probe.poll(queues)
        except OperationalError as error:
            if not broker_may_be_down:
                raise
            last[:] = [error]
            return None
        last[:] = [result]
        return result if condition(by_name(result)) else None

    result = wait_until(
        check,
        timeout=timeout,
        what=what,
        interval=0.2,
        details=lambda: f"last poll: {last[0] if last else None}",
    )
    assert result is not None
    return result


class HeldDeliveries:
    """A consumer with prefetch 2 that never acks: 2 messages stay unacknowledged."""

    def __init__(self, url: str, queue: str, prefetch: int = 2) -> None:
        self.connection = Connection(url, connect_timeout=5)
        self.connection.ensure_connection(max_retries=3)
        channel = self.connection.channel()
        channel.basic_qos(0, prefetch, False)
        self.delivered: list[object] = []
        channel.basic_consume(queue=queue, callback=self.delivered.append, no_ack=False)
        deadline = time.monotonic() + 10
        while len(self.delivered) < prefetch and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                self.connection.drain_events(timeout=0.5)
        assert len(self.delivered) == prefetch

    def close(self) -> None:
        self.connection.close()


def closed_port() -> int:
    return free_port()  # nothing listens there: connections are refused at once


# -- AMQP only: passive declares ----------------------------------------------------------


def test_passive_declare_counts_ready_messages_and_consumers(
    rabbit: RabbitMQServer, client: Connection, uid: str, probes: Callable[..., AmqpProbe]
) -> None:
    busy, idle, empty = f"{uid}.busy", f"{uid}.idle", f"{uid}.empty"
    for name in (busy, idle, empty):
        declare(client, name)
    publish(client, busy, 5)
    publish(client, idle, 3)
    held = HeldDeliveries(rabbit.url, busy)
    try:
        probe = probes(rabbit.url)
        result = by_name(probe.poll([busy, idle, empty]))
        # passive declare counts ready messages only: the 2 held deliveries are not in it
        assert result[busy] == QueueStats(busy, exists=True, ready=3, consumers=1)
        assert result[idle] == QueueStats(idle, exists=True, ready=3, consumers=0)
        assert result[empty] == QueueStats(empty, exists=True, ready=0, consumers=0)
        assert probe.discover() == set()  # AMQP cannot list queues
    finally:
        held.close()


def test_missing_queues_are_absent_and_the_poll_goes_on(
    rabbit: RabbitMQServer,
    client: Connection,
    uid: str,
    probes: Callable[..., AmqpProbe],
    caplog: pytest.LogCaptureFixture,
) -> None:
    present = [f"{uid}.q{number}" for number in range(4)]
    for number, name in enumerate(present):
        declare(client, name)
        publish(client, name, number + 1)
    missing = [f"{uid}.missing{number}" for number in range(30)]
    asked = [present[0], *missing[:10], present[1], *missing[10:], present[2], present[3]]
    probe = probes(rabbit.url)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # the second poll runs on the same, still healthy connection
            result = probe.poll(asked)
            assert [queue.name for queue in result.queues] == asked
            stats = by_name(result)
            for number, name in enumerate(present):
                assert stats[name] == QueueStats(name, exists=True, ready=number + 1, consumers=0)
            for name in missing:
                assert stats[name] == QueueStats(name, exists=False)
    assert not caplog.records  # an absent queue is a fact, not a warning


# -- management API -------------------------------------------------------------------------


def test_management_counts_unacked_ready_consumers_and_ingress(
    rabbit: RabbitMQServer, client: Connection, uid: str, probes: Callable[..., AmqpProbe]
) -> None:
    queue, missing = f"{uid}.held", f"{uid}.missing"
    declare(client, queue)
    publish(client, queue, 5)
    held = HeldDeliveries(rabbit.url, queue)
    try:
        probe = probes(rabbit.url, management_url=rabbit.management_url)
        result = poll_until(
            probe,
            [queue, missing],
            lambda stats: stats[queue].unacked == 2 and stats[queue].consumers == 1,
            what="the management API to show the consumer's 2 unacked messages",
        )
        stats = by_name(result)
        assert stats[queue] == QueueStats(
            queue, exists=True, ready=3, unacked=2, consumers=1, published_total=5
        )
        assert stats[missing] == QueueStats(missing, exists=False)
        assert result.info == {"transport": "amqp", "version": "3.10.8", "eviction_policy": ""}
        assert result.persistence == {}
        used = result.facts["celery_broker_memory_used_bytes"]
        limit = result.facts["celery_broker_memory_limit_bytes"]
        assert 0 < used < limit
    finally:
        held.close()


def test_management_mode_is_exact_for_a_queue_declared_a_moment_ago(
    rabbit: RabbitMQServer, client: Connection, uid: str, probes: Callable[..., AmqpProbe]
) -> None:
    """The listing has no numbers for a new queue until the next statistics round."""
    probe = probes(rabbit.url, management_url=rabbit.management_url)
    queue = f"{uid}.new"
    declare(client, queue)
    publish(client, queue, 2)
    stats = by_name(probe.poll([queue]))[queue]
    assert (stats.exists, stats.ready, stats.consumers) == (True, 2, 0)


def test_discover_lists_task_queues_but_not_celery_plumbing(
    rabbit: RabbitMQServer, client: Connection, uid: str, probes: Callable[..., AmqpProbe]
) -> None:
    tasks = [f"{uid}.tasks", f"{uid}-default"]
    plumbing = [
        f"celeryev.{uid}",
        f"{uid}@host.celery.pidbox",
        f"{uid}.reply.celery.pidbox",
        f"{uid}_celery_delayed_3",
    ]
    for name in tasks + plumbing:
        declare(client, name)
    server_named = client.default_channel.queue_declare(queue="", exclusive=True).queue
    assert server_named.startswith("amq.gen-")

    probe = probes(rabbit.url, management_url=rabbit.management_url)
    discovered = probe.discover()
    assert set(tasks) <= discovered
    assert not discovered & {*plumbing, server_named}
    assert not [name for name in discovered if is_plumbing(name)]
    # they do exist: the probe chose not to report them
    stats = by_name(probes(rabbit.url).poll([*plumbing, server_named]))
    assert all(
        stats[name] == QueueStats(name, exists=True, ready=0, consumers=0) for name in plumbing
    )
    # another connection's exclusive queue: RESOURCE_LOCKED says it exists, nothing more
    assert stats[server_named] == QueueStats(server_named, exists=True)


def test_dead_letter_targets_follow_the_dead_letter_exchange(
    rabbit: RabbitMQServer, client: Connection, uid: str, probes: Callable[..., AmqpProbe]
) -> None:
    channel = client.default_channel
    dead, bystander, fanned = f"{uid}.dead", f"{uid}.other", f"{uid}.fanned"
    retried, delay = f"{uid}.work", f"{uid}.delay"
    for name in (dead, bystander, fanned, retried):
        declare(client, name)
    # direct exchange with a dead-letter routing key: only the queue bound with that key
    channel.exchange_declare(f"{uid}.dlx", "direct", durable=False, auto_delete=False)
    channel.queue_bind(dead, f"{uid}.dlx", routing_key=dead)
    channel.queue_bind(bystander, f"{uid}.dlx", routing_key="something.else")
    declare(
        client,
        f"{uid}.source",
        {"x-dead-letter-exchange": f"{uid}.dlx", "x-dead-letter-routing-key": dead},
    )
    # direct exchange, no dead-letter routing key: the original key is unknown, so all bound
    channel.exchange_declare(f"{uid}.dlx2", "direct", durable=False, auto_delete=False)
    channel.queue_bind(fanned, f"{uid}.dlx2", routing_key="a")
    declare(client, f"{uid}.source2", {"x-dead-letter-exchange": f"{uid}.dlx2"})
    # a delay queue (TTL) expiring back into its work queue is not dead-lettering
    channel.exchange_declare(f"{uid}.retry", "direct", durable=False, auto_delete=False)
    channel.queue_bind(retried, f"{uid}.retry", routing_key=retried)
    declare(
        client,
        delay,
        {
            "x-message-ttl": 60000,
            "x-dead-letter-exchange": f"{uid}.retry",
            "x-dead-letter-routing-key": retried,
        },
    )

    probe = probes(rabbit.url, management_url=rabbit.management_url)
    result = probe.poll([dead])
    mine = {name for name in result.dead_letter_targets if name.startswith(uid)}
    assert mine == {dead, fanned}


# -- failures -------------------------------------------------------------------------------


def test_a_closed_broker_port_raises_without_retrying(
    probes: Callable[..., AmqpProbe], caplog: pytest.LogCaptureFixture
) -> None:
    """Each call tries once and raises: kombu's default would retry forever (a hang here).

    How long the give-up takes against the configured timeout: benchmarks/recovery.py.
    """
    port = closed_port()
    url = f"amqp://vitals:{PASSWORD}@{LOOPBACK}:{port}//"
    for probe in (
        probes(url, timeout=1.0),
        probes(url, timeout=1.0, management_url=f"http://{LOOPBACK}:{closed_port()}/"),
    ):
        for _ in range(2):  # and again: each call tries a fresh connection
            with caplog.at_level(logging.WARNING), pytest.raises(OperationalError) as raised:
                bounded_call(lambda p=probe: p.poll(["celery"]), what="a poll of a closed port")
            assert PASSWORD not in str(raised.value)
    with pytest.raises(ManagementError) as raised:
        probes(url, timeout=1.0, management_url=f"http://{LOOPBACK}:{closed_port()}/").discover()
    assert PASSWORD not in str(raised.value)
    assert PASSWORD not in caplog.text


def test_wrong_credentials_raise_without_the_password(
    rabbit: RabbitMQServer, probes: Callable[..., AmqpProbe]
) -> None:
    probe = probes(rabbit.url.replace("guest:guest", f"guest:{PASSWORD}"), timeout=2.0)
    with pytest.raises(AccessRefused) as raised:
        probe.poll(["celery"])
    assert PASSWORD not in str(raised.value)


def test_a_broker_that_accepts_but_never_answers_times_out(
    probes: Callable[..., AmqpProbe],
) -> None:
    with socket.create_server((LOOPBACK, 0)) as silent:
        port = silent.getsockname()[1]
        probe = probes(
            f"amqp://guest:guest@{LOOPBACK}:{port}//",
            timeout=1.0,
            management_url=f"http://{LOOPBACK}:{port}/",
        )
        with pytest.raises(OperationalError, match="timed out"):
            bounded_call(lambda: probe.poll(["celery"]), what="a poll of a silent broker")


def test_a_failing_management_api_falls_back_to_passive_declares(
    rabbit: RabbitMQServer,
    client: Connection,
    uid: str,
    probes: Callable[..., AmqpProbe],
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = f"{uid}.fallback"
    declare(client, queue)
    publish(client, queue, 4)
    wrong_password = rabbit.management_url.replace("://", f"://guest:{PASSWORD}@")
    for management_url, why in (
        (wrong_password, "HTTP 401"),
        (f"http://{LOOPBACK}:{closed_port()}/", "ConnectionRefused"),
    ):
        caplog.clear()
        probe = probes(rabbit.url, management_url=management_url)
        with caplog.at_level(logging.WARNING, logger="celery_vitals.brokers.amqp.probe"):
            result = probe.poll([queue, f"{uid}.missing"])
        assert by_name(result)[queue] == QueueStats(queue, exists=True, ready=4, consumers=0)
        assert by_name(result)[f"{uid}.missing"] == QueueStats(f"{uid}.missing", exists=False)
        assert result.facts == {}
        assert result.info["version"] == "3.10.8"  # from the AMQP handshake
        assert "passive declares" in caplog.text
        assert why in caplog.text
        assert PASSWORD not in caplog.text


# -- a real Celery worker dead-lettering rejected tasks --------------------------------------


def test_rejected_tasks_land_in_the_dead_letter_queue(
    rabbit: RabbitMQServer, tmp_path: Path, probes: Callable[..., AmqpProbe]
) -> None:
    from tests.support import dlq_app

    passive = probes(rabbit.url)
    managed = probes(rabbit.url, management_url=rabbit.management_url)
    worker = CeleryWorker("dlq", rabbit.url, tmp_path, app="tests.support.dlq_app", concurrency=1)
    worker.argv += ["-Q", "work"]  # consumes the work queue, never its DLQ
    worker.start()
    try:
        poll_until(
            passive,
            ["work", "work.dead"],
            lambda stats: stats["work"].consumers == 1 and stats["work.dead"].exists,
            what="the worker to consume 'work' and declare 'work.dead'",
            timeout=40,
        )
        before = poll_until(
            managed,
            ["work.dead"],
            lambda stats: stats["work.dead"].published_total is not None,
            what="the DLQ's ingress counter",
        )
        baseline = by_name(before)["work.dead"].published_total
        assert baseline is not None
        assert "work.dead" in before.dead_letter_targets

        with dlq_app.app.connection_for_write(rabbit.url) as connection:
            for number in range(3):
                dlq_app.reject.apply_async((f"poison {number}",), connection=connection)

        poll_until(
            passive,
            ["work.dead"],
            lambda stats: stats["work.dead"].ready == 3,
            what="3 dead-lettered messages in work.dead",
            timeout=30,
        )
        after = poll_until(
            managed,
            ["work", "work.dead"],
            lambda stats: (
                (stats["work.dead"].ready, stats["work"].unacked) == (3, 0)
                and stats["work.dead"].published_total == baseline + 3
            ),
            what="the management API to count the 3 dead-lettered messages",
        )
        stats = by_name(after)
        assert stats["work"] == QueueStats(
            "work", exists=True, ready=0, unacked=0, consumers=1, published_total=3
        )
        assert stats["work.dead"].published_total == baseline + 3
        assert "work.dead" in after.dead_letter_targets

        # the worker's own queues (pidbox, gossip events) exist but are not discovered
        listing = http_get(
            rabbit.management_port,
            "/api/queues/%2F?columns=name",
            {"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="},
        )  # guest:guest
        names = {queue["name"] for queue in json.loads(listing.body)}
        assert any(name.endswith(".celery.pidbox") for name in names)
        assert any(name.startswith("celeryev.") for name in names)
        discovered = managed.discover()
        assert {"work", "work.dead"} <= discovered
        assert not [name for name in discovered if is_plumbing(name)]
    finally:
        worker.stop_gracefully()


# -- the broker dies and comes back (on the same ports; transient queues are gone after) ------


def test_the_probe_reconnects_after_the_broker_crashed_and_restarted(
    rabbit: RabbitMQServer, client: Connection, uid: str, probes: Callable[..., AmqpProbe]
) -> None:
    queue = f"{uid}.durable"
    client.default_channel.queue_declare(queue=queue, durable=True, auto_delete=False)
    producer = client.Producer(client.default_channel)
    for number in range(2):
        producer.publish({"n": number}, exchange="", routing_key=queue, delivery_mode=2)
    passive = probes(rabbit.url, timeout=2.0)
    managed = probes(rabbit.url, timeout=2.0, management_url=rabbit.management_url)
    assert by_name(passive.poll([queue]))[queue].ready == 2
    poll_until(
        managed,
        [queue],
        lambda stats: stats[queue].published_total == 2,
        what="the ingress counter before the crash",
    )

    rabbit.kill()  # SIGKILL: no clean shutdown, the queue index is recovered from disk
    try:
        for probe in (passive, managed):
            with pytest.raises(OperationalError):
                bounded_call(lambda p=probe: p.poll([queue]), what="a poll of a killed broker")
    finally:
        rabbit.restart()
    client.collect()  # the test's own connection died with the broker

    # the recovered sequence number jumped to an index segment boundary: the first
    # counter after the restart is withheld (it is a new baseline, not an ingress).
    # Every poll of the managed probe after the restart counts, its first one included.
    counters: list[int | None] = []

    def reconnected(stats: dict[str, QueueStats]) -> bool:
        if stats[queue].unacked is not None:  # the listing has numbers (not AMQP's)
            counters.append(stats[queue].published_total)
        return stats[queue].ready == 2 and len(counters) >= 2

    for probe, condition in (
        (passive, lambda stats: stats[queue].ready == 2),
        (managed, reconnected),
    ):
        # the same probes, no restart of their own
        result = poll_until(
            probe,
            [queue],
            condition,
            what="the probe to reconnect",
            timeout=40,
            broker_may_be_down=True,
        )
        assert by_name(result)[queue].consumers == 0

    assert counters[0] is None
    assert counters[1] is not None and counters[1] > 2, counters
