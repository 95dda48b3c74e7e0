"""Settings of the local backend (engine replicas as processes on this machine).

Kept apart from the backend so the config loads without starting anything, and so the demo can
build a LocalSettings in Python and hand it to LocalBackend directly.
"""

from __future__ import annotations

import string
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from exporter.settings import FrozenModel

PLACEHOLDERS = frozenset({"host", "port", "model", "replica", "gpu", "deployment"})


class LocalDeployment(FrozenModel):
    """One engine served by N identical processes, each on its own port."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    command: list[str] = Field(
        min_length=1,
        description="argv template (never a shell); placeholders {host} {port} {model} "
        "{replica} {gpu} {deployment}",
    )
    model: str = Field(description="Substituted for {model}: a model path or name.")
    model_name: str | None = Field(
        None, description="The `model` label alerts carry for this deployment (default: model)."
    )
    lighter_model: str | None = Field(None, description="{model} while swapped (swap_model).")
    lighter_model_name: str | None = Field(
        None, description="The `model` label while swapped (default: lighter_model)."
    )
    replicas: int = Field(1, ge=0, description="Replicas started with the backend.")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(4, ge=1)
    gpus: list[str] = Field(
        default_factory=list,
        description="GPU ids handed out round-robin as {gpu} and CUDA_VISIBLE_DEVICES.",
    )
    env: dict[str, str] = Field(default_factory=dict)
    ready_path: str = Field("/health", pattern=r"^/")
    ready_timeout_seconds: float = Field(120.0, gt=0)
    stop_timeout_seconds: float = Field(10.0, gt=0)
    labels: dict[str, str] = Field(
        default_factory=lambda: {"engine": "llamacpp"},
        description="Extra labels written for each replica in the endpoint files.",
    )
    opt_out: bool = Field(False, description="Never act on this deployment.")

    @field_validator("command")
    @classmethod
    def _known_placeholders(cls, argv: list[str]) -> list[str]:
        for arg in argv:
            for _, field, _, _ in string.Formatter().parse(arg):
                if field is not None and field not in PLACEHOLDERS:
                    raise ValueError(
                        f"unknown placeholder {{{field}}} in {arg!r}; "
                        f"known: {', '.join(sorted(PLACEHOLDERS))}"
                    )
        return argv

    @model_validator(mode="after")
    def _bounds(self) -> LocalDeployment:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        if not self.min_replicas <= self.replicas <= self.max_replicas:
            raise ValueError("replicas must lie within min_replicas..max_replicas")
        return self

    @property
    def alert_model(self) -> str:
        return self.model_name or self.model

    def model_label(self, model: str) -> str:
        """The `model` label of a replica serving `model` (the main or the lighter one)."""
        if model == self.model:
            return self.alert_model
        if model == self.lighter_model:
            return self.lighter_model_name or model
        return model

    @property
    def model_labels(self) -> set[str]:
        """Every `model` label this deployment's replicas may carry, swapped or not."""
        models = [self.model] + ([self.lighter_model] if self.lighter_model else [])
        return {self.model_label(m) for m in models}


class LocalSettings(FrozenModel):
    host: str = "127.0.0.1"
    port_range: tuple[int, int] = Field((18100, 18199), description="Ports handed to replicas.")
    endpoint_file: Path = Field(
        description="Prometheus file_sd JSON of the replicas that serve traffic (routers read it)."
    )
    scrape_file: Path | None = Field(
        None,
        description="file_sd JSON of every running replica, draining ones included (point the "
        "exporter's llm.file_sd here so a draining replica's in-flight requests stay visible).",
    )
    log_dir: Path | None = Field(None, description="Replica logs (default: next to endpoint_file).")
    deployments: list[LocalDeployment] = Field(min_length=1)

    @model_validator(mode="after")
    def _valid(self) -> LocalSettings:
        low, high = self.port_range
        if not 0 < low <= high < 65536:
            raise ValueError("port_range must be [low, high] within 1..65535")
        names = [d.name for d in self.deployments]
        if len(set(names)) != len(names):
            raise ValueError("deployment names must be unique")
        if sum(d.max_replicas for d in self.deployments) > high - low + 1:
            raise ValueError("port_range is smaller than the sum of max_replicas")
        return self
