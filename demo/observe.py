"""What the demo watches, once a second: firing alerts (Prometheus), actions (the remediator's
audit log), replicas (the local backend's endpoint file), the queue (Prometheus) and client-side
latency (the load generator). Everything lands on one timeline in seconds since the demo started.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp

from demo.stack import Stack
from harness.load import LoadGenerator
from harness.prometheus import Prometheus


@dataclass
class Point:
    t: float
    scenario: str
    p95: float | None
    rate: float
    errors: int
    queue: float | None
    replicas: int
    firing: list[str]


@dataclass
class AlertEvent:
    name: str
    labels: dict[str, str]
    scenario: str
    fired_at: float
    resolved_at: float | None = None


@dataclass
class ActionEvent:
    t: float  # when the remediator recorded it, on the demo clock
    scenario: str
    alertname: str
    action: str
    target: str
    result: str
    reason: str | None


@dataclass
class Timeline:
    """All observations of one demo run (several scenarios share it)."""

    wall0: float = field(default_factory=time.time)
    mono0: float = field(default_factory=time.monotonic)
    points: list[Point] = field(default_factory=list)
    alerts: list[AlertEvent] = field(default_factory=list)
    actions: list[ActionEvent] = field(default_factory=list)
    marks: list[tuple[float, str, str]] = field(default_factory=list)  # (t, scenario, text)

    def now(self) -> float:
        return time.monotonic() - self.mono0

    def from_wall(self, wall: float) -> float:
        return wall - self.wall0

    def mark(self, scenario: str, text: str) -> float:
        t = self.now()
        self.marks.append((t, scenario, text))
        return t


def _wall_time(value: Any) -> float | None:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None


class Observer:
    """Polls one running stack and appends to the shared timeline."""

    def __init__(
        self, stack: Stack, load: LoadGenerator, timeline: Timeline, scenario: str
    ) -> None:
        self.stack = stack
        self.load = load
        self.timeline = timeline
        self.scenario = scenario
        self.open_alerts: dict[tuple[str, tuple[tuple[str, str], ...]], AlertEvent] = {}
        self.actions_by_key: dict[tuple[str, str, str, str], ActionEvent] = {}
        self.queue: float | None = None
        self.last_error: str | None = None
        self.prometheus = Prometheus(stack.url("prometheus"), timeout=2)

    async def _get(self, session: aiohttp.ClientSession, url: str, **kw: Any) -> Any:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=2), **kw) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def actions(self, session: aiohttp.ClientSession) -> list[dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self.stack.token}"}
        url = f"{self.stack.url('remediator')}/actions?limit=1000"
        data = await self._get(session, url, headers=headers)
        return list(data.get("actions", []))

    async def tick(self, session: aiohttp.ClientSession) -> None:
        tl = self.timeline
        now = tl.now()
        self.stack.track_replicas()
        try:
            firing = await asyncio.to_thread(self.prometheus.alerts)
            self.queue = await asyncio.to_thread(
                self.prometheus.value, "sum(inferwatch_llm_requests_waiting)"
            )
            actions = await self.actions(session)
            self.last_error = None
        except (aiohttp.ClientError, OSError, KeyError, ValueError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            return
        current = set()
        for alert in firing:
            labels = {str(k): str(v) for k, v in alert["labels"].items()}
            key = (labels["alertname"], tuple(sorted(labels.items())))
            current.add(key)
            if key not in self.open_alerts:
                event = AlertEvent(labels["alertname"], labels, self.scenario, now)
                self.open_alerts[key] = event
                tl.alerts.append(event)
        for key in list(self.open_alerts):
            if key not in current:
                self.open_alerts.pop(key).resolved_at = now
        # /actions is polled again and again: record each finished action once, by identity.
        for entry in reversed(actions):
            key = (
                str(entry.get("time")),
                str(entry.get("fingerprint")),
                str(entry.get("action")),
                str(entry.get("target")),
            )
            if key in self.actions_by_key:
                continue
            wall = _wall_time(entry.get("time"))
            event = ActionEvent(
                t=tl.from_wall(wall) if wall is not None else now,
                scenario=self.scenario,
                alertname=str(entry.get("alertname", "")),
                action=str(entry.get("action", "")),
                target=str(entry.get("target", "")),
                result=str(entry.get("result", "")),
                reason=entry.get("reason"),
            )
            self.actions_by_key[key] = event
            tl.actions.append(event)
        tl.points.append(
            Point(
                t=now,
                scenario=self.scenario,
                p95=self.load.p95(5.0),
                rate=self.load.rate(5.0),
                errors=self.load.errors(5.0),
                queue=self.queue,
                replicas=sum(1 for r in self.stack.replicas() if r.serving),
                firing=sorted({k[0] for k in current}),
            )
        )

    def close(self) -> None:
        now = self.timeline.now()
        for event in self.open_alerts.values():
            if event.resolved_at is None:
                event.resolved_at = now
        self.open_alerts.clear()

    def firing_names(self) -> set[str]:
        return {k[0] for k in self.open_alerts}
