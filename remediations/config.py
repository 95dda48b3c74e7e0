"""The remediator's config: one frozen model, from YAML < INFERWATCH_REMEDIATOR_* env < flags."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from exporter.logs import LogFormat, LogLevel
from exporter.settings import ConfigError, FrozenModel, HostPort, ServiceConfig, load_settings
from remediations.backends.local_settings import LocalSettings

ENV_PREFIX = "INFERWATCH_REMEDIATOR_"
DEFAULT_LISTEN = "0.0.0.0:9836"
DEFAULT_PLAYBOOKS = Path(__file__).parent / "playbooks" / "default.yaml"
# Alertmanager sets no maximum on a webhook notification: `max_alerts: 0` (its default) sends
# every alert of the group, label values have no length limit, and a 413 is never retried. So
# the default takes 10,000 alerts (the default queue) of 1.6 KiB each — an alert from our rules,
# with its annotations, is 0.6-1 KiB of JSON. Set `max_alerts` on the route to bound it for sure.
MAX_BODY_BYTES = 16 << 20


class RateLimit(FrozenModel):
    max_actions: int = Field(ge=1)
    window_seconds: float = Field(gt=0)


class GuardSettings(FrozenModel):
    """Every guard is on by default; the numbers are the defaults a playbook may tighten."""

    idempotency_ttl_seconds: float = Field(
        6 * 3600.0, gt=0, description="How long an alert (fingerprint, startsAt) is remembered."
    )
    cooldown_seconds: float = Field(600.0, ge=0, description="Quiet time per target after acting.")
    action_rate_limit: RateLimit = RateLimit(max_actions=6, window_seconds=3600)
    global_rate_limit: RateLimit = RateLimit(max_actions=20, window_seconds=3600)
    max_attempts: int = Field(
        3, ge=1, description="Failures per target within attempts_window before escalating."
    )
    attempts_window_seconds: float = Field(3600.0, gt=0)
    escalate_after: int = Field(
        3,
        ge=1,
        description="Remediations of one target within escalate_window after which it is left "
        "to a human (InferwatchRemediationIneffective).",
    )
    escalate_window_seconds: float = Field(24 * 3600.0, gt=0)
    circuit_failure_threshold: int = Field(
        3, ge=1, description="Consecutive failed actions that open the circuit breaker."
    )
    max_drained_ratio: float = Field(
        0.5, gt=0, le=1, description="At most this share of a deployment's replicas out of serving."
    )
    opt_out_label: str = Field(
        "inferwatch_remediation",
        description="Alert label or annotation; the value 'disabled' opts the target out.",
    )
    recheck: bool = Field(True, description="Re-check the alert against Prometheus before acting.")


class PrometheusSettings(FrozenModel):
    url: str | None = Field(None, description="Prometheus base URL for re-checks and in-flight.")
    timeout_seconds: float = Field(5.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http(s) URL, e.g. http://127.0.0.1:9090")
        return value.rstrip("/") if value else value


class TlsSettings(FrozenModel):
    cert_file: Path
    key_file: Path


class KubernetesSettings(FrozenModel):
    kubeconfig: Path | None = Field(
        None, description="kubeconfig file; unset: in-cluster service account, else ~/.kube/config"
    )
    serving_label: str = Field(
        "inferwatch.io/serving",
        description="Pod label the Service selects on; drain sets it to 'false'.",
    )
    inference_pod_selector: str = Field(
        "inferwatch.io/inference=true", description="Which pods drain_node evicts."
    )
    opt_out_key: str = Field(
        "inferwatch.io/remediation",
        description="Label or annotation on a Deployment/Pod/Node; 'disabled' opts it out.",
    )
    lighter_model_annotation: str = Field(
        "inferwatch.io/lighter-model",
        description="Deployment annotation naming the model swap_model switches to.",
    )
    model_env: str = Field(
        "MODEL", description="Container env var holding the model name (swap_model patches it)."
    )
    model_container: str | None = Field(
        None, description="Container that runs the engine (default: the first one)."
    )
    request_retries: int = Field(3, ge=0, description="Retries on 409 conflicts and 5xx.")
    retry_backoff_seconds: float = Field(0.5, ge=0)
    poll_interval_seconds: float = Field(1.0, gt=0)
    events: bool = Field(True, description="Record a Kubernetes Event for every action.")


class LeaderElectionSettings(FrozenModel):
    """Several replicas, one acting: leader election on a coordination.k8s.io/v1 Lease, with
    client-go's defaults (tools/leaderelection)."""

    enabled: bool = Field(False, description="Elect one leader; only the leader acts.")
    lease_name: str = Field(
        "inferwatch-remediator",
        description="The Lease object's name; the ConfigMap <lease_name>-state beside it holds "
        "the kill switch and circuit breaker the replicas share.",
    )
    lease_namespace: str = Field(
        "default", description="Namespace of the Lease (the remediator's own)."
    )
    identity: str | None = Field(
        None, description="This replica's holderIdentity (default: POD_NAME or hostname, + id)."
    )
    lease_duration_seconds: float = Field(
        15.0, gt=0, description="How long followers wait after the last renewal to take over."
    )
    renew_deadline_seconds: float = Field(
        10.0, gt=0, description="A leader that cannot renew within this stops acting."
    )
    retry_period_seconds: float = Field(2.0, gt=0, description="Between tries to acquire/renew.")

    @model_validator(mode="after")
    def _ordered(self) -> LeaderElectionSettings:
        # client-go's NewLeaderElector refuses the same: a leader must stop before it can expire.
        if self.lease_duration_seconds <= self.renew_deadline_seconds:
            raise ValueError("lease_duration_seconds must be greater than renew_deadline_seconds")
        if self.renew_deadline_seconds <= 1.2 * self.retry_period_seconds:
            raise ValueError(
                "renew_deadline_seconds must be greater than 1.2 x retry_period_seconds"
            )
        return self


