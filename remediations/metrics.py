"""The remediator's own metrics (names are a contract: see the rules and dashboards)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from remediations.guards import Guard

RESULTS = ("succeeded", "failed", "dry_run", "blocked")
ACTIONS = ("scale", "drain", "restart", "drain_node", "swap_model")


class Metrics:
    """One registry per app, so tests and several apps in one process never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.actions = Counter(
            "inferwatch_remediation_actions",
            "Actions by result (succeeded, failed, dry_run, blocked).",
            ["action", "result"],
            registry=self.registry,
        )
        self.guard_blocks = Counter(
            "inferwatch_remediation_guard_blocks",
            "Actions a guard stopped, by guard.",
            ["guard"],
            registry=self.registry,
        )
        self.webhook_requests = Counter(
            "inferwatch_remediation_webhook_requests",
            "Webhook requests by HTTP status code.",
            ["code"],
            registry=self.registry,
        )
        self.circuit_open = Gauge(
            "inferwatch_remediation_circuit_open",
            "1 while the circuit breaker is open (actions stop until POST /circuit/reset).",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "inferwatch_remediation_queue_depth",
            "Alerts accepted and waiting for a worker.",
            registry=self.registry,
        )
        self.kill_switch = Gauge(
            "inferwatch_remediation_kill_switch",
            "1 while the kill switch blocks every action.",
            registry=self.registry,
        )
        self.action_duration = Histogram(
            "inferwatch_remediation_action_duration_seconds",
            "Time from commit to verified outcome, by action.",
            ["action"],
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=self.registry,
        )
        # Pre-create every series so rules see zeros rather than absence.
        for action in ACTIONS:
            for result in RESULTS:
                self.actions.labels(action, result)
        for guard in Guard:
            self.guard_blocks.labels(guard.value)
