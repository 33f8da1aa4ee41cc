"""The cached /metrics text (exposition.py) against prometheus_client's own rendering."""

from __future__ import annotations

import gzip
import math
import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from celery_vitals.exposition import Exposition, SeriesLines, value_text
from celery_vitals.http import HttpServer, make_app
from tests.support.pipeline import PipelineHarness, busy_harness, event, lifecycle

HOSTILE = ['quote" back\\slash', "new\nline", "100%d.0 %s %%", "ünïcødé ✓", '{le="x"}']

Parsed = list[tuple[str, str, str, list[tuple[str, tuple[tuple[str, str], ...], float]]]]


# Observed after each render: a body never counts its own render, so two bodies differ
RENDER_DURATION = "celery_vitals_scrape_duration_seconds"


#: The label Pipeline's exposition adds to every series (brokers.identity of its URL)
BROKER = ("broker", "redis://localhost:6379/0")


def parsed(body: bytes, openmetrics: bool, broker: tuple[str, str] | None = None) -> Parsed:
    """Families in order, each with its samples: what a scraper reads from the body (all
    but the render-duration histogram, which changes with every render). With ``broker``,
    every sample must carry that label, and it is left out."""
    parse = parse_openmetrics if openmetrics else parse_text
    families = list(parse(body.decode()))
    if broker is not None:
        for f in families:
            for s in f.samples:
                assert s.labels.pop(broker[0], None) == broker[1], (f.name, s.labels)
    return [
        (
            f.name,
            f.type,
            f.documentation,
            [(s.name, tuple(sorted(s.labels.items())), s.value) for s in f.samples],
        )
        for f in families
        if f.name != RENDER_DURATION
    ]


def same(a: Parsed, b: Parsed) -> bool:
    """Equal, with NaN equal to itself."""

    def key(p: Parsed) -> object:
        return [
            (n, t, d, [(s, lab, "NaN" if math.isnan(v) else v) for s, lab, v in samples])
            for n, t, d, samples in p
        ]

    return key(a) == key(b)


def hostile_harness() -> PipelineHarness:
    h = busy_harness()
    for i, name in enumerate(HOSTILE):
        h.feed(*lifecycle(f"h{i}", name, queue=name, runtime=0.25 * i))
        h.feed(
            event("task-received", uuid=f"f{i}", name=name),
            event("task-failed", uuid=f"f{i}", exception=f"Err{i}()"),
        )
    # numbers where Python's and Go's spellings differ: a million and more
    key = next(iter(h.tasks.succeeded))
    h.tasks.succeeded[key] = 12_345_678
    series = next(iter(h.tasks.runtime.series.values()))
    series[0] += 3_000_000
    series[-1] += 9.5e15
    return h


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text-0.0.4", "openmetrics"])
def test_same_families_series_and_values_as_prometheus_client(openmetrics: bool) -> None:
    h = hostile_harness()
    render = generate_openmetrics if openmetrics else generate_latest
    for _ in range(2):  # the second render comes from the caches
        ours = h.pipeline.exposition.render(openmetrics)
        assert same(parsed(ours, openmetrics, BROKER), parsed(render(h.registry), openmetrics))
    assert ours.endswith(b"# EOF\n") == openmetrics
    assert ours.count(b"# EOF") == (1 if openmetrics else 0)
    # the hostile values were really there, escaped, and the big numbers too (a newline
    # does not get this far: the label guard folds it into "other")
    assert b'name="quote\\" back\\\\slash"' in ours and b'name="100%d.0 %s %%"' in ours
    assert b" 12345678.0\n" in ours


def test_small_numbers_are_byte_for_byte_prometheus_client() -> None:
    h = PipelineHarness()
    for i in range(3):
        h.feed(*lifecycle(f"u{i}", "t", runtime=0.5))
        h.feed(
            event("task-received", uuid=f"x{i}", name="t"),
            event("task-failed", uuid=f"x{i}", exception="KeyError()"),
        )
    h.tasks.last_success.clear()  # a timestamp is a big number: spelled differently
    collectors = h.pipeline.collectors[:1]  # the task collector: the one rendered from cache
    ours = Exposition(collectors).render()
    assert ours == generate_latest(_Registry(collectors))
    assert (
        b'celery_task_runtime_seconds_bucket{le="0.5",name="t",queue_name="celery"} 3.0\n' in ours
    )


