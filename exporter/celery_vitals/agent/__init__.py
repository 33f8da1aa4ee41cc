"""The agent: celery-vitals inside every worker of a Celery app, with one line.

    import celery_vitals.agent
    celery_vitals.agent.install(app)  # in the module that creates the Celery app

Every ``celery worker`` of that app then serves /metrics, /healthz and / from
its main process (never from a pool child) on ``0.0.0.0:9809``, or on
``listen_address``, or on ``$CELERY_VITALS_AGENT_LISTEN_ADDRESS`` (which wins).
An address may name a port range, ``0.0.0.0:9809-9812``: the worker takes
the first free port of it (``celery multi`` starts its nodes with one
environment, and each node needs a port of its own).
``$CELERY_VITALS_AGENT_WEB_CONFIG_FILE`` turns on TLS and basic auth, from a
file in the format of the exporter's ``--web-config-file``.

``celery beat`` (and the beat a worker embeds with ``-B``) serves its schedule
on the same kind of endpoint, from the same address or range (beat.py): the
beat agent starts from the ``beat_init`` signal, on beat's own thread. Any
other process that imports the app (a web server, ``celery inspect``) serves
nothing: the worker's agent starts from the ``worker_init`` signal, which only
a WorkController sends, in the worker's main process.
In every process, workers included, an installed app stamps each task it
publishes with its publication time (publish.py), from which the worker's
agent observes the queue wait (tap.py).

It feeds the same pipeline as the exporter (pipeline.Pipeline: guards,
trackers, router, collectors, exposition) with event dicts of the shape the
event stream delivers, taken from the worker's own request handling (see
tap.py), plus synthetic heartbeats and pool samples from its own thread
(see pool.py). No task events, no second pipeline, no multiprocess files.

A broken agent never breaks the worker: an occupied port, a bad setting, a
failing collector or tap is a logged warning, and the worker runs its tasks.
What the agent says at start (where it serves, or why it does not, and the
parts that cannot work on this Celery: features.py) it logs at
``worker_ready``, once Celery has set up the worker's logging: at
``worker_init`` the worker's log (its ``--logfile``, its format) does not
exist yet.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from celery import Celery, signals
from prometheus_client import CollectorRegistry

from celery_vitals import AGENT_CONF_KEY
from celery_vitals.agent import beat
from celery_vitals.agent.features import FeatureCollector, Features
from celery_vitals.agent.pool import PoolWatch
from celery_vitals.agent.publish import Stamper
from celery_vitals.agent.tap import (
    DRAIN_INTERVAL,
    Tap,
    tappable,
    tapped_request_cls,
    untapped_tasks,
)
from celery_vitals.brokers import BROKER_LABEL, BROKER_NAME_ENV, check_name
from celery_vitals.config import (
    DEFAULT_RUNTIME_BUCKETS,
    DEFAULT_WAIT_BUCKETS,
    Config,
    parse_buckets,
    parse_listen_address,
)
from celery_vitals.exposition import Exposition
from celery_vitals.http import Environ, HttpServer, StartResponse, WsgiApp, make_app
from celery_vitals.labels import LabelGuard
from celery_vitals.logs import RateLimitedLogger

__all__ = ["DEFAULT_LISTEN_ADDRESS", "SETTINGS", "Agent", "BeatAgent", "install"]

DEFAULT_LISTEN_ADDRESS = "0.0.0.0:9809"  # the exporter's is 9808
LISTEN_ADDRESS_ENV = "CELERY_VITALS_AGENT_LISTEN_ADDRESS"
WEB_CONFIG_ENV = "CELERY_VITALS_AGENT_WEB_CONFIG_FILE"
MAX_BEAT_ENTRIES_ENV = "CELERY_VITALS_AGENT_MAX_BEAT_ENTRIES"


@dataclass(frozen=True)
class Setting:
    """One setting of the agent: an environment variable (the worker has no flags of ours)."""

    envvar: str
    default: str  # as docs/agent.md says it
    readme: str  # its meaning (markdown)


#: The agent's settings, declared once: from_environment() reads them, and
#: scripts/generate.sh writes docs/agent.md's table of them.
SETTINGS = (
    Setting(
        LISTEN_ADDRESS_ENV,
        f"`listen_address` of `install()`, else `{DEFAULT_LISTEN_ADDRESS}`",
        "`HOST:PORT` of the worker's HTTP endpoint (`[::]:9809` for IPv6); parsed as the "
        "exporter's `--listen-address`. `HOST:FIRST-LAST` (`0.0.0.0:9809-9812`): the first "
        "free port of the range, one per node of `celery multi`",
    ),
    Setting(
        WEB_CONFIG_ENV,
        "none",
        "TLS and basic auth, a file in the format of `--web-config-file` (see "
        "[Deploy](deploy.md#tls-and-basic-auth---web-config-file)), parsed by the same code",
    ),
    Setting(
        MAX_BEAT_ENTRIES_ENV,
        f"`{beat.DEFAULT_MAX_ENTRIES}`",
        "`celery beat` only: schedule entries served with their own `entry` label; the "
        'others share `entry="other"`, counted in '
        '`celery_vitals_label_values_folded_total{label="entry"}`',
    ),
)


def settings_table() -> str:
    """docs/agent.md's table of the agent's settings (markdown), generated from SETTINGS."""
    lines = ["| environment variable | default | meaning |", "|---|---|---|"]
    lines += [f"| `{s.envvar}` | {s.default} | {s.readme} |" for s in SETTINGS]
    return "\n".join(lines) + "\n"


HEARTBEAT_INTERVAL = 2.0

log = logging.getLogger(__name__)
rate_limited = RateLimitedLogger(log)

_installed: list[tuple[Celery, str | None]] = []  # (app, listen_address) per install()
#: stamps what the installed apps publish (their task senders, wrapped)
stamper = Stamper()


class _Process:
    """The agent of this process, when it is a worker's main process (else None)."""

    agent: Agent | None = None
    # why the agent did not start, logged at worker_ready (see the module's docstring)
    not_started: Exception | None = None
    # the worker's node name, set at worker_init: a beat the worker embeds (-B) is named
    # after it, also in the child process it runs in (a fork keeps this copy)
    worker_hostname: str | None = None
    # the beat agent of this process (beat_init), if any
    beat: BeatAgent | None = None


