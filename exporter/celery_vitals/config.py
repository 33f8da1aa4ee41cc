"""Configuration: typed, immutable, built once from the command line and environment.

Every option is validated here and all problems are reported together in
one line, each naming the option, so a bad deployment fails at start with
a message an operator can act on. The broker password never appears in it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlsplit

from celery_vitals.brokers import Broker, broker_name, check_name, for_url
from celery_vitals.credentials import safe_url, url_passwords

if TYPE_CHECKING:
    from celery_vitals.webconfig import WebConfig

BROKER_SCHEMES = ("redis", "rediss", "sentinel", "amqp", "amqps", "pyamqp", "sqs")
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
    broker_name: str | None = None  # the ``broker`` label; None: brokers.identity(broker_url)
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
        default_factory=lambda: MappingProxyType({})
    )
    web_config: WebConfig | None = None

    @property
    def broker_label(self) -> str:
        """The value of the ``broker`` label on every series this process exports."""
        return broker_name(self.broker_url, self.broker_transport_options, self.broker_name)

    @property
    def safe_broker_url(self) -> str:
        return safe_url(self.broker_url)

    @property
    def secrets(self) -> list[str]:
        """What the logs must never show."""
        found = url_passwords(self.broker_url) + url_passwords(self.rabbitmq_management_url or "")
        return found + self.broker.secrets(self.broker_transport_options)

    @property
    def broker(self) -> Broker:
        """What the broker's transport can do, and its probe, dead letters and hooks."""
        return for_url(self.broker_url)


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
        raise ValueError(
            f"must be a {'non-negative' if allow_zero else 'positive'} "
            f"number of seconds, got {raw!r}"
        )
    return value


