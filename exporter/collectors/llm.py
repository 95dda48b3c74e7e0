"""PLACEHOLDER: replaced by the llm collector work."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client.core import Metric

from exporter.collectors.base import Collector, CollectorSettings, register


class LlmSettings(CollectorSettings):
    pass


@register("llm")
class LlmCollector(Collector[LlmSettings]):
    async def update(self) -> Sequence[Metric]:
        return []
