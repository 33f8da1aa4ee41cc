"""The passive ``queue.declare``: all AMQP itself tells of a queue (ready messages,
consumers), and whether it exists. Used by the probe and by the dead-letter store alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Declared:
    """What a passive declare answered.

    404: no such queue (``exists`` False). 405: another connection's exclusive
    queue, which exists but whose numbers are hidden. 403 and other refusals:
    not ours to see (``exists`` False). ``error`` is the broker's refusal, None
    for an answer and for 404.
    """

    name: str
    exists: bool
    ready: int | None = None
    consumers: int | None = None
    error: BaseException | None = None

    @property
    def refused(self) -> bool:
        """Not ours to see (403 and the like): neither an answer nor a missing queue."""
        return self.error is not None and not self.exists


class PassiveDeclare:
    """Passive declares on one channel of a kombu connection, kept between calls; a refusal
    closes only that channel, and the next call gets a new one."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self._channel: Any = None

    def __call__(self, name: str) -> Declared:
        if self._channel is None or not getattr(self._channel, "is_open", True):
            self._channel = self.connection.channel()
        try:
            _, ready, consumers = self._channel.queue_declare(queue=name, passive=True)
        except self.connection.channel_errors as error:
            if not getattr(self._channel, "is_open", False):
                self._channel = None
            code = getattr(error, "reply_code", None)
            if code == 404:
                return Declared(name, exists=False)
            if code == 405:  # another connection's exclusive queue: it exists, numbers hidden
                return Declared(name, exists=True, error=error)
            return Declared(name, exists=False, error=error)  # 403: not ours to see
        return Declared(name, exists=True, ready=int(ready), consumers=int(consumers))
