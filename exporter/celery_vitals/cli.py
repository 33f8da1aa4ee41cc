"""The ``celery-vitals`` command.

Every option has an environment variable ``CELERY_VITALS_<OPTION>``, so
docker-compose and Helm need no flags. Values are validated together by
``config.build``; a bad value is one line on stderr and exit code 2.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import click
from prometheus_client import CollectorRegistry

from celery_vitals import __version__, logs
from celery_vitals.config import (
    DEFAULT_RUNTIME_BUCKETS,
    DEFAULT_WAIT_BUCKETS,
    LOG_FORMATS,
    LOG_LEVELS,
    Config,
    ConfigError,
    build,
)
from celery_vitals.dlq import group as dlq_group
from celery_vitals.rules.command import dashboards_command, rules_command

log = logging.getLogger("celery_vitals")
_DEFAULTS = Config(broker_url="")

# (option, metavar, default, help). The environment variable is derived from the name.
_OPTIONS: list[tuple[str, str, Any, str]] = [
    ("--broker-url", "URL", None,
     "Celery broker URL, e.g. redis://host:6379/0, amqp://user:pw@host// or sqs://."),
    ("--listen-address", "HOST:PORT", "0.0.0.0:9808",
     "Where to serve /metrics, /healthz and /readyz."),
    ("--log-level", "LEVEL", "info", f"One of {', '.join(LOG_LEVELS)}."),
    ("--log-format", "FORMAT", "text", f"One of {', '.join(LOG_FORMATS)}."),
    ("--runtime-buckets", "SECONDS,...", DEFAULT_RUNTIME_BUCKETS,
     "Upper bounds of celery_task_runtime_seconds."),
    ("--wait-buckets", "SECONDS,...", DEFAULT_WAIT_BUCKETS,
     "Upper bounds of the queue-wait and prefetch-wait histograms."),
    ("--max-tracked-tasks", "N", _DEFAULTS.max_tracked_tasks,
     "Most unfinished tasks remembered by uuid; the oldest is evicted beyond it."),
    ("--max-task-age", "SECONDS", _DEFAULTS.max_task_age,
     "How long an unfinished task is remembered before it is evicted."),
    ("--worker-timeout", "SECONDS", _DEFAULTS.worker_timeout,
     "Silence after which a worker is down (celery_worker_up 0)."),
    ("--worker-purge-after", "SECONDS", _DEFAULTS.worker_purge_after,
     "Silence after which a worker's series are removed."),
    ("--max-task-names", "N", _DEFAULTS.max_task_names, "Cap on distinct `name` values."),
    ("--max-queue-names", "N", _DEFAULTS.max_queue_names,
     "Cap on distinct `queue_name` values."),
    ("--max-exception-names", "N", _DEFAULTS.max_exception_names,
     "Cap on distinct `exception` values."),
    ("--max-workers", "N", _DEFAULTS.max_workers, "Cap on distinct `hostname` values."),
    ("--max-label-length", "N", _DEFAULTS.max_label_length,
     "Longer label values become `other`."),
    ("--default-queue", "NAME", _DEFAULTS.default_queue,
     "queue_name of tasks whose queue no task-sent event told."),
    ("--enable-events-interval", "SECONDS", _DEFAULTS.enable_events_interval,
     "Time between enable_events broadcasts."),
    ("--event-queue-ttl", "SECONDS", _DEFAULTS.event_queue_ttl,
     "Message TTL of the exporter's event queue (RabbitMQ)."),
    ("--event-queue-expires", "SECONDS", _DEFAULTS.event_queue_expires,
     "Idle time after which RabbitMQ deletes the exporter's event queue."),
    ("--event-queue-max-length", "N", _DEFAULTS.event_queue_max_length,
     "Most messages the exporter's event queue holds on RabbitMQ (oldest dropped beyond)."),
    ("--queue-poll-interval", "SECONDS", _DEFAULTS.queue_poll_interval,
     "Time between polls of queue depths and broker health; 0 turns polling off."),
    ("--queue-discovery-interval", "SECONDS", _DEFAULTS.queue_discovery_interval,
     "Time between looks for new queues (broker bindings, RabbitMQ management, workers)."),
    ("--probe-timeout", "SECONDS", _DEFAULTS.probe_timeout,
     "Longest a single broker poll may take."),
    ("--dlq-sample", "N", _DEFAULTS.dlq_sample,
     "Messages read (never consumed) per dead-letter queue and poll for "
     "celery_dlq_messages; 0 turns it off."),
    ("--rabbitmq-management-url", "URL", None,
     "RabbitMQ management API, e.g. http://user:pw@rabbit:15672/, for unacked counts, "
     "publish counters and dead-letter routes."),
    ("--web-config-file", "PATH", None,
     "TLS and basic auth for the HTTP endpoint: a Prometheus exporter web config file "
     "(tls_server_config, basic_auth_users with bcrypt hashes)."),
]


def envvar(option: str) -> str:
    return "CELERY_VITALS_" + option.lstrip("-").split("/")[0].replace("-", "_").upper()


_FLAGS = [
    ("--queue", "Queue to poll, repeatable (space-separated in the environment); "
     "queues found on the broker and in workers' active_queues are added."),
    ("--dlq", "Dead-letter queue name or glob, repeatable (space-separated in the "
     "environment). On RabbitMQ with the management API, queues that others "
     "dead-letter into are found without it."),
    ("--broker-transport-option", "Kombu transport option KEY=VALUE, repeatable; VALUE is "
     "parsed as JSON when it is JSON (visibility_timeout=3600, global_keyprefix=prod:). "
     "In the environment, separate pairs with spaces."),
    ("--event-stream/--no-event-stream",
     "Consume Celery's event stream (task and worker metrics). Off when the "
     "celery-vitals agent runs in every worker and owns those metrics: the exporter then "
     "polls queues, dead-letter queues and the broker only, and asks no worker for events."),
    ("--enable-events/--no-enable-events",
     "Periodically ask workers to send task events (celery control enable_events)."),
    ("--task-hostname-label/--no-task-hostname-label",
     "Add the worker hostname as a label on task metrics (one series per worker)."),
]

#: The options of `serve` that the `dlq` commands share (same names, same variables).
DLQ_OPTIONS = ("--broker-url", "--broker-transport-option", "--rabbitmq-management-url",
               "--dlq", "--log-level", "--probe-timeout")


def with_options(only: tuple[str, ...] | None = None) -> Callable[[Any], Any]:
    """Adds the declared options (all, or those named in ``only``) to a command."""

    def wanted(option: str) -> bool:
        return only is None or option in only

    def decorate(command: Any) -> Any:
        # click lists options in reverse order of decoration: flags last, broker first
        for option, help_text in reversed(_FLAGS):
            if wanted(option):
                command = _flag(command, option, help_text)
        for option, metavar, default, help_text in reversed(_OPTIONS):
            if wanted(option):
                # type=str: config.build validates every value, so problems come together
                command = click.option(option, type=str, metavar=metavar,
                                       default=None if default is None else str(default),
                                       envvar=envvar(option), show_envvar=True,
                                       show_default=default is not None,
                                       help=help_text)(command)
        return command

    return decorate


ON_BY_DEFAULT = ("--enable-events", "--event-stream")  # the other flags are off by default


def _flag(command: Any, option: str, help_text: str) -> Any:
    if "/" in option:
        return click.option(option, default=option.startswith(ON_BY_DEFAULT),
                            envvar=envvar(option), show_envvar=True, show_default=True,
                            help=help_text)(command)
    return click.option(option, multiple=True,
                        metavar="KEY=VALUE" if "transport" in option else "NAME",
                        envvar=envvar(option), show_envvar=True, help=help_text)(command)


_with_options = with_options()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="celery-vitals")
def cli() -> None:
    """Prometheus exporter for Celery."""


@cli.command()
@_with_options
def serve(**options: Any) -> None:
    """Consume the Celery event stream and serve Prometheus metrics."""
    config = build(options)
    logs.setup(config.log_level, config.log_format, secrets=config.secrets)
    from celery_vitals.service import Exporter  # imports celery: keep --help fast

    registry = CollectorRegistry()
    try:
        exporter = Exporter(config, registry)
    except OSError as error:
        log.error("cannot listen on %s:%d: %s", config.listen_host, config.listen_port,
                  error.strerror or error)
        sys.exit(1)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    gc.freeze()  # start-up objects live forever: keep them out of every collection
    exporter.start()
    web = config.web_config
    log.info("celery-vitals %s serving on %s://%s:%d/metrics%s, broker %s", __version__,
             web.scheme if web else "http", config.listen_host, exporter.http.port,
             " (basic auth)" if web and web.users else "", config.safe_broker_url)
    stop.wait()
    log.info("shutting down")
    exporter.stop()


@cli.command("metrics-doc")
def metrics_doc() -> None:
    """Print the metric reference (docs/metrics.md) generated from the catalogue."""
    from celery_vitals.catalogue import markdown

    click.echo(markdown(), nl=False)


cli.add_command(dlq_group(with_options(DLQ_OPTIONS)))
cli.add_command(rules_command)
cli.add_command(dashboards_command)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors, exit 2 for bad usage or options, never a traceback."""
    try:
        cli.main(args=argv, prog_name="celery-vitals", standalone_mode=False)
    except ConfigError as error:
        click.echo(f"celery-vitals: error: {error}", err=True)
        sys.exit(2)
    except click.exceptions.NoArgsIsHelpError as error:
        click.echo(error.format_message(), err=True)  # `celery-vitals` alone: show help
        sys.exit(2)
    except click.UsageError as error:
        hint = f" (try '{error.ctx.command_path} --help')" if error.ctx else ""
        click.echo(f"celery-vitals: error: {error.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.Abort:
        sys.exit(130)
    except click.ClickException as error:
        click.echo(f"celery-vitals: error: {error.format_message()}", err=True)
        sys.exit(error.exit_code)
