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
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.cog import builder as cog
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import prometheus as prometheus_model

from celery_vitals.rules import promql
from celery_vitals.rules.alerts import WORKER_DOWN
from celery_vitals.rules.config import RulesConfig
from celery_vitals.rules.promql import OVERVIEW, QUEUES, SLOW, TASKS, WORKERS

TAG = "celery-vitals"
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")

# -- PromQL --------------------------------------------------------------------

TASK = 'broker=~"$broker", queue_name=~"$queue", name=~"$task"'
QUEUE = 'broker=~"$broker", queue_name=~"$queue"'
WORKER = 'broker=~"$broker", hostname=~"$worker"'
BROKER = 'broker=~"$broker"'
ALERTS_FIRING = 'ALERTS{alertstate="firing", alertname=~"Celery.*"}'


WINDOW = "$__rate_interval"  # at least four scrapes, whatever the zoom


def _labels(labels: tuple[str, ...]) -> str:
    return ", ".join(labels)


def rate(metric: str, matchers: str) -> str:
    """rate() over ``$__rate_interval``."""
    return f"rate({metric}{{{matchers}}}[{WINDOW}])"


def sum_rate(metric: str, matchers: str, *labels: str) -> str:
    """Per-second rate summed by ``labels`` (everything when none)."""
    return promql.sum_rate(metric, WINDOW, _labels(labels), matchers)


def quantile(q: float, histogram: str, matchers: str, *labels: str) -> str:
    """A quantile of a catalogue histogram over ``$__rate_interval``, by ``labels``."""
    return (
        f"histogram_quantile({q}, sum{promql.by(_labels(('le', *labels)))} "
        f"({rate(histogram + '_bucket', matchers)}))"
    )


def occurrences(metric: str, matchers: str, *labels: str) -> str:
    """Events a counter counted in each ``$__rate_interval`` window (promql.occurrences)."""
    return promql.occurrences(promql.series(metric, matchers), _labels(labels), WINDOW)


def failure_ratio(*labels: str) -> str:
    """failed / (succeeded + failed), by ``labels``: the rules' failure ratio."""
    failed = sum_rate("celery_task_failed_total", TASK, *labels)
    succeeded = sum_rate("celery_task_succeeded_total", TASK, *labels)
    return promql.failure_ratio(failed, succeeded)


def retry_amplification(*labels: str) -> str:
    """Retries per new task: CeleryTaskRetryStorm's definition."""
    return promql.retry_amplification(
        sum_rate("celery_task_retried_total", TASK, *labels),
        sum_rate("celery_task_received_total", TASK, *labels),
    )


# -- panels --------------------------------------------------------------------


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
        return table.Panel().with_transformation(
            model.DataTransformerConfig(
                id_val="organize", options={"excludeByName": {"Time": True}}
            )
        )
    if panel.kind == "state-timeline":
        return (
            statetimeline.Panel()
            .show_value(common.VisibilityMode.NEVER)
            .merge_values(True)
            .fill_opacity(80)
        )
    raise ValueError(f"unknown panel kind {panel.kind!r}")


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


# -- variables, links, annotations ---------------------------------------------------


def _query_variable(
    name: str, label: str, query: str, *, all_value: str | None
) -> builders.QueryVariable:
    variable = (
        builders.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .multi(True)
        .include_all(True)
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .current(model.VariableOption(selected=True, text="All", value="$__all"))
    )
    if all_value is not None:
        variable = variable.all_value(all_value)
    return variable


def _label_values(series: str, label: str, selector: str) -> str:
    """Grafana's label_values() of the scoped ``series``."""
    return f"label_values({promql.scope(series, selector)}, {label})"


def variables(selector: str) -> list[cog.Builder[model.VariableModel]]:
    """datasource, then broker, queue, task and worker, each multi-select with All.

    broker's values are the brokers of the targets that export celery_vitals_build_info
    (the exporters and the agents), its All their list; queue, task and worker use
    ``.*`` for All, which keeps the regex short and also matches series without the
    label.
    """
    queue_metrics = "celery_queue_length|celery_dlq_length|celery_task_received_total"
    return [
        builders.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        _query_variable(
            "broker",
            "Broker",
            _label_values("celery_vitals_build_info", "broker", selector),
            all_value=None,
        ),
        _query_variable(
            "queue",
            "Queue",
            _label_values(f'{{__name__=~"{queue_metrics}", {BROKER}}}', "queue_name", selector),
            all_value=".*",
        ),
        _query_variable(
            "task",
            "Task",
            _label_values(
                f'celery_task_received_total{{{BROKER}, queue_name=~"$queue"}}', "name", selector
            ),
            all_value=".*",
        ),
        _query_variable(
            "worker",
            "Worker",
            _label_values(f"celery_worker_up{{{BROKER}}}", "hostname", selector),
            all_value=".*",
        ),
    ]


def annotation_queries(selector: str) -> list[cog.Builder[model.AnnotationQuery]]:
    """Grafana's own annotations and alerts, and worker (re)starts from the exporter."""
    return [
        builders.AnnotationQuery()
        .name("Annotations & Alerts")
        .built_in(1)
        .enable(True)
        .hide(True)
        .icon_color("rgba(0, 211, 255, 1)")
        .type("dashboard")
        .datasource(model.DataSourceRef(type_val="grafana", uid="-- Grafana --")),
        builders.AnnotationQuery()
        .name("Worker starts")
        .enable(True)
        .hide(False)
        .icon_color("orange")
        .datasource(DATASOURCE)
        .expr(
            promql.scope(
                f"{occurrences('celery_worker_starts_total', WORKER, 'hostname')} > 0", selector
            )
        ),
    ]


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
        .link(
            builders.DashboardLink("Celery dashboards")
            .type(model.DashboardLinkType.DASHBOARDS)
            .tags([TAG])
            .as_dropdown(False)
            .keep_time(True)
            .include_vars(True)
        )
    )
    for row in board.rows:
        dashboard = dashboard.with_row(builders.Row(row.title).id(row.id))
        for panel in row.panels:
            dashboard = dashboard.with_panel(render_panel(panel))
    return dashboard


