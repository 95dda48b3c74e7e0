"""Inference engines: one mapping per engine onto the normalized `inferwatch_llm_*` catalog."""

from exporter.engines.normalize import Families, Normalized, normalize_exposition, normalize_text
from exporter.engines.parser import ParseError, parse
from exporter.engines.registry import ENGINE_NAMES, ENGINES, EngineNotDetected, detect_engine

__all__ = [
    "ENGINES",
    "ENGINE_NAMES",
    "EngineNotDetected",
    "Families",
    "Normalized",
    "ParseError",
    "detect_engine",
    "normalize_exposition",
    "normalize_text",
    "parse",
]
