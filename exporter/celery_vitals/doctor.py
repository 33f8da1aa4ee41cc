"""``celery-vitals doctor``: checks a live cluster for the mistakes that blind an exporter
and the configuration traps that bite in production.

It only looks. The broker is read with the exporter's probes (passive declares
on RabbitMQ, reads on Redis); the workers are asked with read-only remote
control broadcasts (ping, stats, conf, active_queues, registered); the event
stream is consumed for ``--listen`` seconds through an exclusive, auto-deleted
queue of its own. It never sends enable_events and never declares a queue that
could create a task queue.

Flow: ``look`` gathers an ``Observation`` (plain data), each check turns it into
``Finding``s (ok / warn / fail, what was seen, the fix), ``report`` prints them.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit

import click

from celery_vitals import AGENT_CONF_KEY, installation, logs
from celery_vitals.config import Config, build
from celery_vitals.config import http_url as config_http_url
from celery_vitals.logs import safe_url, url_passwords
from celery_vitals.probes import ProbeResult, QueueStats, is_plumbing

if TYPE_CHECKING:
    from celery_vitals.doctor_prometheus import PrometheusView

OK, WARN, FAIL = "ok", "warn", "fail"
STATUSES = (OK, WARN, FAIL)
#: kombu's Redis transport re-delivers an unacked message after this long by default.
REDIS_VISIBILITY_DEFAULT = 3600.0
#: Tasks allowed to run at least this long are "long" for the prefetch check.
LONG_TASK = 30.0
#: Task attributes asked of every worker with ``registered``.
TASK_FIELDS = ("acks_late", "reject_on_worker_lost", "time_limit", "soft_time_limit", "max_retries")
#: Wait after the last stats broadcast, so that the events of a task it counted arrive.
GRACE = 0.5


@dataclass(frozen=True)
class Finding:
    check: str
    status: str
    detail: str
    fix: str = ""
    subject: str | None = None  # the worker or queue the finding is about

    def as_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "check": self.check,
            "status": self.status,
            "detail": self.detail,
            "fix": self.fix or None,
        }
        if self.subject is not None:
            document["subject"] = self.subject
        return document


# -- what the doctor sees ----------------------------------------------------------------


@dataclass
class WorkerView:
    """One worker's answers to the broadcasts (empty where it did not answer)."""

    hostname: str
    stats: Mapping[str, Any] = field(default_factory=dict)
    conf: Mapping[str, Any] = field(default_factory=dict)
    queues: tuple[str, ...] = ()
    tasks: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    processed_during: int = 0  # tasks the worker finished while the doctor listened

    @property
    def pool(self) -> Mapping[str, Any]:
        pool = self.stats.get("pool")
        return pool if isinstance(pool, dict) else {}

    @property
    def pool_name(self) -> str:
        implementation = str(self.pool.get("implementation", ""))
        return implementation.rpartition(".")[2].split(":")[0] or "unknown"

    @property
    def concurrency(self) -> int | None:
        value = self.pool.get("max-concurrency")
        return value if isinstance(value, int) else None

    @property
    def prefetch_limit(self) -> int | None:
        value = self.stats.get("prefetch_count")
        return value if isinstance(value, int) else None

    @property
    def prefetch_multiplier(self) -> int:
        value = self.conf.get("worker_prefetch_multiplier")
        if isinstance(value, int):
            return value
        if self.prefetch_limit is not None and self.concurrency:
            return self.prefetch_limit // self.concurrency
        return 4  # Celery's default

    def acks_late_tasks(self) -> list[str]:
        return sorted(
            name for name, fields in self.tasks.items() if fields.get("acks_late") == "True"
        )

    def time_limit(self, task: str) -> float | None:
        """The longest a task may run: its hard limit, else its soft one, else the pool's."""
        fields = self.tasks.get(task, {})
        for key in ("time_limit", "soft_time_limit"):
            value = _seconds(fields.get(key))
            if value:
                return value
        timeouts = self.pool.get("timeouts")
        if isinstance(timeouts, list | tuple) and len(timeouts) == 2:
            soft, hard = (_seconds(value) for value in timeouts)
            return hard or soft or None
        return None

    def longest(self, tasks: Iterable[str]) -> tuple[float, str] | None:
        limits = [(limit, task) for task in tasks if (limit := self.time_limit(task)) is not None]
        return max(limits) if limits else None


def _seconds(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


@dataclass
class EventCounts:
    """What the event stream carried while the doctor listened."""

    task_events: Counter[str] = field(default_factory=Counter)  # hostname -> task-* events
    sent: int = 0
    received: int = 0
    versions: dict[str, str] = field(default_factory=dict)  # hostname -> Celery version
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, body: object) -> None:
        events = body if isinstance(body, list) else [body]
        with self.lock:
            for event in events:
                if isinstance(event, dict):
                    self._count(event)

    def _count(self, event: Mapping[str, Any]) -> None:
        kind, host = event.get("type"), event.get("hostname")
        if not isinstance(kind, str) or not isinstance(host, str):
            return
        if kind == "task-sent":
            self.sent += 1
        elif kind.startswith("task-"):
            self.task_events[host] += 1
            self.received += kind == "task-received"
        elif kind.startswith("worker-") and isinstance(event.get("sw_ver"), str):
            self.versions[host] = event["sw_ver"]


