"""The committed dashboards' structure: uids, variables, datasource, units, ranges, ids, links."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from celery_vitals.catalogue import SPECS
from celery_vitals.rules import dashboards
from celery_vitals.rules.config import RulesConfig
from tests.support.dashboards import (
    RANGE,
    RANGE_FUNCTIONS,
    UIDS,
    label_values,
    load,
    metric_names,
    panel_exprs,
    panels,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
UNITS = {"s", "short", "bytes", "percentunit", "ops"}
TAG = "celery-vitals"
# variable -> the label its values come from
VARIABLE_LABELS = {"broker": "broker", "queue": "queue_name", "task": "name", "worker": "hostname"}


def _variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in dashboard["templating"]["list"]}


def test_the_five_dashboards_and_their_uids() -> None:
    titles = {uid: load(uid)["title"] for uid in UIDS}
    assert {uid: load(uid)["uid"] for uid in UIDS} == {uid: uid for uid in UIDS}
    assert titles == {
        "celery-vitals-overview": "Celery / Overview",
        "celery-vitals-tasks": "Celery / Tasks",
        "celery-vitals-queues": "Celery / Queues & DLQ",
        "celery-vitals-workers": "Celery / Workers",
        "celery-vitals-slow": "Celery / Celery is slow",
    }


@pytest.mark.parametrize("uid", UIDS)
def test_no_inputs_and_no_ds_placeholders(uid: str) -> None:
    dashboard = load(uid)
    text = json.dumps(dashboard)
    assert "__inputs" not in dashboard
    assert "__requires" not in dashboard
    assert "${DS_" not in text
    assert "id" not in dashboard  # an instance-local id would clash on import


@pytest.mark.parametrize("uid", UIDS)
def test_datasource_and_filter_variables(uid: str) -> None:
    variables = _variables(load(uid))
    assert list(variables) == ["datasource", "broker", "queue", "task", "worker"]
    datasource = variables["datasource"]
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
    for name, label in VARIABLE_LABELS.items():
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"] == DATASOURCE
        assert (variable["multi"], variable["includeAll"]) == (True, True)
        assert variable["refresh"] == 2  # on time range change
        assert variable["current"]["value"] == "$__all"
        selector, values_of = label_values(variable["query"])
        assert values_of == label
        assert metric_names(selector), selector
    # broker's All lists the brokers of the celery-vitals targets; the others match anything
    # (labels absent too)
    assert (
        variables["broker"]["query"] == 'label_values(celery_vitals_build_info{broker!=""}, broker)'
    )
    assert "allValue" not in variables["broker"]
    assert [variables[name]["allValue"] for name in ("queue", "task", "worker")] == [".*"] * 3


@pytest.mark.parametrize("uid", UIDS)
def test_every_panel_has_a_unit_the_datasource_variable_and_a_query(uid: str) -> None:
    for panel in panels(load(uid)):
        where = f"{uid} panel {panel['id']} {panel['title']!r}"
        assert panel["fieldConfig"]["defaults"].get("unit") in UNITS, where
        assert panel["datasource"] == DATASOURCE, where
        assert panel["targets"], where
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, where
            assert target["expr"].strip(), where
        assert panel["title"].strip(), where


@pytest.mark.parametrize("uid", UIDS)
def test_panels_with_derived_values_are_described(uid: str) -> None:
    """Ratios, quantiles, estimates and stats say what they compute."""
    for panel in panels(load(uid)):
        exprs = " ".join(target["expr"] for target in panel["targets"])
        derived = (
            "histogram_quantile" in exprs
            or " / " in exprs
            or "time()" in exprs
            or panel["type"] in ("stat", "table", "state-timeline")
        )
        if derived:
            assert panel.get("description", "").strip(), f"{uid}: {panel['title']}"


# The one range that is no rate window: how long a target that exported celery_broker_up
# still counts as an exporter (CeleryExporterDown's exporter_remembered), for its up.
REMEMBERED = re.compile(
    r"max_over_time\(celery_broker_up\{[^}]*\}\["
    + re.escape(RulesConfig().text("exporter_remembered"))
    + r"\]\)"
)


def test_the_only_other_range_remembers_the_exporters() -> None:
    found = [
        (e.uid, e.title, e.ref) for uid in UIDS for e in panel_exprs(uid) if "_over_time" in e.expr
    ]
    assert found == [("celery-vitals-overview", "Exporter scraped", "A")]
    (expr,) = (
        e.expr for e in panel_exprs("celery-vitals-overview") if e.title == "Exporter scraped"
    )
    assert len(REMEMBERED.findall(expr)) == 1, expr


# deriv() of a gauge over the rate window: the change of a queue's depth (the ingress
# the rules derive where no task-sent counts exist, promql.ingress)
DERIV = re.compile(r"\bderiv\s*\(\s*celery_queue_length\{")


@pytest.mark.parametrize("uid", UIDS)
def test_every_range_is_rate_interval(uid: str) -> None:
    for found in panel_exprs(uid):
        expr = replace(found, expr=REMEMBERED.sub("", found.expr))
        ranges = RANGE.findall(expr.expr)
        assert ranges == ["$__rate_interval"] * len(ranges), str(expr)
        # one range per rate/irate/increase or deriv of the queue depth, and no range
        # anywhere else (no subqueries)
        taking = RANGE_FUNCTIONS.findall(expr.expr) + DERIV.findall(expr.expr)
        assert len(ranges) == len(taking), str(expr)
        assert "deriv(" not in DERIV.sub("", expr.expr), str(expr)  # of nothing else
        assert "$__interval" not in expr.expr and "$__range" not in expr.expr, str(expr)
        offsets = re.findall(r"\boffset\s+(\S+?)\)?(?:\s|$)", expr.expr)
        assert offsets == ["$__rate_interval"] * len(offsets), str(expr)


@pytest.mark.parametrize("uid", UIDS)
def test_panel_titles_are_unique(uid: str) -> None:
    titles = [panel["title"] for panel in panels(load(uid))]
    assert len(titles) == len(set(titles))


@pytest.mark.parametrize("uid", UIDS)
def test_ids_are_unique_and_panels_do_not_overlap(uid: str) -> None:
    dashboard = load(uid)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(isinstance(pid, int) and pid > 0 for pid in ids)
    cells: dict[tuple[int, int], int] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for y in range(grid["y"], grid["y"] + grid["h"]):
            for x in range(grid["x"], grid["x"] + grid["w"]):
                assert (x, y) not in cells, f"{panel['id']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["id"]


@pytest.mark.parametrize("uid", UIDS)
def test_links_to_the_other_dashboards(uid: str) -> None:
    dashboard = load(uid)
    assert TAG in dashboard["tags"]
    (link,) = dashboard["links"]
    assert (link["type"], link["tags"], link["keepTime"], link["includeVars"]) == (
        "dashboards",
        [TAG],
        True,
        True,
    )
    for panel in panels(dashboard):
        for panel_link in panel.get("links", []):
            if panel_link["title"] == "Runbook":
                assert panel_link["url"] in RUNBOOK_LINKS, panel_link["url"]
                assert panel_link["targetBlank"] is True
                continue
            match = re.fullmatch(
                r"/d/([a-z-]+)\?\$\{__url_time_range\}&\$\{__all_variables\}", panel_link["url"]
            )
            assert match is not None and match.group(1) in UIDS, panel_link["url"]
            assert match.group(1) != uid
        for data_link in panel["fieldConfig"]["defaults"].get("links", []):
            assert data_link["url"] == (
                "/d/celery-vitals-tasks?${__url_time_range}&${datasource:queryparam}"
                "&${broker:queryparam}&var-task=${__field.labels.name}"
            )


def test_overview_links_to_every_other_dashboard() -> None:
    targets = {
        re.match(r"/d/([a-z-]+)\?", link["url"]).group(1)  # type: ignore[union-attr]
        for panel in panels(load("celery-vitals-overview"))
        for link in panel.get("links", [])
        if link["title"] != "Runbook"
    }
    assert targets == set(UIDS) - {"celery-vitals-overview"}


def _metrics(panel: dict[str, Any]) -> set[str]:
    return {name for target in panel["targets"] for name in metric_names(target["expr"])}


REQUIRED = {
    "celery-vitals-overview": {
        "celery_task_failed_total",
        "celery_task_succeeded_total",
        "celery_task_queue_wait_seconds_bucket",
        "celery_queue_oldest_message_age_seconds",
        "celery_dlq_length",
        "celery_dlq_ingress_total",
        "celery_worker_up",
        "celery_broker_up",
        "celery_vitals_event_stream_up",
        "ALERTS",
    },
    "celery-vitals-tasks": {
        "celery_task_succeeded_total",
        "celery_task_failed_total",
        "celery_task_retried_total",
        "celery_task_runtime_seconds_bucket",
        "celery_task_failed_after_retries_total",
    },
    "celery-vitals-queues": {
        "celery_queue_length",
        "celery_task_sent_total",
        "celery_task_received_total",
        "celery_queue_oldest_message_age_seconds",
        "celery_queue_consumers",
        "celery_queue_unacked",
        "celery_queue_oldest_unacked_age_seconds",
        "celery_queue_visibility_timeout_seconds",
        "celery_dlq_length",
        "celery_dlq_ingress_total",
        "celery_task_failed_after_retries_total",
        "celery_task_rejected_total",
    },
    "celery-vitals-workers": {
        "celery_worker_up",
        "celery_worker_tasks_active",
        "celery_worker_tasks_reserved",
        "celery_worker_last_heartbeat_timestamp_seconds",
        "celery_worker_load1",
        "celery_worker_starts_total",
        "celery_worker_task_events_missing",
    },
    "celery-vitals-slow": {
        "celery_task_runtime_seconds_bucket",
        "celery_task_queue_wait_seconds_bucket",
        "celery_task_prefetch_wait_seconds_bucket",
        "celery_broker_probe_duration_seconds_bucket",
        "celery_broker_up",
        "celery_broker_memory_used_bytes",
        "celery_vitals_event_lag_seconds",
        "celery_vitals_heartbeats_missed_total",
        "celery_vitals_tracker_evictions_total",
        "celery_vitals_unknown_uuid_events_total",
        "celery_vitals_label_values_folded_total",
        "celery_vitals_event_stream_up",
        "celery_vitals_event_stream_reconnects_total",
    },
}


@pytest.mark.parametrize("uid", UIDS)
def test_each_dashboard_shows_what_the_issue_asks(uid: str) -> None:
    used = {name for panel in panels(load(uid)) for name in _metrics(panel)}
    assert REQUIRED[uid] - used == set()


def test_runtime_percentiles_p50_p95_p99() -> None:
    for uid in ("celery-vitals-tasks", "celery-vitals-slow"):
        quantiles = {
            re.search(r"histogram_quantile\(([0-9.]+)", target["expr"]).group(1)  # type: ignore[union-attr]
            for panel in panels(load(uid))
            for target in panel["targets"]
            if "celery_task_runtime_seconds_bucket" in target["expr"]
        }
        assert quantiles == {"0.5", "0.95", "0.99"}


def test_a_total_throughput_panel_has_its_per_task_breakdown_beside_it() -> None:
    """A sum over every task hides one task failing: the per-task panel is on the same line."""
    task_counters = re.compile(r"celery_task_\w+_total")
    checked = []
    for uid in UIDS:
        dashboard_panels = panels(load(uid))
        for panel in dashboard_panels:
            exprs = [target["expr"] for target in panel["targets"]]
            totals = [
                e for e in exprs if task_counters.search(e) and "by (" not in e and "topk" not in e
            ]
            if panel["type"] != "timeseries" or not totals:
                continue
            counters = {name for e in totals for name in task_counters.findall(e)}
            beside = [
                other
                for other in dashboard_panels
                if other is not panel
                and other["gridPos"]["y"] == panel["gridPos"]["y"]
                and any(
                    "by (name)" in t["expr"] and task_counters.search(t["expr"])
                    for t in other["targets"]
                )
            ]
            per_task = {
                name
                for other in beside
                for t in other["targets"]
                for name in task_counters.findall(t["expr"])
                if "by (name)" in t["expr"]
            }
            assert beside, f"{uid}: {panel['title']} stands alone"
            assert counters & per_task, f"{uid}: {panel['title']}"
            checked.append((uid, panel["title"]))
    assert checked == [("celery-vitals-tasks", "All selected tasks: outcomes per second")]


def test_slow_dashboard_follows_the_diagnosis_tree() -> None:
    dashboard = load("celery-vitals-slow")
    rows: list[tuple[str, set[str]]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            rows.append((panel["title"], set()))
        else:
            rows[-1][1].update(_metrics(panel))
    assert [title.split(".")[0] for title, _ in rows] == ["1", "2", "3", "4", "5"]
    runtime, queue_wait, prefetch, broker, blind = (metrics for _, metrics in rows)
    assert "celery_task_runtime_seconds_bucket" in runtime
    assert "celery_task_queue_wait_seconds_bucket" in queue_wait
    assert "celery_task_prefetch_wait_seconds_bucket" in prefetch
    assert {name.split("_")[1] for name in broker} == {"broker"}
    assert all(name.startswith("celery_vitals_") for name in blind)


RUNBOOKS = "https://github.com/celery-vitals/celery-vitals/blob/main/docs/runbooks.md"
#: The runbook sections panels link to: the targets panel's, and the beat schedule's.
RUNBOOK_SECTIONS = ("CeleryExporterMissing", "CeleryBeatDown", "CeleryPeriodicTaskMissed")
RUNBOOK_LINKS = {f"{RUNBOOKS}#{name.lower()}" for name in RUNBOOK_SECTIONS}


def _no_values() -> dict[tuple[str, str], str]:
    """(uid, panel title) -> the panel's text for no data, for each panel that has one."""
    return {
        (uid, panel["title"]): panel["fieldConfig"]["defaults"]["noValue"]
        for uid in UIDS
        for panel in panels(load(uid))
        if "noValue" in panel["fieldConfig"]["defaults"]
    }


