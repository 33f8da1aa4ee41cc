"""Dead-letter queues on RabbitMQ.

Reading never consumes: a consumer with a prefetch window of the sample size
and no acks; closing the channel returns every message to the queue at its
position (a classic queue keeps the order; the messages' ``redelivered`` flag
becomes true, and a quorum queue counts a delivery). AMQP reads from the head
only, so a sample is the oldest messages.

Moving never loses a message: publisher confirms on the target before the ack
on the DLQ; a client killed in between leaves the message in both (at least once).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any

from celery_vitals.brokers.amqp.declare import PassiveDeclare
from celery_vitals.brokers.amqp.management import dead_letter_targets
from celery_vitals.brokers.amqp.probe import AmqpProbe
from celery_vitals.brokers.dead_letters import (
    Entry,
    Progress,
    RateLimit,
    Selection,
    Summary,
    UnknownQueue,
    as_text,
    classify,
    export_line,
)
from celery_vitals.brokers.probe import Deadline, matches_any, split_patterns

if TYPE_CHECKING:
    from celery_vitals.config import Config

log = logging.getLogger("celery_vitals.dlq")


def parse_amqp(message: Any) -> Entry:
    properties = getattr(message, "properties", {}) or {}
    headers = properties.get("application_headers") or {}
    entry = classify(
        headers if isinstance(headers, dict) else {},
        as_text(properties.get("content_type")),
        as_text(properties.get("content_encoding")),
        message.body,
        properties.get("timestamp"),
    )
    if entry.id is None:
        entry.id = as_text(properties.get("message_id")) or as_text(
            properties.get("correlation_id")
        )
    entry.raw = message
    return entry


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


class AmqpDeadLetters:
    """The DeadLetterStore of RabbitMQ, read with unacknowledged deliveries (see the module
    docstring)."""

    def __init__(self, config: Config) -> None:
        from kombu import Connection

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
        self._declare_passive: PassiveDeclare | None = None
        self._existing: dict[str, bool] = {}

    def close(self) -> None:
        self.probe.close()
        with contextlib.suppress(Exception):
            self.connection.close()

    def _declare(self, queue: str) -> int | None:
        """Ready messages, or None if there is no such queue (passive declare); a queue
        whose numbers the broker does not tell (not ours, another's exclusive queue) is
        an error here."""
        if self._declare_passive is None:
            self._declare_passive = PassiveDeclare(self.connection)
        declared = self._declare_passive(queue)
        if declared.error is not None:
            raise declared.error
        return declared.ready if declared.exists else None

    def dead_letter_queues(self, patterns: Iterable[str]) -> list[str]:
        patterns = list(patterns)
        names, _ = split_patterns(patterns)
        api = self.probe.management
        if api is not None:
            deadline = Deadline(self.config.probe_timeout * 4)
            listing = api.queues(deadline)
            names |= dead_letter_targets(listing, lambda name: api.exchange(name, deadline))
            names |= {
                q["name"]
                for q in listing
                if isinstance(q.get("name"), str) and matches_any(q["name"], patterns)
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
                    export.write(json.dumps(export_line(entry, now, queue)) + "\n")
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


def open_store(config: Config) -> AmqpDeadLetters:
    return AmqpDeadLetters(config)
