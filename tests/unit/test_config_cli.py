"""Options: typed config, gathered one-line errors, env vars, no leaked password."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from celery_vitals import cli
from celery_vitals.config import OPTIONS, ConfigError, build, options_table


def test_defaults() -> None:
    config = build({"broker_url": "redis://localhost:6379/0"})
    assert (config.listen_host, config.listen_port) == ("0.0.0.0", 9808)
    assert config.runtime_buckets[0] == 0.01 and config.runtime_buckets[-1] == 3600
    assert config.enable_events is True
    assert dict(config.broker_transport_options) == {}


def test_all_problems_are_reported_together() -> None:
    with pytest.raises(ConfigError) as caught:
        build(
            {
                "broker_url": "ftp://x",
                "listen_address": "9808",
                "max_workers": "0",
                "runtime_buckets": "1,0.5",
                "log_level": "loud",
                "worker_timeout": "-1",
            }
        )
    assert [p.split(":")[0] for p in caught.value.problems] == [  # in declaration order
        "--broker-url",
        "--listen-address",
        "--log-level",
        "--runtime-buckets",
        "--worker-timeout",
        "--max-workers",
    ]
    assert "\n" not in str(caught.value)


def test_transport_options_are_parsed_as_json_where_possible() -> None:
    config = build(
        {
            "broker_url": "redis://h/0",
            "broker_transport_option": (
                "visibility_timeout=3600",
                "global_keyprefix=prod:",
                "priority_steps=[0,5,9]",
            ),
        }
    )
    assert dict(config.broker_transport_options) == {
        "visibility_timeout": 3600,
        "global_keyprefix": "prod:",
        "priority_steps": [0, 5, 9],
    }


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("127.0.0.1:9000", ("127.0.0.1", 9000)),
        (":9000", ("0.0.0.0", 9000)),
        ("[::1]:9000", ("::1", 9000)),
    ],
)
def test_listen_address_forms(raw: str, expected: tuple[str, int]) -> None:
    config = build({"broker_url": "redis://h/0", "listen_address": raw})
    assert (config.listen_host, config.listen_port) == expected


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery_vitals", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_bad_option_is_one_line_exit_2_without_password_or_traceback() -> None:
    result = run_cli(
        "serve", "--broker-url", "amqp://user:s3cretPW@rabbit:port/", "--max-task-names", "lots"
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("celery-vitals: error: --broker-url: not a valid URL")
    assert "--max-task-names: expected a whole number, got 'lots'" in lines[0]
    assert "s3cretPW" not in result.stderr and "Traceback" not in result.stderr


def test_missing_broker_url_names_the_environment_variable() -> None:
    result = run_cli("serve", env={"PATH": ""})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "celery-vitals: error: --broker-url: is required (or set CELERY_VITALS_BROKER_URL)"
    )


def test_every_option_reads_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    monkeypatch.setattr(
        cli, "build", lambda options: seen.update(options) or (_ for _ in ()).throw(SystemExit(0))
    )
    monkeypatch.setenv("CELERY_VITALS_BROKER_URL", "redis://h/1")
    monkeypatch.setenv("CELERY_VITALS_MAX_WORKERS", "7")
    monkeypatch.setenv("CELERY_VITALS_ENABLE_EVENTS", "false")
    monkeypatch.setenv("CELERY_VITALS_BROKER_TRANSPORT_OPTION", "a=1 b=x")
    with pytest.raises(SystemExit):
        cli.main(["serve"])
    assert seen["broker_url"] == "redis://h/1"
    assert seen["max_workers"] == "7"
    assert seen["enable_events"] is False
    assert seen["broker_transport_option"] == ("a=1", "b=x")


def test_envvar_names_follow_the_option_names() -> None:
    params = {p.name: p for p in cli.serve.params}
    for name, param in params.items():
        assert param.envvar == "CELERY_VITALS_" + name.upper(), name


def test_unknown_option_is_one_line() -> None:
    result = run_cli("serve", "--bogus")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "celery-vitals: error: No such option '--bogus'. (try 'celery-vitals serve --help')"
    )


def test_install_docs_document_every_option_and_environment_variable() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "install.md").read_text()
    for param in cli.serve.params:
        flag = param.opts[0]
        assert f"`{flag}" in docs, flag
        assert f"`{param.envvar}`" in docs, param.envvar


def test_without_the_event_stream_the_exporter_must_poll() -> None:
    assert build({"broker_url": "redis://h/0", "event_stream": False}).event_stream is False
    with pytest.raises(ConfigError) as caught:
        build({"broker_url": "redis://h/0", "event_stream": False, "queue_poll_interval": "0"})
    assert caught.value.problems == [
        "--no-event-stream: needs queue polling (--queue-poll-interval above 0), or the "
        "exporter has nothing to do"
    ]


def test_install_docs_options_table_is_generated_from_the_declarations() -> None:
    root = Path(__file__).resolve().parents[2]
    docs = (root / "docs" / "install.md").read_text(encoding="utf-8")
    begin = "<!-- options table: generated by scripts/generate.sh -->\n"
    table = docs.partition(begin)[2].partition("<!-- end of options table -->\n")[0]
    assert table == options_table(), (
        "docs/install.md's options table is stale: run scripts/generate.sh"
    )
    for option in OPTIONS:
        assert f"`{option.envvar}`" in table, option.name


def test_every_declared_option_is_a_flag_of_serve_with_its_default() -> None:
    params = {param.opts[0]: param for param in cli.serve.params}
    assert list(params) == [option.name for option in OPTIONS]
    for option in OPTIONS:
        param = params[option.name]
        assert param.envvar == option.envvar
        if option.kind != "multiple":  # those have no default: nothing given is none
            assert param.default == option.raw_default(), option.flag
    defaults = build({"broker_url": "redis://h/0"})
    assert defaults.max_task_age == 21600 and defaults.dlq_sample == 1000
    assert (defaults.queues, defaults.web_config, defaults.event_stream) == ((), None, True)
