"""The RabbitMQ management HTTP API: its client, and what its JSON tells (pure functions).

AMQP alone can only answer a passive ``queue.declare``: ready messages and
consumers, or 404 if the queue does not exist. Unacknowledged messages, queue
arguments (who dead-letters where), counters and memory are only in the
management API, so with a management URL one request lists every queue of the
vhost and AMQP is used just for what the API cannot tell yet.

What RabbitMQ 3.10 counts (checked on 3.10.8, see tests/integration/test_queues_amqp.py):

- ``message_stats.publish`` of a queue counts only messages that *channels*
  published into it. Dead-lettering is done by the source queue's process, not
  by a channel, so dead-lettered messages never show up there (a DLQ fed only
  by dead-lettering has no ``message_stats`` at all), nor in the dead-letter
  exchange's stats; 3.10 has no per-queue dead-letter counter either.
- ``backing_queue_status.next_seq_id`` of a classic queue is the sequence
  number of the next message to enter the queue: +1 for every message
  enqueued, published or dead-lettered; requeues do not move it. It is the
  probe's ``published_total`` for classic queues. Caveat: after an unclean
  node stop the recovered value is rounded up to an index segment boundary
  (seen: 3 -> 2048), so the first counter seen after the queue's node
  restarted (node uptime went back) or the queue moved to another node is not
  reported: it becomes the new baseline. A clean restart keeps the value; a
  re-declared queue starts at 0 again (the poller ignores decreases).
- Quorum and stream queues have no such counter: ``message_stats.publish``
  is reported, except for dead-letter targets, where it would miss the
  dead-lettered messages: None there, and the poller uses depth increases.
- The listing's numbers are refreshed about every 5 s (measured; lowering
  ``collect_statistics_interval`` did not change it): a queue declared a
  moment ago is listed without any numbers, and the probe asks AMQP for those.
  Counters of the management database (publish) restart at zero with the node.
- ``head_message_timestamp``: the AMQP ``timestamp`` property (whole Unix seconds) of
  the queue's first ready message, which ``celery_vitals.agent.install(app)`` sets in
  publishers (celery_vitals.stamp): an integer; ``null`` for an empty classic queue
  (and a head without the property), left out for quorum queues (and streams). Refreshed
  with the rest of the listing, which does not matter for a time (the age is taken at
  scrape time).
- ``?columns=`` works on 3.10, also for nested keys (``message_stats.publish``);
  an unknown column yields ``[]`` per item, older servers ignore the parameter.

Dead-letter routes come from queue arguments and policies; a queue with a
message TTL is a delay queue (retry-with-backoff, Celery's native delayed
delivery) whose expired messages go back to work queues on purpose: its
route is not followed, or every work queue would count as a dead-letter queue.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from celery_vitals.brokers.probe import Deadline, QueueStats
from celery_vitals.credentials import basic_auth, url_credentials

QUEUE_COLUMNS = (
    "name",
    "type",
    "node",
    "arguments",
    "effective_policy_definition",
    "messages_ready",
    "messages_unacknowledged",
    "consumers",
    "message_stats.publish",
    "backing_queue_status.next_seq_id",
    "head_message_timestamp",
)
INFINITY = float("inf")
NODE_COLUMNS = ("name", "running", "uptime", "mem_used", "mem_limit")


class ManagementError(Exception):
    """The management API failed. The message names the path, never the credentials."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# -- dead-letter routing (pure: canned API JSON in, queue names out) -----------------


@dataclass(frozen=True)
class Binding:
    destination: str
    destination_type: str  # "queue" or "exchange"
    routing_key: str


@dataclass(frozen=True)
class ExchangeInfo:
    type: str
    bindings: tuple[Binding, ...]


def parse_bindings(document: Any) -> tuple[Binding, ...]:
    """Bindings from ``/api/exchanges/<vhost>/<name>/bindings/source``."""
    if not isinstance(document, list):
        return ()
    return tuple(
        Binding(
            str(item.get("destination", "")),
            str(item.get("destination_type", "")),
            str(item.get("routing_key", "")),
        )
        for item in document
        if isinstance(item, dict)
    )


def dead_letter_route(queue: Mapping[str, Any]) -> tuple[str, str | None] | None:
    """(exchange, routing key or None = the message's own) a queue dead-letters to.

    Queue arguments win over policies, key and exchange separately (as in
    RabbitMQ's rabbit_amqqueue_process). Delay queues (message TTL) are skipped:
    expiring into a work queue is their purpose, not a failure.
    """
    arguments = queue.get("arguments")
    policy = queue.get("effective_policy_definition")
    arguments = arguments if isinstance(arguments, dict) else {}
    policy = policy if isinstance(policy, dict) else {}
    exchange = arguments.get("x-dead-letter-exchange", policy.get("dead-letter-exchange"))
    if not isinstance(exchange, str):
        return None
    if "x-message-ttl" in arguments or "message-ttl" in policy:
        return None
    key = arguments.get("x-dead-letter-routing-key", policy.get("dead-letter-routing-key"))
    return exchange, key if isinstance(key, str) else None


