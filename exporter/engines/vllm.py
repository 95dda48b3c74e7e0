"""vLLM: V1 names first, then the V0 / pre-0.11 names they replaced.

Sources: vllm/v1/metrics/loggers.py (0.33 wheel, 0.10, 0.8) and the fixtures' V0 capture.
`vllm:*_perc` gauges are ratios (0-1) despite the name. vLLM's own `engine` label is the
data-parallel rank; ranks are summed (gauges of ratios: max) so our `engine` label stays ours.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from exporter.engines.schema import EngineInfo, EngineMapping, Source, metric

FINISHED_OUTCOME = {"abort": "aborted", "error": "error"}


def finished_labels(labels: Mapping[str, str]) -> Mapping[str, str]:
    """`finished_reason` (stop, length, abort, error, repetition) decides the outcome."""
    reason = labels.get("finished_reason", "")
    return {"outcome": FINISHED_OUTCOME.get(reason, "success"), "finished_reason": reason}


def parse_version(body: Any) -> EngineInfo:
    """GET /version -> {"version": "0.20.2"}."""
    version = body.get("version") if isinstance(body, dict) else None
    return EngineInfo(version=str(version) if version else None)


def _h(name: str) -> Source:
    return Source(name, "histogram")


MAPPING = EngineMapping(
    detection_order=10,
    engine="vllm",
    markers=("vllm:",),
    model_labels=("model_name", "model"),
    health_path="/health",
    info_path="/version",
    parse_info=parse_version,
    versions="V0 0.6.x names, V1 0.8 - 0.33 (fixtures: 0.6-era V0, 0.20.2)",
    metrics={
        metric("requests_running"): (Source("vllm:num_requests_running"),),
        metric("requests_waiting"): (Source("vllm:num_requests_waiting"),),
        metric("kv_cache_usage_ratio"): (
            Source("vllm:kv_cache_usage_perc"),
            Source("vllm:gpu_cache_usage_perc", note="V0 / before 0.9"),
        ),
        metric("prompt_tokens"): (Source("vllm:prompt_tokens_total"),),
        metric("generation_tokens"): (Source("vllm:generation_tokens_total"),),
        metric("prefix_cache_queries_tokens"): (Source("vllm:prefix_cache_queries_total"),),
        metric("prefix_cache_hits_tokens"): (Source("vllm:prefix_cache_hits_total"),),
        metric("requests"): (Source("vllm:request_success_total", labels=finished_labels),),
        metric("preemptions"): (Source("vllm:num_preemptions_total"),),
        metric("request_prompt_tokens"): (_h("vllm:request_prompt_tokens"),),
        metric("request_generation_tokens"): (_h("vllm:request_generation_tokens"),),
        metric("time_to_first_token_seconds"): (_h("vllm:time_to_first_token_seconds"),),
        metric("inter_token_latency_seconds"): (
            _h("vllm:inter_token_latency_seconds"),
            Source("vllm:time_per_output_token_seconds", "histogram", note="before 0.11"),
        ),
        metric("request_duration_seconds"): (_h("vllm:e2e_request_latency_seconds"),),
        metric("request_queue_time_seconds"): (_h("vllm:request_queue_time_seconds"),),
    },
)
