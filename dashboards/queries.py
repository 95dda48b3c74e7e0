"""PromQL for the dashboards, apart from layout (kubernetes-mixin's queries/ split).

Queries read the rules' recorded series wherever a rule records the quantile or ratio (so a
panel shows exactly what an alert evaluates, and GPU panels also work on dcgm-exporter data
through rules/dcgm-compat.rules.yaml), and the normalized `inferwatch_*` series otherwise: the
rules record only what an alert or another record reads more than once (every record is a series
per GPU, replica or model in Prometheus), so a panel computes the rest from the raw series of
the targets it shows, with the alert's own formula where an alert reads it.
Latency quantiles are per engine: engines have their own buckets and are never merged.
Filters use the dashboard variables; "All" is `.*`, which also matches series without the
label (no `namespace` on a single box).
"""

from __future__ import annotations

# ---------------------------------------------------------------- label filters

# Serving series; recorded ones are kept by (namespace, pod, engine, model, target).
LLM = 'namespace=~"$namespace", model=~"$model", engine=~"$engine"'
REPLICA = f'{LLM}, target=~"$target"'
LLM_ERRORS = f'{LLM}, outcome="error"'
# GPU series, recorded by (node, gpu, uuid).
NODE = 'node=~"$node"'
GPU = f'{NODE}, gpu=~"$gpu"'
# Allocator series of one process: uuid, namespace, pod, container, pool.
CUDA = 'namespace=~"$namespace", pod=~"$pod", node=~"$node"'
ALLOCATOR = f'{CUDA}, pool="all"'

PER_MODEL = "namespace, engine, model"
PER_REPLICA = "namespace, engine, model, target"


def rate(metric: str, filters: str, by: str) -> str:
    return f"sum by ({by}) (rate({metric}{{{filters}}}[$__rate_interval]))"


def quantile(q: float, histogram: str, filters: str, by: str) -> str:
    """A quantile from one engine's buckets (`engine` is always among the `by` labels)."""
    return (
        f"histogram_quantile({q}, sum by ({by}, le) "
        f"(rate({histogram}_bucket{{{filters}}}[$__rate_interval])))"
    )


# ---------------------------------------------------------------- serving: fleet

requests_per_second = f"sum(model:inferwatch_llm_requests:rate5m{{{LLM}}})"
generation_tokens_per_second = f"sum(model:inferwatch_llm_generation_tokens:rate5m{{{LLM}}})"
error_ratio = (
    f"sum(rate(inferwatch_llm_requests_total{{{LLM_ERRORS}}}[$__rate_interval]))"
    f" / (sum(rate(inferwatch_llm_requests_total{{{LLM}}}[$__rate_interval])) > 0)"
)
requests_waiting = f"sum(model:inferwatch_llm_requests_waiting:sum{{{LLM}}})"
engines_down = f"count(inferwatch_llm_up{{{LLM}}} == 0) or vector(0)"

requests_by_model = f"model:inferwatch_llm_requests:rate5m{{{LLM}}}"
prompt_tokens_by_model = f"model:inferwatch_llm_prompt_tokens:rate5m{{{LLM}}}"
generation_tokens_by_model = f"model:inferwatch_llm_generation_tokens:rate5m{{{LLM}}}"
replicas_by_model = f"model:inferwatch_llm_replicas:count{{{LLM}}}"


TTFT = "inferwatch_llm_time_to_first_token_seconds"


def model_quantile(histogram: str, q: int) -> str:
    """A per-model quantile (p50, p95, p99) of one of the four latency histograms: the recorded
    p95 TTFT the TTFT alerts read, the others from the buckets of the models shown."""
    if (histogram, q) == (TTFT, 95):
        return f"model:{TTFT}:p95_rate5m{{{LLM}}}"
    return quantile(q / 100, histogram, LLM, PER_MODEL)


ITL = "inferwatch_llm_inter_token_latency_seconds"
E2E = "inferwatch_llm_request_duration_seconds"
QUEUE_TIME = "inferwatch_llm_request_queue_time_seconds"

waiting_per_replica_by_model = f"model:inferwatch_llm_requests_waiting:avg{{{LLM}}}"
running_per_replica_by_model = f"model:inferwatch_llm_requests_running:avg{{{LLM}}}"
kv_usage_by_model = f"max by ({PER_MODEL}) (inferwatch_llm_kv_cache_usage_ratio{{{LLM}}})"
# Requests per replica now and 30 minutes ahead (Little's law on the arrival trend), as a share
# of the replica's measured capacity (KV cache full, or the batch size seen while requests waited).
capacity_used_by_model = (
    f"model:inferwatch_llm_requests_running:avg{{{LLM}}}"
    f" / on({PER_MODEL}) model:inferwatch_llm_requests_running:capacity_avg{{{LLM}}}"
)
capacity_forecast_by_model = (
    f"model:inferwatch_llm_requests_running:predict30m_avg{{{LLM}}}"
    f" / on({PER_MODEL}) model:inferwatch_llm_requests_running:capacity_avg{{{LLM}}}"
)

