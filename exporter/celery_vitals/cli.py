"""The ``celery-vitals`` command.

Every option has an environment variable ``CELERY_VITALS_<OPTION>``, so
docker-compose and Helm need no flags. Values are validated together by
``config.build``; a bad value is one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import gc
import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource
from prometheus_client import CollectorRegistry

from celery_vitals import __version__, logs
from celery_vitals.config import BY_FLAG, OPTIONS, ConfigError, Option, build
from celery_vitals.dlq import group as dlq_group
from celery_vitals.doctor import command as doctor_command
from celery_vitals.rules.command import dashboards_command, rules_command

log = logging.getLogger("celery_vitals")


def envvar(option: str) -> str:
    """The environment variable of an option (``--max-workers``: CELERY_VITALS_MAX_WORKERS)."""
    return BY_FLAG[option.partition("/")[0]].envvar


#: The options of `serve` that the `dlq` commands share (same names, same variables).
DLQ_OPTIONS = (
    "--broker-url",
    "--broker-transport-option",
    "--rabbitmq-management-url",
    "--dlq",
    "--log-level",
    "--probe-timeout",
)
#: The options of `serve` that `doctor` shares.
DOCTOR_OPTIONS = (
    *DLQ_OPTIONS,
    "--queue",
    "--default-queue",
    "--event-queue-ttl",
    "--event-queue-expires",
    "--event-queue-max-length",
)


def click_option(option: Option) -> Callable[[Any], Any]:
    """The click decorator of one declared option (config.OPTIONS)."""
    common: dict[str, Any] = {"envvar": option.envvar, "show_envvar": True, "help": option.help}
    if option.kind == "switch":
        return click.option(option.flag, default=option.raw_default(), show_default=True, **common)
    if option.kind == "multiple":
        return click.option(option.flag, multiple=True, metavar=option.metavar, **common)
    default = option.raw_default()
    # type=str: config.build validates every value, so problems come together
    return click.option(
        option.flag,
        type=str,
        metavar=option.metavar,
        default=default,
        show_default=default is not None,
        **common,
    )


def given_as(options: tuple[Option, ...]) -> dict[str, str]:
    """How the running command got its options, where not by flag: each flag of an option
    whose value came from its environment variable -> that variable."""
    context = click.get_current_context()
    return {
        flag: option.envvar
        for option in options
        if context.get_parameter_source(option.key) is ParameterSource.ENVIRONMENT
        for flag in option.flag.split("/")
    }


def named(error: ConfigError, names: dict[str, str]) -> ConfigError:
    """The same problems, each (``--flag: reason``, as config.build words them) naming its
    option as the user gave it: ``CELERY_VITALS_MAX_WORKERS: ...`` for a variable."""
    problems = []
    for problem in error.problems:
        flag, sep, reason = problem.partition(": ")
        problems.append(f"{names.get(flag, flag)}{sep}{reason}")
    return ConfigError(problems)


def with_options(only: tuple[str, ...] | None = None) -> Callable[[Any], Any]:
    """Adds the declared options (all, or those named in ``only``) to a command; a bad value
    is reported under the name it was given by: its flag or its environment variable."""
    chosen = OPTIONS if only is None else tuple(BY_FLAG[flag] for flag in only)

    def decorate(command: Callable[..., Any]) -> Any:
        @functools.wraps(command)
        def named_as_given(*args: Any, **kwargs: Any) -> Any:
            try:
                return command(*args, **kwargs)
            except ConfigError as error:
                raise named(error, given_as(chosen)) from None

        decorated: Any = named_as_given
        for option in reversed(chosen):  # click lists them in reverse order of decoration
            decorated = click_option(option)(decorated)
        return decorated

    return decorate


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
    from celery_vitals.exporter import Exporter  # imports celery: keep --help fast

    registry = CollectorRegistry()
    try:
        exporter = Exporter(config, registry)
    except OSError as error:
        log.error(
            "cannot listen on %s:%d: %s",
            config.listen_host,
            config.listen_port,
            error.strerror or error,
        )
        sys.exit(1)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    gc.freeze()  # start-up objects live forever: keep them out of every collection
    exporter.start()
    web = config.web_config
    log.info(
        "celery-vitals %s serving on %s://%s:%d/metrics%s, broker %s",
        __version__,
        web.scheme if web else "http",
        config.listen_host,
        exporter.http.port,
        " (basic auth)" if web and web.users else "",
        config.safe_broker_url,
    )
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
cli.add_command(doctor_command(with_options(DOCTOR_OPTIONS)))


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
