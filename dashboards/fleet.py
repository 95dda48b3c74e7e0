"""Fleet overview: is serving healthy right now, and if not, where to look next."""

from __future__ import annotations

from dashboards import queries as q
from dashboards.common import (
    node_variable,
    remediation_annotation,
    serving_variables,
    xid_annotation,
)
from dashboards.panels import Json, Row, dashboard, stat, steps, table, target, timeseries
from dashboards.thresholds import alert, slo_latency_bound, slo_objective

UID = "inferwatch-fleet"
TITLE = "Inferwatch / Fleet overview"

# Burn-rate factors of the multiwindow SLO alerts (SRE workbook): 14.4x spends a 30-day budget
# in about 2 days (critical), 6x in 5 days, 1x exactly over the period.
BURN = steps("green", (1, "yellow"), (6, "orange"), (14.4, "red"))
BUDGET = steps("red", (0.25, "orange"), (0.5, "green"))


def build() -> Json:
    errors_objective = slo_objective("inferwatch:llm_errors_slo_objective:ratio")
    ttft_objective = slo_objective("inferwatch:llm_ttft_slo_objective:ratio")
    ttft_bound = slo_latency_bound("model:inferwatch_llm_ttft_slo_good:increase5m")
    error_budget = 1 - errors_objective
    glance = Row(
        "Right now",
        [
            stat(
                "Requests/s",
                "Requests finished per second across the selected models. A sudden drop with "
                "engines up means clients stopped sending or a router broke.",
                target(q.requests_per_second),
                unit="reqps",
            ),
            stat(
                "Tokens out/s",
                "Generated tokens per second: the useful work of the fleet. Falling while requests "
                "keep arriving means replicas are stalled or preempting.",
                target(q.generation_tokens_per_second),
                unit="count:tok/s",
            ),
            stat(
                "Error ratio",
                f"Share of requests that ended in an error. Orange above the SLO's budget "
                f"({error_budget:.2%} at a {errors_objective:.2%} objective), red above 14.4x "
                "that (the fast-burn rate). Open Model serving to find the replica.",
                target(q.error_ratio),
                unit="percentunit",
                thresholds=steps("green", (error_budget, "orange"), (14.4 * error_budget, "red")),
                decimals=2,
            ),
            stat(
                "Error budget left (3d)",
                "Lowest remaining request-error budget among the selected models over the "
                "last 3 days: 100% untouched, 0% spent. Low: slow down risky rollouts.",
                target(q.lowest_errors_budget),
                unit="percentunit",
                thresholds=BUDGET,
                decimals=1,
            ),
            stat(
                "TTFT budget left (3d)",
                f"Lowest remaining time-to-first-token budget (objective: {ttft_objective:.0%} "
                f"of requests under {ttft_bound} s) among the selected models over 3 days.",
                target(q.lowest_ttft_budget),
                unit="percentunit",
                thresholds=BUDGET,
                decimals=1,
            ),
            stat(
                "Requests waiting",
                "Requests queued in the engines. A queue that keeps growing means the fleet is "
                "short of capacity: the scale_up playbook acts on InferwatchLLMQueueBacklog.",
                target(q.requests_waiting),
                unit="short",
            ),
            stat(
                "Engines down",
                "Engine targets whose /metrics did not answer. Open Model serving to find the "
                "replica; the restart playbook acts on InferwatchLLMEngineDown.",
                target(q.engines_down),
                unit="short",
                thresholds=steps("green", (1, "red")),
                graph=False,
            ),
            stat(
                "Alerts firing",
                "Inferwatch alerts firing in Prometheus. The table below says which and where.",
                target(q.firing_alerts),
                unit="short",
                thresholds=steps("green", (1, "orange")),
                graph=False,
            ),
        ],
    )
    for panel in glance.panels:
        panel.w = 3
    traffic = Row(
        "Traffic",
        [
            timeseries(
                "Requests/s by model",
                "Finished requests per second per model and engine. Compare with replicas: "
                "traffic growing faster than replicas ends in a backlog.",
                target(q.requests_by_model, "{{model}} ({{engine}})"),
                unit="reqps",
                w=8,
            ),
            timeseries(
                "Tokens/s by model",
                "Prompt tokens read (in) and tokens generated (out) per second. Prompt-heavy "
                "traffic fills the KV cache faster than its request rate suggests.",
                target(q.prompt_tokens_by_model, "in {{model}} ({{engine}})"),
                target(q.generation_tokens_by_model, "out {{model}} ({{engine}})"),
                unit="count:tok/s",
                w=8,
            ),
            timeseries(
                "Replicas by model",
                "Replicas answering per model. Scale-ups and scale-downs by the remediator "
                "show here and as purple annotations.",
                target(q.replicas_by_model, "{{model}} ({{engine}})"),
                unit="short",
                w=8,
            ),
        ],
    )
    latency = Row(
        "Latency and capacity",
        [
            timeseries(
                "Time to first token p95",
                f"95th percentile of the time until the first token per model and engine. The "
                f"dashed line is the SLO bound ({ttft_objective:.0%} of requests under "
                f"{ttft_bound} s). Rising with the queue: add replicas; rising alone: see "
                "latency drift on Model serving.",
                target(q.model_quantile(q.TTFT, 95), "{{model}} ({{engine}})"),
                unit="s",
                thresholds=steps("green", (ttft_bound, "red")),
            ),
            timeseries(
                "Inter-token latency p95",
                "95th percentile of the time between generated tokens: what a streaming user "
                "feels. It rises with batch size and KV-cache pressure.",
                target(q.model_quantile(q.ITL, 95), "{{model}} ({{engine}})"),
                unit="s",
            ),
            timeseries(
                "Requests waiting per replica",
                "Average queue per replica of each model. Sustained queueing fires "
                "InferwatchLLMQueueBacklog (scale_up); still queued with replicas maxed out "
                "fires InferwatchLLMCapacityExhausted (swap_model).",
                target(q.waiting_per_replica_by_model, "{{model}} ({{engine}})"),
                unit="short",
                alerts=[
                    alert("InferwatchLLMQueueBacklog"),
                    alert("InferwatchLLMCapacityExhausted"),
                ],
            ),
            timeseries(
                "KV cache usage by model",
                "The fullest replica's KV-cache usage per model. Full while requests wait "
                "fires InferwatchLLMKVCacheSaturated and the scale_up playbook adds a replica.",
                target(q.kv_usage_by_model, "{{model}} ({{engine}})"),
                unit="percentunit",
                max_=1,
                alerts=[alert("InferwatchLLMKVCacheSaturated")],
            ),
        ],
    )
    slo = Row(
        "SLO burn",
        [
            timeseries(
                "Error budget burn rate (1h)",
                "How fast each model spends its request-error budget: 1 spends it exactly over "
                "the SLO period; 14.4 (with the 5m window agreeing) pages via "
                "InferwatchLLMErrorBudgetBurn.",
                target(q.errors_burn_rate_1h, "{{model}} ({{engine}})"),
                unit="short",
                thresholds=BURN,
            ),
            timeseries(
                "TTFT budget burn rate (1h)",
                "How fast each model spends its time-to-first-token budget; 14.4 pages via "
                "InferwatchLLMTTFTBudgetBurn and the scale_up playbook adds a replica.",
                target(q.ttft_burn_rate_1h, "{{model}} ({{engine}})"),
                unit="short",
                thresholds=BURN,
            ),
        ],
    )
    incidents = Row(
        "Incidents and GPUs",
        [
            table(
                "Firing alerts",
                "Inferwatch alerts firing now, with the playbook (remediation) that will act "
                "on each. Follow the runbook link in the alert for what to do by hand.",
                target(q.firing_alerts_table, table=True),
                unit="short",
                columns={
                    "alertname": "Alert",
                    "severity": "Severity",
                    "remediation": "Playbook",
                    "namespace": "Namespace",
                    "model": "Model",
                    "target": "Replica",
                    "node": "Node",
                    "gpu": "GPU",
                    "Value": "Firing",
                },
                w=12,
            ),
            table(
                "Remediations in the time range",
                "Actions the remediator took in the selected time range by action and result. "
                "Failed or blocked actions: open the Remediation dashboard.",
                target(q.fleet_recent_actions, table=True),
                unit="short",
                columns={"action": "Action", "result": "Result", "Value": "Count"},
                w=6,
                sort_by="Value",
            ),
            stat(
                "GPUs up",
                "GPUs that NVML (or dcgm-exporter) reports on the selected nodes.",
                target(q.fleet_gpus_up),
                unit="short",
                thresholds=steps("blue"),
                graph=False,
                w=3,
                h=8,
            ),
            stat(
                "GPUs lost",
                "GPUs that fell off the bus or stopped reporting (Xid 79). InferwatchGPULost "
                "drains the node; see GPU health.",
                target(q.fleet_gpus_lost),
                unit="short",
                thresholds=steps("green", (1, "red")),
                graph=False,
                w=3,
                h=8,
            ),
        ],
    )
    return dashboard(
        uid=UID,
        title=TITLE,
        description="Is LLM serving healthy across the fleet, and if not, where to look next.",
        variables=[*serving_variables(), node_variable()],
        rows=[glance, traffic, latency, slo, incidents],
        annotations=[xid_annotation(by_node=True), remediation_annotation()],
        time_from="now-6h",
    )
