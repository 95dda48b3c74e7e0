"""The exposition parser: agrees with prometheus-client on real and generated text, and bad input
is a dropped sample or a ParseError, never a crash."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from exporter.engines.parser import MAX_LABEL_VALUE_CHARS, ParseError, parse
from tests.engines.conftest import fixture_text, raw_samples


def _as_set(samples: list[tuple[str, dict[str, str], float]]) -> set[tuple[object, ...]]:
    return {(n, tuple(sorted(lbl.items())), "nan" if math.isnan(v) else v) for n, lbl, v in samples}


def _ours(text: str, wanted: set[str] | None = None) -> list[tuple[str, dict[str, str], float]]:
    expo = parse(text, wanted)
    return [(s.name, s.labels, s.value) for samples in expo.samples.values() for s in samples]


def test_every_fixture_parses_like_the_reference_parser(fixture_name: str) -> None:
    text = fixture_text(fixture_name)
    assert _as_set(_ours(text)) == _as_set(raw_samples(text))
    assert parse(text).dropped == 0


def test_skipped_families_are_not_returned() -> None:
    text = fixture_text("vllm-3")
    wanted = {"vllm:num_requests_running", "vllm:time_to_first_token_seconds_bucket"}
    expo = parse(text, wanted)
    assert set(expo.samples) == wanted
    reference = [s for s in raw_samples(text) if s[0] in wanted]
    assert _as_set(_ours(text, wanted)) == _as_set(reference)


def test_html_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="HTML"):
        parse("<!doctype html><html><body>502 Bad Gateway</body></html>\n")


def test_garbage_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="no metric lines"):
        parse("{{{ !!! \n ??? \n")


def test_truncated_last_line_is_dropped_not_misread() -> None:
    text = fixture_text("llamacpp-b11434")
    cut = text[
        : text.index("llamacpp:tokens_predicted_total 32")
        + len("llamacpp:tokens_predicted_total 3")
    ]
    expo = parse(cut, {"llamacpp:tokens_predicted_total", "llamacpp:prompt_tokens_total"})
    assert expo.get("llamacpp:tokens_predicted_total") == []
    assert [s.value for s in expo.get("llamacpp:prompt_tokens_total")] == [36.0]
    assert expo.dropped == 1 and "truncated" in expo.errors[0]


def test_duplicate_series_keep_the_first() -> None:
    line = 'vllm:num_requests_running{model_name="m"} 3\n'
    expo = parse(line + line.replace(" 3", " 7"))
    assert [s.value for s in expo.get("vllm:num_requests_running")] == [3.0]
    assert expo.dropped == 1 and "duplicate" in expo.errors[0]


def test_nan_and_inf_values_parse() -> None:
    expo = parse("a NaN\nb +Inf\nc -Inf\n")
    assert math.isnan(expo.get("a")[0].value)
    assert expo.get("b")[0].value == math.inf and expo.get("c")[0].value == -math.inf


def test_huge_label_value_drops_only_that_sample() -> None:
    huge = "x" * (MAX_LABEL_VALUE_CHARS + 1)
    expo = parse(f'm{{model_name="{huge}"}} 1\nm{{model_name="ok"}} 2\n')
    assert [s.labels for s in expo.get("m")] == [{"model_name": "ok"}]
    assert expo.dropped == 1


@pytest.mark.parametrize(
    "line",
    [
        'm{a="1" 1',
        'm{a="1",a="2"} 1',
        "m 1 2 3",
        "m abc",
        "m 1_000",
        "m{a=1} 1",
        "m",
        "m 1 notatime",
    ],
)
def test_malformed_sample_lines_are_dropped(line: str) -> None:
    expo = parse(f"{line}\ngood 1\n")
    assert expo.get("m") == []
    assert [s.value for s in expo.get("good")] == [1.0]
    assert expo.dropped == 1


def test_escaped_label_values() -> None:
    expo = parse('m{a="q\\"uote",b="back\\\\slash",c="new\\nline"} 1\n')
    assert expo.get("m")[0].labels == {"a": 'q"uote', "b": "back\\slash", "c": "new\nline"}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_arbitrary_text_never_raises_anything_but_parse_error(text: str) -> None:
    try:
        expo = parse(text)
    except ParseError:
        return
    for samples in expo.samples.values():
        for sample in samples:
            assert isinstance(sample.value, float)


_metric_lines = st.lists(
    st.one_of(
        st.from_regex(
            r"[a-z_:]{1,12}(\{[a-z]{1,4}=\"[^\"\\\n]{0,8}\"\})? -?[0-9]{1,4}(\.[0-9]+)?",
            fullmatch=True,
        ),
        st.text(alphabet=st.characters(exclude_characters="\x00"), max_size=40),
    ),
    max_size=20,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_metric_lines)
def test_mixed_good_and_bad_lines_keep_the_good_ones(lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    try:
        expo = parse(text)
    except ParseError:
        return
    kept = sum(len(v) for v in expo.samples.values())
    assert kept + expo.dropped <= len(lines) + 1


_label_values = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=30
)
_values = st.floats(allow_nan=True, allow_infinity=True, width=64)


@settings(max_examples=150, deadline=None)
@given(
    gauges=st.lists(st.tuples(_label_values, _values), max_size=6, unique_by=lambda t: t[0]),
    counter_incs=st.lists(st.floats(min_value=0, max_value=1e12), max_size=5),
    observations=st.lists(st.floats(min_value=-1e6, max_value=1e6), max_size=20),
    buckets=st.lists(
        st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=8, unique=True
    ).map(sorted),
)
def test_round_trips_prometheus_client_output(
    gauges: list[tuple[str, float]],
    counter_incs: list[float],
    observations: list[float],
    buckets: list[float],
) -> None:
    registry = CollectorRegistry()
    gauge = Gauge("engine:gauge", "g", ["model_name"], registry=registry)
    for label, value in gauges:
        gauge.labels(label).set(value)
    counter = Counter("engine:tokens", "c", registry=registry)
    for inc in counter_incs:
        counter.inc(inc)
    histogram = Histogram("engine:latency_seconds", "h", buckets=buckets, registry=registry)
    for observation in observations:
        histogram.observe(observation)
    text = generate_latest(registry).decode()
    assert _as_set(_ours(text)) == _as_set(raw_samples(text))
