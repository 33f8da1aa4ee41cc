"""QueuePoller and QueueCollector on a scripted probe (the real probes: integration tests)."""

from __future__ import annotations

import datetime

from celery_vitals.brokers.probe import ProbeResult, QueueStats
from celery_vitals.poller import QueuePoller
from tests.support.pipeline import PipelineHarness, ScriptedProbe, event, redis_result, with_poller


def test_queue_set_is_configured_plus_discovered_plus_workers_without_plumbing() -> None:
    h = PipelineHarness()
    probe = ScriptedProbe(
        redis_result(0),
        discovered={
            "celeryev.abc",
            "w1@h.celery.pidbox",
            "w1@h.reply.celery.pidbox",
            "celery_delayed_27",
            "amq.gen-x1",
            "reports",
        },
    )
    with_poller(h, probe).poll_once()
    assert probe.polled == [["billing", "from-worker", "missing", "reports"]]


def test_dlqs_named_without_a_glob_are_polled_without_being_configured_as_queues() -> None:
    h = PipelineHarness()
    probe = ScriptedProbe(redis_result(0))
    QueuePoller(
        probe,
        queues=(),
        dlqs=("orders.dead", "*.dlq"),
        interval=15,
        discovery_interval=300,
        queue_names=h.pipeline.guards["queue_name"],
    ).poll_once()
    assert probe.polled == [["orders.dead"]]


def test_queue_and_broker_metrics_from_the_latest_poll() -> None:
    h = PipelineHarness()
    with_poller(h, ScriptedProbe(redis_result(0))).poll_once()
    q = {"queue_name": "billing"}
    assert h.value("celery_queue_length", **q) == 7
    assert h.value("celery_queue_unacked", **q) == 2
    assert h.value("celery_queue_oldest_unacked_age_seconds", **q) == 42
    assert h.value("celery_queue_consumers", **q) is None  # Redis cannot tell
    assert h.value("celery_queue_exists", **q) == 1
    assert h.value("celery_queue_exists", queue_name="missing") == 0
    assert h.value("celery_queue_length", queue_name="missing") is None  # absent, not 0
    # the Redis transport's option applies to every queue the broker knows (not DLQs)
    assert h.value("celery_queue_visibility_timeout_seconds", **q) == 3600
    assert h.value("celery_queue_visibility_timeout_seconds", queue_name="missing") is None
    assert h.value("celery_queue_visibility_timeout_seconds", queue_name="billing.dead") is None
    assert h.value("celery_queue_delayed", **q) is None  # SQS only
    assert h.value("celery_dlq_length", queue_name="billing.dead") == 0
    assert h.value("celery_queue_length", queue_name="billing.dead") is None
    assert h.value("celery_broker_up") == 1
    assert h.value("celery_broker_memory_used_bytes") == 1e6
    assert h.value("celery_broker_persistence_enabled", kind="aof") == 1
    assert h.value("celery_broker_persistence_enabled", kind="rdb") == 0
    assert (
        h.value(
            "celery_broker_info", transport="redis", version="7.0.15", eviction_policy="noeviction"
        )
        == 1
    )
    assert h.value("celery_broker_probe_duration_seconds_count") == 1


def test_dlq_ingress_from_depth_increases_and_from_publish_counters() -> None:
    h = PipelineHarness()
    poller = with_poller(
        h, ScriptedProbe(redis_result(3), redis_result(5), redis_result(1), redis_result(4))
    )
    for _ in range(4):
        poller.poll_once()
    # baseline 3, then +2, drained to 1 (no ingress seen), then +3: a lower bound
    assert h.value("celery_dlq_ingress_total", queue_name="billing.dead") == 5

    counted = PipelineHarness()
    amqp = [
        ProbeResult(
            queues=(
                QueueStats("work", True, ready=0, consumers=1),
                QueueStats("dlq", True, ready=depth, published_total=published),
            ),
            dead_letter_targets=frozenset({"dlq"}),
        )
        for depth, published in ((0, 10), (3, 13), (0, 20))
    ]
    poller = with_poller(counted, ScriptedProbe(*amqp))
    for _ in range(3):
        poller.poll_once()
    assert counted.value("celery_dlq_ingress_total", queue_name="dlq") == 10
    assert counted.value("celery_dlq_length", queue_name="dlq") == 0
    assert counted.value("celery_queue_consumers", queue_name="work") == 1


