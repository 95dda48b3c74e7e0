"""restart: drain the replica first, then replace it (delete the pod / restart the process)."""

from __future__ import annotations

from pydantic import Field

from exporter.settings import FrozenModel
from remediations.actions import ActionContext, ActionSpec, Outcome, register, wait_inflight
from remediations.actions.drain import check_removable
from remediations.targets import TargetRef


class RestartParams(FrozenModel):
    drain_timeout_seconds: float = Field(60.0, ge=0)
    ready_timeout_seconds: float = Field(300.0, gt=0)
    poll_seconds: float = Field(2.0, gt=0)


async def run(ctx: ActionContext, ref: TargetRef, params: RestartParams) -> Outcome:
    replicas = await ctx.backend.replicas(ref)
    mine = check_removable(ctx, ref, replicas)
    plan = f"restart {ref.replica} of {ref.deployment}"
    await ctx.commit(plan)
    if ctx.dry_run:
        return Outcome("dry_run", f"would {plan}")
    drained = "was not serving"
    if mine.serving:
        await ctx.backend.set_serving(ref, False)
        # At the timeout the replica is restarted anyway: it is the one the alert says is stuck.
        waited = await wait_inflight(ctx, ref, params.drain_timeout_seconds, params.poll_seconds)
        drained = waited.detail
    ok, detail = await ctx.backend.restart_replica(ref, params.ready_timeout_seconds)
    return Outcome("succeeded" if ok else "failed", f"{plan}: {drained}; {detail}")


SPEC = register(
    ActionSpec(
        "restart",
        "replica",
        RestartParams,
        run,
        ("replicas", "set_serving", "inflight_selector", "restart_replica"),
    )
)
