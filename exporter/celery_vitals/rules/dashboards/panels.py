"""The panel model and its rendering with Grafana's SDK: what a panel shows (``Panel``, its
``Query`` targets, its ``Empty`` text, its ``Link``s), rows and boards of them, and
``render_panel``, which turns one into an SDK builder."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.cog import builder as cog
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import prometheus as prometheus_model

from celery_vitals.rules.promql import TASKS

TAG = "celery-vitals"
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")


@dataclass(frozen=True)
class Query:
    """One PromQL target; ``instant`` for tables."""

    expr: str
    legend: str = ""
    instant: bool = False


@dataclass(frozen=True)
class Empty:
    """Why a panel can have no data at all in a setup that works: Grafana shows ``text``
    instead of "No data", and the description ends with ``why``."""

    text: str
    why: str = ""


@dataclass(frozen=True)
class Link:
    """A link from a panel to another dashboard (time range and variables kept)."""

    title: str
    uid: str


@dataclass(frozen=True)
class Column:
    """A table column of its own query (a table of several instant queries, merged on their
    labels): the query's values under ``title``, in ``unit``; ``flag``: 1/0 as ``flag``'s
    two words, the first in red (e.g. ("LATE", "on time"))."""

    title: str
    unit: str
    flag: tuple[str, str] | None = None


@dataclass(frozen=True)
class Panel:
    """What a panel shows; ``render`` turns it into an SDK builder."""

    id: int
    kind: str  # timeseries, stat, table, state-timeline
    title: str
    unit: str
    queries: tuple[Query, ...]
    description: str = ""
    width: int = 12
    height: int = 8
    links: tuple[Link, ...] = ()
    task_link: bool = False  # data link: a series' task -> the Tasks dashboard for it
    thresholds: tuple[tuple[float, str], ...] = ()
    up_down: bool = False  # 1/0 as UP/DOWN
    min: float | None = None
    stack: bool = False
    empty: Empty | None = None
    runbook_url: str = ""  # a panel link to the runbook section that explains it
    named: bool = False  # stat: each value under its series' name
    columns: tuple[Column, ...] = ()  # table: one per query, rows merged on their labels
    sort_by: str = ""  # table: the column sorted by at first (descending)


@dataclass(frozen=True)
class Row:
    """A row header and the panels below it."""

    id: int
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Board:
    """One dashboard: uid, title, rows."""

    uid: str
    title: str
    description: str
    rows: tuple[Row, ...]
    tags: tuple[str, ...] = field(default=(TAG, "celery"))


def ts(pid: int, title: str, unit: str, *queries: Query, **options: Any) -> Panel:
    """A time series panel."""
    return Panel(pid, "timeseries", title, unit, queries, **options)


def single(pid: int, title: str, unit: str, *queries: Query, **options: Any) -> Panel:
    """A stat panel (a number, coloured by thresholds)."""
    options.setdefault("width", 4)
    options.setdefault("height", 4)
    return Panel(pid, "stat", title, unit, queries, **options)


# Each panel type has its own SDK builder class, with the same common methods.
PanelBuilder = timeseries.Panel | stat.Panel | table.Panel | statetimeline.Panel


def _target(query: Query, ref: str) -> prometheus.Dataquery:
    target = (
        prometheus.Dataquery()
        .expr(query.expr)
        .ref_id(ref)
        .datasource(DATASOURCE)
        .legend_format(query.legend or "__auto")
    )
    if query.instant:
        target = target.instant().format(prometheus_model.PromQueryFormat.TABLE)
    return target


def _dashboard_url(uid: str) -> str:
    return f"/d/{uid}?${{__url_time_range}}&${{__all_variables}}"


def _kind_builder(panel: Panel) -> PanelBuilder:
    if panel.kind == "timeseries":
        series = (
            timeseries.Panel()
            .legend(
                common_builders.VizLegendOptions()
                .display_mode(common.LegendDisplayMode.TABLE)
                .placement(
                    common.LegendPlacement.RIGHT
                    if panel.width > 12
                    else common.LegendPlacement.BOTTOM
                )
                .show_legend(True)
                .calcs(["mean", "max", "lastNotNull"])
            )
            .tooltip(
                common_builders.VizTooltipOptions()
                .mode(common.TooltipDisplayMode.MULTI)
                .sort(common.SortOrder.DESCENDING)
            )
            .fill_opacity(10)
            .line_width(1)
            .show_points(common.VisibilityMode.NEVER)
        )
        if panel.stack:
            series = series.stacking(
                common_builders.StackingConfig().mode(common.StackingMode.NORMAL)
            )
        return series
    if panel.kind == "stat":
        return (
            stat.Panel()
            .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
            .graph_mode(common.BigValueGraphMode.AREA)
            .color_mode(common.BigValueColorMode.BACKGROUND)
        )
    if panel.kind == "table":
        return _table(panel)
    if panel.kind == "state-timeline":
        return (
            statetimeline.Panel()
            .show_value(common.VisibilityMode.NEVER)
            .merge_values(True)
            .fill_opacity(80)
        )
    raise ValueError(f"unknown panel kind {panel.kind!r}")


def _flag(words: tuple[str, str]) -> model.ValueMap:
    return model.ValueMap(
        {
            "1": model.ValueMappingResult(text=words[0], color="red", index=0),
            "0": model.ValueMappingResult(text=words[1], color="green", index=1),
        }
    )


def _table(panel: Panel) -> table.Panel:
    """A table; with ``columns``, the queries' rows merged on their labels, each query's
    value a column of its own title, unit and value mapping."""
    organize: dict[str, Any] = {"excludeByName": {"Time": True}}
    builder = table.Panel()
    if panel.columns:
        refs = [f"Value #{chr(ord('A') + number)}" for number in range(len(panel.columns))]
        builder = builder.with_transformation(
            model.DataTransformerConfig(id_val="merge", options={})
        )
        organize["renameByName"] = {
            ref: column.title for ref, column in zip(refs, panel.columns, strict=True)
        }
        for column in panel.columns:
            properties = [model.DynamicConfigValue(id_val="unit", value=column.unit)]
            if column.flag is not None:
                properties += [
                    model.DynamicConfigValue(id_val="mappings", value=[_flag(column.flag)]),
                    model.DynamicConfigValue(
                        id_val="custom.cellOptions", value={"type": "color-text"}
                    ),
                ]
            builder = builder.override_by_name(column.title, properties)
    builder = builder.with_transformation(
        model.DataTransformerConfig(id_val="organize", options=organize)
    )
    if panel.sort_by:
        builder = builder.sort_by(
            [common_builders.TableSortByFieldState().display_name(panel.sort_by).desc(True)]
        )
    return builder


def render_panel(panel: Panel) -> PanelBuilder:
    """The SDK builder for ``panel``."""
    builder = (
        _kind_builder(panel)
        .id(panel.id)
        .title(panel.title)
        .datasource(DATASOURCE)
        .unit(panel.unit)
        .span(panel.width)
        .height(panel.height)
    )
    why = panel.empty.why if panel.empty is not None else ""
    description = " ".join(part for part in (panel.description, why) if part)
    if description:
        builder = builder.description(description)
    if panel.empty is not None:
        builder = builder.no_value(panel.empty.text)
    if panel.named and isinstance(builder, stat.Panel):
        builder = builder.text_mode(common.BigValueTextMode.VALUE_AND_NAME)
    for number, query in enumerate(panel.queries):
        builder = builder.with_target(_target(query, chr(ord("A") + number)))
    if panel.min is not None:
        builder = builder.min(panel.min)
    # The SDK has one link type for dashboard and panel links; Grafana reads
    # title/url/targetBlank of a panel link and ignores the other fields.
    links: list[cog.Builder[model.DashboardLink]] = [
        builders.DashboardLink(link.title)
        .type(model.DashboardLinkType.LINK)
        .url(_dashboard_url(link.uid))
        for link in panel.links
    ]
    if panel.runbook_url:
        links.append(
            builders.DashboardLink("Runbook")
            .type(model.DashboardLinkType.LINK)
            .url(panel.runbook_url)
            .target_blank(True)
        )
    if links:
        builder = builder.links(links)
    if panel.task_link:
        builder = builder.data_links(
            [
                builders.DashboardLink("Tasks dashboard for ${__field.labels.name}")
                .type(model.DashboardLinkType.LINK)
                .url(
                    f"/d/{TASKS}?${{__url_time_range}}&${{datasource:queryparam}}"
                    "&${broker:queryparam}&var-task=${__field.labels.name}"
                )
            ]
        )
    steps = [model.Threshold(None, "green")]
    steps += [model.Threshold(value, color) for value, color in panel.thresholds]
    builder = builder.thresholds(
        builders.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(steps)
    )
    if panel.up_down:
        builder = builder.mappings(
            [
                model.ValueMap(
                    {
                        "0": model.ValueMappingResult(text="DOWN", color="red", index=0),
                        "1": model.ValueMappingResult(text="UP", color="green", index=1),
                    }
                )
            ]
        )
    return builder
