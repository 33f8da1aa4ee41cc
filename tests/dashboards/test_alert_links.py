"""Alerts and dashboards agree: each dashboard_url opens a dashboard with the variables it sets."""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from tests.support.dashboards import UIDS, load

ALERTS = Path(__file__).resolve().parents[2] / "alerts"
DASHBOARD_PATH = re.compile(r"/d/(?P<uid>[A-Za-z0-9_-]+)/?(?:[A-Za-z0-9_-]+)?(?:\?(?P<query>.*))?$")


def _alerting_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for path in sorted(ALERTS.glob("*.yml")):
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        for group in document["groups"]:
            rules.extend(rule for rule in group["rules"] if "alert" in rule)
    return rules


def test_alert_names_are_what_the_alerts_panels_select() -> None:
    """The overview's ALERTS panels select alertname=~"Celery.*"."""
    names = [rule["alert"] for rule in _alerting_rules()]
    assert names, f"no alerting rules in {ALERTS}/*.yml"
    assert [name for name in names if not re.fullmatch(r"Celery[A-Z]\w*", name)] == []


def test_every_dashboard_url_opens_a_dashboard_with_its_variables() -> None:
    variables = {
        uid: {variable["name"] for variable in load(uid)["templating"]["list"]} for uid in UIDS
    }
    linked = 0
    for rule in _alerting_rules():
        url = rule.get("annotations", {}).get("dashboard_url")
        if url is None:
            continue
        linked += 1
        match = DASHBOARD_PATH.search(url)
        assert match is not None and match.group("uid") in UIDS, (rule["alert"], url)
        # the values are alert templates ({{ $labels.x | urlquery }}): only the names matter
        names = {name for name, _ in urllib.parse.parse_qsl(match.group("query") or "")}
        wanted = {name.removeprefix("var-") for name in names if name.startswith("var-")}
        assert wanted <= variables[match.group("uid")], (rule["alert"], url)
    assert linked > 0
