"""Config models of the llm collector's parts: targets, the canary probe, Kubernetes discovery."""

from __future__ import annotations

import urllib.parse
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator

from exporter.settings import FrozenModel


def check_engine(value: str) -> str:
    """ "auto" or a registered engine (the registry is the only list of engines)."""
    from exporter.engines.registry import ENGINE_NAMES

    if value != "auto" and value not in ENGINE_NAMES:
        raise ValueError(f"must be auto or one of {', '.join(ENGINE_NAMES)}")
    return value


def _engine_enum() -> list[str]:
    from exporter.engines.registry import ENGINE_NAMES

    return ["auto", *ENGINE_NAMES]


EngineChoice = Annotated[
    str,
    AfterValidator(check_engine),
    Field(json_schema_extra=lambda schema: schema.update(enum=_engine_enum())),
]


def check_http_url(value: str) -> str:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL, e.g. http://127.0.0.1:8000")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise ValueError(f"bad port: {exc}") from None
    return value


class CanarySettings(FrozenModel):
    """A tiny streaming chat completion, to measure latency even where the engine has no TTFT."""

    enabled: bool = False
    interval_seconds: float = Field(60.0, gt=0, description="Seconds between probes.")
    timeout_seconds: float = Field(10.0, gt=0, description="A probe taking longer failed.")
    path: str = Field("/v1/chat/completions", description="OpenAI-compatible streaming endpoint.")
    prompt: str = "Reply with the word OK."
    max_tokens: int = Field(4, ge=1, le=256)
    model: str | None = Field(None, description="Model to ask for (default: the target's model).")


class TargetSettings(FrozenModel):
    """One engine. `url` is its HTTP root (then /metrics) or its full metrics URL."""

    url: str
    engine: EngineChoice = "auto"
    name: str | None = Field(None, description="The target label (default host:port).")
    model: str | None = Field(None, description="Model label when the metrics carry none.")
    health_url: str | None = Field(None, description="Default: the engine's own health path.")
    info_url: str | None = Field(None, description="Default: the engine's own info path.")
    canary: CanarySettings | None = Field(None, description="Overrides the collector's canary.")

    _check_url = field_validator("url")(check_http_url)

    @field_validator("health_url", "info_url")
    @classmethod
    def _optional_url(cls, value: str | None) -> str | None:
        return None if value is None else check_http_url(value)


class KubernetesSettings(FrozenModel):
    """Engine pods on this exporter's node, found by label selector (kubernetes_asyncio watch)."""

    enabled: bool = False
    label_selector: str = Field("inferwatch.io/scrape=true", description="Which pods are engines.")
    namespace: str | None = Field(None, description="Watch one namespace (default: all).")
    node_name: str | None = Field(
        None, description="This node's name (default: the NODE_NAME environment variable)."
    )
    port: int | None = Field(
        None, ge=1, le=65535, description="Engine port (default: annotation, named port)."
    )
    port_name: str = Field("http", description="Container port name to use when no port is set.")
    scheme: Literal["http", "https"] = "http"
    metrics_path: str = "/metrics"
    engine_label: str = Field(
        "inference.networking.k8s.io/engine-type", description="Pod label naming the engine."
    )
    kubeconfig: str | None = Field(None, description="Default: in-cluster service account.")
