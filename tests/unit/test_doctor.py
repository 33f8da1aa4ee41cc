"""The doctor's checks on observations built by hand: the cases the live tests cannot
stage cheaply (no worker, an idle worker, requeue loops, the exporter's own health)."""

from __future__ import annotations

import base64
from typing import Any

import click
import pytest
from click.testing import CliRunner

from celery_vitals.brokers.probe import ProbeResult, QueueStats
from celery_vitals.config import Config
from celery_vitals.doctor import (
    ExporterView,
    Finding,
    Observation,
    WorkerView,
    diagnose,
    exit_code,
    http_url,
    parse_registered,
    scrape,
    text,
)
from stack.net import free_port
from tests.support.canned_http import Answer, serving

HOST = "w1@test"
PREFORK = {
    "implementation": "celery.concurrency.prefork:TaskPool",
    "max-concurrency": 2,
    "max-tasks-per-child": 100,
    "timeouts": [0, 0],
}


def observation(transport: str = "redis", **worker: Any) -> Observation:
    url = "redis://127.0.0.1:6379/0" if transport == "redis" else "amqp://guest:pw@h//"
    seen = Observation(
        Config(broker_url=url),
        listen=5.0,
        listening=True,
        broker=ProbeResult(
            info={"transport": transport, "version": "7.0"}, persistence={"aof": True}
        ),
    )
    defaults: dict[str, Any] = {
        "stats": {"pool": PREFORK, "prefetch_count": 2},
        "conf": {"worker_prefetch_multiplier": 1},
        "queues": ("celery",),
        "tasks": {"t.a": {"max_retries": "3"}},
    }
    defaults.update(worker)
    seen.workers[HOST] = WorkerView(HOST, **defaults)
    return seen


def by_check(findings: list[Finding], check: str) -> list[Finding]:
    return [finding for finding in findings if finding.check == check]


def test_registered_lines_are_parsed_and_none_fields_are_absent() -> None:
    lines = [
        "a.b [acks_late=True time_limit=60 max_retries=3]",
        "plain",
        42,
        "c.d [acks_late=False]",
    ]
    assert dict(parse_registered(lines)) == {
        "a.b": {"acks_late": "True", "time_limit": "60", "max_retries": "3"},
        "plain": {},
        "c.d": {"acks_late": "False"},
    }


def test_no_worker_is_a_failure() -> None:
    seen = observation()
    seen.workers.clear()
    findings = diagnose(seen)
    assert [(f.status, f.detail) for f in by_check(findings, "workers")] == [
        ("fail", "no worker answered a ping")
    ]
    assert exit_code(findings) == 1


def test_idle_worker_without_configured_events_is_a_warning() -> None:
    [finding] = by_check(diagnose(observation()), "task-events")
    assert finding.status == "warn" and "idle during the 5s window" in finding.detail
    [sent] = by_check(diagnose(observation()), "task-sent-events")
    assert sent.status == "warn" and sent.detail.startswith("no task was received")


def test_requeue_on_worker_lost_is_the_loop_warning() -> None:
    tasks = {
        "t.a": {
            "acks_late": "True",
            "reject_on_worker_lost": "True",
            "time_limit": "10",
            "max_retries": "3",
        }
    }
    findings = diagnose(observation(tasks=tasks))
    [loop] = by_check(findings, "worker-lost-requeue")
    assert loop.status == "warn" and loop.subject == HOST and "t.a" in loop.detail
    assert by_check(findings, "acks-late-worker-lost") == []
    [visibility] = by_check(findings, "visibility-timeout")
    assert visibility.status == "ok" and "3600s" in visibility.detail  # kombu's default


def test_acks_late_without_time_limit_warns_on_redis_only() -> None:
    tasks = {"t.a": {"acks_late": "True", "max_retries": "3"}}
    conf = {"worker_prefetch_multiplier": 1, "task_reject_on_worker_lost": False}
    [warning] = by_check(diagnose(observation(tasks=tasks, conf=conf)), "visibility-timeout")
    assert warning.status == "warn" and "without a time limit" in warning.detail
    assert (
        by_check(diagnose(observation("amqp", tasks=tasks, conf=conf)), "visibility-timeout") == []
    )


def test_rabbitmq_without_management_cannot_tell_durability() -> None:
    [finding] = by_check(diagnose(observation("amqp")), "broker-persistence")
    assert finding.status == "warn" and "--rabbitmq-management-url" in finding.fix