def test_panels_a_setup_cannot_fill_say_why() -> None:
    """The exact list; each says it in its noValue text and ends its description with why."""
    agent_setup = dashboards.NO_EVENT_STREAM.text
    sent = dashboards.NO_QUEUE_WAIT.text
    no_agent = dashboards.NO_AGENT.text
    published = dashboards.NO_PUBLICATION_TIME.text
    assert _no_values() == {
        ("celery-vitals-overview", "celery-vitals targets by broker"): (
            "No celery-vitals target is scraped: Prometheus has no "
            'celery_vitals_build_info{broker!=""}. Check the scrape configuration and the '
            "selector (runbook: CeleryExporterMissing)."
        ),
        ("celery-vitals-overview", "Queue wait p95"): sent,
        ("celery-vitals-overview", "Oldest waiting message"): published,
        ("celery-vitals-overview", "Event stream up"): agent_setup,
        ("celery-vitals-overview", "Event lag"): agent_setup,
        ("celery-vitals-overview", "Queue wait p95 by queue"): sent,
        ("celery-vitals-overview", "Oldest waiting message by queue"): published,
        ("celery-vitals-queues", "Oldest waiting message by queue"): published,
        ("celery-vitals-queues", "Consumers by queue"): "RabbitMQ only",
        ("celery-vitals-workers", "Pool utilisation by worker"): no_agent,
        ("celery-vitals-workers", "Resident memory by process"): no_agent,
        ("celery-vitals-workers", "Pool process exits by reason"): no_agent,
        ("celery-vitals-slow", "Queue wait p50 / p95 / p99"): sent,
        ("celery-vitals-slow", "Queue wait p95 by queue"): sent,
        ("celery-vitals-slow", "Oldest waiting message by queue"): published,
        ("celery-vitals-slow", "Event lag"): agent_setup,
        ("celery-vitals-slow", "Event stream up and reconnects"): agent_setup,
        ("celery-vitals-tasks", "celery beat agents"): dashboards.NO_BEAT.text,
        ("celery-vitals-tasks", "Schedule: every beat entry"): dashboards.NO_BEAT.text,
    }
    whys = {
        empty.text: empty.why
        for empty in (
            dashboards.NO_EVENT_STREAM,
            dashboards.NO_QUEUE_WAIT,
            dashboards.NO_PUBLICATION_TIME,
            dashboards.NO_AGENT,
            dashboards.RABBITMQ_ONLY,
            dashboards.NO_BEAT,
        )
    }
    for uid in UIDS:
        for panel in panels(load(uid)):
            text = panel["fieldConfig"]["defaults"].get("noValue")
            if text in whys:
                assert panel["description"].endswith(" " + whys[text]), (uid, panel["title"])


def test_a_panel_of_agent_metrics_only_says_it_needs_the_agent() -> None:
    """From the catalogue's source column: a panel each query of which reads a metric only
    the agent exports is empty where the exporter alone runs, and says so: the agent in
    the workers, or for beat's metrics (group beat) the agent in celery beat."""
    agent_only = {
        series for spec in SPECS if spec.source == "agent" for series in spec.series_names
    }
    beat_only = {series for spec in SPECS if spec.group == "beat" for series in spec.series_names}
    for uid in UIDS:
        for panel in panels(load(uid)):
            names = [metric_names(target["expr"]) for target in panel["targets"]]
            needs_beat = all(found & beat_only for found in names)
            needs_agent = all(found & agent_only for found in names) and not needs_beat
            no_value = panel["fieldConfig"]["defaults"].get("noValue")
            assert (no_value == dashboards.NO_AGENT.text) == needs_agent, (uid, panel["title"])
            assert (no_value == dashboards.NO_BEAT.text) == needs_beat, (uid, panel["title"])


def test_the_runbook_the_targets_panel_links_to_exists() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "runbooks.md").read_text()
    for name in RUNBOOK_SECTIONS:
        assert f"\n## {name}\n" in text, name
