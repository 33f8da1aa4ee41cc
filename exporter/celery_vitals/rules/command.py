"""``celery-vitals rules`` and ``celery-vitals dashboards``: the shipped alert rules and
dashboards, or the ones a user's overrides file (docs/rules-config.md) makes."""

from __future__ import annotations

from pathlib import Path

import click

from celery_vitals.rules import alerts
from celery_vitals.rules.config import RulesConfig, load

_CONFIG = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    metavar="FILE",
    help="YAML overrides: selector, thresholds, for, disabled_alerts, "
    "periodic_tasks, tasks, ignored_queues, runbook_url, dashboard_url, labels "
    "(docs/rules-config.md). Without it: the shipped defaults.",
)


def _config(path: Path | None) -> RulesConfig:
    return load(path, alerts.alert_names())


def _write(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` (a sibling temporary file renamed over it)."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)
    except OSError as error:
        raise click.ClickException(f"cannot write {path}: {error.strerror or error}") from None


@click.command("rules")
@_CONFIG
@click.option(
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    metavar="FILE",
    help="Write the rule file here instead of to stdout.",
)
def rules_command(config_path: Path | None, output: Path | None) -> None:
    """Write the Prometheus rule file (recording rules and alerts)."""
    text = alerts.render(_config(config_path))
    if output is None:
        click.echo(text, nl=False)
    else:
        _write(output, text)


@click.command("dashboards")
@_CONFIG
@click.option(
    "--output-dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    metavar="DIR",
    help="Directory for the dashboard JSON files (created if missing).",
)
def dashboards_command(config_path: Path | None, output_dir: Path) -> None:
    """Write the Grafana dashboards (one JSON file per dashboard)."""
    config = _config(config_path)
    try:
        from celery_vitals.rules import dashboards
    except ImportError as error:  # a broken install: the SDK is a dependency
        raise click.ClickException(
            f"the dashboards need Grafana's SDK ({error.name}): "
            "pip install 'grafana-foundation-sdk==1769699379!11.6.0'"
        ) from None
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise click.ClickException(
            f"cannot create {output_dir}: {error.strerror or error}"
        ) from None
    for name, text in dashboards.render(config).items():
        _write(output_dir / name, text)
