"""drain: take one replica out of serving, then wait for its in-flight requests to finish."""

from __future__ import annotations

from pydantic import Field

from exporter.settings import FrozenModel
from remediations.actions import ActionContext, ActionSpec, Outcome, register, wait_inflight
from remediations.backends import ReplicaInfo
from remediations.guards import Blocked, Guard
from remediations.targets import TargetError, TargetRef


class DrainParams(FrozenModel):
    inflight_timeout_seconds: float = Field(120.0, ge=0)
    poll_seconds: float = Field(2.0, gt=0)


def check_removable(ctx: ActionContext, ref: TargetRef, replicas: list[ReplicaInfo]) -> ReplicaInfo:
    """The bounds every replica action shares: the last healthy replica and the drained share."""
    mine = next((r for r in replicas if r.name == ref.replica), None)
    if mine is None:
        raise TargetError(f"replica {ref.replica!r} is not part of {ref.deployment!r}")
    others = [r for r in replicas if r is not mine and r.healthy and r.serving]
    if mine.healthy and not others:
        raise Blocked(Guard.BOUNDS, f"{ref.replica} is the last healthy serving replica")
    if mine.serving:
        out = sum(1 for r in replicas if not r.serving) + 1
        if out / len(replicas) > ctx.max_drained_ratio:
            raise Blocked(
                Guard.BOUNDS,
                f"would leave {out} of {len(replicas)} replicas out of serving "
                f"(max {ctx.max_drained_ratio:.0%})",
            )
    return mine


async def run(ctx: ActionContext, ref: TargetRef, params: DrainParams) -> Outcome:
    replicas = await ctx.backend.replicas(ref)
    mine = check_removable(ctx, ref, replicas)
    if not mine.serving:
        raise Blocked(Guard.BOUNDS, f"{ref.replica} is already out of serving")
    plan = f"drain {ref.replica} of {ref.deployment}"
    await ctx.commit(plan)
    if ctx.dry_run:
        return Outcome("dry_run", f"would {plan}")
    await ctx.backend.set_serving(ref, False)
    after = {r.name: r for r in await ctx.backend.replicas(ref)}
    if ref.replica in after and after[ref.replica].serving:
        return Outcome("failed", f"{plan}: still serving after the change")
    drained = await wait_inflight(ctx, ref, params.inflight_timeout_seconds, params.poll_seconds)
    # Out of serving either way; "succeeded" only once its requests were seen to finish.
    return Outcome("succeeded" if drained.done else "failed", f"{plan}: {drained.detail}")


SPEC = register(
    ActionSpec(
        "drain", "replica", DrainParams, run, ("replicas", "set_serving", "inflight_selector")
    )
)
