"""Dead-letter queues on Amazon SQS: list and show, reading without deleting anything.

SQS has no way to look at a message without receiving it. A read receives
messages (10 a call) with a visibility timeout of ``READ_VISIBILITY`` seconds,
so no consumer gets them meanwhile, and then makes them visible again at
once (ChangeMessageVisibilityBatch to 0). Nothing is ever deleted: a reader
killed half way leaves its messages invisible for at most ``READ_VISIBILITY``
seconds, then SQS hands them out again. Every receive counts towards a
message's ApproximateReceiveCount, so a DLQ that has a redrive policy of its
own (it would move messages on after maxReceiveCount receives) is not read.
At most ``READ_MAX`` messages are read per command (the oldest are not
guaranteed: SQS standard queues have no order).

Replay and purge are refused: SQS itself moves dead-lettered messages back to
their source queue (a DLQ redrive, StartMessageMoveTask, or the console's
"Start DLQ redrive"), and deletes them (PurgeQueue), with its own guarantees.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any

from celery_vitals.brokers.dead_letters import (
    DeadLetterError,
    Entry,
    Progress,
    RateLimit,
    Selection,
    Summary,
    UnknownQueue,
    parse_envelope,
)
from celery_vitals.brokers.probe import Deadline, matches_any, split_patterns
from celery_vitals.brokers.sqs import attributes
from celery_vitals.brokers.sqs.probe import SqsProbe, error_code

if TYPE_CHECKING:
    from celery_vitals.config import Config

READ_VISIBILITY = 60  # seconds a read hides the messages it received (at most)
READ_MAX = 1000  # messages read per command
REFUSED = (
    "{action} is not done by celery-vitals on SQS: SQS has no atomic move, and a "
    "receive-send-delete from the client could duplicate messages. Use SQS's own "
    "dead-letter queue redrive, which moves messages back to their source queue "
    "(aws sqs start-message-move-task --source-arn <DLQ ARN>, or 'Start DLQ redrive' in the "
    "console), or PurgeQueue to delete them all (aws sqs purge-queue --queue-url <URL>)."
)


def parse_sqs(message: dict[str, Any]) -> Entry:
    """A kombu SQS message: its body is kombu's JSON envelope, base64-encoded by default."""
    body = message.get("Body", "")
    raw = body.encode() if isinstance(body, str) else bytes(body)
    with contextlib.suppress(binascii.Error, ValueError):
        raw = base64.b64decode(raw, validate=True)
    entry = parse_envelope(raw)
    source = message.get("Attributes", {}).get(attributes.DEAD_LETTER_SOURCE)
    if entry.origin is None and isinstance(source, str):
        entry.origin = source.rsplit(":", 1)[-1]
    entry.raw = message
    return entry


class SqsDeadLetters:
    """DLQs on SQS, read with a visibility timeout and released (see the module docstring)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.probe = SqsProbe(
            config.broker_url,
            config.broker_transport_options,
            timeout=config.probe_timeout,
            max_queues=config.max_queue_names,
        )

    def close(self) -> None:
        self.probe.close()

    def _url(self, queue: str) -> str:
        url = self.probe.queue_url(queue, Deadline(self.config.probe_timeout))
        if url is None:
            raise UnknownQueue(f"no queue {queue!r} on the broker")
        return url

    def _attributes(self, queue: str) -> dict[str, Any]:
        answer = self.probe.client_for(queue).get_queue_attributes(
            QueueUrl=self._url(queue),
            AttributeNames=[attributes.READY, attributes.REDRIVE_POLICY],
        )
        return dict(answer.get("Attributes", {}))

    # -- reading ----------------------------------------------------------------

    def dead_letter_queues(self, patterns: Iterable[str]) -> list[str]:
        """Named DLQs, those of the queues' redrive policies, and queues matching globs."""
        patterns = list(patterns)
        names, _ = split_patterns(patterns)
        known = self.probe.discover() | names
        names |= set(self.probe.poll(sorted(known)).dead_letter_targets)
        globs = [p for p in patterns if p not in names]
        names |= {q for q in known if matches_any(q, globs)}
        return sorted(names)

    def exists(self, queue: str) -> bool:
        return self.probe.queue_url(queue, Deadline(self.config.probe_timeout)) is not None

    def depth(self, queue: str) -> int:
        return int(self._attributes(queue).get(attributes.READY, 0))

    def _messages(self, queue: str, count: int) -> Iterator[dict[str, Any]]:
        """Up to ``count`` distinct messages, each made visible again before it is yielded."""
        told = self._attributes(queue)
        if attributes.REDRIVE_POLICY in told:
            raise DeadLetterError(
                f"{queue} has a redrive policy of its own: reading it would count "
                "towards maxReceiveCount and could move messages on, so it is not read"
            )
        client, url = self.probe.client_for(queue), self._url(queue)
        seen: set[str] = set()
        while len(seen) < min(count, READ_MAX):
            answer = client.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                VisibilityTimeout=READ_VISIBILITY,
                WaitTimeSeconds=0,
                MessageSystemAttributeNames=["All"],
            )
            batch = answer.get("Messages", [])
            fresh = [m for m in batch if m.get("MessageId") not in seen]
            if batch:
                self._release(client, url, batch)
            if not fresh:
                return  # empty, or only messages this read has seen already
            for message in fresh[: min(count, READ_MAX) - len(seen)]:
                seen.add(message.get("MessageId", ""))
                yield message

    @staticmethod
    def _release(client: Any, url: str, batch: list[dict[str, Any]]) -> None:
        """Visible again now (not after READ_VISIBILITY): the read changed nothing."""
        with contextlib.suppress(Exception):  # if it fails, the timeout releases them
            client.change_message_visibility_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                    for i, m in enumerate(batch)
                ],
            )

    def summary(self, queue: str, sample: int) -> Summary:
        depth = self.depth(queue)
        result = Summary(queue, depth, sampled=depth > min(sample, READ_MAX))
        for message in self._messages(queue, min(depth, sample)):
            result.add(parse_sqs(message))
        return result

    def entries(self, queue: str, limit: int) -> Iterator[Entry]:
        for message in self._messages(queue, limit):
            yield parse_sqs(message)

    # -- moving: refused ----------------------------------------------------------

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
        raise DeadLetterError(REFUSED.format(action="replay"))

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
        raise DeadLetterError(REFUSED.format(action="purge"))


def open_store(config: Config) -> SqsDeadLetters:
    store = SqsDeadLetters(config)
    try:
        store.probe.discover()  # the client is lazy: fail here if SQS cannot be reached
    except Exception as error:
        if error_code(error) != "AccessDenied":  # ListQueues may not be granted: go on
            raise
    return store
