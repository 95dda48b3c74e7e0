"""Every real capture normalizes with the right engine, and the normalized values equal what the
raw capture says (read with prometheus-client's parser, in the test, not typed in)."""

from __future__ import annotations

import math
import pickle
from collections.abc import Iterable

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from exporter.engines import EngineNotDetected, Normalized, detect_engine, normalize_text
from exporter.engines.normalize import Families
from exporter.engines.schema import CATALOG, ENGINE_INFO, SPECS, STATUS_SPECS
from tests.engines.conftest import (
    ENGINE_FIXTURES,
    ENGINE_OF_FIXTURE,
    fixture_text,
    raw_samples,
    total,
)

Sample = tuple[str, dict[str, str], float]


def normalized_samples(result: Normalized) -> list[Sample]:
    return [s for group in [*result.groups, *result.status] for s in group.samples]


def norm(result: Normalized, name: str, **match: str) -> float:
    return total(normalized_samples(result), name, **match)


def buckets(
    samples: Iterable[Sample], name: str, divisor: float = 1.0, **match: str
) -> list[tuple[float, float]]:
    """(le, cumulative count) pairs, le in base units, sorted."""
    return sorted(
        (float(labels["le"]) / divisor, value)
        for sample, labels, value in samples
        if sample == name and all(labels.get(k) == v for k, v in match.items())
    )


def test_engine_is_detected(fixture_name: str) -> None:
    detected = detect_engine(fixture_text(fixture_name))
    assert (detected or "unknown") == ENGINE_OF_FIXTURE[fixture_name]


def test_dcgm_exporter_yields_no_llm_series() -> None:
    with pytest.raises(EngineNotDetected):
        normalize_text(fixture_text("dcgm-1"), target="dcgm")
    for engine in ("vllm", "sglang", "tgi", "triton", "llamacpp"):
        result = normalize_text(fixture_text("dcgm-1"), engine, target="dcgm")
        assert result.groups == []
        assert len(result.missing) == len(CATALOG)


@pytest.mark.parametrize("fixture_name", ENGINE_FIXTURES)
def test_every_fixture_reports_each_catalog_metric_once(fixture_name: str) -> None:
    result = normalize_text(fixture_text(fixture_name), target="t")
    assert result.engine == ENGINE_OF_FIXTURE[fixture_name]
    missing = {
        labels["metric"]: value
        for name, labels, value in normalized_samples(result)
        if name == "inferwatch_llm_mapping_missing"
    }
    assert set(missing) == {spec.key for spec in CATALOG}
    published = {g.spec.key for g in result.groups}
    assert {k for k, v in missing.items() if v == 0} == published
    for _, labels, _ in normalized_samples(result):
        assert labels["target"] == "t" and labels["engine"] == result.engine


def test_vllm_v1_values() -> None:
    text = fixture_text("vllm-3")
    raw = raw_samples(text)
    result = normalize_text(text, target="t")
    model = {"model": "qwen3.6-27b-autoround"}
    assert norm(result, "inferwatch_llm_requests_running", **model) == total(
        raw, "vllm:num_requests_running"
    )
    assert norm(result, "inferwatch_llm_kv_cache_usage_ratio") == total(
        raw, "vllm:kv_cache_usage_perc"
    )
    assert norm(result, "inferwatch_llm_prompt_tokens_total") == total(
        raw, "vllm:prompt_tokens_total"
    )
    assert norm(result, "inferwatch_llm_prefix_cache_queries_tokens_total") == total(
        raw, "vllm:prefix_cache_queries_total"
    )
    for reason in ("stop", "length", "abort", "error"):
        assert norm(result, "inferwatch_llm_requests_total", finished_reason=reason) == total(
            raw, "vllm:request_success_total", finished_reason=reason
        )
    assert norm(result, "inferwatch_llm_requests_total", outcome="aborted") == total(
        raw, "vllm:request_success_total", finished_reason="abort"
    )
    normalized = normalized_samples(result)
    for ours, theirs in [
        ("inferwatch_llm_time_to_first_token_seconds", "vllm:time_to_first_token_seconds"),
        ("inferwatch_llm_inter_token_latency_seconds", "vllm:inter_token_latency_seconds"),
        ("inferwatch_llm_request_queue_time_seconds", "vllm:request_queue_time_seconds"),
    ]:
        assert buckets(normalized, ours + "_bucket") == buckets(raw, theirs + "_bucket")
        assert norm(result, ours + "_count") == total(raw, theirs + "_count")
        assert norm(result, ours + "_sum") == pytest.approx(total(raw, theirs + "_sum"))


