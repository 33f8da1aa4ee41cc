"""TaskTracker on synthetic events: attribution, durations, dedup, redelivery, bounds."""

from __future__ import annotations

from tests.support.pipeline import T0, PipelineHarness, event, lifecycle


def test_lifecycle_counts_and_durations() -> None:
    h = PipelineHarness()
    h.feed(*lifecycle("u1", "orders.charge", queue="billing", runtime=0.2))
    for metric in ("sent", "received", "started", "succeeded"):
        assert h.task(f"celery_task_{metric}_total", "orders.charge", "billing") == 1
    assert h.task("celery_task_runtime_seconds_count", "orders.charge", "billing") == 1
    assert h.task("celery_task_runtime_seconds_sum", "orders.charge", "billing") == 0.2
    assert h.task("celery_task_runtime_seconds_bucket", "orders.charge", "billing", le="0.25") == 1
    assert h.task("celery_task_runtime_seconds_bucket", "orders.charge", "billing", le="0.1") == 0
    # sent at T0, received T0+1, started T0+3
    assert h.task("celery_task_queue_wait_seconds_sum", "orders.charge", "billing") == 3
    assert h.task("celery_task_prefetch_wait_seconds_sum", "orders.charge", "billing") == 2
    assert (
        h.task("celery_task_last_success_timestamp_seconds", "orders.charge", "billing") == T0 + 3.2
    )
    assert h.value("celery_vitals_tracked_tasks") == 0


def test_batched_bodies_are_routed_like_single_events() -> None:
    single, batched = PipelineHarness(), PipelineHarness()
    events = lifecycle("u1", "a") + lifecycle("u2", "a")
    single.feed(*events)
    batched.feed(events[:3], events[3:])
    for h in (single, batched):
        assert h.task("celery_task_succeeded_total", "a") == 2
        assert h.value("celery_vitals_events_total", type="task-started") == 2


def test_queue_learned_from_task_sent_applies_when_sent_events_are_missing() -> None:
    h = PipelineHarness()
    h.feed(*lifecycle("u1", "reports.build", queue="reports"))
    # a later task of the same name arrives without task-sent
    h.feed(
        event("task-received", uuid="u2", name="reports.build"),
        event("task-started", uuid="u2"),
        event("task-succeeded", uuid="u2", runtime=1.0),
    )
    assert h.task("celery_task_succeeded_total", "reports.build", "reports") == 2


def test_default_queue_is_configurable() -> None:
    h = PipelineHarness(default_queue="main")
    h.feed(event("task-received", uuid="u1", name="t"))
    assert h.task("celery_task_received_total", "t", "main") == 1


def test_failure_by_exception_class_never_message() -> None:
    h = PipelineHarness()
    h.feed(
        event("task-received", uuid="u1", name="t"),
        event("task-failed", uuid="u1", exception="KeyError('customer 42 secret')"),
        event("task-received", uuid="u2", name="t"),
        event(
            "task-failed",
            uuid="u2",
            exception="ExceptionWithTraceback()",
            traceback='Traceback (most recent call last):\n  File "x", line 1\n'
            "billiard.exceptions.TimeLimitExceeded: TimeLimitExceeded(1,)\n",
        ),
    )
    assert h.task("celery_task_failed_total", "t", exception="KeyError") == 1
    assert h.task("celery_task_failed_total", "t", exception="TimeLimitExceeded") == 1


def test_not_registered_failure_is_counted_under_the_unknown_tasks_name() -> None:
    h = PipelineHarness()
    h.feed(event("task-failed", uuid="u1", exception="NotRegistered('billing.refund')"))
    assert h.task("celery_task_failed_total", "billing.refund", exception="NotRegistered") == 1
    assert h.value("celery_vitals_unknown_uuid_events_total", type="task-failed") is None


def test_a_task_sent_arriving_after_its_task_failed_never_waits_in_the_queue() -> None:
    # a worker discarding an unregistered task can report task-failed before the
    # client's task-sent reaches the exporter: the task is over, no message waits
    h = PipelineHarness()
    now = h.clock.now
    h.feed(
        event(
            "task-failed",
            now - 2,
            uuid="u1",
            exception="NotRegistered('old.task')",
            queue="billing",
        ),
        event(
            "task-sent", now - 3, "client", uuid="u1", name="old.task", retries=0, queue="billing"
        ),
    )
    assert h.task("celery_task_sent_total", "old.task", "billing") == 1
    assert h.task("celery_task_failed_total", "old.task", "billing", exception="NotRegistered") == 1
    assert h.tasks.oldest_pending() == {}
    assert h.value("celery_queue_oldest_message_age_seconds", queue_name="billing") is None
    assert h.value("celery_vitals_tracked_tasks") == 0


