"""Panel thresholds come from the alert rules: change a rule's threshold, the panel follows."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from dashboards import build, thresholds
from dashboards.panels import Json
from tests.support.catalog import RULES_DIR

ALERT_SENTENCE = re.compile(
    r"Alert (\w+) \((\w+)\) fires (above|below) (\S+?)(?: for \w+)?\.(?=\s|$)"
)


def alert_panels(dashboard: Json) -> list[tuple[Json, list[tuple[str, ...]]]]:
    return [
        (p, ALERT_SENTENCE.findall(p["description"]))
        for p in dashboard["panels"]
        if p["type"] != "row" and ALERT_SENTENCE.search(p["description"])
    ]


def test_panels_draw_the_rules_thresholds(dashboards: dict[str, Json]) -> None:
    rules = thresholds.load(RULES_DIR)
    checked = 0
    for dashboard in dashboards.values():
        for panel, alerts in alert_panels(dashboard):
            values = [s["value"] for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]
            for name, severity, direction, literal in alerts:
                rule = rules[name]
                assert (rule.literal, rule.severity, rule.above) == (
                    literal,
                    severity,
                    direction == "above",
                )
                assert rule.value in values, f"{panel['title']}: {rule.value} not in {values}"
                assert any(link["title"] == f"Runbook: {name}" for link in panel["links"])
                checked += 1
    assert checked >= 5


def test_changing_a_rule_threshold_moves_the_panel_threshold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules_dir = tmp_path / "rules"
    shutil.copytree(RULES_DIR, rules_dir)
    rule = next(t for t in thresholds.load(RULES_DIR).values() if t.above)
    for path in rules_dir.glob("*.rules.yaml"):
        text = path.read_text()
        if f"alert: {rule.alert}\n" in text:
            # Rewrite the annotation and the token in the expr (what the chart does per install).
            start = text.index(f"alert: {rule.alert}\n")
            end = text.find("- alert:", start + 1)
            end = len(text) if end < 0 else end
            block = re.sub(
                rf"(?<![\w.]){re.escape(rule.literal)}(?![\w.])", "12345", text[start:end]
            )
            path.write_text(text[:start] + block + text[end:])
    monkeypatch.setattr(thresholds, "RULES_DIR", rules_dir)
    moved = [
        panel["title"]
        for dashboard in build.build_all().values()
        for panel, alerts in alert_panels(dashboard)
        if any(a[0] == rule.alert for a in alerts)
        and 12345 in [s["value"] for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    ]
    assert moved, f"no panel follows {rule.alert}'s threshold"


def write_rule(tmp_path: Path, expr: str, threshold: str) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "x.rules.yaml").write_text(
        "groups:\n- name: x\n  rules:\n  - alert: InferwatchTest\n"
        f"    expr: {expr}\n    for: 5m\n    labels: {{severity: critical}}\n"
        f'    annotations: {{threshold: "{threshold}"}}\n'
    )
    return tmp_path


def test_direction_comes_from_the_comparison(tmp_path: Path) -> None:
    below = thresholds.load(write_rule(tmp_path / "a", "min(x) < 0.25", "0.25"))["InferwatchTest"]
    above = thresholds.load(write_rule(tmp_path / "b", "max(x) >= bool 2", "2"))["InferwatchTest"]
    assert (below.above, below.value, below.severity, below.for_) == (False, 0.25, "critical", "5m")
    assert (above.above, above.value) == (True, 2.0)


def test_threshold_not_after_a_comparison_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(thresholds.ThresholdError, match=r"InferwatchTest.*exactly one"):
        thresholds.load(write_rule(tmp_path, "rate(x[5m]) * 0.9", "0.9"))


def test_unknown_alert_is_a_clear_error() -> None:
    with pytest.raises(thresholds.ThresholdError, match="InferwatchNoSuchAlert"):
        thresholds.alert("InferwatchNoSuchAlert")
