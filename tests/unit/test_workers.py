"""WorkerTracker: liveness by the exporter's clock, purge, reserved, missing task events."""

from __future__ import annotations

from celery_vitals.tasks import SENT_WINDOW
from celery_vitals.workers import PoolStats, pool_from_stats
from tests.support.pipeline import PipelineHarness, event, lifecycle


def heartbeat(
    processed: int, active: int = 0, hostname: str = "w1@host", type_: str = "worker-heartbeat"
) -> dict[str, object]:
    return event(
        type_,
        hostname=hostname,
        freq=2.0,
        active=active,
        processed=processed,
        loadavg=[0.75, 0.5, 0.25],
        sw_ident="py-celery",
        sw_ver="5.7.0",
    )


def test_heartbeat_gauges_and_starts() -> None:
    h = PipelineHarness()
    h.feed(heartbeat(0, type_="worker-online"), heartbeat(7, active=2))
    w = {"hostname": "w1@host"}
    assert h.value("celery_worker_up", **w) == 1
    assert h.value("celery_worker_starts_total", **w) == 1
    assert h.value("celery_worker_tasks_active", **w) == 2
    assert h.value("celery_worker_tasks_processed", **w) == 7
    assert h.value("celery_worker_load1", **w) == 0.75
    assert h.value("celery_worker_last_heartbeat_timestamp_seconds", **w) == h.clock.now


def test_silent_worker_goes_down_then_is_purged() -> None:
    h = PipelineHarness(worker_timeout=30, worker_purge_after=300)
    h.feed(heartbeat(0, type_="worker-online"))
    h.clock.now += 29
    assert h.value("celery_worker_up", hostname="w1@host") == 1
    h.clock.now += 2
    assert h.value("celery_worker_up", hostname="w1@host") == 0
    h.clock.now += 300
    h.router.tick()
    assert h.value("celery_worker_up", hostname="w1@host") is None
    assert h.pipeline.guards["worker_hostname"].admitted == set()


def test_offline_worker_is_down_at_once_and_releases_its_prefetch() -> None:
    h = PipelineHarness()
    h.feed(
        heartbeat(0, type_="worker-online"),
        event("task-received", uuid="u1", name="t"),
        event("task-received", uuid="u2", name="t"),
    )
    assert h.value("celery_worker_tasks_reserved", hostname="w1@host") == 2
    h.feed(event("task-started", uuid="u1"))
    assert h.value("celery_worker_tasks_reserved", hostname="w1@host") == 1
    h.feed(heartbeat(1, type_="worker-offline"))
    assert h.value("celery_worker_up", hostname="w1@host") == 0
    assert h.value("celery_worker_tasks_reserved", hostname="w1@host") == 0
    h.feed(event("task-started", uuid="u2", hostname="w2@host"))  # redelivered elsewhere
    assert h.value("celery_worker_tasks_reserved", hostname="w1@host") == 0


def test_task_events_missing_when_heartbeats_show_work_but_no_task_event_came() -> None:
    h = PipelineHarness()
    h.feed(heartbeat(0, type_="worker-online"), heartbeat(5), heartbeat(9))
    assert h.value("celery_worker_task_events_missing", hostname="w1@host") == 1
    h.feed(event("task-received", uuid="u1", name="t"), heartbeat(10), heartbeat(10))
    assert h.value("celery_worker_task_events_missing", hostname="w1@host") == 0


def test_task_events_buffered_past_one_heartbeat_are_not_missing() -> None:
    h = PipelineHarness()
    h.feed(heartbeat(0, type_="worker-online"), heartbeat(0), heartbeat(3))
    # the batch of task events arrives just after the heartbeat that counted them
    h.feed([event("task-received", uuid="u1", name="t"), event("task-started", uuid="u1")])
    h.feed(heartbeat(3))
    assert h.value("celery_worker_task_events_missing", hostname="w1@host") == 0


def test_idle_worker_is_not_flagged() -> None:
    h = PipelineHarness()
    h.feed(heartbeat(0, type_="worker-online"), heartbeat(0), heartbeat(0), heartbeat(0))
    assert h.value("celery_worker_task_events_missing", hostname="w1@host") == 0


