"""The alert rules with their windows shortened, and their expressions evaluated by a real
Prometheus: what the end-to-end alert tests (tests/alerts) check an incident against."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from stack.prometheus import Labels, PrometheusServer
from tests.support.rules import alerts

#: The exporter's --broker-name: the label every series carries, and the alerts too
BROKER = "e2e"
#: Every duration of the rule file -> the one used here.
WINDOWS = {
    "5m": "45s",
    "10m": "20s",
    "15m": "60s",
    "30m": "60s",
    "1h": "60s",
    "6h": "20s",
    "1d": "20m",
}
DURATION = re.compile(r"(\[|offset )(\d+[smhdwy])")
SETTLE = 40.0  # longest wait for an expression to give the expected answer


def shortened(text: str) -> str:
    """The rule file with each window replaced as WINDOWS says; every window must be there."""

    def replace(match: re.Match[str]) -> str:
        window = match.group(2)
        assert window in WINDOWS, f"add {window} to WINDOWS"
        return match.group(1) + WINDOWS[window]

    return DURATION.sub(replace, text)


def labels(**values: str) -> Labels:
    """An alert's labels: the broker's (BROKER unless given), and ``values``."""
    return frozenset({"broker": BROKER, **values}.items())


class Expressions:
    """Alert expressions of the shortened rule file, evaluated by a real Prometheus."""

    def __init__(self, prometheus: PrometheusServer, rules_path: Path) -> None:
        self.prometheus = prometheus
        self.exprs = {
            (rule.name, rule.labels["severity"]): rule.expr for rule in alerts(rules_path)
        }
        self.names = {name for name, _ in self.exprs}

    def expr(self, alert: str, severity: str | None = None) -> str:
        found = [
            expr
            for (name, sev), expr in self.exprs.items()
            if name == alert and severity in (None, sev)
        ]
        assert len(found) == 1, f"{alert} {severity}: {len(found)} rules"
        return found[0]

    def fires(
        self, alert: str, *expected: Labels, severity: str | None = None, timeout: float = SETTLE
    ) -> None:
        """Waits until the alert's expression returns exactly ``expected`` label sets."""
        self.prometheus.wait_for(
            self.expr(alert, severity),
            set(expected),
            timeout=timeout,
            what=f"{alert} {severity or ''} to return {len(expected)} series",
        )

    def yielding(self, alert: str, to: str, severity: str) -> str:
        """``alert``'s expression without its last ``unless``: the alert ``to`` (of
        ``severity``) that it yields to; the rest is its own condition."""
        own = self.expr(alert)
        yielded = textwrap.indent(self.expr(to, severity), "  ")
        suffix = f"\nunless on (broker) (\n{yielded}\n)"
        assert own.endswith(suffix), f"{alert} does not yield to {to} ({severity})"
        return own.removesuffix(suffix)

    def quiet(self, *names: str) -> None:
        """Each alert's expression (every severity) returns nothing right now."""
        for (name, severity), expr in self.exprs.items():
            if name in names:
                got = self.prometheus.query(expr)
                assert got == [], f"{name} ({severity}) fires: {got}"
