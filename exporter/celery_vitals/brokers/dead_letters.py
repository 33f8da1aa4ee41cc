"""Dead letters, whatever the broker: what a dead-lettered message is (``Entry``,
``classify``), what a queue of them holds (``Summary``), the store each broker
implements (``DeadLetterStore``: brokers/<name>/dead_letters.py) and the exporter's
sampler (celery_dlq_messages).

Messages that are not Celery tasks (no ``task``/``id`` headers, broken JSON,
a content type other than JSON, pickle — never unpickled) are listed as such
and replayed only when named with ``--id``. Compressed bodies are inflated by
decode.py, as the event stream's are (gzip, zlib, bzip2, lzma).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fnmatch
import json
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Protocol

from celery_vitals import decode, installation
from celery_vitals.credentials import mask

if TYPE_CHECKING:
    from celery_vitals.config import Config

#: Default number of messages read per DLQ by ``list`` (and the exporter's gauge).
SAMPLE_SIZE = 10_000
#: A body the Redis store cut down on the server (only its headers read): its size.
OMITTED = "celery-vitals-body-omitted"
#: Consecutive messages per evenly spaced window of a sample.
WINDOW = 100
#: Longest args/kwargs text shown.
SHORT = 80
#: Largest decompressed body decoded for display.
MAX_BODY = 1 << 20
#: Headers a final-failure handler may set (documented in docs/dlq.md) where the broker
#: has no x-death: the queue the task came from, when and why it was dead-lettered.
ORIGIN_HEADER = "x-origin-queue"
TIME_HEADER = "x-dead-lettered-at"
REASON_HEADER = "x-dead-letter-reason"

TASK = "task"
KINDS = (TASK, "pickle", "unknown-content-type", "broken-json", "broken-envelope", "not-celery")


class DeadLetterError(Exception):
    """A one-line error: the broker cannot be reached, or refuses the operation."""


class UnknownQueue(DeadLetterError):
    """No such queue on the broker."""


# -- messages -------------------------------------------------------------------------


def as_text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _timestamp(value: Any) -> float | None:
    """Unix seconds from an AMQP timestamp, a number or an ISO 8601 string."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return float(value.timestamp())
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) if value > 0 else None
    text = as_text(value)
    if text:
        try:
            return float(text)
        except ValueError:
            pass
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            return None
        return _timestamp(parsed)
    return None


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=repr)
    return text if len(text) <= SHORT else text[: SHORT - 1] + "…"


def _deaths(headers: Mapping[str, Any]) -> list[dict[str, Any]]:
    """RabbitMQ's x-death entries (most recent first), as JSON-safe dicts."""
    found = headers.get("x-death")
    deaths = []
    for item in found if isinstance(found, list) else []:
        if not isinstance(item, dict):
            continue
        count = item.get("count")
        keys = item.get("routing-keys")
        deaths.append(
            {
                "queue": as_text(item.get("queue")),
                "reason": as_text(item.get("reason")),
                "count": count if isinstance(count, int) else None,
                "time": _timestamp(item.get("time")),
                "exchange": as_text(item.get("exchange")),
                "routing_keys": [as_text(k) for k in keys] if isinstance(keys, list) else [],
            }
        )
    return deaths


