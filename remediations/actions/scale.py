"""scale: add or remove replicas by a step, within min/max, never below one ready replica."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from exporter.settings import FrozenModel
from remediations.actions import ActionContext, Outcome
from remediations.guards import Blocked, Guard
from remediations.targets import TargetRef


class ScaleParams(FrozenModel):
    direction: Literal["up", "down"] = "up"
    step: int = Field(1, ge=1)
    min_replicas: int = Field(1, ge=1, description="Never scale below this (and never to 0).")
    max_replicas: int = Field(8, ge=1)
    ready_timeout_seconds: float = Field(300.0, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> ScaleParams:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


async def run(ctx: ActionContext, ref: TargetRef, params: ScaleParams) -> Outcome:
    dep = await ctx.backend.deployment(ref)
    low = max(params.min_replicas, dep.min_replicas, 1)
    high = min(params.max_replicas, dep.max_replicas)
    if params.direction == "up":
        want = min(dep.desired + params.step, high)
        if want <= dep.desired:
            raise Blocked(Guard.BOUNDS, f"{dep.name} is at its maximum of {high} replicas")
    else:
        want = max(dep.desired - params.step, low)
        if want >= dep.desired:
            raise Blocked(Guard.BOUNDS, f"{dep.name} is at its minimum of {low} replicas")
        if dep.ready - (dep.desired - want) < 1:
            raise Blocked(
                Guard.BOUNDS, f"{dep.name} has {dep.ready} ready; would remove the last one"
            )
    plan = f"scale {dep.name} from {dep.desired} to {want} replicas"
    await ctx.commit(plan)
    if ctx.dry_run:
        return Outcome("dry_run", f"would {plan}")
    await ctx.backend.set_replicas(ref, want)
    ready = await ctx.backend.wait_ready(ref, want, params.ready_timeout_seconds)
    if ready < want:
        return Outcome(
            "failed", f"{plan}: only {ready} ready after {params.ready_timeout_seconds:g}s"
        )
    return Outcome("succeeded", f"{plan}: {ready} ready")
