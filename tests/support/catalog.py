"""The metric catalog: which series exist, so a rule or panel that reads a misspelled or removed
metric fails a test instead of showing "No data" forever.

A series exists when a component publishes it (the exporter, the remediator, Prometheus itself)
or a recording rule in rules/*.rules.yaml records it. `metric_names(expr)` pulls the metric names
out of a PromQL expression that promtool already accepted as valid.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "rules"

# The published names: design.md's metric catalog (the contract) plus what the collectors added
# (checked against the real exporter in simulate mode by tests/dashboards/test_catalog.py).
_GAUGES_AND_COUNTERS = """
inferwatch_gpu_info inferwatch_gpu_up inferwatch_gpu_count inferwatch_gpu_utilization_ratio
inferwatch_gpu_memory_copy_utilization_ratio inferwatch_gpu_memory_total_bytes
inferwatch_gpu_memory_used_bytes inferwatch_gpu_memory_free_bytes
inferwatch_gpu_memory_reserved_bytes inferwatch_gpu_temperature_celsius inferwatch_gpu_power_watts
inferwatch_gpu_power_limit_watts inferwatch_gpu_energy_joules_total inferwatch_gpu_clock_hertz
inferwatch_gpu_throttle_active inferwatch_gpu_ecc_errors_total inferwatch_gpu_xid_errors_total
inferwatch_gpu_process_memory_bytes
inferwatch_cuda_allocator_reserved_bytes inferwatch_cuda_allocator_allocated_bytes
inferwatch_cuda_allocator_active_bytes inferwatch_cuda_allocator_inactive_split_bytes
inferwatch_cuda_allocator_free_bytes inferwatch_cuda_allocator_largest_free_block_bytes
inferwatch_cuda_allocator_alloc_retries_total inferwatch_cuda_allocator_ooms_total
inferwatch_cuda_allocator_device_allocs_total inferwatch_cuda_allocator_device_frees_total
inferwatch_cuda_allocator_info inferwatch_cuda_allocator_probe_age_seconds
inferwatch_cuda_allocator_outside_bytes inferwatch_cuda_allocator_process_start_time_seconds
inferwatch_llm_engine_info inferwatch_llm_up inferwatch_llm_healthy
inferwatch_llm_requests_running inferwatch_llm_requests_waiting
inferwatch_llm_kv_cache_usage_ratio inferwatch_llm_prompt_tokens_total
inferwatch_llm_generation_tokens_total inferwatch_llm_prefix_cache_queries_tokens_total
inferwatch_llm_prefix_cache_hits_tokens_total inferwatch_llm_requests_total
inferwatch_llm_preemptions_total inferwatch_llm_mapping_missing
inferwatch_llm_probe_success inferwatch_llm_probe_ttft_seconds inferwatch_llm_probe_duration_seconds
inferwatch_exporter_build_info inferwatch_exporter_collector_duration_seconds
inferwatch_exporter_collector_success inferwatch_exporter_collector_last_success_timestamp_seconds
inferwatch_exporter_collector_errors_total
inferwatch_remediation_actions_total inferwatch_remediation_guard_blocks_total
inferwatch_remediation_webhook_requests_total inferwatch_remediation_circuit_open
inferwatch_remediation_queue_depth
"""
_HISTOGRAMS = """
inferwatch_llm_request_prompt_tokens inferwatch_llm_request_generation_tokens
inferwatch_llm_time_to_first_token_seconds inferwatch_llm_inter_token_latency_seconds
inferwatch_llm_request_duration_seconds inferwatch_llm_request_queue_time_seconds
inferwatch_remediation_action_duration_seconds
"""
# Series Prometheus itself creates: scrape health and the alert state of the loaded rules.
PROMETHEUS_BUILTIN = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds"})

PUBLISHED: frozenset[str] = frozenset(_GAUGES_AND_COUNTERS.split()) | frozenset(
    f"{name}{suffix}" for name in _HISTOGRAMS.split() for suffix in ("_bucket", "_sum", "_count")
)


def rule_groups(rules_dir: Path = RULES_DIR) -> Iterable[tuple[Path, dict[str, Any]]]:
    for path in sorted(rules_dir.glob("*.rules.yaml")):
        doc = yaml.safe_load(path.read_text()) or {}
        for group in doc.get("groups") or []:
            for rule in group.get("rules") or []:
                yield path, rule


def recorded_names(rules_dir: Path = RULES_DIR) -> frozenset[str]:
    return frozenset(rule["record"] for _, rule in rule_groups(rules_dir) if "record" in rule)


def known_names(rules_dir: Path = RULES_DIR) -> frozenset[str]:
    """Every series name a query may read."""
    return PUBLISHED | PROMETHEUS_BUILTIN | recorded_names(rules_dir)


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?!\s*\(|[\w:])")
_KEYWORDS = frozenset(
    [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
    ]
)


def metric_names(expr: str) -> set[str]:
    """Metric names a (valid) PromQL expression reads: identifiers that are not functions,
    keywords, label names, strings, durations or numbers."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("{}", text)
    text = _RANGE.sub("[]", text)
    text = _GROUPING.sub(" ", text)
    return {m for m in _IDENT.findall(text) if m.lower() not in _KEYWORDS}
