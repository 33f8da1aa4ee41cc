"""Exposition: the /metrics body, fast enough for a quarter of a million series.

Why: prometheus_client builds a Sample object per line and formats every line
on every scrape, about 6 us a line: 200 task names x 20 queues (three
histograms of 14 buckets per name/queue pair) took 1.2 s, holding the GIL
while the event stream waits. The task families are the only large ones, so
collectors that offer ``render_text`` write their series straight from the
trackers' plain data: each series' label text is built once, and its lines
are reused until its value changes. Everything else (a few hundred lines) goes
through prometheus_client. The output has the same families, series and
values as ``generate_latest`` for the same collectors, in both the Prometheus
text format and OpenMetrics (tests hold it to that); only large numbers are
spelled the Python way (``1234567.0``, not Go's ``1.234567e+06``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Set
from functools import cache
from itertools import accumulate
from typing import Any, Protocol, runtime_checkable

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics_exposition
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _untyped_go_float

from celery_vitals.catalogue import BY_NAME, counter, gauge, histogram
from celery_vitals.histogram import Histograms
from celery_vitals.logs import RateLimitedLogger

Key = tuple[str, ...]
Pairs = tuple[tuple[str, str], ...]
# prometheus_client leaves these two untyped
floatToGoString: Callable[[float], str] = _untyped_go_float
generate_openmetrics: Callable[[Any], bytes] = openmetrics_exposition.generate_latest
OM_EOF = b"# EOF\n"
rate_limited = RateLimitedLogger(logging.getLogger(__name__))
RENDER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@runtime_checkable
class TextRenderer(Protocol):
    """A collector that writes its own exposition lines (same content as its collect()):
    each family as its cached text and the plain data to render it from."""

    def text_families(self) -> Iterable[tuple[FamilyText, Mapping[Key, float] | Histograms]]: ...


class _Metrics:
    """Families in the shape generate_latest takes (anything with collect())."""

    def __init__(self, metrics: Iterable[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics


class Exposition:
    """Renders the collectors, in order, into one /metrics body.

    Data never makes a scrape fail: a family that cannot be rendered (or a
    collector that fails before naming one) is left out of that scrape and
    counted in ``errors`` (``celery_vitals_scrape_errors_total{family}``), and
    the rest is served.

    One render at a time (a lock): the series caches are shared. Scrapes
    that arrive while a render runs wait for it and then take the next
    render's body, one render for all of them, never older than their own
    arrival.
    """

    def __init__(
        self,
        collectors: Iterable[Collector],
        errors: dict[str, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        constant_labels: Mapping[str, str] | None = None,
    ) -> None:
        self.collectors = list(collectors)
        self.clock = clock
        # labels every series carries (``broker``): added here, as Prometheus adds a
        # target's labels, so that collectors and trackers never see them
        self.constant: Pairs = tuple(sorted((constant_labels or {}).items()))
        # family -> scrapes it was left out of (ExporterCollector exports it)
        self.errors: dict[str, int] = {} if errors is None else errors
        self._lock = threading.Lock()
        self._last: dict[bool, tuple[float, bytes]] = {}  # openmetrics -> (started, body)
        # seconds each full render took (celery_vitals_scrape_duration_seconds): written
        # under the lock, so by one thread at a time
        self.durations = Histograms(RENDER_BUCKETS)

    def render(self, openmetrics: bool = False, names: Set[str] | None = None) -> bytes:
        """The body; with ``names``, only the families whose sample names are among them."""
        arrived = self.clock()
        with self._lock:
            last = self._last.get(openmetrics)
            if names is None and last is not None and last[0] >= arrived:
                return last[1]  # rendered while this request waited for the lock
            started = self.clock()
            took = time.perf_counter()
            body = self._render(openmetrics, names)
            if names is None:
                self._last[openmetrics] = (started, body)
                self.durations.observe((), time.perf_counter() - took)
        return body

    def _render(self, openmetrics: bool, names: Set[str] | None) -> bytes:
        parts: list[bytes] = []
        for collector in self.collectors:
            if isinstance(collector, TextRenderer):
                for text, data in collector.text_families():
                    if names is None or _wanted(text.name, names):
                        text.constant = self.constant
                        self._guarded(parts, text.name, text.render, data, openmetrics)
            else:
                self._generic_families(parts, collector, openmetrics, names)
        if openmetrics:
            parts.append(OM_EOF)
        return b"".join(parts)  # one copy: the parts are bytes already

    def _generic_families(
        self, parts: list[bytes], collector: Collector, openmetrics: bool, names: Set[str] | None
    ) -> None:
        """prometheus_client's rendering, one family at a time."""
        families: Iterator[Metric] | None = None
        while True:
            try:
                if families is None:
                    families = iter(collector.collect())
                family = next(families)
            except StopIteration:
                return
            except Exception:  # the collector failed before naming a family
                self._error(type(collector).__name__)
                return
            if names is None or _wanted(family.name, names):
                self._guarded(parts, family.name, _one, family, openmetrics, self.constant)

    def _guarded(
        self, parts: list[bytes], family: str, render: Callable[..., list[bytes]], *args: Any
    ) -> None:
        try:
            parts.extend(render(*args))
        except Exception:
            self._error(family)

    def _error(self, family: str) -> None:
        self.errors[family] = self.errors.get(family, 0) + 1
        rate_limited.warn_every(
            family, "scrape: left out %s, which could not be rendered", family, exc_info=True
        )


