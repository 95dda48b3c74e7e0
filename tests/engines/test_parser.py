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


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


_label_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12
)
_number = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),  # 1e+300, -0.0, nan, inf
    st.integers(min_value=-(2**53), max_value=2**53).map(str),
    st.sampled_from(["+Inf", "-Inf", "NaN", "1e3", "-1.5E-7", ".5", "7."]),
)


@st.composite
def _good_line(draw: st.DrawFn, index: int) -> str:
    """One well-formed sample line: a unique name, optional labels (escaped), a value in any of
    the spellings the format allows, an optional timestamp."""
    name = f"good_{index}" + draw(st.from_regex(r"[a-zA-Z0-9_:]{0,8}", fullmatch=True))
    label_names = draw(
        st.lists(
            st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,5}", fullmatch=True).filter(
                lambda n: not n.startswith("__")  # reserved: the oracle parser rejects them
            ),
            max_size=4,
            unique=True,
        )
    )
    pairs = [f'{n}="{_escape(draw(_label_text))}"' for n in label_names]
    comma = draw(st.sampled_from([",", ", "]))
    block = "{" + comma.join(pairs) + "}" if pairs or draw(st.booleans()) else ""
    line = name + block + draw(st.sampled_from([" ", "\t", "  "])) + draw(_number)
    if draw(st.booleans()):
        line += " " + str(draw(st.integers(min_value=-(2**40), max_value=2**42)))
    return line


_junk_line = st.text(alphabet=st.characters(exclude_characters="\x00\n"), max_size=40).filter(
    # Junk never starts like a good line, and never makes the whole text look like HTML.
    lambda s: not s.startswith("good") and not s.lstrip().startswith("<")
)


@st.composite
def _mixed_exposition(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """(the good lines, the whole text's lines): good lines in order, junk lines between them."""
    count = draw(st.integers(min_value=1, max_value=12))
    good = [draw(_good_line(i)) for i in range(count)]
    lines: list[str] = []
    for line in good:
        lines += draw(st.lists(_junk_line, max_size=2))
        lines.append(line)
    lines += draw(st.lists(_junk_line, max_size=2))
    return good, lines


def _good_samples(text: str, wanted: set[str] | None = None) -> set[tuple[object, ...]]:
    return _as_set([s for s in _ours(text, wanted) if s[0].startswith("good_")])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mixed_exposition())
def test_every_well_formed_sample_is_kept_with_its_value(
    exposition: tuple[list[str], list[str]],
) -> None:
    """Whatever junk surrounds them, all good samples come out with the values (and labels) that
    prometheus-client's parser reads from the good lines alone."""
    good, lines = exposition
    expected = _as_set(raw_samples("\n".join(good) + "\n"))
    assert len(expected) == len(good)  # the generator's lines are well-formed for the oracle
    text = "\n".join(lines) + "\n"
    assert _good_samples(text) == expected
    wanted = {name for name, _, _ in expected if name.startswith("good_1")}
    assert _good_samples(text, wanted) == {s for s in expected if s[0] in wanted}


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
