"""Every collector is imported here; importing registers it (nowhere else)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from exporter.collectors import cuda_allocator, gpu, llm
from exporter.collectors.base import COLLECTORS, Collector, CollectorContext

if TYPE_CHECKING:
    from exporter.config import ExporterConfig

__all__ = ["COLLECTORS", "build_collectors", "cuda_allocator", "gpu", "llm"]


def build_collectors(cfg: ExporterConfig, context: CollectorContext) -> list[Collector[Any]]:
    """Instantiate the enabled collectors, in config order."""
    return [
        COLLECTORS[name](settings, context) for name, settings in cfg.enabled_collectors().items()
    ]