def _words(key: str) -> list[str]:
    return key.split(".") if key else []


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: ``*`` is exactly one word, ``#`` zero or more."""
    pattern_words, key_words = _words(pattern), _words(key)
    # reachable[j]: the pattern so far can consume the first j words of the key
    reachable = [True] + [False] * len(key_words)
    for word in pattern_words:
        if word == "#":
            for j in range(1, len(reachable)):
                reachable[j] = reachable[j] or reachable[j - 1]
        else:
            reachable = [False] + [
                reachable[j - 1] and word in ("*", key_words[j - 1])
                for j in range(1, len(reachable))
            ]
    return reachable[-1]


def _binding_matches(exchange_type: str, binding_key: str, routing_key: str | None) -> bool:
    if routing_key is None:  # the original key is unknown: any binding may match
        return True
    if exchange_type == "direct":
        return binding_key == routing_key
    if exchange_type == "topic":
        return topic_matches(binding_key, routing_key)
    return True  # fanout routes to all; headers and plugin types cannot be evaluated here


def routed_queues(
    exchange: str,
    routing_key: str | None,
    lookup: Callable[[str], ExchangeInfo | None],
    _seen: set[str] | None = None,
) -> set[str]:
    """Queues a message with this routing key reaches from ``exchange`` (exchange-to-exchange
    bindings followed, cycles cut). An unknown key over-approximates: every bound queue."""
    if exchange == "":  # the default exchange: the queue named by the key
        return {routing_key} if routing_key else set()
    seen = set() if _seen is None else _seen
    if exchange in seen:
        return set()
    seen.add(exchange)
    info = lookup(exchange)
    if info is None:  # no such exchange: RabbitMQ drops the dead letters
        return set()
    found: set[str] = set()
    for binding in info.bindings:
        if not _binding_matches(info.type, binding.routing_key, routing_key):
            continue
        if binding.destination_type == "queue":
            found.add(binding.destination)
        elif binding.destination_type == "exchange":
            found |= routed_queues(binding.destination, routing_key, lookup, seen)
    return found


def dead_letter_targets(
    queues: Iterable[Mapping[str, Any]], lookup: Callable[[str], ExchangeInfo | None]
) -> frozenset[str]:
    """Existing queues that some queue of the listing dead-letters into."""
    listing = [queue for queue in queues if isinstance(queue.get("name"), str)]
    existing = {queue["name"] for queue in listing}
    cache: dict[str, ExchangeInfo | None] = {}

    def cached(name: str) -> ExchangeInfo | None:
        if name not in cache:
            cache[name] = lookup(name)
        return cache[name]

    targets: set[str] = set()
    for queue in listing:
        route = dead_letter_route(queue)
        if route is not None:
            targets |= routed_queues(*route, cached)
    return frozenset(targets & existing)


# -- management API objects -> plain data ------------------------------------------------


def int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def has_stats(queue: Mapping[str, Any]) -> bool:
    """Whether the listing already has this queue's numbers (not in its first seconds)."""
    return int_or_none(queue.get("messages_ready")) is not None


def ingress_counter(queue: Mapping[str, Any], *, dead_letter_target: bool) -> int | None:
    """Messages that entered the queue so far (see the module docstring for why)."""
    backing = queue.get("backing_queue_status")
    if isinstance(backing, dict) and int_or_none(backing.get("next_seq_id")) is not None:
        return int_or_none(backing["next_seq_id"])
    if dead_letter_target:
        return None  # publish would miss exactly the messages that matter here
    stats = queue.get("message_stats")
    if not isinstance(stats, dict):
        return 0  # no channel ever published into it (yet, since the node started)
    return int_or_none(stats.get("publish", 0))


def queue_stats(
    queue: Mapping[str, Any], *, dead_letter_target: bool, counter_valid: bool = True
) -> QueueStats:
    return QueueStats(
        name=str(queue["name"]),
        exists=True,
        ready=int_or_none(queue.get("messages_ready")),
        unacked=int_or_none(queue.get("messages_unacknowledged")),
        consumers=int_or_none(queue.get("consumers")),
        published_total=(
            ingress_counter(queue, dead_letter_target=dead_letter_target) if counter_valid else None
        ),
        oldest_published=head_timestamp(queue),
    )


