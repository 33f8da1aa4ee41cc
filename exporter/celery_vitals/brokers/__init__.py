"""What celery-vitals knows of a broker independently of any command.

``for_url`` (``for_config``) gives the ``Broker`` of a broker URL: what its
transport can do (events, remote control, persistence...) and the factories of
its queue probe, its dead-letter store and its event-stream hooks. Nothing
outside this folder tests the transport: it asks the broker object. Each
broker's knowledge lives in its own folder (redis/, amqp/, sqs/), the only
place that imports its client library or touches kombu's privates.

``identity`` names the broker a process talks to: every series the exporter and
the agents export carries it as the label ``broker``, and the alert rules join
the exporter's view of a queue (its depth) with the workers' view (tasks taken
from it, workers up) on that label, wherever Prometheus puts the targets: one
scrape job or several, under any job names.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from celery_vitals.brokers.dead_letters import DeadLetterStore
    from celery_vitals.brokers.probe import QueueProbe
    from celery_vitals.config import Config

#: How an event-stream hook hands a message on: (its decoder, its raw body).
Deliver = Callable[[Callable[[Any], Any], Any], None]

#: The label every series of the exporter and of the agents carries.
BROKER_LABEL = "broker"
#: Overrides the identity, in the exporter (also ``--broker-name``) and in the agents alike.
BROKER_NAME_ENV = "CELERY_VITALS_BROKER_NAME"
MAX_NAME_LENGTH = 200

#: scheme -> (the transport's name in the identity, its default port)
_SCHEMES: dict[str, tuple[str, int | None]] = {
    "redis": ("redis", 6379),
    "rediss": ("redis", 6379),
    "sentinel": ("sentinel", 26379),
    "amqp": ("amqp", 5672),
    "pyamqp": ("amqp", 5672),
    "amqps": ("amqp", 5671),
    "sqs": ("sqs", None),
}


def identity(url: str, transport_options: Mapping[str, Any] | None = None) -> str:
    """The broker's name as both sides compute it: ``redis://host:6379/0``,
    ``amqp://host:5672/vhost``, ``sqs://region/prefix``; never a user name or password.

    The first URL of a failover list; the scheme as its transport (``pyamqp``
    and ``amqps`` are ``amqp``, ``rediss`` is ``redis``), the host lower-cased,
    the transport's default port filled in, Redis' database number (0 when not
    given), RabbitMQ's virtual host (``/`` when not given). SQS has no host:
    the region and the queue name prefix of the transport options instead.
    """
    options = transport_options or {}
    first = url.split(";", 1)[0].strip()
    if not first:
        return "unknown"
    try:
        parts = urlsplit(first)
        port = parts.port
    except ValueError:
        return "unknown"
    scheme = parts.scheme.split("+")[-1].lower()
    transport, default_port = _SCHEMES.get(scheme, (scheme or "unknown", None))
    host = (parts.hostname or "").lower()
    if transport == "sqs":
        # kombu's SQS transport defaults to us-east-1, as here
        region = str(options.get("region") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
        where = f"{host}:{port}" if host and port else host
        prefix = str(options.get("queue_name_prefix") or "")
        return _bounded(f"sqs://{where or region}/{prefix}")
    if ":" in host:  # IPv6
        host = f"[{host}]"
    address = f"{host or 'localhost'}:{port or default_port or ''}".rstrip(":")
    path = unquote(parts.path[1:]) if parts.path.startswith("/") else unquote(parts.path)
    if transport in ("redis", "sentinel"):
        database = path.strip("/") or str(options.get("db", 0) if transport == "redis" else 0)
        return _bounded(f"{transport}://{address}/{database}")
    return _bounded(f"{transport}://{address}/{path or '/'}")


def _bounded(text: str) -> str:
    return text[:MAX_NAME_LENGTH]


def check_name(raw: str) -> str:
    """A user's broker name (``--broker-name``): ValueError with the reason when unusable."""
    name = raw.strip()
    if not name or len(name) > MAX_NAME_LENGTH or not name.isprintable():
        raise ValueError(
            f"expected a name of 1 to {MAX_NAME_LENGTH} printable characters, got {raw!r}"
        )
    return name


