"""Simulated GPUs for `inferwatch-exporter --simulate SCENARIO`: the demo and the tests.

The fake NVML library (fake_nvml.py) goes under the real pynvml, a temporary directory stands in
for the host's /proc and kubelet log directories, and a background task moves the numbers and
plays the scenario's events. Nothing here is imported unless --simulate is given.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pynvml
from aiohttp import web

from exporter.simulate import fake_nvml
from exporter.simulate.fake_nvml import FakeNvmlLib
from exporter.simulate.probe_files import ProbeFileSimulator
from exporter.simulate.scenarios import BUILDERS, SCENARIOS, PodSpec, Scenario, SimProcess

if TYPE_CHECKING:
    from exporter.config import ExporterConfig

__all__ = ["SCENARIOS", "Simulation", "SimulationInputError"]

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0
PROBE_WRITE_SECONDS = 10.0  # the real probe's default stats interval
FRAGMENTATION_MODES = ("healthy", "creep")
IDLE_POWER_MW = 70_000


class SimulationInputError(ValueError):
    """A /-/simulate request that cannot be applied (answered with 400)."""


def _cgroup(proc: SimProcess) -> str:
    if proc.pod is None:
        return "0::/user.slice/user-1000.slice/session-3.scope\n"
    uid = proc.pod.uid.replace("-", "_")
    return (
        "0::/kubepods.slice/kubepods-burstable.slice/"
        f"kubepods-burstable-pod{uid}.slice/cri-containerd-{proc.pod.container_id}.scope\n"
    )


def _stat(pid: int, command: str, started_ticks: int) -> str:
    comm = command.split()[0].rsplit("/", 1)[-1][:15]
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime
    # stime cutime cstime priority nice threads itrealvalue starttime ...
    fields = ["S", "1", str(pid), str(pid), "0", "-1", "4194304"] + ["0"] * 8
    fields += ["20", "0", "8", "0", str(started_ticks)] + ["0"] * 30
    return f"{pid} ({comm}) {' '.join(fields)}\n"


def write_host_files(root: Path, processes: dict[int, SimProcess]) -> None:
    """A fake host: <root>/proc/<pid>/{cgroup,stat,cmdline} and the kubelet's log directories."""
    for index, proc in enumerate(processes.values()):
        pid_dir = root / "proc" / str(proc.pid)
        pid_dir.mkdir(parents=True, exist_ok=True)
        (pid_dir / "cgroup").write_text(_cgroup(proc))
        (pid_dir / "stat").write_text(_stat(proc.pid, proc.command, 100_000 + index))
        (pid_dir / "cmdline").write_bytes(proc.command.replace(" ", "\0").encode() + b"\0")
        if proc.pod is not None:
            pod = proc.pod
            pods = root / "var" / "log" / "pods" / f"{pod.namespace}_{pod.pod}_{pod.uid}"
            (pods / pod.container).mkdir(parents=True, exist_ok=True)
            containers = root / "var" / "log" / "containers"
            containers.mkdir(parents=True, exist_ok=True)
            name = f"{pod.pod}_{pod.namespace}_{pod.container}-{pod.container_id}.log"
            (containers / name).touch()


def remove_host_files(root: Path, processes: dict[int, SimProcess]) -> None:
    """Undo write_host_files for processes that exited (and their pods' log entries)."""
    for proc in processes.values():
        shutil.rmtree(root / "proc" / str(proc.pid), ignore_errors=True)
        if proc.pod is not None:
            pod = proc.pod
            shutil.rmtree(
                root / "var" / "log" / "pods" / f"{pod.namespace}_{pod.pod}_{pod.uid}",
                ignore_errors=True,
            )
            name = f"{pod.pod}_{pod.namespace}_{pod.container}-{pod.container_id}.log"
            (root / "var" / "log" / "containers" / name).unlink(missing_ok=True)


# POST /-/simulate actions that change one GPU's health (see FakeNvmlLib for the semantics).
GPU_FAULTS = ("reset_gpu", "remap_row", "recovery_action", "pcie_replays", "nvlink_errors", "gpm")


def _count(action: dict[str, Any], key: str, low: int, high: int) -> int:
    value = action.get(key, low if key == "count" else None)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise SimulationInputError(f"'{key}' must be an integer from {low} to {high}")
    return value


