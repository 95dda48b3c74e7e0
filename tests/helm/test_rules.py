"""The chart's PrometheusRule: the rules/ files unchanged by default, overrides exactly as asked
(the mechanism the demo and users rely on), and valid for promtool either way."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm.conftest import REPO, Helm, HelmError, one

RULES = REPO / "rules"


def source_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for path in sorted(RULES.glob("*.rules.yaml")):
        groups += yaml.safe_load(path.read_text())["groups"]
    return groups


def rendered_groups(
    helm: Helm, values: dict[str, Any] | None = None, chart: Path | None = None
) -> list[dict[str, Any]]:
    rules_only = {"exporter": {"enabled": False}, "remediator": {"enabled": False}}
    merged = {**rules_only, **(values or {})}
    docs = helm.template(merged, chart=chart) if chart else helm.template(merged)
    return list(one(docs, "PrometheusRule")["spec"]["groups"])


def alerts(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def promtool_check(groups: list[dict[str, Any]], tmp_path: Path) -> None:
    path = tmp_path / "rendered.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    proc = subprocess.run(
        ["promtool", "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def token_pattern(value: str) -> re.Pattern[str]:
    """The chart's notion of a threshold token: not inside a longer number or name."""
    return re.compile(rf"(?<![A-Za-z0-9_.]){re.escape(value)}(?![A-Za-z0-9_.])")


# -- the real rules -----------------------------------------------------------------------------


def test_default_render_equals_the_rule_files(helm: Helm, tmp_path: Path) -> None:
    expected = source_groups()
    assert expected, "rules/ has no *.rules.yaml"
    groups = rendered_groups(helm)
    assert groups == expected
    promtool_check(groups, tmp_path)


def test_every_threshold_annotation_is_one_token_of_its_expr() -> None:
    """The contract the chart's threshold override depends on."""
    tunable = {
        name: rule
        for name, rule in alerts(source_groups()).items()
        if "threshold" in rule.get("annotations", {})
    }
    assert tunable, "no alert has a tunable threshold"
    for name, rule in tunable.items():
        value = str(rule["annotations"]["threshold"])
        found = token_pattern(value).findall(str(rule["expr"]))
        assert len(found) == 1, f"{name}: threshold {value!r} occurs {len(found)} times"


def test_overriding_every_threshold_changes_only_that_token(helm: Helm, tmp_path: Path) -> None:
    before = alerts(source_groups())
    tunable = {n: r for n, r in before.items() if "threshold" in r.get("annotations", {})}
    new = {name: f"{i + 1}234.5" for i, name in enumerate(sorted(tunable))}
    groups = rendered_groups(
        helm, {"rules": {"alerts": {n: {"threshold": v} for n, v in new.items()}}}
    )
    after = alerts(groups)
    for name, rule in tunable.items():
        old = str(rule["annotations"]["threshold"])
        want = token_pattern(old).sub(new[name], str(rule["expr"]))
        assert after[name]["expr"] == want, name
        assert after[name]["annotations"]["threshold"] == new[name]
    for name in before.keys() - tunable.keys():
        assert after[name] == before[name], f"{name} changed without an override"
    promtool_check(groups, tmp_path)


def test_demo_style_overrides_still_pass_promtool(helm: Helm, tmp_path: Path) -> None:
    values = {
        "rules": {
            "groupInterval": "1s",
            "exprReplacements": [{"from": "[1d]", "to": "[5m]"}, {"from": "[1h]", "to": "[1m]"}],
            "alerts": {name: {"for": "5s"} for name in alerts(source_groups())},
            "additionalAlertLabels": {"cluster": "demo"},
        }
    }
    groups = rendered_groups(helm, values)
    assert all(g["interval"] == "1s" for g in groups)
    for rule in alerts(groups).values():
        assert rule["for"] == "5s"
        assert rule["labels"]["cluster"] == "demo"
        assert "[1d]" not in rule["expr"] and "[1h]" not in rule["expr"]
    promtool_check(groups, tmp_path)


# -- the override mechanism, on a rule file made for it -------------------------------------------

SAMPLE = {
    "groups": [
        {
            "name": "sample.records",
            "rules": [{"record": "job:up:sum", "expr": "sum by (job) (up[1d] offset 1d)"}],
        },
        {
            "name": "sample.alerts",
            "rules": [
                {
                    "alert": "SampleQueueBacklog",
                    "expr": "max_over_time(waiting[5m]) > 10 and rate(x_10_total[1d]) > 0.10",
                    "for": "10m",
                    "labels": {"severity": "warning", "remediation": "scale_up"},
                    "annotations": {"summary": "Queue.", "threshold": "10"},
                },
                {
                    "alert": "SampleDown",
                    "expr": "up == 0",
                    "for": "5m",
                    "labels": {"severity": "critical"},
                    "annotations": {"summary": "Down."},
                },
                {
                    "alert": "SampleTwice",
                    "expr": "a > 3 or b > 3",
                    "labels": {"severity": "info"},
                    "annotations": {"summary": "Twice.", "threshold": "3"},
                },
            ],
        },
    ]
}


