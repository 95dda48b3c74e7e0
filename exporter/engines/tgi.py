"""Hugging Face text-generation-inference (TGI 2.x / 3.x, metrics-exporter-prometheus).

Sources: router/src/server.rs, backends/v3 (db931fcf) and the 3.3.5 capture. Counters carry no
`_total`. No TTFT histogram and no KV-cache gauge exist; metrics carry no model label, so the
model comes from GET /info (`model_id`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from exporter.engines.schema import EngineInfo, EngineMapping, Source, metric


def success_labels(_: Mapping[str, str]) -> Mapping[str, str]:
    return {"outcome": "success", "finished_reason": ""}


def failure_labels(labels: Mapping[str, str]) -> Mapping[str, str]:
    """`err`: validation, overloaded, generation, template, incomplete; dropped = client left."""
    if labels.get("err") == "dropped":
        return {"outcome": "aborted", "finished_reason": "abort"}
    return {"outcome": "error", "finished_reason": "error"}


def parse_info(body: Any) -> EngineInfo:
    """GET /info -> {"model_id": ..., "version": ...}."""
    if not isinstance(body, dict):
        return EngineInfo()
    model, version = body.get("model_id"), body.get("version")
    return EngineInfo(str(model) if model else None, str(version) if version else None)


def _h(name: str, note: str = "") -> Source:
    return Source(name, "histogram", note=note)


MAPPING = EngineMapping(
    detection_order=30,
    engine="tgi",
    markers=("tgi_",),
    model_labels=(),
    health_path="/health",
    info_path="/info",
    parse_info=parse_info,
    versions="2.x - 3.3 (fixture: 3.3.5)",
    metrics={
        metric("requests_running"): (Source("tgi_batch_current_size"),),
        metric("requests_waiting"): (Source("tgi_queue_size"),),
        metric("prompt_tokens"): (Source("tgi_request_input_length_sum"),),
        metric("generation_tokens"): (Source("tgi_request_generated_tokens_sum"),),
        metric("requests"): (
            Source(
                "tgi_request_success",
                labels=success_labels,
                companions=(Source("tgi_request_failure", labels=failure_labels),),
            ),
        ),
        metric("request_prompt_tokens"): (_h("tgi_request_input_length"),),
        metric("request_generation_tokens"): (_h("tgi_request_generated_tokens"),),
        metric("inter_token_latency_seconds"): (
            _h("tgi_request_mean_time_per_token_duration", "per-request mean"),
        ),
        metric("request_duration_seconds"): (_h("tgi_request_duration"),),
        metric("request_queue_time_seconds"): (_h("tgi_request_queue_duration"),),
    },
)
