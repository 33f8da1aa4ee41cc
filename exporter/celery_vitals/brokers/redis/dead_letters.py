"""Dead-letter queues on a Redis broker: lists named as kombu names them (keys.py).

Reading never consumes: ``LRANGE`` in pages of ``PAGE`` entries, oldest first
(kombu LPUSHes and workers BRPOP, so the oldest message is at the tail of the
list), over every priority list of the queue. A queue longer than the sample
size is *sampled*: the oldest half of the sample, then windows of ``WINDOW``
consecutive messages evenly spaced over the rest of the list.

Moving never loses a message: replay is one Lua script per batch that removes
each message from the DLQ (``LREM``, so a message another replay took already
is skipped) and pushes it to its target list, atomically: there is no moment
when a message is in neither or both places, whatever kills the client. Purge
with ``--export`` has to write a file between taking and deleting, so it goes
through the recovery list ``<dlq>.celery-vitals.inflight``: the message moves
there atomically, is written and fsynced, then deleted. Every ``dlq`` command
puts what it finds in that list back into the DLQ first.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TYPE_CHECKING

from celery_vitals.brokers.dead_letters import (
    Entry,
    Progress,
    RateLimit,
    Selection,
    Summary,
    export_line,
    parse_envelope,
    sample_ranges,
)
from celery_vitals.brokers.probe import is_plumbing, matches_any, split_patterns
from celery_vitals.brokers.redis import keys
from celery_vitals.brokers.redis.probe import RedisProbe

if TYPE_CHECKING:
    from celery_vitals.config import Config

#: Entries per LRANGE.
PAGE = 500
#: Entries per LRANGE when moving (whole messages, however large, are read).
MOVE_PAGE = 100
#: Larger entries are cut down by the server before they are sent when only read
#: (list, show, the exporter): headers that matter kept, body left out.
MAX_ENTRY = 64 * 1024
INFLIGHT_SUFFIX = ".celery-vitals.inflight"

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


class RedisDeadLetters:
    """The DeadLetterStore of a Redis broker (see the module docstring)."""

    def __init__(self, config: Config) -> None:
        import redis

        self.config = config
        self.probe = RedisProbe(
            config.broker_url, config.broker_transport_options, timeout=config.probe_timeout
        )
        self.channel = self.probe.channel()
        # a plain client: every key below is prefixed here, never twice
        self.client = redis.Redis(connection_pool=self.channel.client.connection_pool)
        self.prefix = keys.prefix(self.channel)
        self._move = self.client.register_script(_MOVE)
        self._restore = self.client.register_script(_RESTORE)
        self._peek = self.client.register_script(_PEEK)

    def close(self) -> None:
        self.probe.close()

    # -- keys ---------------------------------------------------------------------

    def lists(self, queue: str) -> list[str]:
        return [self.prefix + key for key in keys.queue_keys(self.channel, queue)]

    def key_for(self, queue: str, priority: int) -> str:
        return self.prefix + keys.priority_key(self.channel, queue, priority)

    def inflight_key(self, queue: str) -> str:
        return self.prefix + queue + INFLIGHT_SUFFIX

    # -- reading ----------------------------------------------------------------

    def dead_letter_queues(self, patterns: Iterable[str]) -> list[str]:
        """The named DLQs, and the queues each glob matches: as the exporter's poller, the
        queues the broker's bindings name (the probe's discovery, Celery's plumbing left
        out), and the lists no binding names (what a final-failure handler LPUSHes); never
        another kind of key (kombu's ``_kombu.binding.*`` sets, the unacked hash, results)."""
        names, globs = split_patterns(patterns)
        if globs:
            known = {q for q in self.probe.discover() | self._lists(globs) if not is_plumbing(q)}
            names |= {q for q in known if matches_any(q, globs)}
        return sorted(names)

    def _lists(self, globs: list[str]) -> set[str]:
        """Queues whose name matches a glob and that have a list, of any priority (``queue``,
        ``queue + sep + step``); keys of other types are no queue."""
        found: dict[str, str] = {}  # key -> its queue
        for glob in globs:
            for key in self.client.scan_iter(match=self.prefix + glob + "*", count=1000):
                name = key.decode(errors="replace")[len(self.prefix) :]
                queue = keys.queue_of(self.channel, name)
                if (
                    queue is not None
                    and not queue.endswith(INFLIGHT_SUFFIX)
                    and matches_any(queue, globs)
                ):
                    found[name] = queue
        names = sorted(found)
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.type(self.prefix + name)
        kinds = pipe.execute()
        return {found[name] for name, kind in zip(names, kinds, strict=True) if kind == b"list"}

    def exists(self, queue: str) -> bool:
        """An empty Redis list is no key at all, so a DLQ named with --dlq counts as known
        even when empty."""
        if queue in self.config.dlqs:
            return True
        if self.depth(queue) or self.client.llen(self.inflight_key(queue)):
            return True
        return queue in self.probe.discover()

    def depth(self, queue: str) -> int:
        pipe = self.client.pipeline(transaction=False)
        for key in self.lists(queue):
            pipe.llen(key)
        return sum(int(n) for n in pipe.execute())

    def _lengths(self, queue: str) -> list[tuple[str, int]]:
        pipe = self.client.pipeline(transaction=False)
        lists = self.lists(queue)
        for key in lists:
            pipe.llen(key)
        return list(zip(lists, (int(n) for n in pipe.execute()), strict=True))

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
                        result.add(parse_envelope(raw))
        return result

    def entries(self, queue: str, limit: int) -> Iterator[Entry]:
        """Up to ``limit`` messages, oldest first, read a page at a time."""
        seen = 0
        for key in self.lists(queue):
            offset = 0
            while seen < limit:
                page = self._read(key, offset, offset + PAGE)
                if not page:
                    break
                offset += len(page)
                for raw in page[: limit - seen]:
                    seen += 1
                    yield parse_envelope(raw)

    # -- moving -------------------------------------------------------------------

    def recover(self, queue: str) -> int:
        """Puts what an interrupted purge left in the recovery list back into the DLQ."""
        inflight = self.inflight_key(queue)
        restored = 0
        while True:
            page: list[bytes] = self.client.lrange(inflight, -PAGE, -1)  # type: ignore[assignment]
            if not page:
                return restored
            targets = [self.key_for(queue, parse_envelope(raw).priority) for raw in page]
            restored += int(self._restore(keys=[inflight, *targets], args=page))

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
            for key in self.lists(queue):
                kept = passed = 0
                while passed < window:
                    page = [
                        parse_envelope(raw)
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
                    export.write(json.dumps(export_line(entry, now, queue)) + "\n")
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


def open_store(config: Config) -> RedisDeadLetters:
    store = RedisDeadLetters(config)
    store.depth("celery-vitals.ping")  # the connection is lazy: fail here
    return store
