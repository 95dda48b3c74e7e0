"""Fixtures for the rules tests: the real promtool (Debian package `prometheus`), and the rule
files with overrides applied the only way users get them: the chart's PrometheusRule rendered by
the real `helm template`."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

import pytest

from tests.helm.conftest import CHART, Helm, make_helm, one
from tests.rules import ruleset

RenderRules = Callable[[dict[str, Any]], list[dict[str, Any]]]


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (./run setup installs the Debian package prometheus)")
    return path


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return make_helm(tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="session")
def render_rules(helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> RenderRules:
    """Rule groups as the chart renders them with the given `rules:` values.

    The chart reads helm/sync.py's copies of rules/; a private copy of the chart gets the
    repository's rule files themselves, so these tests check rules/ as it is (tests/helm checks
    that the copies are in sync)."""
    chart = tmp_path_factory.mktemp("chart") / "inferwatch"
    shutil.copytree(CHART, chart)
    rules_dir = chart / "files" / "rules"
    shutil.rmtree(rules_dir)
    rules_dir.mkdir()
    for path in ruleset.RULE_FILES:
        shutil.copyfile(path, rules_dir / path.name)
    rules_only = {
        "exporter": {"enabled": False},
        "remediator": {"enabled": False},
        "dashboards": {"enabled": False},
    }

    def render(rules_values: dict[str, Any]) -> list[dict[str, Any]]:
        docs = helm.template({**rules_only, "rules": rules_values}, chart=chart)
        return list(one(docs, "PrometheusRule")["spec"]["groups"])

    return render