def test_duplicate_terminal_events_count_once() -> None:
    h = PipelineHarness()
    failed = event("task-failed", uuid="u1", exception="ExceptionWithTraceback()")
    h.feed(event("task-received", uuid="u1", name="t"), failed, dict(failed))
    h.feed(*lifecycle("u2", "t"))
    h.feed(event("task-succeeded", uuid="u2", runtime=0.1))
    assert h.task("celery_task_failed_total", "t", exception="ExceptionWithTraceback") == 1
    assert h.task("celery_task_succeeded_total", "t") == 1
    assert h.value("celery_vitals_events_skipped_total", reason="duplicate_terminal") == 2


def test_retry_is_not_a_redelivery_but_a_second_receive_is() -> None:
    h = PipelineHarness()
    h.feed(
        event("task-received", uuid="u1", name="t", retries=0),
        event("task-started", uuid="u1"),
        event("task-retried", uuid="u1", exception="IOError()"),
        event("task-received", uuid="u1", name="t", retries=1),
    )
    assert h.task("celery_task_retried_total", "t") == 1
    assert h.task("celery_task_redelivered_total", "t") is None
    # visibility timeout: the same message (same retries) handed out again
    h.feed(event("task-received", uuid="u1", name="t", retries=1, hostname="w2@host"))
    assert h.task("celery_task_redelivered_total", "t") == 1
    assert h.task("celery_task_received_total", "t") == 3


def test_rejected_split_by_requeue_and_revoked_expired() -> None:
    h = PipelineHarness()
    h.feed(
        event("task-received", uuid="u1", name="t"),
        event("task-rejected", uuid="u1", requeue=True),
        event("task-rejected", uuid="u1", requeue=False),
        event("task-received", uuid="u2", name="t"),
        event("task-revoked", uuid="u2", expired=True, terminated=False),
        event("task-received", uuid="u3", name="t"),
        event("task-revoked", uuid="u3", expired=False, terminated=True),
    )
    assert h.task("celery_task_rejected_total", "t", requeue="true") == 1
    assert h.task("celery_task_rejected_total", "t", requeue="false") == 1
    assert h.task("celery_task_revoked_total", "t") == 2
    assert h.task("celery_task_expired_total", "t") == 1
    assert h.value("celery_vitals_tracked_tasks") == 0


def test_events_for_unknown_uuids_are_counted_under_unknown() -> None:
    h = PipelineHarness()
    h.feed(event("task-started", uuid="late"), event("task-succeeded", uuid="late", runtime=1))
    assert h.task("celery_task_started_total", "unknown") == 1
    assert h.task("celery_task_succeeded_total", "unknown") == 1
    assert h.value("celery_vitals_unknown_uuid_events_total", type="task-started") == 1
    assert h.value("celery_vitals_unknown_uuid_events_total", type="task-succeeded") is None


def test_eta_delays_the_start_of_queue_wait() -> None:
    h = PipelineHarness()
    h.feed(
        event(
            "task-sent", T0, uuid="u1", name="t", queue="celery", eta="2027-01-15T08:00:10+00:00"
        ),
        event("task-received", T0 + 1, uuid="u1", name="t"),
    )
    eta = T0 + 10  # T0 is 2027-01-15T08:00:00Z
    h.feed(event("task-started", eta + 4, uuid="u1"))
    assert h.task("celery_task_queue_wait_seconds_sum", "t") == 4


def test_tracker_bounded_by_entries_and_age_with_counted_evictions() -> None:
    h = PipelineHarness(max_tracked_tasks=3, max_task_age=60)
    for i in range(5):
        h.feed(event("task-received", uuid=f"u{i}", name="t"))
    assert h.value("celery_vitals_tracked_tasks") == 3
    assert h.value("celery_vitals_tracker_evictions_total", reason="capacity") == 2
    assert h.value("celery_worker_tasks_reserved", hostname="w1@host") is None  # no worker yet
    h.clock.now += 61
    h.router.tick()
    assert h.value("celery_vitals_tracked_tasks") == 0
    assert h.value("celery_vitals_tracker_evictions_total", reason="age") == 3