def test_gaps_between_heartbeats_count_as_missed_heartbeats() -> None:
    h = PipelineHarness()
    t = h.clock.now
    h.feed({**heartbeat(0, type_="worker-online"), "timestamp": t})
    for sent in (t + 2, t + 4, t + 10, t + 12.9, t + 14.9):  # 6, 8 lost; 12.9 is jitter
        h.feed({**heartbeat(0), "timestamp": sent})
    assert h.value("celery_vitals_heartbeats_missed_total") == 2
    h.feed({**heartbeat(0, type_="worker-online"), "timestamp": t + 100})  # restart: no gap
    h.feed({**heartbeat(0), "timestamp": t + 102})
    assert h.value("celery_vitals_heartbeats_missed_total") == 2


PREFORK_STATS = {
    "pool": {"implementation": "celery.concurrency.prefork:TaskPool", "max-concurrency": 4},
    "prefetch_count": 16,
}


def test_stats_polls_give_worker_info_pool_processes_and_prefetch_limit() -> None:
    h = PipelineHarness()
    h.feed(heartbeat(0, type_="worker-online"))
    assert h.pipeline.workers.without_stats() == ["w1@host"]
    assert (
        h.value("celery_worker_info", hostname="w1@host", version="5.7.0", pool="prefork") is None
    )  # no stats poll yet: no pool to tell
    h.pipeline.workers.on_stats("w1@host", *pool_from_stats(PREFORK_STATS))
    h.pipeline.workers.on_stats("gone@host", *pool_from_stats(PREFORK_STATS))  # unknown: no
    w = {"hostname": "w1@host"}
    assert h.value("celery_worker_info", version="5.7.0", pool="prefork", **w) == 1
    assert h.value("celery_worker_pool_processes", **w) == 4
    assert h.value("celery_worker_prefetch_limit", **w) == 16
    assert h.value("celery_worker_pool_processes", hostname="gone@host") is None
    assert h.pipeline.workers.without_stats() == []


def test_stats_replies_that_are_not_celerys_give_nothing() -> None:
    assert pool_from_stats({}) == ("", PoolStats())
    assert pool_from_stats(
        {"pool": {"implementation": 3, "max-concurrency": "8"}, "prefetch_count": -1}
    ) == ("", PoolStats())
    name, stats = pool_from_stats(
        {
            "pool": {"implementation": "celery.concurrency.thread:TaskPool", "max-concurrency": 10},
            "prefetch_count": 0,
        }
    )
    assert (name, stats.processes, stats.prefetch_limit) == ("thread", 10, 0)


def test_task_sent_events_missing_per_window() -> None:
    h = PipelineHarness()
    h.router.tick()  # the first window starts
    h.feed(*lifecycle("u1", "t"))  # announced by its task-sent
    h.clock.now += SENT_WINDOW
    h.router.tick()
    assert h.value("celery_vitals_task_sent_events_missing") == 0
    h.feed(event("task-received", uuid="u2", name="t"))  # no task-sent
    assert h.value("celery_vitals_task_sent_events_missing") == 0  # the window is not over
    h.clock.now += SENT_WINDOW
    h.router.tick()
    assert h.value("celery_vitals_task_sent_events_missing") == 1
    h.clock.now += SENT_WINDOW
    h.router.tick()  # a window with only announced tasks, or none: 0 again
    assert h.value("celery_vitals_task_sent_events_missing") == 0


class FakeInspect:
    def __init__(self, asked: list[object], replies: dict[str, object]) -> None:
        self.asked, self.replies = asked, replies

    def active_queues(self) -> dict[str, object]:
        return {host: [{"name": "celery"}] for host in self.replies}

    def stats(self) -> dict[str, object]:
        return self.replies


def test_the_exporter_asks_each_new_worker_for_its_stats_once() -> None:
    from types import SimpleNamespace

    from celery_vitals.exporter import WorkerBroadcasts

    h = PipelineHarness()
    h.feed(heartbeat(0, type_="worker-online"), heartbeat(0, hostname="mute@host"))
    asked: list[object] = []

    def inspect(**options: object) -> FakeInspect:
        asked.append(options.get("destination"))
        return FakeInspect(asked, {"w1@host": PREFORK_STATS})  # mute@host never answers

    app = SimpleNamespace(control=SimpleNamespace(inspect=inspect))
    broadcasts = WorkerBroadcasts(app, h.pipeline.workers, timeout=1)  # type: ignore[arg-type]
    broadcasts.new_workers()
    broadcasts.new_workers()  # mute@host was asked already: no second broadcast
    assert asked == [["w1@host", "mute@host"]]  # in the order the events showed them
    assert h.value("celery_worker_pool_processes", hostname="w1@host") == 4
    assert broadcasts.queues() == {"celery"}  # discovery: everyone again
    assert asked[1:] == [None, None]
