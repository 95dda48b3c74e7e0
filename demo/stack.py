"""The demo's loop on 127.0.0.1, built with the harness' loopback stack: config files, then
Alertmanager, the remediator (which starts the engine replicas through its local backend), the
exporter and Prometheus, stopped in reverse.

Every process the demo starts, directly or through the remediator, is tracked by PID so that
`Stack.stop()` can prove nothing is left behind (the e2e test checks the same list).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from demo import rules as demo_rules
from demo.replica import LIGHT_MODEL, MAIN_MODEL
from harness import services
from harness.files import read_file_sd
from harness.services import cmdline, descendants, pid_alive
from harness.stack import LoopbackStack, scrape_job
from harness.wait import eventually_async

NODE = "demo-node"
DEFAULT_PLAYBOOKS = demo_rules.REPO / "remediations" / "playbooks" / "default.yaml"
DEPLOYMENT = "chat"


@dataclass(frozen=True)
class Timings:
    """The demo's clock. Production windows shrink through `demo.rules.compress`."""

    scrape_interval: float = 1.0
    eval_interval: float = 1.0
    collector_interval: float = 1.0
    cooldown_seconds: float = 30.0
    group_wait: str = "1s"
    group_interval: str = "2s"
    request_timeout: float = 15.0
    # `for:` durations where the compressed one would undercut a real duration on this machine:
    # a starting llama-server does not answer /metrics for a few seconds (EngineDown must
    # outlast that, as 5m outlasts a vLLM start), and CapacityExhausted must leave scale_up time
    # to add a replica first (in production 30m of backlog vs 5m). LatencyDrift compares with
    # its own past (`offset 1d` -> 35 s): its `for` must stay a small part of that offset, as
    # 30m is of 1d, or the baseline fills with degraded data before the alert fires.
    # PrefixCacheHitRatioDrop judges a 30m ratio against its best: compressed to 15 s, that window
    # holds a handful of requests whose hit ratio swings with each prompt, so its `for` must span
    # more than one window (30m of `for` after a 30m window holds thousands of requests).
    for_overrides: dict[str, str] = field(
        default_factory=lambda: {
            "InferwatchLLMLatencyDrift": "4s",
            "InferwatchLLMPrefixCacheHitRatioDrop": "45s",
            "InferwatchLLMEngineDown": "12s",
            "InferwatchLLMCapacityExhausted": "12s",
        }
    )
    # Thresholds scaled to the demo fleet (2 slots per replica, a handful of users): production
    # defaults assume engines batching dozens of sequences. Set through the chart's
    # `rules.alerts.<Name>.threshold`, the knob users have for exactly this.
    alert_overrides: dict[str, dict[str, str]] = field(
        default_factory=lambda: {
            "InferwatchLLMQueueBacklog": {"threshold": "0.25"},
            "InferwatchLLMCapacityExhausted": {"threshold": "0.25"},
        }
    )
    # Playbook parameters in seconds, shortened the same way as the rules' windows.
    playbook_seconds: dict[str, float] = field(
        default_factory=lambda: {
            "quiet_period_seconds": 20,
            "drain_timeout_seconds": 5,
            "inflight_timeout_seconds": 5,
            "ready_timeout_seconds": 60,
            "eviction_timeout_seconds": 60,
            "cooldown_seconds": 60,
        }
    )


@dataclass(frozen=True)
class Fleet:
    """The engine deployment the remediator's local backend runs."""

    replicas: int = 2
    min_replicas: int = 1
    max_replicas: int = 4
    gpus: tuple[str, ...] = ("0", "1")


def is_engine(argv: list[str]) -> bool:
    """A demo replica: the launcher before it execs, or llama-server after."""
    return "demo.replica" in argv or (bool(argv) and Path(argv[0]).name == "llama-server")


def engine_port(argv: list[str]) -> str | None:
    if "--port" in argv and argv.index("--port") + 1 < len(argv):
        return argv[argv.index("--port") + 1]
    return argv[-1] if "demo.replica" in argv else None


@dataclass(frozen=True)
class Replica:
    target: str  # host:port, the `target` label alerts carry
    labels: dict[str, str]
    serving: bool

    @property
    def port(self) -> int:
        return int(self.target.rpartition(":")[2])

    @property
    def url(self) -> str:
        return f"http://{self.target}"


