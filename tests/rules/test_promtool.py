"""promtool on every rule file (lint fatal) and every promtool unit-test file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.rules import ruleset
from tests.rules.overrides import apply_overrides


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("path", ruleset.RULE_FILES, ids=lambda p: p.name)
def test_check_rules_lint_fatal(promtool: str, path: Path) -> None:
    result = run(promtool, "check", "rules", "--lint=all", "--lint-fatal", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", ruleset.TEST_FILES, ids=lambda p: p.name)
def test_promtool_unit_tests(promtool: str, path: Path) -> None:
    result = run(promtool, "test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_file_has_a_unit_test_file() -> None:
    tested = {p.name.removesuffix("_test.yaml") for p in ruleset.TEST_FILES}
    missing = {p.name.removesuffix(".rules.yaml") for p in ruleset.RULE_FILES} - tested
    assert not missing


def test_chart_style_overrides_keep_every_file_valid(promtool: str, tmp_path: Path) -> None:
    """Every threshold, a shorter `for` and the demo's window replacements stay valid."""
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
    for path in ruleset.RULE_FILES:
        out = tmp_path / path.name
        out.write_text(yaml.safe_dump(apply_overrides(ruleset.load(path), values), sort_keys=False))
        result = run(promtool, "check", "rules", "--lint-fatal", str(out))
        assert result.returncode == 0, result.stdout + result.stderr
