"""Every engine mapping, and recognizing the engine from an exposition's metric names."""

from __future__ import annotations

from exporter.engines import llamacpp, sglang, tgi, triton, vllm
from exporter.engines.schema import EngineMapping

ENGINES: dict[str, EngineMapping] = {
    m.engine: m
    for m in (vllm.MAPPING, sglang.MAPPING, tgi.MAPPING, llamacpp.MAPPING, triton.MAPPING)
}
ENGINE_NAMES: tuple[str, ...] = tuple(ENGINES)
"""Detection order: Triton last, because its vLLM backend re-exports `vllm:*` next to `nv_*`."""


class EngineNotDetected(ValueError):
    """Auto-detection found no known engine's metric names (e.g. a dcgm-exporter)."""


def detect_engine(text: str) -> str | None:
    """The first engine whose metric-name prefix starts a line of the text, or None."""
    for mapping in ENGINES.values():
        for marker in mapping.markers:
            if text.startswith(marker) or ("\n" + marker) in text:
                return mapping.engine
    return None