def _choice(choices: Sequence[str]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def parse_buckets(raw: str) -> tuple[float, ...]:
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


def parse_listen_address(raw: str) -> tuple[str, int]:
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
        raise ValueError(
            f"unsupported scheme {parts.scheme!r} in {safe_url(url)!r}; "
            f"expected one of {', '.join(BROKER_SCHEMES)}"
        )
    return url


def _names(values: Sequence[str] | str) -> tuple[str, ...]:
    """Queue names or glob patterns, repeatable; in the environment, space-separated."""
    names = values.split() if isinstance(values, str) else [str(v) for v in values]
    for name in names:
        if not name.strip() or len(name) > 200:
            raise ValueError(
                f"expected a queue name (or glob) of 1 to 200 characters, got {name!r}"
            )
    return tuple(dict.fromkeys(name.strip() for name in names))


def http_url(raw: str, *, assume_http: bool = False) -> str:
    """An http(s) URL with a host, checked (ValueError with the reason, no password);
    with ``assume_http``, ``host:9808`` is ``http://host:9808``."""
    given = raw.strip()
    url = given if "://" in given or not assume_http else "http://" + given
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # raises ValueError on a non-numeric port
    except ValueError:
        raise ValueError(f"not a valid URL: {safe_url(given)!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected http(s)://HOST:PORT, got {safe_url(given)!r}")
    return url


def _http_url(raw: str) -> str | None:
    return http_url(raw) if raw.strip() else None


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


# -- the options: each declared once --------------------------------------------------
# The CLI builds its flags from OPTIONS (cli.with_options), build() parses with them, and
# the options table of docs/install.md is written from them (scripts/generate.sh).
# A new option is one entry here (and a field of Config).

Kind = Literal["value", "multiple", "switch"]


@dataclass(frozen=True)
class Option:
    flag: str  # "--max-task-age"; a switch is "--on/--no-on"
    metavar: str
    parse: Callable[[Any], Any]  # raw value -> typed value; ValueError with the reason
    help: str  # --help
    readme: str = ""  # the docs' meaning (markdown, docs/install.md), when it says more than help
    default: str | None = None  # raw default; None: the Config field's own default
    kind: Kind = "value"  # multiple: repeatable (space-separated in the environment)
    fields: tuple[str, ...] = ()  # the Config fields it sets; default: its own name

    @property
    def name(self) -> str:
        """The flag that turns it on: ``--event-stream`` of ``--event-stream/--no-event-stream``."""
        return self.flag.partition("/")[0]

    @property
    def key(self) -> str:
        """The name click gives the parameter, and the key build() reads."""
        return self.name.lstrip("-").replace("-", "_")

    @property
    def envvar(self) -> str:
        return "CELERY_VITALS_" + self.key.upper()

    @property
    def targets(self) -> tuple[str, ...]:
        return self.fields or (self.key,)

    def raw_default(self) -> Any:
        """What the option is when not given: a string (or bool for a switch), or None."""
        if self.default is not None or self.kind == "multiple":
            return self.default
        value = _FIELD_DEFAULTS.get(self.targets[0])
        if self.kind == "switch" or value is None:
            return value
        return _text(value)


def _text(value: object) -> str:
    """A default as a user writes it: 21600, not 21600.0."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _fields_defaults() -> dict[str, Any]:
    defaults = {}
    for item in dataclasses.fields(Config):
        if item.default is not dataclasses.MISSING:
            defaults[item.name] = item.default
        elif item.default_factory is not dataclasses.MISSING:
            defaults[item.name] = item.default_factory()
    return defaults


_FIELD_DEFAULTS = _fields_defaults()


def _seconds_option(allow_zero: bool = False) -> Callable[[Any], float]:
    return lambda raw: _seconds(str(raw), allow_zero=allow_zero)


def _count(raw: Any) -> int:
    return _positive_int(str(raw))


def _zero_or_count(raw: Any) -> int:
    return _count_or_zero(str(raw))


def _switch(raw: Any) -> bool:
    return bool(raw)


OPTIONS: tuple[Option, ...] = (
    Option(
        "--broker-url",
        "URL",
        lambda raw: _broker_url(str(raw or "")),
        "Celery broker URL, e.g. redis://host:6379/0, amqp://user:pw@host// or sqs://.",
        "Celery broker URL: `redis://`, `rediss://`, `sentinel://`, `amqp://`, `amqps://`, "
        "`pyamqp://`, `sqs://` (see [Amazon SQS](brokers.md#amazon-sqs)); failover lists with `;`",
    ),
    Option(
        "--broker-transport-option",
        "KEY=VALUE",
        _transport_options,
        "Kombu transport option KEY=VALUE, repeatable; VALUE is parsed as JSON when it is "
        "JSON (visibility_timeout=3600, global_keyprefix=prod:). In the environment, "
        "separate pairs with spaces.",
        "kombu transport option, repeatable (space-separated in the variable); VALUE is "
        "JSON when it parses as JSON, e.g. `global_keyprefix=prod:`, "
        "`visibility_timeout=3600`",
        kind="multiple",
        fields=("broker_transport_options",),
    ),
    Option(
        "--broker-name",
        "NAME",
        lambda raw: check_name(str(raw)) if raw else None,
        "The broker's name in the `broker` label of every series (the agents read "
        "CELERY_VITALS_BROKER_NAME too); default: transport://host:port/vhost-or-db from "
        "the broker URL, without credentials.",
        "the value of the `broker` label on every series; set the same in the exporter and "
        "the workers' agents when they reach the broker under different host names (the "
        "rules join them on it). Default: `transport://host:port/db-or-vhost` from the "
        "broker URL, without credentials (see [setups.md](setups.md))",
    ),
    Option(
        "--listen-address",
        "HOST:PORT",
        parse_listen_address,
        "Where to serve /metrics, /healthz and /readyz.",
        "HTTP address (`[::]:9808` for IPv6)",
        default="0.0.0.0:9808",
        fields=("listen_host", "listen_port"),
    ),
    Option(
        "--log-level",
        "LEVEL",
        _choice(LOG_LEVELS),
        f"One of {', '.join(LOG_LEVELS)}.",
        ", ".join(f"`{level}`" for level in LOG_LEVELS),
    ),
    Option(
        "--log-format",
        "FORMAT",
        _choice(LOG_FORMATS),
        f"One of {', '.join(LOG_FORMATS)}.",
        "`text` or `json` (one object per line)",
    ),
    Option(
        "--runtime-buckets",
        "SECONDS,...",
        parse_buckets,
        "Upper bounds of celery_task_runtime_seconds.",
        "buckets of `celery_task_runtime_seconds`",
        default=DEFAULT_RUNTIME_BUCKETS,
    ),
    Option(
        "--wait-buckets",
        "SECONDS,...",
        parse_buckets,
        "Upper bounds of the queue-wait and prefetch-wait histograms.",
        "buckets of the queue-wait and prefetch-wait histograms",
        default=DEFAULT_WAIT_BUCKETS,
    ),
    Option(
        "--max-tracked-tasks",
        "N",
        _count,
        "Most unfinished tasks remembered by uuid; the oldest is evicted beyond it.",
        "unfinished tasks remembered by uuid (to name events that carry only a uuid); the "
        "oldest is evicted beyond it",
    ),
    Option(
        "--max-task-age",
        "SECONDS",
        _seconds_option(),
        "How long an unfinished task is remembered before it is evicted.",
        "an unfinished task is forgotten after this long (raise it for long ETAs)",
    ),
    Option(
        "--worker-timeout",
        "SECONDS",
        _seconds_option(),
        "Silence after which a worker is down (celery_worker_up 0).",
        "no heartbeat for this long: `celery_worker_up` 0",
    ),
    Option(
        "--worker-purge-after",
        "SECONDS",
        _seconds_option(),
        "Silence after which a worker's series are removed.",
        "no heartbeat for this long: the worker's series are removed",
    ),
    Option(
        "--max-task-names",
        "N",
        _count,
        "Cap on distinct `name` values.",
        "distinct `name` values before new ones become `other`",
    ),
    Option(
        "--max-queue-names",
        "N",
        _count,
        "Cap on distinct `queue_name` values.",
        "distinct `queue_name` values",
    ),
    Option(
        "--max-exception-names",
        "N",
        _count,
        "Cap on distinct `exception` values.",
        "distinct `exception` values",
    ),
    Option(
        "--max-workers",
        "N",
        _count,
        "Cap on distinct `hostname` values.",
        "distinct `hostname` values (a purged worker frees its slot)",
    ),
    Option(
        "--max-label-length",
        "N",
        _count,
        "Longer label values become `other`.",
        "longer label values become `other`",
    ),
    Option(
        "--default-queue",
        "NAME",
        str,
        "queue_name of tasks whose queue no task-sent event told.",
        "`queue_name` of a task whose queue no task-sent event told",
    ),
    Option(
        "--task-hostname-label/--no-task-hostname-label",
        "",
        _switch,
        "Add the worker hostname as a label on task metrics (one series per worker).",
        "add the worker's `hostname` to task metrics (one series per worker: beware on Kubernetes)",
        kind="switch",
    ),
    Option(
        "--event-stream/--no-event-stream",
        "",
        _switch,
        "Consume Celery's event stream (task and worker metrics). Off when the "
        "celery-vitals agent runs in every worker and owns those metrics: the exporter "
        "then polls queues, dead-letter queues and the broker only, and asks no worker "
        "for events.",
        "consume Celery's event stream; turn it off when the "
        "[agent](agent.md) runs in every worker and owns the task and "
        "worker metrics: the exporter then polls queues, DLQs and the broker only, sends "
        'no `enable_events`, and `/readyz` means "the last broker poll succeeded"',
        kind="switch",
    ),
    Option(
        "--enable-events/--no-enable-events",
        "",
        _switch,
        "Periodically ask workers to send task events (celery control enable_events).",
        "periodically broadcast `enable_events` to workers",
        kind="switch",
    ),
    Option(
        "--enable-events-interval",
        "SECONDS",
        _seconds_option(),
        "Time between enable_events broadcasts.",
        "time between those broadcasts",
    ),
    Option(
        "--event-queue-ttl",
        "SECONDS",
        _seconds_option(),
        "Message TTL of the exporter's event queue (RabbitMQ).",
        "message TTL of the exporter's event queue on RabbitMQ",
    ),
    Option(
        "--event-queue-expires",
        "SECONDS",
        _seconds_option(),
        "Idle time after which RabbitMQ deletes the exporter's event queue.",
        "RabbitMQ deletes the exporter's event queue after this long unused",
    ),
    Option(
        "--event-queue-max-length",
        "N",
        _count,
        "Most messages the exporter's event queue holds on RabbitMQ (oldest dropped beyond).",
        "most messages (event batches) that queue holds on RabbitMQ; the oldest are "
        "dropped beyond it, so a stalled exporter cannot fill the broker",
    ),
    Option(
        "--queue",
        "NAME",
        _names,
        "Queue to poll, repeatable (space-separated in the environment); queues found on "
        "the broker and in workers' active_queues are added.",
        "queue to poll, repeatable (space-separated in the variable); queues bound on the "
        "broker, listed by the RabbitMQ management API and consumed by workers "
        "(`active_queues`) are added",
        kind="multiple",
        fields=("queues",),
    ),
    Option(
        "--dlq",
        "NAME",
        _names,
        "Dead-letter queue name or glob, repeatable (space-separated in the environment). "
        "On RabbitMQ with the management API, queues that others dead-letter into are "
        "found without it.",
        "dead-letter queue name or glob (`*.dead`), repeatable; on RabbitMQ with "
        "`--rabbitmq-management-url`, queues that others dead-letter into are found "
        "without it",
        kind="multiple",
        fields=("dlqs",),
    ),
    Option(
        "--queue-poll-interval",
        "SECONDS",
        _seconds_option(allow_zero=True),
        "Time between polls of queue depths and broker health; 0 turns polling off.",
        "time between polls of queue depth and broker health, on a background thread; "
        "`0` turns polling off",
    ),
    Option(
        "--queue-discovery-interval",
        "SECONDS",
        _seconds_option(),
        "Time between looks for new queues (broker bindings, RabbitMQ management, workers).",
        "time between looks for new queues (a broadcast to workers among them)",
    ),
    Option(
        "--dlq-sample",
        "N",
        _zero_or_count,
        "Messages read (never consumed) per dead-letter queue and poll for "
        "celery_dlq_messages; 0 turns it off.",
        "messages read per dead-letter queue and poll, never consumed, for "
        "`celery_dlq_messages{queue_name, name}` (see "
        "[Dead-letter triage](dlq.md)); `0` turns it off",
    ),
    Option(
        "--probe-timeout",
        "SECONDS",
        _seconds_option(),
        "Longest a single broker poll may take.",
        "longest one broker poll may take",
    ),
    Option(
        "--rabbitmq-management-url",
        "URL",
        lambda raw: _http_url(str(raw or "")),
        "RabbitMQ management API, e.g. http://user:pw@rabbit:15672/, for unacked counts, "
        "publish counters and dead-letter routes.",
        "e.g. `http://user:pw@rabbit:15672/`: unacked counts, publish counters (DLQ "
        "ingress) and dead-letter routes; without credentials the broker URL's are used",
    ),
    Option(
        "--web-config-file",
        "PATH",
        lambda raw: _web_config(str(raw or "")),
        "TLS and basic auth for the HTTP endpoint: a Prometheus exporter web config file "
        "(tls_server_config, basic_auth_users with bcrypt hashes).",
        "TLS and basic auth for the HTTP endpoint: a Prometheus exporter web config file "
        "(`tls_server_config`, `basic_auth_users` with bcrypt hashes); see "
        "[Deploy](deploy.md#tls-and-basic-auth---web-config-file)",
        fields=("web_config",),
    ),
)

BY_FLAG: dict[str, Option] = {option.name: option for option in OPTIONS}


def build(raw: Mapping[str, Any]) -> Config:
    """A Config from raw option values (CLI or environment, keyed as click names them,
    absent or None for the default); raises ConfigError naming every bad one."""
    c = _Collector()
    values: dict[str, Any] = {}
    for option in OPTIONS:
        value = raw.get(option.key)
        if value is None:
            value = option.raw_default()
        if value is None:
            value = () if option.kind == "multiple" else ""
        fallback = tuple(_FIELD_DEFAULTS.get(name, "") for name in option.targets)
        parsed = c.parse(
            option.name, value, option.parse, fallback if len(fallback) > 1 else fallback[0]
        )
        values.update(
            zip(option.targets, parsed if len(option.targets) > 1 else (parsed,), strict=True)
        )
    config = Config(**values)
    broker = config.broker
    missing = broker.missing_requirement()
    if missing is not None:
        c.problems.append(f"--broker-url: {missing}")
    if not broker.supports_events:  # SQS: no events, no remote control; the agents count
        config = replace(config, event_stream=False, enable_events=False)
        if config.queue_poll_interval == 0:
            c.problems.append(
                "--queue-poll-interval: must be above 0 on SQS (no event "
                "stream there: polling is all the exporter does)"
            )
    elif not config.event_stream and config.queue_poll_interval == 0:
        c.problems.append(
            "--no-event-stream: needs queue polling (--queue-poll-interval "
            "above 0), or the exporter has nothing to do"
        )
    if not config.default_queue:
        c.problems.append("--default-queue: must not be empty")
    if config.worker_purge_after < config.worker_timeout:
        c.problems.append(
            f"--worker-purge-after: must be at least --worker-timeout "
            f"({config.worker_purge_after:g}s < {config.worker_timeout:g}s)"
        )
    if c.problems:
        raise ConfigError(c.problems)
    return config


# -- the options table of docs/install.md --------------------------------------------------


def _cell(option: Option) -> str:
    if option.kind == "switch":
        on, off = option.flag.split("/")
        return f"`{on}` / `{off}`"
    return f"`{option.flag} {option.metavar}`"


def _default_cell(option: Option) -> str:
    value = option.raw_default()
    if option.kind == "switch":
        return "on" if value else "off"
    if value is None:
        return "(required)" if option.key == "broker_url" else "none"
    return f"`{value}`"


def options_table() -> str:
    """docs/install.md's table of options (markdown), generated from OPTIONS."""
    lines = ["| option | environment variable | default | meaning |", "|---|---|---|---|"]
    lines += [
        f"| {_cell(o)} | `{o.envvar}` | {_default_cell(o)} | {o.readme or o.help} |"
        for o in OPTIONS
    ]
    return "\n".join(lines) + "\n"