# -- the dashboards ------------------------------------------------------------------

FAILURE_RATIO_HELP = (
    "failed / (succeeded + failed) over $__rate_interval. Retries are not "
    "failures (see retry amplification); a task that only ever fails shows 100 %."
)
QUEUE_WAIT_HELP = (
    "Time from publication (or ETA) to the start of execution, from "
    "celery_task_queue_wait_seconds. High here but not in runtime: not enough workers."
)
OLDEST_HELP = "Age of the oldest task sent to the queue and not yet received by a worker."
DLQ_HELP = (
    "Messages in the dead-letter queues the exporter polls (--dlq names or globs; on "
    "RabbitMQ also the queues others dead-letter into)."
)
DLQ_INGRESS_HELP = (
    "Messages entering dead-letter queues per second: RabbitMQ's publish counter "
    "with the management API, else depth increases between polls (a lower "
    "bound)."
)
RUNTIME_HELP = "Execution time of successful tasks, from celery_task_runtime_seconds."
PREFETCH_HELP = (
    "Time a worker held a task before starting it (received -> started): high "
    "when long tasks block short ones prefetched behind them; lower "
    "worker_prefetch_multiplier or use -O fair."
)
WORKERS_DOWN_HELP = (
    "Workers CeleryWorkerDown counts as down (its recording rule "
    f"{WORKER_DOWN}, from the shipped rules): offline or silent for the worker timeout, "
    "purged since while their broker has fewer workers up, or a worker whose agent "
    "Prometheus cannot scrape. Needs the rules loaded (without them: 0)."
)
COUNT_HELP = (
    " Counted per $__rate_interval window (a series' first increment included, "
    "which rate() would miss)."
)
STARTS_HELP = (
    "worker-online events per worker: restarts in a loop mean OOM kills, crashes or "
    "max-tasks-per-child recycling."
)

# What a setup that works cannot show (docs/metrics.md, column source): said, not "No data".
NO_EVENT_STREAM = Empty(
    "no event stream (agent setup)",
    "Only the exporter's event stream makes this metric: in the agent setup (`celery-vitals "
    "serve --no-event-stream`, the agents in the workers count tasks and workers) it does "
    "not exist, by design.",
)
NO_TASK_SENT = Empty(
    "no task-sent events (agent setup)",
    "Task-sent events tell when a task was published, and only the exporter's event stream "
    "receives them: empty in the agent setup (`celery-vitals serve --no-event-stream`), and "
    "wherever the publishing app does not set task_send_sent_event=True.",
)
NO_AGENT = Empty(
    "needs the agent in the workers",
    "Only the agent inside the worker (celery_vitals.agent.install) measures this: empty "
    "where the exporter alone watches the workers.",
)
RABBITMQ_ONLY = Empty(
    "RabbitMQ only",
    "Only RabbitMQ counts a queue's consumers: empty on Redis and SQS, which cannot tell.",
)

FAILED = "celery_task_failed_total"
SUCCEEDED = "celery_task_succeeded_total"
RETRIED = "celery_task_retried_total"
DLQ = QUEUE


def percentiles(histogram: str, matchers: str) -> tuple[Query, ...]:
    """p50, p95 and p99 of a histogram, one query each."""
    return tuple(
        Query(quantile(q, histogram, matchers), f"p{int(q * 100)}") for q in (0.5, 0.95, 0.99)
    )


RUNTIME_PERCENTILES = percentiles("celery_task_runtime_seconds", TASK)


def _failure_steps(c: RulesConfig) -> tuple[tuple[float, str], ...]:
    """CeleryTaskFailureRateHigh's warning and critical failure ratios."""
    return (
        (c.number("failure_ratio_warning"), "orange"),
        (c.number("failure_ratio_critical"), "red"),
    )


def _oldest_steps(c: RulesConfig) -> tuple[tuple[float, str], ...]:
    """CeleryQueueOldestMessageTooOld's warning and critical ages."""
    return (
        (c.number("oldest_message_warning"), "orange"),
        (c.number("oldest_message_critical"), "red"),
    )


def _oldest_by_queue(c: RulesConfig, pid: int, **options: Any) -> Panel:
    """The age of each queue's oldest waiting message, coloured at the alert's ages."""
    return ts(
        pid,
        "Oldest waiting message by queue",
        "s",
        Query(
            f"max by (queue_name) (celery_queue_oldest_message_age_seconds{{{QUEUE}}})",
            "{{queue_name}}",
        ),
        description=OLDEST_HELP,
        width=8,
        thresholds=_oldest_steps(c),
        empty=NO_TASK_SENT,
        **options,
    )


def _targets(c: RulesConfig) -> Panel:
    """The celery-vitals targets Prometheus scrapes, by broker: none says why every other
    panel is empty (the broker variable has no value then)."""
    series = promql.scope("celery_vitals_build_info", c.selector)
    return single(
        22,
        "celery-vitals targets by broker",
        "short",
        Query("count by (broker) (celery_vitals_build_info)", "{{broker}}"),
        description="Targets (the exporter and the workers' agents) that export "
        "celery_vitals_build_info, by the broker they watch: the values of the broker "
        "variable. None: Prometheus scrapes no celery-vitals target that the selector "
        "matches, and every other panel is empty (CeleryExporterMissing).",
        width=24,
        height=3,
        named=True,
        empty=Empty(
            f"No celery-vitals target is scraped: Prometheus has no {series}. Check the "
            "scrape configuration and the selector (runbook: CeleryExporterMissing)."
        ),
        runbook_url=f"{c.runbook_url}#celeryexportermissing",
    )


