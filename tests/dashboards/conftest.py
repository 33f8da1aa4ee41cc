"""Dashboard-test fixtures: a Prometheus with nothing to scrape (the harness and process
logs come from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stack.prometheus import PrometheusServer


@pytest.fixture(scope="session")
def empty_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A real Prometheus that scrapes nothing: it parses and evaluates queries."""
    with PrometheusServer(Path(tmp_path_factory.mktemp("prometheus")), {}) as server:
        yield server