def _one(family: Metric, openmetrics: bool, constant: Pairs = ()) -> list[bytes]:
    if constant:
        family.samples = [
            sample._replace(labels={**sample.labels, **dict(constant)}) for sample in family.samples
        ]
    return [_generic([family], openmetrics)]


def _wanted(family: str, names: Set[str]) -> bool:
    """Whether a ``name[]`` filter asks for a family (by any of its sample names)."""
    spec = BY_NAME.get(family) or BY_NAME.get(family + "_total") or BY_NAME.get(family + "_info")
    if spec is None:
        return family in names
    return not names.isdisjoint(spec.series_names)


def _generic(metrics: Iterable[Metric], openmetrics: bool) -> bytes:
    """prometheus_client's rendering, without the OpenMetrics end marker."""
    if openmetrics:
        return generate_openmetrics(_Metrics(metrics)).removesuffix(OM_EOF)
    return generate_latest(_Metrics(metrics))


@cache
def header(name: str, labels: Key, openmetrics: bool) -> bytes:
    """# HELP / # TYPE lines of a catalogue metric, exactly as prometheus_client writes them."""
    kind = BY_NAME[name].type
    make = counter if kind == "counter" else gauge if kind == "gauge" else histogram
    return _generic([make(name, labels)], openmetrics)


def value_text(value: float) -> bytes:
    """A sample value: ints as ``12.0``, finite floats by repr, the rest as Go spells them.

    prometheus_client writes Go's spelling throughout (``1.234567e+06``);
    Python's is the same number to any parser and several times cheaper.
    """
    if isinstance(value, int):
        return b"%d.0" % value
    if math.isfinite(value):
        return b"%r" % value
    return floatToGoString(value).encode()


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def label_text(pairs: Iterable[tuple[str, str]]) -> str:
    """``{a="x",b="y"}`` with names sorted and values escaped, as prometheus_client does."""
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in sorted(pairs)) + "}"


