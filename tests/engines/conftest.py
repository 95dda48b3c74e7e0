"""Shared helpers: the real engine captures in tests/fixtures/engines (each with a .source)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "engines"
FIXTURE_NAMES = sorted(p.stem for p in FIXTURES.glob("*.txt"))
ENGINE_OF_FIXTURE = {name: name.split("-")[0] for name in FIXTURE_NAMES}
ENGINE_OF_FIXTURE["dcgm-1"] = "unknown"
ENGINE_FIXTURES = [name for name in FIXTURE_NAMES if ENGINE_OF_FIXTURE[name] != "unknown"]


def fixture_text(name: str) -> str:
    return (FIXTURES / f"{name}.txt").read_text(encoding="utf-8")


def _wire_name(name: str, text: str) -> str:
    """prometheus-client appends `_total` to counters written without it (TGI, dcgm); undo."""
    if name.endswith("_total") and ("\n" + name) not in text and not text.startswith(name):
        return name[: -len("_total")]
    return name


def raw_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample as prometheus-client's reference parser reads it (the independent oracle)."""
    return [
        (_wire_name(s.name, text), dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def total(samples: Iterable[tuple[str, dict[str, str], float]], name: str, **match: str) -> float:
    """Sum of the samples named `name` whose labels include `match`."""
    found = [
        value
        for sample, labels, value in samples
        if sample == name and all(labels.get(k) == v for k, v in match.items())
    ]
    if not found:
        raise AssertionError(f"no sample {name} {match}")
    return sum(found)


@pytest.fixture(params=FIXTURE_NAMES)
def fixture_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)
