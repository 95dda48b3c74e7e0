"""Our encoder must be byte-for-byte prometheus-client's, on real engine families and on
adversarial ones (escapes, special floats, OpenMetrics-only samples)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from exporter.exposition import OM_EOF, encode

FIXTURES = sorted((Path(__file__).parents[1] / "fixtures" / "engines").glob("*.txt"))


class _Fixed:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def reference(families: list[Metric], openmetrics: bool) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families))  # type: ignore[arg-type]
    if openmetrics:
        return generate_openmetrics(registry).removesuffix(OM_EOF)  # type: ignore[no-any-return]
    return generate_latest(registry)  # type: ignore[no-any-return]


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.stem)
@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
def test_real_engine_families_encode_exactly_like_prometheus_client(
    fixture: Path, openmetrics: bool
) -> None:
    families = list(text_string_to_metric_families(fixture.read_text()))
    assert families
    assert encode(families, openmetrics) == reference(families, openmetrics)


label_values = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e21, 1234567.0, 1e-7, math.inf, -math.inf]),
)


@st.composite
def families(draw: st.DrawFn) -> list[Metric]:
    out: list[Metric] = []
    labels = ["model", "target"]
    for i in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["gauge", "counter", "histogram", "info"]))
        doc = draw(label_values)
        name = f"test_f{i}"
        values = draw(st.lists(st.tuples(label_values, label_values, floats), max_size=3))
        if kind == "gauge":
            g = GaugeMetricFamily(name, doc, labels=labels)
            for a, b, v in values:
                g.add_metric([a, b], v)
            out.append(g)
        elif kind == "counter":
            c = CounterMetricFamily(name, doc, labels=labels)
            for a, b, v in values:
                c.add_metric([a, b], abs(v) if not math.isnan(v) else 0.0, created=1.5)
            out.append(c)
        elif kind == "histogram":
            h = HistogramMetricFamily(name, doc, labels=labels)
            for a, b, _ in values:
                h.add_metric([a, b], [("0.5", 1.0), ("+Inf", 3.0)], sum_value=2.25)
            out.append(h)
        else:
            info = InfoMetricFamily(name, doc, labels=labels)
            for a, b, _ in values:
                info.add_metric([a, b], {"version": b + '\\\n"'})
            out.append(info)
    return out


@settings(max_examples=150, deadline=None)
@given(families(), st.booleans())
def test_adversarial_families_encode_exactly_like_prometheus_client(
    fams: list[Metric], openmetrics: bool
) -> None:
    assert encode(fams, openmetrics) == reference(fams, openmetrics)


def test_a_name_needing_escaping_falls_back_to_prometheus_client() -> None:
    odd = GaugeMetricFamily("test.dotted", "Dotted name.", labels=["a"])
    odd.add_metric(["x"], 1.0)
    for openmetrics in (False, True):
        assert encode([odd], openmetrics) == reference([odd], openmetrics)