@dataclass
class ExporterView:
    url: str
    error: str | None = None
    before: dict[str, float] = field(default_factory=dict)  # series text -> value
    after: dict[str, float] = field(default_factory=dict)


@dataclass
class Observation:
    config: Config
    listen: float
    broker: ProbeResult | None = None
    broker_error: str | None = None
    broker_problem: installation.Problem | None = None  # the broker error: a missing package
    broker_seconds: float = 0.0
    workers: dict[str, WorkerView] = field(default_factory=dict)
    workers_error: str | None = None
    listening: bool = False
    events: EventCounts = field(default_factory=EventCounts)
    queues: dict[str, QueueStats] = field(default_factory=dict)
    queues_error: str | None = None
    dead_letter: frozenset[str] = frozenset()
    durable: dict[str, bool] = field(default_factory=dict)  # RabbitMQ management only
    durable_error: str | None = None
    exporter: ExporterView | None = None
    prometheus: PrometheusView | None = None  # with --prometheus-url

    @property
    def remote_control(self) -> bool:
        """Whether workers can be asked and their events consumed (not on SQS)."""
        return self.config.transport != "sqs"

    @property
    def consumed(self) -> dict[str, list[str]]:
        """Queue -> the workers consuming it."""
        consumers: dict[str, list[str]] = {}
        for host, worker in sorted(self.workers.items()):
            for queue in worker.queues:
                consumers.setdefault(queue, []).append(host)
        return consumers


# -- looking -------------------------------------------------------------------------------


def describe(error: BaseException, config: Config) -> str:
    """One line, no password: what went wrong (a missing package: which, and the fix)."""
    text = installation.explain(error).splitlines()[0]
    for secret in config.secrets:
        text = text.replace(secret, "**")
    return text


def look(config: Config, *, timeout: float, listen: float, exporter_url: str | None) -> Observation:
    """Everything the checks need; a broker that cannot be reached ends it early."""
    from celery_vitals.service import broker_probe, celery_app

    seen = Observation(config, listen)
    probe = broker_probe(config)
    try:
        if _look_at_broker(probe, seen):
            if seen.remote_control:
                app = celery_app(config)
                try:
                    _watch(app, seen, timeout, exporter_url)
                finally:
                    app.close()
            elif exporter_url:  # SQS: no events to listen to, no worker to ask
                seen.exporter = _scrape(exporter_url)
            try:
                _look_at_queues(probe, seen)
            except Exception as error:  # the broker went away meanwhile
                seen.queues_error = describe(error, config)
    finally:
        probe.close()
    return seen


def _look_at_broker(probe: Any, seen: Observation) -> bool:
    """Reachable, version, persistence: one poll (the default or --queue queues)."""
    started = time.perf_counter()
    try:
        seen.broker = probe.poll(seen.config.queues or [seen.config.default_queue])
    except Exception as error:
        seen.broker_error = describe(error, seen.config)
        seen.broker_problem = installation.problem(error)
        return False
    seen.broker_seconds = time.perf_counter() - started
    return True


def _watch(app: Any, seen: Observation, timeout: float, exporter_url: str | None) -> None:
    """The workers asked while the event stream is consumed, then the listen window, then
    their totals again (what they finished in it); the exporter scraped before and after."""
    seen.exporter = _scrape(exporter_url) if exporter_url else None
    with _listening(app, seen.config, seen.events, timeout) as connected:
        seen.listening = connected
        _ask_workers(app, seen, timeout)
        time.sleep(seen.listen)
        _count_processed(app, seen, timeout)
        time.sleep(GRACE)
    if exporter_url and seen.exporter is not None and seen.exporter.error is None:
        seen.exporter.after = _scrape(exporter_url).before


@contextlib.contextmanager
def _listening(app: Any, config: Config, counts: EventCounts, timeout: float) -> Iterator[bool]:
    """The event stream, consumed on a thread; yields whether it connected in time."""
    from celery_vitals.stream import EventStream

    stream = EventStream(
        app,
        counts.handle,
        lambda: None,
        lambda _reason: None,
        queue_ttl=config.event_queue_ttl,
        queue_expires=config.event_queue_expires,
        queue_max_length=config.event_queue_max_length,
    )
    thread = threading.Thread(target=stream.run, name="doctor-events", daemon=True)
    thread.start()
    try:
        yield stream.connected.wait(timeout)
    finally:
        stream.stop()
        thread.join(timeout=5)


