"""The demo's settings, rules and receiver, without starting it."""

from __future__ import annotations

import json
import subprocess
import sys
from http.client import HTTPConnection
from pathlib import Path

import pytest
import yaml
from demo.run import alertmanager_config
from demo.timeline import INCIDENTS, schedule

from demo import receiver, rules
from stack.processes import REPO_ROOT
from tests.support.rules import alerts

VALID = "valid names: task-failing, retry-storm, not-registered, no-consumers, worker-killed"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DEMO_INCIDENTS", "task-failing,oom", f"DEMO_INCIDENTS: unknown incident 'oom'; {VALID}"),
        ("DEMO_INCIDENTS", ",", f"DEMO_INCIDENTS: unknown incident '', ''; {VALID}"),
        ("DEMO_QUIET", "yes", "DEMO_QUIET='yes': use 1 (just the exporter) or 0"),
        ("DEMO_MINUTE_SECONDS", "0", "DEMO_MINUTE_SECONDS='0': a number above 0 (default 60)"),
        ("DEMO_RATE", "fast", "DEMO_RATE='fast': a number above 0 (default 10)"),
    ],
)
def test_bad_variable_is_one_line_and_exit_2(variable: str, value: str, message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "demo"],
        env={variable: value},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"demo: {message}\n")


def test_full_timeline_has_every_incident_within_fifteen_minutes() -> None:
    slots = schedule(list(INCIDENTS.values()), warm_up=True)
    assert [(s.incident.name, s.begins, s.ends) for s in slots] == [
        ("task-failing", 1.0, 3.0),
        ("retry-storm", 4.0, 6.0),
        ("not-registered", 7.0, 8.0),
        ("no-consumers", 9.0, 11.0),
        ("worker-killed", 12.0, 13.0),
    ]
    chosen = schedule([INCIDENTS["worker-killed"], INCIDENTS["task-failing"]], warm_up=False)
    assert [(s.begins, s.ends) for s in chosen] == [(0.0, 1.0), (1.0, 3.0)]


def test_demo_rules_shorten_only_what_the_overrides_say(tmp_path: Path) -> None:
    path = tmp_path / "rules.yml"
    rules.generate(path)
    subprocess.run(["promtool", "check", "rules", str(path)], check=True, capture_output=True)
    demo = {(rule.name, rule.labels["severity"]): rule.raw["for"] for rule in alerts(path)}
    shipped = {(rule.name, rule.labels["severity"]): rule.raw["for"] for rule in alerts()}
    changed = {key: value for key, value in demo.items() if shipped[key] != value}
    assert changed == {
        ("CeleryTaskFailureRateHigh", "warning"): "30s",
        ("CeleryTaskFailureRateHigh", "critical"): "30s",
        ("CeleryTaskRetryStorm", "warning"): "30s",
        ("CeleryTaskNotRegistered", "warning"): "15s",
        ("CeleryQueueNoConsumers", "critical"): "30s",
        ("CeleryWorkerPoolProcessKilled", "warning"): "15s",
        ("CeleryTaskWorkerLost", "warning"): "15s",
    }
    text = path.read_text(encoding="utf-8")
    assert "rate5m" not in text and "[15m]" not in text and "rate1m" in text and "[2m]" in text
    intended = {alert for incident in INCIDENTS.values() for alert in incident.alerts}
    assert intended <= {f"{name}/{severity}" for name, severity in demo}


def test_alertmanager_copy_sends_both_receivers_to_the_receiver() -> None:
    config = yaml.safe_load(alertmanager_config("http://127.0.0.1:1234"))
    urls = {
        r["name"]: [w["url"] for w in r.get("webhook_configs", [])] for r in config["receivers"]
    }
    assert urls == {
        "page": ["http://127.0.0.1:1234/page"],
        "ticket": ["http://127.0.0.1:1234/ticket"],
        "null": [],
    }
    assert (config["route"]["group_wait"], config["route"]["group_interval"]) == ("5s", "15s")
    shipped = yaml.safe_load((REPO_ROOT / "deploy" / "alertmanager.yml").read_text())
    assert config["route"]["routes"] == shipped["route"]["routes"]
    assert config["inhibit_rules"] == shipped["inhibit_rules"]


def _post(port: int, body: bytes) -> int:
    connection = HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("POST", "/page", body, {"Content-Type": "application/json"})
        return connection.getresponse().status
    finally:
        connection.close()


def test_receiver_prints_each_alert_and_refuses_garbage(capsys: pytest.CaptureFixture[str]) -> None:
    server = receiver.serve("127.0.0.1", 0)
    try:
        alert = {
            "status": "resolved",
            "labels": {
                "alertname": "CeleryQueueNoConsumers",
                "severity": "critical",
                "queue_name": "reports",
                "job": "celery-vitals",
            },
            "annotations": {
                "summary": "A Celery queue has messages and no consumer.",
                "runbook_url": "https://x/runbooks.md#celeryqueuenoconsumers",
            },
        }
        assert (
            _post(
                server.server_port,
                json.dumps({"receiver": "page", "status": "resolved", "alerts": [alert]}).encode(),
            )
            == 200
        )
        assert _post(server.server_port, b"\xff not json") == 400
        assert _post(server.server_port, b'{"alerts": 5}') == 400
    finally:
        server.shutdown()
        server.server_close()
    lines = [line.split("] ", 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert lines == [
        "PAGE RESOLVED: critical CeleryQueueNoConsumers queue=reports  (incident no-consumers)",
        "    A Celery queue has messages and no consumer.",
        "    runbook: https://x/runbooks.md#celeryqueuenoconsumers",
        "receiver: ignored a notification that is not Alertmanager's webhook JSON",
        "receiver: ignored a notification that is not Alertmanager's webhook JSON",
    ]