def test_vllm_v0_old_names() -> None:
    text = fixture_text("vllm-1")
    raw = raw_samples(text)
    result = normalize_text(text, target="t")
    assert result.hits["inferwatch_llm_kv_cache_usage_ratio"] == "vllm:gpu_cache_usage_perc"
    assert norm(result, "inferwatch_llm_requests_waiting") == total(
        raw, "vllm:num_requests_waiting"
    )
    assert norm(result, "inferwatch_llm_inter_token_latency_seconds_count") == total(
        raw, "vllm:time_per_output_token_seconds_count"
    )
    assert norm(result, "inferwatch_llm_generation_tokens_total") == total(
        raw, "vllm:generation_tokens_total"
    )


@pytest.mark.parametrize("prefix", ["sglang:", "sglang_"])
def test_sglang_values_under_both_prefixes(prefix: str) -> None:
    # The capture uses `sglang:`; some releases renamed the prefix to `sglang_` (sglang#12618).
    text = fixture_text("sglang-2").replace("sglang:", prefix)
    raw = raw_samples(text)
    result = normalize_text(text, target="t")
    assert result.engine == "sglang"
    assert result.models == ["meta-llama/Llama-3.1-8B-Instruct"]
    assert norm(result, "inferwatch_llm_requests_running") == total(
        raw, prefix + "num_running_reqs"
    )
    assert norm(result, "inferwatch_llm_requests_waiting") == total(raw, prefix + "num_queue_reqs")
    assert norm(result, "inferwatch_llm_kv_cache_usage_ratio") == total(raw, prefix + "token_usage")
    assert norm(result, "inferwatch_llm_generation_tokens_total") == total(
        raw, prefix + "generation_tokens_total"
    )
    assert buckets(
        normalized_samples(result), "inferwatch_llm_time_to_first_token_seconds_bucket"
    ) == buckets(raw, prefix + "time_to_first_token_seconds_bucket")


def test_tgi_values_and_model_from_info() -> None:
    from exporter.engines.schema import EngineInfo

    text = fixture_text("tgi-1")
    raw = raw_samples(text)
    info = EngineInfo(model="teknium/OpenHermes-2.5-Mistral-7B", version="3.3.5")
    result = normalize_text(text, target="t", info=info)
    assert result.models == ["teknium/OpenHermes-2.5-Mistral-7B"]
    assert norm(result, "inferwatch_llm_engine_info", engine_version="3.3.5") == 1
    assert norm(result, "inferwatch_llm_requests_running") == total(raw, "tgi_batch_current_size")
    assert norm(result, "inferwatch_llm_prompt_tokens_total") == total(
        raw, "tgi_request_input_length_sum"
    )
    assert norm(result, "inferwatch_llm_requests_total", outcome="success") == total(
        raw, "tgi_request_success"
    )
    assert norm(result, "inferwatch_llm_requests_total", outcome="error") == total(
        raw, "tgi_request_failure"
    )
    assert buckets(
        normalized_samples(result), "inferwatch_llm_request_duration_seconds_bucket"
    ) == buckets(raw, "tgi_request_duration_bucket")
    assert "inferwatch_llm_time_to_first_token_seconds" in {s.name for s in result.missing}


def test_triton_per_model_and_microseconds() -> None:
    # The capture's cumulative durations are all 0, which would hide a missing µs -> s conversion.
    text = fixture_text("triton-1").replace(
        'nv_inference_request_duration_us{model="densenet_onnx",version="1"} 0\n',
        'nv_inference_request_duration_us{model="densenet_onnx",version="1"} 2500000\n',
    )
    raw = raw_samples(text)
    assert total(raw, "nv_inference_request_duration_us", model="densenet_onnx") == 2500000
    result = normalize_text(text, target="t")
    assert sorted(result.models) == ["cc_fraud_detect_model", "densenet_onnx"]
    for model in result.models:
        assert norm(result, "inferwatch_llm_requests_waiting", model=model) == total(
            raw, "nv_inference_pending_request_count", model=model
        )
        assert norm(result, "inferwatch_llm_request_duration_seconds_sum", model=model) == (
            total(raw, "nv_inference_request_duration_us", model=model) / 1e6
        )
        assert norm(result, "inferwatch_llm_request_duration_seconds_count", model=model) == total(
            raw, "nv_inference_request_success", model=model
        )
    # Cumulative sums only: `_sum`/`_count` and the +Inf bucket OpenMetrics requires, no others.
    bounds = {
        labels["le"]
        for name, labels, _ in normalized_samples(result)
        if name == "inferwatch_llm_request_duration_seconds_bucket"
    }
    assert bounds == {"+Inf"}


