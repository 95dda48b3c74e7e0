"""NVIDIA Triton Inference Server core metrics, plus the TensorRT-LLM backend's `nv_trt_llm_*`.

Sources: server docs/user_guide/metrics.md (e1db8a60), tensorrtllm_backend custom metrics reporter
(6a749f5e~1), and the 2.4x-era capture. Latency counters are cumulative microseconds (only
means: exported as `_sum`/`_count`); the opt-in first-response histogram is in milliseconds.
The model label is `model`; versions of one model are summed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from exporter.engines.schema import EngineInfo, EngineMapping, Source, metric

MICROSECONDS = 1e6
MILLISECONDS = 1e3


def success_labels(_: Mapping[str, str]) -> Mapping[str, str]:
    return {"outcome": "success", "finished_reason": ""}


def failure_labels(labels: Mapping[str, str]) -> Mapping[str, str]:
    """`reason`: REJECTED, CANCELED, BACKEND, OTHER."""
    if labels.get("reason") == "CANCELED":
        return {"outcome": "aborted", "finished_reason": "abort"}
    return {"outcome": "error", "finished_reason": "error"}


def parse_server_metadata(body: Any) -> EngineInfo:
    """GET /v2 -> {"name": "triton", "version": "2.50.0", ...} (KServe v2 protocol)."""
    version = body.get("version") if isinstance(body, dict) else None
    return EngineInfo(version=str(version) if version else None)


def _trt(family: str, label: str, value: str) -> Source:
    return Source(family, where=((label, value),))


MAPPING = EngineMapping(
    detection_order=90,
    engine="triton",
    markers=("nv_trt_llm_", "nv_inference_", "nv_llm_"),
    model_labels=("model",),
    health_path="/v2/health/ready",
    info_path="/v2",
    parse_info=parse_server_metadata,
    versions="2.4x - 2.5x core metrics; TensorRT-LLM backend (nv_trt_llm_*) up to 25.0x",
    metrics={
        metric("requests_running"): (
            _trt("nv_trt_llm_request_metrics", "request_type", "scheduled"),
            _trt("nv_trt_llm_request_metrics", "request_type", "active"),
        ),
        metric("requests_waiting"): (
            _trt("nv_trt_llm_request_metrics", "request_type", "waiting"),
            Source("nv_inference_pending_request_count"),
        ),
        metric("kv_cache_usage_ratio"): (
            _trt("nv_trt_llm_kv_cache_block_metrics", "kv_cache_block_type", "fraction"),
        ),
        metric("prompt_tokens"): (Source("nv_llm_input_token_len_sum"),),
        metric("generation_tokens"): (Source("nv_llm_output_token_len_sum"),),
        metric("requests"): (
            Source(
                "nv_inference_request_success",
                labels=success_labels,
                companions=(Source("nv_inference_request_failure", labels=failure_labels),),
            ),
        ),
        metric("request_prompt_tokens"): (Source("nv_llm_input_token_len", "histogram"),),
        metric("request_generation_tokens"): (Source("nv_llm_output_token_len", "histogram"),),
        metric("time_to_first_token_seconds"): (
            Source(
                "nv_inference_first_response_histogram_ms",
                "histogram",
                divisor=MILLISECONDS,
                note="opt-in: --metrics-config histogram_latencies=true",
            ),
        ),
        metric("request_duration_seconds"): (
            Source(
                "nv_inference_request_duration_us",
                "sum_count",
                count="nv_inference_request_success",
                divisor=MICROSECONDS,
            ),
        ),
        metric("request_queue_time_seconds"): (
            Source(
                "nv_inference_queue_duration_us",
                "sum_count",
                count="nv_inference_request_success",
                divisor=MICROSECONDS,
            ),
        ),
    },
)
