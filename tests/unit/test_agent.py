"""The agent's pieces with fake Celery objects: queue resolution, the tap, the pool watch,
the agent's pipeline and HTTP server, and its failure modes (occupied port, bad settings,
a failing collector). Real workers: tests/integration/test_agent.py."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import bcrypt
import celery
import pytest
from celery import Celery
from celery.worker import state

import celery_vitals.agent as agent_module
import celery_vitals.agent.tap as tap_module
from celery_vitals import catalogue
from celery_vitals.agent import Agent
from celery_vitals.agent.pool import EX_RECYCLE, PoolWatch, exit_reason, resident_bytes
from celery_vitals.agent.tap import Tap, delivery_queue, tapped_request_cls
from celery_vitals.config import Config
from celery_vitals.service import Pipeline
from tests.support.metrics import Scrape, parse
from tests.support.net import LOOPBACK, free_port, http_get

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
    ) -> None:
        self.id = uuid
        self.name = name
        self.message = SimpleNamespace(delivery_info=delivery_info or {})
        self.delivery_info = {
            "exchange": (delivery_info or {}).get("exchange"),
            "routing_key": (delivery_info or {}).get("routing_key"),
            "redelivered": (delivery_info or {}).get("redelivered", False),
        }
        self.request_dict = {"retries": retries}
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
    from celery_vitals.config import DEFAULT_RUNTIME_BUCKETS, DEFAULT_WAIT_BUCKETS, _buckets

    return Config(
        broker_url="",
        runtime_buckets=_buckets(DEFAULT_RUNTIME_BUCKETS),
        wait_buckets=_buckets(DEFAULT_WAIT_BUCKETS),
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


class FakeBilliardPool:
    def __init__(self, processes: list[SimpleNamespace]) -> None:
        self._pool = processes
        self.downs: list[Any] = []
        self.on_process_down = self.downs.append


def fake_worker(processes: list[SimpleNamespace]) -> SimpleNamespace:
    inner = FakeBilliardPool(processes)
    return SimpleNamespace(
        hostname=HOST,
        pool_cls="prefork",
        pool=SimpleNamespace(_pool=inner, num_processes=len(processes)),
        consumer=SimpleNamespace(qos=SimpleNamespace(value=8)),
    )


def test_pool_sample_and_exits_by_slot() -> None:
    me = os.getpid()
    worker = fake_worker([SimpleNamespace(index=0, pid=me), SimpleNamespace(index=1, pid=me)])
    watch = PoolWatch(worker)
    stats = watch.sample()
    assert stats.processes == 2
    assert stats.busy == 0
    assert stats.prefetch_limit == 8
    assert stats.eta_tasks == 0
    assert set(stats.memory) == {"main", "0", "1"}
    down = worker.pool._pool.on_process_down
    for code in (0, EX_RECYCLE, -9, 1):
        down(SimpleNamespace(exitcode=code))
    assert watch.sample().exits == {"recycled": 2, "killed": 1, "failed": 1}
    assert len(worker.pool._pool.downs) == 4  # Celery's own hook still runs
    watch.hook()  # idempotent: not wrapped twice
    worker.pool._pool.on_process_down(SimpleNamespace(exitcode=0))
    assert watch.exits["recycled"] == 3
    watch.counting = False  # shutdown: the pool stops its children
    worker.pool._pool.on_process_down(SimpleNamespace(exitcode=-15))
    assert watch.exits["killed"] == 1


def test_pool_hook_is_rewrapped_when_celery_replaces_it() -> None:
    worker = fake_worker([])
    watch = PoolWatch(worker)
    watch.hook()
    replaced: list[Any] = []
    worker.pool._pool.on_process_down = replaced.append  # register_with_event_loop again
    watch.sample()
    worker.pool._pool.on_process_down(SimpleNamespace(exitcode=-9))
    assert watch.exits["killed"] == 1
    assert len(replaced) == 1


def test_threads_and_solo_pools_have_only_the_main_process() -> None:
    worker = SimpleNamespace(hostname=HOST, pool=SimpleNamespace(num_processes=4), consumer=None)
    stats = PoolWatch(worker).sample()
    assert stats.processes == 4
    assert set(stats.memory) == {"main"}
    assert stats.prefetch_limit is None


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
        agent.tick()
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
    wanted = {
        spec.name for spec in catalogue.SPECS if spec.source == "agent" or spec.group == "worker"
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
    assert f'celery_worker_tasks_processed{{hostname="{HOST}"}} {before + 5}.0' in s


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
        assert 'celery_vitals_scrape_errors_total{family="WorkerCollector"} 1.0' in response.text
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
    assert agent_module._process.agent is None
    assert "celery-vitals agent not started" in caplog.text
    assert "Address already in use" in caplog.text


def test_bad_listen_address_is_a_warning(
    installed: Celery, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(agent_module.LISTEN_ADDRESS_ENV, "no-port")
    with caplog.at_level(logging.WARNING):
        agent_module._on_worker_init(sender=SimpleNamespace(app=installed, hostname=HOST))
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
