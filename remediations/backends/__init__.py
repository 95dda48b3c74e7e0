"""What actions need from a place that runs engine replicas: Kubernetes or local processes.

Actions hold the logic (bounds, drain-before-restart, verify); a backend only reads state and
makes one kind of change per call, so both backends behave the same under the same guards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from remediations.targets import TargetRef

TargetKind = Literal["deployment", "replica", "node"]


class BackendError(Exception):
    """A backend call failed for good (after its retries); the message is one short line."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Conflict(BackendError):
    """The object changed since it was read (HTTP 409): re-read and decide again."""


@dataclass(frozen=True)
class Rollout:
    """A verified change: `ok` once the effect is observed; on failure, `restored` says whether
    what ran before was put back (and verified)."""

    ok: bool
    detail: str
    restored: bool = False


@dataclass(frozen=True)
class Autoscaler:
    """An HPA or KEDA ScaledObject that owns a deployment's replica count."""

    kind: str  # HorizontalPodAutoscaler | ScaledObject
    name: str
    min_replicas: int
    max_replicas: int
    resource_version: str | None
    original_min: int | None  # what the remediator raised it from (its annotation), if it did


@dataclass(frozen=True)
class DeploymentInfo:
    name: str
    namespace: str | None
    desired: int
    ready: int
    min_replicas: int = 0
    max_replicas: int = 1 << 30
    model: str | None = None
    lighter_model: str | None = None
    resource_version: str | None = None  # for a write conditional on this read


@dataclass(frozen=True)
class ReplicaInfo:
    name: str
    healthy: bool
    serving: bool


class Backend(Protocol):
    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def resolve(self, ref: TargetRef, kind: TargetKind) -> TargetRef:
        """Fill in what the labels imply (a pod's deployment); raise TargetError if it does not
        exist, or Blocked(OPT_OUT) if the object opted out of remediation."""

    async def deployment(self, ref: TargetRef) -> DeploymentInfo: ...

    async def replicas(self, ref: TargetRef) -> list[ReplicaInfo]:
        """All replicas of ref.deployment."""

    async def set_replicas(
        self, ref: TargetRef, count: int, resource_version: str | None = None
    ) -> None:
        """Set the replica count; with `resource_version`, only if nothing changed since that
        read (else Conflict)."""

    async def wait_rollout(
        self, ref: TargetRef, limit_s: float, model: str | None = None
    ) -> Rollout:
        """Wait until the deployment's last change rolled out (`kubectl rollout status`: every
        replica updated, ready and available) and, with `model`, every ready replica serves it."""

    async def autoscaler(self, ref: TargetRef) -> Autoscaler | None:
        """The HPA or ScaledObject that targets the deployment, if any."""

    async def set_autoscaler_min(
        self, ref: TargetRef, owner: Autoscaler, minimum: int, original: int | None
    ) -> None:
        """Set its minimum (conditional on owner.resource_version; Conflict if it changed),
        recording `original` in an annotation (None: remove the annotation)."""

    async def set_serving(self, ref: TargetRef, serving: bool) -> None: ...

    def inflight_selector(self, ref: TargetRef) -> str:
        """PromQL series selector for the requests ref.replica is working on."""

    async def restart_replica(self, ref: TargetRef, limit_s: float) -> tuple[bool, str]:
        """Stop and replace the (drained) replica; True once it (or its successor) is ready."""

    async def cordoned_nodes(self) -> list[str]:
        """Nodes (or GPUs) the remediator cordoned; ones a human cordoned are not counted."""

    async def drain_node(self, ref: TargetRef, limit_s: float) -> tuple[bool, str]:
        """Cordon ref.node (or GPU) and move its inference replicas elsewhere; True once all
        left. The detail says what was moved and what blocked the rest."""

    async def set_model(self, ref: TargetRef, model: str, limit_s: float) -> Rollout:
        """Roll the deployment onto `model` and verify it; on failure put back what ran before."""

    async def record_event(
        self, ref: TargetRef, kind: TargetKind, reason: str, message: str, ok: bool
    ) -> None:
        """Leave a trace on the target itself (Kubernetes Events); may do nothing."""
