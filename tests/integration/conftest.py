"""Integration tests use the shared fixtures of tests/conftest.py (harness, process logs),
and this module-scoped RabbitMQ node: one per test module, stopped by pid after it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.servers import RabbitMQServer


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQServer]:
    """A RabbitMQ node (with the management API) on free loopback ports."""
    server = RabbitMQServer(tmp_path_factory.mktemp("rabbitmq"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
