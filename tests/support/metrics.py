"""/metrics as data: {(sample name, frozenset(labels)): value}, parsed by prometheus_client."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]
SampleKey = tuple[str, Labels]


#: The label every series of celery-vitals carries (brokers.BROKER_LABEL): one value per
#: /metrics, like a target label, so parse() leaves it out of the keys (brokers() reads it).
BROKER = "broker"


def parse(text: str) -> dict[SampleKey, float]:
    """Every sample of a Prometheus text exposition, keyed by name and label set (without
    the ``broker`` label every series carries: see brokers())."""
    samples: dict[SampleKey, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k != BROKER}
            key = (sample.name, frozenset(labels.items()))
            assert key not in samples, f"duplicate series {sample.name}{sample.labels}"
            samples[key] = sample.value
    return samples


def brokers(text: str) -> dict[str, int]:
    """The values of the ``broker`` label in an exposition: how many samples carry each,
    and ``""`` for samples without one."""
    seen: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            value = sample.labels.get(BROKER, "")
            seen[value] = seen.get(value, 0) + 1
    return seen


def key(metric: str, /, **labels: str) -> SampleKey:
    """A sample key; positional-only, so that ``name`` can be a label."""
    return (metric, frozenset(labels.items()))


@dataclass(frozen=True)
class Scrape:
    """One /metrics response: its text (for messages and promtool) and its samples."""

    text: str
    samples: dict[SampleKey, float]

    def get(self, metric: str, /, **labels: str) -> float | None:
        """The value of the series with exactly these labels, or None when it is absent."""
        return self.samples.get(key(metric, **labels))

    def value(self, metric: str, /, **labels: str) -> float:
        """Like get(), but 0 for an absent series (a counter never incremented)."""
        found = self.get(metric, **labels)
        return 0.0 if found is None else found

    def series(self, metric: str) -> dict[Labels, float]:
        """All series of one sample name."""
        return {
            labels: value for (sample, labels), value in self.samples.items() if sample == metric
        }

    def names(self) -> Iterator[str]:
        return iter(sorted({sample for sample, _ in self.samples}))

    def series_text(self, prefixes: tuple[str, ...] = ("celery_",)) -> str:
        """The sample lines (no HELP/TYPE, no _created, no buckets): readable in a failure."""
        return "\n".join(
            line
            for line in self.text.splitlines()
            if line.startswith(prefixes) and "_created" not in line and "_bucket" not in line
        )