class _Registry:
    def __init__(self, collectors: list[object]) -> None:
        self.collectors = collectors

    def collect(self) -> object:
        for c in self.collectors:
            yield from c.collect()  # type: ignore[attr-defined]


def test_a_changed_series_is_rerendered_and_the_rest_reused() -> None:
    h = PipelineHarness()
    h.feed(*lifecycle("u1", "a"), *lifecycle("u2", "b"))
    first = h.pipeline.exposition.render()
    h.feed(*lifecycle("u3", "a", runtime=7.0))
    second = h.pipeline.exposition.render()
    changed = set(second.splitlines()) - set(first.splitlines())
    assert sorted(line for line in changed if b'name="b"' in line) == []
    b = b'broker="redis://localhost:6379/0",'
    assert b"celery_task_succeeded_total{" + b + b'name="a",queue_name="celery"} 2.0' in changed
    assert (
        b"celery_task_runtime_seconds_bucket{" + b + b'le="10.0",name="a",queue_name="celery"} 2.0'
        in changed
    )
    assert b"celery_task_runtime_seconds_sum{" + b + b'name="a",queue_name="celery"} 7.5' in changed
    assert same(parsed(second, False, BROKER), parsed(generate_latest(h.registry), False))


def test_label_values_are_escaped_as_prometheus_client_does() -> None:
    lines = SeriesLines("celery_task_sent_total", ("queue_name", "name"))
    assert lines.render({("q\n1", 'a"b\\c'): 2}) == [
        b'celery_task_sent_total{name="a\\"b\\\\c",queue_name="q\\n1"} 2.0\n'
    ]


def test_series_that_go_away_leave_the_text() -> None:
    lines = SeriesLines("celery_worker_up", ("hostname",))
    data = {("w1",): 1, ("w2",): 0}
    assert lines.render(data) == [
        b'celery_worker_up{hostname="w1"} 1.0\n',
        b'celery_worker_up{hostname="w2"} 0.0\n',
    ]
    del data[("w1",)]
    assert lines.render(data) == [b'celery_worker_up{hostname="w2"} 0.0\n']
    data[("w1",)] = 1
    assert lines.render(data)[1] == b'celery_worker_up{hostname="w1"} 1.0\n'


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, b"0.0"),
        (7, b"7.0"),
        (12_345_678, b"12345678.0"),
        (True, b"1.0"),
        (0.25, b"0.25"),
        (1.7e9, b"1700000000.0"),
        (1e16, b"1e+16"),
        (-2.5, b"-2.5"),
        (math.inf, b"+Inf"),
        (-math.inf, b"-Inf"),
        (math.nan, b"NaN"),
    ],
)
def test_value_text_spelling(value: float, text: bytes) -> None:
    assert value_text(value) == text
    assert math.isnan(float(text)) if math.isnan(value) else float(text) == value


def _get(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, dict(response.headers), response.read()


def test_metrics_endpoint_serves_the_exposition_in_both_formats_and_gzip() -> None:
    h = hostile_harness()
    app = make_app(h.registry, ready=lambda: True, exposition=h.pipeline.exposition)
    server = HttpServer(app, "127.0.0.1", 0)
    server.start()
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        status, headers, plain = _get(url, {})
        assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert int(headers["Content-Length"]) == len(plain)
        assert same(parsed(plain, False, BROKER), parsed(generate_latest(h.registry), False))
        # what Prometheus sends: OpenMetrics preferred, gzip accepted
        accept = (
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
            "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )
        status, headers, zipped = _get(url, {"Accept": accept, "Accept-Encoding": "gzip"})
        assert headers["Content-Type"].startswith("application/openmetrics-text")
        assert headers["Content-Encoding"] == "gzip"
        body = gzip.decompress(zipped)
        assert body.endswith(b"# EOF\n") and len(zipped) < len(body) / 5
        assert same(parsed(body, True, BROKER), parsed(generate_openmetrics(h.registry), True))
        # a name[] filter is prometheus_client's job: only the asked family comes back
        status, _, filtered = _get(url + "?name[]=celery_task_sent_total", {})
        names = {f.name for f in parse_text(filtered.decode())}
        assert status == 200 and names == {"celery_task_sent"}
    finally:
        server.stop()
