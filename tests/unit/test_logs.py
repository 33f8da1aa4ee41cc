"""Logs never show the broker password, whatever logger writes it."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from celery_vitals import credentials, logs


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    yield stream
    logging.getLogger().handlers.clear()


def test_url_passwords_and_safe_url_cover_failover_lists() -> None:
    url = "amqp://u:p%40ss@a//;amqp://v:other@b//"
    assert credentials.url_passwords(url) == ["other", "p%40ss", "p@ss"]
    assert credentials.safe_url(url) == "amqp://u:***@a//;amqp://v:***@b//"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_are_redacted_from_messages_and_tracebacks(captured: io.StringIO, fmt: str) -> None:
    logs.setup(
        "info", fmt, secrets=credentials.url_passwords("redis://:hunter2@h/0"), stream=captured
    )
    log = logging.getLogger("kombu.somewhere")
    log.warning("cannot connect to %s", "redis://:hunter2@h/0")
    try:
        raise ConnectionError("auth hunter2 refused")
    except ConnectionError:
        log.exception("lost")
    output = captured.getvalue()
    assert "hunter2" not in output
    assert output.count("***") == 3  # the message, the source line and the exception
    if fmt == "json":
        lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
        assert [line["level"] for line in lines] == ["warning", "error"]


def test_rate_limited_logger_reports_how_many_it_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limited = logs.RateLimitedLogger(logging.getLogger("t"), interval=3600)
    for _ in range(5):
        limited.warn_every("k", "bad event")
    assert [r.getMessage() for r in caplog.records] == ["bad event"]
    limited.interval = 0
    limited.warn_every("k", "bad event")
    assert caplog.records[-1].getMessage() == "bad event (4 more like this in the last 0s)"