def _ask_workers(app: Any, seen: Observation, timeout: float) -> None:
    """ping, then stats, conf, active_queues and registered from those that answered."""
    try:
        pinged = app.control.inspect(timeout=timeout).ping() or {}
        if not pinged:
            return
        inspect = app.control.inspect(timeout=timeout, limit=len(pinged))
        replies = {
            "stats": inspect.stats(),
            "conf": inspect.conf(),
            "active_queues": inspect.active_queues(),
            "registered": inspect.registered(*TASK_FIELDS),
        }
    except Exception as error:
        seen.workers_error = describe(error, seen.config)
        return
    for host in pinged:
        seen.workers[host] = WorkerView(
            host,
            stats=_reply(replies["stats"], host, dict),
            conf=_reply(replies["conf"], host, dict),
            queues=tuple(
                sorted(
                    queue["name"]
                    for queue in _reply(replies["active_queues"], host, list)
                    if isinstance(queue, dict) and isinstance(queue.get("name"), str)
                )
            ),
            tasks=dict(parse_registered(_reply(replies["registered"], host, list))),
        )


def _reply(replies: Mapping[str, Any] | None, host: str, kind: type) -> Any:
    value = (replies or {}).get(host)
    return value if isinstance(value, kind) else kind()


_TASK_LINE = re.compile(r"^(\S+)(?: \[(.*)\])?$")


def parse_registered(lines: Iterable[object]) -> Iterator[tuple[str, dict[str, str]]]:
    """``registered`` answers ``"name [field=value ...]"``; a field whose value is None
    is left out by Celery (``max_retries`` absent: retries forever)."""
    for line in lines:
        match = _TASK_LINE.match(line) if isinstance(line, str) else None
        if match:
            fields = dict(
                pair.split("=", 1) for pair in (match.group(2) or "").split() if "=" in pair
            )
            yield match.group(1), fields


def _totals(app: Any, hosts: int, timeout: float) -> dict[str, int]:
    stats = app.control.inspect(timeout=timeout, limit=hosts).stats() or {}
    return {
        host: sum(v for v in (reply.get("total") or {}).values() if isinstance(v, int))
        for host, reply in stats.items()
        if isinstance(reply, dict)
    }


def _count_processed(app: Any, seen: Observation, timeout: float) -> None:
    """Tasks each worker finished during the window: its stats' totals, before and after."""
    if not seen.workers:
        return
    try:
        after = _totals(app, len(seen.workers), timeout)
    except Exception as error:
        seen.workers_error = describe(error, seen.config)
        return
    for host, worker in seen.workers.items():
        before = sum(v for v in (worker.stats.get("total") or {}).values() if isinstance(v, int))
        worker.processed_during = max(0, after.get(host, before) - before)


def _look_at_queues(probe: Any, seen: Observation) -> None:
    """Every queue a worker consumes, the broker knows of (Redis bindings, RabbitMQ
    management) or --queue names, without Celery's plumbing and the dead-letter queues."""
    assert seen.broker is not None
    names = set(seen.config.queues) | set(seen.consumed)
    try:
        names |= probe.discover()
    except Exception as error:
        seen.workers_error = seen.workers_error or describe(error, seen.config)
    names = {name for name in names if not is_plumbing(name)}
    result = probe.poll(sorted(names))
    seen.dead_letter = result.dead_letter_targets
    seen.queues = {queue.name: queue for queue in result.queues if not _is_dlq(queue.name, seen)}
    management = getattr(probe, "management", None)
    if management is not None:
        from celery_vitals.probes import Deadline

        try:
            listing = management.queues(
                Deadline(seen.config.probe_timeout), columns=("name", "durable")
            )
        except Exception as error:  # the probe fell back to passive declares: go on
            seen.durable_error = describe(error, seen.config)
            return
        seen.durable = {
            queue["name"]: bool(queue.get("durable"))
            for queue in listing
            if isinstance(queue.get("name"), str)
        }


def _is_dlq(name: str, seen: Observation) -> bool:
    import fnmatch

    return name in seen.dead_letter or any(
        fnmatch.fnmatchcase(name, pattern) for pattern in seen.config.dlqs
    )


#: Seconds one HTTP request of the doctor (the exporter's /metrics, Prometheus' API) may take.
HTTP_TIMEOUT = 5.0


def http_url(raw: str) -> str:
    """An exporter's or Prometheus' URL as a user may write it: ``host:9808`` is
    ``http://host:9808``; ValueError when it is no http(s) URL."""
    return config_http_url(raw, assume_http=True)


@dataclass(frozen=True)
class HttpAnswer:
    url: str  # what was asked: no credentials, no query
    status: int
    content_type: str
    body: str


class Unreachable(Exception):
    """No HTTP answer at all: ``URL: why``, on one line, without credentials."""


