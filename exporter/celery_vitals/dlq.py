"""``celery-vitals dlq``: list, show, replay and purge dead-lettered Celery messages.

Reading never consumes:

- Redis: ``LRANGE`` in pages of ``PAGE`` entries, oldest first (kombu LPUSHes
  and workers BRPOP, so the oldest message is at the tail of the list), over
  every priority list of the queue. A queue longer than the sample size is
  *sampled*: the oldest half of the sample, then windows of ``WINDOW``
  consecutive messages evenly spaced over the rest of the list.
- RabbitMQ: a consumer with a prefetch window of the sample size and no acks;
  closing the channel returns every message to the queue at its position (a
  classic queue keeps the order; the messages' ``redelivered`` flag becomes
  true, and a quorum queue counts a delivery). AMQP reads from the head only,
  so a sample is the oldest messages.

Moving never loses a message:

- Redis replay: one Lua script per batch removes each message from the DLQ
  (``LREM``, so a message another replay took already is skipped) and pushes
  it to its target list, atomically: there is no moment when a message is in
  neither or both places, whatever kills the client. Purge with ``--export``
  has to write a file between taking and deleting, so it goes through the
  recovery list ``<dlq>.celery-vitals.inflight``: the message moves there
  atomically, is written and fsynced, then deleted. Every ``dlq`` command puts
  what it finds in that list back into the DLQ first.
- RabbitMQ: publisher confirms on the target before the ack on the DLQ; a
  client killed in between leaves the message in both (at least once).

SQS (dlq_sqs.py): list and show receive with a visibility timeout and make
the messages visible again; replay and purge are refused (SQS's own redrive).

Messages that are not Celery tasks (no ``task``/``id`` headers, broken JSON,
a content type other than JSON, pickle — never unpickled) are listed as such
and replayed only when named with ``--id``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fnmatch
import json
import logging
import os
import re
import sys
import time
import uuid
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import click

from celery_vitals import installation, logs
from celery_vitals.config import Config, build
from celery_vitals.probes import is_plumbing

log = logging.getLogger("celery_vitals.dlq")

#: Default number of messages read per DLQ by ``list`` (and the exporter's gauge).
SAMPLE_SIZE = 10_000
#: Entries per LRANGE.
PAGE = 500
#: Entries per LRANGE when moving (whole messages, however large, are read).
MOVE_PAGE = 100
#: Larger Redis entries are cut down by the server before they are sent when only read
#: (list, show, the exporter): headers that matter kept, body left out.
MAX_ENTRY = 64 * 1024
OMITTED = "celery-vitals-body-omitted"
#: Consecutive messages per evenly spaced window of a sample.
WINDOW = 100
#: Longest args/kwargs text shown.
SHORT = 80
#: Largest decompressed body decoded for display.
MAX_BODY = 1 << 20
#: Headers a final-failure handler may set (documented in the README) where the broker
#: has no x-death: the queue the task came from, when and why it was dead-lettered.
ORIGIN_HEADER = "x-origin-queue"
TIME_HEADER = "x-dead-lettered-at"
REASON_HEADER = "x-dead-letter-reason"
INFLIGHT_SUFFIX = ".celery-vitals.inflight"

TASK = "task"
KINDS = (TASK, "pickle", "unknown-content-type", "broken-json", "broken-envelope", "not-celery")


class DlqError(click.ClickException):
    """A one-line error; exit code 1 (broker unreachable, refused operation)."""


class UnknownQueue(click.ClickException):
    exit_code = 2


# -- messages -------------------------------------------------------------------------


def _text(value: Any) -> str | None:
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
    text = _text(value)
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
                "queue": _text(item.get("queue")),
                "reason": _text(item.get("reason")),
                "count": count if isinstance(count, int) else None,
                "time": _timestamp(item.get("time")),
                "exchange": _text(item.get("exchange")),
                "routing_keys": [_text(k) for k in keys] if isinstance(keys, list) else [],
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
        id=_text(headers.get("id")),
        task=_text(headers.get("task")),
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
    entry.origin = entry.origin or _text(headers.get(ORIGIN_HEADER))
    entry.reason = entry.reason or _text(headers.get(REASON_HEADER))
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
    if _text(headers.get("compression")) in ("application/x-gzip", "zlib", "gzip"):
        try:
            raw = zlib.decompressobj().decompress(raw, MAX_BODY)
        except zlib.error:
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
        entry.args = _short(_text(headers.get("argsrepr")) or decoded[0])
        entry.kwargs = _short(_text(headers.get("kwargsrepr")) or decoded[1])
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


def parse_redis(raw: bytes) -> Entry:
    """A kombu Redis envelope: JSON with body, content-type, headers and properties."""
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
    if omitted is not None:  # cut down by _PEEK: what the headers tell, body not read
        if "headers" not in envelope:  # not even JSON
            return Entry(kind="broken-envelope", raw=raw)
        entry = classify(headers, _text(envelope.get("content-type")), None, b"[[], {}, {}]")
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
        _text(envelope.get("content-type")),
        _text(envelope.get("content-encoding")),
        body if isinstance(body, bytes | str) else None,
    )
    if body is None and entry.kind == TASK:
        entry.kind = "broken-json"
    entry.raw = raw
    priority = properties.get("priority")
    entry.priority = priority if isinstance(priority, int) else 0
    return entry


def parse_amqp(message: Any) -> Entry:
    properties = getattr(message, "properties", {}) or {}
    headers = properties.get("application_headers") or {}
    entry = classify(
        headers if isinstance(headers, dict) else {},
        _text(properties.get("content_type")),
        _text(properties.get("content_encoding")),
        message.body,
        properties.get("timestamp"),
    )
    if entry.id is None:
        entry.id = _text(properties.get("message_id")) or _text(properties.get("correlation_id"))
    entry.raw = message
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


# -- backends -------------------------------------------------------------------------


class Backend(Protocol):
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


_MOVE = """
local moved = {}
for i = 1, #ARGV, 2 do
  local k = (i + 1) / 2
  if redis.call('LREM', KEYS[2 * k - 1], -1, ARGV[i]) == 1 then
    redis.call('LPUSH', KEYS[2 * k], ARGV[i + 1])
    moved[k] = 1
  else
    moved[k] = 0
  end
