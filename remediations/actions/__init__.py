"""Actions: each a small unit with typed params and one `run(ctx, ref, params)`.

An action reads the target's state, checks its bounds (raising Blocked), then awaits
`ctx.commit(plan)` — the point where the engine re-checks the alert, applies rate limits and
writes the audit row — and only then changes anything (or stops there in dry-run), then verifies.

Each action module ends with `register(ActionSpec(...))`: its name, the kind of target it acts on,
its params model and the backend calls it needs. `remediations.actions.registry` imports every
module; the playbook schema, the engine's runner table and the metric label values all derive
from that registry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from exporter.settings import FrozenModel
from remediations.backends import Backend, TargetKind
from remediations.prom import Prometheus
from remediations.targets import TargetRef

if TYPE_CHECKING:
    from remediations.state import State

Result = Literal["succeeded", "failed", "dry_run"]


@dataclass(frozen=True)
class Outcome:
    result: Result
    detail: str


async def _no_swap_record(original: str, lighter: str) -> None:
    return None


def _nothing() -> None:
    return None


@dataclass
class ActionContext:
    backend: Backend
    prometheus: Prometheus | None
    dry_run: bool
    max_drained_ratio: float
    commit: Callable[[str], Awaitable[None]]
    # swap_model: awaited with (original, lighter) before the first replica changes; returns
    # once the record of what to restore is kept where every replica finds it
    swap_started: Callable[[str, str], Awaitable[None]] = _no_swap_record
    # swap_model: the swap did not roll out and what ran before is back: nothing to swap back
    swap_undone: Callable[[], None] = _nothing
    # scale: an autoscaler's minimum was raised; the engine restores it later
    autoscaler_raised: Callable[[], None] = _nothing


@dataclass(frozen=True)
class Drained:
    """Whether the replica's in-flight requests were seen to finish, and what was seen."""

    done: bool
    detail: str


async def wait_inflight(
    ctx: ActionContext, ref: TargetRef, limit_s: float, poll: float = 1.0
) -> Drained:
    """Wait until Prometheus shows no requests in flight on the replica, or `limit_s`.

    Only samples scraped after the drain began count: a zero read before the replica left the
    endpoint list says nothing. No data is not zero: we wait until the limit, and so we do with no
    Prometheus configured at all (the whole limit, never less: requests are never cut early).
    """
    if ctx.prometheus is None:
        await asyncio.sleep(limit_s)
        return Drained(
            True, f"no Prometheus to watch in-flight requests; waited the whole {limit_s:g}s"
        )
    selector = ctx.backend.inflight_selector(ref)
    began = time.time()
    query = f"sum({selector}) and on() (min(timestamp({selector})) > {began:.3f})"
    deadline = time.monotonic() + limit_s
    while True:
        last = await ctx.prometheus.value(query)
        if last is not None and last <= 0:
            return Drained(True, "no requests in flight")
        if time.monotonic() >= deadline:
            shown = "unknown (no fresh data)" if last is None else f"{last:g}"
            return Drained(False, f"drain timed out after {limit_s:g}s with {shown} in flight")
        await asyncio.sleep(poll)


class Core(Protocol):
    """What an action's lifecycle may use of the engine for work outside one alert's run."""

    state: State
    backend: Backend
    prometheus: Prometheus | None

    @property
    def paused(self) -> bool:
        """An operator stopped actions (kill switch) or the circuit breaker is open."""

    def lock(self, ref: TargetRef, kind: TargetKind) -> asyncio.Lock: ...

    def begin(self, action: str, target: str, plan: str) -> int:
        """Journal an action that starts now (no result yet); its audit id."""

    def end(self, audit_id: int, action: str, outcome: Outcome, duration: float) -> None:
        """Record its outcome (audit log and metrics)."""

    def count_error(self, where: str, what: str) -> None:
        """A failure that must not stop anything: logged and counted."""


class Lifecycle:
    """Hooks for an action whose effect outlives its run (a model swap to undo, an autoscaler
    minimum to restore). The engine calls them; these defaults do nothing."""

    follows_resolution = False  # resolved(...) wants the target of resolved alerts

    def at_start(self, state: State) -> None:
        """Work a killed predecessor left half done."""

    def fired(self, state: State, key: str, alert_key: str) -> None:
        """The alert fired (again) for target `key`, before any guard."""

    def resolved(self, state: State, key: str, alert_key: str, alertname: str) -> None:
        """The alert resolved for target `key`."""

    def bind(
        self,
        ctx: ActionContext,
        state: State,
        key: str,
        ref: TargetRef,
        params: Any,
        cooldown: float,
    ) -> ActionContext:
        """The context one run gets (its hooks bound to the target)."""
        return ctx

    def ended(self, state: State, key: str) -> None:
        """The run on `key` is over (whatever its result, interrupted too)."""

    async def housekeeping(self, core: Core) -> None:
        """Called a few times a second: undo what is due."""


@dataclass(frozen=True)
class ActionSpec:
    """What the rest of the remediator knows about an action."""

    name: str  # the playbook's `action` and the metrics' `action` label
    kind: TargetKind  # what the alert's labels must resolve to
    params: type[FrozenModel]  # the playbook's `params`, validated at start
    run: Callable[[ActionContext, TargetRef, Any], Awaitable[Outcome]]
    needs: tuple[str, ...]  # the Backend methods it calls (both backends implement them)
    lifecycle: Lifecycle = field(default_factory=Lifecycle)


REGISTRY: dict[str, ActionSpec] = {}


def register(spec: ActionSpec) -> ActionSpec:
    for method in spec.needs:
        if not hasattr(Backend, method):
            raise TypeError(f"action {spec.name} needs Backend.{method}, which does not exist")
    if spec.name in REGISTRY:
        raise ValueError(f"action {spec.name} is registered twice")
    REGISTRY[spec.name] = spec
    return spec
