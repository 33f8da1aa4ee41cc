"""The agent's pieces with fake Celery objects: queue resolution, the tap, the pool watch,
the agent's pipeline and HTTP server, and its failure modes (occupied port, bad settings,
a failing collector). Real workers: tests/integration/test_agent.py."""

from __future__ import annotations

import logging
import os
import pickle
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import amqp
import bcrypt
import celery
import pytest
from celery import Celery
from celery.app.amqp import AMQP
from celery.worker import state

import celery_vitals.agent as agent_module
import celery_vitals.agent.pool as pool_module
import celery_vitals.agent.tap as tap_module
from celery_vitals import catalogue
from celery_vitals.agent import Agent
from celery_vitals.agent import publish as publish_module
from celery_vitals.agent.features import FEATURES, Features
from celery_vitals.agent.pool import EX_RECYCLE, PoolWatch, exit_reason, resident_bytes
from celery_vitals.agent.publish import Stamper
from celery_vitals.agent.tap import (
    TAPPED_CLASS,
    Tap,
    delivery_queue,
    tapped_request_cls,
    untapped_tasks,
)
from celery_vitals.config import Config
from celery_vitals.pipeline import Pipeline
from celery_vitals.stamp import HEADER
from stack.net import LOOPBACK, free_port, free_ports, http_get
from tests.support.metrics import Scrape, parse

HOST = "w1@host"


# -- fakes ----------------------------------------------------------------------


def queue(
    name: str, exchange: str | None = None, routing_key: str | None = None
) -> SimpleNamespace:
    return SimpleNamespace(
        name=name, exchange=SimpleNamespace(name=exchange or name), routing_key=routing_key or name
    )


def consumer(*queues: SimpleNamespace, tags: dict[str, str] | None = None) -> SimpleNamespace:
    return SimpleNamespace(
        task_consumer=SimpleNamespace(queues=list(queues), _active_tags=tags or {})
    )


class FakeRequest:
    """What the tap reads of celery.worker.request.Request."""

    def __init__(
        self,
        uuid: str,
        name: str,
        delivery_info: dict[str, Any] | None = None,
        retries: int = 0,
        eta: datetime | None = None,
        *,
        published: object = None,
    ) -> None:
        self.id = uuid
        self.name = name
        self.message = SimpleNamespace(delivery_info=delivery_info or {})
        self.delivery_info = {
            "exchange": (delivery_info or {}).get("exchange"),
            "routing_key": (delivery_info or {}).get("routing_key"),
            "redelivered": (delivery_info or {}).get("redelivered", False),
        }
        self.request_dict: dict[str, Any] = {"retries": retries}
        if published is not None:  # the stamp of a publisher with the agent
            self.request_dict[HEADER] = published
        self.eta = eta
        self.expires = None


class CeleryLikeRequest(FakeRequest):
    """Mimics what create_request_cls builds: on_success sends task-succeeded itself
    when events are on, failures go through on_failure -> send_event."""

    events_enabled = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[str] = []

    def send_event(self, type: str, **fields: Any) -> None:
        self.sent.append(type)

    def on_success(self, outcome: Any, **kwargs: Any) -> None:
        failed, retval, runtime = outcome
        if failed:
            self.send_event("task-failed", exception=retval)
            return
        if self.events_enabled:
            self.send_event("task-succeeded", result=retval, runtime=runtime)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def config(**overrides: Any) -> Config:
    from celery_vitals.config import DEFAULT_RUNTIME_BUCKETS, DEFAULT_WAIT_BUCKETS, parse_buckets

    return Config(
        broker_url="",
        runtime_buckets=parse_buckets(DEFAULT_RUNTIME_BUCKETS),
        wait_buckets=parse_buckets(DEFAULT_WAIT_BUCKETS),
        **overrides,
    )


class TapHarness:
    def __init__(self, consumer_: Any = None) -> None:
        self.clock = Clock()
        self.pipeline = Pipeline(
            config(), clock=self.clock, agent={"hostname": HOST, "pool": "prefork"}
        )
        self.tap = Tap(
            self.pipeline.router,
            HOST,
            threading.Lock(),
            consumer=lambda: consumer_,
            clock=self.clock,
        )
        running = SimpleNamespace(pid=os.getpid(), running=True, tap=self.tap)
        self.cls = tapped_request_cls(CeleryLikeRequest, SimpleNamespace(agent=running))

    def tasks_received(self) -> float | None:
        """celery_task_received_total of task t from queue q, without draining the tap."""
        text = self.pipeline.exposition.render().decode()
        return Scrape(text, parse(text)).value(
            "celery_task_received_total", name="t", queue_name="q"
        )

    def scrape(self) -> Scrape:
        self.tap.drain()  # as the agent's HTTP server does before each scrape
        text = self.pipeline.exposition.render().decode()
        return Scrape(text, parse(text))


# -- delivery queue ---------------------------------------------------------------


def test_amqp_consumer_tag_names_the_exact_queue() -> None:
    c = consumer(queue("alpha"), queue("beta", "shared", "jobs"), tags={"alpha": "1", "beta": "2"})
    info = {"consumer_tag": "2", "exchange": "shared", "routing_key": "jobs"}
    assert delivery_queue(info, c) == "beta"


def test_redis_routing_key_of_a_consumed_queue() -> None:
    c = consumer(queue("alpha"), queue("beta"))
    assert delivery_queue({"exchange": "beta", "routing_key": "beta"}, c) == "beta"
    assert delivery_queue({"exchange": "", "routing_key": "alpha"}, c) == "alpha"


def test_redis_binding_with_another_routing_key() -> None:
    c = consumer(queue("alpha"), queue("reports", "topics", "reports.daily"))
    info = {"exchange": "topics", "routing_key": "reports.daily"}
    assert delivery_queue(info, c) == "reports"


def test_unresolvable_delivery_falls_back_to_routing_key_then_none() -> None:
    c = consumer(queue("alpha"))
    assert delivery_queue({"exchange": "x", "routing_key": "elsewhere"}, c) == "elsewhere"
    assert delivery_queue({}, c) is None
    assert delivery_queue({"routing_key": "alpha"}, None) == "alpha"


# -- the tap ------------------------------------------------------------------------


def run(
    h: TapHarness,
    request: CeleryLikeRequest,
    outcome: Any = (False, 3, 0.25),
    consumer_: Any = None,
) -> None:
    """The main-process lifecycle: received (signal), started, finished (pool callback)."""
    h.tap.received(request, consumer_)
    h.clock.now += 0.5
    request.send_event("task-started")
    h.clock.now += 0.25
    request.on_success(outcome)