end
return moved
"""

_RESTORE = """
local restored = 0
for i = 1, #ARGV do
  if redis.call('LREM', KEYS[1], -1, ARGV[i]) == 1 then
    redis.call('RPUSH', KEYS[i + 1], ARGV[i])
    restored = restored + 1
  end
end
return restored
"""


_PEEK = """
local items = redis.call('LRANGE', KEYS[1], ARGV[1], ARGV[2])
local limit = tonumber(ARGV[3])
local function cut(value, n)
  if type(value) == 'string' and #value > n then return string.sub(value, 1, n) end
  if type(value) == 'string' or type(value) == 'number' then return value end
  return nil
end
for i, v in ipairs(items) do
  if #v > limit then
    local ok, env = pcall(cjson.decode, v)
    local small = {['celery-vitals-body-omitted'] = #v}
    if ok and type(env) == 'table' and type(env['headers']) == 'table' then
      local h = env['headers']
      local kept = {}
      for _, k in ipairs({'task', 'id', 'retries', 'x-origin-queue', 'x-dead-lettered-at',
                          'x-dead-letter-reason'}) do
        kept[k] = cut(h[k], 1000)
      end
      small['headers'] = kept
      small['content-type'] = cut(env['content-type'], 200)
      if type(env['properties']) == 'table' then
        small['properties'] = {priority = cut(env['properties']['priority'], 20)}
      end
    end
    items[i] = cjson.encode(small)
  end
end
return items
"""


class RedisBackend:
    """DLQs on a Redis broker: lists named as kombu names them (see probes/redis.py)."""

    def __init__(self, config: Config) -> None:
        import redis

        from celery_vitals.probes.redis import RedisProbe

        self.probe = RedisProbe(
            config.broker_url, config.broker_transport_options, timeout=config.probe_timeout
        )
        self.channel = self.probe._channel()
        # a plain client: every key below is prefixed here, never twice
        self.client = redis.Redis(connection_pool=self.channel.client.connection_pool)
        self.prefix: str = self.channel.global_keyprefix or ""
        self._move = self.client.register_script(_MOVE)
        self._restore = self.client.register_script(_RESTORE)
        self._peek = self.client.register_script(_PEEK)

    def close(self) -> None:
        self.probe.close()

    # -- keys ---------------------------------------------------------------------

    def keys(self, queue: str) -> list[str]:
        return [self.prefix + key for key in self.probe._queue_keys(self.channel, queue)]

    def key_for(self, queue: str, priority: int) -> str:
        return self.prefix + str(self.channel._q_for_pri(queue, priority))

    def inflight_key(self, queue: str) -> str:
        return self.prefix + queue + INFLIGHT_SUFFIX

    # -- reading ----------------------------------------------------------------

    def dead_letter_queues(self, patterns: Iterable[str]) -> list[str]:
        """The named DLQs, and the queues each glob matches: as the exporter's poller, the
        queues the broker's bindings name (the probe's discovery, Celery's plumbing left
        out), and the lists no binding names (what a final-failure handler LPUSHes); never
        another kind of key (kombu's ``_kombu.binding.*`` sets, the unacked hash, results)."""
        patterns = list(patterns)
        names = {p for p in patterns if not any(c in p for c in "*?[")}
        globs = [p for p in patterns if p not in names]
        if globs:
            known = {q for q in self.probe.discover() | self._lists(globs) if not is_plumbing(q)}
            names |= {q for q in known if any(fnmatch.fnmatchcase(q, g) for g in globs)}
        return sorted(names)

    def _lists(self, globs: list[str]) -> set[str]:
        """Queues whose name matches a glob and that have a list, of any priority (``queue``,
        ``queue + sep + step``); keys of other types are no queue."""
        sep: str = self.channel.sep
        steps = {str(step) for step in self.channel.priority_steps}
        found: dict[str, str] = {}  # key -> its queue
        for glob in globs:
            for key in self.client.scan_iter(match=self.prefix + glob + "*", count=1000):
                name = key.decode(errors="replace")[len(self.prefix) :]
                queue, _, step = name.rpartition(sep) if sep in name else (name, "", "")
                if (
                    (not step or step in steps)
                    and not queue.endswith(INFLIGHT_SUFFIX)
                    and any(fnmatch.fnmatchcase(queue, g) for g in globs)
                ):
                    found[name] = queue
        keys = sorted(found)
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.type(self.prefix + key)
        kinds = pipe.execute()
        return {found[key] for key, kind in zip(keys, kinds, strict=True) if kind == b"list"}

    def exists(self, queue: str) -> bool:
        if self.depth(queue) or self.client.llen(self.inflight_key(queue)):
            return True
        return queue in self.probe.discover()

    def depth(self, queue: str) -> int:
        pipe = self.client.pipeline(transaction=False)
        for key in self.keys(queue):
            pipe.llen(key)
        return sum(int(n) for n in pipe.execute())

    def _lengths(self, queue: str) -> list[tuple[str, int]]:
        pipe = self.client.pipeline(transaction=False)
        keys = self.keys(queue)
        for key in keys:
            pipe.llen(key)
        return list(zip(keys, (int(n) for n in pipe.execute()), strict=True))

    def _read(self, key: str, start: int, stop: int, *, whole: bool = False) -> list[bytes]:
        """Entries at offsets [start, stop) from the oldest (the tail), oldest first.

        Unless ``whole``, entries over MAX_ENTRY bytes come cut down by the server
        (``_PEEK``): a page never costs more than PAGE x MAX_ENTRY bytes.
        """
        found: list[bytes] = []
        size = MOVE_PAGE if whole else PAGE
        for first in range(start, stop, size):
            last = min(first + size, stop)
            page: list[bytes] = (
                self.client.lrange(key, -last, -first - 1)
                if whole  # type: ignore[assignment]
                else self._peek(keys=[key], args=[-last, -first - 1, MAX_ENTRY])
            )
            found.extend(reversed(page))
            if len(page) < last - first:
                break
        return found

    def summary(self, queue: str, sample: int) -> Summary:
        lengths = self._lengths(queue)
        total = sum(n for _, n in lengths)
        result = Summary(
            queue,
            total,
            sampled=total > sample,
            inflight=int(self.client.llen(self.inflight_key(queue))),
        )
        for key, length in lengths:
            share = length if total <= sample else max(round(sample * length / total), 1)
            for start, stop in sample_ranges(length, share):
                for first in range(start, stop, PAGE):
                    for raw in self._read(key, first, min(first + PAGE, stop)):
                        result.add(parse_redis(raw))
        return result

    def entries(self, queue: str, limit: int) -> Iterator[Entry]:
        """Up to ``limit`` messages, oldest first, read a page at a time."""
        seen = 0
        for key in self.keys(queue):
            offset = 0
            while seen < limit:
                page = self._read(key, offset, offset + PAGE)
                if not page:
                    break
                offset += len(page)
                for raw in page[: limit - seen]:
                    seen += 1
                    yield parse_redis(raw)

    # -- moving -------------------------------------------------------------------

    def recover(self, queue: str) -> int:
        """Puts what an interrupted purge left in the recovery list back into the DLQ."""
        inflight = self.inflight_key(queue)
        restored = 0
        while True:
            page: list[bytes] = self.client.lrange(inflight, -PAGE, -1)  # type: ignore[assignment]
            if not page:
                return restored
            keys = [self.key_for(queue, parse_redis(raw).priority) for raw in page]
            restored += int(self._restore(keys=[inflight, *keys], args=page))

    def _scan(
        self,
        queue: str,
        selection: Selection,
        window: int,
        handle: Callable[[str, list[Entry], bool], tuple[int, bool]],
    ) -> None:
        """Hands the matching messages of each page, oldest first, to ``handle`` (with
        whether this is the first pass: later ones see skipped messages again), which
        answers (how many of them are no longer in the list, whether to stop).

        Offsets count only the messages left behind, so removing a message does
        not make the next page skip one. Another process removing messages
        meanwhile can still shift a later page past some, so a pass that removed
        anything is followed by another, until one removes nothing. At most
        ``window`` non-matching messages are looked past per priority list and pass.
        """
        first = True
        while True:
            removed_any = False
            now = time.time()
            for key in self.keys(queue):
                kept = passed = 0
                while passed < window:
                    page = [
                        parse_redis(raw)
                        for raw in self._read(key, kept, kept + MOVE_PAGE, whole=True)
                    ]
                    if not page:
                        break
                    matches = [entry for entry in page if selection.matches(entry, now)]
                    passed += len(page) - len(matches)
                    removed, stop = handle(key, matches, first)
                    removed_any = removed_any or removed > 0
                    kept += len(page) - removed
                    if stop:
                        return
            if not removed_any:
                return
            first = False

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
    ) -> None:
        outcome = progress.outcome
        if not dry_run:
            outcome.recovered = self.recover(queue)

        def handle(key: str, matches: list[Entry], first: bool) -> tuple[int, bool]:
            removed = 0
            for entry in matches:
                if limit is not None and outcome.done >= limit:
                    return removed, True
                target = to or entry.origin
                if not target or target == queue:
                    if first:
                        outcome.skipped[
                            "target is the DLQ" if target else "no target (use --to)"
                        ] += 1
                    continue
                if dry_run:  # nothing moves: no need to pace it
                    outcome.done += 1
                    outcome.targets[target] += 1
                    continue
                rate.wait()
                moved = self._move(
                    keys=[key, self.key_for(target, entry.priority)],
                    args=[entry.raw, _redeliverable(entry.raw, target)],
                )
                removed += 1  # moved by this call or by another process: gone either way
                if moved and moved[0]:
                    outcome.done += 1
                    outcome.targets[target] += 1
                else:
                    outcome.skipped["taken meanwhile"] += 1
                progress.tick()
            return removed, limit is not None and outcome.done >= limit

        self._scan(queue, selection, window, handle)

    def purge(
        self,
        queue: str,
        selection: Selection,
        *,
        limit: int | None,
        export: IO[str] | None,
        window: int,
        progress: Progress,
    ) -> None:
        outcome = progress.outcome
        outcome.recovered = self.recover(queue)
        inflight = self.inflight_key(queue)
        now = time.time()

        def handle(key: str, matches: list[Entry], _: bool) -> tuple[int, bool]:
            if limit is not None:
                matches = matches[: max(limit - outcome.done, 0)]
            if not matches:
                return 0, limit is not None and outcome.done >= limit
            # 1. into the recovery list, atomically; 2. exported and fsynced; 3. deleted
            moved = self._move(
                keys=[k for _ in matches for k in (key, inflight)],
                args=[a for e in matches for a in (e.raw, e.raw)],
            )
            taken = [e for e, ok in zip(matches, moved, strict=True) if ok]
            if len(taken) < len(matches):  # another process took them: gone from the list
                outcome.skipped["taken meanwhile"] += len(matches) - len(taken)
            if export is not None and taken:
                for entry in taken:
                    export.write(json.dumps(_export_line(entry, now, queue)) + "\n")
                export.flush()
                os.fsync(export.fileno())
                outcome.exported += len(taken)
            pipe = self.client.pipeline(transaction=False)
            for entry in taken:
                pipe.lrem(inflight, -1, entry.raw)
            pipe.execute()
            outcome.done += len(taken)
            progress.tick()
            return len(matches), limit is not None and outcome.done >= limit

        self._scan(queue, selection, window, handle)


