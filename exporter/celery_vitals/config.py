"""Configuration: typed, immutable, built once from the command line and environment.

Every option is validated here and all problems are reported together in
one line, each naming the option, so a bad deployment fails at start with
a message an operator can act on. The broker password never appears in it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from celery_vitals.logs import safe_url, url_passwords

if TYPE_CHECKING:
    from celery_vitals.webconfig import WebConfig

BROKER_SCHEMES = ("redis", "rediss", "sentinel", "amqp", "amqps", "pyamqp", "sqs")
#: Where AWS credentials may come from besides the URL: what the logs must not show either
AWS_SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
#: Keys of kombu's SQS transport options (predefined_queues entries) that hold secrets
SECRET_OPTION_KEYS = ("secret_access_key", "session_token")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")

DEFAULT_RUNTIME_BUCKETS = "0.01,0.05,0.1,0.25,0.5,1,2.5,5,10,30,60,300,900,3600"
DEFAULT_WAIT_BUCKETS = "0.01,0.05,0.1,0.5,1,5,10,30,60,300,900,3600"


class ConfigError(ValueError):
    """All option problems, one per entry; str() joins them on one line."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class Config:
    broker_url: str
    listen_host: str = "0.0.0.0"
    listen_port: int = 9808
    log_level: str = "info"
    log_format: str = "text"
    runtime_buckets: tuple[float, ...] = ()
    wait_buckets: tuple[float, ...] = ()
    max_tracked_tasks: int = 100_000
    max_task_age: float = 21_600.0
    worker_timeout: float = 30.0
    worker_purge_after: float = 900.0
    max_task_names: int = 500
    max_queue_names: int = 100
    max_exception_names: int = 200
    max_workers: int = 1000
    max_label_length: int = 200
    default_queue: str = "celery"
    task_hostname_label: bool = False
    event_stream: bool = True
    enable_events: bool = True
    enable_events_interval: float = 60.0
    event_queue_ttl: float = 5.0
    event_queue_expires: float = 60.0
    event_queue_max_length: int = 100_000
    queues: tuple[str, ...] = ()
    dlqs: tuple[str, ...] = ()
    queue_poll_interval: float = 15.0
    queue_discovery_interval: float = 300.0
    probe_timeout: float = 5.0
    dlq_sample: int = 1000
    rabbitmq_management_url: str | None = None
    broker_transport_options: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({}))
    web_config: WebConfig | None = None

    @property
    def safe_broker_url(self) -> str:
        return safe_url(self.broker_url)

    @property
    def secrets(self) -> list[str]:
        """What the logs must never show."""
        found = url_passwords(self.broker_url) + url_passwords(self.rabbitmq_management_url or "")
        if self.transport == "sqs":
            found += _option_secrets(self.broker_transport_options)
            found += [os.environ[name] for name in AWS_SECRET_VARIABLES if os.environ.get(name)]
        return found

    @property
    def transport(self) -> str:
        """redis, amqp or sqs: which queue probe applies."""
        scheme = urlsplit(self.broker_url).scheme.split("+")[-1]
        if scheme == "sqs":
            return "sqs"
        return "redis" if scheme in ("redis", "rediss", "sentinel") else "amqp"


def _option_secrets(value: Any) -> list[str]:
    """Secret values anywhere in transport options (predefined_queues credentials)."""
    if isinstance(value, Mapping):
        return [secret for key, item in value.items()
                for secret in ([str(item)] if key in SECRET_OPTION_KEYS and item
                               else _option_secrets(item))]
    return []


T = TypeVar("T")