# SLO budget over the longest recorded window (3 days): 1 = untouched, 0 = spent.
errors_budget_remaining = (
    f"1 - model:inferwatch_llm_request_errors_per_requests:ratio_rate3d{{{LLM}}}"
    " / on() group_left() (1 - inferwatch:llm_errors_slo_objective:ratio)"
)
ttft_budget_remaining = (
    f"1 - model:inferwatch_llm_ttft_slo_errors:ratio_rate3d{{{LLM}}}"
    " / on() group_left() (1 - inferwatch:llm_ttft_slo_objective:ratio)"
)
errors_burn_rate_1h = (
    f"model:inferwatch_llm_request_errors_per_requests:ratio_rate1h{{{LLM}}}"
    " / on() group_left() (1 - inferwatch:llm_errors_slo_objective:ratio)"
)
ttft_burn_rate_1h = (
    f"model:inferwatch_llm_ttft_slo_errors:ratio_rate1h{{{LLM}}}"
    " / on() group_left() (1 - inferwatch:llm_ttft_slo_objective:ratio)"
)
lowest_errors_budget = f"min({errors_budget_remaining})"
lowest_ttft_budget = f"min({ttft_budget_remaining})"

firing_alerts = 'count(ALERTS{alertstate="firing", alertname=~"Inferwatch.*"}) or vector(0)'
firing_alerts_table = (
    "max by (alertname, severity, remediation, namespace, model, target, node, gpu) "
    '(ALERTS{alertstate="firing", alertname=~"Inferwatch.*"})'
)

# ---------------------------------------------------------------- serving: per replica

REQUESTS = "inferwatch_llm_requests_total"
requests_by_outcome = rate(REQUESTS, REPLICA, "target, outcome")
finished_reasons = rate(REQUESTS, REPLICA, "model, finished_reason")
prompt_tokens_by_replica = rate("inferwatch_llm_prompt_tokens_total", REPLICA, "target")
generation_tokens_by_replica = rate("inferwatch_llm_generation_tokens_total", REPLICA, PER_REPLICA)


def per_replica(gauge: str) -> str:
    return f"max by ({PER_REPLICA}) ({gauge}{{{REPLICA}}})"


running_by_replica = per_replica("inferwatch_llm_requests_running")
waiting_by_replica = per_replica("inferwatch_llm_requests_waiting")
kv_usage_by_replica = per_replica("inferwatch_llm_kv_cache_usage_ratio")
prefix_cache_hit_ratio = (
    f"replica:inferwatch_llm_prefix_cache_hits_per_queries:ratio_rate30m{{{REPLICA}}}"
)
# What InferwatchLLMPrefixCacheHitRatioDrop compares: today's ratio over yesterday's.
prefix_cache_vs_yesterday = f"{prefix_cache_hit_ratio} / ({prefix_cache_hit_ratio} offset 1d > 0.2)"
preemptions_by_replica = rate("inferwatch_llm_preemptions_total", REPLICA, PER_REPLICA)
ttft_p95_by_replica = quantile(0.95, TTFT, REPLICA, PER_REPLICA)
itl_p95_by_replica = quantile(0.95, ITL, REPLICA, PER_REPLICA)
latency_drift = f"replica:inferwatch_llm_latency_drift:ratio{{{REPLICA}}}"
latency_vs_peers = f"replica:inferwatch_llm_latency_vs_peers:ratio{{{REPLICA}}}"
ttft_p99_by_replica = quantile(0.99, TTFT, REPLICA, PER_REPLICA)
queue_time_p95_by_replica = quantile(0.95, QUEUE_TIME, REPLICA, PER_REPLICA)

engine_up_by_replica = f"max by (target) (inferwatch_llm_up{{{REPLICA}}})"
engine_healthy_by_replica = f"max by (target) (inferwatch_llm_healthy{{{REPLICA}}})"
probe_success = f"min by (target) (inferwatch_llm_probe_success{{{REPLICA}}})"
probe_ttft = f"max by (target) (inferwatch_llm_probe_ttft_seconds{{{REPLICA}}})"
probe_duration = f"max by (target) (inferwatch_llm_probe_duration_seconds{{{REPLICA}}})"

# ---------------------------------------------------------------- GPU

