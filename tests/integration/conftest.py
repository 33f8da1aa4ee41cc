"""Integration tests use the shared fixtures of tests/conftest.py (harness, process logs),
these module-scoped servers (one per test module, stopped by pid after it), and
``broker_url``, which runs a test on each broker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import pytest

from stack.moto import MotoServer
from stack.rabbitmq import RabbitMQServer
from tests.support.harness import Harness


class _Server(Protocol):
    def start(self) -> object: ...
    def stop(self) -> None: ...


S = TypeVar("S", bound=_Server)


def _running(make: Callable[[Path], S], directory: Path) -> Iterator[S]:
    server = make(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQServer]:
    """A RabbitMQ node (with the management API) on free loopback ports."""
    yield from _running(RabbitMQServer, tmp_path_factory.mktemp("rabbitmq"))


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """moto's SQS-compatible server on a free loopback port (its state: in memory only)."""
    yield from _running(MotoServer, tmp_path_factory.mktemp("moto"))


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest, harness: Harness) -> str:
    """The test once on a fresh redis-server, once on the module's RabbitMQ node."""
    if request.param == "redis":
        return harness.redis().url()
    server: RabbitMQServer = request.getfixturevalue("rabbit")
    return server.url
