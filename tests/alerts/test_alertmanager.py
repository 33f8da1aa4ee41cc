"""deploy/alertmanager.yml: valid for amtool, routes by severity, and its inhibitions hold
in a real Alertmanager (Debian's prometheus-alertmanager) fed the alerts of each incident."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stack.alertmanager import AlertmanagerServer
from stack.net import wait_until
from tests.support import tools
from tests.support.rules import ALERTMANAGER_CONFIG, alert_names

JOB = "celery-vitals"
BROKER = "redis://redis:6379/0"


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tools.require_tool("amtool", tools.AMTOOL), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_amtool_check_config() -> None:
    result = amtool("check-config", str(ALERTMANAGER_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert " - 6 inhibit rules" in result.stdout
    assert " - 3 receivers" in result.stdout


@pytest.mark.parametrize(
    ("severity", "receiver"), [("critical", "page"), ("warning", "ticket"), ("info", "null")]
)
def test_routes_by_severity(severity: str, receiver: str) -> None:
    result = amtool(
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_CONFIG}",
        "alertname=CeleryQueueNotDraining",
        f"severity={severity}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def test_inhibitions_name_real_alerts() -> None:
    """Every alert name an inhibition matches exists in the rule file."""
    text = ALERTMANAGER_CONFIG.read_text(encoding="utf-8")
    for matcher in (line for line in text.splitlines() if "alertname=" in line):
        pattern = matcher.split("alertname=", 1)[1].lstrip("~").strip("\"']")
        for name in pattern.split("|"):
            if not name.endswith(".*"):
                assert name in alert_names(), name


class Alertmanager(AlertmanagerServer):
    """deploy/alertmanager.yml in a real Alertmanager; alerts posted for the job JOB and the
    broker BROKER (the label the inhibitions match on)."""

    def post(self, *alerts: dict[str, str]) -> None:
        super().post(*({"job": JOB, "broker": BROKER, **labels} for labels in alerts))

    def states(self, key: Callable[[dict[str, str]], str]) -> dict[str, str]:
        """key(labels) -> active | suppressed, for every alert it holds."""
        return {key(alert["labels"]): alert["status"]["state"] for alert in self.alerts()}


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Alertmanager]:
    manager = Alertmanager(tmp_path, ALERTMANAGER_CONFIG)
    try:
        yield manager.start()
    finally:
        manager.stop()


def _by_subject(labels: dict[str, str]) -> str:
    """alertname/what it is about: the queue, else the task, else its severity."""
    subject = labels.get("queue_name") or labels.get("name") or labels["severity"]
    return f"{labels['alertname']}/{subject}"


def _settled(
    manager: Alertmanager,
    expected: dict[str, str],
    key: Callable[[dict[str, str]], str] = _by_subject,
) -> None:
    """Waits until the alerts' states (by ``key``) are exactly ``expected``."""
    wait_until(
        lambda: manager.states(key) == expected,
        timeout=20,
        interval=0.2,
        what=f"alert states {expected}",
        details=lambda: str(manager.states(key)),
    )


def test_broker_down_silences_queue_alerts(alertmanager: Alertmanager) -> None:
    alertmanager.post(
        {"alertname": "CeleryBrokerDown", "severity": "critical", "instance": "e:9808"},
        {"alertname": "CeleryQueueNotDraining", "severity": "critical", "queue_name": "celery"},
        {
            "alertname": "CeleryExporterEventStreamDown",
            "severity": "critical",
            "instance": "e:9808",
        },
        # not a queue alert: the broker does not explain it
        {
            "alertname": "CeleryTaskFailureRateHigh",
            "severity": "warning",
            "name": "orders.charge",
            "queue_name": "celery",
        },
    )
    _settled(
        alertmanager,
        {
            "CeleryBrokerDown/critical": "active",
            "CeleryQueueNotDraining/celery": "suppressed",
            "CeleryExporterEventStreamDown/critical": "suppressed",
            "CeleryTaskFailureRateHigh/celery": "active",
        },
    )


def test_blind_exporter_silences_absence_based_alerts(alertmanager: Alertmanager) -> None:
    alertmanager.post(
        {
            "alertname": "CeleryWorkerTaskEventsMissing",
            "severity": "critical",
            "hostname": "w1@host",
        },
        {"alertname": "CeleryQueueNoConsumers", "severity": "critical", "queue_name": "billing"},
        {"alertname": "CeleryPeriodicTaskMissed", "severity": "warning", "name": "reports.nightly"},
        # seen, not inferred from silence: stays
        {
            "alertname": "CeleryTaskRetryStorm",
            "severity": "warning",
            "name": "orders.sync",
            "queue_name": "sync",
        },
    )
    _settled(
        alertmanager,
        {
            "CeleryWorkerTaskEventsMissing/critical": "active",
            "CeleryQueueNoConsumers/billing": "suppressed",
            "CeleryPeriodicTaskMissed/reports.nightly": "suppressed",
            "CeleryTaskRetryStorm/sync": "active",
        },
    )


