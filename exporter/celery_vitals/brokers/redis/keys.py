"""How kombu's Redis transport names things: every key celery-vitals reads or writes.

Every name comes from kombu's own redis Channel, built from the broker URL and
transport options the workers use, so ``global_keyprefix``, ``sep``,
``priority_steps``, ``unacked_key``... mean exactly what they mean to the
workers. kombu's prefixed client adds the global key prefix only for the
commands it uses itself (``PREFIXED_SIMPLE_COMMANDS``); ``command_key`` adds
it for the others (SCAN, ZCARD, HMGET), asking the client which is which so
that a key is never prefixed twice.

Layout of a Redis broker as kombu writes it:

- a queue is one list per priority step: ``queue`` for step 0, ``queue + sep
  + step`` otherwise; an empty list is no key at all in Redis;
- ``_kombu.binding.<exchange>`` sets hold ``routing_key + sep + pattern + sep
  + queue`` members, one per binding (the only record that a queue exists);
- ``unacked`` hash: delivery tag -> JSON ``[message, exchange, routing_key]``,
  ``unacked_index`` sorted set: delivery tag -> delivery time (unix seconds),
  written by the consuming worker; a delivery older than the visibility
  timeout is put back in its queue by the next worker that looks.

This is the only module that touches the channel's private names.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from celery_vitals.brokers.probe import is_plumbing

#: Celery's event exchange; remote control uses celery.pidbox and reply.celery.pidbox.
EVENT_EXCHANGE = "celeryev"


def plumbing_binding(exchange: str, queue: str) -> bool:
    """Whether a binding belongs to Celery's events or remote control, not to tasks."""
    return exchange == EVENT_EXCHANGE or exchange.endswith(".pidbox") or is_plumbing(queue)


@dataclass(frozen=True)
class Binding:
    """One member of a ``_kombu.binding.<exchange>`` set."""

    exchange: str
    routing_key: str
    pattern: str  # a regex for topic exchanges, empty for direct and fanout
    queue: str

    def routes(self, routing_key: str) -> bool:
        """Whether a message with this routing key goes to the queue (kombu's lookup)."""
        if self.pattern:
            compiled = _compile(self.pattern)
            return compiled is not None and compiled.match(routing_key) is not None
        return self.routing_key == routing_key


@functools.lru_cache(maxsize=1024)
def _compile(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:
        return None


def text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def glob_escape(literal: str) -> str:
    """``literal`` as a literal in a Redis MATCH pattern."""
    return re.sub(r"([\\*?\[\]^-])", r"\\\1", literal)


def prefix(channel: Any) -> str:
    """The transport's ``global_keyprefix`` ("" when none)."""
    return str(channel.global_keyprefix or "")


def command_key(channel: Any, command: str, name: str) -> str:
    """The key to pass to ``command``: prefixed here unless kombu's client prefixes it."""
    kombu_prefixes = getattr(channel.client, "PREFIXED_SIMPLE_COMMANDS", ())
    return name if command in kombu_prefixes else prefix(channel) + name


def priority_key(channel: Any, queue: str, priority: int) -> str:
    """The list of ``queue`` holding messages of this priority (unprefixed)."""
    return str(channel._q_for_pri(queue, priority))


def queue_keys(channel: Any, queue: str) -> list[str]:
    """The list of every priority step (``queue``, ``queue+sep+3``...), as kombu names them."""
    steps = channel.priority_steps
    return list(dict.fromkeys(priority_key(channel, queue, step) for step in steps))


def queue_of(channel: Any, name: str) -> str | None:
    """The queue whose list (of any priority) this key names (unprefixed); None when its
    suffix after the separator is no priority step."""
    sep: str = channel.sep
    queue, _, step = name.rpartition(sep) if sep in name else (name, "", "")
    if step and step not in {str(s) for s in channel.priority_steps}:
        return None
    return queue


def binding_set(channel: Any, exchange: str) -> str:
    """The ``_kombu.binding.<exchange>`` set's name (unprefixed)."""
    return str(channel.keyprefix_queue % (exchange,))


def binding_scan(channel: Any) -> tuple[str, str, str]:
    """(head, tail, MATCH pattern) of the binding sets' full (prefixed) key names: the
    exchange is what is between head and tail."""
    full = prefix(channel) + binding_set(channel, "\0")
    head, _, tail = full.partition("\0")
    return head, tail, glob_escape(head) + "*" + glob_escape(tail)


def parse_binding(exchange: str, member: bytes | str, sep: str) -> Binding | None:
    """A binding set's member; None when it is not three parts joined by the separator."""
    parts = text(member).split(sep)
    if len(parts) != 3:  # a sep inside a name: kombu cannot route it either
        return None
    return Binding(exchange, *parts)
