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

    async def set_replicas(self, ref: TargetRef, count: int) -> None: ...

    async def wait_ready(self, ref: TargetRef, count: int, limit_s: float) -> int:
        """Wait until `count` replicas of the deployment are ready; return how many are."""

    async def set_serving(self, ref: TargetRef, serving: bool) -> None: ...

    def inflight_selector(self, ref: TargetRef) -> str:
        """PromQL series selector for the requests ref.replica is working on."""

    async def restart_replica(self, ref: TargetRef, limit_s: float) -> tuple[bool, str]:
        """Stop and replace the (drained) replica; True once it (or its successor) is ready."""

    async def cordoned_nodes(self) -> list[str]: ...

    async def drain_node(self, ref: TargetRef, limit_s: float) -> tuple[bool, str]:
        """Cordon ref.node (or GPU) and move its inference replicas elsewhere."""

    async def set_model(self, ref: TargetRef, model: str) -> None: ...

    async def record_event(
        self, ref: TargetRef, kind: TargetKind, reason: str, message: str, ok: bool
    ) -> None:
        """Leave a trace on the target itself (Kubernetes Events); may do nothing."""