def test_beat_down_silences_the_runs_it_misses(alertmanager: Alertmanager) -> None:
    """celery beat sends nothing: one page for it, not one ticket per periodic task of its
    broker. A task of another broker, whose beat runs, keeps its ticket; a broker outage
    that stalls beat is the broker's page."""
    other = "redis://other:6379/0"
    alertmanager.post(
        {"alertname": "CeleryBeatDown", "severity": "critical", "hostname": "beat@scheduler-1"},
        {"alertname": "CeleryPeriodicTaskMissed", "severity": "warning", "name": "reports.nightly"},
        {"alertname": "CeleryPeriodicTaskMissed", "severity": "warning", "name": "orders.sync"},
    )
    # posted as they are: another broker's missed run
    AlertmanagerServer.post(
        alertmanager,
        {
            "alertname": "CeleryPeriodicTaskMissed",
            "severity": "warning",
            "name": "billing.close",
            "job": JOB,
            "broker": other,
        },
    )
    _settled(
        alertmanager,
        {
            "CeleryBeatDown/critical": "active",
            "CeleryPeriodicTaskMissed/reports.nightly": "suppressed",
            "CeleryPeriodicTaskMissed/orders.sync": "suppressed",
            "CeleryPeriodicTaskMissed/billing.close": "active",
        },
    )
    alertmanager.post(
        {"alertname": "CeleryBrokerDown", "severity": "critical", "instance": "e:9808"},
    )
    _settled(
        alertmanager,
        {
            "CeleryBrokerDown/critical": "active",
            "CeleryBeatDown/critical": "suppressed",
            "CeleryPeriodicTaskMissed/reports.nightly": "suppressed",
            "CeleryPeriodicTaskMissed/orders.sync": "suppressed",
            "CeleryPeriodicTaskMissed/billing.close": "active",
        },
    )


def test_critical_silences_the_same_warning(alertmanager: Alertmanager) -> None:
    alertmanager.post(
        {
            "alertname": "CeleryTaskFailureRateHigh",
            "severity": "critical",
            "name": "orders.charge",
            "queue_name": "celery",
        },
        {
            "alertname": "CeleryTaskFailureRateHigh",
            "severity": "warning",
            "name": "orders.charge",
            "queue_name": "celery",
        },
        # the same alert for another task is another incident
        {
            "alertname": "CeleryTaskFailureRateHigh",
            "severity": "warning",
            "name": "orders.ship",
            "queue_name": "celery",
        },
    )
    _settled(
        alertmanager,
        {
            "orders.charge/critical": "active",
            "orders.charge/warning": "suppressed",
            "orders.ship/warning": "active",
        },
        key=lambda labels: f"{labels['name']}/{labels['severity']}",
    )


def test_co_symptoms_are_one_page(alertmanager: Alertmanager) -> None:
    """A retry storm silences the retries it exhausts; a queue nobody drains or consumes
    silences its oldest-message alert. Other tasks and queues keep theirs."""
    alertmanager.post(
        {
            "alertname": "CeleryTaskRetryStorm",
            "severity": "warning",
            "name": "orders.sync",
            "queue_name": "celery",
        },
        {
            "alertname": "CeleryTaskRetriesExhausted",
            "severity": "warning",
            "name": "orders.sync",
            "queue_name": "celery",
        },
        {
            "alertname": "CeleryTaskRetriesExhausted",
            "severity": "warning",
            "name": "orders.notify",
            "queue_name": "celery",
        },
        {"alertname": "CeleryQueueNotDraining", "severity": "critical", "queue_name": "reports"},
        {
            "alertname": "CeleryQueueOldestMessageTooOld",
            "severity": "critical",
            "queue_name": "reports",
        },
        {"alertname": "CeleryQueueNoConsumers", "severity": "critical", "queue_name": "billing"},
        {
            "alertname": "CeleryQueueOldestMessageTooOld",
            "severity": "warning",
            "queue_name": "billing",
        },
        {
            "alertname": "CeleryQueueOldestMessageTooOld",
            "severity": "warning",
            "queue_name": "emails",
        },
    )
    _settled(
        alertmanager,
        {
            "CeleryTaskRetryStorm/orders.sync": "active",
            "CeleryTaskRetriesExhausted/orders.sync": "suppressed",
            "CeleryTaskRetriesExhausted/orders.notify": "active",
            "CeleryQueueNotDraining/reports": "active",
            "CeleryQueueOldestMessageTooOld/reports": "suppressed",
            "CeleryQueueNoConsumers/billing": "active",
            "CeleryQueueOldestMessageTooOld/billing": "suppressed",
            "CeleryQueueOldestMessageTooOld/emails": "active",
        },
        key=lambda labels: f"{labels['alertname']}/{labels.get('name') or labels['queue_name']}",
    )


def test_exhausted_retries_never_hold_back_a_dead_letter_queue(
    alertmanager: Alertmanager,
) -> None:
    """The rule itself drops a DLQ's growth that only tasks with exhausted retries explain
    (task by task, from celery_dlq_messages); a CeleryDeadLetterQueueGrowing that fires is
    news, and no inhibition keyed on the broker alone may hold it back."""
    alertmanager.post(
        {
            "alertname": "CeleryTaskRetriesExhausted",
            "severity": "warning",
            "name": "orders.sync",
            "queue_name": "celery",
        },
        {"alertname": "CeleryDeadLetterQueueGrowing", "severity": "warning", "queue_name": "dead"},
    )
    _settled(
        alertmanager,
        {
            "CeleryTaskRetriesExhausted/celery": "active",
            "CeleryDeadLetterQueueGrowing/dead": "active",
        },
        key=_by_subject,
    )
