"""Live terminal view (rich): the running scenario, replicas, load, p95, firing alerts, actions."""

from __future__ import annotations

from collections import deque

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from demo.scenarios import ScenarioRun


class LiveView:
    def __init__(self) -> None:
        self.run: ScenarioRun | None = None
        self.log: deque[str] = deque(maxlen=12)
        self.header = "starting"

    def say(self, line: str) -> None:
        self.log.append(line)

    def attach(self, run: ScenarioRun | None) -> None:
        self.run = run
        if run is not None:
            self.header = f"{run.scenario.title}: {run.scenario.incident}"

    def __rich__(self) -> RenderableType:
        parts: list[RenderableType] = [Text(self.header, style="bold")]
        run = self.run
        if run is not None:
            tl = run.timeline
            stats = Table.grid(padding=(0, 3))
            p95 = run.load.p95(5.0)
            queue = run.observer.queue
            stats.add_row(
                f"t = {tl.now():6.1f}s",
                f"replicas serving: {len(run.serving())}",
                f"users: {run.load.concurrency}",
                f"load: {run.load.rate(5.0):.1f} req/s",
                f"p95: {'-' if p95 is None else f'{p95:.2f}s'}",
                f"queue: {'-' if queue is None else f'{queue:g}'}",
                f"errors (5s): {run.load.errors(5.0)}",
            )
            parts.append(stats)
            firing = sorted(run.observer.firing_names())
            parts.append(
                Text("firing: " + (", ".join(firing) or "none"), style="red" if firing else "green")
            )
            actions = Table("t", "alert", "action", "target", "result", "reason", box=None)
            for a in run.actions()[-6:]:
                actions.add_row(
                    f"{a.t:.1f}", a.alertname, a.action, a.target, a.result, a.reason or ""
                )
            parts.append(Panel(actions, title="remediator actions", border_style="cyan"))
            if run.observer.last_error:
                parts.append(Text(f"(poll error: {run.observer.last_error})", style="dim"))
        parts.append(Panel("\n".join(self.log), title="progress", border_style="dim"))
        return Group(*parts)
