"""Remediation: what the remediator did, what its guards stopped, and whether it is healthy."""

from __future__ import annotations

from dashboards import queries as q
from dashboards.common import remediation_annotation
from dashboards.panels import (
    Json,
    Row,
    dashboard,
    query_variable,
    stat,
    state_timeline,
    steps,
    table,
    target,
    timeseries,
    value_text,
)

UID = "inferwatch-remediation"
TITLE = "Inferwatch / Remediation"


def build() -> Json:
    overview = Row(
        "In the time range",
        [
            stat(
                "Succeeded",
                "Actions that ran and whose effect was verified (e.g. a new replica became "
                "ready) in the selected time range.",
                target(q.actions_in_range("succeeded")),
                unit="short",
                thresholds=steps("green"),
                graph=False,
                decimals=0,
            ),
            stat(
                "Failed",
                "Actions that ran and failed or whose effect did not show. Repeated failures "
                "escalate and open the circuit breaker; see the audit log (GET /actions).",
                target(q.actions_in_range("failed")),
                unit="short",
                thresholds=steps("green", (1, "red")),
                graph=False,
                decimals=0,
            ),
            stat(
                "Blocked by guards",
                "Actions a guard stopped (cooldown, rate limit, bounds, opt-out, condition no "
                "longer true). Normal in small numbers; the panel below says which guard.",
                target(q.actions_in_range("blocked")),
                unit="short",
                thresholds=steps("green", (1, "orange")),
                graph=False,
                decimals=0,
            ),
            stat(
                "Dry runs",
                "Actions that would have run with dry-run off: what the remediator would do "
                "once trusted. Review them before turning dry-run off.",
                target(q.actions_in_range("dry_run")),
                unit="short",
                thresholds=steps("blue"),
                graph=False,
                decimals=0,
            ),
            stat(
                "Circuit breaker",
                "Open: the remediator stopped acting after repeated failures and stays stopped "
                "until an operator resets it. Fix the cause first (see the failed actions).",
                target(q.circuit_open),
                unit="none",
                thresholds=steps("green", (1, "red")),
                mappings=value_text({0: ("closed", "green"), 1: ("open", "red")}),
                graph=False,
            ),
            stat(
                "Webhook rejects",
                "Alertmanager deliveries answered 4xx/5xx in the time range: bad token (401), "
                "malformed payload (400), queue full (503, retried by Alertmanager).",
                target(q.webhook_rejected_in_range),
                unit="short",
                thresholds=steps("green", (1, "orange")),
                graph=False,
                decimals=0,
            ),
        ],
    )
    for panel in overview.panels:
        panel.w = 4
    activity = Row(
        "Actions",
        [
            timeseries(
                "Actions by type and result",
                "Actions per interval by action (scale_up, restart, drain_node, ...) and result. "
                "The same actions are drawn as annotations on every Inferwatch dashboard.",
                target(q.actions_by_type_and_result, "{{action}} {{result}}"),
                unit="short",
                bars=True,
                stack=True,
            ),
            timeseries(
                "Guard blocks by guard",
                "Which guard blocked actions. Many cooldown or rate-limit blocks for one alert "
                "mean the action does not fix its cause: read that alert's runbook.",
                target(q.guard_blocks, "{{guard}}"),
                unit="short",
                bars=True,
                stack=True,
            ),
            timeseries(
                "Action duration",
                "How long actions took, p50 and p95 per action, including the effect check.",
                *(target(expr, legend) for expr, legend in q.action_duration),
                unit="s",
                w=8,
            ),
            table(
                "Actions in the time range",
                "Count of actions by action and result in the selected range; the audit log "
                "(GET /actions) has each one with its target and reason.",
                target(q.recent_actions, table=True),
                unit="short",
                columns={"action": "Action", "result": "Result", "Value": "Count"},
                w=8,
                sort_by="Value",
            ),
            timeseries(
                "Alerts with a playbook, firing",
                "Firing alerts that carry a remediation label, by alert and playbook: what the "
                "remediator is being asked to do.",
                target(q.remediation_alerts_firing, "{{alertname}} -> {{remediation}}"),
                unit="short",
                w=8,
            ),
        ],
    )
    service = Row(
        "Remediator health",
        [
            timeseries(
                "Webhook requests by code",
                "Alertmanager deliveries per second by HTTP status. 202 accepted; 401 check the "
                "token; 400 payload rejected; 413 body too large; 503 queue full.",
                target(q.webhook_requests, "{{code}}"),
                unit="reqps",
                w=6,
            ),
            timeseries(
                "Queue depth",
                "Alerts accepted and waiting for a worker. Growing steadily: actions are slow "
                "(see duration) or stuck.",
                target(q.queue_depth, "{{instance}}"),
                unit="short",
                w=6,
            ),
            state_timeline(
                "Circuit breaker",
                "When the circuit breaker was open (remediation stopped). It stays open until an "
                "operator resets it.",
                target(q.circuit_open_over_time, "{{instance}}"),
                mappings=value_text({0: ("closed", "green"), 1: ("open", "red")}),
                thresholds=steps("green", (1, "red")),
                w=6,
            ),
            timeseries(
                "Failed actions, last 15 minutes",
                "Failed actions per action over the last 15 minutes; above zero, or the circuit "
                "breaker open, fires InferwatchRemediationFailing. Read the audit log "
                "(GET /actions) for the reason, then the alert's runbook.",
                target(q.failed_actions_15m, "{{action}}"),
                unit="short",
                thresholds=steps("green", (1, "red")),
                w=6,
            ),
        ],
    )
    return dashboard(
        uid=UID,
        title=TITLE,
        description="The remediator's actions by type and result, guard blocks, circuit breaker, "
        "queue and webhook traffic.",
        variables=[
            query_variable("action", "Action", "inferwatch_remediation_actions_total"),
        ],
        rows=[overview, activity, service],
        annotations=[remediation_annotation()],
        time_from="now-24h",
        refresh="1m",
    )
