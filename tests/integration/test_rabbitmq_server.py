"""The RabbitMQServer fixture itself works: later issues (AMQP queue probe, DLQ) build on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue

from stack.net import http_get, port_open
from stack.rabbitmq import RabbitMQServer

pytestmark = pytest.mark.integration


def test_rabbitmq_server_round_trip(tmp_path: Path) -> None:
    server = RabbitMQServer(tmp_path / "rabbitmq")
    try:
        server.start()
        exchange = Exchange("vitals-test", type="direct", durable=False)
        queue = Queue("vitals-test", exchange, routing_key="round.trip", durable=False)
        with Connection(server.url, connect_timeout=5) as connection:
            producer = connection.Producer()
            producer.publish(
                {"hello": "rabbit"},
                exchange=exchange,
                routing_key="round.trip",
                declare=[queue],
                serializer="json",
                retry=True,
            )
            bound = queue(connection.default_channel)
            message = bound.get(no_ack=False)
            assert message is not None
            assert message.payload == {"hello": "rabbit"}
            message.ack()
            assert bound.get() is None

        # the management API answers on its private port
        overview = http_get(
            server.management_port, "/api/overview", {"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="}
        )  # guest:guest
        assert overview.status == 200
        assert json.loads(overview.body)["node"] == server.node
    finally:
        server.stop()
    for process in (server.server, server.epmd):
        assert process is not None and not process.running
    assert not port_open(server.port)
    assert not port_open(server.epmd_port)
