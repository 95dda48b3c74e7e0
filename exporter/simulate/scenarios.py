"""Scenario data for `--simulate`: which GPUs exist, which processes run on them (and in which
pods), and what happens over time. Every call builds fresh, mutable objects.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pynvml

from exporter.simulate.fake_nvml import FakeGpu, FakeMigInstance, FakeProcess

GiB = 2**30


@dataclass(frozen=True)
class PodSpec:
    namespace: str
    pod: str
    container: str

    @property
    def uid(self) -> str:
        return str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"pod/{self.namespace}/{self.pod}"))

    @property
    def container_id(self) -> str:
        seed = f"container/{self.namespace}/{self.pod}/{self.container}"
        return (uuidlib.uuid5(uuidlib.NAMESPACE_URL, seed).hex * 2)[:64]


@dataclass(frozen=True)
class SimProcess:
    """A process as /proc shows it: in a pod (cgroup in Kubernetes form) or on the host."""

    pid: int
    command: str
    pod: PodSpec | None = None
    probe: bool = False  # writes allocator probe files (an inference server with the probe)


@dataclass
class Scenario:
    name: str
    description: str
    gpus: list[FakeGpu]
    processes: dict[int, SimProcess]
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # (at s, action)
    initial_xids: list[tuple[int, int]] = field(default_factory=list)  # (gpu, xid)
    fragmentation: str = "healthy"
    nvml_latency_s: float = 0.0
    churn: bool = False  # every tick, each process exits and a new one (new PID, pod) replaces it


def gpu_uuid(scenario: str, index: int) -> str:
    return "GPU-" + str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"inferwatch-sim/{scenario}/{index}"))


def h100(scenario: str, index: int, utilization: int = 0) -> FakeGpu:
    return FakeGpu(
        uuid=gpu_uuid(scenario, index),
        name="NVIDIA H100 80GB HBM3",
        pci_bus_id=f"00000000:{0x18 + 0x10 * index:02X}:00.0",
        utilization_gpu=utilization,
        utilization_memory=utilization // 2,
    )


def _place(gpu: FakeGpu, proc: SimProcess, used: int, gi: int | None = None) -> None:
    if gi is None:
        gpu.processes.append(FakeProcess(proc.pid, used))
    else:
        gpu.processes.append(FakeProcess(proc.pid, used, gi, 0))
    gpu.memory_used += used


def _default(name: str, description: str) -> Scenario:
    vllm = PodSpec("llm", "vllm-llama-0", "vllm")
    sglang = PodSpec("llm", "sglang-qwen-0", "sglang")
    procs = [
        SimProcess(4101, "python3 -m vllm.entrypoints.openai.api_server", vllm, probe=True),
        SimProcess(4102, "python3 -m vllm.worker", vllm, probe=True),
        SimProcess(4201, "python3 -m sglang.launch_server", sglang),
        SimProcess(4202, "python3 -m sglang.scheduler", sglang, probe=True),
        SimProcess(5001, "python3 train.py"),  # a host process, not in Kubernetes
    ]
    gpus = [h100(name, i, utilization=u) for i, u in enumerate((85, 80, 60, 20))]
    _place(gpus[0], procs[0], 70 * GiB)
    _place(gpus[1], procs[1], 70 * GiB)
    _place(gpus[2], procs[2], 30 * GiB)
    _place(gpus[2], procs[3], 6 * GiB)
    _place(gpus[3], procs[4], 12 * GiB)
    return Scenario(
        name,
        description,
        gpus,
        {p.pid: p for p in procs},
        initial_xids=[(3, 13)],  # an application's illegal memory access: counted, not critical
    )


def default() -> Scenario:
    return _default("default", SCENARIOS["default"])


def fragmentation() -> Scenario:
    scenario = _default("fragmentation", SCENARIOS["fragmentation"])
    scenario.fragmentation = "creep"
    return scenario


def xid79() -> Scenario:
    scenario = _default("xid79", SCENARIOS["xid79"])
    scenario.events.append((20.0, {"action": "xid", "gpu": 1, "xid": 79}))
    return scenario


def mig() -> Scenario:
    a100 = FakeGpu(
        uuid=gpu_uuid("mig", 0),
        name="NVIDIA A100-SXM4-80GB",
        pci_bus_id="00000000:07:00.0",
        mig_mode=pynvml.NVML_DEVICE_MIG_ENABLE,
        power_limit_mw=400_000,
        nvlink_links=12,  # NVLink3
        gpm_supported=False,  # GPM is Hopper and later
        pcie_generation=(4, 4),
        clocks_mhz={
            pynvml.NVML_CLOCK_GRAPHICS: 1410,
            pynvml.NVML_CLOCK_SM: 1410,
            pynvml.NVML_CLOCK_MEM: 1593,
        },
    )
    profiles = [(1, "3g.40gb", 40), (2, "2g.20gb", 20), (3, "1g.10gb", 10)]
    for gi, profile, gib in profiles:
        mig_uuid = "MIG-" + str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"inferwatch-sim/mig/{gi}"))
        a100.mig_instances.append(
            FakeMigInstance(gi, 0, mig_uuid, f"NVIDIA A100-SXM4-80GB MIG {profile}", gib * GiB, 0)
        )
    procs = [
        SimProcess(
            6101,
            "python3 -m vllm.entrypoints.openai.api_server",
            PodSpec("llm", "vllm-small-0", "vllm"),
            probe=True,
        ),
        SimProcess(6201, "tritonserver", PodSpec("llm", "triton-0", "triton")),
    ]
    for proc, instance, used in ((procs[0], 0, 30 * GiB), (procs[1], 1, 8 * GiB)):
        _place(a100, proc, used, a100.mig_instances[instance].gpu_instance_id)
        a100.mig_instances[instance].memory_used += used
    return Scenario("mig", SCENARIOS["mig"], [a100, h100("mig", 1, 40)], {p.pid: p for p in procs})


def large() -> Scenario:
    gpus = [h100("large", i, utilization=50 + 5 * i) for i in range(8)]
    procs: dict[int, SimProcess] = {}
    pid = 10_000
    for i in range(256):
        gpu = gpus[i % 8]
        if i % 8 == 7 and i // 8 % 8 == 0:
            proc = SimProcess(pid, "python3 batch.py")  # a few host processes
        else:
            pod = PodSpec(f"team-{i % 4}", f"engine-{i // 2}", "server")
            proc = SimProcess(pid, "python3 -m vllm.worker", pod, probe=i < 16)
        procs[pid] = proc
        _place(gpu, proc, 256 * 2**20 + (i % 7) * 64 * 2**20)
        pid += 1
    return Scenario("large", SCENARIOS["large"], gpus, procs, nvml_latency_s=200e-6)


def churn() -> Scenario:
    gpus = [h100("churn", i, utilization=50) for i in range(8)]
    procs: dict[int, SimProcess] = {}
    pid = 20_000
    for i in range(64):
        pod = PodSpec(f"team-{i % 4}", f"engine-{i}", "server")
        proc = SimProcess(pid, "python3 -m vllm.worker", pod)
        procs[pid] = proc
        _place(gpus[i % 8], proc, 512 * 2**20)
        pid += 1
    return Scenario("churn", SCENARIOS["churn"], gpus, procs, churn=True)


def demo() -> Scenario:
    """The demo's fleet as NVML sees it: the pods on each GPU are named like the replicas the
    demo's local backend runs there, so a GPU alert names the replica to act on."""
    gpus = [h100("demo", i, utilization=70) for i in range(2)]
    procs = [
        SimProcess(7100 + i, "llama-server", PodSpec("default", f"chat-{i}", "engine"))
        for i in range(2)
    ]
    for gpu, proc in zip(gpus, procs, strict=True):
        _place(gpu, proc, 60 * GiB)
    return Scenario("demo", SCENARIOS["demo"], gpus, {p.pid: p for p in procs})


SCENARIOS: dict[str, str] = {
    "default": "4 healthy H100s; vLLM and SGLang pods plus a host process; allocator probe files",
    "fragmentation": "like default, but allocator fragmentation and reserved memory creep up",
    "xid79": "like default, but GPU 1 falls off the bus (Xid 79) after 20 s",
    "mig": "an A100 in MIG mode with three instances, next to an H100",
    "large": "8 H100s, 256 processes, NVML calls at 200 us (the benchmark's shape)",
    "churn": "8 H100s, 64 processes replaced every second by new PIDs in new pods (the soak)",
    "demo": "2 H100s, one engine pod on each (default/chat-0, default/chat-1: the demo's replicas)",
}

BUILDERS: dict[str, Callable[[], Scenario]] = {
    "default": default,
    "fragmentation": fragmentation,
    "xid79": xid79,
    "mig": mig,
    "large": large,
    "churn": churn,
    "demo": demo,
}