def _redeliverable(raw: bytes, target: str) -> bytes:
    """The same message (body, headers, id) routed to ``target``, with a fresh delivery tag."""
    envelope = json.loads(raw)
    properties = envelope.setdefault("properties", {})
    properties["delivery_tag"] = str(uuid.uuid4())
    info = properties.setdefault("delivery_info", {})
    if isinstance(info, dict):
        info.update({"exchange": "", "routing_key": target})
    return json.dumps(envelope).encode()


def _export_line(entry: Entry, now: float, queue: str) -> dict[str, Any]:
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


class _Consumer:
    """Deliveries of one queue on their own channel, prefetch ``window``, acks manual."""

    def __init__(self, connection: Any, queue: str, window: int, timeout: float) -> None:
        self.connection, self.timeout = connection, timeout
        self.channel = connection.channel()
        self.channel.basic_qos(0, max(min(window, 65535), 1), False)
        self.arrived: deque[Any] = deque()
        self.channel.basic_consume(queue=queue, no_ack=False, callback=self.arrived.append)

    def next(self) -> Any:
        """The next delivery, or None when none came within the timeout."""
        deadline = time.monotonic() + self.timeout
        while not self.arrived:  # frames of other channels (confirms) may come first
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                self.connection.drain_events(timeout=left)
            except TimeoutError:
                return None
        return self.arrived.popleft()


