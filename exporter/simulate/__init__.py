"""PLACEHOLDER: simulated GPUs (fake NVML under the real pynvml) and scenarios."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from exporter.config import ExporterConfig

SCENARIOS: dict[str, str] = {"default": "a few healthy GPUs with allocator probe files"}


class Simulation:
    @classmethod
    def from_name(cls, name: str) -> Simulation:
        return cls()

    def configure(self, cfg: ExporterConfig) -> ExporterConfig:
        return cfg

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        yield