@dataclass
class Entry:
    """One dead-lettered message, as much as can be told without trusting it."""

    kind: str
    id: str | None = None
    task: str | None = None
    origin: str | None = None
    reason: str | None = None
    dead_at: float | None = None
    retries: int | None = None
    args: str = ""
    kwargs: str = ""
    deaths: list[dict[str, Any]] = field(default_factory=list)
    raw: Any = field(default=None, repr=False)  # Redis: bytes; AMQP: the message
    priority: int = 0

    def age(self, now: float) -> float | None:
        return None if self.dead_at is None else max(now - self.dead_at, 0.0)

    def as_json(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "task": self.task,
            "kind": self.kind,
            "origin": self.origin,
            "reason": self.reason,
            "retries": self.retries,
            "args": self.args,
            "kwargs": self.kwargs,
            "dead_lettered_at": self.dead_at,
            "age_seconds": _round(self.age(now)),
            "x_death": self.deaths,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def classify(
    headers: Mapping[str, Any],
    content_type: str | None,
    content_encoding: str | None,
    body: bytes | str | None,
    timestamp: Any = None,
) -> Entry:
    """What a message is: its Celery task (protocol 1 or 2) or why it is not one."""
    deaths = _deaths(headers)
    entry = Entry(
        kind="not-celery",
        id=as_text(headers.get("id")),
        task=as_text(headers.get("task")),
        deaths=deaths,
    )
    retries = headers.get("retries")
    entry.retries = retries if isinstance(retries, int) and not isinstance(retries, bool) else None
    if deaths:
        entry.origin, entry.reason, entry.dead_at = (
            deaths[0]["queue"],
            deaths[0]["reason"],
            deaths[0]["time"],
        )
    entry.origin = entry.origin or as_text(headers.get(ORIGIN_HEADER))
    entry.reason = entry.reason or as_text(headers.get(REASON_HEADER))
    if entry.dead_at is None:
        entry.dead_at = _timestamp(headers.get(TIME_HEADER)) or _timestamp(timestamp)
    kind = (content_type or "").lower()
    if "pickle" in kind or "python-serialize" in kind:
        entry.kind = "pickle"  # never unpickled: that would run the publisher's code
        return entry
    if kind not in ("application/json", "json"):
        entry.kind = "unknown-content-type"
        return entry
    raw = body.encode() if isinstance(body, str) else (body or b"")
    compression = as_text(headers.get("compression"))
    if compression is not None:
        try:
            raw = decode.inflate(compression, raw, MAX_BODY)
        except decode.Skip as skip:
            if skip.reason != "unsupported_compression":  # not ours to inflate: read as is
                entry.kind = "broken-json"
                return entry
    try:
        decoded = json.loads(raw)
    except ValueError:
        entry.kind = "broken-json"
        return entry
    if (
        isinstance(decoded, list)
        and len(decoded) == 3
        and entry.task
        and entry.id
        and isinstance(decoded[0], list)
        and isinstance(decoded[1], dict)
    ):
        entry.kind = TASK  # protocol 2: [args, kwargs, embed]
        entry.args = _short(as_text(headers.get("argsrepr")) or decoded[0])
        entry.kwargs = _short(as_text(headers.get("kwargsrepr")) or decoded[1])
    elif (
        isinstance(decoded, dict)
        and isinstance(decoded.get("task"), str)
        and isinstance(decoded.get("id"), str)
    ):
        entry.kind = TASK  # protocol 1: everything in the body
        entry.task, entry.id = decoded["task"], decoded["id"]
        entry.args, entry.kwargs = (
            _short(decoded.get("args", [])),
            _short(decoded.get("kwargs", {})),
        )
        if isinstance(decoded.get("retries"), int):
            entry.retries = decoded["retries"]
    return entry


def parse_envelope(raw: bytes) -> Entry:
    """kombu's JSON envelope of a virtual transport's message (a Redis list entry, an SQS
    body): body, content-type, headers and properties."""
    try:
        envelope = json.loads(raw)
    except ValueError:
        envelope = None
    omitted = envelope.get(OMITTED) if isinstance(envelope, dict) else None
    if not (isinstance(envelope, dict) and ("body" in envelope or omitted is not None)):
        return Entry(kind="broken-envelope", raw=raw)
    headers = envelope.get("headers")
    properties = envelope.get("properties")
    headers = headers if isinstance(headers, dict) else {}
    properties = properties if isinstance(properties, dict) else {}
    if (
        omitted is not None
    ):  # cut down by the Redis store's Lua: what the headers tell, body not read
        if "headers" not in envelope:  # not even JSON
            return Entry(kind="broken-envelope", raw=raw)
        entry = classify(headers, as_text(envelope.get("content-type")), None, b"[[], {}, {}]")
        if entry.kind == TASK:
            entry.args = entry.kwargs = f"({omitted} bytes, not read)"
        entry.raw = raw
        return entry
    body = envelope.get("body")
    if properties.get("body_encoding") == "base64" and isinstance(body, str):
        try:
            body = base64.b64decode(body, validate=True)
        except ValueError:
            body = None
    entry = classify(
        headers,
        as_text(envelope.get("content-type")),
        as_text(envelope.get("content-encoding")),
        body if isinstance(body, bytes | str) else None,
    )
    if body is None and entry.kind == TASK:
        entry.kind = "broken-json"
    entry.raw = raw
    priority = properties.get("priority")
    entry.priority = priority if isinstance(priority, int) else 0
    return entry


# -- summaries ------------------------------------------------------------------------


@dataclass
class Summary:
    queue: str
    depth: int
    sampled: bool = False
    sample_size: int = 0
    inflight: int | None = None  # Redis: messages in the recovery list
    tasks: Counter[str] = field(default_factory=Counter)
    origins: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    not_tasks: Counter[str] = field(default_factory=Counter)
    oldest: float | None = None
    newest: float | None = None

    def add(self, entry: Entry) -> None:
        self.sample_size += 1
        if entry.kind == TASK:
            self.tasks[entry.task or ""] += 1
        else:
            self.not_tasks[entry.kind] += 1
        self.origins[entry.origin or "unknown"] += 1
        self.reasons[entry.reason or "unknown"] += 1
        if entry.dead_at is not None:
            self.oldest = entry.dead_at if self.oldest is None else min(self.oldest, entry.dead_at)
            self.newest = entry.dead_at if self.newest is None else max(self.newest, entry.dead_at)

    def as_json(self, now: float) -> dict[str, Any]:
        def age(at: float | None) -> float | None:
            return None if at is None else round(max(now - at, 0.0), 3)

        return {
            "queue": self.queue,
            "depth": self.depth,
            "sampled": self.sampled,
            "sample_size": self.sample_size,
            "inflight": self.inflight,
            "tasks": dict(self.tasks.most_common()),
            "not_tasks": dict(self.not_tasks.most_common()),
            "origins": dict(self.origins.most_common()),
            "reasons": dict(self.reasons.most_common()),
            "oldest_dead_lettered_at": self.oldest,
            "newest_dead_lettered_at": self.newest,
            "oldest_age_seconds": age(self.oldest),
            "newest_age_seconds": age(self.newest),
        }

    def estimate(self) -> dict[str, int]:
        """Messages per task name in the whole DLQ (scaled up when sampled)."""
        if not self.sampled or not self.sample_size:
            return dict(self.tasks)
        scale = self.depth / self.sample_size
        return {name: round(count * scale) for name, count in self.tasks.items()}


@dataclass(frozen=True)
class Selection:
    task: str | None = None
    ids: frozenset[str] = frozenset()
    older_than: float | None = None

    def matches(self, entry: Entry, now: float) -> bool:
        if self.ids:
            return entry.id in self.ids
        if entry.kind != TASK:
            return False  # foreign or undecodable: only by id
        if self.task is not None and not fnmatch.fnmatchcase(entry.task or "", self.task):
            return False
        if self.older_than is not None:
            age = entry.age(now)
            return age is not None and age >= self.older_than
        return True


@dataclass
class Outcome:
    """What a replay or purge did (or would do, with --dry-run)."""

    queue: str
    action: str
    dry_run: bool = False
    done: int = 0
    targets: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    exported: int = 0
    recovered: int = 0

    @property
    def verb(self) -> str:
        return {"replay": "replayed", "purge": "purged"}[self.action]

    def as_json(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "action": self.action,
            "dry_run": self.dry_run,
            self.verb: self.done,
            "targets": dict(self.targets),
            "skipped": dict(self.skipped),
            "exported": self.exported,
            "recovered": self.recovered,
        }


class Progress:
    """Progress on stderr: one rewritten line on a terminal, plain lines once a second
    otherwise."""

    def __init__(
        self,
        outcome: Outcome,
        total: int | None,
        stream: IO[str] | None = None,
        *,
        quiet: bool = False,
    ) -> None:
        self.outcome, self.total = outcome, total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.quiet = quiet
        self._last = 0.0

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.quiet or (not force and now - self._last < 1.0):
            return
        self._last = now
        o = self.outcome
        verb = "would " + o.action if o.dry_run else o.verb
        of = f"/{self.total}" if self.total is not None else ""
        line = f"{o.queue}: {verb} {o.done}{of}, skipped {sum(o.skipped.values())}"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if force else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


class RateLimit:
    """At most ``rate`` operations a second (None: unbounded), without drifting."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._next = time.monotonic()

    def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        if self._next > now:
            time.sleep(self._next - now)
        self._next = max(self._next, now) + self.interval


# -- the store -------------------------------------------------------------------------


class DeadLetterStore(Protocol):
    """The dead-letter queues of one broker: read without consuming, moved without loss."""

    def dead_letter_queues(self, patterns: Iterable[str]) -> list[str]: ...
    def exists(self, queue: str) -> bool: ...
    def depth(self, queue: str) -> int: ...
    def summary(self, queue: str, sample: int) -> Summary: ...
    def entries(self, queue: str, limit: int) -> Iterator[Entry]: ...
    def replay(
        self,
        queue: str,
        selection: Selection,
        *,
        limit: int | None,
        to: str | None,
        rate: RateLimit,
        dry_run: bool,
        window: int,
        progress: Progress,
    ) -> None: ...
    def purge(
        self,
        queue: str,
        selection: Selection,
        *,
        limit: int | None,
        export: IO[str] | None,
        window: int,
        progress: Progress,
    ) -> None: ...
    def close(self) -> None: ...


def sample_ranges(length: int, sample: int) -> list[tuple[int, int]]:
    """[start, stop) offsets from the oldest message: all of them, or the oldest half of
    the sample and evenly spaced windows of WINDOW over the rest."""
    if length <= sample:
        return [(0, length)] if length else []
    head = sample // 2
    ranges = [(0, head)] if head else []
    windows = max((sample - head) // WINDOW, 1)
    size = min(WINDOW, sample - head)
    span = length - head
    step = span / windows
    for k in range(windows):
        start = head + int(k * step)
        ranges.append((start, min(start + size, length)))
    return ranges


def export_line(entry: Entry, now: float, queue: str) -> dict[str, Any]:
    """A purged message as one JSON line: the summary and the message as it was stored."""
    line = entry.as_json(now)
    line["queue"] = queue
    raw = entry.raw
    if isinstance(raw, bytes):  # Redis: kombu's envelope, restorable with LPUSH
        try:
            line["redis_envelope"] = raw.decode()
        except UnicodeDecodeError:
            line["redis_envelope_base64"] = base64.b64encode(raw).decode()
    else:  # AMQP
        properties = {k: v for k, v in (raw.properties or {}).items() if k != "application_headers"}
        line["amqp"] = {
            "body_base64": base64.b64encode(
                raw.body if isinstance(raw.body, bytes) else str(raw.body).encode()
            ).decode(),
            "properties": json.loads(json.dumps(properties, default=str)),
            "headers": json.loads(
                json.dumps(raw.properties.get("application_headers") or {}, default=str)
            ),
        }
    return line


def open_store(config: Config) -> DeadLetterStore:
    """The configured broker's store; one-line DeadLetterError when it cannot be reached."""
    from celery_vitals.brokers import for_config

    try:
        return for_config(config).dead_letters(config)
    except Exception as error:
        problem = installation.problem(error)  # a missing package: which, and the fix
        raise DeadLetterError(
            str(problem)
            if problem is not None
            else f"cannot reach the broker at {config.safe_broker_url}: {error_line(error, config)}"
        ) from None


def error_line(error: BaseException, config: Config) -> str:
    """One line, no secret: the error's type and message."""
    text = mask(f"{type(error).__name__}: {error}", config.secrets)
    return text.splitlines()[0] if text else type(error).__name__


class DeadLetterSampler:
    """celery_dlq_messages for the exporter's poller thread: the same bounded, non-consuming
    sample as ``dlq list``, on a connection of its own (reopened after any error)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._store: DeadLetterStore | None = None

    def __call__(self, queue: str) -> dict[str, int]:
        if self._store is None:
            self._store = open_store(self.config)
        try:
            return self._store.summary(queue, self.config.dlq_sample).estimate()
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            with contextlib.suppress(Exception):
                store.close()