def test_dead_letter_queues_and_consumed_queues_are_not_orphans() -> None:
    seen = observation()
    seen.queues = {
        "celery": QueueStats("celery", True, ready=5),
        "lonely": QueueStats("lonely", True, ready=2, consumers=1),
    }
    [finding] = by_check(diagnose(seen), "queue-consumers")
    assert finding.status == "ok" and finding.detail.startswith("queues checked: 2")


def test_exporter_findings() -> None:
    seen = observation()
    seen.exporter = ExporterView(
        "http://h:9808",
        before={"celery_vitals_event_stream_up{}": 1, 'celery_vitals_events_total{type="x"}': 5},
        after={
            "celery_vitals_event_stream_up{}": 1,
            'celery_vitals_events_total{type="x"}': 5,
            'celery_vitals_tracker_evictions_total{reason="age"}': 3,
            'celery_vitals_label_values_folded_total{label="name",reason="cap"}': 2,
        },
    )
    found = {(f.check, f.status) for f in diagnose(seen) if f.check.startswith("exporter")}
    assert found == {
        ("exporter", "ok"),
        ("exporter-events", "fail"),
        ("exporter-evictions", "warn"),
        ("exporter-labels", "warn"),
    }
    seen.exporter = ExporterView("http://h:9808", error="URLError: refused")
    assert [(f.check, f.status) for f in diagnose(seen) if f.check.startswith("exporter")] == [
        ("exporter", "fail")
    ]


def test_text_report_ends_each_line_with_its_fix() -> None:
    report = text([Finding("x", "fail", "saw it.", "do that"), Finding("y", "ok", "fine", "n")])
    assert report.splitlines() == [
        "FAIL  x                     saw it. Fix: do that.",
        "OK    y                     fine",
    ]


def test_a_queue_poll_that_fails_is_one_failure() -> None:
    seen = observation()
    seen.queues_error = "ManagementError: 401 Unauthorized"
    [finding] = by_check(diagnose(seen), "queue-consumers")
    assert (finding.status, finding.detail) == (
        "fail",
        "polling the queues failed: ManagementError: 401 Unauthorized",
    )


def test_exporter_url_credentials_are_never_shown() -> None:
    view = scrape(f"http://monitor:s3cret@127.0.0.1:{free_port()}")
    assert view.url.startswith("http://monitor:***@127.0.0.1:")
    assert view.error is not None and "refused" in view.error.lower()
    assert "s3cret" not in view.url + view.error


EXPORTER_FIX = (
    "check --exporter-url: the address of `celery-vitals serve` (port 9808 unless its "
    "--listen-address says otherwise) or of a worker's agent (9809), as reachable from here, "
    "e.g. http://exporter:9808; and that it runs"
)


@pytest.mark.parametrize(
    ("raw", "url"),
    [
        ("localhost:19808", "http://localhost:19808"),
        (" exporter:9808/prefix ", "http://exporter:9808/prefix"),
        ("user:pw@exporter:9808", "http://user:pw@exporter:9808"),
        ("https://exporter:9808", "https://exporter:9808"),
        ("[::1]:9808", "http://[::1]:9808"),
    ],
)
def test_a_url_without_scheme_is_http(raw: str, url: str) -> None:
    assert http_url(raw) == url


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ("ftp://exporter", "expected http(s)://HOST:PORT, got 'ftp://exporter'"),
        ("exporter:port", "not a valid URL: 'exporter:port'"),
        ("http://", "expected http(s)://HOST:PORT, got 'http://'"),
    ],
)
def test_a_url_that_is_no_http_url_is_refused(raw: str, error: str) -> None:
    with pytest.raises(ValueError) as caught:
        http_url(raw)
    assert str(caught.value) == error


def test_a_bad_url_option_is_a_usage_error() -> None:
    from celery_vitals.cli import cli

    result = CliRunner().invoke(
        cli,
        ["doctor", "--exporter-url", "ftp://exporter"],
        env={"CELERY_VITALS_BROKER_URL": "redis://127.0.0.1:1/0"},
        standalone_mode=False,
    )
    assert isinstance(result.exception, click.BadParameter)
    assert result.exception.format_message() == (
        "Invalid value for '--exporter-url': expected http(s)://HOST:PORT, got 'ftp://exporter'"
    )
    result = CliRunner().invoke(
        cli,
        ["doctor", "--selector", 'job="x"'],
        env={"CELERY_VITALS_BROKER_URL": "redis://127.0.0.1:1/0"},
        standalone_mode=False,
    )
    assert isinstance(result.exception, click.UsageError)
    assert result.exception.format_message() == "--selector needs --prometheus-url"


