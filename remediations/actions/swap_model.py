"""swap_model: switch a deployment to its configured lighter model; the engine swaps it back
once the alert has resolved, the swap is over and the quiet period passed."""

from __future__ import annotations

from pydantic import Field

from exporter.settings import FrozenModel
from remediations.actions import ActionContext, Outcome
from remediations.guards import Blocked, Guard
from remediations.targets import TargetError, TargetRef


class SwapModelParams(FrozenModel):
    quiet_period_seconds: float = Field(
        600.0, ge=0, description="After the alert resolves, wait this long, then swap back."
    )
    ready_timeout_seconds: float = Field(300.0, gt=0)


async def run(ctx: ActionContext, ref: TargetRef, params: SwapModelParams) -> Outcome:
    dep = await ctx.backend.deployment(ref)
    if not dep.lighter_model or not dep.model:
        raise TargetError(f"{dep.name} has no lighter model configured")
    if dep.model == dep.lighter_model:
        raise Blocked(Guard.BOUNDS, f"{dep.name} already serves {dep.lighter_model}")
    plan = f"swap {dep.name} from {dep.model} to {dep.lighter_model}"
    await ctx.commit(plan)
    if ctx.dry_run:
        return Outcome("dry_run", f"would {plan}")
    ctx.swap_started(dep.model, dep.lighter_model)
    await ctx.backend.set_model(ref, dep.lighter_model)
    ready = await ctx.backend.wait_ready(ref, max(dep.desired, 1), params.ready_timeout_seconds)
    if ready < max(dep.desired, 1):
        return Outcome("failed", f"{plan}: only {ready} ready")
    return Outcome("succeeded", f"{plan}: {ready} ready")


async def swap_back(ctx: ActionContext, ref: TargetRef, original: str, limit_s: float) -> Outcome:
    dep = await ctx.backend.deployment(ref)
    plan = f"swap {dep.name} back to {original}"
    if dep.model == original:  # e.g. local replicas restarted on their configured model
        return Outcome("succeeded", f"{dep.name} already serves {original}")
    await ctx.backend.set_model(ref, original)
    ready = await ctx.backend.wait_ready(ref, max(dep.desired, 1), limit_s)
    if ready < max(dep.desired, 1):
        return Outcome("failed", f"{plan}: only {ready} ready")
    return Outcome("succeeded", plan)
