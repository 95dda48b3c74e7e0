"""Xid 79 -> node cordoned, with the chart's default timings: where the seconds go.

Real Prometheus, Alertmanager and exporters (simulated GPUs, one exporter per node), the real
remediator with its Kubernetes backend against the API stand-in, and the timings a user gets
from `helm template` of the chart with its defaults: the exporter ServiceMonitor's interval and
timeout, the GPU rule groups' intervals (a group without one runs at Prometheus' global interval,
30s under prometheus-operator) and the remediator's AlertmanagerConfig route. Nothing is
compressed. Each injection is a fresh incident on a node of its own (Alertmanager groups by
node); injections are spaced so that their phase walks across the scrape interval.

Per injection, wall-clock seconds from the injection to: the Xid visible in Prometheus (the
scrape time of the first sample counting it), InferwatchGPUXidCritical firing (its activeAt),
the webhook received by the remediator, drain_node dispatched (the remediator's audit commit)
and the Node cordoned (observed on the stand-in's Node). Goal: cordon p50 <= 30 s, p95 <= 60 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from bench import Summary
from demo.rules import chart_with_current_rules, helm_template, parse_duration, rule_groups
from harness import services

# The one Kubernetes API stand-in (as strict as the real API server) lives with the tests; a
# second copy for the bench would drift from it.
from harness.kube_api import FakeKubeApi
from harness.prometheus import Prometheus
from harness.stack import LoopbackStack, scrape_job
from harness.wait import eventually_async
from remediations.app import create_app
from remediations.config import load_config

REPO = Path(__file__).resolve().parent.parent
PLAYBOOKS = REPO / "remediations" / "playbooks" / "default.yaml"
ALERT = "InferwatchGPUXidCritical"
XID = 79
INJECTIONS = int(os.environ.get("BENCH_GPU_FAULT_INJECTIONS", "10"))
# Extra `helm template --set` values (comma-separated, helm's syntax) to measure a proposed
# default against the current ones; empty: the chart's defaults.
HELM_SET = os.environ.get("BENCH_GPU_FAULT_HELM_SET", "")
GPUS_PER_NODE = 4  # the exporter's `default` simulation
# prometheus-operator's default Prometheus evaluationInterval (kube-prometheus-stack keeps it):
# what a PrometheusRule group without its own interval is evaluated at.
OPERATOR_EVALUATION_INTERVAL = 30.0
STAGE_LIMIT_S = 180.0  # a stage that takes longer is a failed injection, not a wait forever
GOAL_P50_S, GOAL_P95_S = 30.0, 60.0
STAGES = ("visible", "firing", "webhook", "dispatched", "cordoned")


@dataclass(frozen=True)
class ChartTimings:
    """What the chart's defaults render to (seconds)."""

    scrape_interval: float
    scrape_timeout: float
    rule_intervals: dict[str, float]  # the GPU rule groups'
    group_wait: float
    group_interval: float
    repeat_interval: float
    group_by: tuple[str, ...]

    def describe(self) -> str:
        rules = ", ".join(f"{n} {v:g}s" for n, v in self.rule_intervals.items())
        return (
            f"scrape {self.scrape_interval:g}s (timeout {self.scrape_timeout:g}s); rules {rules}; "
            f"Alertmanager group_wait {self.group_wait:g}s, group_interval "
            f"{self.group_interval:g}s, repeat_interval {self.repeat_interval:g}s"
        )