def test_triton_first_response_histogram_ms_to_seconds() -> None:
    # No public capture has Triton's opt-in ms histogram; prometheus-client writes one here.
    registry = CollectorRegistry()
    ttft = Histogram(
        "nv_inference_first_response_histogram_ms",
        "Duration from request to first response in milliseconds",
        ["model", "version"],
        buckets=[100, 500, 2000, 5000],
        registry=registry,
    )
    for ms in (50, 300, 300, 4000, 9000):
        ttft.labels("llama", "1").observe(ms)
    text = generate_latest(registry).decode()
    raw = raw_samples(text)
    result = normalize_text(text, "triton", target="t")
    assert buckets(
        normalized_samples(result), "inferwatch_llm_time_to_first_token_seconds_bucket"
    ) == buckets(raw, "nv_inference_first_response_histogram_ms_bucket", divisor=1000)
    assert norm(result, "inferwatch_llm_time_to_first_token_seconds_sum") == pytest.approx(
        total(raw, "nv_inference_first_response_histogram_ms_sum") / 1000
    )


@pytest.mark.parametrize("name", ["llamacpp-1", "llamacpp-b11434"])
def test_llamacpp_values(name: str) -> None:
    text = fixture_text(name)
    raw = raw_samples(text)
    result = normalize_text(text, target="t", model="smollm2")
    assert result.models == ["smollm2"]
    assert norm(result, "inferwatch_llm_requests_running") == total(
        raw, "llamacpp:requests_processing"
    )
    assert norm(result, "inferwatch_llm_requests_waiting") == total(
        raw, "llamacpp:requests_deferred"
    )
    assert norm(result, "inferwatch_llm_generation_tokens_total") == total(
        raw, "llamacpp:tokens_predicted_total"
    )
    assert norm(result, "inferwatch_llm_inter_token_latency_seconds_sum") == total(
        raw, "llamacpp:tokens_predicted_seconds_total"
    )
    assert "inferwatch_llm_kv_cache_usage_ratio" in {s.name for s in result.missing}


def test_llamacpp_prefix_cache_from_cached_tokens() -> None:
    text = fixture_text("llamacpp-b11434")
    raw = raw_samples(text)
    result = normalize_text(text, target="t")
    assert norm(result, "inferwatch_llm_prefix_cache_queries_tokens_total") == total(
        raw, "llamacpp:prompt_tokens_total"
    ) + total(raw, "llamacpp:prompt_tokens_cached_total")
    # The older build has no cached-token counter: the metric is reported missing, not zero.
    old = normalize_text(fixture_text("llamacpp-1"), target="t")
    assert "inferwatch_llm_prefix_cache_hits_tokens" in {s.name for s in old.missing}


def test_non_finite_values_are_dropped_not_published() -> None:
    series = 'vllm:kv_cache_usage_perc{engine="0",model_name="qwen3.6-27b-autoround"}'
    text = fixture_text("vllm-3").replace(f"{series} 0.38235294117647056", f"{series} NaN")
    assert text != fixture_text("vllm-3")
    result = normalize_text(text, target="t")
    values = [v for _, _, v in normalized_samples(result)]
    assert all(not math.isnan(v) for v in values)
    assert result.dropped == 1


def test_families_merge_targets_into_one_family_per_metric() -> None:
    families = Families()
    for target in ("a", "b"):
        families.add_all(normalize_text(fixture_text("vllm-3"), target=target).groups)
    metrics = {m.name: m for m in families.metrics()}
    running = metrics["inferwatch_llm_requests_running"]
    assert {s.labels["target"] for s in running.samples} == {"a", "b"}
    assert metrics["inferwatch_llm_prompt_tokens"].type == "counter"
    assert SPECS["inferwatch_llm_prompt_tokens"].key == "inferwatch_llm_prompt_tokens_total"


def test_all_engines_together_render_valid_text_and_openmetrics() -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

    from exporter.snapshot import Snapshot, SnapshotStore

    families = Families()
    for name in ENGINE_FIXTURES:
        result = normalize_text(fixture_text(name), target=name)
        families.add_all(result.status)
        families.add_all(result.groups)
    store = SnapshotStore(["llm"])
    store.publish("llm", Snapshot(tuple(families.metrics()), True, 0.0, 0.0))
    openmetrics = store.exposition(openmetrics=True, gzipped=False).decode()
    # The strict OpenMetrics parser: every histogram needs +Inf, one TYPE line per family.
    parsed = {f.name for f in om_parse(openmetrics)}  # type: ignore[no-untyped-call]
    assert {spec.name for spec in CATALOG} <= parsed
    plain = store.exposition(openmetrics=False, gzipped=False).decode()
    assert {labels["target"] for _, labels, _ in raw_samples(plain) if "target" in labels} == set(
        ENGINE_FIXTURES
    )


def test_specs_come_back_from_another_process_as_the_same_objects() -> None:
    """The llm collector tells status series apart with `is` (normalized in a process)."""
    result = pickle.loads(pickle.dumps(normalize_text(fixture_text("vllm-3"), target="t")))
    assert all(g.spec is SPECS[g.spec.name] for g in result.groups)
    assert all(any(g.spec is s for s in STATUS_SPECS) for g in result.status)
    assert any(g.spec is ENGINE_INFO for g in result.status)
