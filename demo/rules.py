"""The demo's rules: ``celery-vitals rules`` with demo/rules-overrides.yml.

``generate`` writes them; ``shortened`` says what the overrides changed, for
the demo to print.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from celery_vitals.rules import alerts
from celery_vitals.rules.config import THRESHOLDS, RulesConfig, number_text
from stack.processes import venv_executable

OVERRIDES = Path(__file__).resolve().parent / "rules-overrides.yml"


def generate(output: Path, config: Path = OVERRIDES) -> None:
    """celery-vitals rules --config CONFIG --output OUTPUT; ValueError with its message."""
    result = subprocess.run(
        [
            venv_executable("celery-vitals"),
            "rules",
            "--config",
            str(config),
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise ValueError(f"celery-vitals rules --config {config}: {result.stderr.strip()}")


def _shipped(key: str) -> str:
    value = THRESHOLDS[key].value
    return value if isinstance(value, str) else number_text(value)


def shortened(config: Path = OVERRIDES) -> list[str]:
    """One line per override: name, the demo's value and the shipped one."""
    overrides = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    shipped_for = {alert.name: alert.for_ for alert in alerts.alerting_rules(RulesConfig())}
    lines = [
        f"{key} {value} (shipped {_shipped(key)})"
        for key, value in (overrides.get("thresholds") or {}).items()
    ]
    lines += [
        f"{name} for: {duration} (shipped {shipped_for[name]})"
        for name, duration in (overrides.get("for") or {}).items()
    ]
    return lines