def render_chart(workdir: Path) -> tuple[ChartTimings, list[dict[str, Any]]]:
    """`helm template` with defaults (only the AlertmanagerConfig switched on, as users who
    route to the remediator do, plus HELM_SET); the timings and every rendered rule group."""
    chart = chart_with_current_rules(workdir)
    docs = helm_template(
        chart,
        workdir,
        "--set",
        "remediator.alertmanagerConfig.enabled=true",
        *(["--set", HELM_SET] if HELM_SET else []),
    )

    def one(kind: str, component: str) -> dict[str, Any]:
        for d in docs:
            labels = d["metadata"].get("labels", {})
            if d["kind"] == kind and labels.get("app.kubernetes.io/component") == component:
                return d
        raise RuntimeError(f"the chart rendered no {kind} for the {component}")

    endpoint = one("ServiceMonitor", "exporter")["spec"]["endpoints"][0]
    route = one("AlertmanagerConfig", "remediator")["spec"]["route"]
    groups = rule_groups(docs)
    gpu = {
        g["name"]: parse_duration(g["interval"]) if g.get("interval") else None
        for g in groups
        if g["name"].startswith("inferwatch-gpu.")
    }
    if not gpu:
        raise RuntimeError("the chart rendered no inferwatch-gpu.* rule group")
    timings = ChartTimings(
        scrape_interval=parse_duration(endpoint["interval"]),
        scrape_timeout=parse_duration(endpoint["scrapeTimeout"]),
        rule_intervals={n: v or OPERATOR_EVALUATION_INTERVAL for n, v in gpu.items()},
        group_wait=parse_duration(route["groupWait"]),
        group_interval=parse_duration(route["groupInterval"]),
        repeat_interval=parse_duration(route["repeatInterval"]),
        group_by=tuple(route["groupBy"]),
    )
    return timings, groups


@dataclass
class Injection:
    node: str
    gpu: int
    injected: float = 0.0
    times: dict[str, float] = field(default_factory=dict)
    error: str = ""

    def latency(self, stage: str) -> float | None:
        at = self.times.get(stage)
        return None if at is None else at - self.injected