def test_finished_tasks_do_not_occupy_the_tracker() -> None:
    h = PipelineHarness(max_tracked_tasks=10)
    for i in range(100):
        h.feed(*lifecycle(f"u{i}", "t"))
    assert h.value("celery_vitals_tracked_tasks") == 0
    assert h.value("celery_vitals_tracker_evictions_total", reason="capacity") == 0
    assert h.task("celery_task_succeeded_total", "t") == 100


def test_negative_durations_from_clock_skew_are_skipped_and_counted() -> None:
    h = PipelineHarness()
    h.feed(
        event("task-sent", T0 + 10, uuid="u1", name="t", queue="celery"),
        event("task-received", T0, uuid="u1", name="t"),
        event("task-started", T0 + 5, uuid="u1"),
    )
    assert h.task("celery_task_queue_wait_seconds_count", "t") is None
    assert (
        h.value(
            "celery_vitals_observations_skipped_total",
            metric="celery_task_queue_wait_seconds",
            reason="negative_duration",
        )
        == 1
    )
    assert h.task("celery_task_prefetch_wait_seconds_sum", "t") == 5


def test_hostname_label_is_opt_in() -> None:
    h = PipelineHarness(task_hostname_label=True)
    h.feed(*lifecycle("u1", "t", hostname="w9@host"))
    assert h.task("celery_task_succeeded_total", "t", hostname="w9@host") == 1
    assert PipelineHarness().task("celery_task_succeeded_total", "t", hostname="w9@host") is None


def test_task_retried_reported_after_the_retry_finished_keeps_its_name() -> None:
    """Prefork: the retried message can run and finish before task-retried of attempt 0."""
    h = PipelineHarness()
    h.feed(
        event("task-received", uuid="u1", name="flaky", retries=0),
        event("task-started", uuid="u1"),
        event("task-received", uuid="u1", name="flaky", retries=1),
        event("task-started", uuid="u1"),
        event("task-succeeded", uuid="u1", runtime=0.1),
        event("task-retried", uuid="u1", exception="ConnectionError()"),
    )
    assert h.task("celery_task_retried_total", "flaky") == 1
    assert h.task("celery_task_retried_total", "unknown") is None
    assert h.value("celery_vitals_tracked_tasks") == 0
    assert h.task("celery_task_redelivered_total", "flaky") is None


def test_retry_sent_before_the_running_attempt_started_keeps_both_queue_waits() -> None:
    """Prefork publishes the retry's task-sent at once, while the main process still
    buffers the first attempt's task-started."""
    h = PipelineHarness()
    h.feed(
        event("task-sent", T0, uuid="u1", name="flaky", queue="celery", retries=0),
        event("task-received", T0 + 1, uuid="u1", name="flaky", retries=0),
        event("task-sent", T0 + 4, uuid="u1", name="flaky", queue="celery", retries=1),
        event("task-started", T0 + 2, uuid="u1"),
        event("task-retried", T0 + 4, uuid="u1"),
        event("task-received", T0 + 5, uuid="u1", name="flaky", retries=1),
        event("task-started", T0 + 7, uuid="u1"),
    )
    assert h.task("celery_task_queue_wait_seconds_count", "flaky") == 2
    assert h.task("celery_task_queue_wait_seconds_sum", "flaky") == 2 + 3
    assert (
        h.value(
            "celery_vitals_observations_skipped_total",
            metric="celery_task_queue_wait_seconds",
            reason="negative_duration",
        )
        is None
    )


def test_reject_without_requeue_after_task_failed_counts_both() -> None:
    """Celery 5.7: a task raising Reject(requeue=False) sends task-failed, then task-rejected."""
    h = PipelineHarness()
    h.feed(
        event("task-received", uuid="u1", name="poison"),
        event("task-started", uuid="u1"),
        event("task-failed", uuid="u1", exception="Reject('poison message', False)"),
        event("task-rejected", uuid="u1", requeue=False),
    )
    assert h.task("celery_task_failed_total", "poison", exception="Reject") == 1
    assert h.task("celery_task_rejected_total", "poison", requeue="false") == 1
    assert h.value("celery_vitals_events_skipped_total", reason="duplicate_terminal") is None
