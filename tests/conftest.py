"""Fixtures shared by every test directory that starts real processes.

Real redis-server, Celery workers (stack/) and the exporter process (tests.support).

A failing test gets the logs of every process that lived during it attached
to its report, so a CI failure can be diagnosed without rerunning.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from stack.processes import STARTED
from tests.support.harness import Harness


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


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    """Everything this test starts; stopped by pid when it ends, pass or fail."""
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
