"""Test-only copy of the chart's rule-override mechanism (as its PrometheusRule template).

Values, as in the chart's `rules:` block:
  alerts: {AlertName: {threshold, for, severity, disabled}}
  exprReplacements: [{from, to}]   literal replacements applied to every expr (records included)
  groupInterval: "30s"

A `threshold` replaces the alert's `threshold` annotation value in its expr, matched as a whole
token (word boundaries), and must match exactly once; the annotation follows the new value.
"""

from __future__ import annotations

import copy
import re
from typing import Any


class OverrideError(ValueError):
    """An override that cannot be applied as the chart would apply it."""


def threshold_pattern(value: str) -> re.Pattern[str]:
    return re.compile(rf"\b{re.escape(value)}\b")


def apply_overrides(rule_file: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of one loaded rule file with the chart-style overrides applied."""
    alerts: dict[str, dict[str, Any]] = values.get("alerts") or {}
    replacements = values.get("exprReplacements") or []
    out = copy.deepcopy(rule_file)
    for group in out["groups"]:
        if values.get("groupInterval"):
            group["interval"] = values["groupInterval"]
        kept = []
        for rule in group["rules"]:
            expr = str(rule["expr"])
            for rep in replacements:
                expr = expr.replace(rep["from"], rep["to"])
            rule["expr"] = expr
            override = alerts.get(rule.get("alert", ""), {})
            if override.get("disabled"):
                continue
            if "for" in override:
                rule["for"] = override["for"]
            if "severity" in override:
                rule.setdefault("labels", {})["severity"] = override["severity"]
            if "threshold" in override:
                _replace_threshold(rule, str(override["threshold"]))
            kept.append(rule)
        group["rules"] = kept
    return out


def _replace_threshold(rule: dict[str, Any], new: str) -> None:
    old = rule.get("annotations", {}).get("threshold")
    if old is None:
        raise OverrideError(f"{rule['alert']}: has no threshold annotation to override")
    expr, count = threshold_pattern(old).subn(lambda _match: new, rule["expr"])
    if count != 1:
        raise OverrideError(f"{rule['alert']}: threshold {old!r} appears {count} times in expr")
    rule["expr"] = expr
    rule["annotations"]["threshold"] = new
