"""Metric declarations: each collector declares what it publishes, once, as MetricSpecs.

The collector builds its families from the same specs (`spec.family()`), so the published names,
types, help texts and labels cannot drift from the declaration; the docs' metric tables, the test
catalog and the chart's schema are generated from the declarations (`python -m exporter.generate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

MetricType = Literal["gauge", "counter", "histogram"]


@dataclass(frozen=True)
class MetricSpec:
    """One published metric family: its name (without `_total` for counters), type, help, labels."""

    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...] = ()
    when: str = ""
    """Empty when always published; else the condition, e.g. "MIG enabled" (docs, tests)."""

    @property
    def series_names(self) -> tuple[str, ...]:
        """The sample names a query can read."""
        if self.type == "counter":
            return (f"{self.name}_total",)
        if self.type == "histogram":
            return tuple(f"{self.name}{s}" for s in ("_bucket", "_sum", "_count"))
        return (self.name,)

    @property
    def exposed_name(self) -> str:
        return f"{self.name}_total" if self.type == "counter" else self.name

    def family(self, extra_labels: Sequence[str] = ()) -> Metric:
        """An empty family to add samples to (labels: the declared ones, in order)."""
        labels = [*self.labels, *extra_labels]
        if self.type == "counter":
            return CounterMetricFamily(self.name, self.help, labels=labels)
        if self.type == "histogram":
            return HistogramMetricFamily(self.name, self.help, labels=labels)
        return GaugeMetricFamily(self.name, self.help, labels=labels)

    def gauge(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.help, labels=list(self.labels))

    def counter(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.help, labels=list(self.labels))


def gauge(name: str, help: str, labels: Sequence[str] = (), when: str = "") -> MetricSpec:
    return MetricSpec(name, "gauge", help, tuple(labels), when)


def counter(name: str, help: str, labels: Sequence[str] = (), when: str = "") -> MetricSpec:
    return MetricSpec(name, "counter", help, tuple(labels), when)
