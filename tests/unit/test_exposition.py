"""Collectors against the catalogue, the HTTP endpoints, and docs/metrics.md freshness."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from celery_vitals import catalogue
from celery_vitals.http import HttpServer, make_app
from tests.support.pipeline import busy_harness

ROOT = Path(__file__).resolve().parents[2]


def test_every_exported_metric_is_in_the_catalogue_with_its_type_and_help() -> None:
    h = busy_harness()
    text = generate_latest(h.registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, fam in families.items():
        spec = catalogue.BY_NAME[name + "_total" if fam.type == "counter" else name]
        # the text format has no info type: info metrics are gauges named *_info
        assert fam.type == ("gauge" if spec.type == "info" else spec.type), name
        assert spec.help == fam.documentation, name
    # and every catalogue metric the exporter has is exported (the busy harness touches
    # them all); the agent's own are tested in test_agent.py
    exported = {s.name for f in families.values() for s in f.samples}
    missing = {spec.name for spec in catalogue.SPECS if spec.source != "agent"} - {
        n.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum") for n in exported
    }
    assert missing == set()


def test_docs_metrics_md_is_generated_from_the_catalogue() -> None:
    assert (ROOT / "docs" / "metrics.md").read_text() == catalogue.markdown(), (
        "docs/metrics.md is stale: run python -m celery_vitals.catalogue > docs/metrics.md"
    )


def test_catalogue_names_follow_prometheus_conventions() -> None:
    for spec in catalogue.SPECS:
        assert spec.name.startswith(
            (
                "celery_task_",
                "celery_worker_",
                "celery_queue_",
                "celery_dlq_",
                "celery_broker_",
                "celery_beat_",
                "celery_vitals_",
            )
        )
        assert spec.name.endswith("_total") == (spec.type == "counter"), spec.name
        assert "uuid" not in spec.labels and "args" not in spec.labels


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers["Content-Type"], error.read()


def test_http_endpoints() -> None:
    h = busy_harness()
    ready = [False]
    server = HttpServer(make_app(h.registry, ready=lambda: ready[0]), "127.0.0.1", 0)
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        status, ctype, body = get(base + "/metrics")
        assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
        assert b'celery_task_succeeded_total{name="t",queue_name="celery"} 1.0' in body
        status, ctype, body = get(
            base + "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        assert ctype.startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")
        assert get(base + "/healthz")[0] == 200
        assert get(base + "/readyz")[0] == 503
        ready[0] = True
        assert get(base + "/readyz")[:1] == (200,)
        status, _, body = get(base + "/")
        assert status == 200 and b"href='metrics'" in body
        assert get(base + "/nope")[0] == 404
    finally:
        server.stop()


def test_exporter_metrics_carry_process_python_and_render_duration() -> None:
    from prometheus_client import CollectorRegistry

    from celery_vitals.config import build
    from celery_vitals.exporter import Exporter

    config = build({"broker_url": "redis://127.0.0.1:1/0", "listen_address": "127.0.0.1:0"})
    exporter = Exporter(config, CollectorRegistry())  # never started: nothing connects
    try:
        exposition = exporter.pipeline.exposition
        first = exposition.render()
        second = {f.name: f for f in text_string_to_metric_families(exposition.render().decode())}
    finally:
        exporter.http.close_socket()
    for name in (
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_open_fds",
        "python_info",
        "python_gc_objects_collected",
    ):
        assert name in second, name
    assert b"celery_vitals_scrape_duration_seconds_count" not in first  # no render before
    [count] = [
        s.value
        for s in second["celery_vitals_scrape_duration_seconds"].samples
        if s.name.endswith("_count")
    ]
    assert count == 1  # the first render; a body never counts itself
