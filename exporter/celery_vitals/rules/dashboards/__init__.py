"""The celery-vitals Grafana dashboards, built with Grafana's Python SDK.

``render(config)`` is what ``celery-vitals dashboards`` writes: file name ->
JSON text, one per dashboard; with the default RulesConfig they are the
shipped ``dashboards/*.json``. Every panel queries the ``datasource``
variable (no ``__inputs``/``${DS_...}``, which break file provisioning),
filters by the broker, queue, task and worker variables, and uses
``$__rate_interval`` in every rate() and increase(); ``promql.scope`` adds
the config's selector to every series of every query. ``broker`` (the label
the exporter and the agents put on every series) identifies a Celery cluster
whatever jobs Prometheus scrapes them in; Prometheus' own ``up`` has no such
label and gets it from a join on (job, instance). Panel ids are written
here by hand so that links to a panel (``viewPanel=``) stay valid when panels
are added. Colour steps of panels an alert watches are the alert's
thresholds. A panel whose metric one setup cannot fill (the agent setup has
no event stream, the exporter alone no agent) says so in its noValue text and
description instead of "No data" (``Empty``). Output is deterministic: sorted
keys, fixed ids.

Metric names come from the exporter's catalogue (``celery_vitals.catalogue``);
the one recorded series used, ``hostname:celery_worker_down:bool``, is
CeleryWorkerDown's own condition (``rules.alerts``). tests/dashboards checks
every query against them and runs every query through a real Prometheus, in
both setups.

panels      the panel model (Panel, Query, Empty, Link, Row, Board) and its SDK rendering
queries     the PromQL: the variables' matchers, rates, quantiles, shared queries
shared      help texts, what a setup cannot show, alert thresholds as colour steps
templating  the variables, annotations and links around every board's panels
overview, tasks, queues, workers, slow
            one module per dashboard, each with ``board(config)``
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model

from celery_vitals.rules import promql
from celery_vitals.rules.config import RulesConfig
from celery_vitals.rules.dashboards import overview, queues, slow, tasks, workers
from celery_vitals.rules.dashboards.panels import Board, Empty, render_panel
from celery_vitals.rules.dashboards.shared import (
    NO_AGENT,
    NO_BEAT,
    NO_EVENT_STREAM,
    NO_PUBLICATION_TIME,
    NO_QUEUE_WAIT,
    RABBITMQ_ONLY,
)
from celery_vitals.rules.dashboards.templating import annotation_queries, dashboards_link, variables

__all__ = [
    "BOARDS",
    "NO_AGENT",
    "NO_BEAT",
    "NO_EVENT_STREAM",
    "NO_PUBLICATION_TIME",
    "NO_QUEUE_WAIT",
    "RABBITMQ_ONLY",
    "Empty",
    "build",
    "build_dashboard",
    "dumps",
    "render",
]

BOARDS = (overview.board, tasks.board, queues.board, workers.board, slow.board)


def build_dashboard(board: Board, selector: str) -> builders.Dashboard:
    """The SDK builder for one dashboard."""
    dashboard = (
        builders.Dashboard(board.title)
        .uid(board.uid)
        .description(board.description)
        .tags(list(board.tags))
        .editable()
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .timepicker(
            builders.TimePicker().refresh_intervals(["10s", "30s", "1m", "5m", "15m", "1h"])
        )
        .variables(variables(selector))
        .annotations(annotation_queries(selector))
        .link(dashboards_link())
    )
    for row in board.rows:
        dashboard = dashboard.with_row(builders.Row(row.title).id(row.id))
        for panel in row.panels:
            dashboard = dashboard.with_panel(render_panel(panel))
    return dashboard


def _scoped(board: Board, selector: str) -> Board:
    """``board`` with ``selector`` in every series of every panel query."""
    rows = tuple(
        replace(
            row,
            panels=tuple(
                replace(
                    panel,
                    queries=tuple(
                        replace(query, expr=promql.scope(query.expr, selector))
                        for query in panel.queries
                    ),
                )
                for panel in row.panels
            ),
        )
        for row in board.rows
    )
    return replace(board, rows=rows)


def build(c: RulesConfig) -> dict[str, dict[str, Any]]:
    """Every dashboard as plain JSON data, by uid."""
    result: dict[str, dict[str, Any]] = {}
    for make in BOARDS:
        board = _scoped(make(c), c.selector)
        result[board.uid] = json.loads(
            json.dumps(build_dashboard(board, c.selector).build(), cls=JSONEncoder)
        )
    return result


def dumps(dashboard: dict[str, Any]) -> str:
    """The committed form: sorted keys, two-space indent, trailing newline."""
    return json.dumps(dashboard, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render(c: RulesConfig) -> dict[str, str]:
    """File name -> content for every dashboard."""
    return {f"{uid}.json": dumps(data) for uid, data in build(c).items()}
