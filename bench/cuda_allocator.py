"""cuda_allocator collector on a directory of 5,000 probe files, against a json.loads floor.

Floor: reading and json-parsing every file in a plain loop (what any reader must do once).
Cold: the collector's first refresh (scan, parse, process identity, families). Each file is
its own process (one file per process: a second file for one process is skipped as a copy), in
a pid namespace other than the exporter's, as inference containers on a node appear to it.
Warm: later refreshes with the files unchanged (parses cached by mtime and size).
Also: the probe's own Python-side cost to reduce a 20,000-block memory_snapshot().
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

from bench import Ratio, Summary
from exporter.collectors.base import CollectorContext
from exporter.collectors.cuda_allocator import CudaAllocatorCollector, CudaAllocatorSettings
from exporter.nvml import Nvml
from exporter.probe import files, formulas
from exporter.probe.probe import process_identity
from exporter.simulate.probe_files import ProbeFileSimulator

FILES = 5000
MiB = 1024 * 1024


def _write_files(probes: Path) -> None:
    """FILES probe files of distinct processes in another pid namespace, one GPU each."""
    probes.mkdir()
    identity = process_identity()
    simulator = ProbeFileSimulator(probes, [])
    now = time.time()
    for i in range(FILES):
        uuid = f"GPU-{i:08x}-0000-0000-0000-000000000000"
        pid = 100 + i
        doc = simulator.document(pid, uuid, 0.0, now)
        doc.update(identity, pid=pid, pid_namespace="pid:[4026500000]")
        (probes / f"node{i}-{pid}{files.SUFFIX}").write_text(json.dumps(doc))


def _floor(probes: Path) -> float:
    started = time.perf_counter()
    for path in probes.iterdir():
        json.loads(path.read_bytes())
    return time.perf_counter() - started


def _snapshot_reduce_ms(blocks: int = 20_000) -> float:
    per_segment = 10
    segments = [
        {
            "device": 0,
            "total_size": per_segment * 2 * MiB,
            "segment_type": "large",
            "segment_pool_id": (0, 0),
            "blocks": [
                {"size": 2 * MiB, "state": "inactive" if b % 2 else "active_allocated"}
                for b in range(per_segment)
            ],
        }
        for _ in range(blocks // per_segment)
    ]
    started = time.perf_counter()
    formulas.snapshot_groups(segments, 0)
    return (time.perf_counter() - started) * 1000


async def _refreshes(probes: Path) -> tuple[float, float, int]:
    settings = CudaAllocatorSettings(probe_dir=str(probes), nvml_join=False)
    nvml = Nvml()
    try:
        context = CollectorContext(http=None, nvml=nvml, proc_root="/proc")  # type: ignore[arg-type]
        collector = CudaAllocatorCollector(settings, context)
        started = time.perf_counter()
        families = await collector.update()
        cold = time.perf_counter() - started
        warm_runs = []
        for _ in range(3):
            started = time.perf_counter()
            await collector.update()
            warm_runs.append(time.perf_counter() - started)
    finally:
        nvml.close()
    series = sum(len(f.samples) for f in families)
    return cold, min(warm_runs), series


def main() -> Summary:
    with tempfile.TemporaryDirectory() as tmp:
        probes = Path(tmp) / "probes"
        _write_files(probes)
        floor = min(_floor(probes) for _ in range(3))
        cold, warm, series = asyncio.run(_refreshes(probes))
    assert series > FILES, "every probe file should produce series"
    snapshot_ms = _snapshot_reduce_ms()
    line = (
        f"{FILES} probe files ({series} series): cold refresh {cold * 1000:.0f} ms "
        f"({cold / floor:.1f}x json floor {floor * 1000:.0f} ms), warm {warm * 1000:.0f} ms "
        f"({warm / floor:.1f}x); probe reduces a 20k-block snapshot in {snapshot_ms:.1f} ms"
    )
    return Summary(
        line,
        (
            Ratio("cold refresh / plain JSON parse", cold / floor),
            Ratio("warm refresh / plain JSON parse", warm / floor),
        ),
    )


if __name__ == "__main__":
    print(main().line)
