"""The exporter's config: one frozen model, from YAML < INFERWATCH_* env < flags."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, create_model

from exporter.collectors import COLLECTORS
from exporter.logs import LogFormat, LogLevel
from exporter.settings import FrozenModel, HostPort, ServiceConfig, load_settings

ENV_PREFIX = "INFERWATCH_"
# Variables of the other components share the prefix; they are not exporter settings.
ENV_IGNORE = ("REMEDIATOR_", "PROBE_", "CACHE")
DEFAULT_LISTEN = "0.0.0.0:9835"


if TYPE_CHECKING:
    # Built from the registry below; to the type checker a section is any collector's settings.
    class CollectorsConfig(FrozenModel):
        def __getattr__(self, name: str) -> Any: ...

else:
    # One section per registered collector (key: its name, model: its `settings_model`), built
    # from the registry, so adding a collector touches only its own file.
    CollectorsConfig = create_model(
        "CollectorsConfig",
        __base__=FrozenModel,
        **{name: (cls.settings_model, cls.settings_model()) for name, cls in COLLECTORS.items()},
    )


class ExporterConfig(ServiceConfig):
    listen: HostPort = Field(DEFAULT_LISTEN, description="HOST:PORT to serve /metrics on.")
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"
    simulate: str | None = Field(
        None, description="Run against simulated GPUs and probe files (a scenario name)."
    )
    proc_root: str = Field("/proc", description="Where to read /proc/<pid>/cgroup (host /proc).")
    log_root: str | None = Field(
        None,
        description="Directory holding the kubelet's containers/ and pods/ log dirs, used to "
        "name pods; default: var/log next to proc_root.",
    )
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