def _exporters_up(c: RulesConfig) -> Query:
    """Prometheus' up of the selected brokers' exporters: the targets that exported
    celery_broker_up within exporter_remembered, as CeleryExporterDown counts them (a target
    that is down exports nothing, so its broker comes from before). up has no broker label
    (promql.scope leaves it alone): the join picks the targets."""
    remembered = c.text("exporter_remembered")
    return Query(
        "min(up and on (job, instance) max by (job, instance) "
        f"(max_over_time(celery_broker_up{{{BROKER}}}[{remembered}])))",
        "up",
    )


def _workers_down() -> Query:
    """How many workers are down, from CeleryWorkerDown's own condition (the recording rule):
    the exporter's view, the workers it purged since, and agents whose target is down (their
    series are gone, so celery_worker_up == 0 cannot count them)."""
    return Query(f"count({WORKER_DOWN}{{{WORKER}}}) or vector(0)", "down")


def overview(c: RulesConfig) -> Board:
    """Is Celery healthy right now?"""
    now = Row(
        100,
        "Right now",
        (
            _targets(c),
            single(
                1,
                "Failure ratio",
                "percentunit",
                Query(failure_ratio(), "failure ratio"),
                description=FAILURE_RATIO_HELP,
                thresholds=_failure_steps(c),
                links=(Link("Tasks", TASKS),),
            ),
            single(
                2,
                "Queue wait p95",
                "s",
                Query(quantile(0.95, "celery_task_queue_wait_seconds", TASK), "p95"),
                description=QUEUE_WAIT_HELP,
                empty=NO_TASK_SENT,
                thresholds=((10, "orange"), (60, "red")),
                links=(Link("Celery is slow", SLOW),),
            ),
            single(
                3,
                "Oldest waiting message",
                "s",
                Query(f"max(celery_queue_oldest_message_age_seconds{{{QUEUE}}})", "oldest"),
                description=OLDEST_HELP,
                thresholds=_oldest_steps(c),
                links=(Link("Queues & DLQ", QUEUES),),
                empty=NO_TASK_SENT,
            ),
            single(
                4,
                "Messages in DLQs",
                "short",
                Query(f"sum(celery_dlq_length{{{DLQ}}})", "dlq"),
                description=DLQ_HELP,
                thresholds=((1, "orange"),),
                links=(Link("Queues & DLQ", QUEUES),),
            ),
            single(
                5,
                "Into DLQs",
                "ops",
                Query(sum_rate("celery_dlq_ingress_total", DLQ), "in"),
                description=DLQ_INGRESS_HELP,
                thresholds=((0.001, "red"),),
                links=(Link("Queues & DLQ", QUEUES),),
            ),
            single(
                6,
                "Celery alerts firing",
                "short",
                Query(f"count({ALERTS_FIRING}) or vector(0)", "firing"),
                description="Alerts named Celery* firing now (Prometheus' ALERTS series).",
                thresholds=((1, "red"),),
            ),
            single(
                7,
                "Workers up",
                "short",
                Query(f"sum(celery_worker_up{{{WORKER}}})", "up"),
                description="Workers sending heartbeats.",
                thresholds=(),
                links=(Link("Workers", WORKERS),),
            ),
            single(
                8,
                "Workers down",
                "short",
                _workers_down(),
                description=WORKERS_DOWN_HELP,
                thresholds=((1, "red"),),
                links=(Link("Workers", WORKERS),),
            ),
            single(
                9,
                "Broker up",
                "short",
                Query(f"min(celery_broker_up{{{BROKER}}})", "broker"),
                description="1 when the exporter's last queue poll reached the broker.",
                up_down=True,
                thresholds=((1, "green"),),
            ),
            single(
                10,
                "Event stream up",
                "short",
                Query(f"min(celery_vitals_event_stream_up{{{BROKER}}})", "stream"),
                description="1 while the exporter's event stream is connected: with 0 every "
                "task and worker metric is frozen.",
                up_down=True,
                links=(Link("Celery is slow (exporter blind spots)", SLOW),),
                empty=NO_EVENT_STREAM,
            ),
            single(
                11,
                "Exporter scraped",
                "short",
                _exporters_up(c),
                description="Prometheus' up for the exporters of the selected brokers, whatever "
                "their job (the targets that exported celery_broker_up within "
                f"{c.text('exporter_remembered')}, as CeleryExporterDown counts them): DOWN "
                "means no queue, dead-letter or broker metrics. A worker's agent that cannot be "
                "scraped counts under Workers down.",
                up_down=True,
            ),
            single(
                12,
                "Event lag",
                "s",
                Query(f"max(celery_vitals_event_lag_seconds{{{BROKER}}})", "lag"),
                description="Exporter receive time minus the newest event's timestamp: a "
                "growing lag means the exporter falls behind (or clocks are skewed).",
                thresholds=((5, "orange"), (30, "red")),
                empty=NO_EVENT_STREAM,
            ),
        ),
    )
    tasks = Row(
        101,
        "Tasks",
        (
            ts(
                13,
                "Failure ratio by task (top 5)",
                "percentunit",
                Query(f"topk(5, {failure_ratio('name')})", "{{name}}"),
                description=FAILURE_RATIO_HELP,
                task_link=True,
                links=(Link("Tasks", TASKS),),
                min=0,
            ),
            ts(
                14,
                "Failures per second by task and exception (top 5)",
                "ops",
                Query(
                    f"topk(5, {sum_rate(FAILED, TASK, 'name', 'exception')})",
                    "{{name}} {{exception}}",
                ),
                description="Failed tasks by exception class: WorkerLostError means OOM kills, "
                "TimeLimitExceeded time limits, NotRegistered a deploy that changed "
                "task names.",
                task_link=True,
                links=(Link("Tasks", TASKS),),
            ),
        ),
    )
    queues = Row(
        102,
        "Queues",
        (
            ts(
                15,
                "Queue wait p95 by queue",
                "s",
                Query(
                    quantile(0.95, "celery_task_queue_wait_seconds", TASK, "queue_name"),
                    "{{queue_name}}",
                ),
                description=QUEUE_WAIT_HELP,
                empty=NO_TASK_SENT,
                width=8,
                links=(Link("Celery is slow", SLOW),),
            ),
            ts(
                16,
                "Messages waiting by queue",
                "short",
                Query(f"sum by (queue_name) (celery_queue_length{{{QUEUE}}})", "{{queue_name}}"),
                description="Messages ready in the broker queue (every priority level).",
                width=8,
                links=(Link("Queues & DLQ", QUEUES),),
            ),
            _oldest_by_queue(c, 17, links=(Link("Queues & DLQ", QUEUES),)),
        ),
    )
    dead = Row(
        103,
        "Dead letters, workers, alerts",
        (
            ts(
                18,
                "Messages in dead-letter queues",
                "short",
                Query(f"sum by (queue_name) (celery_dlq_length{{{DLQ}}})", "{{queue_name}}"),
                description=DLQ_HELP,
                width=6,
                links=(Link("Queues & DLQ", QUEUES),),
            ),
            ts(
                19,
                "Into dead-letter queues per second",
                "ops",
                Query(sum_rate("celery_dlq_ingress_total", DLQ, "queue_name"), "{{queue_name}}"),
                description=DLQ_INGRESS_HELP,
                width=6,
                links=(Link("Queues & DLQ", QUEUES),),
            ),
            ts(
                20,
                "Workers up vs known",
                "short",
                Query(f"sum(celery_worker_up{{{WORKER}}})", "up"),
                Query(
                    f"count(max by (broker, hostname) (celery_worker_up{{{WORKER}}}) "
                    f"or max by (broker, hostname) ({WORKER_DOWN}{{{WORKER}}}))",
                    "known",
                ),
                description="Workers sending heartbeats, and every worker known: up, or down "
                "as CeleryWorkerDown sees it (dead agents and purged workers included).",
                width=6,
                min=0,
                links=(Link("Workers", WORKERS),),
            ),
            Panel(
                21,
                "table",
                "Firing Celery alerts by name",
                "short",
                (Query(f"sum by (alertname, severity) ({ALERTS_FIRING})", instant=True),),
                description="Firing alerts named Celery*, by name and severity (value: how many "
                "series fire). Each alert's runbook_url says what to do.",
                width=6,
            ),
        ),
    )
    return Board(
        OVERVIEW,
        "Celery / Overview",
        "Is Celery healthy right now: failures, queue wait, dead letters, workers, "
        "broker, the exporter itself and the alerts firing.",
        (now, tasks, queues, dead),
    )


