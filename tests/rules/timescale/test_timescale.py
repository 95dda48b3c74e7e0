"""The incidents replayed at the timescales they really take (scenarios.py), through the real
`promtool test rules` with every rule file loaded; plus checks that the generated scrape data is
what Prometheus could really hold (monotone counters, cumulative buckets)."""

from __future__ import annotations

import itertools
import re
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from tests.rules import ruleset
from tests.rules.timescale.fleet import VLLM_TTFT_BUCKETS, Series
from tests.rules.timescale.scenarios import CUSTOM_TTFT_BUCKETS, REPLAYS, Replay, promtool_test

COUNTER = re.compile(r"(_total|_bucket|_count|_sum)$")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("replay", REPLAYS, ids=lambda r: r.name)
def test_replay(promtool: str, replay: Replay, tmp_path: Path) -> None:
    doc = promtool_test(replay, [str(p) for p in ruleset.RULE_FILES])
    path = tmp_path / f"{replay.name}_test.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False, width=1 << 30))
    result = subprocess.run(
        [promtool, "test", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=580,
        check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-8000:]


@pytest.mark.parametrize("replay", REPLAYS, ids=lambda r: r.name)
def test_generated_series_are_real_scrapes(replay: Replay) -> None:
    """Counters never go down within a series, and every histogram sample is cumulative in `le`
    with its +Inf bucket equal to its count: what a real vLLM exposition would hold."""
    histograms: dict[tuple[tuple[str, str], ...], dict[str, Series]] = defaultdict(dict)
    counts: dict[tuple[tuple[str, str], ...], Series] = {}
    for series in replay.series():
        if COUNTER.search(series.name):
            seen = [v for v in series.values if v is not None]
            assert all(b >= a for a, b in itertools.pairwise(seen)), series.name
        base = tuple(sorted((k, v) for k, v in series.labels.items() if k != "le"))
        if series.name.endswith("time_to_first_token_seconds_bucket"):
            histograms[base][series.labels["le"]] = series
        elif series.name.endswith("time_to_first_token_seconds_count"):
            counts[base] = series
    assert histograms
    for base, buckets in histograms.items():
        bounds = sorted((le for le in buckets if le != "+Inf"), key=float)
        assert tuple(bounds) in (VLLM_TTFT_BUCKETS, CUSTOM_TTFT_BUCKETS), bounds
        columns = [buckets[le].values for le in [*bounds, "+Inf"]]
        for step in range(len(columns[0])):
            row = [c[step] for c in columns]
            if row[0] is None:
                continue
            assert row == sorted(row), (base, step)  # type: ignore[type-var]
            assert row[-1] == counts[base].values[step]


def test_replays_cover_every_incident_alert() -> None:
    """Each alert the incidents need is asserted firing in some replay."""
    checked = {name for replay in REPLAYS for name, _ in replay.alerts_checked()}
    assert {
        "InferwatchLLMLatencyDrift",
        "InferwatchLLMFleetLatencyRising",
        "InferwatchLLMFleetLatencyRegression",
        "InferwatchLLMTTFTHigh",
        "InferwatchLLMErrorRateHigh",
        "InferwatchLLMErrorRateElevated",
        "InferwatchLLMTrafficDrop",
        "InferwatchLLMPrefixCacheHitRatioDrop",
        "InferwatchCUDAFragmentationHigh",
        "InferwatchLLMLoadForecastExceedsCapacity",
        "InferwatchLLMQueueBacklog",
        "InferwatchCUDAMemoryLeak",
        "InferwatchLLMTTFTSLOBoundMissing",
    } <= checked
