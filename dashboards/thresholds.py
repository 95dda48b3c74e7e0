"""Alert thresholds read from the rule files: a panel changes colour exactly where its alert fires.

An alert whose threshold users may tune carries the annotation `threshold: "<literal>"`; the
literal appears once in its `expr` after a comparison operator, which tells the direction.
The Helm chart can override a threshold per install; the dashboards show the shipped default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

RULES_DIR = Path(__file__).resolve().parent.parent / "rules"


class ThresholdError(LookupError):
    """A dashboard asks for an alert threshold the rule files do not define."""


@dataclass(frozen=True)
class AlertThreshold:
    alert: str
    literal: str  # exactly as written in the rule
    above: bool  # True: fires when the value is above (">", ">="); False: below
    severity: str
    for_: str
    runbook_url: str

    @property
    def value(self) -> float:
        return float(self.literal)


def _comparison(alert: str, expr: str, literal: str) -> bool:
    pattern = rf"(>=|<=|>|<|==|!=)\s*(?:bool\s+)?(?<![\w.]){re.escape(literal)}(?![\w.])"
    ops: list[str] = re.findall(pattern, expr)
    if len(ops) != 1 or ops[0] in {"==", "!="}:
        raise ThresholdError(
            f"alert {alert}: threshold {literal!r} must follow exactly one <, <=, > or >= in its "
            f"expr (found {ops or 'none'})"
        )
    return ops[0].startswith(">")


@cache
def load(rules_dir: Path = RULES_DIR) -> dict[str, AlertThreshold]:
    """Every alert with a `threshold` annotation in rules_dir/*.rules.yaml, by alert name."""
    found: dict[str, AlertThreshold] = {}
    for path in sorted(rules_dir.glob("*.rules.yaml")):
        doc: Any = yaml.safe_load(path.read_text()) or {}
        for group in doc.get("groups") or []:
            for rule in group.get("rules") or []:
                literal = (rule.get("annotations") or {}).get("threshold")
                if "alert" not in rule or literal is None:
                    continue
                name, expr = rule["alert"], str(rule["expr"])
                if name in found and found[name].literal != str(literal):
                    raise ThresholdError(f"alert {name} is defined twice with different thresholds")
                found[name] = AlertThreshold(
                    alert=name,
                    literal=str(literal),
                    above=_comparison(name, expr, str(literal)),
                    severity=str((rule.get("labels") or {}).get("severity", "warning")),
                    for_=str(rule.get("for", "")),
                    runbook_url=str((rule.get("annotations") or {}).get("runbook_url", "")),
                )
    return found


def alert(name: str) -> AlertThreshold:
    """The threshold of one alert; a clear error if the rules do not define it."""
    try:
        return load(RULES_DIR)[name]
    except KeyError:
        raise ThresholdError(
            f"dashboards draw the threshold of alert {name}, but no rule in {RULES_DIR.name}/ "
            "defines that alert with a `threshold` annotation"
        ) from None


@cache
def _recorded(rules_dir: Path) -> dict[str, str]:
    return {
        rule["record"]: str(rule["expr"])
        for path in sorted(rules_dir.glob("*.rules.yaml"))
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups") or []
        for rule in group.get("rules") or []
        if "record" in rule
    }


def _recording_expr(name: str, rules_dir: Path) -> str:
    try:
        return _recorded(rules_dir)[name]
    except KeyError:
        raise ThresholdError(
            f"dashboards read recording rule {name}, but no rule records it"
        ) from None


def slo_objective(record: str) -> float:
    """An SLO objective the rules publish as a constant series (`vector(0.995)`)."""
    expr = _recording_expr(record, RULES_DIR)
    match = re.fullmatch(r"\s*vector\(\s*([0-9.eE+-]+)\s*\)\s*", expr)
    if not match:
        raise ThresholdError(f"{record}: expected `vector(<objective>)`, found {expr!r}")
    return float(match.group(1))


def slo_latency_bound(record: str) -> float:
    """The latency bound of a histogram-bucket SLI: the `le` its good-events selector reads."""
    expr = _recording_expr(record, RULES_DIR)
    bounds = set(re.findall(r'le\s*=\s*"([0-9.eE+-]+)"', expr))
    if len(bounds) != 1:
        raise ThresholdError(f'{record}: expected one le="..." bucket bound, found {bounds}')
    return float(bounds.pop())