def tasks(c: RulesConfig) -> Board:
    """Per-task throughput, failures, exceptions, retries and runtime."""
    throughput = Row(
        100,
        "Throughput: the total hides per-task failures, read it with the breakdown beside it",
        (
            ts(
                1,
                "All selected tasks: outcomes per second",
                "ops",
                Query(sum_rate(SUCCEEDED, TASK), "succeeded"),
                Query(sum_rate(FAILED, TASK), "failed"),
                Query(sum_rate(RETRIED, TASK), "retried"),
                description="Sums over every selected task: a failing low-volume task disappears "
                "in it. The panels beside it break it down per task.",
                width=8,
            ),
            ts(
                2,
                "Succeeded per second by task",
                "ops",
                Query(sum_rate(SUCCEEDED, TASK, "name"), "{{name}}"),
                width=8,
                task_link=True,
            ),
            ts(
                3,
                "Failed per second by task",
                "ops",
                Query(sum_rate(FAILED, TASK, "name"), "{{name}}"),
                width=8,
                task_link=True,
            ),
        ),
    )
    failures = Row(
        101,
        "Failures",
        (
            ts(
                4,
                "Failure ratio by task",
                "percentunit",
                Query(failure_ratio("name"), "{{name}}"),
                description=FAILURE_RATIO_HELP,
                task_link=True,
                min=0,
                thresholds=_failure_steps(c),
            ),
            ts(
                5,
                "Top exceptions: failures per second by task and exception",
                "ops",
                Query(
                    f"topk(10, {sum_rate(FAILED, TASK, 'name', 'exception')})",
                    "{{name}}: {{exception}}",
                ),
                description="Exception class names only (never messages). WorkerLostError: the "
                "pool process died (OOM killer, SIGKILL); TimeLimitExceeded: hard time "
                "limit; NotRegistered: the worker does not know the task name.",
                task_link=True,
            ),
        ),
    )
    retries = Row(
        102,
        "Retries",
        (
            ts(
                6,
                "Retries per second by task",
                "ops",
                Query(sum_rate(RETRIED, TASK, "name"), "{{name}}"),
                width=8,
                task_link=True,
            ),
            ts(
                7,
                "Retry amplification: retries per new task",
                "short",
                Query(retry_amplification("name"), "{{name}}"),
                description="Retries per newly received task (received minus retried), the "
                "measure of CeleryTaskRetryStorm (red: its threshold). 0 is healthy; a "
                "climbing value is a retry storm multiplying the load on whatever the "
                "task depends on.",
                width=8,
                task_link=True,
                thresholds=((c.number("retry_amplification"), "red"),),
            ),
            ts(
                8,
                "Failed after retries by task",
                "short",
                Query(
                    occurrences("celery_task_failed_after_retries_total", TASK, "name"), "{{name}}"
                ),
                description="Tasks that failed for good after at least one retry: retries "
                "exhausted. What comes before the dead-letter queue." + COUNT_HELP,
                width=8,
                task_link=True,
            ),
        ),
    )
    runtime = Row(
        103,
        "Runtime",
        (
            ts(
                9,
                "Runtime p50 / p95 / p99 (selected tasks)",
                "s",
                *RUNTIME_PERCENTILES,
                description=RUNTIME_HELP,
            ),
            ts(
                10,
                "Runtime p95 by task",
                "s",
                Query(quantile(0.95, "celery_task_runtime_seconds", TASK, "name"), "{{name}}"),
                description=RUNTIME_HELP,
                task_link=True,
            ),
            ts(
                11,
                "Mean runtime by task",
                "s",
                Query(
                    f"{sum_rate('celery_task_runtime_seconds_sum', TASK, 'name')} / "
                    f"{sum_rate('celery_task_runtime_seconds_count', TASK, 'name')}",
                    "{{name}}",
                ),
                description=RUNTIME_HELP,
                task_link=True,
            ),
            ts(
                12,
                "Time since last success by task",
                "s",
                Query(
                    f"time() - max by (name) "
                    f"(celery_task_last_success_timestamp_seconds{{{TASK}}})",
                    "{{name}}",
                ),
                description="Dead-man's switch for periodic tasks: it should drop back every "
                "schedule interval.",
                task_link=True,
            ),
        ),
    )
    other = Row(
        104,
        "Other outcomes",
        (
            ts(
                13,
                "Unregistered tasks (NotRegistered failures)",
                "short",
                Query(
                    occurrences(FAILED, f'{TASK}, exception="NotRegistered"', "name"), "{{name}}"
                ),
                description="Messages for task names no worker has registered: a deploy changed "
                "task names or signatures, or a worker runs old code." + COUNT_HELP,
                width=6,
            ),
            ts(
                14,
                "Rejected by task",
                "short",
                Query(
                    occurrences("celery_task_rejected_total", TASK, "name", "requeue"),
                    "{{name}} requeue={{requeue}}",
                ),
                description="requeue=false goes to the dead-letter route (or is dropped)."
                + COUNT_HELP,
                width=6,
            ),
            ts(
                15,
                "Revoked and expired by task",
                "short",
                Query(occurrences("celery_task_revoked_total", TASK, "name"), "{{name}} revoked"),
                Query(occurrences("celery_task_expired_total", TASK, "name"), "{{name}} expired"),
                description="Expired tasks are a subset of revoked ones." + COUNT_HELP,
                width=6,
            ),
            ts(
                16,
                "Redelivered by task",
                "short",
                Query(occurrences("celery_task_redelivered_total", TASK, "name"), "{{name}}"),
                description="A second task-received with the same retry count: Redis visibility "
                "timeout passed, or a worker was lost holding the task. With acks_late "
                "the task runs twice." + COUNT_HELP,
                width=6,
                links=(Link("Queues & DLQ (unacked vs visibility timeout)", QUEUES),),
            ),
        ),
    )
    return Board(
        TASKS,
        "Celery / Tasks",
        "Per-task throughput, failure ratio, exceptions, retries and runtime.",
        (throughput, failures, retries, runtime, other),
    )


