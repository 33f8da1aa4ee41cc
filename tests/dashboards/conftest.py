"""Dashboard-test fixtures: a Prometheus with nothing to scrape, and the integration harness.

A failing test gets the logs of every process that lived during it attached
to its report.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.support.harness import Harness
from tests.support.processes import STARTED
from tests.support.prometheus import PrometheusServer


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
        item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.failed:
        for process in STARTED:
            if process.lived_during(call.start, call.stop):
                report.sections.append((f"output of {process.name}", process.tail(200)))
    return report


@pytest.fixture(scope="session")
def empty_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A real Prometheus that scrapes nothing: it parses and evaluates queries."""
    with PrometheusServer(Path(tmp_path_factory.mktemp("prometheus")), {}) as server:
        yield server


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    """Everything one test starts; stopped by pid when it ends, pass or fail."""
    with Harness(tmp_path) as owned:
        yield owned


@pytest.fixture(autouse=True, scope="session")
def _no_leftover_processes() -> Iterator[None]:
    """Fails the session if any process started by a fixture outlived it."""
    yield
    leftovers = [process for process in STARTED if process.running]
    for process in leftovers:
        process.kill()
    assert not leftovers, f"processes left running: {[p.name for p in leftovers]}"
