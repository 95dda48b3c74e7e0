"""Guard names and the exception that carries a block to the audit log.

Each name is the `guard` label of inferwatch_remediation_guard_blocks_total and the first word of
the audit entry's `reason`, so a blocked action can always be traced to the guard that stopped it.
"""

from __future__ import annotations

from enum import StrEnum


class Guard(StrEnum):
    FIRING_ONLY = "firing_only"  # resolved notifications never trigger an action
    TARGET = "target"  # labels name no valid, allow-listed, existing target
    OPT_OUT = "opt_out"  # the target (or the alert) opted out
    IDEMPOTENCY = "idempotency"  # this (fingerprint, startsAt) was handled already
    KILL_SWITCH = "kill_switch"  # an operator stopped all actions
    CIRCUIT_BREAKER = "circuit_breaker"  # too many failures; open until reset
    COOLDOWN = "cooldown"  # the target was acted on recently
    RATE_LIMIT_ACTION = "rate_limit_action"  # too many actions of this kind in the window
    RATE_LIMIT_GLOBAL = "rate_limit_global"  # too many actions overall in the window
    RETRY_CAP = "retry_cap"  # the target failed too often: escalate to a human
    ESCALATED = "escalated"  # remediated too often in the window: it does not help, ask a human
    BOUNDS = "bounds"  # min/max replicas, last healthy replica, drained share, node count
    OWNED_BY_AUTOSCALER = "owned_by_autoscaler"  # an HPA/ScaledObject owns the replica count
    RECHECK = "recheck"  # Prometheus no longer confirms the alert (or cannot be reached)


class Blocked(Exception):
    """Raised by a guard or an action's plan; nothing was changed."""

    def __init__(self, guard: Guard, detail: str) -> None:
        super().__init__(f"{guard.value}: {detail}")
        self.guard = guard
        self.detail = detail

    @property
    def reason(self) -> str:
        return f"{self.guard.value}: {self.detail}"
