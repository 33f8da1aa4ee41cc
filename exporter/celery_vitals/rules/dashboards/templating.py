"""What surrounds the panels of every dashboard: the variables (templating), the
annotations and the link to the other Celery dashboards."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.cog import builder as cog
from grafana_foundation_sdk.models import dashboard as model

from celery_vitals.rules import promql
from celery_vitals.rules.dashboards.panels import DATASOURCE, TAG
from celery_vitals.rules.dashboards.queries import BROKER, WORKER, occurrences


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


def dashboards_link() -> builders.DashboardLink:
    """The links to every Celery dashboard (by tag), keeping time range and variables."""
    return (
        builders.DashboardLink("Celery dashboards")
        .type(model.DashboardLinkType.DASHBOARDS)
        .tags([TAG])
        .as_dropdown(False)
        .keep_time(True)
        .include_vars(True)
    )
