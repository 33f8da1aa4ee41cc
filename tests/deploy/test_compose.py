"""docker-compose.yml: valid for the real docker-compose, and every file it mounts exists."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support import tools
from tests.support.deploy import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def test_docker_compose_accepts_the_file(compose: str) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("COMPOSE_")}
    result = subprocess.run(
        [compose, "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


def test_docker_compose_refuses_a_broken_file(compose: str, tmp_path: Path) -> None:
    """The check above is a real one: the binary fails on a bad file."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  x:\n    image: redis\n    ports: {bad: 1}\n")
    result = subprocess.run(
        [compose, "-f", str(broken), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0


def test_every_mounted_file_exists() -> None:
    mounts = []
    for name, service in _compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            if source.startswith((".", "/")):
                mounts.append((name, source))
    assert len(mounts) >= 6, mounts
    for name, source in mounts:
        assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repo"


def test_the_stack_is_complete() -> None:
    services = _compose()["services"]
    assert "--appendonly" in services["redis"]["command"]
    assert services["rabbitmq"]["image"].startswith("rabbitmq:3-management")
    for broker in ("redis", "rabbitmq"):
        worker = services[f"worker-{broker}"]
        # the exporter beside agents: no task events, no event stream, nothing counted twice
        assert "-E" not in worker["command"]
        assert worker["environment"]["DEMO_AGENT"] == "1"
        assert worker["environment"]["CELERY_VITALS_AGENT_LISTEN_ADDRESS"] == "0.0.0.0:9809"
        assert (
            services[f"exporter-{broker}"]["environment"]["CELERY_VITALS_EVENT_STREAM"] == "false"
        )
        assert "demo.load" in services[f"load-{broker}"]["command"]
        env = services[f"exporter-{broker}"]["environment"]
        assert (
            env["CELERY_VITALS_BROKER_URL"]
            == services[f"worker-{broker}"]["environment"]["CELERY_BROKER_URL"]
        )
    assert "CELERY_VITALS_RABBITMQ_MANAGEMENT_URL" in services["exporter-rabbitmq"]["environment"]
    grafana = services["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    home = grafana["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    dashboards_mount = next(
        v for v in services["grafana"]["volumes"] if v.startswith("./dashboards:")
    )
    target = dashboards_mount.split(":")[1]
    assert home.startswith(target + "/")
    assert (ROOT / "dashboards" / home.removeprefix(target + "/")).is_file()
    assert services["grafana"]["image"].split(":")[1] >= "11.6"


def test_prometheus_scrapes_every_exporter_under_the_alerts_job_name() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    exporters = {f"{name}:9808" for name in _compose()["services"] if name.startswith("exporter")}
    scraped = {}
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                scraped[target] = job["job_name"]
    for target in exporters:
        assert "celery-vitals" in scraped[target]
    # each broker's workers (their agents) are scraped under their exporter's job
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for broker in ("redis", "rabbitmq"):
        workers = jobs[f"celery-vitals-{broker}-workers"]
        assert workers["static_configs"][0]["targets"] == [f"worker-{broker}:9809"]
        assert workers["relabel_configs"] == [
            {"target_label": "job", "replacement": f"celery-vitals-{broker}"}
        ]
    assert config["global"]["scrape_interval"] == "15s"  # the Grafana datasource's timeInterval
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "alertmanager:9093"
    ]


def test_promtool_accepts_the_prometheus_config(tmp_path: Path) -> None:
    promtool = tools.require_tool("promtool", tools.PROMTOOL)
    text = (ROOT / "deploy/prometheus/prometheus.yml").read_text()
    rules = ROOT / "alerts/celery-vitals.rules.yml"
    config = tmp_path / "prometheus.yml"
    config.write_text(text.replace("/etc/prometheus/celery-vitals.rules.yml", str(rules)))
    result = subprocess.run(
        [promtool, "check", "config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # the commented https + basic_auth example is valid once uncommented
    lines = text.splitlines()
    first = lines.index("  # - job_name: celery-vitals-secure")
    example = []
    for line in lines[first:]:
        if not line.startswith("  #"):
            break
        example.append("  " + line[4:])
    (tmp_path / "ca.crt").write_text("")
    (tmp_path / "pw").write_text("x")
    secure = tmp_path / "secure.yml"
    secure.write_text(
        "scrape_configs:\n"
        + "\n".join(example)
        .replace("/etc/prometheus/celery-vitals-ca.crt", str(tmp_path / "ca.crt"))
        .replace("/etc/prometheus/celery-vitals.password", str(tmp_path / "pw"))
        + "\n"
    )
    result = subprocess.run(
        [promtool, "check", "config", str(secure)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    parsed = yaml.safe_load(secure.read_text())["scrape_configs"][0]
    assert parsed["scheme"] == "https" and parsed["basic_auth"]["username"] == "prometheus"
