"""The committed rule file and the promtool test files, as data for the alert tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
ALERTS_DIR = REPO / "alerts"
RULES_PATH = ALERTS_DIR / "celery-vitals.rules.yml"
PROMTOOL_TESTS = sorted((ALERTS_DIR / "tests").glob("*.yml"))
RUNBOOKS_PATH = REPO / "docs" / "runbooks.md"
ALERTMANAGER_CONFIG = REPO / "deploy" / "alertmanager.yml"


@dataclass(frozen=True)
class Rule:
    """One rule of the rule file: recording (``record``) or alerting (``alert``)."""

    group: str
    raw: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.raw.get("alert") or self.raw["record"])

    @property
    def is_alert(self) -> bool:
        return "alert" in self.raw

    @property
    def expr(self) -> str:
        return str(self.raw["expr"])

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.raw.get("labels", {}))

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.raw.get("annotations", {}))


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rules(path: Path = RULES_PATH) -> list[Rule]:
    return [
        Rule(group["name"], rule) for group in load_yaml(path)["groups"] for rule in group["rules"]
    ]


def alerts(path: Path = RULES_PATH) -> list[Rule]:
    return [rule for rule in rules(path) if rule.is_alert]


def alert_names(path: Path = RULES_PATH) -> set[str]:
    return {rule.name for rule in alerts(path)}