class Stack(LoopbackStack):
    """Configs + processes of one demo run. `await start()` returns once everything is ready."""

    def __init__(
        self,
        workdir: Path,
        *,
        timings: Timings | None = None,
        fleet: Fleet | None = None,
        simulate: str = "default",
        say: Callable[[str], None] = lambda _: None,
        static_engines: Sequence[dict[str, Any]] = (),
        canary_seconds: float | None = None,
    ) -> None:
        """`static_engines`: llm targets the exporter scrapes besides the replicas (the
        dashboard previews add replayed vLLM captures); `canary_seconds`: probe every replica
        with a canary completion that often (off in the demo: it would add load)."""
        super().__init__(workdir)
        self.timings = timings or Timings()
        self.fleet = fleet or Fleet()
        self.simulate = simulate
        self.say = say
        self.static_engines = list(static_engines)
        self.canary_seconds = canary_seconds
        for name in ("prometheus", "alertmanager", "remediator", "exporter"):
            self.port(name)
        self.replica_pids: dict[int, list[str]] = {}  # every engine PID seen, with its argv
        self.endpoint_file = workdir / "endpoints.json"
        self.scrape_file = workdir / "scrape-targets.json"
        self.token = secrets.token_urlsafe(24)
        self.rule_overrides: dict[str, Any] = {}

    @property
    def remediator(self) -> services.ManagedProcess | None:
        return self.process("remediator")

    # -- config files ----------------------------------------------------------------------
    def write_configs(self) -> None:
        w = self.workdir
        w.mkdir(parents=True, exist_ok=True)
        t = self.timings
        self.say("rendering the chart's PrometheusRule with demo timings (helm template)")
        self.rule_overrides = demo_rules.build_rule_file(
            w / "rules.yaml",
            w / "helm",
            eval_interval=f"{t.eval_interval:g}s",
            for_overrides=t.for_overrides,
            extra_alert_overrides=t.alert_overrides,
        )
        self.write_playbooks(w / "playbooks.yaml")
        assert t.scrape_interval == t.eval_interval, "one interval for scrapes and rules"
        self.prometheus_config(
            [
                scrape_job(
                    "inferwatch-exporter",
                    [self.address("exporter")],
                    {"node": NODE},
                    honor_labels=True,
                ),
                scrape_job("inferwatch-remediator", [self.address("remediator")]),
            ],
            [w / "rules.yaml"],
            interval=t.scrape_interval,
            alertmanager="alertmanager",
        )
        self.write("token", self.token + "\n", mode=0o600)
        am = {
            "route": {
                "receiver": "log-only",
                "group_by": ["alertname"],
                "group_wait": t.group_wait,
                "group_interval": t.group_interval,
                "repeat_interval": "1h",
                "routes": [
                    {
                        "receiver": "remediator",
                        "matchers": ['remediation=~".+"'],
                        "group_by": [
                            "alertname",
                            "remediation",
                            "namespace",
                            "pod",
                            "target",
                            "node",
                            "gpu",
                        ],
                        "group_wait": t.group_wait,
                        "group_interval": t.group_interval,
                        "repeat_interval": "1h",
                    }
                ],
            },
            "receivers": [
                {"name": "log-only"},
                {
                    "name": "remediator",
                    "webhook_configs": [
                        {
                            "url": f"{self.url('remediator')}/alerts",
                            "send_resolved": True,
                            "http_config": {
                                "authorization": {"credentials_file": str(w / "token")}
                            },
                        }
                    ],
                },
            ],
        }
        self.write("alertmanager.yml", am)
        low, high = services.free_port_block(max(8, self.fleet.max_replicas * 2))
        f = self.fleet
        remediator = {
            "listen": self.address("remediator"),
            "token_file": str(w / "token"),
            "state": str(w / "remediator.db"),
            "playbooks": str(w / "playbooks.yaml"),
            "dry_run": False,
            "log_level": "info",
            "prometheus": {"url": self.url("prometheus")},
            "guards": {"cooldown_seconds": t.cooldown_seconds},
            "backend": "local",
            "local": {
                "host": services.LOOPBACK,
                "port_range": [low, high],
                "endpoint_file": str(self.endpoint_file),
                "scrape_file": str(self.scrape_file),
                "log_dir": str(w / "replicas"),
                "deployments": [
                    {
                        "name": DEPLOYMENT,
                        "command": [
                            sys.executable,
                            "-m",
                            "demo.replica",
                            "{model}",
                            "{host}",
                            "{port}",
                        ],
                        "model": MAIN_MODEL.name,
                        "lighter_model": LIGHT_MODEL.name,
                        "replicas": f.replicas,
                        "min_replicas": f.min_replicas,
                        "max_replicas": f.max_replicas,
                        "gpus": list(f.gpus),
                        "ready_timeout_seconds": 60,
                        "stop_timeout_seconds": 5,
                        "labels": {"engine": "llamacpp"},
                    }
                ],
            },
        }
        self.write("remediator.yaml", remediator)
        llm: dict[str, Any] = {
            "interval_seconds": t.collector_interval,
            "timeout_seconds": max(0.5, t.collector_interval * 0.9),
            "target_timeout_seconds": max(0.3, t.collector_interval * 0.5),
            "file_sd": [str(self.scrape_file)],
        }
        if self.static_engines:
            llm["targets"] = self.static_engines
        if self.canary_seconds is not None:
            llm["canary"] = {"enabled": True, "interval_seconds": self.canary_seconds}
        exporter = {
            "log_level": "warning",
            "collectors": {
                "gpu": {"interval_seconds": t.collector_interval},
                "cuda_allocator": {"interval_seconds": t.collector_interval},
                "llm": llm,
            },
        }
        self.write("exporter.yaml", exporter)

    def write_playbooks(self, path: Path) -> None:
        """The remediator's default playbooks with their waits shortened to the demo's clock."""
        doc = yaml.safe_load(DEFAULT_PLAYBOOKS.read_text())
        short = self.timings.playbook_seconds
        for book in doc["playbooks"]:
            params = book.get("params") or {}
            for key in params:
                if key in short:
                    params[key] = short[key]
            if "cooldown_seconds" in book:
                book["cooldown_seconds"] = short["cooldown_seconds"]
        self.write(path.name, doc)

    # -- processes -------------------------------------------------------------------------
    async def start(self) -> None:
        """Configs, then every process in order; returns once all are ready."""
        await asyncio.to_thread(self.write_configs)  # helm template: a subprocess
        w = self.workdir
        bin_dir = Path(sys.executable).parent
        repo_env = {"PYTHONPATH": str(demo_rules.REPO)}
        self.say("starting Alertmanager")
        await self.start_process_async(
            services.alertmanager(w / "alertmanager.yml", w, self.port("alertmanager"))
        )
        self.say(f"starting the remediator (local backend) with {self.fleet.replicas} replicas")
        await self.start_process_async(
            services.ManagedProcess(
                "remediator",
                [str(bin_dir / "inferwatch-remediator"), "--config", str(w / "remediator.yaml")],
                w / "remediator.log",
                ready_url=f"{self.url('remediator')}/healthz",
                env=repo_env,
                cwd=demo_rules.REPO,
            ),
            limit_s=120,
        )
        await self.wait_replicas(self.fleet.replicas, limit_s=120)
        self.say(f"starting the exporter (--simulate {self.simulate})")
        await self.start_process_async(
            services.exporter(
                w, self.port("exporter"), simulate=self.simulate, config=w / "exporter.yaml"
            )
        )
        self.say("starting Prometheus (its first scrape comes about 5 s after start)")
        await self.start_process_async(self.prometheus_process())

    def replicas(self) -> list[Replica]:
        serving = {t for t, _ in read_file_sd(self.endpoint_file)}
        seen = read_file_sd(self.scrape_file) or read_file_sd(self.endpoint_file)
        return [Replica(t, labels, t in serving) for t, labels in seen]

    async def wait_replicas(self, count: int, limit_s: float) -> None:
        def serving() -> bool:
            rem = self.remediator
            if rem is not None and not rem.alive():
                raise RuntimeError(f"the remediator exited:\n{rem.tail()}")
            ready = [r for r in self.replicas() if r.serving]
            return len(ready) >= count and all(services.http_ok(f"{r.url}/health") for r in ready)

        await eventually_async(
            lambda: asyncio.to_thread(serving), limit_s, f"{count} replicas serving", interval=0.2
        )
        self.track_replicas()

    def track_replicas(self) -> None:
        """Remember every engine process the remediator started (for cleanup and checks)."""
        rem = self.remediator
        if rem is None or rem.proc is None:
            return
        for pid in descendants(rem.pid):
            if is_engine(argv := cmdline(pid)):
                self.replica_pids[pid] = argv

    def replica_pid(self, target: str) -> int | None:
        """The engine PID serving `target` (host:port), from the remediator's children."""
        port = target.rpartition(":")[2]
        self.track_replicas()
        for pid in self.replica_pids:
            argv = cmdline(pid)
            if pid_alive(pid) and is_engine(argv) and engine_port(argv) == port:
                return pid
        return None

    def replica_models(self) -> dict[str, str]:
        """Which model each running engine serves (its --alias), by port."""
        self.track_replicas()
        models = {}
        for pid in self.replica_pids:
            argv = cmdline(pid)
            if pid_alive(pid) and "--alias" in argv and (port := engine_port(argv)):
                models[port] = argv[argv.index("--alias") + 1]
        return models

    def all_pids(self) -> list[int]:
        self.track_replicas()
        pids = [p.pid for p in self.processes if p.proc is not None]
        return pids + list(self.replica_pids)

    def stop(self) -> None:
        """Stop in reverse start order; then end any engine the remediator left behind."""
        self.track_replicas()
        super().stop()
        self._kill_leftover_engines()

    async def stop_async(self) -> None:
        """`stop` without blocking the event loop."""
        self.track_replicas()
        await super().stop_async()
        self._kill_leftover_engines()

    def _kill_leftover_engines(self) -> None:
        for pid in self.replica_pids:
            # Only a process that still runs an engine (PIDs can be reused).
            if pid_alive(pid) and is_engine(cmdline(pid)):
                for sig in (signal.SIGCONT, signal.SIGKILL):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
