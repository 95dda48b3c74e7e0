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

from exporter.catalog import MetricSpec
from exporter.collectors import COLLECTORS
from exporter.snapshot import EXPORTER_METRICS, PROCESS_METRICS

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "rules"

# The published names. The exporter's come from its declarations (each collector's `metrics`,
# the exporter's own EXPORTER_METRICS and client_python's process metrics), so this catalog
# cannot drift from what is published (tests/core/test_registration.py checks the declarations
# against the real output). The remediator's are design.md's contract.
_REMEDIATOR = """
inferwatch_remediation_actions_total inferwatch_remediation_guard_blocks_total
inferwatch_remediation_webhook_requests_total inferwatch_remediation_circuit_open
inferwatch_remediation_queue_depth inferwatch_remediation_kill_switch
inferwatch_remediation_errors_total
"""
_REMEDIATOR_HISTOGRAMS = """
inferwatch_remediation_action_duration_seconds inferwatch_remediation_time_to_act_seconds
inferwatch_remediation_time_to_effect_seconds
"""
# Series Prometheus itself creates: scrape health and the alert state of the loaded rules.
PROMETHEUS_BUILTIN = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds"})


def exporter_specs() -> tuple[MetricSpec, ...]:
    """Every metric family the exporter declares: collectors in registration order, then its own."""
    collected = tuple(spec for cls in COLLECTORS.values() for spec in cls.metrics)
    return (*collected, *EXPORTER_METRICS, *PROCESS_METRICS)


ALWAYS_PUBLISHED: frozenset[str] = frozenset(
    name for spec in exporter_specs() if not spec.when for name in spec.series_names
)
"""The exporter's series that every healthy simulated run shows (no MIG-only, error-only...)."""
PUBLISHED: frozenset[str] = (
    frozenset(name for spec in exporter_specs() for name in spec.series_names)
    | frozenset(_REMEDIATOR.split())
    | frozenset(
        f"{name}{suffix}"
        for name in _REMEDIATOR_HISTOGRAMS.split()
        for suffix in ("_bucket", "_sum", "_count")
    )
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