def test_lifecycle_counts_under_the_delivery_queue_with_events_off() -> None:
    c = consumer(queue("alpha"), queue("beta"))
    h = TapHarness(c)
    h.cls.events_enabled = False  # type: ignore[attr-defined]  # worker without -E
    for i in range(3):
        run(h, h.cls(f"a{i}", "t.add", {"exchange": "alpha", "routing_key": "alpha"}), consumer_=c)
    run(h, h.cls("b0", "t.add", {"exchange": "beta", "routing_key": "beta"}), consumer_=c)
    s = h.scrape()
    for metric in (
        "celery_task_received_total",
        "celery_task_started_total",
        "celery_task_succeeded_total",
    ):
        assert s.get(metric, name="t.add", queue_name="alpha") == 3, metric
        assert s.get(metric, name="t.add", queue_name="beta") == 1, metric
    assert s.series("celery_task_received_total").keys() == {
        frozenset({("name", "t.add"), ("queue_name", "alpha")}),
        frozenset({("name", "t.add"), ("queue_name", "beta")}),
    }
    assert s.get("celery_task_runtime_seconds_sum", name="t.add", queue_name="alpha") == 0.75
    assert s.get("celery_task_prefetch_wait_seconds_sum", name="t.add", queue_name="beta") == 0.5
    assert s.get("celery_vitals_tracked_tasks") == 0  # all finished
    assert h.pipeline.tasks.reserved_by_host == {HOST: 0}


def test_success_is_counted_once_when_celery_also_sends_it() -> None:
    h = TapHarness()
    request = h.cls("u1", "t.add", {"routing_key": "celery"})
    run(h, request)
    assert request.sent == ["task-started", "task-succeeded"]  # Celery's own path untouched
    s = h.scrape()
    assert s.get("celery_task_succeeded_total", name="t.add", queue_name="celery") == 1
    assert s.series("celery_vitals_events_skipped_total") == {}


def test_failures_keep_their_exception_class_worker_lost_included() -> None:
    h = TapHarness()
    run(h, h.cls("u1", "t.fail", {"routing_key": "q"}), outcome=(True, "ValueError('x')", 0.1))
    lost = h.cls("u2", "t.die", {"routing_key": "q"})
    h.tap.received(lost)
    lost.send_event("task-started")
    lost.send_event(
        "task-failed",
        traceback="Traceback...",
        exception="WorkerLostError('Worker exited prematurely: signal 9 (SIGKILL) Job: 3.')",
    )
    s = h.scrape()
    assert (
        s.get("celery_task_failed_total", name="t.fail", queue_name="q", exception="ValueError")
        == 1
    )
    assert (
        s.get("celery_task_failed_total", name="t.die", queue_name="q", exception="WorkerLostError")
        == 1
    )


def test_retry_rejected_and_revoked_on_arrival_are_named() -> None:
    h = TapHarness()
    retried = h.cls("u1", "t.retry", {"routing_key": "q"})
    h.tap.received(retried)
    retried.send_event("task-started")
    retried.send_event("task-retried", exception="Retry()")
    again = h.cls("u1", "t.retry", {"routing_key": "q"}, retries=1)
    run(h, again)
    expired = h.cls("u2", "t.late", {"routing_key": "q"})
    expired.send_event("task-revoked", terminated=False, signum=None, expired=True)  # no signal
    rejected = h.cls("u3", "t.rej", {"routing_key": "q"})
    h.tap.received(rejected)
    rejected.send_event("task-rejected", requeue=False)
    s = h.scrape()
    assert s.get("celery_task_received_total", name="t.retry", queue_name="q") == 2
    assert s.get("celery_task_retried_total", name="t.retry", queue_name="q") == 1
    assert s.get("celery_task_succeeded_total", name="t.retry", queue_name="q") == 1
    assert s.get("celery_task_redelivered_total", name="t.retry", queue_name="q") is None
    assert s.get("celery_task_revoked_total", name="t.late", queue_name="q") == 1
    assert s.get("celery_task_expired_total", name="t.late", queue_name="q") == 1
    assert s.get("celery_task_rejected_total", name="t.rej", queue_name="q", requeue="false") == 1
    assert s.series("celery_vitals_unknown_uuid_events_total") == {}


def test_broker_redelivery_flag_counts_a_redelivery() -> None:
    h = TapHarness()
    run(h, h.cls("u1", "t", {"routing_key": "q", "redelivered": True}))
    run(h, h.cls("u2", "t", {"routing_key": "q", "redelivered": False}))
    s = h.scrape()
    assert s.get("celery_task_redelivered_total", name="t", queue_name="q") == 1
    assert s.get("celery_task_received_total", name="t", queue_name="q") == 2


def test_eta_is_passed_on_as_iso_text() -> None:
    h = TapHarness()
    seen: list[dict[str, Any]] = []
    h.tap.feed = seen.append  # type: ignore[method-assign]
    eta = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    h.tap.received(h.cls("u1", "t", {"routing_key": "q"}, eta=eta))
    assert seen[0]["eta"] == "2030-01-02T03:04:05+00:00"
    assert seen[0]["queue"] == "q"
    assert seen[0]["hostname"] == HOST


def test_a_broken_request_or_router_never_raises_into_celery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = TapHarness()
    h.tap.received(object())  # no id, no name
    request = h.cls("u1", "t", {"routing_key": "q"})
    assert h.tap.succeeded(request, "not a tuple") is False

    def explode(*_: object) -> None:
        raise RuntimeError("router bug")

    h.pipeline.router.handle = explode  # type: ignore[method-assign]
    request.send_event("task-started")
    assert request.sent == ["task-started"]  # Celery's send_event still ran
    assert "celery-vitals agent" in caplog.text


def test_no_tap_in_a_pool_child_means_plain_celery() -> None:
    h = TapHarness()
    inherited = SimpleNamespace(pid=os.getpid() + 1, running=True, tap=h.tap)  # the parent's
    stopped = SimpleNamespace(pid=os.getpid(), running=False, tap=h.tap)
    for agent in (None, inherited, stopped):
        request = tapped_request_cls(CeleryLikeRequest, SimpleNamespace(agent=agent))("u1", "t")
        request.send_event("task-started")
        request.on_success((False, 1, 0.1))
        assert request.sent == ["task-started", "task-succeeded"]
    assert h.scrape().series("celery_task_started_total") == {}
    assert h.scrape().series("celery_task_succeeded_total") == {}


# -- the pool watch --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (0, "recycled"),
        (EX_RECYCLE, "recycled"),
        (-9, "killed"),
        (-15, "killed"),
        (1, "failed"),
        (None, None),
        ("x", None),
    ],
)
def test_exit_reason(code: object, reason: str | None) -> None:
    assert exit_reason(code) == reason


def test_resident_bytes_is_vmrss() -> None:
    status = Path("/proc/self/status").read_text()
    vmrss = (
        int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])
        * 1024
    )
    rss = resident_bytes(os.getpid())
    assert rss is not None
    assert abs(rss - vmrss) <= 0.1 * vmrss
    assert resident_bytes(2**22 + 12345) is None  # no such process


class FakeTimeoutHandler:
    """billiard's TimeoutHandler as far as the agent touches it: on_hard_timeout kills the
    job's process with self._trywaitkill (looked up at each call)."""

    def __init__(self, pool: FakeBilliardPool) -> None:
        self.pool = pool
        self.killed: list[Any] = []

    def on_hard_timeout(self, process: Any) -> None:
        self._trywaitkill(process)

    def _trywaitkill(self, worker: Any) -> None:
        self.killed.append(worker)


class FakeBilliardPool:
    def __init__(self, processes: list[SimpleNamespace]) -> None:
        self._pool = processes
        self.downs: list[Any] = []
        self.on_process_down = self.downs.append
        self._timeout_handler = FakeTimeoutHandler(self)


