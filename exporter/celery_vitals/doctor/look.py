"""``celery-vitals doctor``: checks a live cluster for the mistakes that blind an exporter
and the configuration traps that bite in production.

It only looks. The broker is read with the exporter's probes (passive declares
on RabbitMQ, reads on Redis); the workers are asked with read-only remote
control broadcasts (ping, stats, conf, active_queues, registered); the event
stream is consumed for ``--listen`` seconds through an exclusive, auto-deleted
queue of its own. It never sends enable_events and never declares a queue that
could create a task queue.

Flow: ``look`` (this module) gathers an ``Observation`` (plain data), each check
(checks.py) turns it into ``Finding``s (ok / warn / fail, what was seen, the fix),
report.py prints them; prometheus.py does the same for the Prometheus side.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from celery_vitals import installation
from celery_vitals.brokers.probe import Deadline, ProbeResult, QueueStats, is_plumbing, matches_any
from celery_vitals.config import Config
from celery_vitals.config import http_url as config_http_url
from celery_vitals.control import celery_app
from celery_vitals.credentials import basic_auth, mask, safe_url, url_credentials

if TYPE_CHECKING:
    from celery_vitals.doctor.prometheus import PrometheusView

#: Task attributes asked of every worker with ``registered``.
TASK_FIELDS = ("acks_late", "reject_on_worker_lost", "time_limit", "soft_time_limit", "max_retries")
#: Wait after the last stats broadcast, so that the events of a task it counted arrive.
GRACE = 0.5


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
            value = seconds(fields.get(key))
            if value:
                return value
        timeouts = self.pool.get("timeouts")
        if isinstance(timeouts, list | tuple) and len(timeouts) == 2:
            soft, hard = (seconds(value) for value in timeouts)
            return hard or soft or None
        return None

    def longest(self, tasks: Iterable[str]) -> tuple[float, str] | None:
        limits = [(limit, task) for task in tasks if (limit := self.time_limit(task)) is not None]
        return max(limits) if limits else None


def seconds(value: object) -> float | None:
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
        return self.config.broker.supports_remote_control

    @property
    def consumed(self) -> dict[str, list[str]]:
        """Queue -> the workers consuming it."""
        consumers: dict[str, list[str]] = {}
        for host, worker in sorted(self.workers.items()):
            for queue in worker.queues:
                consumers.setdefault(queue, []).append(host)
        return consumers


# -- looking -------------------------------------------------------------------------------


def error_text(error: BaseException, config: Config) -> str:
    """One line, no password: what went wrong (a missing package: which, and the fix)."""
    return mask(installation.explain(error).splitlines()[0], config.secrets)


def look(config: Config, *, timeout: float, listen: float, exporter_url: str | None) -> Observation:
    """Everything the checks need; a broker that cannot be reached ends it early."""
    seen = Observation(config, listen)
    probe = config.broker.probe(config)
    try:
        if _look_at_broker(probe, seen):
            if seen.remote_control:
                app = celery_app(config)
                try:
                    _watch(app, seen, timeout, exporter_url)
                finally:
                    app.close()
            elif exporter_url:  # SQS: no events to listen to, no worker to ask
                seen.exporter = scrape(exporter_url)
            try:
                _look_at_queues(probe, seen)
            except Exception as error:  # the broker went away meanwhile
                seen.queues_error = error_text(error, config)
    finally:
        probe.close()
    return seen


def _look_at_broker(probe: Any, seen: Observation) -> bool:
    """Reachable, version, persistence: one poll (the default or --queue queues)."""
    started = time.perf_counter()
    try:
        seen.broker = probe.poll(seen.config.queues or [seen.config.default_queue])
    except Exception as error:
        seen.broker_error = error_text(error, seen.config)
        seen.broker_problem = installation.problem(error)
        return False
    seen.broker_seconds = time.perf_counter() - started
    return True


def _watch(app: Any, seen: Observation, timeout: float, exporter_url: str | None) -> None:
    """The workers asked while the event stream is consumed, then the listen window, then
    their totals again (what they finished in it); the exporter scraped before and after."""
    seen.exporter = scrape(exporter_url) if exporter_url else None
    with _listening(app, seen.config, seen.events, timeout) as connected:
        seen.listening = connected
        _ask_workers(app, seen, timeout)
        time.sleep(seen.listen)
        _count_processed(app, seen, timeout)
        time.sleep(GRACE)
    if exporter_url and seen.exporter is not None and seen.exporter.error is None:
        seen.exporter.after = scrape(exporter_url).before


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
        seen.workers_error = error_text(error, seen.config)
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
        seen.workers_error = error_text(error, seen.config)
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
        seen.workers_error = seen.workers_error or error_text(error, seen.config)
    names = {name for name in names if not is_plumbing(name)}
    result = probe.poll(sorted(names))
    seen.dead_letter = result.dead_letter_targets
    seen.queues = {queue.name: queue for queue in result.queues if not _is_dlq(queue.name, seen)}
    management = getattr(probe, "management", None)
    if management is not None:
        try:
            listing = management.queues(
                Deadline(seen.config.probe_timeout), columns=("name", "durable")
            )
        except Exception as error:  # the probe fell back to passive declares: go on
            seen.durable_error = error_text(error, seen.config)
            return
        seen.durable = {
            queue["name"]: bool(queue.get("durable"))
            for queue in listing
            if isinstance(queue.get("name"), str)
        }


def _is_dlq(name: str, seen: Observation) -> bool:
    return name in seen.dead_letter or matches_any(name, seen.config.dlqs)


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
    credentials = url_credentials(base)
    if credentials is not None:
        request.add_header("Authorization", basic_auth(*credentials))
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


def scrape(url: str) -> ExporterView:
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
