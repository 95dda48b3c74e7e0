"""The test-only override helper applies values the way the chart's template does."""

from __future__ import annotations

import pytest

from tests.rules.overrides import OverrideError, apply_overrides


def rule_file() -> dict:
    return {
        "groups": [
            {
                "name": "g",
                "rules": [
                    {"record": "job:x:rate1d", "expr": "rate(x_total[1d])"},
                    {
                        "alert": "A",
                        "expr": "job:x:rate1d > 0.9 and y offset 1d > 10.9",
                        "for": "10m",
                        "labels": {"severity": "warning"},
                        "annotations": {"threshold": "0.9"},
                    },
                    {"alert": "B", "expr": "z > 1", "labels": {"severity": "info"}},
                ],
            }
        ]
    }


def test_threshold_replaces_the_whole_token_only() -> None:
    out = apply_overrides(rule_file(), {"alerts": {"A": {"threshold": "0.75"}}})
    alert = out["groups"][0]["rules"][1]
    assert alert["expr"] == "job:x:rate1d > 0.75 and y offset 1d > 10.9"
    assert alert["annotations"]["threshold"] == "0.75"


def test_for_severity_disabled_interval_and_replacements() -> None:
    values = {
        "alerts": {"A": {"for": "1m", "severity": "critical"}, "B": {"disabled": True}},
        "exprReplacements": [
            {"from": "[1d]", "to": "[5m]"},
            {"from": "offset 1d", "to": "offset 5m"},
        ],
        "groupInterval": "5s",
    }
    out = apply_overrides(rule_file(), values)
    group = out["groups"][0]
    assert group["interval"] == "5s"
    assert [r.get("alert", r.get("record")) for r in group["rules"]] == ["job:x:rate1d", "A"]
    assert group["rules"][0]["expr"] == "rate(x_total[5m])"
    assert group["rules"][1]["expr"] == "job:x:rate1d > 0.9 and y offset 5m > 10.9"
    assert (group["rules"][1]["for"], group["rules"][1]["labels"]["severity"]) == ("1m", "critical")


def test_the_input_is_not_modified() -> None:
    original = rule_file()
    apply_overrides(original, {"alerts": {"A": {"threshold": "0.5"}}})
    assert original == rule_file()


def test_threshold_on_an_alert_without_annotation_is_an_error() -> None:
    with pytest.raises(OverrideError, match="B: has no threshold annotation"):
        apply_overrides(rule_file(), {"alerts": {"B": {"threshold": "2"}}})


def test_threshold_that_is_not_in_the_expr_exactly_once_is_an_error() -> None:
    doc = rule_file()
    doc["groups"][0]["rules"][1]["expr"] = "x > 0.9 or y > 0.9"
    with pytest.raises(OverrideError, match="appears 2 times"):
        apply_overrides(doc, {"alerts": {"A": {"threshold": "0.5"}}})