_process = _Process()


def install(app: Celery, listen_address: str | None = None) -> None:
    """Serve this app's worker metrics from every ``celery worker`` of it (and its
    schedule from ``celery beat``), and stamp every task the app publishes with its
    publication time.

    ``listen_address`` is ``HOST:PORT`` (``[::]:9809`` for IPv6); the
    environment variable CELERY_VITALS_AGENT_LISTEN_ADDRESS overrides it.
    Calling it again for the same app changes nothing but the address.
    """
    for index, (known, _) in enumerate(_installed):
        if known is app:
            _installed[index] = (app, listen_address)
            break
    else:
        _installed.append((app, listen_address))
    try:
        stamper.install(app)
    except Exception:  # the app imports and publishes regardless, unstamped
        log.warning(
            "celery-vitals: tasks this app publishes cannot carry their publication time",
            exc_info=True,
        )
    _connect_signals()


def _connect_signals() -> None:
    """Receivers for every installed app (dispatch_uid: connected once per process)."""
    signals.worker_init.connect(
        _on_worker_init, weak=False, dispatch_uid="celery-vitals-agent-worker-init"
    )
    signals.worker_ready.connect(
        _on_worker_ready, weak=False, dispatch_uid="celery-vitals-agent-worker-ready"
    )
    signals.task_received.connect(
        _on_task_received, weak=False, dispatch_uid="celery-vitals-agent-task-received"
    )
    signals.task_unknown.connect(
        _on_task_unknown, weak=False, dispatch_uid="celery-vitals-agent-task-unknown"
    )
    signals.worker_process_init.connect(
        _on_worker_process_init, weak=False, dispatch_uid="celery-vitals-agent-process-init"
    )
    signals.worker_shutting_down.connect(
        _on_worker_shutting_down, weak=False, dispatch_uid="celery-vitals-agent-shutting-down"
    )
    signals.worker_shutdown.connect(
        _on_worker_shutdown, weak=False, dispatch_uid="celery-vitals-agent-worker-shutdown"
    )
    signals.beat_init.connect(_on_beat_init, weak=False, dispatch_uid="celery-vitals-agent-beat")


