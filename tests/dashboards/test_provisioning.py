"""Grafana provisioning for docker-compose and Helm: the datasource and the dashboard provider."""

from __future__ import annotations

from pathlib import Path

import yaml

PROVISIONING = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "provisioning"


def test_prometheus_datasource() -> None:
    document = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    assert document["apiVersion"] == 1
    (source,) = document["datasources"]
    assert {key: source[key] for key in ("name", "uid", "type", "access", "url", "isDefault")} == {
        "name": "Prometheus",
        "uid": "celery-vitals-prometheus",
        "type": "prometheus",
        "access": "proxy",
        "url": "http://prometheus:9090",
        "isDefault": True,
    }


def test_dashboard_provider_loads_the_generated_json_into_folder_celery() -> None:
    document = yaml.safe_load((PROVISIONING / "dashboards" / "celery-vitals.yml").read_text())
    assert document["apiVersion"] == 1
    (provider,) = document["providers"]
    assert (provider["type"], provider["folder"], provider["options"]["path"]) == (
        "file",
        "Celery",
        "/var/lib/grafana/dashboards/celery-vitals",
    )
    assert provider["allowUiUpdates"] is False  # the JSON is generated: edit celery_vitals/rules
