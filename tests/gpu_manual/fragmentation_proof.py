"""Proof on a real NVIDIA GPU that the probe sees fragmentation (run by hand; needs CUDA torch).

    python tests/gpu_manual/fragmentation_proof.py [--fraction 0.5] [--block-mib 4]

What it does, in one PyTorch process with the probe running (stats every 0.5 s, snapshot every
1 s, written to a temporary probe directory and read back through the exporter's own parser):
1. baseline after CUDA init;
2. fills the allowed memory (set_per_process_memory_fraction) with small blocks, which the
   allocator packs into shared 20 MiB segments;
3. frees every other block: about half the memory is free, but only in small holes inside
   segments that still hold live blocks (inactive_split, not releasable);
4. asks for one large block: it cannot fit in any hole and no new segment is allowed, so the
   allocator flushes its cache and retries (num_alloc_retries + 1) and then raises OOM.
It prints one line per phase with the catalog values and the three fragmentation ratios, and
exits non-zero if they did not move as expected (fragmentation and split up after step 3,
alloc_retries up after step 4).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from exporter.collectors.cuda_allocator import parse_probe_file
from exporter.probe import formulas
from exporter.probe.probe import Probe, ProbeConfig

MiB = 1024 * 1024


def read_probe(probe: Probe, wait: float) -> dict[str, Any]:
    """Wait for a fresh snapshot in the file, then the exporter's view of it (pool "all")."""
    time.sleep(wait)
    record = parse_probe_file(probe.path.name, probe.path.read_bytes())
    [device] = [d for d in record.devices if d.groups is not None]
    values = dict(device.pools["all"])
    values.update(device.counters)
    values["private_reserved"] = device.pools.get("private", {}).get("reserved", 0)
    values["external_fragmentation"] = formulas.external_fragmentation(
        values.get("free", 0), values.get("largest_free_block", 0)
    )
    values["split_fragmentation"] = formulas.split_fragmentation(
        values["inactive_split"], values["reserved"]
    )
    values["reserved_unallocated"] = formulas.reserved_unallocated(
        values["reserved"], values["allocated"]
    )
    values["probe_stats_ms"] = (probe.stats_seconds or 0) * 1000
    values["probe_snapshot_ms"] = (probe.snapshot_seconds or 0) * 1000
    return values


def show(phase: str, values: dict[str, Any]) -> None:
    print(json.dumps({"phase": phase, **values}, sort_keys=True), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fraction", type=float, default=0.5, help="share of the GPU to use")
    parser.add_argument("--block-mib", type=int, default=4, help="small block size (1-10 MiB)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this proof needs a real NVIDIA GPU", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as tmp:
        probe = Probe(ProbeConfig(Path(tmp), stats_interval=0.5, snapshot_interval=1.0))
        probe.start()
        torch.cuda.set_per_process_memory_fraction(args.fraction, 0)
        torch.ones(1, device="cuda")  # the "server" initializes CUDA; the probe only waits
        base = read_probe(probe, 2.5)
        show("1-baseline", base)

        blocks = []
        try:
            while True:
                blocks.append(torch.empty(args.block_mib * MiB, dtype=torch.uint8, device="cuda"))
        except torch.cuda.OutOfMemoryError:
            pass
        filled = read_probe(probe, 2.5)
        show(f"2-filled-{len(blocks)}-blocks", filled)

        del blocks[::2]
        holes = read_probe(probe, 2.5)
        show("3-every-other-freed", holes)

        large = len(blocks) * args.block_mib * MiB // 2
        try:
            torch.empty(large, dtype=torch.uint8, device="cuda")
            oom = False
        except torch.cuda.OutOfMemoryError:
            oom = True
        after = read_probe(probe, 2.5)
        show(f"4-asked-{large // MiB}-MiB-oom-{oom}", after)
        probe.stop()

    checks = {
        "external fragmentation rose": holes["external_fragmentation"]
        > filled["external_fragmentation"],
        "inactive_split rose": holes["inactive_split"] > filled["inactive_split"],
        "alloc_retries counted": after["alloc_retries"] > holes["alloc_retries"],
    }
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}: {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
