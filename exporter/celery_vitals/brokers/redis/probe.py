"""RedisProbe: queue depth, unacked deliveries, the oldest waiting message's publication
time and broker facts of a Redis broker.

Keys are named as kombu names them (keys.py). Round trips per poll: the SCAN
for binding keys, one pipeline for everything else, one more for the unacked
hash.

kombu LPUSHes messages and workers (B)RPOP them, so each list's oldest message is at
its right end: ``LINDEX key -1`` reads it without consuming anything, O(1), in the
same pipeline as the LLENs. Its JSON envelope's headers carry the publication stamp
(celery_vitals.stamp) when a publisher runs ``celery_vitals.agent.install(app)``; the
oldest stamp of a queue's heads (one per priority list) is its ``oldest_published``.
A head without a stamp tells nothing.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kombu import Connection

from celery_vitals.brokers.probe import ProbeResult, QueueStats
from celery_vitals.brokers.redis import keys
from celery_vitals.brokers.redis.keys import Binding
from celery_vitals.logs import RateLimitedLogger
from celery_vitals.stamp import HEADER

rate_limited = RateLimitedLogger(logging.getLogger(__name__))

#: Unacked deliveries read per poll, oldest first. Beyond it, per-queue unacked
#: counts are lower bounds; the oldest ages stay exact (they come first).
UNACKED_READ_LIMIT = 10_000
#: Hash fields fetched per HMGET (all in one pipeline round trip).
HMGET_CHUNK = 1_000
#: Keys examined per SCAN call while looking for binding sets.
SCAN_COUNT = 1_000


@dataclass
class _Unacked:
    count: int = 0
    oldest: float | None = None  # delivery time, unix seconds

    def add(self, delivered: float) -> None:
        self.count += 1
        if self.oldest is None or delivered < self.oldest:
            self.oldest = delivered


class RedisProbe:
    """The QueueProbe of a Redis broker, through kombu's redis transport.

    One connection, opened on first use and dropped on any error (the next
    call reconnects). A lock serialises calls: close() may come from another
    thread than the poller's and then waits for the running call.
    """

    def __init__(
        self,
        broker_url: str,
        transport_options: Mapping[str, Any],
        timeout: float = 5.0,
        *,
        unacked_limit: int = UNACKED_READ_LIMIT,
    ) -> None:
        self.broker_url = broker_url
        self.timeout = timeout
        self.unacked_limit = unacked_limit
        options = dict(transport_options)
        # No command may wait longer than the poll is allowed to take.
        options.setdefault("socket_timeout", timeout)
        options.setdefault("socket_connect_timeout", timeout)
        self.transport_options = options
        self._connection: Any = None
        self._lock = threading.Lock()
        self._exchanges: frozenset[str] = frozenset()  # from the last complete scan

    # -- QueueProbe ----------------------------------------------------------------

    def discover(self) -> set[str]:
        """Task queues from the binding sets, without Celery's event and pidbox queues."""
        with self._lock:
            try:
                channel = self.channel()
                bindings = self._read_bindings(channel)
                return {
                    b.queue
                    for b in bindings
                    if b.queue and not keys.plumbing_binding(b.exchange, b.queue)
                }
            except BaseException:
                self._drop()
                raise

    def poll(self, queues: Iterable[str]) -> ProbeResult:
        """Depth, unacked count and age, the oldest waiting message's publication stamp per
        queue, and the broker's facts.

        Round trips: the SCAN for binding keys (one per SCAN_COUNT keys),
        one pipeline for everything else, one more for the unacked hash.
        """
        with self._lock:
            try:
                return self._poll(self.channel(), list(dict.fromkeys(queues)))
            except BaseException:
                self._drop()
                raise

    def close(self) -> None:
        """Releases the connection; a later call opens a new one."""
        with self._lock:
            self._drop()

    # -- connection ------------------------------------------------------------------

    def channel(self) -> Any:
        """kombu's redis Channel, connecting once (every failover URL once, no sleeping)."""
        if self._connection is None:
            connection = Connection(
                self.broker_url,
                transport_options=self.transport_options,
                connect_timeout=self.timeout,
            )
            self._connection = connection
            # kombu would retry (and sleep) until connect_timeout; the poller retries anyway.
            connection.ensure_connection(max_retries=max(len(connection.alt), 1) - 1)
        return self._connection.default_channel

    def _drop(self) -> None:
        """Closes the connection so that the next call reconnects from scratch."""
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception as error:  # the broker may be gone: nothing to release there
                rate_limited.logger.debug("closing the redis connection failed: %r", error)

    # -- bindings ------------------------------------------------------------------

    def _scan_exchanges(self, channel: Any, deadline: float) -> frozenset[str]:
        """Exchange names that have a binding set (SCAN, never KEYS).

        A keyspace too large to scan before ``deadline`` (e.g. millions of
        result keys in the same DB) yields what was found plus the exchanges
        of the last complete scan, with a warning, rather than a failed poll.
        """
        head, tail, pattern = keys.binding_scan(channel)
        found: set[str] = set()
        cursor = 0
        while True:
            cursor, found_keys = channel.client.scan(cursor, match=pattern, count=SCAN_COUNT)
            for key in found_keys:
                name = keys.text(key)
                found.add(name[len(head) : len(name) - len(tail)])
            if int(cursor) == 0:
                self._exchanges = frozenset(found)
                return self._exchanges
            if time.monotonic() >= deadline:
                rate_limited.warn_every(
                    "redis_scan",
                    "scanning for kombu binding keys took longer than "
                    "%.1fs; using the last complete scan as well",
                    self.timeout / 2,
                )
                return frozenset(found | self._exchanges)

    def _pipe_bindings(self, channel: Any, pipe: Any, exchanges: Iterable[str]) -> list[str]:
        """Adds an SMEMBERS of each exchange's binding set to ``pipe``, in the returned order."""
        ordered = sorted(exchanges)
        for exchange in ordered:
            name = keys.binding_set(channel, exchange)
            pipe.smembers(keys.command_key(channel, "SMEMBERS", name))
        return ordered

    @staticmethod
    def _parse_bindings(channel: Any, exchanges: list[str], replies: list[Any]) -> list[Binding]:
        sep: str = channel.sep
        bindings = []
        for exchange, members in zip(exchanges, replies, strict=True):
            for member in members or ():
                binding = keys.parse_binding(exchange, member, sep)
                if binding is None:
                    rate_limited.warn_every(
                        "redis_binding",
                        "skipped binding %.200r of exchange "
                        "%.200r: not routing_key, pattern and queue joined by the "
                        "separator",
                        keys.text(member),
                        exchange,
                    )
                    continue
                bindings.append(binding)
        return bindings

    def _read_bindings(self, channel: Any) -> list[Binding]:
        exchanges = self._scan_exchanges(channel, time.monotonic() + self.timeout / 2)
        pipe = channel.client.pipeline(transaction=False)
        ordered = self._pipe_bindings(channel, pipe, exchanges)
        return self._parse_bindings(channel, ordered, pipe.execute())

    # -- poll ----------------------------------------------------------------------

    def _poll(self, channel: Any, queues: list[str]) -> ProbeResult:
        exchanges = self._scan_exchanges(channel, time.monotonic() + self.timeout / 2)
        ack_emulation = bool(channel.ack_emulation)

        # One round trip: bindings, INFO, CONFIG GET save, every list's length and oldest
        # message (its right end: kombu LPUSHes, workers BRPOP), the unacked index.
        pipe = channel.client.pipeline(transaction=False)
        ordered = self._pipe_bindings(channel, pipe, exchanges)
        pipe.info()
        pipe.config_get("save")
        lists = {queue: keys.queue_keys(channel, queue) for queue in queues}
        for queue_keys in lists.values():
            for key in queue_keys:
                pipe.llen(key)
                pipe.lindex(keys.command_key(channel, "LINDEX", key), -1)
        read_unacked = ack_emulation and bool(queues)
        if read_unacked:
            index = channel.unacked_index_key
            pipe.zcard(keys.command_key(channel, "ZCARD", index))
            pipe.zrange(
                keys.command_key(channel, "ZRANGE", index),
                0,
                self.unacked_limit - 1,
                withscores=True,
            )
        replies = pipe.execute(raise_on_error=False)

        n = len(ordered)
        binding_replies, info, save = replies[:n], replies[n], replies[n + 1]
        rest = replies[n + 2 :]
        # Only INFO and CONFIG may be refused (ACLs, renamed commands on managed Redis).
        for reply in (*binding_replies, *rest):
            if isinstance(reply, Exception):
                raise reply
        bindings = self._parse_bindings(channel, ordered, binding_replies)

        lengths: dict[str, int] = {}
        published: dict[str, float] = {}
        position = 0
        for queue, queue_keys in lists.items():
            end = position + 2 * len(queue_keys)
            lengths[queue] = sum(int(length) for length in rest[position:end:2])
            stamps = [
                stamp
                for stamp in map(head_published, rest[position + 1 : end : 2])
                if stamp is not None
            ]
            if stamps:
                published[queue] = min(stamps)
            position = end

        unacked: dict[str, _Unacked] = {}
        if read_unacked:
            total, oldest_first = int(rest[position]), rest[position + 1]
            unacked = self._read_unacked(channel, oldest_first, bindings)
            if total > self.unacked_limit:
                rate_limited.warn_every(
                    "redis_unacked_limit",
                    "%d unacked deliveries, read the oldest "
                    "%d: per-queue unacked counts are lower bounds",
                    total,
                    self.unacked_limit,
                )
        now = time.time()

        bound = {binding.queue for binding in bindings}
        stats = []
        for queue in queues:
            in_flight = unacked.get(queue, _Unacked())
            exists = lengths[queue] > 0 or queue in bound or in_flight.count > 0
            age = None if in_flight.oldest is None else max(now - in_flight.oldest, 0.0)
            stats.append(
                QueueStats(
                    name=queue,
                    exists=exists,
                    ready=lengths[queue] if exists else None,
                    unacked=in_flight.count if exists and ack_emulation else None,
                    consumers=None,  # Redis cannot tell who is blocked in BRPOP on a list
                    oldest_unacked_age=age,
                    oldest_published=published.get(queue),
                )
            )

        facts, info_labels, persistence = self._broker_facts(info, save)
        return ProbeResult(
            queues=tuple(stats),
            facts=facts,
            info=info_labels,
            persistence=persistence,
            visibility_timeout=float(channel.visibility_timeout) if ack_emulation else None,
        )

    def _read_unacked(
        self, channel: Any, oldest_first: list[tuple[bytes, float]], bindings: list[Binding]
    ) -> dict[str, _Unacked]:
        """Unacked deliveries per queue, from the index's oldest entries and their hash values.

        Index entries without a hash value are not in flight (kombu restores
        a message by deleting its hash field first and cleans the index
        later) and are skipped. A delivery is attributed as kombu restores it:
        the queues its exchange binds with a matching routing key (the
        routing key itself on the default exchange).
        """
        if not oldest_first:
            return {}
        tags = [tag for tag, _ in oldest_first]
        pipe = channel.client.pipeline(transaction=False)
        hash_key = keys.command_key(channel, "HMGET", channel.unacked_key)
        for start in range(0, len(tags), HMGET_CHUNK):
            pipe.hmget(hash_key, tags[start : start + HMGET_CHUNK])
        values = [value for chunk in pipe.execute() for value in chunk]

        by_exchange: dict[str, list[Binding]] = {}
        for binding in bindings:
            by_exchange.setdefault(binding.exchange, []).append(binding)
        unacked: dict[str, _Unacked] = {}
        for (_, delivered), value in zip(oldest_first, values, strict=True):
            if value is None:
                continue
            for queue in self._destinations(value, by_exchange):
                unacked.setdefault(queue, _Unacked()).add(float(delivered))
        return unacked

    @staticmethod
    def _destinations(value: bytes, by_exchange: dict[str, list[Binding]]) -> set[str]:
        try:
            entry = json.loads(value)
        except ValueError:  # UnicodeDecodeError included
            entry = None
        if not (isinstance(entry, list) and len(entry) == 3):
            rate_limited.warn_every(
                "redis_unacked_value",
                "skipped an unacked entry that is not kombu's [message, exchange, routing_key]",
            )
            return set()
        exchange, routing_key = str(entry[1] or ""), str(entry[2] or "")
        if not exchange:
            return {routing_key} if routing_key else set()
        return {
            binding.queue
            for binding in by_exchange.get(exchange, ())
            if binding.routes(routing_key)
        }

    # -- broker facts ----------------------------------------------------------------

    @staticmethod
    def _broker_facts(
        info: Any, save: Any
    ) -> tuple[dict[str, float], dict[str, str], dict[str, bool]]:
        """Memory, version, eviction policy, RDB and AOF from INFO (and CONFIG GET save)."""
        labels = {"transport": "redis"}
        if isinstance(info, Exception) or not isinstance(info, dict):
            rate_limited.warn_every(
                "redis_info",
                "INFO refused by the broker (%s): no memory, version or persistence facts",
                info,
            )
            return {}, labels, {}
        facts: dict[str, float] = {}
        if "used_memory" in info:
            facts["celery_broker_memory_used_bytes"] = float(info["used_memory"])
        if "maxmemory" in info:  # 0: no limit
            facts["celery_broker_memory_limit_bytes"] = float(info["maxmemory"])
        if "redis_version" in info:
            labels["version"] = str(info["redis_version"])
        if "maxmemory_policy" in info:
            labels["eviction_policy"] = str(info["maxmemory_policy"])

        persistence: dict[str, bool] = {}
        if "aof_enabled" in info:
            persistence["aof"] = int(info["aof_enabled"]) == 1
        if isinstance(save, dict) and "save" in save:
            persistence["rdb"] = bool(str(save["save"]).strip())
        elif (
            int(info.get("rdb_saves", 0)) > 0 or int(info.get("rdb_last_bgsave_time_sec", -1)) >= 0
        ):
            # CONFIG is often disabled on managed Redis: a snapshot taken since
            # startup shows RDB at work. No snapshot yet: unknown, not "off".
            persistence["rdb"] = True
        return facts, labels, persistence


def head_published(message: bytes | str | None) -> float | None:
    """The publication stamp of a message as kombu stores it in a list (its JSON envelope's
    ``headers``), or None: no message, not kombu's envelope, no stamp or not a time."""
    if message is None:
        return None
    try:
        envelope = json.loads(message)
    except (ValueError, RecursionError):  # UnicodeDecodeError included; hostile nesting
        return None
    headers = envelope.get("headers") if isinstance(envelope, dict) else None
    stamp = headers.get(HEADER) if isinstance(headers, dict) else None
    if isinstance(stamp, bool) or not isinstance(stamp, int | float):
        return None
    try:
        published = float(stamp)
    except OverflowError:  # an integer beyond any float
        return None
    return published if math.isfinite(published) and published > 0 else None
