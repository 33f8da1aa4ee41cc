"""The doctor's checks on observations built by hand: the cases the live tests cannot
stage cheaply (no worker, an idle worker, requeue loops, the exporter's own health)."""

from __future__ import annotations

from typing import Any

from celery_vitals.config import Config
from celery_vitals.doctor import (
    ExporterView,
    Finding,
    Observation,
    WorkerView,
    diagnose,
    exit_code,
    parse_registered,
    text,
)
from celery_vitals.probes import ProbeResult, QueueStats

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
    from celery_vitals.doctor import _scrape
    from tests.support.net import free_port

    view = _scrape(f"http://monitor:s3cret@127.0.0.1:{free_port()}")
    assert view.url.startswith("http://monitor:**@127.0.0.1:")
    assert view.error is not None and "refused" in view.error.lower()
    assert "s3cret" not in view.url + view.error
