"""The demo's timeline end to end: ``python -m demo`` (what scripts/demo.sh runs after
set-up) with real redis-server, worker, exporter, Prometheus and Alertmanager.

Three incidents back to back (DEMO_INCIDENTS), a timeline minute shortened to
MINUTE_SECONDS (the demo's rules, windows and ``for:`` are the real demo ones):
through Alertmanager's API, polled every second, and the receiver's printout,
each incident's intended alert fires, the first one resolves, and no other
warning or critical alert fires. Ctrl-C (SIGINT) stops everything.
retry-storm and not-registered are left out to keep this under four minutes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest
from demo.timeline import INCIDENTS

from stack.net import http_get, port_open, wait_until
from stack.processes import REPO_ROOT, ManagedProcess, executable

pytestmark = pytest.mark.integration

CHOSEN = ("task-failing", "no-consumers", "worker-killed")
MINUTE_SECONDS = 25
EXPECTED = {alert for name in CHOSEN for alert in INCIDENTS[name].alerts}
URL = re.compile(
    r"demo: (broker|exporter|worker's agent|Prometheus alerts|Alertmanager) +"
    r"(?:redis|http)://127\.0\.0\.1:(\d+)/"
)
PRINTED = re.compile(r"(PAGE|TICKET) (FIRING|RESOLVED): (\w+) (\w+) ")


def _printed_ports(demo: ManagedProcess) -> dict[str, int]:
    """Where the demo said its servers are: name -> loopback port."""
    return {match[1]: int(match[2]) for match in URL.finditer(demo.output())}


def _ports(demo: ManagedProcess) -> dict[str, int] | None:
    """Every port the demo prints, once it has printed all five."""
    demo.assert_running()
    found = _printed_ports(demo)
    return found if len(found) == 5 else None


def _start(tmp_path: Path, **variables: str) -> ManagedProcess:
    """python -m demo (what scripts/demo.sh runs after set-up) with these DEMO_* variables."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DEMO_")}
    env.update(variables)
    demo = ManagedProcess(
        "demo", [sys.executable, "-m", "demo"], tmp_path / "demo.log", env=env, cwd=REPO_ROOT
    )
    demo.spawn()
    return demo


def _printed(demo: ManagedProcess, status: str) -> set[str]:
    """Alert/severity of every page and ticket the receiver printed with this status."""
    return {f"{m[4]}/{m[3]}" for m in PRINTED.finditer(demo.output()) if m[2] == status}


def _held(port: int) -> set[str]:
    """Alert/severity of the warning and critical alerts Alertmanager holds now."""
    alerts = json.loads(http_get(port, "/api/v2/alerts").body)
    return {
        f"{a['labels']['alertname']}/{a['labels']['severity']}"
        for a in alerts
        if a["labels"].get("severity") in ("warning", "critical")
    }


@pytest.mark.timeout(300)
def test_each_incident_fires_its_alert_and_no_other(tmp_path: Path) -> None:
    demo = _start(
        tmp_path, DEMO_INCIDENTS=",".join(CHOSEN), DEMO_MINUTE_SECONDS=str(MINUTE_SECONDS)
    )
    try:
        ports = wait_until(
            lambda: _ports(demo), timeout=90, what="the demo's URLs", details=demo.tail
        )
        seen: set[str] = set()

        def fired_and_over() -> bool:
            demo.assert_running()
            seen.update(_held(ports["Alertmanager"]))
            return (
                seen >= EXPECTED
                and _printed(demo, "FIRING") >= EXPECTED
                and "timeline: over" in demo.output()
            )

        wait_until(
            fired_and_over,
            timeout=200,
            interval=1.0,
            what=f"{sorted(EXPECTED)} fired",
            details=lambda: f"Alertmanager held {sorted(seen)}\n{demo.tail()}",
        )
        wait_until(
            lambda: "CeleryTaskFailureRateHigh/warning" in _printed(demo, "RESOLVED"),
            timeout=60,
            what="task-failing's alert resolved",
            details=demo.tail,
        )
        assert seen == EXPECTED
        assert _printed(demo, "FIRING") == EXPECTED
        assert (
            "runbook: https://github.com/celery-vitals/celery-vitals/blob/main/docs/"
            "runbooks.md#celeryqueuenoconsumers" in demo.output()
        )
    finally:
        code = demo.stop(timeout=30, signum=signal.SIGINT)  # Ctrl-C
    assert code == 130, demo.tail()
    assert "demo: stopping" in demo.output()
    assert [name for name, port in ports.items() if port_open(port)] == []


def test_a_server_that_cannot_start_stops_everything_started_before(tmp_path: Path) -> None:
    """Alertmanager missing (a PATH with redis-server only): the demo says what to install,
    exits 1 and stops the broker, worker and exporter it had started."""
    path = tmp_path / "bin"
    path.mkdir()
    (path / "redis-server").symlink_to(executable("redis-server"))
    demo = _start(tmp_path, PATH=str(path))
    assert demo.wait(timeout=90) == 1, demo.tail()
    output = demo.output()
    assert (
        "demo: failed: prometheus-alertmanager not found: install Debian's "
        "prometheus-alertmanager package (scripts/setup.sh does)"
    ) in output
    ports = _printed_ports(demo)
    assert sorted(ports) == ["broker", "exporter", "worker's agent"], output
    assert [name for name, port in ports.items() if port_open(port)] == []
