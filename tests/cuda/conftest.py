"""A fake host for the cuda_allocator collector: /proc entries, kubelet log dirs, probe files."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.collectors.base import CollectorContext
from exporter.collectors.cuda_allocator import CudaAllocatorCollector, CudaAllocatorSettings
from exporter.nvml import Nvml
from exporter.probe import files, formulas
from tests.cuda.pytorch_shapes import MiB, block, memory_stats, segment

UUID_A = "GPU-aaaaaaaa-0000-0000-0000-000000000001"
UUID_B = "GPU-bbbbbbbb-0000-0000-0000-000000000002"


class FakeHost:
    """tmp/proc/<pid>/{stat,status,cgroup} and tmp/var/log/containers, like a node's."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc = root / "proc"
        self.probe_dir = root / "probes"
        self.proc.mkdir()
        self.probe_dir.mkdir()
        (root / "var" / "log" / "containers").mkdir(parents=True)

    def add_process(
        self,
        pid: int,
        *,
        start_ticks: int = 1000,
        pod: tuple[str, str, str] | None = None,
        inner_pid: int | None = None,
    ) -> None:
        d = self.proc / str(pid)
        d.mkdir(parents=True, exist_ok=True)
        fields = ["S"] + ["0"] * 18 + [str(start_ticks)] + ["0"] * 10
        (d / "stat").write_text(f"{pid} (python3 -m x) {' '.join(fields)}\n")
        nspid = f"{pid}\t{inner_pid}" if inner_pid is not None else str(pid)
        (d / "status").write_text(f"Name:\tpython3\nPid:\t{pid}\nNSpid:\t{nspid}\n")
        if pod is None:
            (d / "cgroup").write_text("0::/user.slice/user-0.slice/session-1.scope\n")
            return
        namespace, name, container = pod
        uid = f"{pid:08x}-1111-2222-3333-444455556666"
        cid = f"{pid:064x}"
        (d / "cgroup").write_text(
            f"0::/kubepods.slice/kubepods-pod{uid.replace('-', '_')}.slice/"
            f"cri-containerd-{cid}.scope\n"
        )
        log_name = f"{name}_{namespace}_{container}-{cid}.log"
        (self.root / "var" / "log" / "containers" / log_name).write_text("")

    def write_probe(self, pid: int, **overrides: Any) -> Path:
        doc = probe_document(pid, **overrides)
        path = self.probe_dir / files.file_name(overrides.pop("hostname", "node"), pid)
        path.write_text(json.dumps(doc))
        return path


def probe_document(
    pid: int,
    *,
    uuid: str = UUID_A,
    start_ticks: int | None = 1000,
    pid_namespace: str | None = None,
    written_at: float | None = None,
    retries: int = 0,
    reserved: int = 40 * MiB,
    snapshot: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """What the probe writes, built from PyTorch-shaped stats and snapshot."""
    stats = memory_stats(
        large={
            "reserved_bytes": reserved,
            "allocated_bytes": 10 * MiB,
            "active_bytes": 10 * MiB,
            "inactive_split_bytes": 10 * MiB,
        },
        retries=retries,
    )
    blocks = [block(2 * MiB, "active_allocated" if i % 2 == 0 else "inactive") for i in range(10)]
    segments = [segment(blocks), segment([block(reserved - 20 * MiB, "inactive")])]
    doc = {
        "format": files.FORMAT,
        "pid": pid,
        "start_time_ticks": start_ticks,
        "start_time_seconds": 1_700_000_000.0,
        "pid_namespace": pid_namespace,
        "hostname": "node",
        "kubernetes": None,
        "written_at": time.time() if written_at is None else written_at,
        "torch_version": "2.13.0+cu128",
        "allocator": {"backend": "native", "expandable_segments": False, "alloc_conf": ""},
        "cost": {"stats_seconds": 0.0001, "snapshot_seconds": 0.002},
        "devices": [
            {
                "index": 0,
                "uuid": uuid,
                "stats": formulas.stats_subset(stats),
                "snapshot": {"taken_at": 0, "groups": formulas.snapshot_groups(segments, 0)}
                if snapshot
                else None,
            }
        ],
    }
    doc.update(extra)
    return doc


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    return FakeHost(tmp_path)


@pytest.fixture
def nvml() -> Iterator[Nvml]:
    worker = Nvml()
    yield worker
    worker.close()


def make_collector(host: FakeHost, nvml: Nvml, **settings: Any) -> CudaAllocatorCollector:
    cfg = CudaAllocatorSettings(probe_dir=str(host.probe_dir), **settings)
    context = CollectorContext(http=None, nvml=nvml, proc_root=str(host.proc))  # type: ignore[arg-type]
    return CudaAllocatorCollector(cfg, context)


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))
