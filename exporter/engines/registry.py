"""Every engine mapping, and recognizing the engine from an exposition's metric names."""

from __future__ import annotations

import importlib
from pathlib import Path

from exporter.engines.schema import EngineMapping

_DECLARATION = "\nMAPPING = EngineMapping("


def _discover() -> dict[str, EngineMapping]:
    """Every module of this package that declares `MAPPING = EngineMapping(...)` is an engine:
    adding an engine is adding one file. Only those modules are imported (not, say, the
    Kubernetes client). Ordered by `MAPPING.detection_order` (Triton last, because its vLLM
    backend re-exports `vllm:*` next to `nv_*`)."""
    found: list[EngineMapping] = []
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if _DECLARATION not in path.read_text(encoding="utf-8"):
            continue
        mapping = importlib.import_module(f"exporter.engines.{path.stem}").MAPPING
        if isinstance(mapping, EngineMapping):
            found.append(mapping)
    found.sort(key=lambda m: (m.detection_order, m.engine))
    engines = {m.engine: m for m in found}
    if len(engines) != len(found):
        raise ValueError("two engine modules declare the same engine name")
    return engines


ENGINES: dict[str, EngineMapping] = _discover()
ENGINE_NAMES: tuple[str, ...] = tuple(ENGINES)
"""In detection order."""


class EngineNotDetected(ValueError):
    """Auto-detection found no known engine's metric names (e.g. a dcgm-exporter)."""


def detect_engine(text: str | bytes | bytearray) -> str | None:
    """The first engine whose metric-name prefix starts a line of the text (or of the undecoded
    body), or None."""
    for mapping in ENGINES.values():
        for marker in mapping.markers:
            if isinstance(text, str):
                found = text.startswith(marker) or "\n" + marker in text
            else:
                found = text.startswith(marker.encode()) or b"\n" + marker.encode() in text
            if found:
                return mapping.engine
    return None
