"""Model serving: per model and replica, where the latency goes and whether capacity keeps up."""

from __future__ import annotations

from dashboards import queries as q
from dashboards.common import remediation_annotation, serving_variables, xid_annotation
from dashboards.panels import (
    Json,
    Panel,
    Row,
    dashboard,
    override_dashed,
    state_timeline,
    steps,
    target,
    timeseries,
    value_text,
)
from dashboards.thresholds import alert

UID = "inferwatch-serving"
TITLE = "Inferwatch / Model serving"

UP_DOWN = value_text({0: ("down", "red"), 1: ("up", "green")})


def _quantiles(title: str, histogram: str, description: str) -> Panel:
    return timeseries(
        title,
        description,
        *(
            target(q.model_quantile(histogram, pct), f"p{pct} {{{{model}}}} ({{{{engine}}}})")
            for pct in (50, 95, 99)
        ),
        unit="s",
        w=6,
    )


def build() -> Json:
    latency = Row(
        "Latency quantiles per model",
        [
            _quantiles(
                "Time to first token",
                q.TTFT,
                "p50/p95/p99 time until the first token: queueing plus prefill. If it moves "
                "with queue time, the model is short of replicas; if not, prefill itself got "
                "slower (longer prompts, KV pressure, a degraded replica below).",
            ),
            _quantiles(
                "Inter-token latency",
                q.ITL,
                "p50/p95/p99 time between generated tokens: the decode speed a streaming user "
                "sees. Rises with batch size, preemptions and GPU throttling.",
            ),
            _quantiles(
                "End-to-end request duration",
                q.E2E,
                "p50/p95/p99 time from arrival to the last token; grows with output length, so "
                "read it together with tokens/s.",
            ),
            _quantiles(
                "Queue time",
                q.QUEUE_TIME,
                "p50/p95/p99 time requests waited before the engine scheduled them. Anything "
                "but near zero means the replicas are saturated: scale out.",
            ),
        ],
    )
    replicas = Row(
        "Latency per replica",
        [
            timeseries(
                "TTFT p95 and p99 per replica",
                "Time to first token per replica. One replica far above its peers is degraded "
                "(see drift below); all of them together is load.",
                target(q.ttft_p95_by_replica, "p95 {{target}}"),
                target(q.ttft_p99_by_replica, "p99 {{target}}"),
                unit="s",
                w=8,
            ),
            timeseries(
                "Inter-token latency p95 per replica",
                "Decode speed per replica. A replica slower than its peers on the same model "
                "often sits on a throttled or unhealthy GPU: check GPU health.",
                target(q.itl_p95_by_replica, "{{target}}"),
                unit="s",
                w=8,
            ),
            timeseries(
                "Queue time p95 per replica",
                "How long requests waited on each replica. Uneven across replicas: the load "
                "balancer is not spreading work.",
                target(q.queue_time_p95_by_replica, "{{target}}"),
                unit="s",
                w=8,
            ),
        ],
    )
    throughput = Row(
        "Throughput and load",
        [
            timeseries(
                "Requests/s by outcome",
                "Finished requests per second per replica and outcome (success, error, "
                "aborted). Errors on one replica only: restart it; on all: suspect the model "
                "or the clients.",
                target(q.requests_by_outcome, "{{target}} {{outcome}}"),
                unit="reqps",
                w=8,
            ),
            timeseries(
                "Tokens/s per replica",
                "Prompt tokens read (in) and generated (out) per second per replica. Requests "
                "running with no tokens out fires InferwatchLLMReplicaStalled (restart).",
                target(q.prompt_tokens_by_replica, "in {{target}}"),
                target(q.generation_tokens_by_replica, "out {{target}}"),
                unit="count:tok/s",
                w=8,
            ),
            timeseries(
                "Finish reasons",
                "Why requests ended: stop (model finished), length (hit max tokens), abort, "
                "error. Many `length` finishes mean clients cap output too low.",
                target(q.finished_reasons, "{{model}} {{finished_reason}}"),
                unit="reqps",
                w=8,
                stack=True,
            ),
            timeseries(
                "Running and waiting",
                "Requests in the batch (running) and queued (waiting) per replica.",
                target(q.running_by_replica, "running {{target}}"),
                target(q.waiting_by_replica, "waiting {{target}}"),
                unit="short",
                w=8,
            ),
            timeseries(
                "Capacity used per replica, now and 30 minutes ahead",
                "Requests a replica runs, as a share of its measured capacity (KV cache full, or "
                "the batch size it ran while requests waited), now and 30 minutes ahead at the "
                "last hour's arrival trend (Little's law). The projection crossing the line "
                "fires InferwatchLLMLoadForecastExceedsCapacity: scale_up acts before the backlog.",
                target(q.capacity_used_by_model, "now {{model}}"),
                target(q.capacity_forecast_by_model, "in 30m {{model}}"),
                unit="percentunit",
                w=8,
                alerts=[alert("InferwatchLLMLoadForecastExceedsCapacity")],
                overrides=[override_dashed("^in 30m .*", "text")],
            ),
            timeseries(
                "Running per replica (model average)",
                "Average requests in flight per replica. Near zero for an hour with several "
                "replicas fires InferwatchLLMOverProvisioned: scale_down frees GPUs.",
                target(q.running_per_replica_by_model, "{{model}} ({{engine}})"),
                unit="short",
                w=8,
                alerts=[alert("InferwatchLLMOverProvisioned")],
            ),
        ],
    )
    cache = Row(
        "KV cache and prefix cache",
        [
            timeseries(
                "KV cache usage",
                "Fraction of the KV cache in use per replica. Full while requests wait fires "
                "InferwatchLLMKVCacheSaturated (scale_up); full with an empty queue is good "
                "packing.",
                target(q.kv_usage_by_replica, "{{target}}"),
                unit="percentunit",
                max_=1,
                w=8,
                alerts=[alert("InferwatchLLMKVCacheSaturated")],
            ),
            timeseries(
                "Prefix-cache hit ratio",
                "Share of prompt tokens served from the prefix cache per replica (30-minute "
                "rate). Each miss costs prefill time.",
                target(q.prefix_cache_hit_ratio, "{{target}}"),
                unit="percentunit",
                max_=1,
                w=8,
            ),
            timeseries(
                "Prefix-cache hit ratio vs yesterday",
                "Today's hit ratio over the same time yesterday, per replica. Well below 1 "
                "(a routing or prompt-template change) fires "
                "InferwatchLLMPrefixCacheHitRatioDrop.",
                target(q.prefix_cache_vs_yesterday, "{{target}}"),
                unit="percentunit",
                w=8,
                alerts=[alert("InferwatchLLMPrefixCacheHitRatioDrop")],
            ),
            timeseries(
                "Preemptions/s",
                "Requests the engine evicted from the batch to free KV cache; their prompt is "
                "recomputed. A storm means the replica is overcommitted: scale out or lower "
                "max concurrency.",
                target(q.preemptions_by_replica, "{{target}}"),
                unit="ops",
                w=8,
                alerts=[alert("InferwatchLLMPreemptionStorm")],
            ),
            timeseries(
                "Latency drift vs yesterday",
                "Each replica's p95 TTFT (mean inter-token latency where the engine has no "
                "TTFT histogram) over its own value at the same time yesterday, and over the "
                "median of its peers (dashed). High on both at no more load than yesterday is "
                "slow degradation: InferwatchLLMLatencyDrift restarts the replica.",
                target(q.latency_drift, "vs yesterday {{target}}"),
                target(q.latency_vs_peers, "vs peers {{target}}"),
                unit="short",
                w=16,
                alerts=[alert("InferwatchLLMLatencyDrift")],
                overrides=[override_dashed("^vs peers .*", "text")],
            ),
        ],
    )
    health = Row(
        "Health and canary",
        [
            timeseries(
                "Canary probe latency",
                "Synthetic completion the exporter sends each replica (when configured): its "
                "TTFT and total duration. Catches a replica that answers /metrics but cannot "
                "serve.",
                target(q.probe_ttft, "ttft {{target}}"),
                target(q.probe_duration, "duration {{target}}"),
                unit="s",
                w=6,
            ),
            state_timeline(
                "Canary probe success",
                "1 when the last canary completion succeeded. Red bands: the replica failed "
                "real requests at that time.",
                target(q.probe_success, "{{target}}"),
                mappings=value_text({0: ("failed", "red"), 1: ("ok", "green")}),
                thresholds=steps("red", (1, "green")),
                w=6,
            ),
            state_timeline(
                "Engine /metrics answering",
                "Whether each replica's metrics endpoint answered the exporter. Down for 5 "
                "minutes fires InferwatchLLMEngineDown (restart playbook).",
                target(q.engine_up_by_replica, "{{target}}"),
                mappings=UP_DOWN,
                thresholds=steps("red", (1, "green")),
                w=6,
            ),
            state_timeline(
                "Engine health endpoint",
                "Whether each replica's health endpoint says it is ready. Up but not ready: "
                "loading a model, or wedged; check the engine log.",
                target(q.engine_healthy_by_replica, "{{target}}"),
                mappings=value_text({0: ("not ready", "red"), 1: ("ready", "green")}),
                thresholds=steps("red", (1, "green")),
                w=6,
            ),
        ],
    )
    return dashboard(
        uid=UID,
        title=TITLE,
        description="Per model and replica: latency quantiles, throughput, KV and prefix cache, "
        "degradation against the replica's own baseline, canary probes.",
        variables=serving_variables(replica=True),
        rows=[latency, replicas, throughput, cache, health],
        annotations=[remediation_annotation(), xid_annotation(by_node=False)],
        time_from="now-3h",
    )