def http_get(
    base: str,
    path: str,
    params: Mapping[str, str] | None = None,
    *,
    timeout: float = HTTP_TIMEOUT,
) -> HttpAnswer:
    """GET ``path`` below ``base`` (whose own path is kept: a prefix); credentials in
    ``base`` become basic auth. An HTTP error status is an answer too."""
    parts = urlsplit(base)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{parts.port}" if parts.port else host
    where = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + path, "", ""))
    request = urllib.request.Request(f"{where}?{urlencode(params)}" if params else where)
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        request.add_header("Authorization", f"Basic {base64.b64encode(pair.encode()).decode()}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read().decode("utf-8", "replace")
            return HttpAnswer(where, response.status, response.headers["Content-Type"] or "", body)
    except urllib.error.HTTPError as error:
        body = error.read().decode("utf-8", "replace") if error.fp is not None else ""
        kind = (error.headers["Content-Type"] if error.headers else None) or ""
        return HttpAnswer(where, error.code, kind, body)
    except (OSError, http.client.HTTPException, ValueError) as error:
        raise Unreachable(f"{where}: {_why(error, timeout)}") from None


def _why(error: BaseException, timeout: float) -> str:
    """Why a request got no HTTP answer, as an operator would say it."""
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused: nothing listens on that port"
    if isinstance(reason, socket.gaierror):
        return f"unknown host ({reason.strerror})"
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(reason, ssl.SSLError):
        return f"TLS failed: {reason}"
    if isinstance(reason, http.client.BadStatusLine | ConnectionResetError):
        return "the server closed the connection without an HTTP answer (not an HTTP server)"
    if isinstance(reason, str):
        return reason
    return f"{type(reason).__name__}: {reason}".splitlines()[0]


def _scrape(url: str) -> ExporterView:
    """The exporter's (or an agent's) /metrics as {series: value}; ``error``, one line,
    when nothing answers there, or not with celery-vitals' metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    view = ExporterView(safe_url(url))
    try:
        answer = http_get(url, "/metrics")
    except Unreachable as error:
        view.error = f"cannot reach {error}"
        return view
    if answer.status != 200:
        view.error = f"{answer.url} answered HTTP {answer.status}" + (
            ": it needs credentials (http://user:password@host:9808)"
            if answer.status in (401, 403)
            else ""
        )
        return view
    try:
        for family in text_string_to_metric_families(answer.body):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                view.before[f"{sample.name}{{{labels}}}"] = sample.value
    except Exception:  # the parser raises whatever the text makes it trip on
        kind = answer.content_type.split(";")[0] or "no Content-Type"
        view.error = f"{answer.url} answered, but not with Prometheus metrics ({kind})"
        view.before.clear()
        return view
    if not any(key.startswith(CELERY_VITALS_SERIES) for key in view.before):
        view.error = (
            f"{answer.url} serves {len(view.before)} series, none of celery-vitals (no "
            "celery_vitals_build_info): another program listens there"
        )
        view.before.clear()
    return view


#: What only celery-vitals' /metrics (the exporter's or an agent's) carries.
CELERY_VITALS_SERIES = ("celery_vitals_build_info{", "celery_vitals_agent_info{")


# -- the checks ----------------------------------------------------------------------------
# Each takes the Observation and yields Findings. Their names are public (--json).

Check = Callable[[Observation], Iterable[Finding]]
_EVENTS_FIX = (
    "start workers with -E (worker_send_task_events=True), or keep "
    "`celery-vitals serve` running with --enable-events (the default), which "
    "turns them on every --enable-events-interval"
)


def names_of(items: Iterable[str], most: int = 5) -> str:
    listed = sorted(items)
    shown = ", ".join(listed[:most])
    return shown + (f" and {len(listed) - most} more" if len(listed) > most else "")


def check_broker(seen: Observation) -> Iterator[Finding]:
    where = seen.config.safe_broker_url
    if seen.broker_problem is not None:  # not the broker's fault: the network is not in it
        yield Finding("broker", FAIL, seen.broker_problem.detail, seen.broker_problem.fix)
        return
    if seen.broker_error is not None:
        yield Finding(
            "broker",
            FAIL,
            f"cannot reach the broker at {where}: {seen.broker_error}",
            "check --broker-url (CELERY_VITALS_BROKER_URL), the network and the "
            "broker's credentials",
        )
        return
    assert seen.broker is not None
    info = seen.broker.info
    version = info.get("version")
    if not version and seen.config.transport != "sqs":  # SQS has no version to tell
        version = "unknown version"
    broker = " ".join(
        part for part in (info.get("transport", seen.config.transport), version) if part
    )
    yield Finding(
        "broker",
        OK,
        f"{broker} at {where} answered in {seen.broker_seconds * 1000:.0f} ms",
    )


def check_persistence(seen: Observation) -> Iterator[Finding]:
    assert seen.broker is not None
    if seen.config.transport == "sqs":
        yield Finding(
            "broker-persistence",
            OK,
            "SQS keeps each message until it is deleted or its queue's retention period "
            "(MessageRetentionPeriod) ends",
        )
        return
    if seen.config.transport == "redis":
        kinds = seen.broker.persistence
        on = sorted(kind for kind, enabled in kinds.items() if enabled)
        if on:
            yield Finding("broker-persistence", OK, f"Redis persists to disk ({', '.join(on)})")
        else:
            said = ", ".join(f"{kind} off" for kind in sorted(kinds)) or "not told"
            yield Finding(
                "broker-persistence",
                WARN,
                f"Redis has no persistence ({said}): a restart loses every queued "
                "and unacknowledged task",
                "turn on AOF (appendonly yes) or RDB snapshots (save) on the broker",
            )
        return
    if not seen.durable:
        why = f" ({seen.durable_error})" if seen.durable_error else ""
        yield Finding(
            "broker-persistence",
            WARN,
            "cannot tell whether the task queues are durable without the RabbitMQ "
            f"management API{why}",
            "pass --rabbitmq-management-url (with credentials allowed to list queues) to "
            "check queue durability",
        )
        return
    transient = sorted(name for name in seen.consumed if seen.durable.get(name) is False)
    if transient:
        yield Finding(
            "broker-persistence",
            WARN,
            f"queues {names_of(transient)} are not durable: a broker restart loses "
            "them and their messages",
            "declare task queues durable (Queue(..., durable=True) in task_queues, "
            "Celery's default)",
        )
    else:
        yield Finding("broker-persistence", OK, "every consumed queue is durable")


def check_workers(seen: Observation) -> Iterator[Finding]:
    if not seen.remote_control:
        yield Finding(
            "workers",
            WARN,
            "SQS has no remote control and no events: workers cannot be asked or "
            "listened to, and their task events are not checked",
            "install the agent in the workers (celery_vitals.agent.install(app)), have "
            "Prometheus scrape it (port 9809), and check one with --exporter-url "
            "http://WORKER:9809",
        )
        return
    if seen.workers_error is not None and not seen.workers:
        yield Finding(
            "workers",
            FAIL,
            f"asking the workers failed: {seen.workers_error}",
            "check that the broker accepts remote-control broadcasts "
            "(worker_enable_remote_control)",
        )
        return
    if not seen.workers:
        yield Finding(
            "workers",
            FAIL,
            "no worker answered a ping",
            "start workers on this broker (same --broker-url and vhost/db), or "
            "enable remote control (worker_enable_remote_control=True)",
        )
        return
    for host, worker in sorted(seen.workers.items()):
        version = seen.events.versions.get(host, "unknown")
        timeouts = worker.pool.get("timeouts")
        yield Finding(
            "workers",
            OK,
            f"{host}: celery {version}, pool {worker.pool_name} x{worker.concurrency}, "
            f"prefetch multiplier {worker.prefetch_multiplier} (limit "
            f"{worker.prefetch_limit}), acks_late tasks {len(worker.acks_late_tasks())} of "
            f"{len(worker.tasks)}, max-tasks-per-child "
            f"{worker.pool.get('max-tasks-per-child', 'N/A')}, time limits (soft, hard) "
            f"{tuple(timeouts) if isinstance(timeouts, list | tuple) else 'N/A'}",
            subject=host,
        )


def check_task_events(seen: Observation) -> Iterator[Finding]:
    if not seen.remote_control:  # said by check_workers
        return
    if not seen.listening:
        yield Finding(
            "task-events",
            WARN,
            "could not consume the event stream: task events were not checked",
            "check that the broker allows the event exchange (celeryev) to be consumed",
        )
        return
    for host, worker in sorted(seen.workers.items()):
        events = seen.events.task_events.get(host, 0)
        configured = worker.conf.get("worker_send_task_events") is True
        if events:
            yield Finding(
                "task-events",
                OK,
                f"{host}: task events on ({events} in {seen.listen:g}s)",
                subject=host,
            )
        elif isinstance(worker.conf.get(AGENT_CONF_KEY), str):
            yield Finding(
                "task-events",
                OK,
                f"{host}: task events off, and not needed: the celery-vitals agent runs in "
                f"it (on {worker.conf[AGENT_CONF_KEY]})",
                subject=host,
            )
        elif worker.processed_during:
            yield Finding(
                "task-events",
                FAIL,
                f"{host}: finished {worker.processed_during} tasks in "
                f"{seen.listen:g}s and sent no task event: task events are off and "
                "no `celery-vitals serve` turns them on (the worker answers remote "
                "control, so `serve --enable-events` would)",
                _EVENTS_FIX,
                subject=host,
            )
        elif configured:
            yield Finding(
                "task-events",
                OK,
                f"{host}: worker_send_task_events=True (idle during the window)",
                subject=host,
            )
        else:
            yield Finding(
                "task-events",
                WARN,
                f"{host}: idle during the {seen.listen:g}s window and "
                "worker_send_task_events is not set: task events are probably off "
                "(-E on the command line does not show)",
                _EVENTS_FIX,
                subject=host,
            )


def check_task_sent(seen: Observation) -> Iterator[Finding]:
    events = seen.events
    if not seen.listening:
        return
    if events.sent:
        yield Finding("task-sent-events", OK, f"{events.sent} task-sent events in {seen.listen:g}s")
    elif events.received:
        yield Finding(
            "task-sent-events",
            WARN,
            f"{events.received} tasks received in {seen.listen:g}s and no task-sent "
            "event: publishers do not send them, so queue attribution and queue "
            "wait are missing",
            "set task_send_sent_event=True in the Celery config of every publisher",
        )
    else:
        yield Finding(
            "task-sent-events",
            WARN,
            f"no task was received during the {seen.listen:g}s window: cannot tell "
            "whether publishers send task-sent events",
            "run the doctor while tasks are published (a longer --listen)",
        )


def check_queues(seen: Observation) -> Iterator[Finding]:
    if seen.queues_error is not None:
        yield Finding(
            "queue-consumers",
            FAIL,
            f"polling the queues failed: {seen.queues_error}",
            "check the broker (and --rabbitmq-management-url and its credentials)",
        )
        return
    if not seen.remote_control:
        depths = [f"{name} ({queue.ready or 0})" for name, queue in sorted(seen.queues.items())]
        yield Finding(
            "queue-consumers",
            OK,
            f"queues checked: {len(seen.queues)}, messages waiting: "
            f"{', '.join(depths) or 'none'}; SQS tells no consumers: CeleryQueueNotDraining "
            "watches these queues from the agents' receives",
        )
        return
    consumed = seen.consumed
    orphans = []
    for name, queue in sorted(seen.queues.items()):
        waiting = queue.ready or 0
        if waiting and not consumed.get(name) and not queue.consumers:
            orphans.append(name)
            yield Finding(
                "queue-consumers",
                FAIL,
                f"queue {name}: {waiting} messages waiting and no consumer",
                f"start a worker with -Q {name}, or fix the routing (task_routes, "
                "task_default_queue, the queue name's spelling) that sends tasks "
                "there",
                subject=name,
            )
    if orphans:
        return
    shown = [f"{name} ({', '.join(hosts)})" for name, hosts in sorted(consumed.items())]
    note = ""
    if seen.config.transport == "amqp" and not seen.config.rabbitmq_management_url:
        note = "; queues nobody consumes are found only with --rabbitmq-management-url or --queue"
    yield Finding(
        "queue-consumers",
        OK,
        f"queues checked: {len(seen.queues)}; consumed: {', '.join(shown) or 'none'}{note}",
    )


def _visibility_timeout(seen: Observation, worker: WorkerView) -> float:
    options = worker.conf.get("broker_transport_options")
    for source in (
        options if isinstance(options, dict) else {},
        seen.config.broker_transport_options,
    ):
        value = _seconds(source.get("visibility_timeout"))
        if value:
            return value
    return REDIS_VISIBILITY_DEFAULT


def check_visibility(seen: Observation) -> Iterator[Finding]:
    if seen.config.transport != "redis":
        return
    for host, worker in sorted(seen.workers.items()):
        timeout = _visibility_timeout(seen, worker)
        late = worker.acks_late_tasks()
        longest = worker.longest(late)
        if not late:
            yield Finding(
                "visibility-timeout",
                OK,
                f"{host}: no acks_late task (visibility_timeout {timeout:g}s)",
                subject=host,
            )
        elif longest is None:
            yield Finding(
                "visibility-timeout",
                WARN,
                f"{host}: {len(late)} acks_late tasks ({names_of(late)}) without a "
                f"time limit: one running past visibility_timeout {timeout:g}s is "
                "delivered again while it still runs",
                f"set task_time_limit below {timeout:g}s, or raise "
                "broker_transport_options visibility_timeout above the longest task",
                subject=host,
            )
        elif longest[0] >= timeout:
            yield Finding(
                "visibility-timeout",
                FAIL,
                f"{host}: task {longest[1]} is acks_late with a {longest[0]:g}s time "
                f"limit, longer than visibility_timeout {timeout:g}s: a run past "
                f"{timeout:g}s is delivered again to another worker while it still "
                "runs",
                f"raise broker_transport_options visibility_timeout above "
                f"{longest[0]:g}s on workers and publishers (or lower the time limit)",
                subject=host,
            )
        else:
            yield Finding(
                "visibility-timeout",
                OK,
                f"{host}: longest acks_late time limit {longest[0]:g}s ({longest[1]}) "
                f"< visibility_timeout {timeout:g}s",
                subject=host,
            )


def check_worker_lost(seen: Observation) -> Iterator[Finding]:
    for host, worker in sorted(seen.workers.items()):
        late = worker.acks_late_tasks()
        requeued = [
            task for task in late if worker.tasks[task].get("reject_on_worker_lost") == "True"
        ]
        if requeued:
            yield Finding(
                "worker-lost-requeue",
                WARN,
                f"{host}: {names_of(requeued)} are acks_late with "
                "reject_on_worker_lost: a task that gets its process killed (OOM) is "
                "requeued and kills the next process too, forever",
                "keep task_reject_on_worker_lost=True only for idempotent tasks that "
                "cannot exhaust memory; bound them with worker_max_memory_per_child",
                subject=host,
            )
        elif late and "task_reject_on_worker_lost" not in worker.conf:
            yield Finding(
                "acks-late-worker-lost",
                WARN,
                f"{host}: {len(late)} acks_late tasks and task_reject_on_worker_lost "
                "not set: a task whose process dies (OOM kill, SIGKILL) is "
                "acknowledged and fails with WorkerLostError instead of running again",
                "set task_reject_on_worker_lost explicitly: False to accept losing "
                "such runs, True to re-run them (idempotent tasks only)",
                subject=host,
            )
        else:
            yield Finding(
                "acks-late-worker-lost",
                OK,
                f"{host}: "
                + ("task_reject_on_worker_lost set explicitly" if late else "no acks_late task"),
                subject=host,
            )


def check_recycling(seen: Observation) -> Iterator[Finding]:
    for host, worker in sorted(seen.workers.items()):
        if worker.pool_name != "prefork":
            yield Finding(
                "recycling",
                OK,
                f"{host}: pool {worker.pool_name} has no child processes to recycle",
                subject=host,
            )
            continue
        per_child = worker.pool.get("max-tasks-per-child")
        memory = worker.conf.get("worker_max_memory_per_child")
        if isinstance(per_child, int) or memory:
            said = [f"worker_max_tasks_per_child={per_child}"] if isinstance(per_child, int) else []
            said += [f"worker_max_memory_per_child={memory}"] if memory else []
            yield Finding("recycling", OK, f"{host}: {', '.join(said)}", subject=host)
        else:
            yield Finding(
                "recycling",
                WARN,
                f"{host}: pool processes are never recycled: a leak grows for days "
                "until the OOM killer ends a process mid-task",
                "set worker_max_tasks_per_child (e.g. 1000) or "
                "worker_max_memory_per_child (KiB, e.g. 512000)",
                subject=host,
            )


def check_prefetch(seen: Observation) -> Iterator[Finding]:
    for host, worker in sorted(seen.workers.items()):
        multiplier = worker.prefetch_multiplier
        longest = worker.longest(worker.tasks)
        if multiplier > 1 and longest is not None and longest[0] >= LONG_TASK:
            yield Finding(
                "prefetch",
                WARN,
                f"{host}: prefetch multiplier {multiplier} with tasks allowed "
                f"{longest[0]:g}s ({longest[1]}): each process holds "
                f"{multiplier - 1} more tasks behind a long one while other workers "
                "may idle",
                "set worker_prefetch_multiplier=1 (with task_acks_late=True) for "
                "workers that run long tasks",
                subject=host,
            )
        else:
            limit = f", longest time limit {longest[0]:g}s" if longest else ""
            yield Finding(
                "prefetch", OK, f"{host}: prefetch multiplier {multiplier}{limit}", subject=host
            )


def check_max_retries(seen: Observation) -> Iterator[Finding]:
    forever = sorted(
        {
            task
            for worker in seen.workers.values()
            for task, fields in worker.tasks.items()
            if "max_retries" not in fields
        }
    )
    if forever:
        yield Finding(
            "max-retries",
            WARN,
            f"{names_of(forever)} retry forever (max_retries=None): a permanent error "
            "becomes an endless retry loop",
            "set max_retries on these tasks",
        )
    elif seen.workers:
        yield Finding("max-retries", OK, "every registered task has a max_retries bound")


def _total(series: Mapping[str, float], name: str) -> float:
    return sum(value for key, value in series.items() if key.startswith(name + "{"))


def check_exporter(seen: Observation) -> Iterator[Finding]:
    view = seen.exporter
    if view is None:
        return
    if view.error is not None:
        yield Finding(
            "exporter",
            FAIL,
            view.error,
            "check --exporter-url: the address of `celery-vitals serve` (port 9808 unless its "
            "--listen-address says otherwise) or of a worker's agent (9809), as reachable from "
            "here, e.g. http://exporter:9808; and that it runs",
        )
        return
    yield Finding("exporter", OK, f"{view.url} /metrics answered")
    after = view.after or view.before
    stream = [
        value for key, value in after.items() if key.startswith("celery_vitals_event_stream_up{")
    ]
    if not stream:
        yield Finding(
            "exporter-stream",
            OK,
            "no event stream (--no-event-stream: the agents own task and worker metrics)",
        )
        return
    if stream[0] != 1:
        yield Finding(
            "exporter-stream",
            FAIL,
            "the exporter's event stream is down (celery_vitals_event_stream_up 0)",
            "see the exporter's log: broker "
            "URL, credentials, or permissions on the celeryev exchange",
        )
    events = _total(after, "celery_vitals_events_total") - _total(
        view.before, "celery_vitals_events_total"
    )
    if seen.workers and events <= 0:
        yield Finding(
            "exporter-events",
            FAIL,
            f"the exporter received no event in "
            f"{seen.listen:g}s although {len(seen.workers)} workers answered",
            "check that the exporter and workers use the same broker and vhost/db",
        )
    elif stream[0] == 1:
        yield Finding("exporter-events", OK, f"{events:g} events in {seen.listen:g}s")
    yield from _exporter_losses(after)


def _exporter_losses(after: Mapping[str, float]) -> Iterator[Finding]:
    evicted = _total(after, "celery_vitals_tracker_evictions_total")
    if evicted:
        yield Finding(
            "exporter-evictions",
            WARN,
            f"{evicted:g} unfinished tasks evicted from the exporter's uuid map",
            "raise --max-tracked-tasks or --max-task-age",
        )
    folded = {
        key: value
        for key, value in after.items()
        if key.startswith("celery_vitals_label_values_folded_total{") and value
    }
    if folded:
        counts = (f"{key[key.index('{') :]} {value:g}" for key, value in folded.items())
        yield Finding(
            "exporter-labels",
            WARN,
            f"label values folded into other: {names_of(counts)}",
            "raise the matching --max-task-names / --max-queue-names / "
            "--max-exception-names / --max-workers / --max-label-length",
        )
    if not evicted and not folded:
        yield Finding("exporter-limits", OK, "no evictions, no folded label values")


def check_prometheus(seen: Observation) -> Iterator[Finding]:
    """With --prometheus-url: the Prometheus side (doctor_prometheus.py)."""
    if seen.prometheus is not None:
        from celery_vitals.doctor_prometheus import diagnose as prometheus_findings

        yield from prometheus_findings(seen.prometheus)


CHECKS: tuple[Check, ...] = (
    check_broker,
    check_persistence,
    check_workers,
    check_task_events,
    check_task_sent,
    check_queues,
    check_visibility,
    check_worker_lost,
    check_recycling,
    check_prefetch,
    check_max_retries,
    check_exporter,
    check_prometheus,
)


def diagnose(seen: Observation) -> list[Finding]:
    """Every check's findings; a broker that could not be reached is the only one of the
    cluster's (the Prometheus side is checked all the same)."""
    if seen.broker is None:
        return [*check_broker(seen), *check_prometheus(seen)]
    return [finding for check in CHECKS for finding in check(seen)]


# -- the report ----------------------------------------------------------------------------


def exit_code(findings: Iterable[Finding]) -> int:
    return 1 if any(finding.status == FAIL for finding in findings) else 0


def text(findings: Iterable[Finding]) -> str:
    lines = []
    for finding in findings:
        line = f"{finding.status.upper():<4}  {finding.check:<21} {finding.detail.rstrip('.')}"
        if finding.fix and finding.status != OK:
            line += f". Fix: {finding.fix}."
        lines.append(line)
    return "\n".join(lines)


def _url_option(_context: click.Context, _option: click.Parameter, value: str | None) -> str | None:
    try:
        return None if value is None else http_url(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def command(broker_options: Callable[[Any], Any]) -> click.Command:
    """The ``doctor`` command; ``broker_options`` adds the options it shares with serve."""

    @click.command("doctor")
    @click.option(
        "--timeout",
        type=click.FloatRange(0.1, 60),
        default=2.0,
        show_default=True,
        help="Seconds to wait for the workers' replies.",
    )
    @click.option(
        "--listen",
        type=click.FloatRange(1, 600),
        default=10.0,
        show_default=True,
        metavar="SECONDS",
        help="How long to watch the event stream, after asking the workers.",
    )
    @click.option(
        "--exporter-url",
        metavar="URL",
        callback=_url_option,
        help="Also check a running `celery-vitals serve` (or a worker's agent), e.g. "
        "http://host:9808 (http:// when no scheme is given).",
    )
    @click.option(
        "--prometheus-url",
        metavar="URL",
        callback=_url_option,
        help="Also check the Prometheus side through its HTTP API, e.g. "
        "http://prometheus:9090: celery-vitals' rules loaded and evaluating, the targets "
        "they select up, every agent joined with an exporter of its broker, no task "
        "counted twice, celery-vitals alerts firing.",
    )
    @click.option(
        "--selector",
        metavar="MATCHERS",
        help="With --prometheus-url: the label matchers of the rules, e.g. "
        "'job=~\"celery.*\"'. Default: read from the loaded rules.",
    )
    @click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print a JSON list, one object per finding (check, status, detail, fix, subject).",
    )
    @broker_options
    def doctor(
        *,
        timeout: float,
        listen: float,
        exporter_url: str | None,
        prometheus_url: str | None,
        selector: str | None,
        as_json: bool,
        **options: Any,
    ) -> None:
        """Check a live cluster: broker, workers, events, queues and production gotchas
        (and, with --prometheus-url, the Prometheus side)."""
        if selector is not None and prometheus_url is None:
            raise click.UsageError("--selector needs --prometheus-url")
        config = build({k: v for k, v in options.items() if v is not None})
        logs.setup(config.log_level, "text", secrets=config.secrets)
        seen = look(config, timeout=timeout, listen=listen, exporter_url=exporter_url)
        if prometheus_url is not None:
            from celery_vitals.doctor_prometheus import look as look_at_prometheus

            seen.prometheus = look_at_prometheus(prometheus_url, selector)
        findings = diagnose(seen)
        output = (
            json.dumps([f.as_json() for f in findings], indent=2) if as_json else text(findings)
        )
        secrets = url_passwords(exporter_url or "") + url_passwords(prometheus_url or "")
        for secret in [*config.secrets, *secrets]:
            output = output.replace(secret, "**")
        click.echo(output)
        raise SystemExit(exit_code(findings))

    return doctor