class AmqpBackend:
    """DLQs on RabbitMQ, read with unacknowledged deliveries (see the module docstring)."""

    def __init__(self, config: Config) -> None:
        from kombu import Connection

        from celery_vitals.probes.amqp import AmqpProbe

        self.config = config
        self.probe = AmqpProbe(
            config.broker_url,
            config.broker_transport_options,
            timeout=config.probe_timeout,
            management_url=config.rabbitmq_management_url,
        )
        self.connection = Connection(
            config.broker_url,
            transport_options=dict(config.broker_transport_options),
            connect_timeout=config.probe_timeout,
        )
        self.connection.ensure_connection(max_retries=0)
        self.amqp = self.connection.connection  # py-amqp's Connection
        self._control: Any = None
        self._existing: dict[str, bool] = {}

    def close(self) -> None:
        self.probe.close()
        with contextlib.suppress(Exception):
            self.connection.close()

    def _declare(self, queue: str) -> int | None:
        """Ready messages, or None if there is no such queue (passive declare)."""
        if self._control is None or not self._control.is_open:
            self._control = self.amqp.channel()
        try:
            _, ready, _ = self._control.queue_declare(queue=queue, passive=True)
        except self.connection.channel_errors as error:
            self._control = None
            if getattr(error, "reply_code", None) == 404:
                return None
            raise
        return int(ready)

    def dead_letter_queues(self, patterns: Iterable[str]) -> list[str]:
        from celery_vitals.probes import Deadline
        from celery_vitals.probes.amqp import dead_letter_targets

        patterns = list(patterns)
        names = {p for p in patterns if not any(c in p for c in "*?[")}
        api = self.probe.management
        if api is not None:
            deadline = Deadline(self.config.probe_timeout * 4)
            listing = api.queues(deadline)
            names |= dead_letter_targets(listing, lambda name: api.exchange(name, deadline))
            names |= {
                q["name"]
                for q in listing
                if isinstance(q.get("name"), str)
                and any(fnmatch.fnmatchcase(q["name"], p) for p in patterns)
            }
        elif len(names) < len(patterns):
            log.warning(
                "--dlq globs need --rabbitmq-management-url to list queues; "
                "only the plain names are used"
            )
        return sorted(names)

    def exists(self, queue: str) -> bool:
        if queue not in self._existing:
            self._existing[queue] = self._declare(queue) is not None
        return self._existing[queue]

    def depth(self, queue: str) -> int:
        ready = self._declare(queue)
        if ready is None:
            raise UnknownQueue(f"no queue {queue!r} on the broker")
        return ready

    @contextlib.contextmanager
    def _consumer(self, queue: str, window: int) -> Iterator[_Consumer]:
        """A consumer without acks; the channel's close returns what was not acked."""
        consumer = _Consumer(self.amqp, queue, window, max(self.config.probe_timeout, 1.0))
        try:
            yield consumer
        finally:
            with contextlib.suppress(Exception):
                consumer.channel.close()

    def _messages(self, queue: str, count: int, window: int) -> Iterator[Any]:
        if count <= 0:
            return
        with self._consumer(queue, window) as consumer:
            for _ in range(count):
                message = consumer.next()
                if message is None:
                    return
                yield message

    def summary(self, queue: str, sample: int) -> Summary:
        depth = self.depth(queue)
        result = Summary(queue, depth, sampled=depth > sample)
        for message in self._messages(queue, min(depth, sample), sample):
            result.add(parse_amqp(message))
        return result

    def entries(self, queue: str, limit: int) -> Iterator[Entry]:
        depth = self.depth(queue)
        for message in self._messages(queue, min(depth, limit), limit):
            yield parse_amqp(message)

    def _walk(
        self, consumer: _Consumer, depth: int, queue: str, selection: Selection, window: int
    ) -> Iterator[Entry]:
        """Matching messages among the first ``depth`` (counted before the consumer started:
        its deliveries are unacked, not ready); the others stay unacked until the consumer's
        channel closes."""
        now = time.time()
        held = 0
        for _ in range(depth):
            message = consumer.next()
            if message is None:
                return
            entry = parse_amqp(message)
            if selection.matches(entry, now):
                yield entry
            else:
                held += 1
                if held >= window:
                    log.warning(
                        "%d messages of %s do not match and are held unacked: "
                        "stopping (raise --window)",
                        held,
                        queue,
                    )
                    return

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
    ) -> None:
        depth = self.depth(queue)
        publisher = self.amqp.channel()
        publisher.confirm_select()
        with self._consumer(queue, window) as consumer:
            self._replay(
                consumer,
                depth,
                publisher,
                queue,
                selection,
                limit=limit,
                to=to,
                rate=rate,
                dry_run=dry_run,
                window=window,
                progress=progress,
            )
        with contextlib.suppress(Exception):
            publisher.close()

    def _replay(
        self,
        consumer: _Consumer,
        depth: int,
        publisher: Any,
        queue: str,
        selection: Selection,
        *,
        limit: int | None,
        to: str | None,
        rate: RateLimit,
        dry_run: bool,
        window: int,
        progress: Progress,
    ) -> None:
        import amqp  # type: ignore[import-untyped]

        outcome = progress.outcome
        for entry in self._walk(consumer, depth, queue, selection, window):
            if limit is not None and outcome.done >= limit:
                break
            target = to or entry.origin
            if not target:
                outcome.skipped["no target (use --to)"] += 1
                continue
            if target == queue:
                outcome.skipped["target is the DLQ"] += 1
                continue
            if not self.exists(target):
                outcome.skipped[f"no queue {target}"] += 1
                continue
            if not dry_run:
                rate.wait()
                message = entry.raw
                properties = {
                    k: v
                    for k, v in message.properties.items()
                    if k not in ("expiration", "user_id")
                }
                publisher.basic_publish_confirm(
                    amqp.Message(message.body, **properties),
                    exchange="",
                    routing_key=target,
                    confirm_timeout=self.config.probe_timeout * 2,
                )
                consumer.channel.basic_ack(message.delivery_tag)
            outcome.done += 1
            outcome.targets[target] += 1
            progress.tick()

    def purge(
        self,
        queue: str,
        selection: Selection,
        *,
        limit: int | None,
        export: IO[str] | None,
        window: int,
        progress: Progress,
    ) -> None:
        outcome = progress.outcome
        now = time.time()
        batch: list[Entry] = []

        def flush(channel: Any) -> None:
            if export is not None and batch:
                for entry in batch:
                    export.write(json.dumps(_export_line(entry, now, queue)) + "\n")
                export.flush()
                os.fsync(export.fileno())  # on disk before the broker forgets them
                outcome.exported += len(batch)
            for entry in batch:
                channel.basic_ack(entry.raw.delivery_tag)
            outcome.done += len(batch)
            batch.clear()
            progress.tick()

        depth = self.depth(queue)
        with self._consumer(queue, window) as consumer:
            for entry in self._walk(consumer, depth, queue, selection, window):
                if limit is not None and outcome.done + len(batch) >= limit:
                    break
                batch.append(entry)
                if len(batch) >= 100:
                    flush(consumer.channel)
            flush(consumer.channel)