def test_a_failing_poll_reports_the_broker_down_and_keeps_counting() -> None:
    h = PipelineHarness()
    poller = with_poller(
        h,
        ScriptedProbe(
            redis_result(0), ConnectionError("refused"), ConnectionError("refused"), redis_result(0)
        ),
    )
    poller.poll_once()
    poller.poll_once()
    assert h.value("celery_broker_up") == 0
    assert h.value("celery_queue_length", queue_name="billing") == 7  # last known, not 0
    poller.poll_once()
    assert h.value("celery_broker_probe_errors_total", error="ConnectionError") == 2
    poller.poll_once()
    assert h.value("celery_broker_up") == 1


def test_oldest_message_age_from_task_sent_events() -> None:
    h = PipelineHarness()
    now = h.clock.now
    h.feed(
        event("task-sent", now - 30, uuid="u1", name="t", queue="billing"),
        event("task-sent", now - 10, uuid="u2", name="t", queue="billing"),
        event("task-sent", now - 5, uuid="u3", name="t", queue="reports"),
    )
    assert h.value("celery_queue_oldest_message_age_seconds", queue_name="billing") == 30
    h.feed(event("task-received", uuid="u1", name="t"))
    assert h.value("celery_queue_oldest_message_age_seconds", queue_name="billing") == 10
    h.feed(event("task-revoked", uuid="u2"), event("task-received", uuid="u3", name="t"))
    assert h.value("celery_queue_oldest_message_age_seconds", queue_name="billing") is None
    assert h.value("celery_queue_oldest_message_age_seconds", queue_name="reports") is None


def iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat()


def test_an_eta_task_sent_first_hides_no_older_waiting_task() -> None:
    """Sent first, a countdown task waits from its ETA; the plain tasks sent after it
    have waited since their sending, and the oldest of all is what the age says."""
    h = PipelineHarness()
    now = h.clock.now
    age = "celery_queue_oldest_message_age_seconds"
    h.feed(
        event("task-sent", now - 40, uuid="later", name="t", queue="billing", eta=iso(now + 3600)),
        event("task-sent", now - 30, uuid="u1", name="t", queue="billing"),
        event("task-sent", now - 50, uuid="due", name="t", queue="reports", eta=iso(now - 20)),
        event("task-sent", now - 10, uuid="u2", name="t", queue="reports"),
        event("task-sent", now - 5, uuid="soon", name="t", queue="mail", eta=iso(now + 60)),
    )
    assert h.value(age, queue_name="billing") == 30  # not 0, the future ETA's
    assert h.value(age, queue_name="reports") == 20  # the ETA passed 20 s ago
    assert h.value(age, queue_name="mail") == 0  # runnable in a minute: no wait yet
    h.feed(
        event("task-received", uuid="due", name="t"), event("task-received", uuid="u1", name="t")
    )
    assert h.value(age, queue_name="reports") == 10
    assert h.value(age, queue_name="billing") == 0  # only the future ETA left
    h.feed(event("task-received", uuid="later", name="t"))
    assert h.value(age, queue_name="billing") is None


def test_a_dlq_has_no_oldest_message_age_even_when_tasks_are_sent_to_it() -> None:
    # a task that re-publishes itself to a DLQ by name (Redis has no dead-lettering),
    # and a queue RabbitMQ says another queue dead-letters into: both hold by design
    h = PipelineHarness()
    amqp = ProbeResult(
        queues=(
            QueueStats("work", True, ready=0, consumers=1),
            QueueStats("parked", True, ready=1),
        ),
        dead_letter_targets=frozenset({"parked"}),
    )
    with_poller(h, ScriptedProbe(amqp)).poll_once()
    now = h.clock.now
    h.feed(
        event("task-sent", now - 900, uuid="u1", name="t", queue="billing.dead"),
        event("task-sent", now - 800, uuid="u2", name="t", queue="parked"),
        event("task-sent", now - 700, uuid="u3", name="t", queue="work"),
    )
    assert h.value("celery_queue_oldest_message_age_seconds", queue_name="billing.dead") is None
    assert h.value("celery_queue_oldest_message_age_seconds", queue_name="parked") is None
    assert h.value("celery_queue_oldest_message_age_seconds", queue_name="work") == 700
    assert h.task("celery_task_sent_total", "t", "billing.dead") == 1


