"""Actions: each a small unit with typed params and one `run(ctx, ref, params)`.

An action reads the target's state, checks its bounds (raising Blocked), then awaits
`ctx.commit(plan)` — the point where the engine re-checks the alert, applies rate limits and
writes the audit row — and only then changes anything (or stops there in dry-run), then verifies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from remediations.backends import Backend, TargetKind
from remediations.prom import Prometheus
from remediations.targets import TargetRef

Result = Literal["succeeded", "failed", "dry_run"]


@dataclass(frozen=True)
class Outcome:
    result: Result
    detail: str


def _no_swap_record(original: str, lighter: str) -> None:
    return None


@dataclass
class ActionContext:
    backend: Backend
    prometheus: Prometheus | None
    dry_run: bool
    max_drained_ratio: float
    commit: Callable[[str], Awaitable[None]]
    # swap_model: called with (original, lighter) before the first replica changes
    swap_started: Callable[[str, str], None] = _no_swap_record


async def wait_inflight(
    ctx: ActionContext, ref: TargetRef, limit_s: float, poll: float = 1.0
) -> str:
    """Wait until Prometheus shows no requests in flight on the replica, or `limit_s`.

    Only samples scraped after the drain began count: a zero read before the replica left the
    endpoint list says nothing. No data (or no Prometheus) is not zero: we wait until the limit.
    """
    if ctx.prometheus is None:
        await asyncio.sleep(min(limit_s, poll))
        return "no Prometheus configured; waited one poll interval"
    selector = ctx.backend.inflight_selector(ref)
    began = time.time()
    query = f"sum({selector}) and on() (min(timestamp({selector})) > {began:.3f})"
    deadline = time.monotonic() + limit_s
    while True:
        last = await ctx.prometheus.value(query)
        if last is not None and last <= 0:
            return "no requests in flight"
        if time.monotonic() >= deadline:
            shown = "unknown (no fresh data)" if last is None else f"{last:g}"
            return f"drain timed out after {limit_s:g}s with {shown} in flight"
        await asyncio.sleep(poll)


ACTION_KINDS: dict[str, TargetKind] = {
    "scale": "deployment",
    "swap_model": "deployment",
    "drain": "replica",
    "restart": "replica",
    "drain_node": "node",
}
