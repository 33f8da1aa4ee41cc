"""``celery-vitals doctor``: the command, and how its findings are printed."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import click

from celery_vitals import logs
from celery_vitals.config import build
from celery_vitals.credentials import mask, url_passwords
from celery_vitals.doctor.checks import diagnose
from celery_vitals.doctor.findings import FAIL, OK, Finding
from celery_vitals.doctor.look import http_url, look

# -- the report ----------------------------------------------------------------------------


def exit_code(findings: Iterable[Finding]) -> int:
    return 1 if any(finding.status == FAIL for finding in findings) else 0


def text(findings: Iterable[Finding]) -> str:
    lines = []
    for finding in findings:
        line = f"{finding.status.upper():<4}  {finding.check:<21} {finding.detail.rstrip('.')}"
        if finding.fix and finding.status != OK:
            line += f". Fix: {finding.fix}."
        lines.append(line)
    return "\n".join(lines)


def _url_option(_context: click.Context, _option: click.Parameter, value: str | None) -> str | None:
    try:
        return None if value is None else http_url(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def command(broker_options: Callable[[Any], Any]) -> click.Command:
    """The ``doctor`` command; ``broker_options`` adds the options it shares with serve."""

    @click.command("doctor")
    @click.option(
        "--timeout",
        type=click.FloatRange(0.1, 60),
        default=2.0,
        show_default=True,
        help="Seconds to wait for the workers' replies.",
    )
    @click.option(
        "--listen",
        type=click.FloatRange(1, 600),
        default=10.0,
        show_default=True,
        metavar="SECONDS",
        help="How long to watch the event stream, after asking the workers.",
    )
    @click.option(
        "--exporter-url",
        metavar="URL",
        callback=_url_option,
        help="Also check a running `celery-vitals serve` (or a worker's agent), e.g. "
        "http://host:9808 (http:// when no scheme is given).",
    )
    @click.option(
        "--prometheus-url",
        metavar="URL",
        callback=_url_option,
        help="Also check the Prometheus side through its HTTP API, e.g. "
        "http://prometheus:9090: celery-vitals' rules loaded and evaluating, the targets "
        "they select up, every agent joined with an exporter of its broker, no task "
        "counted twice, celery-vitals alerts firing.",
    )
    @click.option(
        "--selector",
        metavar="MATCHERS",
        help="With --prometheus-url: the label matchers of the rules, e.g. "
        "'job=~\"celery.*\"'. Default: read from the loaded rules.",
    )
    @click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print a JSON list, one object per finding (check, status, detail, fix, subject).",
    )
    @broker_options
    def doctor(
        *,
        timeout: float,
        listen: float,
        exporter_url: str | None,
        prometheus_url: str | None,
        selector: str | None,
        as_json: bool,
        **options: Any,
    ) -> None:
        """Check a live cluster: broker, workers, events, queues and production gotchas
        (and, with --prometheus-url, the Prometheus side)."""
        if selector is not None and prometheus_url is None:
            raise click.UsageError("--selector needs --prometheus-url")
        config = build({k: v for k, v in options.items() if v is not None})
        logs.setup(config.log_level, "text", secrets=config.secrets)
        seen = look(config, timeout=timeout, listen=listen, exporter_url=exporter_url)
        if prometheus_url is not None:
            from celery_vitals.doctor.prometheus import look as look_at_prometheus

            seen.prometheus = look_at_prometheus(prometheus_url, selector)
        findings = diagnose(seen)
        output = (
            json.dumps([f.as_json() for f in findings], indent=2) if as_json else text(findings)
        )
        secrets = url_passwords(exporter_url or "") + url_passwords(prometheus_url or "")
        click.echo(mask(output, [*config.secrets, *secrets]))
        raise SystemExit(exit_code(findings))

    return doctor