def _active() -> Agent | None:
    """This process's running agent; None in pool children, which inherit a copy."""
    agent = _process.agent
    if agent is not None and agent.pid == os.getpid() and agent.running:
        return agent
    return None


def _active_tap() -> Tap | None:
    agent = _active()
    return agent.tap if agent is not None else None


# -- signal receivers: each catches everything, a signal must never fail the worker ---


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    addresses = [address for known, address in _installed if known is app]
    if app is None or not addresses or _active() is not None:
        return  # another app's worker, or already running
    with contextlib.suppress(Exception):
        _process.worker_hostname = str(sender.hostname)
    address = addresses[0]
    _process.not_started = None
    try:
        agent = Agent.from_environment(sender, address)
        agent.start()
    except Exception as error:
        _process.not_started = error  # logged at worker_ready, in the worker's log
        return
    _process.agent = agent
    agent.tap_problem = _tap_requests()


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    """The worker's logging is set up, its pool and consumer run: the agent says where
    it serves (or why it does not) and checks every part against this Celery."""
    error, _process.not_started = _process.not_started, None
    if error is not None:
        log.warning(
            "celery-vitals agent not started, the worker runs without its /metrics: %s",
            error,
            exc_info=error if not isinstance(error, (OSError, ValueError)) else None,
        )
    agent = _active()
    if agent is not None:
        try:
            agent.ready(sender)
        except Exception:
            log.warning("celery-vitals agent: the start check failed", exc_info=True)


def _on_task_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    agent = _process.agent  # _active(), inline: this runs for every task
    if agent is not None and agent.running and agent.pid == os.getpid() and request is not None:
        agent.tap.received(request, sender)


def _on_task_unknown(
    sender: Any = None, message: Any = None, name: Any = None, id: Any = None, **_: Any
) -> None:  # the signal's argument names
    tap = _active_tap()
    if tap is not None:
        tap.unknown(sender, message, name, id)


def _on_worker_process_init(**_: Any) -> None:
    """In a freshly forked pool child: drop the copy of the agent and its listening socket.

    The solo pool sends this signal too, in the main process: nothing to do there.
    """
    agent = _process.agent
    if agent is not None and agent.pid != os.getpid():
        _process.agent = None
        try:
            agent.forget_in_child()
        except Exception:
            log.warning(
                "celery-vitals agent: a pool process could not close its copy of the "
                "agent's socket",
                exc_info=True,
            )


def _on_worker_shutting_down(**_: Any) -> None:
    agent = _active()
    if agent is not None:
        agent.pool.counting = False  # the pool's children are about to be stopped


def _on_worker_shutdown(**_: Any) -> None:
    agent = _active()
    if agent is not None:
        _process.agent = None
        agent.stop()


def _tap_requests() -> str | None:
    """Makes Celery's default strategy build tapped request classes (once per process);
    returns why it cannot, or None. Whether the consumer really uses them is checked at
    worker_ready (Agent.ready)."""
    from celery.worker import strategy

    original = getattr(strategy, "create_request_cls", None)
    if not callable(original):
        return "celery.worker.strategy has no create_request_cls to wrap"
    if getattr(original, "_celery_vitals", False):
        return None

    def create_request_cls(*args: Any, **kwargs: Any) -> type:
        cls: type = original(*args, **kwargs)
        if not tappable(cls):  # not Celery's shape: left alone (the start check names it)
            return cls
        return tapped_request_cls(cls, _process)

    create_request_cls._celery_vitals = True  # type: ignore[attr-defined]
    strategy.create_request_cls = create_request_cls
    return None


# -- the agent ------------------------------------------------------------------


