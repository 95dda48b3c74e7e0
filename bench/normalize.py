"""Upstream parsing + normalization vs prometheus-client's parser, on the real engine captures.

Ours: detect the engine, parse only the samples its mapping needs, normalize. Baseline:
`prometheus_client.parser.text_string_to_metric_families` on the whole text, then the very same
normalization on its samples. Best of several rounds, one pass = every capture once.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench import Ratio, Summary
from exporter.engines import ENGINES, detect_engine, normalize_exposition, normalize_text
from exporter.engines.parser import Exposition, Sample

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "engines"
ROUNDS = 5
PASSES = 10


def _captures() -> list[tuple[str, str]]:
    out = []
    for path in sorted(FIXTURES.glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        engine = detect_engine(text)
        if engine is not None:
            out.append((engine, text))
    return out


def _ours(captures: list[tuple[str, str]]) -> None:
    for _, text in captures:
        normalize_text(text, target="bench")


def _baseline(captures: list[tuple[str, str]]) -> None:
    for engine, text in captures:
        expo = Exposition()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                expo.samples.setdefault(s.name, []).append(Sample(s.name, dict(s.labels), s.value))
        normalize_exposition(expo, ENGINES[engine], target="bench")


def _best(fn: Callable[[list[tuple[str, str]]], None], captures: list[tuple[str, str]]) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(PASSES):
            fn(captures)
        best = min(best, (time.perf_counter() - started) / PASSES)
    return best


def main() -> Summary:
    captures = _captures()
    ours = _best(_ours, captures)
    baseline = _best(_baseline, captures)
    size = sum(len(text) for _, text in captures) / 1024
    line = (
        f"normalize: parse+normalize of {len(captures)} real engine captures ({size:.0f} KiB) "
        f"{baseline / ours:.1f}x faster than prometheus_client.parser + the same normalization "
        f"({ours * 1e3:.2f} ms vs {baseline * 1e3:.2f} ms per pass; target >= 3x)"
    )
    speedup = Ratio("prometheus_client.parser + normalization / ours", baseline / ours, at_least=3)
    return Summary(line, (speedup,))


if __name__ == "__main__":
    print(main().line)
    sys.exit(0)
