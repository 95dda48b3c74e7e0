"""drain_node: cordon a node (or, locally, a GPU) and move its inference replicas elsewhere."""

from __future__ import annotations

from pydantic import Field

from exporter.settings import FrozenModel
from remediations.actions import ActionContext, ActionSpec, Outcome, register
from remediations.guards import Blocked, Guard
from remediations.targets import TargetError, TargetRef


class DrainNodeParams(FrozenModel):
    max_nodes: int = Field(1, ge=1, description="At most this many nodes cordoned at once.")
    eviction_timeout_seconds: float = Field(300.0, gt=0)


async def run(ctx: ActionContext, ref: TargetRef, params: DrainNodeParams) -> Outcome:
    node = ref.node or ref.gpu
    if node is None:
        raise TargetError("the alert has no node (or gpu) label")
    cordoned = await ctx.backend.cordoned_nodes()
    if node in cordoned:
        raise Blocked(Guard.BOUNDS, f"{node} is already cordoned")
    if len(cordoned) >= params.max_nodes:
        raise Blocked(
            Guard.BOUNDS, f"{len(cordoned)} already cordoned (max {params.max_nodes}): {cordoned}"
        )
    plan = f"cordon {node} and move its inference replicas"
    await ctx.commit(plan)
    if ctx.dry_run:
        return Outcome("dry_run", f"would {plan}")
    ok, detail = await ctx.backend.drain_node(ref, params.eviction_timeout_seconds)
    return Outcome("succeeded" if ok else "failed", f"{plan}: {detail}")


SPEC = register(
    ActionSpec("drain_node", "node", DrainNodeParams, run, ("cordoned_nodes", "drain_node"))
)
