"""swap_model: switch a deployment to its configured lighter model, and back once the alert has
resolved, the swap is over and the quiet period passed without the alert firing again.

The swap's state machine lives here (SwapLifecycle): a swap is recorded before the first replica
changes; the alert's resolution is kept as a fact of its own (it may come while the swap still
runs, since restarting replicas changes what the rule sees) and turned into a swap-back time once
the swap ended; a new firing cancels it; a swap cut off by a restart is ended at the next start
and still undone after its alert resolved. All of it is in the state file (and, under leader
election, on the Deployment's `inferwatch.io/swap-restore` annotation: remediations.cluster_state).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from pydantic import Field

from exporter.settings import FrozenModel
from remediations.actions import (
    ActionContext,
    ActionSpec,
    Core,
    Lifecycle,
    Outcome,
    register,
)
from remediations.guards import Blocked, Guard
from remediations.state import State, Swap
from remediations.targets import TargetError, TargetRef

log = logging.getLogger("remediations")
SWAP_BACK_TIMEOUT_SECONDS = 300.0
SWAP_BACK_RETRY_SECONDS = 60.0


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
    await ctx.swap_started(dep.model, dep.lighter_model)
    rollout = await ctx.backend.set_model(ref, dep.lighter_model, params.ready_timeout_seconds)
    if rollout.ok:
        return Outcome("succeeded", f"{plan}: {rollout.detail}")
    if rollout.restored:
        ctx.swap_undone()
    return Outcome("failed", f"{plan}: {rollout.detail}")


async def swap_back(ctx: ActionContext, ref: TargetRef, original: str, limit_s: float) -> Outcome:
    dep = await ctx.backend.deployment(ref)
    plan = f"swap {dep.name} back to {original}"
    if dep.model == original:  # e.g. local replicas restarted on their configured model
        return Outcome("succeeded", f"{dep.name} already serves {original}")
    rollout = await ctx.backend.set_model(ref, original, limit_s)
    if rollout.ok:
        return Outcome("succeeded", plan)
    return Outcome("failed", f"{plan}: {rollout.detail}")


async def _no_commit(plan: str) -> None:
    return None


class SwapLifecycle(Lifecycle):
    follows_resolution = True

    def at_start(self, state: State) -> None:
        for swap in state.end_interrupted_swaps():
            log.warning(
                "the swap of %s was interrupted by a restart; it is undone once its alert resolved",
                swap.target,
            )

    def fired(self, state: State, key: str, alert_key: str) -> None:
        state.swap_fired(key, alert_key)  # stay on the lighter model

    def resolved(self, state: State, key: str, alert_key: str, alertname: str) -> None:
        swap = state.swap_resolved(key, alert_key)
        if swap is not None:
            log.info(
                "%s resolved; swapping %s back %gs after %s",
                alertname,
                swap.target,
                swap.quiet_seconds,
                "the swap ends" if swap.in_flight else "now",
            )

    def bind(
        self,
        ctx: ActionContext,
        state: State,
        key: str,
        ref: TargetRef,
        params: Any,
        cooldown: float,
    ) -> ActionContext:
        quiet = params.quiet_period_seconds if isinstance(params, SwapModelParams) else 0.0

        async def started(original: str, lighter: str) -> None:
            state.begin_swap(
                Swap(
                    key,
                    ref.namespace,
                    ref.deployment or "",
                    original,
                    lighter,
                    time.time(),
                    None,
                    quiet,
                )
            )
            await state.written()  # under leader election: on the Deployment before it changes

        return replace(ctx, swap_started=started, swap_undone=lambda: state.drop_swap(key))

    def ended(self, state: State, key: str) -> None:
        swap = state.end_swap(key)
        if swap is not None and swap.back_at is not None:
            log.info("%s resolved during the swap; swapping back in %gs", key, swap.quiet_seconds)

    async def housekeeping(self, core: Core) -> None:
        for swap in core.state.swaps_due():
            try:
                await self._swap_back(core, swap)
            except Exception as exc:
                log.exception("swap back of %s failed", swap.target)
                core.count_error("swap_back", f"{swap.target}: {exc}")

    async def _swap_back(self, core: Core, swap: Swap) -> None:
        if core.paused:
            return  # an operator stopped actions; the swap waits for them
        ref = TargetRef(namespace=swap.namespace, deployment=swap.deployment)
        ctx = ActionContext(core.backend, core.prometheus, False, 1.0, _no_commit)
        async with core.lock(ref, "deployment"):
            audit_id = core.begin("swap_model", swap.target, f"swap back to {swap.original}")
            started = time.monotonic()
            outcome = await swap_back(ctx, ref, swap.original, SWAP_BACK_TIMEOUT_SECONDS)
            core.end(audit_id, "swap_model", outcome, time.monotonic() - started)
            if outcome.result == "succeeded":
                core.state.drop_swap(swap.target)
            else:
                core.state.schedule_swap_back(swap.target, time.time() + SWAP_BACK_RETRY_SECONDS)


SPEC = register(
    ActionSpec(
        "swap_model",
        "deployment",
        SwapModelParams,
        run,
        ("deployment", "set_model"),
        SwapLifecycle(),
    )
)
