"""A bad option value is reported under the name it was given by: the environment variable
when it came from the environment, the flag when it came from the command line (every
command that takes the declared options: serve, dlq, doctor)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from celery_vitals import cli
from celery_vitals.config import ConfigError

BROKER = "redis://127.0.0.1:1/0"


@pytest.fixture(autouse=True)
def _no_celery_vitals_variables(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("CELERY_VITALS_"):
            monkeypatch.delenv(name)
    yield


def problems(args: list[str], env: dict[str, str]) -> list[str]:
    """The problems config.build found, as the command reports them."""
    result = CliRunner().invoke(cli.cli, args, env=env, standalone_mode=False)
    assert isinstance(result.exception, ConfigError), (result.exception, result.output)
    return result.exception.problems


def test_a_bad_value_from_the_environment_names_the_variable() -> None:
    env = {"CELERY_VITALS_BROKER_URL": BROKER, "CELERY_VITALS_MAX_WORKERS": "lots"}
    assert problems(["serve"], env) == [
        "CELERY_VITALS_MAX_WORKERS: expected a whole number, got 'lots'"
    ]


def test_a_bad_value_from_the_flag_names_the_flag() -> None:
    env = {"CELERY_VITALS_BROKER_URL": BROKER}
    assert problems(["serve", "--max-workers", "lots"], env) == [
        "--max-workers: expected a whole number, got 'lots'"
    ]


def test_the_flag_wins_over_the_variable_and_is_named() -> None:
    env = {"CELERY_VITALS_BROKER_URL": BROKER, "CELERY_VITALS_MAX_WORKERS": "7"}
    assert problems(["serve", "--max-workers", "0"], env) == [
        "--max-workers: must be at least 1, got 0"
    ]


def test_each_problem_is_named_by_its_own_source() -> None:
    env = {
        "CELERY_VITALS_BROKER_URL": "ftp://host/0",
        "CELERY_VITALS_WORKER_TIMEOUT": "-1",
        "CELERY_VITALS_EVENT_STREAM": "false",
    }
    assert problems(["serve", "--max-task-names", "x", "--queue-poll-interval", "0"], env) == [
        "CELERY_VITALS_BROKER_URL: unsupported scheme 'ftp' in 'ftp://host/0'; expected one "
        "of redis, rediss, sentinel, amqp, amqps, pyamqp, sqs",
        "CELERY_VITALS_WORKER_TIMEOUT: must be a positive number of seconds, got '-1'",
        "--max-task-names: expected a whole number, got 'x'",
        # a switch's problem (reported under its --no- side) names its variable too
        "CELERY_VITALS_EVENT_STREAM: needs queue polling (--queue-poll-interval above 0), "
        "or the exporter has nothing to do",
    ]


@pytest.mark.parametrize(
    "args",
    [["dlq", "list"], ["dlq", "show", "dead"], ["doctor"]],
    ids=["dlq list", "dlq show", "doctor"],
)
def test_every_command_with_declared_options_names_the_variable(args: list[str]) -> None:
    env = {"CELERY_VITALS_BROKER_URL": BROKER, "CELERY_VITALS_PROBE_TIMEOUT": "soon"}
    assert problems(args, env) == [
        "CELERY_VITALS_PROBE_TIMEOUT: expected a number of seconds, got 'soon'"
    ]


def test_the_one_line_error_on_stderr_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CELERY_VITALS_BROKER_URL", BROKER)
    monkeypatch.setenv("CELERY_VITALS_MAX_WORKERS", "0")
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        "celery-vitals: error: CELERY_VITALS_MAX_WORKERS: must be at least 1, got 0\n"
    )


def test_a_command_keeps_its_name_and_help() -> None:
    serve = cli.cli.get_command(click.Context(cli.cli), "serve")
    assert serve is not None
    assert (serve.name, serve.help) == (
        "serve",
        "Consume the Celery event stream and serve Prometheus metrics.",
    )