def strategy_for(request_cls: type) -> Any:
    """A task's message handler as Celery's default strategy builds it: a closure over the
    request class create_request_cls returned."""
    Req = request_cls

    def task_message_handler(message: Any) -> Any:
        return Req(message)

    return task_message_handler


def fake_worker(processes: list[SimpleNamespace]) -> SimpleNamespace:
    inner = FakeBilliardPool(processes)
    tapped = tapped_request_cls(CeleryLikeRequest, agent_module._process)
    return SimpleNamespace(
        hostname=HOST,
        pool_cls="prefork",
        pool=SimpleNamespace(_pool=inner, num_processes=len(processes), limit=len(processes)),
        consumer=SimpleNamespace(
            qos=SimpleNamespace(value=8), strategies={"t": strategy_for(tapped)}
        ),
    )


def test_pool_sample_and_exits_by_slot() -> None:
    me = os.getpid()
    worker = fake_worker([SimpleNamespace(index=0, pid=me), SimpleNamespace(index=1, pid=me)])
    watch = PoolWatch(worker, prefork=True)
    stats = watch.sample()
    assert stats.processes == 2
    assert stats.busy == 0
    assert stats.prefetch_limit == 8
    assert stats.eta_tasks == 0
    assert set(stats.memory) == {"main", "0", "1"}
    down = worker.pool._pool.on_process_down
    for code in (0, EX_RECYCLE, -9, 1):
        down(SimpleNamespace(exitcode=code))
    assert watch.sample().exits == {
        "recycled": 2,
        "time_limit": 0,
        "terminated": 0,
        "killed": 1,
        "failed": 1,
    }
    assert len(worker.pool._pool.downs) == 4  # Celery's own hook still runs
    watch.hook()  # idempotent: not wrapped twice
    worker.pool._pool.on_process_down(SimpleNamespace(exitcode=0))
    assert watch.exits["recycled"] == 3
    watch.counting = False  # shutdown: the pool stops its children
    worker.pool._pool.on_process_down(SimpleNamespace(exitcode=-15))
    assert watch.exits["killed"] == 1


@pytest.mark.parametrize("code", [-15, -9])
def test_a_child_ended_for_its_hard_time_limit_is_no_killed_child(code: int) -> None:
    """billiard's TimeoutHandler.on_hard_timeout ends the job's process with
    _trywaitkill (SIGTERM, SIGKILL 0.1 s later): that pid's exit is time_limit, once; a
    signal from outside (another pid, or the same pid again later) stays killed."""
    worker = fake_worker([SimpleNamespace(index=0, pid=101), SimpleNamespace(index=1, pid=102)])
    watch = PoolWatch(worker, prefork=True)
    watch.sample()
    inner = worker.pool._pool
    inner._timeout_handler.on_hard_timeout(SimpleNamespace(pid=101))
    assert [process.pid for process in inner._timeout_handler.killed] == [101]  # still killed
    inner.on_process_down(SimpleNamespace(pid=101, exitcode=code))
    inner.on_process_down(SimpleNamespace(pid=102, exitcode=-9))  # the OOM killer
    inner.on_process_down(SimpleNamespace(pid=101, exitcode=-9))  # the pid reused, killed
    assert watch.sample().exits == {
        "recycled": 0,
        "time_limit": 1,
        "terminated": 0,
        "killed": 2,
        "failed": 0,
    }
    assert watch.time_limited == {}
    assert len(inner.downs) == 3  # Celery's own hook still runs
    watch.hook()  # idempotent: not wrapped twice
    inner._timeout_handler.on_hard_timeout(SimpleNamespace(pid=103))
    assert len(inner._timeout_handler.killed) == 2
    inner.on_process_down(SimpleNamespace(pid=103, exitcode=-15))
    assert watch.exits["time_limit"] == 2


@pytest.mark.parametrize("code", [-15, -9])
def test_a_child_the_pool_terminated_on_request_is_no_killed_child(code: int) -> None:
    """revoke(terminate=True) reaches billiard's Pool.terminate_job, which marks the
    process _job_terminated after signalling it: terminated, whatever the signal; the
    same exit code without the mark (an outside kill) stays killed."""
    worker = fake_worker([SimpleNamespace(index=0, pid=101), SimpleNamespace(index=1, pid=102)])
    watch = PoolWatch(worker, prefork=True)
    watch.sample()
    inner = worker.pool._pool
    inner.on_process_down(SimpleNamespace(pid=101, exitcode=code, _job_terminated=True))
    inner.on_process_down(SimpleNamespace(pid=102, exitcode=code))
    inner.on_process_down(SimpleNamespace(pid=103, exitcode=0, _job_terminated=True))
    assert watch.sample().exits == {
        "recycled": 1,
        "time_limit": 0,
        "terminated": 1,
        "killed": 1,
        "failed": 0,
    }


def test_time_limited_pids_are_bounded() -> None:
    watch = PoolWatch(fake_worker([]), prefork=True)
    for pid in range(pool_module.MAX_TIME_LIMITED + 5):
        watch.time_limit_kill(SimpleNamespace(pid=pid))
    assert len(watch.time_limited) == pool_module.MAX_TIME_LIMITED
    assert min(watch.time_limited) == 5  # the oldest went first


def test_pool_hook_is_rewrapped_when_celery_replaces_it() -> None:
    worker = fake_worker([])
    watch = PoolWatch(worker, prefork=True)
    watch.hook()
    replaced: list[Any] = []
    worker.pool._pool.on_process_down = replaced.append  # register_with_event_loop again
    watch.sample()
    worker.pool._pool.on_process_down(SimpleNamespace(exitcode=-9))
    assert watch.exits["killed"] == 1
    assert len(replaced) == 1


def test_threads_and_solo_pools_have_only_the_main_process() -> None:
    # gevent's num_processes counted its running greenlets before Celery 5.7: the pool's
    # limit (its concurrency) is the size, under every pool but prefork
    worker = SimpleNamespace(
        hostname=HOST, pool=SimpleNamespace(num_processes=0, limit=4), consumer=None
    )
    features = Features("5.3.6")
    stats = PoolWatch(worker, features).sample()
    assert stats.processes == 4
    assert set(stats.memory) == {"main"}
    assert stats.exits == {
        "recycled": 0,
        "time_limit": 0,
        "terminated": 0,
        "killed": 0,
        "failed": 0,
    }
    assert stats.prefetch_limit is None  # no consumer
    assert stats.eta_tasks == 0  # celery.worker.state.scheduled_requests (5.7)
    assert features.failing() == {
        "prefetch": "the consumer's QoS value (consumer.qos.value) is None"
    }


# -- the agent: pipeline, HTTP, failure modes ----------------------------------------------


@pytest.fixture
def agent_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    port = free_port()
    monkeypatch.setenv(agent_module.LISTEN_ADDRESS_ENV, f"{LOOPBACK}:{port}")
    monkeypatch.delenv(agent_module.WEB_CONFIG_ENV, raising=False)
    yield port


def started_agent(worker: Any) -> Agent:
    agent = Agent.from_environment(worker)
    agent.interval = 0.05
    agent.start()
    return agent


