"""The collectors: every module here that applies `@register(...)` is one, found and imported
here (a collector is one file; node_exporter's registerCollector in init()). Registration order
is the modules' alphabetical order; the config lists the sections (checked by a test)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.collectors.base import COLLECTORS, Collector, CollectorContext

if TYPE_CHECKING:
    from exporter.config import ExporterConfig

__all__ = ["COLLECTORS", "build_collectors"]

for _path in sorted(Path(__file__).parent.glob("*.py")):
    if "\n@register(" in _path.read_text(encoding="utf-8"):
        importlib.import_module(f"exporter.collectors.{_path.stem}")


def build_collectors(cfg: ExporterConfig, context: CollectorContext) -> list[Collector[Any]]:
    """Instantiate the enabled collectors, in config order."""
    return [
        COLLECTORS[name](settings, context) for name, settings in cfg.enabled_collectors().items()
    ]
