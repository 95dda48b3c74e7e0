"""The demo's rule file: the chart's PrometheusRule rendered with shortened windows only."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from demo import rules as demo_rules


def test_compress_keeps_the_order_of_windows():
    durations = ["30s", "1m", "5m", "10m", "30m", "1h", "6h", "1d", "3d", "30d", "90d"]
    short = [demo_rules.compress(demo_rules.parse_duration(d)) for d in durations]
    assert short == sorted(short)
    assert short[-1] <= 60  # the longest window still fits in a demo scenario


def test_replacements_never_rewrite_an_earlier_output():
    groups = [
        {
            "rules": [
                {"record": "a", "expr": "rate(x[10m]) / rate(x[5m] offset 1d)"},
                {"alert": "A", "expr": "avg_over_time(y[30m]) > 1", "for": "15m"},
                {"record": "b", "expr": "max_over_time(z[1h:1m])"},
            ]
        }
    ]
    values = demo_rules.demo_overrides(groups, eval_interval="1s")
    reps = values["exprReplacements"]
    sources = [r["from"] for r in reps]
    for i, rep in enumerate(reps):
        assert rep["to"] not in sources[i + 1 :]
    assert {r["from"] for r in reps} == {"[5m]", "[10m]", "[30m]", "[1h:1m]", "offset 1d"}
    assert values["alerts"] == {"A": {"for": "10s"}}


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_rendered_rules_are_valid_and_only_shortened(tmp_path):
    try:
        demo_rules.helm_binary()
    except RuntimeError:
        pytest.skip("helm not installed (./run setup)")
    out = tmp_path / "rules.yaml"
    demo_rules.build_rule_file(
        out, tmp_path / "helm", extra_alert_overrides={"InferwatchLLMQueueBacklog": {"for": "7s"}}
    )
    check = subprocess.run(
        ["promtool", "check", "rules", str(out)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    rendered = yaml.safe_load(out.read_text())["groups"]
    every_rule = [r for g in rendered for r in g["rules"]]
    assert all(g["interval"] == "1s" for g in rendered)
    # Every window became seconds, none longer than the compression's ceiling.
    for rule in every_rule:
        for window in re.findall(r"\[(\d+[a-z]+)(?::\d*[a-z]*)?\]", rule["expr"]):
            assert window.endswith("s") and demo_rules.parse_duration(window) <= 60, rule
    by_name = {r["alert"]: r for r in every_rule if "alert" in r}
    assert by_name["InferwatchLLMQueueBacklog"]["for"] == "7s"
    # The same alerts as the repository's rule files: nothing dropped or added.
    source_alerts = {
        r["alert"]
        for path in (demo_rules.REPO / "rules").glob("*.rules.yaml")
        for g in yaml.safe_load(path.read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    assert set(by_name) == source_alerts
