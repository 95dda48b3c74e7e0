"""Simulated probe files, in exactly the format the real probe writes (exporter/probe/files.py).

"healthy": a steady inference server: reserved memory flat, free memory mostly in large runs.
"creep": from the moment it is set, reserved memory grows, free memory splinters (the largest
free run shrinks while total free grows), inactive split bytes pile up and the allocator starts
flushing and retrying - the slow fragmentation that ends in OOMs after days, compressed to
minutes. Values are a pure function of (mode, seconds since the mode was set), so runs repeat.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from exporter.probe import files, formulas

GiB = 1024**3
MiB = 1024**2
MODES = ("healthy", "creep")

# One process on an 80 GiB GPU, in steady state.
BASE_RESERVED = 60 * GiB
LIVE_SET = 52 * GiB  # allocated bytes: stable, so growth in reserved is not load
SMALL_RESERVED = 256 * MiB
SMALL_ALLOCATED = 200 * MiB
GRAPH_POOL = 1 * GiB  # a CUDA-graph private pool, mostly free: must not look like fragmentation
GRAPH_POOL_ALLOCATED = 64 * MiB
# Creep: how fast reserved grows, how far it may go, how fast free memory splinters.
CREEP_BYTES_PER_SECOND = 40 * MiB
CREEP_MAX_RESERVED = 78 * GiB
CREEP_SPLINTER_SECONDS = 300.0  # time constant for the largest free run to shrink
RETRY_EVERY_SECONDS = 20.0  # once fragmented, a cache flush + retry this often


class ProbeFileSimulator:
    """Writes one probe file per simulated process (pid, GPU UUID) on each `write()`."""

    def __init__(self, probe_dir: Path, processes: Sequence[tuple[int, str]]) -> None:
        self.probe_dir = Path(probe_dir)
        self.processes = list(processes)
        self.mode = "healthy"
        self._mode_since: float | None = None  # elapsed_seconds when the mode was set

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown fragmentation mode {mode!r}; expected one of {MODES}")
        self.mode = mode
        self._mode_since = None  # counted from the next write's elapsed time

    def write(self, elapsed_seconds: float) -> None:
        """Write every process's file as at `elapsed_seconds` into the simulation."""
        if self._mode_since is None:
            self._mode_since = elapsed_seconds
        self.probe_dir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for number, (pid, uuid) in enumerate(self.processes):
            document = self.document(pid, uuid, elapsed_seconds, now, number)
            files.write_atomic(self.probe_dir / files.file_name("sim", pid), document)

    def document(
        self, pid: int, uuid: str, elapsed: float, now: float, number: int = 0
    ) -> dict[str, Any]:
        """One probe document (the same keys as the real probe's)."""
        creeping = self.mode == "creep"
        since = max(0.0, elapsed - (self._mode_since or 0.0))
        # Processes differ a little so the series are distinguishable on a dashboard.
        reserved_large = BASE_RESERVED + number * GiB
        live = LIVE_SET + number * GiB
        if creeping:
            grown = reserved_large + int(since * CREEP_BYTES_PER_SECOND)
            reserved_large = min(CREEP_MAX_RESERVED, grown)
        free_general = reserved_large - GRAPH_POOL - live
        if creeping:
            # Free memory splinters: the largest run decays from 60 % of free towards 2 %.
            share = 0.02 + 0.58 * pow(2.0, -since / CREEP_SPLINTER_SECONDS)
            split_share = min(0.9, 0.1 + since / (2 * CREEP_SPLINTER_SECONDS))
            retries = int(since // RETRY_EVERY_SECONDS) if since > 60 else 0
        else:
            share, split_share, retries = 0.6, 0.1, 0
        largest = int(free_general * share)
        inactive_split = int(free_general * split_share)
        graph_free = GRAPH_POOL - GRAPH_POOL_ALLOCATED
        small_free = SMALL_RESERVED - SMALL_ALLOCATED
        stats = {
            "reserved_bytes.all.current": reserved_large + SMALL_RESERVED,
            "reserved_bytes.large_pool.current": reserved_large,
            "reserved_bytes.small_pool.current": SMALL_RESERVED,
            "allocated_bytes.all.current": live + GRAPH_POOL_ALLOCATED + SMALL_ALLOCATED,
            "allocated_bytes.large_pool.current": live + GRAPH_POOL_ALLOCATED,
            "allocated_bytes.small_pool.current": SMALL_ALLOCATED,
            "active_bytes.all.current": live + GRAPH_POOL_ALLOCATED + SMALL_ALLOCATED,
            "active_bytes.large_pool.current": live + GRAPH_POOL_ALLOCATED,
            "active_bytes.small_pool.current": SMALL_ALLOCATED,
            "inactive_split_bytes.all.current": inactive_split + graph_free + small_free,
            "inactive_split_bytes.large_pool.current": inactive_split + graph_free,
            "inactive_split_bytes.small_pool.current": small_free,
            "num_alloc_retries": retries,
            "num_ooms": 0,
            "num_device_alloc": 40 + (reserved_large - BASE_RESERVED) // (20 * MiB),
            "num_device_free": retries,
            "num_sync_all_streams": retries,
        }
        groups = {
            "general_large": _group(reserved_large - GRAPH_POOL, live, free_general, largest),
            "general_small": _group(SMALL_RESERVED, SMALL_ALLOCATED, small_free, 2 * MiB),
            "private_large": _group(GRAPH_POOL, GRAPH_POOL_ALLOCATED, graph_free, graph_free),
            "private_small": _group(0, 0, 0, 0),
        }
        groups["general_large"]["inactive_split"] = inactive_split
        groups["general_small"]["inactive_split"] = small_free
        groups["private_large"]["inactive_split"] = graph_free
        return {
            "format": files.FORMAT,
            "pid": pid,
            "start_time_ticks": None,
            "start_time_seconds": now - elapsed - 3600.0,  # "warmed up" an hour before
            "pid_namespace": None,
            "hostname": "sim",
            "kubernetes": None,
            "written_at": now,
            "torch_version": "2.13.0+cu128",
            "allocator": {"backend": "native", "expandable_segments": False, "alloc_conf": ""},
            "cost": {
                "stats_seconds": 0.0002,
                "snapshot_seconds": 0.004,
                "stats_interval_seconds": 10.0,
                "snapshot_interval_seconds": 60.0,
            },
            "devices": [
                {
                    "index": 0,
                    "uuid": uuid,
                    "stats": stats,
                    "snapshot": {"taken_at": now, "groups": groups},
                }
            ],
        }


def _group(reserved: int, allocated: int, free: int, largest: int) -> dict[str, int]:
    group = dict.fromkeys(formulas.SNAPSHOT_FIELDS, 0)
    group.update(
        reserved=reserved,
        allocated=allocated,
        active=allocated,
        free=free,
        largest_free_block=min(free, largest),
        segments=max(1, reserved // (20 * MiB)) if reserved else 0,
    )
    return group