@pytest.fixture
def sample_chart(chart_copy: Path) -> Path:
    rules_dir = chart_copy / "files" / "rules"
    shutil.rmtree(rules_dir)
    rules_dir.mkdir()
    (rules_dir / "sample.rules.yaml").write_text(yaml.safe_dump(SAMPLE, sort_keys=False))
    (rules_dir / "extra.rules.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "extra", "rules": [{"record": "r:x", "expr": "1"}]}]})
    )
    return chart_copy


def test_threshold_replaces_the_token_and_nothing_that_merely_contains_it(
    helm: Helm, sample_chart: Path
) -> None:
    values = {"rules": {"alerts": {"SampleQueueBacklog": {"threshold": 25}}}}
    rule = alerts(rendered_groups(helm, values, sample_chart))["SampleQueueBacklog"]
    assert rule["expr"] == "max_over_time(waiting[5m]) > 25 and rate(x_10_total[1d]) > 0.10"
    assert rule["annotations"] == {"summary": "Queue.", "threshold": "25"}


def test_for_severity_labels_and_disabled(helm: Helm, sample_chart: Path) -> None:
    values = {
        "rules": {
            "alerts": {
                "SampleQueueBacklog": {"for": "2m", "severity": "critical", "labels": {"a": "b"}},
            },
            "disabled": {"SampleDown": True},
            "additionalAlertLabels": {"team": "ml", "severity": "critical"},
        }
    }
    found = alerts(rendered_groups(helm, values, sample_chart))
    assert set(found) == {"SampleQueueBacklog", "SampleTwice"}
    rule = found["SampleQueueBacklog"]
    assert rule["for"] == "2m"
    assert rule["labels"] == {
        "severity": "critical",
        "remediation": "scale_up",
        "a": "b",
        "team": "ml",
    }
    # additionalAlertLabels never override a rule's own labels
    assert found["SampleTwice"]["labels"] == {"severity": "info", "team": "ml"}


def test_expr_replacements_group_interval_and_disabled_files(
    helm: Helm, sample_chart: Path
) -> None:
    values = {
        "rules": {
            "exprReplacements": [
                {"from": "[1d]", "to": "[5m]"},
                {"from": "offset 1d", "to": "offset 5m"},
            ],
            "groupInterval": "15s",
            "disabledFiles": ["extra"],
        }
    }
    groups = rendered_groups(helm, values, sample_chart)
    assert [g["name"] for g in groups] == ["sample.records", "sample.alerts"]
    assert all(g["interval"] == "15s" for g in groups)
    assert groups[0]["rules"][0]["expr"] == "sum by (job) (up[5m] offset 5m)"


def test_no_overrides_leave_the_sample_untouched(helm: Helm, sample_chart: Path) -> None:
    groups = rendered_groups(helm, None, sample_chart)
    assert groups == [
        {"name": "extra", "rules": [{"record": "r:x", "expr": "1"}]},
        *SAMPLE["groups"],
    ]


def test_additional_labels_select_the_rule_for_kube_prometheus_stack(helm: Helm) -> None:
    docs = helm.template({"rules": {"additionalLabels": {"release": "kps"}}})
    assert one(docs, "PrometheusRule")["metadata"]["labels"]["release"] == "kps"


def test_a_threshold_missing_from_its_expr_fails_the_render(helm: Helm, chart_copy: Path) -> None:
    rules_dir = chart_copy / "files" / "rules"
    shutil.rmtree(rules_dir)
    rules_dir.mkdir()
    alert = {
        "alert": "SampleStale",
        "expr": "up == 0",
        "labels": {"severity": "info"},
        "annotations": {"summary": "Stale.", "threshold": "5"},
    }
    rules = {"groups": [{"name": "stale", "rules": [alert]}]}
    (rules_dir / "stale.rules.yaml").write_text(yaml.safe_dump(rules))
    values = {"rules": {"alerts": {"SampleStale": {"threshold": "6"}}}}
    with pytest.raises(HelmError, match=re.escape('"5" must appear exactly once') + ".*found 0"):
        rendered_groups(helm, values, chart_copy)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"alerts": {"SampleTypo": {"for": "1m"}}},
            "rules.alerts.SampleTypo: no alert of that name",
        ),
        ({"disabled": {"SampleTypo": True}}, "rules.disabled.SampleTypo: no alert of that name"),
        (
            {"alerts": {"SampleDown": {"threshold": "1"}}},
            "rules.alerts.SampleDown.threshold: this alert has no threshold annotation",
        ),
        (
            {"alerts": {"SampleTwice": {"threshold": "4"}}},
            'the threshold "3" must appear exactly once in the expr as a token, found 2',
        ),
    ],
)
def test_bad_overrides_fail_with_a_clear_message(
    helm: Helm, sample_chart: Path, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(HelmError, match=re.escape(message)):
        rendered_groups(helm, {"rules": values}, sample_chart)
