"""Structure a Grafana user relies on: loadable JSON, a sane grid, units, datasources, variables."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from dashboards.build import DASHBOARDS, GENERATED
from dashboards.panels import DATASOURCE, GRID_COLUMNS, Json

VARIABLE_REF = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
UNIT_REQUIRED = {"timeseries", "stat", "gauge", "bargauge", "state-timeline", "table"}


def panels(dashboard: Json) -> Iterator[Json]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold their panels


def content_panels(dashboard: Json) -> list[Json]:
    return [p for p in panels(dashboard) if p["type"] != "row"]


def test_committed_files_are_valid_json_named_by_uid() -> None:
    files = sorted(GENERATED.glob("*.json"))
    assert [f.stem for f in files] == sorted(DASHBOARDS)
    for path in files:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] == path.stem


def test_uids_and_titles_are_unique_and_stable(dashboards: dict[str, Json]) -> None:
    titles = [d["title"] for d in dashboards.values()]
    assert len(set(titles)) == len(titles) == 5
    for uid, dashboard in dashboards.items():
        assert dashboard["uid"] == uid
        assert re.fullmatch(r"[a-z0-9-]{1,40}", uid), uid  # Grafana's uid limit is 40 chars
        assert 39 <= dashboard["schemaVersion"] <= 41


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_panel_ids_are_unique(dashboards: dict[str, Json], uid: str) -> None:
    ids = [p["id"] for p in panels(dashboards[uid])]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_grid_fits_24_columns_without_overlap(dashboards: dict[str, Json], uid: str) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in panels(dashboards[uid]):
        g = panel["gridPos"]
        assert all(isinstance(g[k], int) for k in ("x", "y", "w", "h")), panel["title"]
        assert g["x"] >= 0 and g["y"] >= 0 and g["w"] >= 1 and g["h"] >= 1, panel["title"]
        assert g["x"] + g["w"] <= GRID_COLUMNS, f"{panel['title']} sticks out: {g}"
        for col in range(g["x"], g["x"] + g["w"]):
            for row in range(g["y"], g["y"] + g["h"]):
                other = taken.setdefault((col, row), panel["title"])
                assert other == panel["title"], f"{panel['title']} overlaps {other} at {col},{row}"


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_every_panel_has_datasource_unit_and_description(
    dashboards: dict[str, Json], uid: str
) -> None:
    for panel in content_panels(dashboards[uid]):
        name = panel["title"]
        assert panel["type"] in UNIT_REQUIRED, name
        assert panel["datasource"] == DATASOURCE, name
        assert panel["targets"], name
        assert all(t["datasource"] == DATASOURCE and t["expr"] for t in panel["targets"]), name
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), name
        unit = panel["fieldConfig"]["defaults"].get("unit")
        assert isinstance(unit, str) and unit, f"{name} has no unit"
        assert len(panel["description"]) > 40, f"{name} needs a description that helps"


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_variables_used_are_defined_and_defined_are_used(
    dashboards: dict[str, Json], uid: str
) -> None:
    dashboard = dashboards[uid]
    variables = dashboard["templating"]["list"]
    defined = [v["name"] for v in variables]
    assert defined[0] == "datasource"
    assert variables[0] == {**variables[0], "type": "datasource", "query": "prometheus"}
    text = json.dumps({k: v for k, v in dashboard.items() if k != "templating"})
    used = {next(filter(None, m)) for m in VARIABLE_REF.findall(text)}
    used = {name for name in used if not name.startswith("__")}
    assert used <= set(defined), f"undefined: {used - set(defined)}"
    assert set(defined) <= used, f"defined but unused: {set(defined) - used}"
    # A variable's query may only use variables defined before it (Grafana's chain order).
    for i, variable in enumerate(variables):
        refs = {next(filter(None, m)) for m in VARIABLE_REF.findall(json.dumps(variable))}
        assert refs <= set(defined[:i]) | {"__all"}, f"{variable['name']} uses {refs}"


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_time_range_refresh_and_annotations(dashboards: dict[str, Json], uid: str) -> None:
    dashboard = dashboards[uid]
    assert re.fullmatch(r"now-\d+[mhd]", dashboard["time"]["from"])
    assert dashboard["refresh"] in dashboard["timepicker"]["refresh_intervals"]
    names = {a["name"] for a in dashboard["annotations"]["list"]}
    assert "Remediation actions" in names  # every dashboard shows what the remediator did
    for annotation in dashboard["annotations"]["list"]:
        if not annotation.get("builtIn"):
            assert annotation["datasource"] == DATASOURCE and annotation["expr"]


def test_xid_events_are_annotations_where_gpus_matter(dashboards: dict[str, Json]) -> None:
    for uid in ("inferwatch-gpu", "inferwatch-fleet", "inferwatch-serving"):
        names = {a["name"] for a in dashboards[uid]["annotations"]["list"]}
        assert "Xid errors" in names, uid