def queues(c: RulesConfig) -> Board:
    """Queue depth, flow, unacked deliveries and dead-letter queues."""
    depth = Row(
        100,
        "Depth",
        (
            ts(
                1,
                "Messages waiting by queue",
                "short",
                Query(f"sum by (queue_name) (celery_queue_length{{{QUEUE}}})", "{{queue_name}}"),
                Query(
                    f"sum by (queue_name) (celery_queue_delayed{{{QUEUE}}})",
                    "{{queue_name}} delayed",
                ),
                description="Messages ready in the broker queue, every priority level "
                "(celery_queue_length; absent for a queue the broker does not know). "
                "SQS: also messages sent with a delay that has not passed yet "
                "(celery_queue_delayed).",
                width=8,
                min=0,
            ),
            _oldest_by_queue(c, 2),
            ts(
                3,
                "Drain-time estimate by queue",
                "s",
                Query(
                    promql.drain_time(
                        f"sum by (queue_name) (celery_queue_length{{{QUEUE}}})",
                        sum_rate("celery_task_received_total", QUEUE, "queue_name"),
                    ),
                    "{{queue_name}}",
                ),
                description="Messages waiting / messages taken by workers per second: how long "
                "the backlog lasts at the current egress, ignoring new arrivals "
                "(CeleryQueueSlowDrain's estimate; red: its objective). +Inf: nothing "
                "was received from that queue (see consumers).",
                width=8,
                thresholds=((c.number("queue_drain_slo"), "red"),),
            ),
        ),
    )
    flow = Row(
        101,
        "Flow",
        (
            ts(
                4,
                "Ingress vs egress by queue",
                "ops",
                Query(sum_rate("celery_task_sent_total", QUEUE, "queue_name"), "{{queue_name}} in"),
                Query(
                    sum_rate("celery_task_received_total", QUEUE, "queue_name"),
                    "{{queue_name}} out",
                ),
                description="In: tasks published to the queue (task-sent events, needs "
                "task_send_sent_event, and the exporter's event stream: absent in the agent "
                "setup, `serve --no-event-stream`). Out: tasks workers received from it. In "
                "above out for long: the queue climbs; add workers.",
                width=12,
            ),
            ts(
                5,
                "Consumers by queue",
                "short",
                Query(f"sum by (queue_name) (celery_queue_consumers{{{QUEUE}}})", "{{queue_name}}"),
                description="Consumers of the queue. 0 with messages waiting: nobody consumes "
                "the queue (a misspelled queue name or no worker started with -Q for it).",
                width=6,
                min=0,
                empty=RABBITMQ_ONLY,
            ),
            Panel(
                6,
                "state-timeline",
                "Queue known to the broker",
                "short",
                (Query(f"min by (queue_name) (celery_queue_exists{{{QUEUE}}})", "{{queue_name}}"),),
                description="0 for a configured queue the broker does not know (a typo in "
                "--queue or in the workers' -Q).",
                width=6,
                up_down=True,
            ),
        ),
    )
    unacked = Row(
        102,
        "Unacknowledged deliveries (Redis visibility timeout)",
        (
            ts(
                7,
                "Unacked messages by queue",
                "short",
                Query(f"sum by (queue_name) (celery_queue_unacked{{{QUEUE}}})", "{{queue_name}}"),
                description="Messages delivered to a worker and not acknowledged yet (prefetched, "
                "or running with acks_late). SQS: in flight, received and not deleted; "
                "back in the queue after its VisibilityTimeout.",
                min=0,
            ),
            ts(
                8,
                "Oldest unacked delivery vs visibility timeout",
                "s",
                Query(
                    f"max by (queue_name) (celery_queue_oldest_unacked_age_seconds{{{QUEUE}}})",
                    "{{queue_name}}",
                ),
                Query(
                    f"max(celery_queue_visibility_timeout_seconds{{{BROKER}}})",
                    "visibility timeout",
                ),
                description="On Redis an unacked message is handed to another worker once its "
                "age passes visibility_timeout: a long task with acks_late or an ETA "
                "task then runs twice.",
                links=(Link("Tasks (redelivered)", TASKS),),
            ),
        ),
    )
    dlq = Row(
        103,
        "Dead-letter queues",
        (
            ts(
                9,
                "Messages in dead-letter queues",
                "short",
                Query(f"sum by (queue_name) (celery_dlq_length{{{DLQ}}})", "{{queue_name}}"),
                description=DLQ_HELP,
                width=6,
                min=0,
            ),
            ts(
                10,
                "Into dead-letter queues per second",
                "ops",
                Query(sum_rate("celery_dlq_ingress_total", DLQ, "queue_name"), "{{queue_name}}"),
                description=DLQ_INGRESS_HELP,
                width=6,
            ),
            ts(
                11,
                "Failed after retries by task",
                "short",
                Query(
                    occurrences("celery_task_failed_after_retries_total", TASK, "name"), "{{name}}"
                ),
                description="Retries exhausted: the task-level signal that precedes dead letters."
                + COUNT_HELP,
                width=6,
                task_link=True,
            ),
            ts(
                12,
                "Rejected without requeue by task",
                "short",
                Query(
                    occurrences("celery_task_rejected_total", f'{TASK}, requeue="false"', "name"),
                    "{{name}}",
                ),
                description="Reject(requeue=False): the broker dead-letters the message (RabbitMQ "
                "with a dead-letter exchange) or drops it." + COUNT_HELP,
                width=6,
                task_link=True,
            ),
            ts(
                13,
                "Dead letters by task",
                "short",
                Query(
                    f'sum by (queue_name, name) (celery_dlq_messages{{{DLQ}, name=~"$task"}})',
                    "{{queue_name}} {{name}}",
                ),
                description="Messages in each dead-letter queue by task name, from a sample the "
                "exporter reads without consuming (--dlq-sample; scaled to the depth "
                "beyond it). `celery-vitals dlq list` shows the same with origins, "
                "reasons and ages.",
                width=24,
                min=0,
                task_link=True,
            ),
        ),
    )
    return Board(
        QUEUES,
        "Celery / Queues & DLQ",
        "Queue depth, ingress vs egress, oldest message, drain time, consumers, "
        "unacked deliveries and dead-letter queues.",
        (depth, flow, unacked, dlq),
    )