def test_agent_exports_every_agent_metric_and_none_of_the_event_stream(agent_env: int) -> None:
    me = os.getpid()
    worker = fake_worker([SimpleNamespace(index=0, pid=me)])
    agent = started_agent(worker)
    try:
        request = tapped_request_cls(CeleryLikeRequest, SimpleNamespace(agent=agent))(
            "u1", "t", {"routing_key": "q"}
        )
        agent.tap.received(request)
        request.send_event("task-started")
        request.on_success((False, 1, 0.01))
        agent.ready()  # worker_ready: the start check, and a sample
        response = http_get(agent_env, "/metrics")
        assert response.status == 200
        s = Scrape(response.text, parse(response.text))
        assert http_get(agent_env, "/healthz").status == 200
        assert http_get(agent_env, "/").status == 200
    finally:
        agent.stop()
    exported = {
        name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
        for name, _ in s.samples
    }
    # task metrics need the events the busy exporter harness feeds: here the agent's own
    wanted = {  # the beat agent's (group beat) are tested in test_agent_beat.py
        spec.name
        for spec in catalogue.SPECS
        if (spec.source == "agent" and spec.group != "beat") or spec.group == "worker"
    }
    assert wanted - exported == set()
    assert not any(
        spec.name in exported
        for spec in catalogue.SPECS
        if spec.source == "exporter" and spec.group == "exporter"
    )
    assert s.get("celery_vitals_agent_info", hostname=HOST, pool="prefork") == 1
    assert s.get("celery_worker_up", hostname=HOST) == 1
    assert s.get("celery_worker_starts_total", hostname=HOST) == 1
    assert s.get("celery_worker_pool_processes", hostname=HOST) == 1
    assert s.get("celery_worker_prefetch_limit", hostname=HOST) == 8
    assert (
        s.get("celery_worker_info", hostname=HOST, version=celery.__version__, pool="prefork") == 1
    )
    assert s.get("celery_task_succeeded_total", name="t", queue_name="q") == 1
    assert s.get("celery_worker_pool_process_exits_total", hostname=HOST, reason="killed") == 0
    assert s.series("celery_vitals_agent_feature_up") == {
        frozenset({("feature", feature)}): 1 for feature in FEATURES
    }
    with pytest.raises(OSError):
        http_get(agent_env, "/healthz", timeout=1)  # stopped with the worker


def test_heartbeats_come_from_the_worker_state(agent_env: int) -> None:
    agent = started_agent(fake_worker([]))
    try:
        before = state.all_total_count[0]
        state.all_total_count[0] = before + 5
        agent.tick()
        s = agent.pipeline.exposition.render().decode()
    finally:
        state.all_total_count[0] = before
        agent.stop()
    assert Scrape(s, parse(s)).get("celery_worker_tasks_processed", hostname=HOST) == before + 5


def test_a_failing_collector_is_left_out_logged_and_the_rest_served(
    agent_env: int, caplog: pytest.LogCaptureFixture
) -> None:
    agent = started_agent(fake_worker([]))
    try:
        collector = agent.pipeline.collectors[2]

        def broken() -> Any:
            raise RuntimeError("collector bug")

        collector.collect = broken  # type: ignore[method-assign]
        with caplog.at_level(logging.WARNING):
            response = http_get(agent_env, "/metrics")
        assert response.status == 200
        assert "left out WorkerCollector" in caplog.text
        scrape = Scrape(response.text, parse(response.text))
        assert scrape.get("celery_vitals_scrape_errors_total", family="WorkerCollector") == 1
        assert "celery_task_succeeded_total" in response.text  # the other collectors
        assert "celery_worker_up" not in response.text
        assert http_get(agent_env, "/healthz").status == 200
    finally:
        agent.stop()


