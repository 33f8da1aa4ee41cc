"""Histogram data kept as plain bucket counts; families are built at scrape time."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence


class Histograms:
    """Bucket counts per label key for one histogram metric.

    Each series is a list: one count per upper bound, one for +Inf, then the
    sum. Observing is a bisect and two additions, no lock: only the consumer
    thread writes, and a scrape copies the lists.
    """

    __slots__ = ("bounds", "series")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        self.series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, key: tuple[str, ...], value: float) -> None:
        counts = self.series.get(key)
        if counts is None:
            counts = self.series[key] = [0] * (len(self.bounds) + 2)
        counts[bisect_left(self.bounds, value)] += 1
        counts[-1] += value

    def les(self) -> list[str]:
        """The ``le`` label values, +Inf last."""
        return [repr(float(bound)) for bound in self.bounds] + ["+Inf"]

    def snapshot(self) -> Iterator[tuple[tuple[str, ...], list[tuple[str, float]], float]]:
        """(key, cumulative buckets as (le, count), sum) per series."""
        les = self.les()
        for key, live in list(self.series.items()):
            counts = list(live)  # one copy, so buckets and sum agree
            cumulative, running = [], 0.0
            for le, count in zip(les, counts[:-1], strict=True):
                running += count
                cumulative.append((le, running))
            yield key, cumulative, counts[-1]
