"""benchmarks/time_to_page.py in miniature, so it cannot rot.

Three stacks through the script's own machinery, in one run: failure-burst in the
event setup (worker with -E) and in the agent setup (worker with the agent, exporter
with --no-event-stream, one job scraping both), and the agent-only pool-process-killed
(a pool process SIGKILLed from outside). Each has a real redis-server, worker(s) and
exporter; one Prometheus (2 s scrape and evaluation) and one Alertmanager (a copy of
deploy/alertmanager.yml pointing at the script's webhook receiver), with rules written
by `celery-vitals rules --config` from an overrides file that shortens the rate window
and the alerts' `for:`, and a 5 s group_wait. Each intended alert must reach the
receiver, after the onset, labelled with its own stack's broker, and nothing else may.
Figures come from the full run (docs/runbooks.md, docs/benchmarks.md), not from here:
the run's RUN_MINUTES after the onset are only the deadline for the pages (about 0.4
min on a quiet 2-core host).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from benchmarks.time_to_page import main

from stack.processes import venv_executable

pytestmark = pytest.mark.integration

RUN_MINUTES = 0.8  # after the onset; a generous deadline for the page, not a target

OVERRIDES = """\
thresholds:
  rate_window: 30s
for:
  CeleryTaskFailureRateHigh: 10s
  CeleryWorkerPoolProcessKilled: 10s
"""


def shortened_rules(directory: Path) -> Path:
    config, rules = directory / "overrides.yml", directory / "rules.yml"
    config.write_text(OVERRIDES, encoding="utf-8")
    subprocess.run(
        [
            venv_executable("celery-vitals"),
            "rules",
            "--config",
            str(config),
            "--output",
            str(rules),
        ],
        check=True,
        timeout=60,
    )
    return rules


@pytest.mark.timeout(180)
def test_each_setup_pages_its_own_alert_and_nothing_else(tmp_path: Path) -> None:
    result = main(
        [
            "--setups",
            "event,agent",
            "--incidents",
            "failure-burst,agent:pool-process-killed",
            "--rules",
            str(shortened_rules(tmp_path)),
            "--interval",
            "2s",
            "--group-wait",
            "5s",
            "--warmup",
            "0.25",
            "--minutes",
            str(RUN_MINUTES),
            "--workdir",
            str(tmp_path / "run"),
            "--no-write",
            "--quiet",
        ]
    )

    assert result["selected"] == [
        "event:failure-burst",
        "agent:failure-burst",
        "agent:pool-process-killed",
    ]
    assert {setup: list(incidents) for setup, incidents in result["setups"].items()} == {
        "event": ["failure-burst"],
        "agent": ["failure-burst", "pool-process-killed"],
    }
    for setup, job in (
        ("event", "celery-vitals-failure-burst"),
        ("agent", "celery-vitals-agent-failure-burst"),
    ):
        burst = result["setups"][setup]["failure-burst"]
        assert burst["job"] == job
        assert burst["time_to_page_minutes"] is not None, (
            f"{setup}: no page within the run's {RUN_MINUTES:g} min after the onset; "
            f"Prometheus: {burst['alerts_transitions']}; receiver: {burst['notifications']}"
        )
        assert burst["time_to_page_minutes"] > 0  # after the onset
        assert burst["extra_pages"] == []
        assert {
            (n["alertname"], n["labels"]["broker"], n["labels"]["name"], n["labels"]["queue_name"])
            for n in burst["notifications"]
        } == {("CeleryTaskFailureRateHigh", job, "alerts.charge", "celery")}
        # the ratio passes 0.1 before 0.5: the ticket comes first
        assert burst["paged_as"] == "warning"
        assert burst["notifications"][0]["receiver"] == "ticket"
        assert burst["met_target"] is True  # the target is 10 min: any page in the run meets it
        assert 0 < burst["prometheus_firing_minutes"] <= burst["time_to_page_minutes"]
        assert burst["resolved_by_itself"] is False

    killed = result["setups"]["agent"]["pool-process-killed"]
    assert killed["time_to_page_minutes"] is not None, (
        f"no page within the run's {RUN_MINUTES:g} min after the onset; Prometheus: "
        f"{killed['alerts_transitions']}; receiver: {killed['notifications']}"
    )
    assert killed["time_to_page_minutes"] > 0
    assert killed["extra_pages"] == []
    # one pool process of the only worker killed, from outside: counted as killed
    assert {
        (n["alertname"], n["labels"]["broker"], n["labels"]["hostname"])
        for n in killed["notifications"]
    } == {
        (
            "CeleryWorkerPoolProcessKilled",
            "celery-vitals-agent-pool-process-killed",
            "pool-process-killed@test",
        )
    }
    assert killed["met_target"] is True
