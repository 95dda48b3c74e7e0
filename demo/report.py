"""The demo's outputs: the results table, demo/out/report.json and the PNG timeline."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rich.table import Table

from demo.observe import Timeline
from demo.scenarios import Result


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def results_table(results: Sequence[Result]) -> Table:
    table = Table(title="Inferwatch demo: results (seconds since the demo started)")
    for col in (
        "scenario",
        "injected",
        "detected",
        "alert",
        "action",
        "recovered",
        "time to recover",
        "unexpected",
        "verified",
    ):
        table.add_column(
            col,
            justify="right"
            if col in ("injected", "detected", "recovered", "time to recover")
            else "left",
        )
    for r in results:
        ttr = (
            r.recovered_at - r.injected_at
            if r.recovered_at is not None and r.injected_at is not None
            else None
        )
        unexpected = ", ".join(r.unexpected_alerts + r.unexpected_actions) or "none"
        recovered = (
            _s(r.recovered_at)
            if r.injected_at is not None
            else ("healthy" if r.recovered else "NOT healthy")
        )
        if r.injected_at is not None and not r.recovered:
            recovered = f"NO ({r.note})" if r.note else "NO"
        table.add_row(
            r.name,
            _s(r.injected_at),
            _s(r.detected_at),
            r.alert or "-",
            r.action or "-",
            recovered,
            _s(ttr),
            unexpected,
            "; ".join(r.checks) or "-",
        )
    return table


def markdown_table(results: Sequence[Result]) -> str:
    """The same table for the README."""
    lines = [
        "| scenario | injected | detected | alert | action | recovered | time to recover "
        "| unexpected | verified |",
        "|---|---:|---:|---|---|---:|---:|---|---|",
    ]
    for r in results:
        ttr = (
            r.recovered_at - r.injected_at
            if r.recovered_at is not None and r.injected_at is not None
            else None
        )
        if r.injected_at is None:
            recovered = "healthy throughout" if r.recovered else "not healthy"
        else:
            recovered = _s(r.recovered_at) if r.recovered else "no"
        unexpected = ", ".join(r.unexpected_alerts + r.unexpected_actions) or "none"
        lines.append(
            f"| {r.name} | {_s(r.injected_at)} | {_s(r.detected_at)} | {r.alert or '-'} "
            f"| {r.action or '-'} | {recovered} | {_s(ttr)} | {unexpected} "
            f"| {'; '.join(r.checks) or '-'} |"
        )
    return "\n".join(lines)


def write_timeline_json(timeline: Timeline, path: Path) -> None:
    """Every observation, for a closer look (or to redraw the PNG)."""
    data = {
        "points": [vars(p) for p in timeline.points],
        "alerts": [vars(a) for a in timeline.alerts],
        "actions": [vars(a) for a in timeline.actions],
        "marks": timeline.marks,
    }
    path.write_text(json.dumps(data) + "\n")


def write_report(results: Sequence[Result], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"scenarios": [r.report() for r in results]}, indent=2) + "\n")


def write_timeline_png(timeline: Timeline, results: Sequence[Result], path: Path) -> None:
    """Latency, queue and replicas over time, with injections, alerts and actions marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = timeline.points
    fig, axes = plt.subplots(3, 1, figsize=(13, 8), sharex=True, constrained_layout=True)
    ax_lat, ax_q, ax_rep = axes
    ax_lat.plot(
        [p.t for p in pts],
        [p.p95 if p.p95 is not None else float("nan") for p in pts],
        ".",
        ms=3,
        color="tab:blue",
    )
    ax_lat.set_ylabel("p95 latency (s)\n(client side)")
    ax_q.plot(
        [p.t for p in pts],
        [p.queue if p.queue is not None else float("nan") for p in pts],
        ".",
        ms=3,
        color="tab:orange",
    )
    ax_q.set_ylabel("requests waiting\n(engine queue)")
    ax_rep.step([p.t for p in pts], [p.replicas for p in pts], where="post", color="tab:green")
    ax_rep.set_ylabel("serving replicas")
    ax_rep.set_xlabel("seconds since the demo started")
    ax_rep.set_ylim(bottom=0)

    for r in results:
        for ax in axes:
            ax.axvspan(
                r.started_at, r.ended_at, color="0.93" if results.index(r) % 2 else "0.97", zorder=0
            )
        ax_lat.annotate(
            r.name,
            (r.started_at, 1.0),
            xycoords=("data", "axes fraction"),
            va="top",
            fontsize=8,
            color="0.3",
        )
        if r.injected_at is not None:
            for ax in axes:
                ax.axvline(r.injected_at, color="tab:red", lw=1.2, ls="--")
    seen_alerts: set[tuple[str, float]] = set()
    for a in timeline.alerts:
        key = (a.name, round(a.fired_at))
        if key in seen_alerts:
            continue
        seen_alerts.add(key)
        end = a.resolved_at if a.resolved_at is not None else a.fired_at + 1
        ax_q.axvspan(a.fired_at, end, ymin=0.9, ymax=1.0, color="tab:red", alpha=0.35)
        ax_q.annotate(
            a.name.removeprefix("Inferwatch"),
            (a.fired_at, 0.88),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            fontsize=7,
            color="tab:red",
        )
    for act in timeline.actions:
        if act.result in ("blocked", "dry_run"):
            # Guards at work (duplicates, cooldowns, resolved alerts): a short grey tick only.
            ax_rep.axvline(act.t, ymax=0.06, color="0.55", lw=1)
            continue
        color = "tab:green" if act.result == "succeeded" else "tab:purple"
        ax_rep.axvline(act.t, color=color, lw=1.5)
        ax_rep.annotate(
            f"{act.action} ({act.result})",
            (act.t, 0.95),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            fontsize=7,
            color=color,
        )
    fig.suptitle(
        "Inferwatch demo: faults injected (red dashed), alerts firing (red), actions taken "
        "(green; grey ticks: blocked by a guard)"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