gpus_total = f"count(uuid:inferwatch_gpu_up:max{{{GPU}}}) or vector(0)"
gpus_up = f"sum(uuid:inferwatch_gpu_up:max{{{GPU}}}) or vector(0)"
gpus_lost = f"count(uuid:inferwatch_gpu_up:max{{{GPU}}} == 0) or vector(0)"
gpu_up_by_gpu = f"uuid:inferwatch_gpu_up:max{{{GPU}}}"
SLOWDOWN = "hw_slowdown|hw_thermal_slowdown|hw_power_brake_slowdown|sw_thermal_slowdown"
# Recorded only while active (the slowdown reasons only), for both GPU sources.
THROTTLED = f'uuid_reason:inferwatch_gpu_throttle_active:max{{{GPU}, reason=~"{SLOWDOWN}"}}'
# What InferwatchGPUThermalThrottling evaluates: share of the last 10 minutes slowed down.
throttled_share_10m = (
    f"count_over_time({THROTTLED}[10m])"
    f" / on(node, gpu, uuid) group_left() count_over_time(uuid:inferwatch_gpu_up:max{{{GPU}}}[10m])"
)
gpus_throttled = f"count(max by (node, gpu, uuid) ({THROTTLED})) or vector(0)"
# Every reason the exporter reports (power cap, application clocks, ...), and the slowdowns
# dcgm-exporter's bitmask gives for GPUs the exporter does not watch.
throttle_reasons = (
    "max by (node, gpu, uuid, reason) "
    f'(inferwatch_gpu_throttle_active{{{GPU}, reason!="gpu_idle"}}) or {THROTTLED}'
)
utilization = f"uuid:inferwatch_gpu_utilization_ratio:max{{{GPU}}}"
memory_copy_utilization = (
    f"max by (node, gpu) (inferwatch_gpu_memory_copy_utilization_ratio{{{GPU}}})"
)
memory_used = f"uuid:inferwatch_gpu_memory_used_bytes:max{{{GPU}}}"
memory_total = f"uuid:inferwatch_gpu_memory_total_bytes:max{{{GPU}}}"
memory_used_ratio = f"{memory_used} / on(node, gpu, uuid) ({memory_total} > 0)"
memory_reserved = f"max by (node, gpu) (inferwatch_gpu_memory_reserved_bytes{{{GPU}}})"
process_memory_by_pod = (
    "sum by (node, gpu, namespace, pod) "
    f'(inferwatch_gpu_process_memory_bytes{{{GPU}, namespace=~"$namespace"}})'
)
temperature = f"max by (node, gpu, sensor) (inferwatch_gpu_temperature_celsius{{{GPU}}})"
power = f"uuid:inferwatch_gpu_power_watts:max{{{GPU}}}"
power_limit = f"max by (node, gpu) (inferwatch_gpu_power_limit_watts{{{GPU}}})"
clocks = f"max by (node, gpu, clock) (inferwatch_gpu_clock_hertz{{{GPU}}})"
ecc_errors = (
    "sum by (node, gpu, type) "
    f"(increase(inferwatch_gpu_ecc_errors_total{{{GPU}}}[$__rate_interval]))"
)
xid_errors_10m = f"uuid_xid:inferwatch_gpu_xid_errors:increase10m{{{GPU}}}"
XID_ERRORS = f"inferwatch_gpu_xid_errors_total{{{GPU}}}"
# A (gpu, xid) series is born with its first event, which increase() cannot see (no earlier
# sample): series born inside the range count their whole value, older ones their increase.
xid_errors_in_range = (
    f"(sum(increase({XID_ERRORS}[$__range]) and {XID_ERRORS} offset $__range) or vector(0))"
    f" + (sum({XID_ERRORS} unless {XID_ERRORS} offset $__range) or vector(0))"
)
ecc_uncorrected_in_range = (
    f'sum(increase(inferwatch_gpu_ecc_errors_total{{{GPU}, type="uncorrected"}}[$__range]))'
    " or vector(0)"
)
gpu_info = (
    "max by (node, gpu, name, driver_version, cuda_version, mig_mode) "
    f"(inferwatch_gpu_info{{{GPU}}})"
)

# ---------------------------------------------------------------- CUDA allocator

POD = "namespace, pod"


def allocator(kind: str, filters: str = ALLOCATOR) -> str:
    return f"sum by ({POD}) (inferwatch_cuda_allocator_{kind}_bytes{{{filters}}})"


def pool_all(kind: str) -> str:
    """One allocator gauge of each process, general pools (what the alerts read)."""
    return f"inferwatch_cuda_allocator_{kind}_bytes{{{ALLOCATOR}}}"


