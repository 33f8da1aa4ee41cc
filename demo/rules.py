"""The demo's rules: the shipped rules with demo/rules-overrides.yml applied.

``generate`` writes them; ``shortened`` says what the overrides changed, for
the demo to print. The overrides file has the format of ``celery-vitals rules
--config``: ``thresholds`` (names of THRESHOLDS in alerts/build.py) and
``for`` (alert name -> Prometheus duration).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from alerts import build

OVERRIDES = Path(__file__).resolve().parent / "rules-overrides.yml"


def load_overrides(path: Path = OVERRIDES) -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {"thresholds": dict(data.get("thresholds") or {}), "for": dict(data.get("for") or {})}


def shipped_for() -> dict[str, str]:
    """Alert name -> its ``for:`` in the shipped rules (both severities share one)."""
    return {alert.name: alert.for_ for alert in build.alerting_rules()}


def shortened(path: Path = OVERRIDES) -> list[str]:
    """One line per override: name, the demo's value and the shipped one."""
    overrides = load_overrides(path)
    lines = [
        f"{key} {value} (shipped {build.value(key)})"
        for key, value in overrides["thresholds"].items()
    ]
    shipped = shipped_for()
    lines += [
        f"{name} for: {duration} (shipped {shipped[name]})"
        for name, duration in overrides["for"].items()
    ]
    return lines


def generate(output: Path, config: Path = OVERRIDES) -> None:
    """INTERIM until `celery-vitals rules` lands on main (branch `rules`): then this
    becomes ``celery-vitals rules --config CONFIG --output OUTPUT``.

    Builds the rules with alerts/build.py's THRESHOLDS overridden, then sets
    the overridden ``for:`` durations.
    """
    overrides = load_overrides(config)
    unknown = [name for name in overrides["thresholds"] if name not in build.THRESHOLDS]
    unknown += [name for name in overrides["for"] if name not in shipped_for()]
    if unknown:
        raise ValueError(f"{config}: unknown thresholds or alerts: {', '.join(unknown)}")
    saved = dict(build.THRESHOLDS)
    try:
        for name, value in overrides["thresholds"].items():
            build.THRESHOLDS[name] = dataclasses.replace(build.THRESHOLDS[name], value=value)
        rules = yaml.safe_load(build.render_rules())
    finally:
        build.THRESHOLDS.clear()
        build.THRESHOLDS.update(saved)
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") in overrides["for"]:
                rule["for"] = overrides["for"][rule["alert"]]
    output.write_text(json.dumps(rules, indent=1) + "\n", encoding="utf-8")