class _Collector:
    """Parses raw option values, remembering every problem instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def parse(self, option: str, raw: Any, parser: Callable[[Any], T], fallback: T) -> T:
        try:
            return parser(raw)
        except ValueError as error:
            self.problems.append(f"{option}: {error}")
            return fallback


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"expected a whole number, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def _count_or_zero(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"expected a whole number, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"must be 0 or more, got {value}")
    return value


def _seconds(raw: str, *, allow_zero: bool = False) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {raw!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"must be a {'non-negative' if allow_zero else 'positive'} "
                         f"number of seconds, got {raw!r}")
    return value


def _choice(choices: Sequence[str]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {raw!r}")
        return value
    return parse


def _buckets(raw: str) -> tuple[float, ...]:
    parts = [part.strip() for part in raw.split(",") if part.strip()]
    if not parts:
        raise ValueError("expected comma-separated bucket upper bounds, got nothing")
    try:
        values = [float(part) for part in parts]
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {raw!r}") from None
    if any(not math.isfinite(v) or v <= 0 for v in values):
        raise ValueError(f"bucket bounds must be positive and finite, got {raw!r}")
    if values != sorted(set(values)):
        raise ValueError(f"bucket bounds must be strictly increasing, got {raw!r}")
    return tuple(values)


def _listen_address(raw: str) -> tuple[str, int]:
    host, sep, port_text = raw.strip().rpartition(":")
    if not sep:
        raise ValueError(f"expected HOST:PORT, got {raw!r}")
    host = host.strip("[]") or "0.0.0.0"
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"expected a port number after ':', got {raw!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be between 0 and 65535, got {port}")
    return host, port


def _broker_url(raw: str) -> str:
    url = raw.strip()
    if not url:
        raise ValueError("is required (or set CELERY_VITALS_BROKER_URL)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # raises ValueError on a non-numeric port
    except ValueError:
        raise ValueError(f"not a valid URL: {safe_url(url)!r}") from None
    scheme = parts.scheme.split("+")[-1]
    if scheme not in BROKER_SCHEMES:
        raise ValueError(f"unsupported scheme {parts.scheme!r} in {safe_url(url)!r}; "
                         f"expected one of {', '.join(BROKER_SCHEMES)}")
    return url


def _names(values: Sequence[str] | str) -> tuple[str, ...]:
    """Queue names or glob patterns, repeatable; in the environment, space-separated."""
    names = values.split() if isinstance(values, str) else [str(v) for v in values]
    for name in names:
        if not name.strip() or len(name) > 200:
            raise ValueError(f"expected a queue name (or glob) of 1 to 200 characters, "
                             f"got {name!r}")
    return tuple(dict.fromkeys(name.strip() for name in names))


def _http_url(raw: str) -> str | None:
    url = raw.strip()
    if not url:
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # raises ValueError on a non-numeric port
    except ValueError:
        raise ValueError(f"not a valid URL: {safe_url(url)!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http(s):// URL, got {safe_url(url)!r}")
    return url


def _transport_options(pairs: Sequence[str]) -> Mapping[str, Any]:
    if isinstance(pairs, str):  # one pair given programmatically
        pairs = pairs.split()
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        try:
            value: Any = json.loads(text)  # numbers, booleans, lists, objects
        except ValueError:
            value = text  # a plain string
        options[key.strip()] = value
    return MappingProxyType(options)


def _web_config(raw: str) -> WebConfig | None:
    """TLS and basic auth, read and checked now (certificate loaded, hashes parsed)."""
    if not raw.strip():
        return None
    from celery_vitals.webconfig import load  # bcrypt and ssl: only when used

    return load(raw.strip())


def build(raw: Mapping[str, Any]) -> Config:
    """A Config from raw option strings (CLI or environment); raises ConfigError."""
    c = _Collector()
    host, port = c.parse("--listen-address", raw.get("listen_address", "0.0.0.0:9808"),
                         _listen_address, ("0.0.0.0", 9808))

    def seconds(option: str, key: str, default: float, allow_zero: bool = False) -> float:
        return c.parse(option, str(raw.get(key, default)),
                       lambda text: _seconds(text, allow_zero=allow_zero), default)

    def count(option: str, key: str, default: int) -> int:
        return c.parse(option, str(raw.get(key, default)), _positive_int, default)

    defaults = Config(broker_url="")
    config = Config(
        broker_url=c.parse("--broker-url", raw.get("broker_url") or "", _broker_url, ""),
        listen_host=host,
        listen_port=port,
        log_level=c.parse("--log-level", raw.get("log_level", "info"), _choice(LOG_LEVELS),
                          "info"),
        log_format=c.parse("--log-format", raw.get("log_format", "text"),
                           _choice(LOG_FORMATS), "text"),
        runtime_buckets=c.parse("--runtime-buckets",
                                raw.get("runtime_buckets", DEFAULT_RUNTIME_BUCKETS), _buckets, ()),
        wait_buckets=c.parse("--wait-buckets", raw.get("wait_buckets", DEFAULT_WAIT_BUCKETS),
                             _buckets, ()),
        max_tracked_tasks=count("--max-tracked-tasks", "max_tracked_tasks",
                                defaults.max_tracked_tasks),
        max_task_age=seconds("--max-task-age", "max_task_age", defaults.max_task_age),
        worker_timeout=seconds("--worker-timeout", "worker_timeout", defaults.worker_timeout),
        worker_purge_after=seconds("--worker-purge-after", "worker_purge_after",
                                   defaults.worker_purge_after),
        max_task_names=count("--max-task-names", "max_task_names", defaults.max_task_names),
        max_queue_names=count("--max-queue-names", "max_queue_names",
                              defaults.max_queue_names),
        max_exception_names=count("--max-exception-names", "max_exception_names",
                                  defaults.max_exception_names),
        max_workers=count("--max-workers", "max_workers", defaults.max_workers),
        max_label_length=count("--max-label-length", "max_label_length",
                               defaults.max_label_length),
        default_queue=str(raw.get("default_queue", defaults.default_queue)),
        task_hostname_label=bool(raw.get("task_hostname_label", False)),
        event_stream=bool(raw.get("event_stream", True)),
        enable_events=bool(raw.get("enable_events", True)),
        enable_events_interval=seconds("--enable-events-interval", "enable_events_interval",
                                       defaults.enable_events_interval),
        event_queue_ttl=seconds("--event-queue-ttl", "event_queue_ttl",
                                defaults.event_queue_ttl),
        event_queue_expires=seconds("--event-queue-expires", "event_queue_expires",
                                    defaults.event_queue_expires),
        event_queue_max_length=count("--event-queue-max-length", "event_queue_max_length",
                                     defaults.event_queue_max_length),
        queues=c.parse("--queue", raw.get("queue", ()), _names, ()),
        dlqs=c.parse("--dlq", raw.get("dlq", ()), _names, ()),
        queue_poll_interval=seconds("--queue-poll-interval", "queue_poll_interval",
                                    defaults.queue_poll_interval, allow_zero=True),
        queue_discovery_interval=seconds("--queue-discovery-interval",
                                         "queue_discovery_interval",
                                         defaults.queue_discovery_interval),
        probe_timeout=seconds("--probe-timeout", "probe_timeout", defaults.probe_timeout),
        dlq_sample=c.parse("--dlq-sample", str(raw.get("dlq_sample", defaults.dlq_sample)),
                           _count_or_zero, defaults.dlq_sample),
        rabbitmq_management_url=c.parse("--rabbitmq-management-url",
                                        raw.get("rabbitmq_management_url") or "",
                                        _http_url, None),
        broker_transport_options=c.parse("--broker-transport-option",
                                         raw.get("broker_transport_option", ()),
                                         _transport_options, MappingProxyType({})),
        web_config=c.parse("--web-config-file", str(raw.get("web_config_file") or ""),
                           _web_config, None),
    )
    if config.transport == "sqs":  # no events, no remote control on SQS: the agents count
        config = replace(config, event_stream=False, enable_events=False)
        if importlib.util.find_spec("boto3") is None:
            c.problems.append("--broker-url: sqs:// needs boto3: pip install "
                              "'celery-vitals[sqs]'")
        if config.queue_poll_interval == 0:
            c.problems.append("--queue-poll-interval: must be above 0 on SQS (no event "
                              "stream there: polling is all the exporter does)")
    elif not config.event_stream and config.queue_poll_interval == 0:
        c.problems.append("--no-event-stream: needs queue polling (--queue-poll-interval "
                          "above 0), or the exporter has nothing to do")
    if not config.default_queue:
        c.problems.append("--default-queue: must not be empty")
    if config.worker_purge_after < config.worker_timeout:
        c.problems.append(
            f"--worker-purge-after: must be at least --worker-timeout "
            f"({config.worker_purge_after:g}s < {config.worker_timeout:g}s)")
    if c.problems:
        raise ConfigError(c.problems)
    return config
