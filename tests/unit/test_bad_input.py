"""Hostile and broken input: every case is a counted skip, never an exception."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from tests.support.pipeline import PipelineHarness, event


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("a string", "malformed_body"),
        (42, "malformed_body"),
        (None, "malformed_body"),
        ([1, "x"], "malformed_event"),
        ({"uuid": "u1"}, "missing_type"),
        ({"type": ["task-sent"]}, "missing_type"),
        (event("task-started"), "missing_uuid"),
        (event("task-succeeded", uuid=["not", "a", "uuid"]), "missing_uuid"),
    ],
)
def test_unusable_bodies_are_counted_skips(body: object, reason: str) -> None:
    h = PipelineHarness()
    h.feed(body)
    assert h.value("celery_vitals_events_skipped_total", reason=reason) == (
        2 if reason == "malformed_event" else 1
    )


def test_unknown_event_types_are_counted_as_other() -> None:
    h = PipelineHarness()
    h.feed(event("worker-custom"), event("x" * 10_000))
    assert h.value("celery_vitals_events_total", type="other") == 2


def test_hostile_label_values_are_folded() -> None:
    h = PipelineHarness(max_task_names=2)
    h.feed(
        event("task-received", uuid="u1", name="n" * 10_000),
        event("task-received", uuid="u2", name={"not": "hashable"}),
        event("task-received", uuid="u3", name="bad\nname"),
        event("task-received", uuid="u4", name="a"),
        event("task-received", uuid="u5", name="b"),
        event("task-received", uuid="u6", name="c"),
    )
    folded = "celery_vitals_label_values_folded_total"
    assert h.value(folded, label="name", reason="too_long") == 1
    assert h.value(folded, label="name", reason="not_a_string") == 1
    assert h.value(folded, label="name", reason="unprintable") == 1
    assert h.value(folded, label="name", reason="cap") == 1
    assert h.task("celery_task_received_total", "other") == 4
    assert h.task("celery_task_received_total", "a") == 1


def test_non_numeric_fields_skip_only_the_observation() -> None:
    h = PipelineHarness()
    h.feed(
        event("task-received", uuid="u1", name="t", retries="two", timestamp="soon"),
        event("task-started", uuid="u1", timestamp=None),
        event("task-succeeded", uuid="u1", runtime="fast"),
        event("worker-heartbeat", active="many", processed=float("nan"), loadavg="high"),
    )
    assert h.task("celery_task_succeeded_total", "t") == 1
    assert h.task("celery_task_runtime_seconds_count", "t") is None
    assert (
        h.value(
            "celery_vitals_observations_skipped_total",
            metric="celery_task_runtime_seconds",
            reason="bad_runtime",
        )
        == 1
    )
    assert h.value("celery_worker_up", hostname="w1@host") == 1
    assert h.value("celery_worker_tasks_active", hostname="w1@host") is None


def test_a_handler_bug_is_a_counted_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    h = PipelineHarness()

    def explode(event: object, now: float) -> None:
        raise RuntimeError("bug")

    monkeypatch.setitem(h.router.handlers, "task-started", explode)
    h.feed([event("task-started", uuid="u1"), event("task-received", uuid="u2", name="t")])
    assert h.value("celery_vitals_events_skipped_total", reason="handler_error") == 1
    assert h.task("celery_task_received_total", "t") == 1


def test_exception_messages_never_become_labels() -> None:
    h = PipelineHarness()
    h.feed(
        event("task-received", uuid="u1", name="t"),
        event("task-failed", uuid="u1", exception="password=hunter2 leaked"),
        event("task-received", uuid="u2", name="t"),
        event("task-failed", uuid="u2", exception={"weird": 1}),
    )
    assert h.task("celery_task_failed_total", "t", exception="unknown") == 2
    assert b"hunter2" not in generate_latest(h.registry)


def test_lag_is_exporter_time_minus_event_time() -> None:
    h = PipelineHarness()
    h.feed(event("worker-heartbeat", ts=h.clock.now - 2.5))
    assert h.value("celery_vitals_event_lag_seconds") == 2.5
