"""Which rule groups can leave the Prometheus next to the data, and nothing a split would break.

A ruler that evaluates against a remote query API (Thanos Ruler, Mimir/Cortex ruler, a global
Prometheus over federated or remote-written data) sees every cluster's series at once, each with
its external `cluster` label, and writes what it records into its own storage, not into the
Prometheus that scraped the inputs. A group can run there only if nothing in it needs the local
view. Placement of a group, decided from its expressions alone:

- local, `raw`: it reads a series no rule records (exporter, engine, DCGM, remediator series, or
  Prometheus's own `up`/`scrape_*`): those are only next to the data (or remote-written raw).
- local, `absent`: `absent()`/`absent_over_time()` over every cluster's series fires only when
  all clusters lost the series, never when one did.
- local, `cluster-blind`: an empty `on()`/`by()`, or a label-less constant (`vector(...)`):
  across clusters these meet one series per cluster (duplicate-match errors for `on() group_left`,
  one sum for the whole fleet).
- local, `feeds local`: a local group reads what it records; a remote ruler's output never
  reaches the local Prometheus.
- global: everything else (reads only series recorded by other groups, keeps labels).

Fails on: a rule reading `ALERTS`/`ALERTS_FOR_STATE` (alert state lives in the ruler that
evaluated the alert and is not shared between rulers); a series recorded by both a local and a
global group (two writers after the split); docs/prometheus3.md's placement table not matching.
"""

from __future__ import annotations

import re
from collections import defaultdict

import pytest

from tests.rules.ruleset import ROOT, Rule, metrics_read, rules

DOC = ROOT / "docs" / "prometheus3.md"
ALERT_STATE = {"ALERTS", "ALERTS_FOR_STATE"}
_ABSENT = re.compile(r"\babsent(?:_over_time)?\s*\(")
_EMPTY_MATCH = re.compile(r"\b(?:on|by)\s*\(\s*\)")
_CONSTANT = re.compile(r"\bvector\s*\(")
_TABLE_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|\s*(local|global)\s*\|\s*([^|]*?)\s*\|", re.M)


def _groups() -> dict[str, list[Rule]]:
    grouped: dict[str, list[Rule]] = defaultdict(list)
    for rule in rules():
        grouped[rule.group].append(rule)
    return dict(grouped)


def placements() -> dict[str, tuple[str, str]]:
    """Group -> (local|global, reason)."""
    groups = _groups()
    recorded = {r.body["record"] for rs in groups.values() for r in rs if "record" in r.body}
    reasons: dict[str, str] = {}
    for name, rs in groups.items():
        exprs = [r.expr for r in rs]
        if any(metrics_read(e) - recorded for e in exprs):
            reasons[name] = "raw"
        elif any(_ABSENT.search(e) for e in exprs):
            reasons[name] = "absent"
        elif any(_EMPTY_MATCH.search(e) or _CONSTANT.search(e) for e in exprs):
            reasons[name] = "cluster-blind"
    writers: dict[str, set[str]] = defaultdict(set)
    for name, rs in groups.items():
        for r in rs:
            if "record" in r.body:
                writers[r.body["record"]].add(name)
    changed = True
    while changed:  # what a local group reads must be recorded locally
        changed = False
        for name in list(reasons):
            for e in (r.expr for r in groups[name]):
                for series in metrics_read(e) & recorded:
                    for writer in writers[series] - set(reasons):
                        reasons[writer] = "feeds local"
                        changed = True
    return {
        name: ("local", reasons[name]) if name in reasons else ("global", "recorded series only")
        for name in groups
    }


@pytest.mark.parametrize("rule", rules(), ids=lambda r: f"{r.group}:{r.name}")
def test_no_rule_reads_alert_state(rule: Rule) -> None:
    """ALERTS/ALERTS_FOR_STATE exist only in the ruler that evaluated the alert."""
    assert not metrics_read(rule.expr) & ALERT_STATE, rule.expr


def test_every_recorded_series_has_writers_on_one_side_of_the_split() -> None:
    placed = placements()
    sides: dict[str, set[str]] = defaultdict(set)
    for rule in rules():
        if "record" in rule.body:
            sides[rule.body["record"]].add(placed[rule.group][0])
    assert {name: s for name, s in sides.items() if len(s) > 1} == {}


def test_global_groups_read_only_recorded_series_and_keep_labels() -> None:
    groups = _groups()
    recorded = {r.body["record"] for rs in groups.values() for r in rs if "record" in r.body}
    for name, (where, _) in placements().items():
        if where != "global":
            continue
        for rule in groups[name]:
            assert metrics_read(rule.expr) <= recorded, (name, rule.name)
            assert not _ABSENT.search(rule.expr), (name, rule.name)
            assert not _EMPTY_MATCH.search(rule.expr), (name, rule.name)


def test_docs_placement_table_matches_the_rules() -> None:
    """docs/prometheus3.md lists every group with the placement computed here."""
    documented = {g: (w, why) for g, w, why in _TABLE_ROW.findall(DOC.read_text())}
    assert documented == placements(), (
        "update the Scaling out table in docs/prometheus3.md:\n" + placement_table()
    )


def placement_table() -> str:
    rows = [f"| `{g}` | {w} | {why} |" for g, (w, why) in sorted(placements().items())]
    return "\n".join(["| group | runs | why |", "| --- | --- | --- |", *rows])


def test_classification_catches_each_violation() -> None:
    """The checks above see what they look for (synthetic expressions, not the rule files)."""
    assert metrics_read('ALERTS{alertname="X"} == 1') & ALERT_STATE
    assert _ABSENT.search("absent(up)") and _ABSENT.search("absent_over_time(x[5m])")
    assert _EMPTY_MATCH.search("a > on() group_left() b") and _EMPTY_MATCH.search("sum by () (x)")
    assert not _EMPTY_MATCH.search("a > on(cluster) b")
    assert _CONSTANT.search("vector(0.95)")


if __name__ == "__main__":  # print the table for the docs
    print(placement_table())