def workers(c: RulesConfig) -> Board:
    """Worker liveness, load, prefetch and restarts."""
    liveness = Row(
        100,
        "Liveness",
        (
            single(
                1,
                "Workers up",
                "short",
                Query(f"sum(celery_worker_up{{{WORKER}}})", "up"),
                description="Workers sending heartbeats.",
            ),
            single(
                2,
                "Workers down",
                "short",
                _workers_down(),
                description=WORKERS_DOWN_HELP,
                thresholds=((1, "red"),),
            ),
            single(
                3,
                "Workers without task events",
                "short",
                Query(f"sum(celery_worker_task_events_missing{{{WORKER}}})", "missing"),
                description="Workers whose heartbeats report processed tasks while no task "
                "event arrived from them: start them with -E.",
                thresholds=((1, "red"),),
            ),
            Panel(
                4,
                "state-timeline",
                "Up by worker",
                "short",
                (
                    Query(
                        f"max by (hostname) (celery_worker_up{{{WORKER}}})\n"
                        f"or max by (hostname) ({WORKER_DOWN}{{{WORKER}}}) * 0",
                        "{{hostname}}",
                    ),
                ),
                description="UP while heartbeats arrive; DOWN after worker-offline or the "
                "worker timeout, and while CeleryWorkerDown counts the worker as down (an "
                "agent Prometheus cannot scrape, a purged worker; from the shipped rules).",
                width=12,
                height=4,
                up_down=True,
            ),
        ),
    )
    load = Row(
        101,
        "Load and prefetch",
        (
            ts(
                5,
                "Active vs reserved (prefetched) by worker",
                "short",
                Query(
                    f"sum by (hostname) (celery_worker_tasks_active{{{WORKER}}})",
                    "{{hostname}} active",
                ),
                Query(
                    f"sum by (hostname) (celery_worker_tasks_reserved{{{WORKER}}})",
                    "{{hostname}} reserved",
                ),
                description="Active: executing now (from heartbeats). Reserved: received and not "
                "started, waiting in the worker's prefetch buffer while other workers "
                "may idle.",
                min=0,
            ),
            ts(
                6,
                "Heartbeat age by worker",
                "s",
                Query(
                    f"time() - max by (hostname) "
                    f"(celery_worker_last_heartbeat_timestamp_seconds{{{WORKER}}})",
                    "{{hostname}}",
                ),
                description="Seconds since the worker's last heartbeat arrived (Celery sends one "
                "every 2 s): a saw-tooth below 2-4 s is healthy.",
                thresholds=((10, "orange"), (30, "red")),
            ),
            ts(
                7,
                "Load average (1 min) by worker",
                "short",
                Query(f"max by (hostname) (celery_worker_load1{{{WORKER}}})", "{{hostname}}"),
                description="The worker host's one-minute load average, from heartbeats.",
                min=0,
            ),
            ts(
                8,
                "Starts and restarts by worker",
                "short",
                Query(
                    occurrences("celery_worker_starts_total", WORKER, "hostname"), "{{hostname}}"
                ),
                description=STARTS_HELP + COUNT_HELP,
                min=0,
            ),
            ts(
                9,
                "Task events missing by worker",
                "short",
                Query(
                    f"max by (hostname) (celery_worker_task_events_missing{{{WORKER}}})",
                    "{{hostname}}",
                ),
                Query(
                    f"max(celery_vitals_task_sent_events_missing{{{BROKER}}})",
                    "publishers without task-sent events",
                ),
                description="1: the worker processes tasks but sends no task events, so none of "
                "its tasks is counted (start it with -E). Publishers without task-sent "
                "events: tasks were received last minute that no task-sent announced "
                "(set task_send_sent_event=True where tasks are published), so their "
                "queue is the default one and they have no queue wait; the exporter's event "
                "stream tells, so it is absent in the agent setup (`serve "
                "--no-event-stream`). `celery-vitals doctor` names both.",
                min=0,
                width=24,
                height=6,
            ),
        ),
    )
    agent = Row(
        102,
        "Pool, memory and exits (from the agent inside each worker)",
        (
            ts(
                10,
                "Pool utilisation by worker",
                "percentunit",
                Query(
                    f"sum by (hostname) (celery_worker_pool_busy_processes{{{WORKER}}})\n"
                    # max: the exporter's stats polls report the same pool as the agent
                    f"/ max by (hostname) (celery_worker_pool_processes{{{WORKER}}})",
                    "{{hostname}}",
                ),
                description="Busy pool processes / pool processes. At 100 % with a backlog "
                "waiting (CeleryWorkerPoolSaturated) the pool is too small, or its "
                "tasks hang.",
                min=0,
                empty=NO_AGENT,
                thresholds=((c.number("pool_saturation_ratio"), "red"),),
            ),
            ts(
                11,
                "Resident memory by process",
                "bytes",
                Query(
                    f"max by (hostname, process) "
                    f"(celery_worker_process_resident_memory_bytes{{{WORKER}}})",
                    "{{hostname}} {{process}}",
                ),
                description="RSS of the worker's main process and of each pool slot (a recycled "
                "child takes its slot's series). Red: the per-process limit of "
                "CeleryWorkerMemoryGrowing.",
                min=0,
                empty=NO_AGENT,
                thresholds=((c.number("worker_process_memory_bytes"), "red"),),
            ),
            ts(
                12,
                "Pool process exits by reason",
                "short",
                Query(
                    occurrences(
                        "celery_worker_pool_process_exits_total", WORKER, "hostname", "reason"
                    ),
                    "{{hostname}} {{reason}}",
                ),
                description="recycled: max-tasks or max-memory recycling (healthy); killed: ended "
                "by a signal, the OOM killer's SIGKILL among them; failed: another "
                "non-zero exit." + COUNT_HELP,
                min=0,
                empty=NO_AGENT,
            ),
            ts(
                13,
                "Reserved (prefetched) by worker",
                "short",
                Query(
                    f"sum by (hostname) (celery_worker_tasks_reserved{{{WORKER}}})",
                    "{{hostname}} reserved",
                ),
                Query(
                    f"sum by (hostname) (celery_worker_eta_tasks{{{WORKER}}})",
                    "{{hostname}} ETA/countdown",
                ),
                Query(
                    f"max by (hostname) (celery_worker_prefetch_limit{{{WORKER}}})",
                    "{{hostname}} prefetch limit",
                ),
                description="Tasks the worker holds and has not started (ETA tasks among them, "
                "which a deploy loses unless acks_late), against the consumer's "
                "prefetch count. ETA/countdown: from the agent only, absent where the exporter "
                "alone watches the workers.",
                min=0,
            ),
        ),
    )
    return Board(
        WORKERS,
        "Celery / Workers",
        "Workers up, heartbeat age, active vs reserved (prefetch), load, restarts, "
        "missing task events, and from the agent: pool utilisation, memory and "
        "exits.",
        (liveness, load, agent),
    )


