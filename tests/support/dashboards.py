"""The committed dashboards as data: their panels, their PromQL, and the metric names in it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
UIDS = (
    "celery-vitals-overview",
    "celery-vitals-tasks",
    "celery-vitals-queues",
    "celery-vitals-workers",
    "celery-vitals-slow",
)

# What Grafana substitutes before it sends a query, with values Prometheus accepts.
SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "$broker": ".*",
    "$queue": ".*",
    "$task": ".*",
    "$worker": ".*",
}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_NAME_MATCHER = re.compile(r'__name__\s*=~?\s*"([^"]*)"')
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "Inf",
        "NaN",
        "inf",
        "nan",
    }
)
_LABEL_VALUES = re.compile(r"^label_values\((.+),\s*([A-Za-z_][A-Za-z0-9_]*)\)$")
RANGE = re.compile(r"\[([^\]]*)\]")
RANGE_FUNCTIONS = re.compile(r"\b(rate|irate|increase)\s*\(")


@dataclass(frozen=True)
class Expr:
    """One PromQL expression of a dashboard, and where it is."""

    uid: str
    title: str  # the panel's title, "annotation: NAME" or "variable: NAME"
    ref: str
    expr: str
    no_value: str = ""  # the panel's text for no data (Grafana's "No data" when empty)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.uid, self.title, self.ref)

    def __str__(self) -> str:
        return f"{self.uid} / {self.title} / {self.ref}: {self.expr}"


def load(uid: str) -> dict[str, Any]:
    """A committed dashboard."""
    data: dict[str, Any] = json.loads((DASHBOARDS / f"{uid}.json").read_text(encoding="utf-8"))
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that is not a row, collapsed rows' panels included."""
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def label_values(query: str) -> tuple[str, str]:
    """(series selector, label) of a Grafana ``label_values(selector, label)`` query."""
    match = _LABEL_VALUES.match(query)
    assert match is not None, f"not a label_values(selector, label) query: {query}"
    return match.group(1), match.group(2)


def panel_exprs(uid: str) -> Iterator[Expr]:
    """The PromQL of every panel target and every Prometheus annotation."""
    dashboard = load(uid)
    for panel in panels(dashboard):
        no_value = panel["fieldConfig"]["defaults"].get("noValue", "")
        for target in panel["targets"]:
            yield Expr(uid, panel["title"], target["refId"], target["expr"], no_value)
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            yield Expr(uid, f"annotation: {annotation['name']}", "A", annotation["expr"])


def variable_exprs(uid: str) -> Iterator[Expr]:
    """The series selector of every query variable (the PromQL part of label_values)."""
    for variable in load(uid)["templating"]["list"]:
        if variable["type"] == "query":
            selector, _ = label_values(variable["query"])
            yield Expr(uid, f"variable: {variable['name']}", "A", selector)


def all_exprs() -> list[Expr]:
    """Every expression of every dashboard: panels, annotations, variables."""
    return [expr for uid in UIDS for expr in (*panel_exprs(uid), *variable_exprs(uid))]


def substitute(expr: str, **values: str) -> str:
    """The query as Grafana would send it with every variable at All (``values``: a
    variable's value instead, by name without the $)."""
    substitutions = SUBSTITUTIONS | {f"${name}": value for name, value in values.items()}
    for variable in sorted(substitutions, key=len, reverse=True):  # $__range after $__rate...
        expr = expr.replace(variable, substitutions[variable])
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def regex_all(values: list[str]) -> str:
    """A multi-value variable at All, as Grafana's Prometheus data source writes it inside
    a regex matcher's string: each value regex-escaped, the escapes doubled for PromQL."""
    escaped = [re.escape(value).replace("\\", "\\\\") for value in sorted(values)]
    return "(" + "|".join(escaped) + ")"


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (``__name__`` matchers included).

    Strings, label matchers, ranges, offsets and by/on label lists go first;
    what remains are functions (followed by "("), keywords, numbers and
    metric names.
    """
    names = {name for pattern in _NAME_MATCHER.findall(expr) for name in pattern.split("|")}
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = RANGE.sub(" ", text)
    text = re.sub(r"\boffset\s+-?[$\w]+", " ", text)
    text = _LABEL_LIST.sub(" ", text)
    for match in _IDENTIFIER.finditer(text):
        before = text[match.start() - 1] if match.start() else " "
        after = text[match.end() :].lstrip()[:1]
        if before.isdigit() or before == "." or after == "(" or match.group() in _KEYWORDS:
            continue  # a number's exponent, a function, an operator keyword
        names.add(match.group())
    return names


def range_function_arguments(expr: str) -> list[str]:
    """The metric names rate(), irate() and increase() are applied to."""
    found = []
    for match in RANGE_FUNCTIONS.finditer(expr):
        depth, start = 1, match.end()
        end = start
        while depth:
            depth += {"(": 1, ")": -1}.get(expr[end], 0)
            end += 1
        found.extend(sorted(metric_names(expr[start : end - 1])))
    return found
