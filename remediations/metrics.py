"""The remediator's own metrics (names are a contract: see the rules and dashboards)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from remediations.actions.registry import ACTIONS as REGISTERED
from remediations.guards import Guard

RESULTS = ("succeeded", "failed", "dry_run", "blocked")
ACTIONS = tuple(REGISTERED)  # every registered action gets its series from the start
# Alert start to action: Prometheus evaluation, Alertmanager group_wait, guards; then rollouts.
LATENCY_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)
ERROR_PLACES = (
    "record_event",
    "resolve_resolved_target",
    "swap_back",
    "restore_minimum",
    "worker",
    "cluster_state",
    "take_over",
)


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
        self.connections_closed = Counter(
            "inferwatch_remediation_connections_closed",
            "Client connections the remediator closed or lost, by reason (header_timeout, "
            "body_timeout, client_disconnect, connection_limit).",
            ["reason"],
            registry=self.registry,
        )
        for reason in ("header_timeout", "body_timeout", "client_disconnect", "connection_limit"):
            self.connections_closed.labels(reason)
        self.state_errors = Counter(
            "inferwatch_remediation_state_errors",
            "Alerts put back on the queue because the state file could not be used "
            "(locked by another process); nothing was acted on.",
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
        self.leader = Gauge(
            "inferwatch_remediation_leader",
            "1 on the replica that leads (and acts); 0 on followers. Without leader election, 1.",
            registry=self.registry,
        )
        self.leader_transitions = Counter(
            "inferwatch_remediation_leader_transitions",
            "Times this replica started or stopped leading.",
            registry=self.registry,
        )
        self.claims_lost = Counter(
            "inferwatch_remediation_claims_lost",
            "Alerts not acted on because another replica had claimed them on the target object.",
            registry=self.registry,
        )
        self.held = Gauge(
            "inferwatch_remediation_follower_held_alerts",
            "Alerts a follower holds for when it leads (newest notification per alert).",
            registry=self.registry,
        )
        self.held_dropped = Counter(
            "inferwatch_remediation_follower_dropped_alerts",
            "Held alerts a follower dropped unacted: older than the idempotency TTL (the leader's "
            "claims last no longer), or over queue_size.",
            registry=self.registry,
        )
        self.action_duration = Histogram(
            "inferwatch_remediation_action_duration_seconds",
            "Time from commit to verified outcome, by action.",
            ["action"],
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=self.registry,
        )
        self.errors = Counter(
            "inferwatch_remediation_errors",
            "Failures on a remediation path that did not stop it (each also logged), by where.",
            ["where"],
            registry=self.registry,
        )
        for where in ERROR_PLACES:
            self.errors.labels(where)
        self.time_to_act = Histogram(
            "inferwatch_remediation_time_to_act_seconds",
            "From the alert's startsAt to the action's start (its commit), by action.",
            ["action"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_to_effect = Histogram(
            "inferwatch_remediation_time_to_effect_seconds",
            "From the alert's startsAt to the action's verified effect (succeeded), by action.",
            ["action"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # Pre-create every series so rules see zeros rather than absence.
        for action in ACTIONS:
            for result in RESULTS:
                self.actions.labels(action, result)
        for guard in Guard:
            self.guard_blocks.labels(guard.value)
        for action in ACTIONS:
            self.action_duration.labels(action)
            self.time_to_act.labels(action)
            self.time_to_effect.labels(action)