# Per-process ratios as InferwatchCUDAFragmentationHigh computes them, worst container of each pod.
# External fragmentation: the share of free (cached) memory outside the largest free block.
external_fragmentation = (
    f"max by ({POD}) (1 - {pool_all('largest_free_block')} / ({pool_all('free')} > 0)"
    f" or {pool_all('free')} * 0)"
)
split_fragmentation = (
    f"max by ({POD}) ({pool_all('inactive_split')} / clamp_min({pool_all('reserved')}, 1))"
)
reserved_unallocated = (
    f"max by ({POD}) (({pool_all('reserved')} - {pool_all('allocated')})"
    f" / clamp_min({pool_all('reserved')}, 1))"
)
# What InferwatchCUDAAllocRetries compares: retries per hour over 15 minutes.
alloc_retries_per_hour = (
    f"max by ({POD}) (rate(inferwatch_cuda_allocator_alloc_retries_total{{{ALLOCATOR}}}[15m]))"
    " * 3600"
)
ooms = rate("inferwatch_cuda_allocator_ooms_total", ALLOCATOR, POD)
ooms_in_range = (
    f"sum(increase(inferwatch_cuda_allocator_ooms_total{{{ALLOCATOR}}}[$__range])) or vector(0)"
)
retries_in_range = (
    f"sum(increase(inferwatch_cuda_allocator_alloc_retries_total{{{ALLOCATOR}}}[$__range]))"
    " or vector(0)"
)
private_pool_reserved = allocator("reserved", f'{CUDA}, pool="private"')
# Published by the cuda_allocator collector: NVML per-process memory minus allocator reserved.
outside_allocator = f"sum by ({POD}) (inferwatch_cuda_allocator_outside_bytes{{{CUDA}}})"
probe_age = f"max by ({POD}) (inferwatch_cuda_allocator_probe_age_seconds{{{CUDA}}})"
# InferwatchCUDAMemoryLeak's projection: reserved growth over the next 4 hours.
reserved_growth_4h = (
    f"sum by ({POD}) (predict_linear(inferwatch_cuda_allocator_reserved_bytes{{{ALLOCATOR}}}"
    f"[1h], 4 * 3600) - inferwatch_cuda_allocator_reserved_bytes{{{ALLOCATOR}}})"
)

# ---------------------------------------------------------------- remediation

ACTIONS = "inferwatch_remediation_actions_total"
ACTION_FILTER = 'action=~"$action"'

actions_by_type_and_result = (
    f"sum by (action, result) (increase({ACTIONS}{{{ACTION_FILTER}}}[$__rate_interval]))"
)


def actions_in_range(result: str) -> str:
    return f'sum(increase({ACTIONS}{{{ACTION_FILTER}, result="{result}"}}[$__range])) or vector(0)'


recent_actions = f"sum by (action, result) (increase({ACTIONS}{{{ACTION_FILTER}}}[$__range])) > 0"
fleet_recent_actions = f"sum by (action, result) (increase({ACTIONS}[$__range])) > 0"
guard_blocks = (
    "sum by (guard) (increase(inferwatch_remediation_guard_blocks_total[$__rate_interval]))"
)
webhook_requests = (
    "sum by (code) (rate(inferwatch_remediation_webhook_requests_total[$__rate_interval]))"
)
webhook_rejected_in_range = (
    'sum(increase(inferwatch_remediation_webhook_requests_total{code=~"4..|5.."}[$__range]))'
    " or vector(0)"
)
circuit_open = "max(inferwatch_remediation_circuit_open) or vector(0)"
circuit_open_over_time = "max by (instance) (inferwatch_remediation_circuit_open)"
queue_depth = "max by (instance) (inferwatch_remediation_queue_depth)"
action_duration = [
    (
        f"histogram_quantile({q}, sum by (action, le) "
        "(rate(inferwatch_remediation_action_duration_seconds_bucket"
        f"{{{ACTION_FILTER}}}[$__rate_interval])))",
        f"p{round(q * 100)} {{{{action}}}}",
    )
    for q in (0.5, 0.95)
]
failed_actions_15m = (
    f'action_result:inferwatch_remediation_actions:increase15m{{{ACTION_FILTER}, result="failed"}}'
)
remediation_alerts_firing = (
    'count by (alertname, remediation) (ALERTS{alertstate="firing", remediation!=""})'
)

# ---------------------------------------------------------------- annotations

# Recorded series: Xid events from dcgm-exporter show up the same way.
xid_events = f"uuid_xid:inferwatch_gpu_xid_errors:increase10m{{{NODE}}} > 0"
remediation_events = f"sum by (action, result) (increase({ACTIONS}[2m])) > 0"
xid_events_all = "uuid_xid:inferwatch_gpu_xid_errors:increase10m > 0"
fleet_gpus_up = f"sum(uuid:inferwatch_gpu_up:max{{{NODE}}}) or vector(0)"
fleet_gpus_lost = f"count(uuid:inferwatch_gpu_up:max{{{NODE}}} == 0) or vector(0)"
