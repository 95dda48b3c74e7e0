"""PLACEHOLDER: replaced by the cuda_allocator collector work."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client.core import Metric

from exporter.collectors.base import Collector, CollectorSettings, register


class CudaAllocatorSettings(CollectorSettings):
    pass


@register("cuda_allocator")
class CudaAllocatorCollector(Collector[CudaAllocatorSettings]):
    async def update(self) -> Sequence[Metric]:
        return []
