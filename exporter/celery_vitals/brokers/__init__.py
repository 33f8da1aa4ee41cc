"""What celery-vitals knows of a broker independently of any command.

``identity`` names the broker a process talks to: every series the exporter and
the agents export carries it as the label ``broker``, and the alert rules join
the exporter's view of a queue (its depth) with the workers' view (tasks taken
from it, workers up) on that label, wherever Prometheus puts the targets: one
scrape job or several, under any job names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

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