def _rfc3339(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


class Bench:
    def __init__(self, workdir: Path, timings: ChartTimings, groups: list[dict[str, Any]]) -> None:
        self.workdir = workdir
        self.timings = timings
        self.groups = groups
        self.stack = LoopbackStack(workdir)
        self.nodes = [f"gpu-node-{i}" for i in range(INJECTIONS)]
        self.token = secrets.token_urlsafe(24)
        self.webhooks: dict[str, float] = {}  # node -> first webhook naming it, received at
        self.prometheus = Prometheus(self.stack.url("prometheus"), timeout=5.0)

    # -- configs -------------------------------------------------------------------------------
    def write_configs(self, kube: FakeKubeApi) -> Path:
        t, w = self.timings, self.workdir
        self.stack.write("rules.yaml", {"groups": self.groups})
        jobs = [
            scrape_job(
                f"inferwatch-exporter-{node}",
                [self.stack.address(f"exporter-{node}")],
                {"node": node},
                honor_labels=True,
                scrape_interval=f"{t.scrape_interval:g}s",
                scrape_timeout=f"{t.scrape_timeout:g}s",
                # Every exporter simulates the same four GPU UUIDs; a fleet has distinct ones.
                metric_relabel_configs=[
                    {
                        "source_labels": ["uuid"],
                        "regex": "GPU-[0-9a-f]{8}(.*)",
                        "target_label": "uuid",
                        "replacement": f"GPU-{index:08x}$1",
                    }
                ],
            )
            for index, node in enumerate(self.nodes)
        ]
        self.stack.prometheus_config(
            jobs,
            [w / "rules.yaml"],
            interval=OPERATOR_EVALUATION_INTERVAL,
            alertmanager="alertmanager",
        )
        self.stack.write("token", self.token + "\n", mode=0o600)
        self.stack.write(
            "alertmanager.yml",
            {
                "route": {
                    "receiver": "log-only",
                    "routes": [
                        {
                            "receiver": "remediator",
                            "matchers": ['remediation=~".+"'],
                            "group_by": list(t.group_by),
                            "group_wait": f"{t.group_wait:g}s",
                            "group_interval": f"{t.group_interval:g}s",
                            "repeat_interval": f"{t.repeat_interval:g}s",
                        }
                    ],
                },
                "receivers": [
                    {"name": "log-only"},
                    {
                        "name": "remediator",
                        "webhook_configs": [
                            {
                                "url": f"{self.stack.url('remediator')}/alerts",
                                "send_resolved": False,
                                "http_config": {
                                    "authorization": {"credentials_file": str(w / "token")}
                                },
                            }
                        ],
                    },
                ],
            },
        )
        # The default playbooks; drain_node may hold every bench node at once (each injection
        # is its own node, and cordons overlap when injections do).
        playbooks = yaml.safe_load(PLAYBOOKS.read_text())
        for book in playbooks["playbooks"]:
            if book["action"] == "drain_node":
                book["params"]["max_nodes"] = len(self.nodes)
        self.stack.write("playbooks.yaml", playbooks)
        config = self.stack.write(
            "remediator.yaml",
            {
                "listen": self.stack.address("remediator"),
                "token": self.token,
                "state": str(w / "remediator.db"),
                "playbooks": str(w / "playbooks.yaml"),
                "dry_run": False,
                "prometheus": {"url": self.stack.url("prometheus")},
                # Rate limits sized for a burst of incidents on distinct nodes: the bench
                # measures the path, not the guards that would stop a real fleet-wide storm.
                "guards": {
                    "action_rate_limit": {"max_actions": 100, "window_seconds": 3600},
                    "global_rate_limit": {"max_actions": 100, "window_seconds": 3600},
                },
                "backend": "kubernetes",
                "namespaces": ["llm"],
                "kubernetes": {"kubeconfig": str(kube.write_kubeconfig(w / "kubeconfig"))},
            },
        )
        return config

    # -- the remediator, in this event loop next to the stand-in ------------------------------
    @web.middleware
    async def _note_webhook(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """When a webhook naming a node first arrives (before the remediator parses it)."""
        if request.method == "POST" and request.path == "/alerts":
            now = time.time()
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                for alert in json.loads(await request.read())["alerts"]:
                    labels = alert["labels"]
                    if labels.get("alertname") == ALERT:
                        self.webhooks.setdefault(labels["node"], now)
        return await handler(request)

    # -- measuring one injection --------------------------------------------------------------
    async def measure(
        self, inj: Injection, kube: FakeKubeApi, session: aiohttp.ClientSession
    ) -> None:
        exporter = self.stack.url(f"exporter-{inj.node}")
        inj.injected = time.time()
        async with session.post(
            f"{exporter}/-/simulate", json={"action": "xid", "gpu": inj.gpu, "xid": XID}
        ) as resp:
            if resp.status != 200:
                inj.error = f"/-/simulate answered {resp.status}"
                return
        selector = f'node="{inj.node}",gpu="{inj.gpu}"'

        def visible() -> float | None:
            found = self.prometheus.query(
                f'timestamp(inferwatch_gpu_xid_errors_total{{{selector},xid="{XID}"}} > 0)'
            )
            return found[0][1] if found else None

        def firing() -> float | None:
            for a in self.prometheus.alerts("firing"):
                labels = a["labels"]
                if labels.get("alertname") == ALERT and labels.get("node") == inj.node:
                    return _rfc3339(a["activeAt"])
            return None

        async def dispatched() -> float | None:
            async with session.get(
                f"{self.stack.url('remediator')}/actions",
                params={"limit": "1000"},
                headers={"Authorization": f"Bearer {self.token}"},
            ) as resp:
                body = await resp.json()
            for entry in body["actions"] + body["in_progress"]:
                if entry["action"] == "drain_node" and entry["target"].endswith(f"/{inj.node}"):
                    return _rfc3339(entry["time"])
            return None

        def cordoned() -> float | None:
            return time.time() if kube.nodes[inj.node]["spec"].get("unschedulable") else None

        async def stage(name: str, probe: Callable[[], Any], interval: float = 0.2) -> None:
            inj.times[name] = await eventually_async(
                probe,
                within=STAGE_LIMIT_S,
                what=f"{name} for Xid {XID} on {inj.node}",
                interval=interval,
                ignore=(OSError, ValueError, KeyError, aiohttp.ClientError),
            )

        try:
            await stage("visible", lambda: asyncio.to_thread(visible))
            await stage("firing", lambda: asyncio.to_thread(firing))
            await stage("webhook", lambda: self.webhooks.get(inj.node), interval=0.05)
            await stage("cordoned", cordoned, interval=0.05)
            await stage("dispatched", dispatched)
        except TimeoutError as exc:
            inj.error = str(exc)
        finally:
            # The operator resets the GPU (Xid 79 also took it off the bus).
            with contextlib.suppress(aiohttp.ClientError):
                async with session.post(
                    f"{exporter}/-/simulate", json={"action": "reset_gpu", "gpu": inj.gpu}
                ):
                    pass

    # -- the run -------------------------------------------------------------------------------
    async def run(self) -> list[Injection]:
        async with FakeKubeApi() as kube, aiohttp.ClientSession() as session:
            for node in self.nodes:
                kube.add_node(node)
            config = self.write_configs(kube)
            w = self.workdir
            await self.stack.start_process_async(
                services.alertmanager(w / "alertmanager.yml", w, self.stack.port("alertmanager"))
            )
            cfg = load_config(config, environ={})
            app = create_app(cfg, token=self.token)
            app.middlewares.append(self._note_webhook)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, cfg.host, cfg.port)
            await site.start()
            try:
                for node in self.nodes:
                    port = self.stack.port(f"exporter-{node}")
                    proc = services.exporter(w, port, simulate="default")
                    proc.name = f"exporter-{node}"
                    proc.log_path = w / f"exporter-{node}.log"
                    await self.stack.start_process_async(proc)
                await self.stack.start_process_async(self.stack.prometheus_process())
                await self._warm_up()
                return await self._inject_all(kube, session)
            finally:
                await self.stack.stop_async()
                await runner.cleanup()

    async def _warm_up(self) -> None:
        """Until every node's GPUs are in Prometheus and each GPU rule group has run once."""
        want = len(self.nodes) * GPUS_PER_NODE

        def ready() -> bool:
            up = self.prometheus.value("count(uuid:inferwatch_gpu_recovery_pending:max)")
            return up is not None and up >= want

        limit = 3 * (self.timings.scrape_interval + max(self.timings.rule_intervals.values()))
        await eventually_async(
            lambda: asyncio.to_thread(ready),
            within=limit + 30,
            what="every GPU recorded by the GPU rules",
            interval=1.0,
            ignore=(OSError, ValueError, KeyError),
        )

    async def _inject_all(
        self, kube: FakeKubeApi, session: aiohttp.ClientSession
    ) -> list[Injection]:
        """One injection per node, each `interval * (1 + 1/N)` after the last: their phases
        step evenly across the scrape interval (and the rule groups' intervals)."""
        spacing = self.timings.scrape_interval * (1 + 1 / len(self.nodes))
        injections = [Injection(node, i % GPUS_PER_NODE) for i, node in enumerate(self.nodes)]
        tasks = []
        for inj in injections:
            tasks.append(asyncio.create_task(self.measure(inj, kube, session)))
            await asyncio.sleep(spacing)
        await asyncio.gather(*tasks)
        return injections


def _report(timings: ChartTimings, injections: list[Injection]) -> tuple[str, list[str]]:
    done = [i for i in injections if not i.error]
    lines = [f"rendered timings: {timings.describe()}"]
    lines.append(
        f"{'stage':<34}{'p50':>8}{'p95':>8}{'max':>8}   (s since injection, n={len(done)})"
    )
    stats: dict[str, tuple[float, float]] = {}
    for stage in STAGES:
        values = [v for i in done if (v := i.latency(stage)) is not None]
        if not values:
            continue
        p50, p95 = statistics.median(values), percentile(values, 95)
        stats[stage] = (p50, p95)
        lines.append(f"Xid -> {stage:<28}{p50:8.1f}{p95:8.1f}{max(values):8.1f}")
    for i in injections:
        if i.error:
            lines.append(f"FAILED {i.node} gpu {i.gpu}: {i.error}")
    if "cordoned" not in stats:
        return f"gpu_fault: no injection reached a cordon ({len(injections)} tried)", lines
    p50, p95 = stats["cordoned"]
    met = "met" if p50 <= GOAL_P50_S and p95 <= GOAL_P95_S else "MISSED"
    vis, fire = stats["visible"], stats["firing"]
    line = (
        f"gpu_fault: Xid {XID} -> cordon p50 {p50:.1f}s p95 {p95:.1f}s "
        f"(goal <= {GOAL_P50_S:g}/{GOAL_P95_S:g}s: {met}); visible p50 {vis[0]:.1f}s, "
        f"firing p50 {fire[0]:.1f}s; {len(done)}/{len(injections)} injections, "
        + (f"chart defaults + {HELM_SET}" if HELM_SET else "chart defaults")
    )
    return line, lines


def main() -> Summary:
    with tempfile.TemporaryDirectory(prefix="inferwatch-bench-gpu-") as tmp:
        workdir = Path(tmp)
        timings, groups = render_chart(workdir / "helm")
        bench = Bench(workdir, timings, groups)
        injections = asyncio.run(bench.run())
    line, lines = _report(timings, injections)
    for text in lines:
        print(text, file=sys.stderr)
    return Summary(line)


if __name__ == "__main__":
    print(main().line)
