"""scale: add or remove replicas by a step, within min/max, never below one ready replica.

Where an HPA or a KEDA ScaledObject owns the Deployment's replica count, patching replicas would
be undone by its next reconcile (and the two controllers would flap), so `scale` never does:
by default it raises the autoscaler's minimum (the original recorded in an annotation on it and
put back after the cooldown or once the alert resolves), or, with `autoscaler: block`, it stops
with `owned_by_autoscaler`. Every write is conditional on the resourceVersion it decided from;
on a conflict it reads again and decides again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any, Literal

from pydantic import Field, model_validator

from exporter.settings import FrozenModel
from remediations.actions import ActionContext, ActionSpec, Core, Lifecycle, Outcome, register
from remediations.backends import Autoscaler, Conflict, DeploymentInfo
from remediations.guards import Blocked, Guard
from remediations.state import State
from remediations.targets import TargetRef

log = logging.getLogger("remediations.scale")
CONFLICT_RETRIES = 5
POLL_SECONDS = 0.5


class ScaleParams(FrozenModel):
    direction: Literal["up", "down"] = "up"
    step: int = Field(1, ge=1)
    min_replicas: int = Field(1, ge=1, description="Never scale below this (and never to 0).")
    max_replicas: int = Field(8, ge=1)
    ready_timeout_seconds: float = Field(300.0, gt=0)
    autoscaler: Literal["raise_min", "block"] = Field(
        "raise_min",
        description="When an HPA or KEDA ScaledObject owns the replicas: raise its minimum "
        "(restored later) or block with owned_by_autoscaler.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> ScaleParams:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


def _decide(dep: DeploymentInfo, params: ScaleParams) -> int:
    low = max(params.min_replicas, dep.min_replicas, 1)
    high = min(params.max_replicas, dep.max_replicas)
    if params.direction == "up":
        want = min(dep.desired + params.step, high)
        if want <= dep.desired:
            raise Blocked(Guard.BOUNDS, f"{dep.name} is at its maximum of {high} replicas")
        return want
    want = max(dep.desired - params.step, low)
    if want >= dep.desired:
        raise Blocked(Guard.BOUNDS, f"{dep.name} is at its minimum of {low} replicas")
    if dep.ready - (dep.desired - want) < 1:
        raise Blocked(Guard.BOUNDS, f"{dep.name} has {dep.ready} ready; would remove the last one")
    return want


async def run(ctx: ActionContext, ref: TargetRef, params: ScaleParams) -> Outcome:
    owner = await ctx.backend.autoscaler(ref)
    if owner is not None:
        return await _through_autoscaler(ctx, ref, params, owner)
    plan = ""
    for attempt in range(CONFLICT_RETRIES):
        dep = await ctx.backend.deployment(ref)
        want = _decide(dep, params)
        if attempt == 0:
            plan = f"scale {dep.name} from {dep.desired} to {want} replicas"
            await ctx.commit(plan)
            if ctx.dry_run:
                return Outcome("dry_run", f"would {plan}")
        try:
            await ctx.backend.set_replicas(ref, want, dep.resource_version)
        except Conflict:
            log.info("%s changed since it was read; reading it again", dep.name)
            continue
        if attempt:
            plan += f" (set {want} after {attempt} concurrent change(s))"
        break
    else:
        return Outcome("failed", f"{plan}: it changed under every one of {CONFLICT_RETRIES} tries")
    rollout = await ctx.backend.wait_rollout(ref, params.ready_timeout_seconds)
    return Outcome("succeeded" if rollout.ok else "failed", f"{plan}: {rollout.detail}")


async def _through_autoscaler(
    ctx: ActionContext, ref: TargetRef, params: ScaleParams, owner: Autoscaler
) -> Outcome:
    what = f"{owner.kind} {owner.name}"
    if params.autoscaler == "block":
        raise Blocked(Guard.OWNED_BY_AUTOSCALER, f"{what} owns {ref.deployment}'s replicas")
    if params.direction == "down":
        raise Blocked(
            Guard.OWNED_BY_AUTOSCALER, f"{what} owns {ref.deployment}'s replicas; it scales down"
        )
    plan = ""
    want = 0
    for attempt in range(CONFLICT_RETRIES):
        dep = await ctx.backend.deployment(ref)
        high = min(params.max_replicas, owner.max_replicas)
        want = min(max(owner.min_replicas, dep.desired) + params.step, high)
        if want <= owner.min_replicas or want <= dep.desired:
            raise Blocked(Guard.BOUNDS, f"{dep.name} is at its maximum of {high} replicas")
        original = owner.min_replicas if owner.original_min is None else owner.original_min
        if attempt == 0:
            plan = f"raise {what}'s minimum from {owner.min_replicas} to {want}"
            await ctx.commit(plan)
            if ctx.dry_run:
                return Outcome("dry_run", f"would {plan}")
        try:
            await ctx.backend.set_autoscaler_min(ref, owner, want, original)
        except Conflict:
            log.info("%s changed since it was read; reading it again", what)
            again = await ctx.backend.autoscaler(ref)
            if again is None:
                return Outcome("failed", f"{plan}: {what} went away")
            owner = again
            continue
        ctx.autoscaler_raised()
        break
    else:
        return Outcome("failed", f"{plan}: it changed under every one of {CONFLICT_RETRIES} tries")
    # The autoscaler applies its new minimum on its own schedule; then the rollout must finish.
    deadline = time.monotonic() + params.ready_timeout_seconds
    while (dep := await ctx.backend.deployment(ref)).desired < want:
        if time.monotonic() >= deadline:
            return Outcome(
                "failed",
                f"{plan}: {what} did not scale {dep.name} to {want} "
                f"in {params.ready_timeout_seconds:g}s ({dep.desired} replicas)",
            )
        await asyncio.sleep(POLL_SECONDS)
    rollout = await ctx.backend.wait_rollout(ref, max(deadline - time.monotonic(), 0.0))
    return Outcome("succeeded" if rollout.ok else "failed", f"{plan}: {rollout.detail}")


class RaisedMinimumLifecycle(Lifecycle):
    """An autoscaler minimum the action raised goes back once its alert resolved or the
    target's cooldown ended, whichever comes first (kept in the state file across restarts)."""

    follows_resolution = True

    def resolved(self, state: State, key: str, alert_key: str, alertname: str) -> None:
        if state.restore_minimum_now(key):
            log.info("%s resolved; restoring the autoscaler minimum of %s", alertname, key)

    def bind(
        self,
        ctx: ActionContext,
        state: State,
        key: str,
        ref: TargetRef,
        params: Any,
        cooldown: float,
    ) -> ActionContext:
        def raised() -> None:
            state.minimum_raised(key, ref.namespace, ref.deployment or "", time.time() + cooldown)

        return replace(ctx, autoscaler_raised=raised)

    async def housekeeping(self, core: Core) -> None:
        for target, namespace, deployment in core.state.minimums_due():
            try:
                await self._restore(
                    core, target, TargetRef(namespace=namespace, deployment=deployment)
                )
            except Conflict:
                log.info("%s changed while restoring its minimum; trying again", target)
            except Exception as exc:
                log.exception("restoring the autoscaler minimum of %s failed", target)
                core.count_error("restore_minimum", f"{target}: {exc}")

    async def _restore(self, core: Core, target: str, ref: TargetRef) -> None:
        """Put back the minimum recorded in the autoscaler's own annotation."""
        async with core.lock(ref, "deployment"):
            owner = await core.backend.autoscaler(ref)
            if owner is None or owner.original_min is None:
                core.state.minimum_restored(target)  # gone, or an operator restored it
                return
            started = time.monotonic()
            await core.backend.set_autoscaler_min(ref, owner, owner.original_min, None)
            core.state.minimum_restored(target)
            detail = f"restored {owner.kind} {owner.name}'s minimum to {owner.original_min}"
            audit_id = core.begin("scale", target, detail)
            core.end(audit_id, "scale", Outcome("succeeded", detail), time.monotonic() - started)


SPEC = register(
    ActionSpec(
        "scale",
        "deployment",
        ScaleParams,
        run,
        ("deployment", "set_replicas", "wait_rollout", "autoscaler", "set_autoscaler_min"),
        RaisedMinimumLifecycle(),
    )
)