class RemediatorConfig(ServiceConfig):
    listen: HostPort = Field(DEFAULT_LISTEN, description="HOST:PORT for the webhook.")
    token: str | None = Field(None, description="Bearer token Alertmanager sends.")
    token_file: Path | None = Field(None, description="File holding the bearer token.")
    tls: TlsSettings | None = None
    playbooks: Path = DEFAULT_PLAYBOOKS
    state: Path = Field(Path("inferwatch-remediator.db"), description="SQLite state file.")
    dry_run: bool = Field(False, description="Record what would be done; change nothing.")
    kill_switch: bool = Field(False, description="Start with every action blocked.")
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"
    max_body_bytes: int = Field(
        MAX_BODY_BYTES,
        ge=1024,
        description="Largest webhook body; larger ones get 413, which Alertmanager never retries.",
    )
    queue_size: int = Field(
        10000,
        ge=1,
        description="Alerts waiting for a worker; a notification larger than the whole queue "
        "is still taken when the queue is empty.",
    )
    client_timeout_seconds: float = Field(
        10.0, gt=0, description="A request head, and then its body, must arrive within this."
    )
    keepalive_timeout_seconds: float = Field(
        75.0, gt=0, description="Idle keep-alive connections are closed after this."
    )
    max_connections: int = Field(
        1000,
        ge=1,
        description="Open client connections; at the limit the oldest is closed "
        "(lowered to fit the file descriptor limit).",
    )
    workers: int = Field(8, ge=1)
    shutdown_timeout_seconds: float = Field(30.0, ge=0)
    audit_max_entries: int = Field(10000, ge=100)
    namespaces: list[str] = Field(
        default_factory=lambda: ["default"], description="Namespaces actions may touch."
    )
    name_patterns: list[str] = Field(
        default_factory=lambda: [".*"],
        description="Regexes (full match) a target's name must match.",
    )
    prometheus: PrometheusSettings = PrometheusSettings()
    guards: GuardSettings = GuardSettings()
    backend: Literal["kubernetes", "local"] = "kubernetes"
    kubernetes: KubernetesSettings = KubernetesSettings()
    leader_election: LeaderElectionSettings = LeaderElectionSettings()
    local: LocalSettings | None = None

    @field_validator("token", mode="before")
    @classmethod
    def _token_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int | float) else value

    @field_validator("name_patterns")
    @classmethod
    def _regexes(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a valid regex: {exc}") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RemediatorConfig:
        if self.backend == "local" and self.local is None:
            raise ValueError("backend 'local' needs a `local:` section")
        if self.backend == "local" and self.leader_election.enabled:
            raise ValueError("leader_election needs the kubernetes backend (local: one process)")
        if self.guards.recheck and self.prometheus.url is None:
            raise ValueError(
                "prometheus.url is required while guards.recheck is on "
                "(set guards.recheck: false to act without re-checking alerts)"
            )
        return self

    def bearer_token(self) -> str:
        """The token from `token` or `token_file`; a missing or empty one is a config error."""
        if self.token:
            return self.token
        if self.token_file is not None:
            try:
                token = self.token_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"token_file: cannot read {self.token_file}: {exc}") from None
            if token:
                return token
            raise ConfigError(f"token_file: {self.token_file} is empty")
        raise ConfigError(
            "token: no bearer token; use --token-file FILE or INFERWATCH_REMEDIATOR_TOKEN"
        )

    def compiled_patterns(self) -> list[re.Pattern[str]]:
        return [re.compile(p) for p in self.name_patterns]


def load_config(
    path: str | Path | None = None,
    *,
    flags: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> RemediatorConfig:
    """Raise exporter.settings.ConfigError with a path-qualified message on bad input."""
    return load_settings(
        RemediatorConfig, path, env_prefix=ENV_PREFIX, flags=flags, environ=environ
    )
