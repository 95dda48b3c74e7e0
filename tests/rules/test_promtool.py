"""promtool on every rule file (lint fatal) and every promtool unit-test file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.rules import ruleset
from tests.rules.conftest import RenderRules


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("path", ruleset.RULE_FILES, ids=lambda p: p.name)
def test_check_rules_lint_fatal(promtool: str, path: Path) -> None:
    result = run(promtool, "check", "rules", "--lint=all", "--lint-fatal", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# The day-long scenarios evaluate every rule once a minute for 26 hours: about a minute of CPU.
@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", ruleset.TEST_FILES, ids=lambda p: p.name)
def test_promtool_unit_tests(promtool: str, path: Path) -> None:
    result = run(promtool, "test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_file_has_a_unit_test_file() -> None:
    tested = {p.name.removesuffix("_test.yaml") for p in ruleset.TEST_FILES}
    missing = {p.name.removesuffix(".rules.yaml") for p in ruleset.RULE_FILES} - tested
    assert not missing


def test_chart_overrides_keep_every_rule_valid(
    promtool: str, render_rules: RenderRules, tmp_path: Path
) -> None:
    """Every threshold, a shorter `for` and the demo's window replacements, applied by the real
    `helm template`, still pass promtool's lint."""
    values = {
        "alerts": {
            r.name: {"threshold": "0.123456", "for": "10s"}
            for r in ruleset.alerts()
            if "threshold" in r.body.get("annotations", {})
        },
        "exprReplacements": [
            {"from": "[1d]", "to": "[10m]"},
            {"from": "offset 1d", "to": "offset 10m"},
            {"from": "[30m]", "to": "[2m]"},
        ],
        "groupInterval": "5s",
    }
    rendered = {g["name"]: g for g in render_rules(values)}
    assert all(g["interval"] == "5s" for g in rendered.values())
    tuned = [r for g in rendered.values() for r in g["rules"] if r.get("alert") in values["alerts"]]
    assert {r["alert"] for r in tuned} == set(values["alerts"])
    for rule in tuned:
        assert "0.123456" in rule["expr"] and rule["for"] == "10s", rule["alert"]
    # One file per rule file, as Prometheus loads them (dcgm-compat records gpu's names on purpose).
    for path in ruleset.RULE_FILES:
        groups = [rendered.pop(g["name"]) for g in ruleset.load(path)["groups"]]
        out = tmp_path / path.name
        out.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
        result = run(promtool, "check", "rules", "--lint-fatal", str(out))
        assert result.returncode == 0, result.stdout + result.stderr
    assert rendered == {}, "the chart rendered groups no rule file has"
