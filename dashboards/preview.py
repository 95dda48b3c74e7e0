"""A static PNG of a dashboard's layout (panel titles, types, units), for people without Grafana.

No Grafana server can be installed where the project is built, so this picture is how a
reviewer sees what a dashboard contains and where. It is drawn from the JSON alone, so it shows
empty (hatched) frames and never anything that could pass for data; the real plots come from
`python -m dashboards.live_preview`, which needs running servers and is not part of the build.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch, Rectangle

from dashboards.panels import GRID_COLUMNS, Json

ALERT = re.compile(
    r"Alert (Inferwatch\w+) \(\w+\) fires (above|below) (\S+?)(?: for \S+)?\.(?=\s|$)"
)
COLUMN_PX, ROW_PX = 80, 30  # Grafana's grid on a 1920 px wide screen
BACKGROUND, PANEL, EDGE, TEXT, MUTED = "#111217", "#181b1f", "#2c3235", "#d8d9da", "#8e8e8e"
HATCH = "#22262b"  # a neutral fill: where the visualization goes, with nothing in it
LAYOUT_NOTE = "layout only: empty frames, no data (real plots: python -m dashboards.live_preview)"


def threshold_note(panel: Json) -> str:
    """Where the panel changes colour: the alerts it draws, else its own threshold steps."""
    alerts = ALERT.findall(panel.get("description", ""))
    if alerts:
        return "thresholds: " + ", ".join(
            f"{name.removeprefix('Inferwatch')} {'>' if side == 'above' else '<'} {value}"
            for name, side, value in alerts
        )
    steps = panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [])
    levels = [f"{s['color']} from {s['value']:g}" for s in steps if s.get("value") is not None]
    return "thresholds: " + ", ".join(levels) if levels else ""


def _fit(text: str, columns: int) -> str:
    """Shorten a note to what fits in a panel `columns` grid units wide (about 11 chars each)."""
    room = int((columns - 0.7) * 11)
    return text if len(text) <= room else text[: room - 1] + "…"


def draw_layout(dashboard: Json, path: Path) -> Path:
    panels = dashboard["panels"]
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    width_in = 16.0
    height_in = width_in * (height * ROW_PX) / (GRID_COLUMNS * COLUMN_PX) + 0.6
    fig = plt.figure(figsize=(width_in, height_in), dpi=100, facecolor=BACKGROUND)
    ax = fig.add_axes((0.005, 0.005, 0.99, 0.99 - 0.5 / height_in))
    ax.set_xlim(0, GRID_COLUMNS)
    ax.set_ylim(height, 0)  # grid y grows downwards, like Grafana
    ax.set_aspect(ROW_PX / COLUMN_PX)
    ax.axis("off")
    fig.text(
        0.01,
        1 - 0.3 / height_in,
        dashboard["title"],
        color=TEXT,
        fontsize=14,
        fontweight="bold",
        va="center",
    )
    fig.text(
        0.99, 1 - 0.3 / height_in, LAYOUT_NOTE, color=MUTED, fontsize=8, ha="right", va="center"
    )
    for panel in panels:
        g = panel["gridPos"]
        x, y, w, h = g["x"], g["y"], g["w"], g["h"]
        if panel["type"] == "row":
            ax.text(
                x + 0.1,
                y + 0.55,
                panel["title"],
                color=TEXT,
                fontsize=10,
                fontweight="bold",
                va="center",
            )
            continue
        box = FancyBboxPatch(
            (x + 0.08, y + 0.1),
            w - 0.16,
            h - 0.2,
            boxstyle="round,pad=0,rounding_size=0.15",
            facecolor=PANEL,
            edgecolor=EDGE,
            lw=0.8,
        )
        ax.add_patch(box)
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        texts = [
            ax.text(x + 0.35, y + 0.75, panel["title"], color=TEXT, fontsize=8, va="center"),
            ax.text(
                x + 0.35, y + 1.6, f"{panel['type']} · {unit}", color=MUTED, fontsize=7, va="center"
            ),
        ]
        note = _fit(threshold_note(panel), w)
        if note:
            texts.append(
                ax.text(x + 0.35, y + h - 0.55, note, color="#f2495c", fontsize=6.5, va="center")
            )
        bottom = y + h - (1.0 if note else 0.35)
        if bottom > y + 2.1:  # the visualization's area, left empty on purpose
            ax.add_patch(
                Rectangle(
                    (x + 0.35, y + 2.1),
                    w - 0.7,
                    bottom - (y + 2.1),
                    facecolor="none",
                    edgecolor=HATCH,
                    hatch="///",
                    lw=0,
                )
            )
        for text in texts:
            text.set_clip_path(box)
            text.set_clip_on(True)
    fig.savefig(path, facecolor=BACKGROUND, metadata={"Software": None})
    plt.close(fig)
    return path