def connect(config: Config) -> Backend:
    """The backend of the configured broker; one-line DlqError when it cannot be reached."""
    try:
        if config.transport == "redis":
            backend: Backend = RedisBackend(config)
            backend.depth("celery-vitals.ping")  # the connection is lazy: fail here
            return backend
        if config.transport == "sqs":
            from celery_vitals import dlq_sqs  # imports this module: only when used

            return dlq_sqs.connect(config)
        return AmqpBackend(config)
    except Exception as error:
        problem = installation.problem(error)  # a missing package: which, and the fix
        raise DlqError(
            str(problem)
            if problem is not None
            else f"cannot reach the broker at {config.safe_broker_url}: {_describe(error, config)}"
        ) from None


def _describe(error: BaseException, config: Config) -> str:
    text = f"{type(error).__name__}: {error}"
    for secret in config.secrets:
        text = text.replace(secret, "**")
    return text.splitlines()[0] if text else type(error).__name__


# -- the command group ------------------------------------------------------------------


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    match = _DURATION.match(text)
    if not match:
        raise click.BadParameter(f"expected a duration like 90s, 30m, 12h or 7d, got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_rate(text: str) -> float | None:
    match = re.match(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*([smh]))?\s*$", text)
    if not match or float(match.group(1)) < 0:
        raise click.BadParameter(f"expected messages per second like 50/s or 600/m, got {text!r}")
    value = float(match.group(1)) / {None: 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    return value or None  # 0: unbounded


def _age_text(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _counts(counter: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counter.items()) or "-"


@contextlib.contextmanager
def _session(options: Mapping[str, Any]) -> Iterator[tuple[Config, Backend]]:
    config = build({k: v for k, v in options.items() if v is not None})
    logs.setup(config.log_level, "text", secrets=config.secrets)
    backend = connect(config)
    try:
        yield config, backend
    except click.ClickException:
        raise
    except Exception as error:
        raise DlqError(f"{_describe(error, config)} (broker {config.safe_broker_url})") from None
    finally:
        backend.close()


def _check(backend: Backend, queue: str, config: Config) -> None:
    """Unknown queue: exit code 2. An empty Redis list is no key at all, so a DLQ named
    with --dlq counts as known even when empty."""
    if config.transport == "redis" and queue in config.dlqs:
        return
    if not backend.exists(queue):
        raise UnknownQueue(f"no queue {queue!r} on the broker")


def _emit(as_json: bool, document: Any, text: str) -> None:
    click.echo(json.dumps(document, indent=2) if as_json else text)


_JSON = click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON instead of text (see the README for the shapes).",
)


def group(broker_options: Callable[[Any], Any]) -> click.Group:
    """The ``dlq`` command group; ``broker_options`` adds the shared broker options."""

    @click.group("dlq")
    def dlq() -> None:
        """Dead-letter triage: list, show, replay and purge dead-lettered messages."""

    @dlq.command("list")
    @click.argument("queues", nargs=-1)
    @click.option(
        "--sample",
        type=click.IntRange(1),
        default=SAMPLE_SIZE,
        show_default=True,
        help="Most messages read per DLQ; a longer DLQ is sampled.",
    )
    @_JSON
    @broker_options
    def list_(*, queues: tuple[str, ...], sample: int, as_json: bool, **options: Any) -> None:
        """DLQs with depth and a breakdown by task, origin, reason and age."""
        with _session(options) as (config, backend):
            names = list(queues) or backend.dead_letter_queues(config.dlqs)
            for queue in queues:
                _check(backend, queue, config)
            summaries = [backend.summary(queue, sample) for queue in names]
            now = time.time()
            lines = []
            for s in summaries:
                head = f"{s.queue}: {s.depth} messages"
                if s.sampled:
                    head += f" (sampled {s.sample_size})"
                if s.inflight:
                    head += f", {s.inflight} in the recovery list"
                lines += [
                    head,
                    f"  tasks:     {_counts(s.tasks)}",
                    f"  not tasks: {_counts(s.not_tasks)}",
                    f"  origins:   {_counts(s.origins)}",
                    f"  reasons:   {_counts(s.reasons)}",
                    f"  age:       oldest {_age_text(s.as_json(now)['oldest_age_seconds'])}"
                    f", newest {_age_text(s.as_json(now)['newest_age_seconds'])}",
                ]
            if not names:
                lines.append("no dead-letter queues found (name them with --dlq)")
            _emit(as_json, [s.as_json(now) for s in summaries], "\n".join(lines))

    @dlq.command()
    @click.argument("queue")
    @click.option("--task", "task", metavar="NAME", help="Only this task name (a glob).")
    @click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
    @_JSON
    @broker_options
    def show(*, queue: str, task: str | None, limit: int, as_json: bool, **options: Any) -> None:
        """Messages of a DLQ, oldest first: id, task, args, kwargs, retries, x-death, age."""
        with _session(options) as (config, backend):
            _check(backend, queue, config)
            now = time.time()
            shown: list[Entry] = []
            scan = max(limit, SAMPLE_SIZE) if task else limit
            for entry in backend.entries(queue, scan):
                if task is None or fnmatch.fnmatchcase(entry.task or "", task):
                    shown.append(entry)
                    if len(shown) >= limit:
                        break
            lines = []
            for e in shown:
                kind = "" if e.kind == TASK else f" [{e.kind}: not replayed without --id]"
                lines.append(
                    f"{e.id or '-'}  {e.task or '-'}{kind}  args={e.args or '-'} "
                    f"kwargs={e.kwargs or '-'} retries={e.retries} "
                    f"origin={e.origin or '-'} reason={e.reason or '-'} "
                    f"age={_age_text(e.age(now))}"
                )
            _emit(as_json, [e.as_json(now) for e in shown], "\n".join(lines) or "no messages")

    @dlq.command()
    @click.argument("queue")
    @click.option("--task", "task", metavar="NAME", help="Only this task name (a glob).")
    @click.option(
        "--id",
        "ids",
        metavar="ID",
        multiple=True,
        help="Only these message ids (repeatable); also replays messages that "
        "are not Celery tasks.",
    )
    @click.option("--limit", type=click.IntRange(1), help="Most messages to replay.")
    @click.option(
        "--to",
        "to",
        metavar="QUEUE",
        help="Target queue (default: the origin from x-death or x-origin-queue).",
    )
    @click.option(
        "--rate",
        default="100/s",
        show_default=True,
        metavar="N/s",
        help="Most messages a second (0: unbounded).",
    )
    @click.option(
        "--window",
        type=click.IntRange(1, 65535),
        default=SAMPLE_SIZE,
        show_default=True,
        help="Most non-matching messages looked past.",
    )
    @click.option("--dry-run", is_flag=True, help="Show what would be replayed; change nothing.")
    @_JSON
    @broker_options
    def replay(
        *,
        queue: str,
        task: str | None,
        ids: tuple[str, ...],
        limit: int | None,
        to: str | None,
        rate: str,
        window: int,
        dry_run: bool,
        as_json: bool,
        **options: Any,
    ) -> None:
        """Move messages back to their queue as the same task message (same id, headers)."""
        per_second = parse_rate(rate)
        with _session(options) as (config, backend):
            _check(backend, queue, config)
            outcome = Outcome(queue, "replay", dry_run=dry_run)
            progress = Progress(outcome, limit, quiet=as_json)
            backend.replay(
                queue,
                Selection(task, frozenset(ids)),
                limit=limit,
                to=to,
                rate=RateLimit(per_second),
                dry_run=dry_run,
                window=window,
                progress=progress,
            )
            progress.tick(force=not progress.tty and not as_json and outcome.done > 0)
            verb = "would replay" if dry_run else "replayed"
            _emit(
                as_json,
                outcome.as_json(),
                f"{verb} {outcome.done} messages from {queue}: {_counts(outcome.targets)}; "
                f"skipped: {_counts(outcome.skipped)}"
                + (f"; recovered {outcome.recovered}" if outcome.recovered else ""),
            )

    @dlq.command()
    @click.argument("queue")
    @click.option("--task", "task", metavar="NAME", help="Only this task name (a glob).")
    @click.option("--id", "ids", metavar="ID", multiple=True, help="Only these message ids.")
    @click.option(
        "--older-than",
        metavar="DURATION",
        help="Only messages dead-lettered longer ago than this (90s, 30m, 12h, 7d); "
        "messages of unknown age are kept.",
    )
    @click.option("--limit", type=click.IntRange(1), help="Most messages to purge.")
    @click.option(
        "--export",
        "export_path",
        type=click.Path(dir_okay=False),
        metavar="FILE",
        help="Append each message as a JSON line to FILE before deleting it.",
    )
    @click.option(
        "--window",
        type=click.IntRange(1, 65535),
        default=SAMPLE_SIZE,
        show_default=True,
        help="Most non-matching messages looked past.",
    )
    @click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
    @_JSON
    @broker_options
    def purge(
        *,
        queue: str,
        task: str | None,
        ids: tuple[str, ...],
        older_than: str | None,
        limit: int | None,
        export_path: str | None,
        window: int,
        yes: bool,
        as_json: bool,
        **options: Any,
    ) -> None:
        """Delete messages of a DLQ (all Celery tasks, or those selected)."""
        age = parse_duration(older_than) if older_than else None
        with _session(options) as (config, backend):
            _check(backend, queue, config)
            if not yes:
                what = (
                    " and ".join(
                        filter(
                            None,
                            [
                                f"task {task}" if task else "",
                                f"ids {', '.join(ids)}" if ids else "",
                                f"older than {older_than}" if older_than else "",
                            ],
                        )
                    )
                    or "every Celery task"
                )
                if not sys.stdin.isatty():
                    raise DlqError("refusing to purge without confirmation: pass --yes")
                click.confirm(
                    f"Purge {what} from {queue} ({backend.depth(queue)} messages)?",
                    abort=True,
                    err=True,
                )
            outcome = Outcome(queue, "purge")
            progress = Progress(outcome, limit, quiet=as_json)
            with contextlib.ExitStack() as stack:
                export = (
                    stack.enter_context(open(export_path, "a", encoding="utf-8"))
                    if export_path
                    else None
                )
                backend.purge(
                    queue,
                    Selection(task, frozenset(ids), age),
                    limit=limit,
                    export=export,
                    window=window,
                    progress=progress,
                )
            _emit(
                as_json,
                outcome.as_json(),
                f"purged {outcome.done} messages from {queue}"
                + (f", exported to {export_path}" if export_path else "")
                + f"; skipped: {_counts(outcome.skipped)}",
            )

    return dlq


class DlqSampler:
    """celery_dlq_messages for the exporter's poller thread: the same bounded, non-consuming
    sample as ``dlq list``, on a connection of its own (reopened after any error)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._backend: Backend | None = None

    def __call__(self, queue: str) -> dict[str, int]:
        if self._backend is None:
            self._backend = connect(self.config)
        try:
            return self._backend.summary(queue, self.config.dlq_sample).estimate()
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        backend, self._backend = self._backend, None
        if backend is not None:
            with contextlib.suppress(Exception):
                backend.close()