def test_basic_auth_from_the_agent_web_config(
    agent_env: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import base64

    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    monkeypatch.setenv(agent_module.WEB_CONFIG_ENV, str(path))
    agent = started_agent(fake_worker([]))
    try:
        assert http_get(agent_env, "/metrics").status == 401
        token = base64.b64encode(b"prometheus:pw").decode()
        assert http_get(agent_env, "/metrics", {"Authorization": f"Basic {token}"}).status == 200
    finally:
        agent.stop()


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> Iterator[Celery]:
    app = Celery("unit-agent", set_as_current=False)
    monkeypatch.setattr(agent_module, "_installed", [])
    monkeypatch.setattr(agent_module._process, "agent", None)
    monkeypatch.setattr(agent_module._process, "not_started", None)
    agent_module.install(app, listen_address="127.0.0.1:1")  # the env var wins below
    yield app
    running = agent_module._process.agent
    if running is not None:
        running.stop()
        agent_module._process.agent = None


def test_worker_init_starts_the_agent_for_its_app_only(installed: Celery, agent_env: int) -> None:
    other = SimpleNamespace(app=Celery("other", set_as_current=False), hostname="x@y")
    agent_module._on_worker_init(sender=other)
    assert agent_module._process.agent is None
    agent_module._on_worker_init(
        sender=SimpleNamespace(app=installed, hostname=HOST, pool_cls="solo")
    )
    assert agent_module._active() is not None
    assert http_get(agent_env, "/healthz").status == 200
    agent_module._on_worker_shutdown()
    assert agent_module._process.agent is None


def test_occupied_port_is_a_warning_not_a_crash(
    installed: Celery, agent_env: int, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind((LOOPBACK, agent_env))
        taken.listen()
        with caplog.at_level(logging.WARNING):
            agent_module._on_worker_init(
                sender=SimpleNamespace(app=installed, hostname=HOST, pool_cls="solo")
            )
            # said at worker_ready, once Celery has set up the worker's log
            assert caplog.text == ""
            agent_module._on_worker_ready(sender=None)
    assert agent_module._process.agent is None
    assert [record.getMessage() for record in caplog.records] == [
        "celery-vitals agent not started, the worker runs without its /metrics: cannot "
        f"listen on {LOOPBACK}:{agent_env}: [Errno 98] Address already in use"
    ]


def test_bad_listen_address_is_a_warning(
    installed: Celery, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(agent_module.LISTEN_ADDRESS_ENV, "no-port")
    with caplog.at_level(logging.WARNING):
        agent_module._on_worker_init(sender=SimpleNamespace(app=installed, hostname=HOST))
        agent_module._on_worker_ready(sender=None)
    assert agent_module._process.agent is None
    assert "CELERY_VITALS_AGENT_LISTEN_ADDRESS" in caplog.text


def test_default_address_is_9809_not_the_exporters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(agent_module.LISTEN_ADDRESS_ENV, raising=False)
    agent = Agent.from_environment(SimpleNamespace(hostname=HOST))
    assert (agent.config.listen_host, agent.config.listen_port) == ("0.0.0.0", 9809)
    agent = Agent.from_environment(SimpleNamespace(hostname=HOST), "127.0.0.1:7000")
    assert agent.config.listen_port == 7000
    monkeypatch.setenv(agent_module.LISTEN_ADDRESS_ENV, "[::1]:7001")
    agent = Agent.from_environment(SimpleNamespace(hostname=HOST), "127.0.0.1:7000")
    assert (agent.config.listen_host, agent.config.listen_port) == ("::1", 7001)


def test_solo_pools_process_init_in_the_main_process_keeps_the_agent(
    installed: Celery, agent_env: int
) -> None:
    agent_module._on_worker_init(
        sender=SimpleNamespace(app=installed, hostname=HOST, pool_cls="solo")
    )
    agent_module._on_worker_process_init(sender=HOST)  # what solo's TaskPool sends
    assert agent_module._active() is not None
    assert http_get(agent_env, "/healthz").status == 200


def test_unregistered_task_fails_as_not_registered_under_its_name_and_queue() -> None:
    c = consumer(queue("alpha"))
    h = TapHarness(c)
    message = SimpleNamespace(delivery_info={"exchange": "alpha", "routing_key": "alpha"})
    h.tap.unknown(c, message, "old.name", "u1")
    s = h.scrape()
    assert (
        s.get(
            "celery_task_failed_total",
            name="old.name",
            queue_name="alpha",
            exception="NotRegistered",
        )
        == 1
    )
    assert s.series("celery_task_received_total") == {}


def test_tap_queues_events_and_drains_them_in_order_losing_none_across_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = TapHarness()
    h.tap.feed(
        {
            "type": "task-received",
            "uuid": "u0",
            "name": "t",
            "hostname": HOST,
            "timestamp": h.clock(),
            "queue": "q",
        }
    )
    assert list(h.tap.queued) and not h.tasks_received()  # the task's path only appends
    assert h.tap.drain() == 1 and h.tasks_received() == 1
    monkeypatch.setattr(tap_module, "MAX_QUEUED", 1_000)  # the inline drain takes part too
    per_thread, threads = 2_000, 4

    def lifecycles(thread: int) -> None:
        for number in range(per_thread):
            uuid, now = f"t{thread}-{number}", h.clock()
            h.tap.feed(
                {
                    "type": "task-received",
                    "uuid": uuid,
                    "name": "t",
                    "hostname": HOST,
                    "timestamp": now,
                    "queue": "q",
                }
            )
            h.tap.feed({"type": "task-started", "uuid": uuid, "hostname": HOST, "timestamp": now})
            h.tap.feed(
                {
                    "type": "task-succeeded",
                    "uuid": uuid,
                    "hostname": HOST,
                    "timestamp": now,
                    "runtime": 0.01,
                }
            )

    stop = threading.Event()

    def drainer() -> None:
        while not stop.is_set():
            h.tap.drain()

    feeding = [threading.Thread(target=lifecycles, args=(n,)) for n in range(threads)]
    draining = threading.Thread(target=drainer)
    draining.start()
    for thread in feeding:
        thread.start()
    for thread in feeding:
        thread.join()
    stop.set()
    draining.join()
    s = h.scrape()  # drains the rest
    assert not h.tap.queued
    total = per_thread * threads
    assert s.get("celery_task_received_total", name="t", queue_name="q") == total + 1
    for metric in ("started", "succeeded"):
        assert s.get(f"celery_task_{metric}_total", name="t", queue_name="q") == total
    assert s.series("celery_vitals_unknown_uuid_events_total") == {}  # order kept per task


# -- parts and features: each part on its own, checked at worker_ready ---------------

#: the series each feature feeds (the tap's: task metrics, checked apart)
FEATURE_SERIES = {
    "tap": (),
    "pool_processes": ("celery_worker_pool_processes",),
    "busy_processes": ("celery_worker_pool_busy_processes", "celery_worker_tasks_active"),
    "processed": ("celery_worker_tasks_processed",),
    "memory": ("celery_worker_process_resident_memory_bytes",),
    "exits": ("celery_worker_pool_process_exits_total",),
    "eta_tasks": ("celery_worker_eta_tasks",),
    "prefetch": ("celery_worker_prefetch_limit",),
}


class UnhookablePool:
    """A billiard pool whose on_process_down cannot be replaced."""

    def __init__(self, processes: list[SimpleNamespace]) -> None:
        self._pool = processes

    @property
    def on_process_down(self) -> None:
        return None


def custom_strategy_handler(message: Any) -> None:
    """A Task.Strategy of its own, building requests without create_request_cls."""


def break_part(feature: str, worker: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """Breaks one part as a Celery without it would; returns the reason the log gives."""
    if feature == "pool_processes":
        worker.pool.num_processes = None
        return "SimpleNamespace.num_processes is None, not a process count"
    if feature == "busy_processes":
        monkeypatch.delattr(state, "active_requests")
        return "AttributeError: module 'celery.worker.state' has no attribute 'active_requests'"
    if feature == "processed":
        monkeypatch.setattr(state, "all_total_count", [None])
        return "TypeError: celery.worker.state.all_total_count[0] is None, not a count"
    if feature == "memory":
        monkeypatch.setattr(pool_module, "resident_bytes", lambda pid: None)
        return f"/proc/{os.getpid()}/statm cannot be read"
    if feature == "exits":
        worker.pool._pool = UnhookablePool(worker.pool._pool._pool)
        return "AttributeError: property 'on_process_down' of 'UnhookablePool' object has no setter"
    if feature == "eta_tasks":  # Celery before 5.7, and no timer where the agent reads it
        monkeypatch.delattr(state, "scheduled_requests")
        return (
            "neither celery.worker.state.scheduled_requests (Celery 5.7+) nor the "
            "consumer's timer queue (consumer.timer.schedule) exists"
        )
    if feature == "prefetch":
        worker.consumer.qos = None
        return "the consumer's QoS value (consumer.qos.value) is None"
    assert feature == "tap"
    worker.consumer.strategies["custom.task"] = custom_strategy_handler
    return (
        "the message handlers of custom.task do not build their requests with "
        "celery.worker.strategy.create_request_cls (a custom Task.Strategy?): only the "
        "task-received of those tasks is seen"
    )


@pytest.mark.parametrize("feature", FEATURE_SERIES)
def test_a_part_that_cannot_work_is_one_warning_and_feature_up_0_the_rest_exported(
    agent_env: int,
    feature: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = fake_worker([SimpleNamespace(index=0, pid=os.getpid())])
    reason = break_part(feature, worker, monkeypatch)
    agent = Agent.from_environment(worker)
    agent.interval = 3600  # no tick of its own: the start check samples
    agent.start()
    try:
        with caplog.at_level(logging.INFO, logger="celery_vitals"):
            agent.ready(worker.consumer)
            agent.tick()  # still failing: nothing more in the log
        text = http_get(agent_env, "/metrics").text
        s = Scrape(text, parse(text))
    finally:
        agent.stop()
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", f"celery-vitals agent: serving http://{LOOPBACK}:{agent_env}/metrics for {HOST}"),
        (
            "WARNING",
            f"celery-vitals agent: on Celery {celery.__version__}, {feature} cannot work, "
            "their metrics are missing (celery_vitals_agent_feature_up 0): "
            f"{feature} ({FEATURES[feature]}): {reason}",
        ),
    ]
    assert s.series("celery_vitals_agent_feature_up") == {
        frozenset({("feature", name)}): 0 if name == feature else 1 for name in FEATURES
    }
    for name, series in FEATURE_SERIES.items():
        for metric in series:
            present = bool(s.series(metric))
            assert present == (name != feature), (metric, s.series_text())
    expected = {
        "celery_worker_pool_processes": 1,
        "celery_worker_pool_busy_processes": 0,
        "celery_worker_tasks_active": 0,
        "celery_worker_eta_tasks": 0,
        "celery_worker_prefetch_limit": 8,
    }
    for metric, value in expected.items():
        if metric not in FEATURE_SERIES[feature]:
            assert s.get(metric, hostname=HOST) == value, metric
    if feature != "memory":
        assert {dict(labels)["process"] for labels in s.series(FEATURE_SERIES["memory"][0])} == {
            "main",
            "0",
        }
    if feature != "exits":
        assert s.get(FEATURE_SERIES["exits"][0], hostname=HOST, reason="killed") == 0
    assert s.get("celery_worker_up", hostname=HOST) == 1


def test_feature_up_is_absent_before_the_start_check(agent_env: int) -> None:
    agent = started_agent(fake_worker([]))
    try:
        agent.tick()
        text = http_get(agent_env, "/metrics").text
    finally:
        agent.stop()
    assert "celery_vitals_agent_feature_up" not in text


def test_a_part_that_breaks_later_warns_once_and_its_gauge_follows(
    agent_env: int, caplog: pytest.LogCaptureFixture
) -> None:
    worker = fake_worker([])
    agent = Agent.from_environment(worker)
    agent.interval = 3600
    agent.start()
    try:
        agent.ready(worker.consumer)
        assert agent.features.values() == dict.fromkeys(FEATURES, 1)
        qos, worker.consumer.qos = worker.consumer.qos, SimpleNamespace(value="eight")
        with caplog.at_level(logging.WARNING, logger="celery_vitals"):
            agent.tick()
            agent.tick()
        assert agent.features.values() == {**dict.fromkeys(FEATURES, 1), "prefetch": 0}
        assert [r.getMessage() for r in caplog.records] == [
            f"celery-vitals agent: prefetch stopped working on Celery {celery.__version__} "
            "(celery_worker_prefetch_limit are missing): the consumer's QoS value "
            "(consumer.qos.value) is 'eight'"
        ]
        worker.consumer.qos = qos
        agent.tick()
        assert agent.features.values() == dict.fromkeys(FEATURES, 1)
    finally:
        agent.stop()


def test_eta_tasks_before_celery_5_7_are_the_requests_in_the_consumers_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What `celery inspect scheduled` lists: timer entries whose first argument is a
    request. The hub's timer (prefork), timer2's (threads, solo) and gevent's."""
    from celery.concurrency.gevent import Timer as GeventTimer
    from celery.worker.request import Request
    from kombu.asynchronous.timer import Timer

    monkeypatch.delattr(state, "scheduled_requests")  # Celery 5.3 to 5.6
    eta = time.time() + 600
    hub_timer, gevent_timer = Timer(), GeventTimer()
    try:
        for timer in (hub_timer, gevent_timer):
            for _ in range(3):
                request = Request.__new__(Request)  # what the strategy schedules
                timer.call_at(eta, lambda request: None, (request,), priority=6)
            timer.call_at(eta, lambda rate: None, (2.0,))  # the broker heartbeat: no request
        for timer_of_consumer in (
            hub_timer,  # its schedule is itself
            SimpleNamespace(schedule=hub_timer),  # celery.utils.timer2.Timer
            gevent_timer,
        ):
            worker = SimpleNamespace(consumer=SimpleNamespace(timer=timer_of_consumer))
            assert PoolWatch(worker).eta_tasks() == 3
    finally:
        gevent_timer.clear()


def test_the_tap_check_names_the_tasks_a_custom_strategy_hides() -> None:
    tapped = tapped_request_cls(CeleryLikeRequest, agent_module._process)
    strategies: dict[str, Any] = {f"t{i}": strategy_for(tapped) for i in range(3)}
    assert untapped_tasks(SimpleNamespace(strategies=strategies)) is None
    for i in range(7):
        strategies[f"custom.{i}"] = strategy_for(CeleryLikeRequest)  # not tapped
    assert untapped_tasks(SimpleNamespace(strategies=strategies)) == (
        "the message handlers of custom.0, custom.1, custom.2, custom.3, custom.4 and 2 more "
        "do not build their requests with celery.worker.strategy.create_request_cls (a custom "
        "Task.Strategy?): only the task-received of those tasks is seen"
    )
    assert untapped_tasks(SimpleNamespace()) == (
        "the consumer has no task strategies (consumer.strategies) to check"
    )


def test_a_request_class_of_another_shape_is_left_untapped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from celery.worker import strategy

    class OtherShape:  # no send_event, no on_success: a subclass would break tasks
        pass

    monkeypatch.setattr(strategy, "create_request_cls", lambda *args, **kwargs: OtherShape)
    assert agent_module._tap_requests() is None
    assert strategy.create_request_cls(object) is OtherShape
    monkeypatch.setattr(strategy, "create_request_cls", lambda *args, **kwargs: CeleryLikeRequest)
    assert agent_module._tap_requests() is None
    assert getattr(strategy.create_request_cls(object), TAPPED_CLASS)
    monkeypatch.delattr(strategy, "create_request_cls")
    assert agent_module._tap_requests() == (
        "celery.worker.strategy has no create_request_cls to wrap"
    )


# -- listen addresses: a port range for celery multi ------------------------------------


@pytest.mark.parametrize(
    ("address", "parsed"),
    [
        ("127.0.0.1:9809", ("127.0.0.1", 9809, 9809)),
        ("0.0.0.0:9809-9818", ("0.0.0.0", 9809, 9818)),
        ("[::]:9809-9810", ("::", 9809, 9810)),
        (":9809-9809", ("0.0.0.0", 9809, 9809)),
    ],
)
def test_listen_range(address: str, parsed: tuple[str, int, int]) -> None:
    assert agent_module._listen_range(address) == parsed


@pytest.mark.parametrize(
    ("address", "error"),
    [
        (
            "127.0.0.1:9818-9809",
            "a port range runs from a low port to a higher one, got '9818-9809'",
        ),
        ("127.0.0.1:0-10", "a port range runs from a low port to a higher one, got '0-10'"),
        ("127.0.0.1:9809-x", "expected a port number after ':', got '127.0.0.1:x'"),
        ("9809-9810", "expected HOST:PORT, got '9809-9810'"),
    ],
)
def test_bad_listen_range(address: str, error: str) -> None:
    with pytest.raises(ValueError) as raised:
        agent_module._listen_range(address)
    assert str(raised.value) == error


def test_a_port_range_takes_its_first_free_port_and_says_which(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    first, second, last = free_ports(3)
    monkeypatch.setenv(agent_module.LISTEN_ADDRESS_ENV, f"{LOOPBACK}:{first}-{last}")
    monkeypatch.delenv(agent_module.WEB_CONFIG_ENV, raising=False)
    with socket.socket() as taken:
        taken.bind((LOOPBACK, first))
        taken.listen()
        agent = Agent.from_environment(fake_worker([]))
        agent.start()
        try:
            with caplog.at_level(logging.INFO, logger="celery_vitals"):
                agent.ready()
            assert http_get(second, "/healthz").status == 200
        finally:
            agent.stop()
    assert caplog.records[0].getMessage() == (
        f"celery-vitals agent: serving http://{LOOPBACK}:{second}/metrics for {HOST} "
        f"(the first free port of {first}-{last})"
    )


def test_a_range_without_a_free_port_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    ports = free_ports(2)
    monkeypatch.setenv(agent_module.LISTEN_ADDRESS_ENV, f"{LOOPBACK}:{ports[0]}-{ports[1]}")
    held = []
    try:
        for port in ports:
            sock = socket.socket()
            held.append(sock)
            sock.bind((LOOPBACK, port))
            sock.listen()
        agent = Agent.from_environment(fake_worker([]))
        with pytest.raises(OSError) as raised:
            agent.start()
    finally:
        for sock in held:
            sock.close()
    assert str(raised.value) == (
        f"cannot listen on {LOOPBACK}:{ports[0]}-{ports[1]}: every port is in use"
    )


def test_the_serving_line_waits_for_worker_ready(
    installed: Celery, agent_env: int, caplog: pytest.LogCaptureFixture
) -> None:
    worker = fake_worker([])
    worker.app = installed
    with caplog.at_level(logging.INFO, logger="celery_vitals"):
        agent_module._on_worker_init(sender=worker)
        assert agent_module._active() is not None
        assert caplog.records == []  # Celery sets up the worker's log after worker_init
        agent_module._on_worker_ready(sender=worker.consumer)
    assert caplog.records[0].getMessage() == (
        f"celery-vitals agent: serving http://{LOOPBACK}:{agent_env}/metrics for {HOST}"
    )


def test_exits_need_the_time_limit_kill_too() -> None:
    """Without billiard's _trywaitkill a time-limit kill would count, and page, as a kill
    from outside: the exits are not exported then, and the feature says why."""
    worker = fake_worker([])
    del worker.pool._pool._timeout_handler
    features = Features("5.7.0")
    assert PoolWatch(worker, features, prefork=True).sample().exits == {}
    assert features.failing() == {
        "exits": "the pool's time-limit kill (worker.pool._pool._timeout_handler._trywaitkill) "
        "cannot be wrapped: time-limit exits would count as killed"
    }


# -- the publish stamp and the queue wait it gives ------------------------------------


def wait_of(s: Scrape, name: str = "t", queue_name: str = "q") -> tuple[float | None, ...]:
    """(sum, count) of celery_task_queue_wait_seconds."""
    return (
        s.get("celery_task_queue_wait_seconds_sum", name=name, queue_name=queue_name),
        s.get("celery_task_queue_wait_seconds_count", name=name, queue_name=queue_name),
    )


def test_queue_wait_runs_from_the_stamp_to_the_start() -> None:
    h = TapHarness()
    # published 2.5 s before the worker received it; started 0.5 s after (run())
    run(h, h.cls("u1", "t", {"routing_key": "q"}, published=h.clock.now - 2.5))
    run(h, h.cls("u2", "t", {"routing_key": "q"}, published=h.clock.now - 0.25))
    s = h.scrape()
    assert wait_of(s) == (3.0 + 0.75, 2)
    assert s.get("celery_task_queue_wait_seconds_bucket", name="t", queue_name="q", le="1.0") == 1
    assert s.series("celery_task_unstamped_total") == {}
    assert s.series("celery_vitals_observations_skipped_total") == {}


def test_a_task_without_a_stamp_is_counted_per_queue_and_has_no_wait() -> None:
    h = TapHarness()
    run(h, h.cls("u1", "t", {"routing_key": "q"}))
    run(h, h.cls("u2", "t", {"routing_key": "q"}))
    run(h, h.cls("u3", "t", {"routing_key": "other"}))
    run(h, h.cls("u4", "t", {"routing_key": "q"}, published=h.clock.now - 1.0))
    s = h.scrape()
    assert s.series("celery_task_unstamped_total") == {
        frozenset({("queue_name", "q")}): 2,
        frozenset({("queue_name", "other")}): 1,
    }
    assert wait_of(s) == (1.5, 1)
    assert wait_of(s, queue_name="other") == (None, None)


def test_an_eta_task_waits_from_its_eta_not_from_its_publication() -> None:
    h = TapHarness()
    eta = datetime.fromtimestamp(h.clock.now + 10.0, UTC)  # countdown=12 published 2 s ago
    request = h.cls("u1", "t", {"routing_key": "q"}, eta=eta, published=h.clock.now - 2.0)
    h.tap.received(request)
    h.clock.now += 10.25  # the worker holds it until its ETA, starts it 0.25 s later
    request.send_event("task-started")
    request.on_success((False, None, 0.1))
    # an ETA earlier than the stamp (a late publish of a past ETA): from the stamp
    late = datetime.fromtimestamp(h.clock.now - 60.0, UTC)
    run(h, h.cls("u2", "t", {"routing_key": "q"}, eta=late, published=h.clock.now - 1.0))
    assert wait_of(h.scrape()) == (0.25 + 1.5, 2)


def test_clock_skew_and_a_bad_stamp_are_counted_skips_never_a_wait() -> None:
    h = TapHarness()
    # the publisher's clock runs 3 s ahead of the worker's: the wait would be -2.5 s
    run(h, h.cls("u1", "t", {"routing_key": "q"}, published=h.clock.now + 3.0))
    for bad in ("yesterday", float("nan"), -1.0, 1e12, True):
        run(h, h.cls(f"bad-{bad}", "t", {"routing_key": "q"}, published=bad))
    s = h.scrape()
    assert wait_of(s) == (None, None)
    assert s.series("celery_vitals_observations_skipped_total") == {
        frozenset(
            {("metric", "celery_task_queue_wait_seconds"), ("reason", "negative_duration")}
        ): 1,
        frozenset({("metric", "celery_task_queue_wait_seconds"), ("reason", "bad_value")}): 5,
    }
    assert s.series("celery_task_unstamped_total") == {}  # stamped, if badly
    assert s.get("celery_task_succeeded_total", name="t", queue_name="q") == 6


def test_a_retry_waits_from_its_republication() -> None:
    h = TapHarness()
    first = h.cls("u1", "t", {"routing_key": "q"}, published=h.clock.now - 1.0)
    h.tap.received(first)
    h.clock.now += 0.5
    first.send_event("task-started")  # waited 1.5 s
    h.clock.now += 0.25
    republished = h.clock.now  # Task.retry() publishes the retry, stamped anew
    first.send_event("task-retried", exception="Retry()")
    h.clock.now += 4.0
    again = h.cls("u1", "t", {"routing_key": "q"}, retries=1, published=republished)
    run(h, again)  # received 4 s after its republication, started 0.5 s later
    assert wait_of(h.scrape()) == (1.5 + 4.5, 2)


def test_the_event_stream_s_task_received_is_neither_stamped_nor_unstamped() -> None:
    """Only the agent's task-received carries ``published``: the exporter's tracker, fed by
    Celery's events, never counts a task as unstamped."""
    h = TapHarness()
    h.pipeline.router.handle(
        {"type": "task-received", "uuid": "u1", "name": "t", "hostname": HOST, "timestamp": 1.0},
        1.0,
    )
    assert h.pipeline.tasks.unstamped == {}


@pytest.fixture
def stamper() -> Stamper:
    return Stamper(lambda: 1_700_000_123.75)


class Sent:
    """A task sender that records what it was given (Celery's send_task_message's shape)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, producer: Any, name: str, message: Any, *args: Any, **kwargs: Any) -> str:
        self.calls.append((producer, name, message, args, kwargs))
        return "published"


def task_message(headers: Any = None, properties: Any = None) -> Any:
    from celery.app.amqp import task_message as shape

    return shape(
        {"id": "u1"} if headers is None else headers,
        {"correlation_id": "u1"} if properties is None else properties,
        (),
        None,
    )


@pytest.mark.parametrize(
    ("url", "timestamp"),
    [
        ("redis://localhost:6379/0", None),
        ("sqs://", None),
        ("amqp://guest@localhost//", 1_700_000_123),
        ("pyamqp://h;pyamqp://g", 1_700_000_123),
        (None, 1_700_000_123),  # Celery's default: amqp
    ],
)
def test_a_publish_is_stamped_header_always_amqp_timestamp_on_rabbitmq(
    stamper: Stamper, url: str | None, timestamp: int | None
) -> None:
    app = Celery("unit-stamp", broker=url, set_as_current=False)
    sent = Sent()
    send = stamper.wrap(sent, app)
    message = task_message({"id": "u1", HEADER: 1.0})  # a retry carries its old stamp
    assert send("producer", "t", message, exchange="", retry=True) == "published"
    assert sent.calls == [("producer", "t", message, (), {"exchange": "", "retry": True})]
    headers, properties = message.headers, message.properties
    assert headers == {"id": "u1", HEADER: 1_700_000_123.75}  # restamped
    assert properties.get("timestamp") == timestamp
    assert type(properties.get("timestamp", 0)) is int
    assert stamper.failures == 0
    # what py-amqp makes of them: its serializer takes the AMQP timestamp (an unsigned
    # 64-bit int; a float or a datetime fails the publish) and reads it back
    packed = amqp.Message(b"{}", application_headers=headers, **properties)
    again = amqp.Message()
    again._load_properties(60, packed._serialize_properties(), 0)
    assert again.properties.get("timestamp") == timestamp
    assert again.properties["application_headers"][HEADER] == 1_700_000_123.75


def test_each_app_decides_the_timestamp_property_for_itself_once(stamper: Stamper) -> None:
    rabbit = Celery("unit-rabbit", broker="amqp://h//", set_as_current=False)
    redis = Celery("unit-redis", broker="redis://h", set_as_current=False)
    to_rabbit, to_redis = stamper.wrap(Sent(), rabbit), stamper.wrap(Sent(), redis)
    first, second = task_message(), task_message()
    to_redis("p", "t", first)
    to_rabbit("p", "t", second)
    assert "timestamp" not in first.properties
    assert second.properties["timestamp"] == 1_700_000_123
    redis.conf.broker_url = "amqp://h//"  # decided at the first publish: configured by then
    third = task_message()
    to_redis("p", "t", third)
    assert "timestamp" not in third.properties


def test_a_stamp_that_cannot_be_written_never_fails_the_publish_and_is_logged_once(
    stamper: Stamper, caplog: pytest.LogCaptureFixture
) -> None:
    app = Celery("unit-stamp", broker="amqp://h//", set_as_current=False)
    sent = Sent()
    send = stamper.wrap(sent, app)
    odd = [
        (None, {}, (), None),  # headers not a dict
        task_message({}, ()),  # properties not a mapping
        ("not", "a", "message"),  # too short: no properties
    ]
    with caplog.at_level(logging.WARNING, logger="celery_vitals"):
        for message in odd:
            assert send("p", "t", message) == "published"  # published all the same
    assert [call[2] for call in sent.calls] == odd
    assert stamper.failures == 3
    assert [r.getMessage() for r in caplog.records] == [
        "celery-vitals: could not stamp a published task with its publication time (the "
        "task is published unstamped; this is logged once)"
    ]


def published_through_celery(app: Celery, queue: str) -> Any:
    """One task sent through Celery's own send_task_message to memory://, read back."""
    app.send_task("t.add", (1, 2), queue=queue)
    with app.connection_for_read() as connection:
        message = connection.SimpleQueue(queue).get(timeout=5)
    message.ack()
    return message


@pytest.mark.parametrize("built", ["nothing", "amqp", "sender"])
def test_install_stamps_what_celery_publishes_however_far_the_app_got(
    stamper: Stamper, monkeypatch: pytest.MonkeyPatch, built: str
) -> None:
    """install() before app.amqp exists (its class derived), after (the instance's class
    swapped) and after its task sender was built (the sender wrapped): the header and the
    AMQP timestamp property reach the message (memory:// keeps its properties as they
    are); a second install() wraps nothing twice; an app without install() publishes
    unstamped."""
    monkeypatch.setattr(stamper, "decide", lambda app: True)  # as on RabbitMQ
    app = Celery("unit-publish", broker="memory://", set_as_current=False)
    if built in ("amqp", "sender"):
        assert app.amqp is not None
    if built == "sender":
        original = app.amqp.send_task_message
    stamper.install(app)
    stamper.install(app)
    sender = app.amqp.send_task_message
    assert getattr(sender, publish_module.MARK) is True
    assert not getattr(sender.__wrapped__, publish_module.MARK, False)  # wrapped once
    if built == "sender":
        assert sender.__wrapped__ is original
    else:
        assert type(app.amqp) is AMQP  # the app's classes stay what they were
    message = published_through_celery(app, f"stamped-{built}")
    assert message.headers[HEADER] == pytest.approx(1_700_000_123.75)
    assert message.properties["timestamp"] == 1_700_000_123
    other = Celery("unit-plain", broker="memory://", set_as_current=False)
    assert HEADER not in published_through_celery(other, f"plain-{built}").headers


def test_install_keeps_the_apps_own_amqp_class(stamper: Stamper) -> None:
    class Custom(AMQP):
        pass

    app = Celery("unit-custom", broker="memory://", amqp=Custom, set_as_current=False)
    stamper.install(app)
    assert type(app.amqp) is Custom
    message = published_through_celery(app, "custom")
    assert message.headers[HEADER] == 1_700_000_123.75


def test_an_installed_app_still_pickles_and_its_copy_stamps() -> None:
    """Celery pickles an app with its amqp_cls (Celery.__reduce__): install() before
    app.amqp exists leaves one that pickles, and the copy stamps too."""
    app = Celery("unit-pickle", broker="memory://", set_as_current=False)
    Stamper().install(app)
    copy = pickle.loads(pickle.dumps(app))
    assert isinstance(copy.amqp_cls, publish_module.StampingAMQP)
    before = time.time()
    message = published_through_celery(copy, "pickled")
    assert before <= message.headers[HEADER] <= time.time()


def test_the_agents_install_stamps_with_the_clock(installed: Celery) -> None:
    installed.conf.broker_url = "memory://"
    before = time.time()
    message = published_through_celery(installed, "stamped")
    after = time.time()
    assert before <= message.headers[HEADER] <= after