def head_timestamp(queue: Mapping[str, Any]) -> float | None:
    """When the queue's first ready message was published (its AMQP timestamp property,
    Unix seconds), or None: no such message, or one without a timestamp."""
    stamp = queue.get("head_message_timestamp")
    if isinstance(stamp, bool) or not isinstance(stamp, int | float) or not 0 < stamp < INFINITY:
        return None  # null, left out (quorum queues), or "" (older servers): no timestamp
    return float(stamp)


def memory_facts(nodes: Any) -> dict[str, float]:
    """Memory of the running node nearest its high watermark.

    A memory alarm on any node blocks publishers in the whole cluster, so the
    tightest node is the one that matters.
    """
    candidates = []
    for node in nodes if isinstance(nodes, list) else []:
        if not isinstance(node, dict) or node.get("running") is False:
            continue
        used, limit = int_or_none(node.get("mem_used")), int_or_none(node.get("mem_limit"))
        if used is not None and limit:
            candidates.append((used / limit, used, limit))
    if not candidates:
        return {}
    _, used, limit = max(candidates)
    return {
        "celery_broker_memory_used_bytes": float(used),
        "celery_broker_memory_limit_bytes": float(limit),
    }


# -- the HTTP client -----------------------------------------------------------------------


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect would carry the Authorization header to wherever it points."""

    def redirect_request(self, *_: Any, **__: Any) -> None:
        return None


class ManagementClient:
    """GETs JSON from the RabbitMQ management API with basic auth and a deadline.

    Credentials never go into a URL: urllib's errors and tracebacks mention
    the URL, and those end up in logs.
    """

    def __init__(self, management_url: str, *, vhost: str, username: str, password: str) -> None:
        parts = urlsplit(management_url)
        username, password = url_credentials(management_url) or (username, password)
        host = parts.netloc.rpartition("@")[2]
        path = parts.path if parts.path.endswith("/") else parts.path + "/"
        self.base = f"{parts.scheme or 'http'}://{host}{path}"
        self.vhost = quote(vhost, safe="")
        self._headers = {
            "Authorization": basic_auth(username, password),
            "Accept": "application/json",
        }
        self._opener = urllib.request.build_opener(_NoRedirects())
        self.columns_supported = True

    def get(self, path: str, deadline: Deadline) -> Any:
        request = urllib.request.Request(self.base + path, headers=self._headers)
        shown = path.partition("?")[0]
        try:
            with self._opener.open(request, timeout=deadline.left()) as response:
                chunks = []
                while chunk := response.read(65536):
                    chunks.append(chunk)
                    deadline.left()
        except urllib.error.HTTPError as error:
            error.close()
            raise ManagementError(
                f"GET /{shown} answered HTTP {error.code}", status=error.code
            ) from None
        except urllib.error.URLError as error:
            raise ManagementError(f"GET /{shown} failed: {error_text(error.reason)}") from None
        except (OSError, TimeoutError) as error:
            raise ManagementError(f"GET /{shown} failed: {error_text(error)}") from None
        try:
            return json.loads(b"".join(chunks))
        except ValueError:
            raise ManagementError(f"GET /{shown} did not answer JSON") from None

    def queues(
        self, deadline: Deadline, columns: Sequence[str] = QUEUE_COLUMNS
    ) -> list[dict[str, Any]]:
        """Every queue of the vhost in one request (full objects if ``columns`` is not
        understood)."""
        path = f"api/queues/{self.vhost}"
        if self.columns_supported:
            listing = self.get(f"{path}?columns={','.join(columns)}", deadline)
            if isinstance(listing, list) and all(
                isinstance(item, dict) and "name" in item for item in listing
            ):
                return listing
            self.columns_supported = False
        listing = self.get(path, deadline)
        if not isinstance(listing, list):
            raise ManagementError(f"GET /{path} did not answer a list")
        return [item for item in listing if isinstance(item, dict) and "name" in item]

    def exchange(self, name: str, deadline: Deadline) -> ExchangeInfo | None:
        """Type and outgoing bindings of an exchange; None if it does not exist."""
        path = f"api/exchanges/{self.vhost}/{quote(name, safe='')}"
        try:
            details = self.get(path, deadline)
            bindings = self.get(f"{path}/bindings/source", deadline)
        except ManagementError as error:
            if error.status == 404:
                return None
            raise
        kind = details.get("type") if isinstance(details, dict) else None
        return ExchangeInfo(str(kind or ""), parse_bindings(bindings))


def error_text(error: object) -> str:
    return f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
