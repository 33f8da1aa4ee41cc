"""benchmarks/time_to_page.py in miniature, so it cannot rot.

One incident (failure-burst) through the script's own machinery: a real redis-server,
worker, exporter, Prometheus (2 s scrape and evaluation) and Alertmanager (a copy of
deploy/alertmanager.yml pointing at the script's webhook receiver), with rules written
by `celery-vitals rules --config` from an overrides file that shortens the rate window
and the alert's `for:`, and a 5 s group_wait. The intended alert must reach the
receiver, after the onset, and nothing else may. Figures come from the full run
(docs/runbooks.md, docs/benchmarks.md), not from here: the run's RUN_MINUTES after the
onset are only the deadline for the page (about 0.35 min on a quiet 2-core host).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from benchmarks.time_to_page import main

from stack.processes import venv_executable

pytestmark = pytest.mark.integration

RUN_MINUTES = 1.0  # after the onset; a generous deadline for the page, not a target

OVERRIDES = """\
thresholds:
  rate_window: 30s
for:
  CeleryTaskFailureRateHigh: 10s
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
def test_failure_burst_pages_its_own_alert_and_nothing_else(tmp_path: Path) -> None:
    result = main(
        [
            "--incidents",
            "failure-burst",
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

    burst = result["incidents"]["failure-burst"]
    assert burst["time_to_page_minutes"] is not None, (
        f"no page within the run's {RUN_MINUTES:g} min after the onset; Prometheus: "
        f"{burst['alerts_transitions']}; receiver: {burst['notifications']}"
    )
    assert burst["time_to_page_minutes"] > 0  # after the onset
    assert burst["extra_pages"] == []
    assert {
        (n["alertname"], n["labels"]["name"], n["labels"]["queue_name"])
        for n in burst["notifications"]
    } == {("CeleryTaskFailureRateHigh", "alerts.charge", "celery")}
    # the ratio passes 0.1 before 0.5: the ticket comes first
    assert burst["paged_as"] == "warning"
    assert burst["notifications"][0]["receiver"] == "ticket"
    assert burst["met_target"] is True  # the target is 10 min: any page in the run meets it
    assert 0 < burst["prometheus_firing_minutes"] <= burst["time_to_page_minutes"]
    assert burst["resolved_by_itself"] is False