def test_an_unreachable_exporter_url_without_scheme_is_one_clear_failure() -> None:
    port = free_port()
    seen = observation()
    seen.exporter = scrape(http_url(f"127.0.0.1:{port}"))
    found = [f for f in diagnose(seen) if f.check.startswith("exporter")]
    assert [(f.check, f.status, f.detail, f.fix) for f in found] == [
        (
            "exporter",
            "fail",
            f"cannot reach http://127.0.0.1:{port}/metrics: connection refused: nothing "
            "listens on that port",
            EXPORTER_FIX,
        )
    ]
    assert exit_code(found) == 1


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ((404, "text/plain", "404 page not found"), "{url}/metrics answered HTTP 404"),
        (
            (401, "text/plain", "Unauthorized"),
            "{url}/metrics answered HTTP 401: it needs credentials "
            "(http://user:password@host:9808)",
        ),
        (
            (200, "text/html", "<html><body>Grafana</body></html>"),
            "{url}/metrics answered, but not with Prometheus metrics (text/html)",
        ),
        (
            (200, "text/plain; version=0.0.4", "# TYPE node_load1 gauge\nnode_load1 0.5\n"),
            "{url}/metrics serves 1 series, none of celery-vitals (no "
            "celery_vitals_build_info): another program listens there",
        ),
    ],
    ids=["404", "401", "html", "another-exporter"],
)
def test_an_url_that_is_not_celery_vitals_is_one_clear_failure(answer: Answer, error: str) -> None:
    with serving({"/metrics": answer}) as (url, _):
        view = scrape(url)
    assert (view.error, view.before) == (error.format(url=url), {})


def test_celery_vitals_metrics_are_read() -> None:
    body = (
        "# TYPE celery_vitals_build_info gauge\n"
        'celery_vitals_build_info{version="1.0"} 1.0\n'
        "# TYPE celery_vitals_event_stream_up gauge\n"
        "celery_vitals_event_stream_up 1.0\n"
    )
    with serving({"/metrics": (200, "text/plain; version=0.0.4", body)}) as (url, asked):
        view = scrape(url.replace("http://", "http://monitor:pw@"))
    assert view.error is None
    assert view.before == {
        'celery_vitals_build_info{version="1.0"}': 1.0,
        "celery_vitals_event_stream_up{}": 1.0,
    }
    token = base64.b64encode(b"monitor:pw").decode()
    assert asked == [("/metrics", f"Basic {token}")]


# -- celery beat -----------------------------------------------------------------------------

BEAT_FIX = (
    "pass --prometheus-url http://prometheus:9090, the Prometheus that scrapes beat's agent "
    "(celery_vitals.agent.install(app) in the app module beat loads), or --exporter-url "
    "http://BEAT:9809 to read that agent itself"
)


def test_beat_is_not_visible_from_the_broker_and_the_doctor_says_how_to_see_it() -> None:
    seen = observation()
    seen.exporter = ExporterView(
        "http://exporter:9808",
        after={'celery_vitals_event_stream_up{broker="redis://r:6379/0"}': 1.0},
    )
    [finding] = by_check(diagnose(seen), "beat")
    assert (finding.status, finding.detail, finding.fix) == (
        "warn",
        "celery beat is not visible from the broker: whether none, one or more than one runs, "
        "and with which scheduler, only the agent inside beat tells (celery_beat_info)",
        BEAT_FIX,
    )
    assert exit_code([finding]) == 0


def test_an_exporter_url_that_is_beats_agent_names_that_beat() -> None:
    labels = 'broker="redis://r:6379/0",entry="{}",name="{}"'
    seen = observation()
    seen.exporter = ExporterView(
        "http://beat:9809",
        after={
            'celery_beat_info{broker="redis://r:6379/0",hostname="celerybeat@beat-0",'
            'scheduler="django_celery_beat.schedulers:DatabaseScheduler"}': 1.0,
            "celery_beat_entry_interval_seconds{"
            + labels.format("sync-orders", "orders.sync")
            + "}": 60.0,
            "celery_beat_entry_interval_seconds{"
            + labels.format("nightly", "reports.nightly")
            + "}": 86400.0,
        },
    )
    [finding] = by_check(diagnose(seen), "beat")
    assert (finding.status, finding.detail) == (
        "ok",
        "http://beat:9809 is celery beat celerybeat@beat-0 (scheduler "
        "django_celery_beat.schedulers:DatabaseScheduler, 2 entries); other beats, if any, are "
        "not visible from here",
    )


def test_with_prometheus_the_prometheus_side_reports_beat() -> None:
    from celery_vitals.doctor.prometheus import PrometheusView

    seen = observation()
    seen.prometheus = PrometheusView("http://prometheus:9090", error="cannot reach it")
    assert by_check(diagnose(seen), "beat") == []