class SeriesLines:
    """Cached lines of one counter or gauge: ``name{labels} value``, re-rendered on change."""

    def __init__(self, sample_name: str, label_names: Key, constant: Pairs = ()) -> None:
        self.sample_name = sample_name
        self.label_names = label_names
        self.constant = constant
        self._cache: dict[Key, tuple[float, bytes, bytes]] = {}  # key -> (value, line, prefix)
        self._last: tuple[dict[Key, float], list[bytes]] = ({}, [])

    def render(self, data: Mapping[Key, float]) -> list[bytes]:
        current = dict(data)  # one copy (atomic under the GIL), one object for the collector
        if current == self._last[0]:  # nothing changed: one comparison in C
            return self._last[1]
        cache, lines = self._cache, []
        for key, value in current.items():
            hit = cache.get(key)
            if hit is not None and hit[0] == value:
                lines.append(hit[1])
                continue
            prefix = (
                hit[2]
                if hit is not None
                else (
                    self.sample_name
                    + label_text([*zip(self.label_names, key, strict=True), *self.constant])
                    + " "
                ).encode()
            )
            line = prefix + value_text(value) + b"\n"
            cache[key] = (value, line, prefix)
            lines.append(line)
        if len(cache) != len(current):  # series went away: drop their lines
            self._cache = {key: cache[key] for key in current}
        self._last = (current, lines)
        return lines


class HistogramLines:
    """Cached lines of one histogram: a series' buckets, count and sum as one chunk.

    A series is re-rendered only when its counts changed since the last
    scrape, and then by one formatting call on a template of its lines kept
    from the first time, rather than one call per bucket.
    """

    def __init__(self, name: str, label_names: Key, constant: Pairs = ()) -> None:
        self.name = name
        self.label_names = label_names
        self.constant = constant
        # key -> (counts rendered, chunk, template)
        self._cache: dict[Key, tuple[list[float], bytes, bytes]] = {}

    def render(self, data: Histograms) -> list[bytes]:
        cache, chunks = self._cache, []
        les = None
        series = dict(data.series)
        for key, live in series.items():
            hit = cache.get(key)
            if hit is not None and hit[0] == live:
                chunks.append(hit[1])
                continue
            if hit is not None:
                template = hit[2]
            else:
                les = les or data.les()
                template = self._template(key, les)
            counts = list(live)  # one copy: buckets, count and sum agree
            cumulative = list(accumulate(counts[:-1]))  # bucket counts are ints
            chunk = template % (*cumulative, cumulative[-1], value_text(counts[-1]))
            cache[key] = (counts, chunk, template)
            chunks.append(chunk)
        if len(cache) != len(series):
            self._cache = {key: cache[key] for key in series}
        return chunks

    def _template(self, key: Key, les: Sequence[str]) -> bytes:
        """The series' lines with %d.0 for each bucket and the count, %s for the sum."""
        pairs = [*zip(self.label_names, key, strict=True), *self.constant]
        plain = label_text(pairs).replace("%", "%%")
        lines = [
            f"{self.name}_bucket{label_text([*pairs, ('le', le)]).replace('%', '%%')} %d.0"
            for le in les
        ]
        lines += [f"{self.name}_count{plain} %d.0", f"{self.name}_sum{plain} %s", ""]
        return "\n".join(lines).encode()


class FamilyText:
    """The cached text of one catalogue metric fed from a tracker's plain data."""

    def __init__(self, name: str, labels: Key) -> None:
        self.name = name
        self.labels = labels
        self._constant: Pairs = ()
        self._series = SeriesLines(name, labels)
        self._histogram = HistogramLines(name, labels)

    @property
    def constant(self) -> Pairs:
        """The labels every series of the exposition carries (set by Exposition)."""
        return self._constant

    @constant.setter
    def constant(self, pairs: Pairs) -> None:
        if pairs != self._constant:  # once: the cached lines start over with them
            self._constant = pairs
            self._series = SeriesLines(self.name, self.labels, pairs)
            self._histogram = HistogramLines(self.name, self.labels, pairs)

    def render(self, data: Mapping[Key, float] | Histograms, openmetrics: bool) -> list[bytes]:
        head = header(self.name, self.labels, openmetrics)
        if isinstance(data, Histograms):
            return [head, *self._histogram.render(data)]
        return [head, *self._series.render(data)]