def broker_name(
    url: str,
    transport_options: Mapping[str, Any] | None = None,
    override: str | None = None,
) -> str:
    """The value of the ``broker`` label: ``override`` when given, else ``identity``."""
    return check_name(override) if override else identity(url, transport_options)


class Broker(Protocol):
    """What one kind of broker (its kombu transport) can do, and its parts."""

    #: "redis", "amqp" or "sqs": the ``transport`` of celery_broker_info.
    name: str
    #: Celery's event stream (and ``enable_events``) works on it.
    supports_events: bool
    #: Workers can be asked (ping, stats, active_queues...): remote control broadcasts.
    supports_remote_control: bool
    #: The exporter samples its dead-letter queues (celery_dlq_messages) without harm.
    samples_dead_letters: bool
    #: The broker reports its server version (celery_broker_info's version).
    tells_version: bool
    #: How messages survive a broker restart, as the doctor checks it: "disk" (the
    #: probe's ``persistence``: Redis RDB and AOF), "durable-queues" (each queue's
    #: durability, from the RabbitMQ management API), "retention" (kept until deleted).
    persistence: str
    #: Seconds after which kombu redelivers an unacknowledged message unless
    #: ``visibility_timeout`` says otherwise (Redis); None: the transport has no such
    #: redelivery the doctor checks.
    unacked_redelivery_default: float | None
    #: Publishers with the agent also set the AMQP ``timestamp`` property (whole seconds)
    #: beside the stamp's header: RabbitMQ's management API reports it as a queue's
    #: ``head_message_timestamp``. Other transports would only carry it in the body.
    stamps_timestamp_property: bool

    def discovers_queues(self, config: Config) -> bool:
        """Whether the probe finds queues nobody named (with this configuration)."""
        ...

    def missing_requirement(self) -> str | None:
        """What must be installed for this broker and is not (the fix included)."""
        ...

    def secrets(self, transport_options: Mapping[str, Any]) -> list[str]:
        """Secrets beside the URL's password that the logs must not show."""
        ...

    def probe(self, config: Config) -> QueueProbe:
        """The queue probe (connects lazily)."""
        ...

    def dead_letters(self, config: Config) -> DeadLetterStore:
        """The dead-letter store (connects at once; raises when it cannot)."""
        ...

    def event_callback(
        self, connection: Any, channel: Any, deliver: Deliver, drain_timeout: float
    ) -> Callable[[Any], None] | None:
        """Installs the event stream's hooks on a connection consuming the event queue and
        returns the consumer callback; None: kombu's own Message and decoding apply."""
        ...


#: transport name -> the module that defines its ``BROKER``
_MODULES = {
    "redis": "celery_vitals.brokers.redis",
    "amqp": "celery_vitals.brokers.amqp",
    "sqs": "celery_vitals.brokers.sqs",
}


def transport_name(url: str) -> str:
    """redis, amqp or sqs: the transport of a broker URL (amqp unless it says otherwise)."""
    scheme = urlsplit(url).scheme.split("+")[-1]
    if scheme == "sqs":
        return "sqs"
    return "redis" if scheme in ("redis", "rediss", "sentinel") else "amqp"


def by_name(name: str) -> Broker:
    """The broker of a transport name (redis, amqp, sqs)."""
    broker: Broker = importlib.import_module(_MODULES[name]).BROKER
    return broker


def for_url(url: str) -> Broker:
    """The broker a URL names."""
    return by_name(transport_name(url))


def for_config(config: Config) -> Broker:
    """The configured broker."""
    return for_url(config.broker_url)


def for_driver(driver_type: str) -> Broker | None:
    """The broker of a kombu connection's ``transport.driver_type``; None for kombu's
    other transports (memory://, in the unit tests)."""
    return by_name(driver_type) if driver_type in _MODULES else None
