"""SGLang: `sglang:` names, and the `sglang_` spelling some releases used (sglang#12618).

Sources: sglang/srt/observability/metrics_collector.py (0.5.23 wheel) and the v0.4.1 capture.
`sglang:token_usage` is the max of the KV/SWA/Mamba pools' usage (a ratio). Releases before 0.4
(the production-metrics docs of 0.3.x) published `sglang:num_requests_running` /
`sglang:num_requests_waiting` and named the model in a `name` label: both kept as fallbacks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from exporter.engines.schema import EngineInfo, EngineMapping, Source, metric

PREFIXES = ("sglang:", "sglang_")


def _each(name: str, **kwargs: Any) -> tuple[Source, ...]:
    """The same source under both prefixes, colon first."""
    return tuple(Source(p + name, **kwargs) for p in PREFIXES)


def _requests(prefix: str) -> Source:
    aborted = prefix + "num_aborted_requests_total"
    return Source(
        prefix + "num_requests_total",
        minus=(aborted,),
        labels=success_labels,
        companions=(Source(aborted, labels=aborted_labels),),
        note="finished minus aborted, and aborted",
    )


def _prefix_queries(prefix: str) -> Source:
    return Source(
        prefix + "prompt_tokens_total",
        requires=prefix + "cached_tokens_total",
        note="prompt tokens, when the engine counts cached ones",
    )


def success_labels(_: Mapping[str, str]) -> Mapping[str, str]:
    return {"outcome": "success", "finished_reason": ""}


def aborted_labels(_: Mapping[str, str]) -> Mapping[str, str]:
    return {"outcome": "aborted", "finished_reason": "abort"}


def parse_server_info(body: Any) -> EngineInfo:
    """GET /get_server_info -> {"version": ..., "served_model_name": ...}."""
    if not isinstance(body, dict):
        return EngineInfo()
    model = body.get("served_model_name") or body.get("model_path")
    version = body.get("version")
    return EngineInfo(str(model) if model else None, str(version) if version else None)


MAPPING = EngineMapping(
    detection_order=20,
    engine="sglang",
    markers=PREFIXES,
    model_labels=("model_name", "name"),
    health_path="/health",
    info_path="/get_server_info",
    parse_info=parse_server_info,
    versions="0.3 (running/waiting, model label) - 0.4.1 (fixture) - 0.5.23",
    metrics={
        metric("requests_running"): (
            *_each("num_running_reqs"),
            *_each("num_requests_running", note="before 0.4"),
        ),
        metric("requests_waiting"): (
            *_each("num_queue_reqs"),
            *_each("num_requests_waiting", note="before 0.4"),
        ),
        metric("kv_cache_usage_ratio"): _each("token_usage"),
        metric("prompt_tokens"): _each("prompt_tokens_total"),
        metric("generation_tokens"): _each("generation_tokens_total"),
        metric("prefix_cache_hits_tokens"): _each("cached_tokens_total"),
        metric("prefix_cache_queries_tokens"): tuple(_prefix_queries(p) for p in PREFIXES),
        metric("requests"): tuple(_requests(p) for p in PREFIXES),
        metric("request_prompt_tokens"): _each("prompt_tokens_histogram", shape="histogram"),
        metric("request_generation_tokens"): _each(
            "generation_tokens_histogram", shape="histogram"
        ),
        metric("time_to_first_token_seconds"): _each(
            "time_to_first_token_seconds", shape="histogram"
        ),
        metric("inter_token_latency_seconds"): (
            *_each("inter_token_latency_seconds", shape="histogram"),
            *_each("time_per_output_token_seconds", shape="histogram", note="0.4.x"),
        ),
        metric("request_duration_seconds"): _each("e2e_request_latency_seconds", shape="histogram"),
        metric("request_queue_time_seconds"): _each("queue_time_seconds", shape="histogram"),
    },
)