def oldest_ages(h: PipelineHarness) -> dict[str, float]:
    """Every celery_queue_oldest_message_age_seconds sample by queue (a duplicate fails)."""
    ages: dict[str, float] = {}
    for family in h.registry.collect():
        for sample in family.samples:
            if sample.name == "celery_queue_oldest_message_age_seconds":
                queue = sample.labels["queue_name"]
                assert queue not in ages, f"two series for queue {queue}"
                ages[queue] = sample.value
    return ages


def test_oldest_message_age_from_the_stamp_at_the_queue_head_without_events() -> None:
    # the agent setup: no event stream, the broker probe read the heads' stamps
    h = PipelineHarness()
    now = h.clock.now
    result = ProbeResult(
        queues=(
            QueueStats("billing", True, ready=3, oldest_published=now - 30.5),
            QueueStats("reports", True, ready=2),  # its head has no stamp
            QueueStats("empty", True, ready=0),
            QueueStats("billing.dead", True, ready=4, oldest_published=now - 900),
            QueueStats("skewed", True, ready=1, oldest_published=now + 2),  # publisher ahead
        )
    )
    with_poller(h, ScriptedProbe(result)).poll_once()
    assert oldest_ages(h) == {"billing": 30.5, "skewed": 0.0}
    h.clock.now += 10  # the age grows between polls: it is taken at scrape time
    assert oldest_ages(h) == {"billing": 40.5, "skewed": 8.0}


def test_the_broker_stamp_owns_a_queue_series_task_sent_events_the_others() -> None:
    h = PipelineHarness()
    now = h.clock.now
    h.feed(
        event("task-sent", now - 100, uuid="u1", name="t", queue="billing"),
        event("task-sent", now - 50, uuid="u2", name="t", queue="reports"),
        event("task-sent", now - 20, uuid="u3", name="t", queue="mail"),
    )
    result = ProbeResult(
        queues=(
            # the broker's head is older than any task-sent event the exporter saw (a
            # publisher without task_send_sent_event, or an exporter restarted since)
            QueueStats("billing", True, ready=5, oldest_published=now - 400),
            QueueStats("reports", True, ready=1),  # unstamped head: the events tell
            QueueStats("mail", True, ready=1, oldest_published=now - 10),
        )
    )
    with_poller(h, ScriptedProbe(result)).poll_once()
    assert oldest_ages(h) == {"billing": 400, "reports": 50, "mail": 10}


def test_a_dead_letter_target_is_polled_from_the_next_poll_not_the_next_discovery() -> None:
    h = PipelineHarness()
    first = ProbeResult(
        queues=(QueueStats("billing", True, ready=0),),
        dead_letter_targets=frozenset({"billing.parked"}),
    )
    second = ProbeResult(
        queues=(QueueStats("billing", True, ready=0), QueueStats("billing.parked", True, ready=4)),
        dead_letter_targets=frozenset({"billing.parked"}),
    )
    probe = ScriptedProbe(first, second)
    poller = with_poller(h, probe)
    poller.poll_once()
    poller.poll_once()  # well within the discovery interval
    assert probe.polled == [
        ["billing", "from-worker", "missing"],
        ["billing", "billing.parked", "from-worker", "missing"],
    ]
    assert h.value("celery_dlq_length", queue_name="billing.parked") == 4


def test_queue_label_cap_applies_to_polled_queues() -> None:
    # "celery" (the default queue) takes one slot, the DLQ one at poll time, billing one
    h = PipelineHarness(max_queue_names=3)
    with_poller(h, ScriptedProbe(redis_result(0))).poll_once()
    assert h.value("celery_queue_length", queue_name="billing") == 7
    assert h.value("celery_queue_exists", queue_name="missing") is None
    assert h.value("celery_vitals_label_values_folded_total", label="queue_name", reason="cap") >= 1


def test_each_poll_asks_new_workers_and_a_failed_broadcast_costs_nothing_else() -> None:
    h = PipelineHarness()
    calls: list[int] = []

    def worker_stats() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise TimeoutError("no reply")

    poller = with_poller(
        h, ScriptedProbe(redis_result(0), redis_result(0)), worker_stats=worker_stats
    )
    poller.poll_once()
    poller.poll_once()
    assert len(calls) == 2
    assert poller.up is True and poller.errors == {}  # a broadcast is not a broker error
