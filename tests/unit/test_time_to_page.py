"""The bookkeeping of benchmarks/time_to_page.py: load pacing, the Alertmanager copy,
what counts as one notified alert, Prometheus' ALERTS stretches, bad arguments."""

from __future__ import annotations

import pytest
import yaml
from benchmarks.time_to_page import (
    ALERTMANAGER_CONFIG,
    alertmanager_config,
    due,
    episodes,
    parse_args,
    transitions,
)

from stack.alertmanager import Notification, WebhookReceiver


@pytest.mark.parametrize("rate", [0.5, 1.0, 2.3, 2.6])
def test_due_sends_the_rate_on_average_across_the_onset(rate: float) -> None:
    sent = [due(rate, t) for t in range(-240, 600)]
    assert sum(sent) == round(rate * 840)
    assert set(sent) <= {int(rate), int(rate) + 1}


def test_alertmanager_copy_changes_only_the_webhook_urls() -> None:
    receiver = WebhookReceiver()
    try:
        copy = yaml.safe_load(alertmanager_config(receiver, None))
    finally:
        receiver.stop()
    shipped = yaml.safe_load(ALERTMANAGER_CONFIG.read_text(encoding="utf-8"))
    urls = {r["name"]: [w["url"] for w in r.get("webhook_configs", [])] for r in copy["receivers"]}
    assert urls == {"page": [receiver.url("page")], "ticket": [receiver.url("ticket")], "null": []}
    for entry in shipped["receivers"]:
        for webhook in entry.get("webhook_configs", []):
            webhook["url"] = receiver.url(entry["name"])
    assert copy == shipped
    assert copy["route"]["group_wait"] == "30s"


def test_alertmanager_copy_may_shorten_group_wait() -> None:
    receiver = WebhookReceiver()
    try:
        copy = yaml.safe_load(alertmanager_config(receiver, "5s"))
    finally:
        receiver.stop()
    assert copy["route"]["group_wait"] == "5s"
    assert copy["route"]["group_interval"] == "5m"


def note(at: float, status: str, **labels: str) -> Notification:
    return Notification(
        "ticket", at, status, {"alertname": "A", "severity": "warning", **labels}, "", ""
    )


def test_episodes_keep_the_first_firing_and_the_first_resolve_per_alert() -> None:
    found = episodes(
        [
            note(30, "firing", name="x"),
            note(10, "firing", name="x"),
            note(50, "resolved", name="x"),
            note(70, "resolved", name="x"),
            note(20, "firing", name="y"),
            note(5, "resolved", name="z"),
        ]
    )
    assert [(e["labels"].get("name"), e["firing_at"], e["resolved_at"]) for e in found] == [
        ("z", None, None),
        ("x", 10, 50),
        ("y", 20, None),
    ]


def test_transitions_split_at_gaps_and_keep_only_the_job() -> None:
    series = [
        (
            {"alertname": "A", "alertstate": "firing", "severity": "warning", "broker": "j"},
            [(0.0, 1.0), (15.0, 1.0), (30.0, 1.0), (120.0, 1.0)],
        ),
        ({"alertname": "B", "alertstate": "pending", "broker": "other"}, [(0.0, 1.0)]),
    ]
    assert transitions(series, "j", 15.0) == [
        {"alertname": "A", "state": "firing", "severity": "warning", "from": 0.0, "to": 30.0},
        {"alertname": "A", "state": "firing", "severity": "warning", "from": 120.0, "to": 120.0},
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--incidents", "failure-burst,typo"], "unknown incidents typo"),
        (["--minutes", "0"], "--minutes above 0"),
        (["--interval", "fast"], "--interval takes a duration"),
    ],
)
def test_bad_arguments_are_named(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
