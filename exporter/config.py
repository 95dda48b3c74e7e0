"""The exporter's config: one frozen model, from YAML < INFERWATCH_* env < flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from exporter.collectors.cuda_allocator import CudaAllocatorSettings
from exporter.collectors.gpu import GpuSettings
from exporter.collectors.llm import LlmSettings
from exporter.logs import LogFormat, LogLevel
from exporter.settings import FrozenModel, HostPort, ServiceConfig, load_settings

ENV_PREFIX = "INFERWATCH_"
# Variables of the other components share the prefix; they are not exporter settings.
ENV_IGNORE = ("REMEDIATOR_", "PROBE_", "CACHE")
DEFAULT_LISTEN = "0.0.0.0:9835"


class CollectorsConfig(FrozenModel):
    """One section per collector; the key is the collector's name."""

    gpu: GpuSettings = GpuSettings()
    cuda_allocator: CudaAllocatorSettings = CudaAllocatorSettings()
    llm: LlmSettings = LlmSettings()


class ExporterConfig(ServiceConfig):
    listen: HostPort = Field(DEFAULT_LISTEN, description="HOST:PORT to serve /metrics on.")
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"
    simulate: str | None = Field(
        None, description="Run against simulated GPUs and probe files (a scenario name)."
    )
    proc_root: str = Field("/proc", description="Where to read /proc/<pid>/cgroup (host /proc).")
    collectors: CollectorsConfig = CollectorsConfig()

    def enabled_collectors(self) -> dict[str, Any]:
        """Settings of the enabled collectors, by name."""
        sections = {
            name: getattr(self.collectors, name) for name in type(self.collectors).model_fields
        }
        return {name: s for name, s in sections.items() if s.enabled}


def load_config(
    path: str | Path | None = None,
    *,
    flags: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> ExporterConfig:
    """Raise exporter.settings.ConfigError with a path-qualified message on bad input."""
    return load_settings(
        ExporterConfig,
        path,
        env_prefix=ENV_PREFIX,
        env_ignore=ENV_IGNORE,
        flags=flags,
        environ=environ,
    )
