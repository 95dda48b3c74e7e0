"""PLACEHOLDER: replaced by the gpu collector work."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client.core import Metric

from exporter.collectors.base import Collector, CollectorSettings, register


class GpuSettings(CollectorSettings):
    pass


@register("gpu")
class GpuCollector(Collector[GpuSettings]):
    async def update(self) -> Sequence[Metric]:
        return []
