"""The build command: committed output is current, deterministic, and the previews are drawn."""

from __future__ import annotations

from pathlib import Path

from dashboards import build
from dashboards.panels import Json
from dashboards.preview import draw_layout, threshold_note


def test_committed_json_equals_a_fresh_build() -> None:
    assert build.stale() == [], "dashboards/generated is stale: run ./run dashboards and commit"


def test_build_is_deterministic(dashboards: dict[str, Json]) -> None:
    again = build.build_all()
    assert [build.render(d) for d in again.values()] == [
        build.render(d) for d in dashboards.values()
    ]


def test_stale_reports_missing_changed_and_extra_files(tmp_path: Path) -> None:
    build.write(tmp_path, preview_dir=None)
    assert build.stale(tmp_path) == []
    (tmp_path / "inferwatch-gpu.json").write_text("{}\n")
    (tmp_path / "inferwatch-fleet.json").unlink()
    (tmp_path / "old-dashboard.json").write_text("{}\n")
    assert build.stale(tmp_path) == [
        "inferwatch-fleet.json",
        "inferwatch-gpu.json",
        "old-dashboard.json",
    ]
    assert build.main(["--check"]) == 0  # the committed tree itself is current


def test_preview_is_a_png_and_every_dashboard_has_one(
    dashboards: dict[str, Json], tmp_path: Path
) -> None:
    path = draw_layout(dashboards["inferwatch-fleet"], tmp_path / "fleet.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    committed = sorted(p.stem for p in build.PREVIEW.glob("*.png"))
    assert committed == sorted(build.DASHBOARDS)


def test_layout_preview_is_deterministic(dashboards: dict[str, Json], tmp_path: Path) -> None:
    """Drawn from the JSON alone (no data, no randomness): rebuilding gives the same bytes."""
    first = draw_layout(dashboards["inferwatch-gpu"], tmp_path / "a.png").read_bytes()
    second = draw_layout(dashboards["inferwatch-gpu"], tmp_path / "b.png").read_bytes()
    assert first == second


def test_threshold_note_names_the_alerts_and_their_values(dashboards: dict[str, Json]) -> None:
    panels = {p["title"]: p for p in dashboards["inferwatch-fleet"]["panels"]}
    note = threshold_note(panels["KV cache usage by model"])
    assert note.startswith("thresholds: LLMKVCacheSaturated > ")
    assert "from" in threshold_note(panels["Engines down"])  # plain steps when no alert
