"""llama.cpp llama-server (`--metrics`): hand-written exposition, no labels, no histograms.

Sources: tools/server/server-task.cpp (recent), README @00dc8057, and two captures (b9014,
b11434). `prompt_tokens_total` excludes cached tokens in recent builds, which count them in
`prompt_tokens_cached_total`; the KV gauge was removed in ggml-org/llama.cpp#13660. The model
comes from GET /props (`--alias`, else the model file's name).
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from exporter.engines.schema import EngineInfo, EngineMapping, Source, metric


def parse_props(body: Any) -> EngineInfo:
    """GET /props -> {"model_alias"?, "model_path", "build_info", ...}."""
    if not isinstance(body, dict):
        return EngineInfo()
    model = body.get("model_alias") or None
    path = body.get("model_path")
    if isinstance(path, str) and path and model in (None, path):
        model = PurePath(path).name  # without --alias, the alias is the file path
    version = body.get("build_info")
    return EngineInfo(str(model) if model else None, str(version) if version else None)


MAPPING = EngineMapping(
    detection_order=40,
    engine="llamacpp",
    markers=("llamacpp:",),
    model_labels=(),
    health_path="/health",
    info_path="/props",
    parse_info=parse_props,
    versions="b5xxx - b11434 (fixtures: b9014, b11434)",
    metrics={
        metric("requests_running"): (Source("llamacpp:requests_processing"),),
        metric("requests_waiting"): (Source("llamacpp:requests_deferred"),),
        metric("kv_cache_usage_ratio"): (
            Source("llamacpp:kv_cache_usage_ratio", note="removed in 2025 (#13660)"),
        ),
        metric("prompt_tokens"): (Source("llamacpp:prompt_tokens_total", note="uncached only"),),
        metric("generation_tokens"): (Source("llamacpp:tokens_predicted_total"),),
        metric("prefix_cache_queries_tokens"): (
            Source(
                "llamacpp:prompt_tokens_cached_total",
                plus=("llamacpp:prompt_tokens_total",),
                note="cached + uncached prompt tokens",
            ),
        ),
        metric("prefix_cache_hits_tokens"): (Source("llamacpp:prompt_tokens_cached_total"),),
        metric("inter_token_latency_seconds"): (
            Source(
                "llamacpp:tokens_predicted_seconds_total",
                "sum_count",
                count="llamacpp:tokens_predicted_total",
                note="slot time per generated token",
            ),
        ),
    },
)
