"""The live preview's pure parts: queries it sends, where it draws panels, how it labels data."""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import pytest
import yaml

from dashboards import live_preview as lp
from dashboards.panels import GRID_COLUMNS, Json
from harness import services
from harness.prometheus import Prometheus
from harness.stack import LoopbackStack, scrape_job
from harness.wait import TRANSIENT, eventually

WINDOW = lp.Window(start=1000.0, end=1090.0, step=1.0)


def test_macros_become_durations_of_the_run_and_variables_match_everything() -> None:
    expr = (
        'sum(rate(a{model=~"$model", node=~"${node}", x=~"${gpu:regex}"}[$__rate_interval]))'
        " / $__range_s + increase(b[$__range]) + c[$__interval]"
    )
    assert lp.to_promql(expr, WINDOW, rate_window=10) == (
        'sum(rate(a{model=~".*", node=~".*", x=~".*"}[10s])) / 90 + increase(b[90s]) + c[1s]'
    )


def test_rule_replacements_apply_to_panel_queries_too() -> None:
    """A panel's own `offset 1d` shrinks like the alert it mirrors."""
    expr = 'r{t=~"$target"} / (r{t=~"$target"} offset 1d > 0.2) + avg_over_time(g[10m])'
    replaced = lp.to_promql(expr, WINDOW, [("offset 1d", "offset 30s"), ("[10m]", "[7s]")])
    assert replaced == 'r{t=~".*"} / (r{t=~".*"} offset 30s > 0.2) + avg_over_time(g[7s])'


def test_every_query_of_every_dashboard_is_left_without_grafana_syntax(
    dashboards: dict[str, Json],
) -> None:
    for dashboard in dashboards.values():
        for panel in dashboard["panels"]:
            for t in panel.get("targets", []):
                assert "$" not in lp.to_promql(t["expr"], WINDOW), (panel["title"], t["expr"])


def test_legend_fills_labels_and_auto_names_the_series() -> None:
    labels = {"__name__": "up", "model": "m", "engine": "llamacpp"}
    assert lp.legend("{{model}} ({{ engine }})", labels) == "m (llamacpp)"
    assert lp.legend("__auto", labels) == 'up{engine="llamacpp", model="m"}'
    assert lp.legend("", {}) == "value"


def test_grid_rect_places_panels_like_grafana(dashboards: dict[str, Json]) -> None:
    """Top-left origin, full width = 24 columns, no two panels overlap in the picture."""
    panels = dashboards["inferwatch-fleet"]["panels"]
    rows = lp.grid_height(panels)
    _, height_in = lp.figure_size(panels)
    body_top = 1 - lp.TITLE_INCHES / height_in
    full = lp.grid_rect({"x": 0, "y": 0, "w": GRID_COLUMNS, "h": rows}, rows, height_in)
    assert full == pytest.approx((0, 0, 1, body_top))
    rects = [lp.grid_rect(p["gridPos"], rows, height_in) for p in panels]
    for (l1, b1, w1, h1), (l2, b2, w2, h2) in itertools.combinations(rects, 2):
        overlap_x = min(l1 + w1, l2 + w2) - max(l1, l2)
        overlap_y = min(b1 + h1, b2 + h2) - max(b1, b2)
        assert overlap_x <= 1e-9 or overlap_y <= 1e-9
    first, last = panels[0]["gridPos"], panels[-1]["gridPos"]
    assert first["y"] <= last["y"]
    assert rects[0][1] >= rects[-1][1]  # lower on the grid is lower in the picture


def test_event_starts_marks_the_beginning_of_each_run_of_samples() -> None:
    assert lp.event_starts([5, 6, 7, 20, 21, 40], step=1) == [5, 20, 40]
    assert lp.event_starts([], step=1) == []


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (0.125, "percentunit", "12.5%"),
        (0.25, "s", "250 ms"),
        (2.5, "s", "2.5 s"),
        (3 * 1024**3, "bytes", "3 GiB"),
        (1500, "reqps", "1.5 k req/s"),
        (7.25, "count:tok/s", "7.25 tok/s"),
        (2.1e9, "hertz", "2.1 GHz"),
        (math.nan, "short", "NaN"),
    ],
)
def test_values_are_formatted_in_the_panel_unit(value: float, unit: str, text: str) -> None:
    assert lp.format_value(value, unit) == text


def test_threshold_colour_is_the_highest_step_reached() -> None:
    steps = {"steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}]}
    assert lp.threshold_color(0.5, steps) == lp.COLORS["green"]
    assert lp.threshold_color(1, steps) == lp.COLORS["red"]


def test_panels_without_series_are_drawn_as_no_data(
    dashboards: dict[str, Json], tmp_path: Path
) -> None:
    """Drawing works from the data alone (no servers): empty results are an honest picture."""
    dashboard = dashboards["inferwatch-gpu"]
    stat = next(p for p in dashboard["panels"] if p["type"] == "stat")
    series = lp.Series("GPUs", {}, [0.0, 1.0, 2.0], [4.0, 4.0, 3.0])
    results = {stat["id"]: lp.PanelData(series=[series])}
    path = lp.draw(dashboard, results, lp.Window(0, 3), tmp_path / "gpu.png", caption="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def rules_every_evaluation(tmp_path: Path) -> list[Path]:
    """The rule files with their groups' own `interval` dropped, so every group runs at the
    stack's 1 s evaluation interval (the GPU groups ask for 10 s in production)."""
    out = []
    for path in sorted(lp.RULES.glob("*.rules.yaml")):
        doc = yaml.safe_load(path.read_text())
        for group in doc["groups"]:
            group.pop("interval", None)
        copy = tmp_path / path.name
        copy.write_text(yaml.safe_dump(doc, sort_keys=False))
        out.append(copy)
    return out


@pytest.mark.integration
def test_queries_evaluate_against_a_real_prometheus_fed_by_the_simulator(
    dashboards: dict[str, Json], tmp_path: Path
) -> None:
    """Every query runs without error once macros are replaced; GPU panels get real series."""
    with LoopbackStack(tmp_path).stopped_at_exit() as stack:
        stack.start_process(services.exporter(tmp_path, stack.port("exporter")))
        job = scrape_job("inferwatch-exporter", [stack.address("exporter")], honor_labels=True)
        stack.prometheus_config([job], rules_every_evaluation(tmp_path))
        stack.start_process(stack.prometheus_process())
        prom = Prometheus(stack.url("prometheus"))
        # Rates need two samples of each series inside the window.
        eventually(
            lambda: prom.query("count_over_time(uuid:inferwatch_gpu_up:max[10s]) >= 3"),
            within=30,
            what="three evaluations of the GPU rules",
            ignore=TRANSIENT,
        )
        window = lp.Window(time.time() - 10, time.time())
        results = {
            (uid, p["title"]): lp.evaluate(p, prom, window)
            for uid, d in dashboards.items()
            for p in d["panels"]
            if p["type"] != "row"
        }
    errors = {k: v.errors for k, v in results.items() if v.errors}
    assert not errors
    for title in ("GPUs", "GPU utilization", "Temperature", "Power vs limit", "GPU inventory"):
        assert not results[("inferwatch-gpu", title)].empty, title
    assert not results[("inferwatch-cuda-memory", "External fragmentation")].empty