def slow(c: RulesConfig) -> Board:
    """ "Celery is slow": the diagnosis tree, top to bottom."""
    runtime = Row(
        100,
        "1. Task runtime: are the tasks themselves slow?",
        (
            ts(1, "Runtime p50 / p95 / p99", "s", *RUNTIME_PERCENTILES, description=RUNTIME_HELP),
            ts(
                2,
                "Runtime p95 by task",
                "s",
                Query(quantile(0.95, "celery_task_runtime_seconds", TASK, "name"), "{{name}}"),
                description=RUNTIME_HELP + " Slow here: look at the task and what it calls.",
                task_link=True,
            ),
        ),
    )
    queue_wait = Row(
        101,
        "2. Queue wait: do tasks wait for a free worker?",
        (
            ts(
                3,
                "Queue wait p50 / p95 / p99",
                "s",
                *percentiles("celery_task_queue_wait_seconds", TASK),
                description=QUEUE_WAIT_HELP,
                empty=NO_TASK_SENT,
                width=8,
            ),
            ts(
                4,
                "Queue wait p95 by queue",
                "s",
                Query(
                    quantile(0.95, "celery_task_queue_wait_seconds", TASK, "queue_name"),
                    "{{queue_name}}",
                ),
                description=QUEUE_WAIT_HELP,
                empty=NO_TASK_SENT,
                width=8,
            ),
            _oldest_by_queue(c, 5, links=(Link("Queues & DLQ", QUEUES),)),
        ),
    )
    prefetch = Row(
        102,
        "3. Prefetch wait: do tasks sit in a busy worker's prefetch buffer?",
        (
            ts(
                6,
                "Prefetch wait p50 / p95 / p99",
                "s",
                *percentiles("celery_task_prefetch_wait_seconds", TASK),
                description=PREFETCH_HELP,
                width=8,
            ),
            ts(
                7,
                "Prefetch wait p95 by task",
                "s",
                Query(
                    quantile(0.95, "celery_task_prefetch_wait_seconds", TASK, "name"), "{{name}}"
                ),
                description=PREFETCH_HELP,
                width=8,
                task_link=True,
            ),
            ts(
                8,
                "Reserved (prefetched) tasks by worker",
                "short",
                Query(
                    f"sum by (hostname) (celery_worker_tasks_reserved{{{WORKER}}})", "{{hostname}}"
                ),
                description="Received and not started: prefetched behind running tasks.",
                width=8,
                min=0,
                links=(Link("Workers", WORKERS),),
            ),
        ),
    )
    broker = Row(
        103,
        "4. Broker: is the broker slow, unreachable or full?",
        (
            ts(
                9,
                "Broker poll duration p50 / p95 / p99",
                "s",
                *percentiles("celery_broker_probe_duration_seconds", BROKER),
                description="Time one queue poll of the broker took (a few round trips): the "
                "broker's latency as a client sees it.",
                width=6,
            ),
            ts(
                10,
                "Broker up",
                "short",
                Query(f"min by (broker) (celery_broker_up{{{BROKER}}})", "{{broker}}"),
                description="1 when the last queue poll reached the broker.",
                width=6,
                min=0,
            ),
            ts(
                11,
                "Broker memory used vs limit",
                "bytes",
                Query(
                    f"max by (broker) (celery_broker_memory_used_bytes{{{BROKER}}})",
                    "{{broker}} used",
                ),
                Query(
                    f"max by (broker) (celery_broker_memory_limit_bytes{{{BROKER}}})",
                    "{{broker}} limit",
                ),
                description="Redis: used_memory and maxmemory (limit 0 = unlimited); RabbitMQ: "
                "memory used and the high watermark.",
                width=6,
                min=0,
            ),
            ts(
                12,
                "Broker poll errors by error",
                "short",
                Query(
                    occurrences("celery_broker_probe_errors_total", BROKER, "error"), "{{error}}"
                ),
                description="Failed queue polls by error class." + COUNT_HELP,
                width=6,
            ),
        ),
    )
    blind = Row(
        104,
        "5. The exporter's blind spots: is the picture complete?",
        (
            ts(
                13,
                "Event lag",
                "s",
                Query(
                    f"max by (instance) (celery_vitals_event_lag_seconds{{{BROKER}}})",
                    "{{instance}}",
                ),
                description="Exporter receive time minus the newest event's timestamp. Growing: "
                "the exporter falls behind the event stream; constant offset: clock "
                "skew between workers and exporter.",
                width=8,
                empty=NO_EVENT_STREAM,
            ),
            ts(
                14,
                "Event stream up and reconnects",
                "short",
                Query(
                    f"min by (instance) (celery_vitals_event_stream_up{{{BROKER}}})",
                    "{{instance}} up",
                ),
                Query(
                    f"sum by (instance) (increase(celery_vitals_event_stream_reconnects_total"
                    f"{{{BROKER}}}[$__rate_interval]))",
                    "{{instance}} reconnects",
                ),
                description="Up: connected to the broker's event exchange. Reconnects: lost and "
                "regained connections (events in between are lost).",
                width=8,
                min=0,
                empty=NO_EVENT_STREAM,
            ),
            ts(
                15,
                "Heartbeats missed per second",
                "ops",
                Query(
                    sum_rate("celery_vitals_heartbeats_missed_total", BROKER, "instance"),
                    "{{instance}}",
                ),
                description="Worker heartbeats that never arrived while the worker stayed online: "
                "the event stream is losing events, so task counts are low too.",
                width=8,
            ),
            ts(
                16,
                "Tracker evictions per second by reason",
                "ops",
                Query(
                    sum_rate("celery_vitals_tracker_evictions_total", BROKER, "reason"),
                    "{{reason}}",
                ),
                description="Unfinished tasks dropped from the uuid map (capacity: raise "
                "--max-tracked-tasks; age: raise --max-task-age for long ETAs). Their "
                "later events count under name=unknown.",
                width=6,
            ),
            ts(
                17,
                "Events with an unknown uuid by type",
                "short",
                Query(
                    occurrences("celery_vitals_unknown_uuid_events_total", BROKER, "type"),
                    "{{type}}",
                ),
                description="Task events for a uuid the exporter never saw sent or received: it "
                "started late, or lost or evicted the first events." + COUNT_HELP,
                width=6,
            ),
            ts(
                18,
                "Label values folded into other",
                "short",
                Query(
                    occurrences(
                        "celery_vitals_label_values_folded_total", BROKER, "label", "reason"
                    ),
                    "{{label}} {{reason}}",
                ),
                description="The cardinality guard replaced label values by 'other': raise the "
                "--max-* caps, or stop generating task or queue names dynamically." + COUNT_HELP,
                width=6,
            ),
            ts(
                19,
                "Events skipped by reason",
                "short",
                Query(
                    occurrences("celery_vitals_events_skipped_total", BROKER, "reason"),
                    "{{reason}}",
                ),
                description="Events or message bodies the exporter could not use." + COUNT_HELP,
                width=6,
            ),
            ts(
                20,
                "Events received per second by type",
                "ops",
                Query(sum_rate("celery_vitals_events_total", BROKER, "type"), "{{type}}"),
                description="No task-* types while workers are busy: task events are off.",
                stack=True,
            ),
            ts(
                21,
                "Tasks tracked by uuid",
                "short",
                Query(
                    f"sum by (instance) (celery_vitals_tracked_tasks{{{BROKER}}})", "{{instance}}"
                ),
                description="Sent or received and not finished; evictions start at "
                "--max-tracked-tasks.",
                min=0,
            ),
        ),
    )
    return Board(
        SLOW,
        "Celery / Celery is slow",
        "The diagnosis tree from top to bottom: task runtime, queue wait, prefetch "
        "wait, broker latency, then what the exporter may be missing.",
        (runtime, queue_wait, prefetch, broker, blind),
    )


BOARDS = (overview, tasks, queues, workers, slow)


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
