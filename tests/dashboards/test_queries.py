"""Every query parses as PromQL and reads only series that exist (published or recorded)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest

from dashboards.panels import Json
from tests.support.catalog import known_names, metric_names

# Grafana macros, replaced by a value of the right type before promtool sees the query.
MACROS = {
    "$__rate_interval": "5m",
    "$__interval_ms": "60000",
    "$__interval": "1m",
    "$__range_s": "3600",
    "$__range": "1h",
}
VARIABLE = re.compile(r"\$\{\w+(?::\w+)?\}|\$\w+")
LABEL_VALUES = re.compile(r"label_values\((.*),\s*(\w+)\)", re.S)


class Query(NamedTuple):
    where: str  # dashboard uid / panel title / refId, for error messages
    expr: str


def queries(dashboards: dict[str, Json]) -> list[Query]:
    found = []
    for uid, dashboard in dashboards.items():
        for panel in dashboard["panels"]:
            for t in panel.get("targets", []):
                found.append(Query(f"{uid} / {panel['title']} / {t['refId']}", t["expr"]))
        for a in dashboard["annotations"]["list"]:
            if "expr" in a:
                found.append(Query(f"{uid} / annotation {a['name']}", a["expr"]))
        for v in dashboard["templating"]["list"]:
            if v["type"] == "query":
                match = LABEL_VALUES.fullmatch(v["definition"])
                assert match, f"{uid} / variable {v['name']}: not label_values(...)"
                assert v["query"]["query"] == v["definition"]
                found.append(Query(f"{uid} / variable {v['name']}", match.group(1)))
    return found


def as_promql(expr: str) -> str:
    for macro, value in sorted(MACROS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(macro, value)
    # Variables only ever sit inside label-matcher strings; outside one, "x" fails to parse.
    return VARIABLE.sub("x", expr)


def test_macro_replacement_keeps_types() -> None:
    expr = 'rate(a{b=~"$var", c=~"${other}"}[$__rate_interval]) / $__range_s'
    assert as_promql(expr) == 'rate(a{b=~"x", c=~"x"}[5m]) / 3600'


def test_every_query_parses_as_promql(dashboards: dict[str, Json], tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: ./run setup installs the Debian prometheus package"
    found = queries(dashboards)
    assert len(found) > 100
    records = {f"dashboards:query_{i}:check": q for i, q in enumerate(found)}
    rules = {
        "groups": [
            {
                "name": "dashboard-queries",
                "rules": [
                    {"record": name, "expr": as_promql(q.expr)} for name, q in records.items()
                ],
            }
        ]
    }
    path = tmp_path / "queries.rules.yaml"
    path.write_text(json.dumps(rules))  # JSON is YAML; no quoting surprises in the exprs
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        failed = [
            f"{q.where}: {line}"
            for line in result.stderr.splitlines()
            for name, q in records.items()
            if f'"{name}"' in line
        ]
        pytest.fail("queries promtool rejects:\n" + "\n".join(failed or [result.stderr]))


def test_promtool_check_catches_a_broken_query(tmp_path: Path) -> None:
    """The check above can fail: a query with a type error is rejected."""
    path = tmp_path / "broken.rules.yaml"
    expr = as_promql('rate(inferwatch_llm_up{model=~"$model"})')
    path.write_text(
        json.dumps(
            {
                "groups": [
                    {"name": "x", "rules": [{"record": "dashboards:broken:check", "expr": expr}]}
                ]
            }
        )
    )
    result = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1 and "range vector" in result.stderr


def test_every_metric_is_published_or_recorded(dashboards: dict[str, Json]) -> None:
    known = known_names()
    unknown = sorted(
        f"{q.where}: {name}"
        for q in queries(dashboards)
        for name in metric_names(as_promql(q.expr))
        if name not in known
    )
    assert not unknown, "queries read series nothing publishes or records:\n" + "\n".join(unknown)


def test_catalog_check_catches_an_unknown_metric() -> None:
    names = metric_names('sum by (model) (rate(inferwatch_llm_request_total{model=~"x"}[5m]))')
    assert names == {"inferwatch_llm_request_total"}
    assert not names <= known_names()  # misspelled (requests_total): would fail the test above
