"""The broker password never leaks: not in logs, not in /metrics, not in CLI errors."""

from __future__ import annotations

import os
import subprocess

import pytest

from stack.net import free_port
from stack.processes import REPO_ROOT, venv_executable
from tests.support.harness import Harness

pytestmark = pytest.mark.integration

SECRET = "s3cretPW"


def test_password_stays_out_of_logs_and_metrics_while_broker_is_unreachable(
    harness: Harness,
) -> None:
    closed = free_port()  # nothing listens there
    url = f"redis://:{SECRET}@127.0.0.1:{closed}/0"
    exporter = harness.exporter(url, "--enable-events-interval", "1", wait_ready=False)

    # Both broker users fail and log it: the event stream and the enable_events broadcast.
    exporter.wait_for(
        lambda scrape: (
            scrape.value("celery_vitals_enable_events_requests_total", result="error") >= 1
            and "event stream unavailable" in exporter.output()
        ),
        timeout=30,
        what="a failed broadcast and a stream retry line",
    )
    assert "retrying every 3s at most" in exporter.output()
    scrape = exporter.scrape()
    assert exporter.get("/readyz").status == 503
    assert exporter.get("/healthz").status == 200
    assert scrape.get("celery_vitals_event_stream_up") == 0
    assert SECRET not in scrape.text
    assert exporter.get("/").status == 200

    exporter.stop()
    output = exporter.output()
    assert SECRET not in output
    assert "redis://:***@127.0.0.1" in output  # the URL is shown, masked


def test_bad_broker_url_is_a_one_line_error_without_the_password() -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CELERY_VITALS_")}
    result = subprocess.run(
        [
            venv_executable("celery-vitals"),
            "serve",
            "--broker-url",
            f"redis://:{SECRET}@h:notaport/0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO_ROOT,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "--broker-url" in lines[0]
    assert SECRET not in result.stderr
    assert "Traceback" not in result.stderr