class Agent:
    """The pipeline of one worker, its tap, its pool watch, its thread and HTTP server."""

    def __init__(
        self,
        worker: Any,
        config: Config,
        interval: float = HEARTBEAT_INTERVAL,
        last_port: int | None = None,
    ) -> None:
        """``last_port``: the end of the port range that starts at config.listen_port."""
        import celery

        from celery_vitals.pipeline import Pipeline

        self.worker = worker
        self.config = config
        self.interval = interval
        self.last_port = config.listen_port if last_port is None else last_port
        self.pid = os.getpid()
        self.hostname: str = str(worker.hostname)
        self.registry = CollectorRegistry(auto_describe=True)
        self.pool_name = _pool_name(worker)
        self.features = Features(celery.__version__)
        self.pool = PoolWatch(worker, self.features, prefork=self.pool_name == "prefork")
        self.tap_problem: str | None = None  # why requests cannot be tapped (worker_init)
        self.pipeline = Pipeline(
            config, self.registry, agent={"hostname": self.hostname, "pool": self.pool_name}
        )
        features = FeatureCollector(self.features)
        self.registry.register(features)
        self.pipeline.exposition.collectors.append(features)
        self._ticking = threading.Lock()  # one sample at a time: the thread, worker_ready
        self.lock = threading.Lock()
        self.tap = Tap(
            self.pipeline.router,
            self.hostname,
            self.lock,
            consumer=lambda: getattr(worker, "consumer", None),
        )
        self.http: HttpServer | None = None
        self.running = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_environment(cls, worker: Any, listen_address: str | None = None) -> Agent:
        """Settings from install() and the environment; ValueError names the bad one."""
        config, last_port = _agent_config(getattr(worker, "app", None), listen_address)
        return cls(worker, config, last_port=last_port)

    def start(self) -> None:
        """Binds the port, or the first free one of the range (OSError naming the address
        when it cannot), then starts serving and sampling."""
        app = _guarded(
            _draining(
                make_app(
                    self.registry, ready=lambda: self.running, exposition=self.pipeline.exposition
                ),
                self.tap,
            )
        )
        self.http = self._bind(app)
        self.running = True
        self._record({"type": "worker-online", **self._heartbeat_fields()})
        self.http.start()
        with contextlib.suppress(Exception):  # a marker only: never worth failing a worker
            # `celery inspect conf` (and so `celery-vitals doctor`) tells an agent runs here
            self.worker.app.conf[AGENT_CONF_KEY] = f"{self.config.listen_host}:{self.http.port}"
        self._thread = threading.Thread(target=self._run, name="celery-vitals-agent", daemon=True)
        self._thread.start()

    def _bind(self, app: WsgiApp) -> HttpServer:
        return _bind(app, self.config, self.last_port)

    def serving(self) -> str:
        """The worker's log line: where it serves (which port of a range)."""
        assert self.http is not None
        scheme = self.config.web_config.scheme if self.config.web_config else "http"
        where = _address(self.config.listen_host, self.http.port)
        line = f"celery-vitals agent: serving {scheme}://{where}/metrics for {self.hostname}"
        if self.last_port > self.config.listen_port:
            line += f" (the first free port of {self.config.listen_port}-{self.last_port})"
        return line

    def ready(self, consumer: Any = None) -> None:
        """worker_ready: says where it serves, and checks the tap (does the consumer build
        its requests from the tapped class?) and every part of the sample against this
        Celery; what cannot work is one warning and celery_vitals_agent_feature_up 0."""
        log.info("%s", self.serving())
        if not hasattr(consumer, "strategies"):
            consumer = getattr(self.worker, "consumer", None)
        problem = self.tap_problem or untapped_tasks(consumer)
        if problem is None:
            self.features.works("tap")
        else:
            self.features.failed("tap", problem)
        self.tick()  # every part, read now
        self.features.finish_check()

    def _run(self) -> None:
        next_tick = 0.0
        while not self._stopping.is_set():
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + self.interval
                self.tick()
            else:
                self.tap.drain()
            self._stopping.wait(min(DRAIN_INTERVAL, self.interval))

    def tick(self) -> None:
        """The tap's queued events, then a heartbeat from the worker's own state, a pool
        sample, housekeeping."""
        with self._ticking:
            self.tap.drain()
            self.tap.forget_queues()
            try:
                now = time.time()  # before sampling: a sample is never older than its timestamp
                stats = self.pool.sample()
                event = {"type": "worker-heartbeat", **self._heartbeat_fields(now)}
                with self.lock:
                    self.pipeline.router.handle(event, now)
                    self.pipeline.workers.on_pool(self.hostname, stats, now, self.pool_name)
                    self.pipeline.router.tick(now)
            except Exception:
                rate_limited.warn_every(
                    "tick", "celery-vitals agent: could not sample the worker", exc_info=True
                )

    def _heartbeat_fields(self, now: float | None = None) -> dict[str, Any]:
        """What Celery's own heartbeat carries (no freq: a late agent thread is no lost event);
        active and processed from the worker's state, each its own feature."""
        import celery

        try:
            loadavg: list[float] = [round(value, 2) for value in os.getloadavg()]
        except OSError:
            loadavg = []
        fields: dict[str, Any] = {
            "hostname": self.hostname,
            "timestamp": now or time.time(),
            "loadavg": loadavg,
            "sw_ver": celery.__version__,
        }
        active = self.features.read("busy_processes", PoolWatch.active_tasks)
        processed = self.features.read("processed", _processed)
        if active is not None:
            fields["active"] = active
        if processed is not None:
            fields["processed"] = processed
        return fields

    def _record(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.pipeline.router.handle(event)

    def stop(self) -> None:
        """Stops sampling and serving (worker shutdown); idempotent."""
        self.running = False
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.http is not None:
            try:
                self.http.stop()
            except Exception:
                log.warning("celery-vitals agent: error stopping the HTTP server", exc_info=True)

    def forget_in_child(self) -> None:
        """A forked pool child: close its copy of the listening socket, serve nothing."""
        self.running = False
        if self.http is not None:
            self.http.close_socket()


# -- the beat agent ---------------------------------------------------------------


def _on_beat_init(sender: Any = None, **_: Any) -> None:
    """``celery beat`` (or a worker's ``-B``) starts its service, on beat's own thread, its
    logging set up: its schedule on /metrics. Nothing here may stop beat."""
    app = getattr(sender, "app", None)
    addresses = [address for known, address in _installed if known is app]
    if app is None or not addresses or _process.beat is not None:
        return  # another app's beat, or already serving
    try:
        _process.beat = BeatAgent.start(sender, addresses[0])
    except Exception as error:
        log.warning(
            "celery-vitals beat agent not started, beat runs without its /metrics: %s",
            error,
            exc_info=error if not isinstance(error, (OSError, ValueError)) else None,
        )


class BeatAgent:
    """The agent of one running beat: hooks on its scheduler (beat.hook), served on an
    HTTP server of its own (``celery beat``, and the child process a worker's ``-B``
    runs beat in), or on the worker agent's when beat is a thread of that worker."""

    def __init__(
        self, state: beat.BeatSchedule, collector: beat.BeatCollector, http: HttpServer | None
    ) -> None:
        self.state = state
        self.collector = collector
        self.http = http

    @classmethod
    def start(cls, service: Any, listen_address: str | None) -> BeatAgent:
        """Hooks ``service.scheduler`` and serves it; OSError/ValueError say why it cannot."""
        scheduler = service.scheduler
        hostname = _beat_hostname(service)
        name = beat.scheduler_name(scheduler)
        max_entries = _max_beat_entries()
        worker_agent = _active()
        if worker_agent is not None:  # a threaded beat inside this worker: its endpoint
            state = beat.BeatSchedule(
                max_entries,
                worker_agent.pipeline.guards["name"],
                worker_agent.config.max_label_length,
            )
            collector = beat.BeatCollector(state, hostname, name, own_process=False)
            beat.hook(scheduler, state)
            worker_agent.registry.register(collector)
            # first: its rows are computed before the worker's collectors count folds
            worker_agent.pipeline.exposition.collectors.insert(0, collector)
            _fold_counts(worker_agent, state.entries)
            log.info(
                "celery-vitals beat agent: serving the schedule of %s (%s) on the worker's agent",
                hostname,
                name,
            )
            return cls(state, collector, None)
        config, last_port = _agent_config(service.app, listen_address)
        state = beat.BeatSchedule(
            max_entries,
            LabelGuard("name", config.max_task_names, config.max_label_length),
            config.max_label_length,
        )
        scrape_errors: dict[str, int] = {}
        collector = beat.BeatCollector(state, hostname, name, scrape_errors=scrape_errors)
        registry = CollectorRegistry(auto_describe=True)
        registry.register(collector)
        exposition = Exposition(
            [collector], errors=scrape_errors, constant_labels={BROKER_LABEL: config.broker_label}
        )
        app = make_app(
            registry,
            ready=lambda: state.taken is not None,
            exposition=exposition,
            ready_means="the beat agent read the schedule",
        )
        http = _bind(_guarded(app), config, last_port)
        try:
            beat.hook(scheduler, state)  # the first read now: /metrics is never empty
        except Exception:
            http.close_socket()
            raise
        http.start()
        scheme = config.web_config.scheme if config.web_config else "http"
        url = f"{scheme}://{_address(config.listen_host, http.port)}/metrics"
        rows = len(state.taken.entries) if state.taken is not None else 0
        line = f"celery-vitals beat agent: serving {url} for {hostname} ({name}, {rows} entries)"
        if last_port > config.listen_port:
            line += f" (the first free port of {config.listen_port}-{last_port})"
        log.info("%s", line)
        return cls(state, collector, http)


def _beat_hostname(service: Any) -> str:
    """Beat's node name as Celery names it: the worker's hostname for a worker's ``-B``,
    else ``celerybeat@host`` (``celery beat -n`` on Celery 5.7)."""
    if _process.worker_hostname is not None:
        return _process.worker_hostname
    import celery.beat

    nodename = getattr(celery.beat, "beat_nodename", None)  # Celery 5.7
    if callable(nodename):
        return str(nodename(getattr(service, "hostname", None)))
    from celery.utils.nodenames import gethostname
    from celery.utils.nodenames import nodename as make_nodename

    return str(make_nodename("celerybeat", gethostname()))


def _max_beat_entries() -> int:
    raw = os.environ.get(MAX_BEAT_ENTRIES_ENV, "").strip()
    if not raw:
        return beat.DEFAULT_MAX_ENTRIES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{MAX_BEAT_ENTRIES_ENV}: expected a positive whole number, got {raw!r}")
    return value


def _fold_counts(agent: Agent, entries: beat.EntryLabels) -> None:
    """The worker's celery_vitals_label_values_folded_total also counts folded entries."""
    from celery_vitals.collectors import ExporterCollector

    for collector in agent.pipeline.collectors:
        if isinstance(collector, ExporterCollector):
            collector.guards.append(entries)  # type: ignore[arg-type]  # label and folded


def _agent_config(app: Any, listen_address: str | None) -> tuple[Config, int]:
    """The settings of a worker's or beat's agent, from install() and the environment, and
    the end of the port range; ValueError names the bad one."""
    address = os.environ.get(LISTEN_ADDRESS_ENV) or listen_address or DEFAULT_LISTEN_ADDRESS
    try:
        host, port, last_port = _listen_range(address)
    except ValueError as error:
        raise ValueError(f"{LISTEN_ADDRESS_ENV}/listen_address: {error}") from None
    web_config = None
    path = os.environ.get(WEB_CONFIG_ENV, "").strip()
    if path:
        from celery_vitals.webconfig import load

        web_config = load(path)  # ValueError with a one-line reason
    config = Config(
        broker_url=_broker_url(app) if app is not None else "",
        broker_transport_options=(
            dict(app.conf.broker_transport_options or {}) if app is not None else {}
        ),
        broker_name=_broker_name_setting(),
        listen_host=host,
        listen_port=port,
        runtime_buckets=parse_buckets(DEFAULT_RUNTIME_BUCKETS),
        wait_buckets=parse_buckets(DEFAULT_WAIT_BUCKETS),
        web_config=web_config,
    )
    return config, last_port


def _bind(app: WsgiApp, config: Config, last: int) -> HttpServer:
    """Binds config's port, or the first free one up to ``last``; OSError names the address."""
    host, first = config.listen_host, config.listen_port
    for port in range(first, last + 1):
        try:
            return HttpServer(app, host, port, web_config=config.web_config)
        except OSError as error:
            if error.errno == errno.EADDRINUSE and port < last:
                continue  # the range's next port
            where = _address(host, first if first == last else f"{first}-{last}")
            if error.errno == errno.EADDRINUSE and first < last:
                raise OSError(f"cannot listen on {where}: every port is in use") from None
            raise OSError(f"cannot listen on {where}: {error}") from None
    raise AssertionError("unreachable: the range has a port")


def _broker_name_setting() -> str | None:
    raw = os.environ.get(BROKER_NAME_ENV, "")
    if not raw.strip():
        return None
    try:
        return check_name(raw)
    except ValueError as error:
        raise ValueError(f"{BROKER_NAME_ENV}: {error}") from None


def _broker_url(app: Any) -> str:
    """The URL the worker consumes from (its ``broker`` label is named after it);
    Celery's own default when the app sets none."""
    url = app.conf.broker_read_url or app.conf.broker_url or "amqp://guest@localhost:5672//"
    if isinstance(url, (list, tuple)):  # a failover list
        url = ";".join(str(item) for item in url)
    return str(url)


def _processed() -> int:
    """Tasks the worker accepted since it started (celery.worker.state.all_total_count)."""
    from celery.worker import state

    value = state.all_total_count[0]
    if type(value) is not int:
        raise TypeError(f"celery.worker.state.all_total_count[0] is {value!r}, not a count")
    return value


def _listen_range(address: str) -> tuple[str, int, int]:
    """``HOST:PORT`` or ``HOST:FIRST-LAST`` -> (host, first, last); ValueError says why."""
    head, sep, ports = address.strip().rpartition(":")
    first_text, dash, last_text = ports.partition("-")
    if not (sep and dash):
        host, port = parse_listen_address(address)
        return host, port, port
    host, first = parse_listen_address(f"{head}:{first_text}")
    _, last = parse_listen_address(f"{head}:{last_text}")
    if not 0 < first <= last:
        raise ValueError(f"a port range runs from a low port to a higher one, got {ports!r}")
    return host, first, last


def _address(host: str, port: object) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _pool_name(worker: Any) -> str:
    """prefork, threads, solo, ... from the pool class's module."""
    pool_cls = getattr(worker, "pool_cls", None)
    if isinstance(pool_cls, str):  # an alias or a dotted path (resolved after worker_init)
        name = pool_cls.rsplit(":", 1)[0].rsplit(".", 1)[-1]
    else:
        name = (getattr(pool_cls, "__module__", "") or "").rsplit(".", 1)[-1]
    return {"prefork": "prefork", "thread": "threads", "solo": "solo"}.get(name, name or "unknown")


def _draining(app: WsgiApp, tap: Tap) -> WsgiApp:
    """Every request first routes what the tap queued: a scrape sees every finished task."""

    def draining(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        tap.drain()
        return app(environ, start_response)

    return draining


def _guarded(app: WsgiApp) -> WsgiApp:
    """A failing render (a collector that raises) is a logged 500, never a dead server."""

    def guarded(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        try:
            return app(environ, start_response)
        except Exception:
            rate_limited.warn_every(
                "scrape", "celery-vitals agent: %s failed", environ.get("PATH_INFO"), exc_info=True
            )
            body = b"celery-vitals agent: collecting metrics failed, see the worker's log\n"
            start_response(
                "500 Internal Server Error",
                [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
                sys.exc_info(),
            )
            return [body]

    return guarded