class Simulation:
    """One running scenario: fake NVML, fake host files, probe files and runtime injection."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.lib = FakeNvmlLib(scenario.gpus, latency_s=scenario.nvml_latency_s)
        self.fragmentation = scenario.fragmentation
        self.root: Path | None = None
        self.started = time.monotonic()
        self.injected: collections.deque[dict[str, Any]] = collections.deque(maxlen=100)
        self._pending_events = sorted(scenario.events, key=lambda e: e[0])
        # Xids that "happened" before the exporter ran, fired once its watcher registered the GPU
        # (NVML itself only reports events that happen after registration).
        self._initial_xids = list(scenario.initial_xids)
        self._base_utilization = [g.utilization_gpu for g in scenario.gpus]
        self._probes: ProbeFileSimulator | None = None
        self._probes_changed = False  # an injection changed them: write at the next tick
        self._written_at = 0.0
        self._next_pid = max(scenario.processes, default=10_000)

    @classmethod
    def from_name(cls, name: str) -> Simulation:
        builder = BUILDERS.get(name)
        if builder is None:
            raise ValueError(f"unknown scenario {name!r}; choose one of: {', '.join(SCENARIOS)}")
        return cls(builder())

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def configure(self, cfg: ExporterConfig) -> ExporterConfig:
        """A copy of cfg that reads the simulated host files (removed when the app stops)."""
        self.root = Path(tempfile.mkdtemp(prefix="inferwatch-simulate-"))
        write_host_files(self.root, self.scenario.processes)
        probe_dir = self.root / "probes"
        probe_dir.mkdir()
        pairs = [
            (pid, gpu.uuid)
            for gpu in self.scenario.gpus
            for pid in (p.pid for p in gpu.processes)
            if self.scenario.processes[pid].probe
        ]
        self._probes = ProbeFileSimulator(probe_dir, pairs)
        self._probes.set_mode(self.fragmentation)
        cuda = cfg.collectors.cuda_allocator.model_copy(update={"probe_dir": str(probe_dir)})
        collectors = cfg.collectors.model_copy(update={"cuda_allocator": cuda})
        return cfg.model_copy(
            update={"proc_root": str(self.root / "proc"), "collectors": collectors}
        )

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        """Cleanup context: fake NVML in, scenario clock running; all undone at shutdown."""
        fake_nvml.install(self.lib)
        self.started = time.monotonic()
        log.info("simulating scenario %r: %s", self.scenario.name, self.scenario.description)
        self._write_probes()  # before any collector's first refresh
        task = asyncio.create_task(self._run(), name="simulation")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            fake_nvml.uninstall()
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)

    def _write_probes(self) -> None:
        if self._probes is not None:
            self._probes_changed = False
            self._written_at = self.elapsed
            self._probes.write(self.elapsed)

    async def _run(self) -> None:
        while True:
            self.tick()
            if self.scenario.churn:
                await asyncio.to_thread(self.churn)
            if self._probes_changed or self.elapsed - self._written_at >= PROBE_WRITE_SECONDS:
                await asyncio.to_thread(self._write_probes)
            await asyncio.sleep(TICK_SECONDS)

    def tick(self) -> None:
        """Move the numbers like a busy inference host would, and fire due scenario events."""
        now = self.elapsed
        for event in [e for e in self._initial_xids if self.lib.registered(e[0])]:
            self._initial_xids.remove(event)
            self.lib.inject_xid(*event)
        while self._pending_events and self._pending_events[0][0] <= now:
            _, action = self._pending_events.pop(0)
            log.info("simulation event at %.0fs: %s", now, action)
            self.apply(action)
        for index, gpu in enumerate(self.scenario.gpus):
            base = self._base_utilization[index]
            util = max(0, min(100, round(base + 8 * math.sin(now / 30 + index))))
            gpu.utilization_gpu = util if base else 0
            gpu.utilization_memory = gpu.utilization_gpu // 2
            gpu.power_mw = IDLE_POWER_MW + (gpu.power_limit_mw - IDLE_POWER_MW) * util * 8 // 1000
            gpu.energy_mj += int(gpu.power_mw * TICK_SECONDS)
            gpu.temperature = 32 + util * 45 // 100
            gpu.memory_temperature = gpu.temperature + 6
            idle = pynvml.nvmlClocksEventReasonGpuIdle
            gpu.clocks_event_reasons = idle if util == 0 else gpu.clocks_event_reasons & ~idle

    def churn(self) -> None:
        """Every process exits; a new one with a new PID, in a new pod, takes its GPU memory."""
        if self.root is None:
            return
        old, new = self.scenario.processes, {}
        for gpu in self.scenario.gpus:
            for entry in gpu.processes:
                previous = old.get(entry.pid)
                self._next_pid += 1
                pod = None
                if previous is not None and previous.pod is not None:
                    base = previous.pod
                    pod = PodSpec(base.namespace, f"engine-{self._next_pid}", base.container)
                command = previous.command if previous is not None else "python3"
                new[self._next_pid] = SimProcess(self._next_pid, command, pod)
                entry.pid = self._next_pid
        write_host_files(self.root, new)
        remove_host_files(self.root, old)
        self.scenario.processes = new

    def apply(self, action: Any) -> None:
        """Apply one injection (the body of POST /-/simulate); SimulationInputError if bad."""
        if not isinstance(action, dict):
            raise SimulationInputError("body must be a JSON object with an 'action'")
        kind = action.get("action")
        if kind in ("xid", "lose_gpu", "restore_gpu"):
            gpu = self._gpu_index(action.get("gpu"))
            if kind == "xid":
                xid = action.get("xid")
                if not isinstance(xid, int) or isinstance(xid, bool) or not 0 < xid < 1000:
                    raise SimulationInputError("'xid' must be an integer Xid code (1-999)")
                self.lib.inject_xid(gpu, xid)
            else:
                self.lib.set_lost(gpu, kind == "lose_gpu")
        elif kind in GPU_FAULTS:
            self._gpu_fault(kind, self._gpu_index(action.get("gpu")), action)
        elif kind == "fragmentation":
            mode = action.get("mode")
            if mode not in FRAGMENTATION_MODES:
                raise SimulationInputError(
                    f"'mode' must be one of {', '.join(FRAGMENTATION_MODES)}"
                )
            self.fragmentation = mode
            if self._probes is not None:
                self._probes.set_mode(mode)
                self._probes_changed = True
        else:
            raise SimulationInputError(
                "'action' must be one of xid, lose_gpu, restore_gpu, fragmentation, "
                + ", ".join(GPU_FAULTS)
            )
        self.injected.append(dict(action))

    def _gpu_fault(self, kind: str, gpu: int, action: dict[str, Any]) -> None:
        """The sticky-health faults: each stays until `reset_gpu` (or is a counter)."""
        target = self.scenario.gpus[gpu]
        if kind == "reset_gpu":
            self.lib.reset_gpu(gpu)
        elif kind == "remap_row":
            fail = action.get("fail", False)
            if not isinstance(fail, bool):
                raise SimulationInputError("'fail' must be true or false")
            self.lib.remap_row(gpu, fail=fail)
        elif kind == "recovery_action":
            value = _count(action, "value", 0, 7)
            self.lib.set_recovery_action(gpu, value)
        elif kind == "pcie_replays":
            target.pcie_replays += _count(action, "count", 1, 10**6)
        elif kind == "nvlink_errors":
            link = _count(action, "link", 0, max(0, target.nvlink_links - 1))
            key = (link, pynvml.NVML_NVLINK_ERROR_DL_REPLAY)
            target.nvlink_errors[key] = target.nvlink_errors.get(key, 0) + _count(
                action, "count", 1, 10**6
            )
        else:  # gpm
            supported = action.get("supported")
            if not isinstance(supported, bool):
                raise SimulationInputError("'supported' must be true or false")
            target.gpm_supported = supported

    def _gpu_index(self, value: Any) -> int:
        count = len(self.scenario.gpus)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < count:
            raise SimulationInputError(f"'gpu' must be a GPU index from 0 to {count - 1}")
        return value

    def state(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "elapsed_seconds": round(self.elapsed, 3),
            "fragmentation": self.fragmentation,
            "probe_files": self._probes is not None,
            "gpus": [
                {
                    "gpu": i,
                    "uuid": g.uuid,
                    "name": g.name,
                    "lost": g.lost,
                    "recovery_action": g.recovery_action,
                    "remap_pending": g.remap_pending,
                    "remap_failure": g.remap_failure,
                }
                for i, g in enumerate(self.scenario.gpus)
            ],
            "injected": list(self.injected),
        }

    async def handle(self, request: web.Request) -> web.Response:
        """POST /-/simulate: inject an event; 200 with the new state, 400 on bad input."""
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return web.json_response({"error": "body must be JSON"}, status=400)
        except RecursionError:  # json raises it for deep nesting: bad input, not a 500
            return web.json_response({"error": "body is nested too deeply"}, status=400)
        try:
            self.apply(body)
        except SimulationInputError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(self.state())
