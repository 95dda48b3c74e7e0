"""Pure formulas over PyTorch's allocator data: no torch import, so CPU-only CI tests them.

Inputs are shaped exactly like `torch.cuda.memory_stats(device)` (a flat dict with keys such as
"reserved_bytes.large_pool.current") and `torch.cuda.memory_snapshot()` (a list of segment dicts
with "blocks"). The probe reduces them to a small per-device record; the collector turns that record
into the catalog's pools. Keeping both steps here means the probe file stays small and the
exporter, which is easy to upgrade, owns the final arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# memory_stats() keys kept in the probe file ("current" values are gauges; num_* are counters).
GAUGE_STATS = ("reserved_bytes", "allocated_bytes", "active_bytes", "inactive_split_bytes")
STAT_POOLS = {"all": "all", "large": "large_pool", "small": "small_pool"}
COUNTER_STATS = {
    "alloc_retries": "num_alloc_retries",
    "ooms": "num_ooms",
    "device_allocs": "num_device_alloc",
    "device_frees": "num_device_free",
}
KEPT_STATS: tuple[str, ...] = (
    *(f"{name}.{pool}.current" for name in GAUGE_STATS for pool in STAT_POOLS.values()),
    *(f"requested_bytes.{pool}.current" for pool in STAT_POOLS.values()),
    *COUNTER_STATS.values(),
    "num_sync_all_streams",
)

# Snapshot aggregates: general (default pool, segment_pool_id (0, 0)) vs private (CUDA graphs,
# MemPools), each split by PyTorch's segment_type.
SNAPSHOT_GROUPS = ("general_large", "general_small", "private_large", "private_small")
SNAPSHOT_FIELDS = (
    "reserved",
    "allocated",
    "active",
    "inactive_split",
    "free",
    "largest_free_block",
    "segments",
    "blocks",
)

# The byte gauges published per pool.
POOL_GAUGES = ("reserved", "allocated", "active", "inactive_split", "free", "largest_free_block")


def _int(value: Any) -> int:
    """A non-negative int from a stats value; anything else counts as 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return max(0, int(value))


def stats_subset(stats: Mapping[str, Any]) -> dict[str, int]:
    """The memory_stats() keys the probe keeps; missing keys (older torch) are left out."""
    return {key: _int(stats[key]) for key in KEPT_STATS if key in stats}


def device_in_use(stats: Mapping[str, Any]) -> bool:
    """A device this process holds allocator memory on (or ever asked the driver for)."""
    return (
        _int(stats.get("reserved_bytes.all.current")) > 0 or _int(stats.get("num_device_alloc")) > 0
    )


def _is_private(segment: Mapping[str, Any]) -> bool:
    pool_id = segment.get("segment_pool_id", (0, 0))
    try:
        return tuple(pool_id) != (0, 0)
    except TypeError:
        return False


def _empty_group() -> dict[str, int]:
    return dict.fromkeys(SNAPSHOT_FIELDS, 0)


def snapshot_groups(
    segments: Iterable[Mapping[str, Any]], device: int
) -> dict[str, dict[str, int]]:
    """Free bytes and the largest free run per pool group, from memory_snapshot() segments.

    A free run is a sequence of adjacent "inactive" blocks in one segment (the allocator merges
    neighbours on free, so this is normally one block). inactive_split counts free blocks in
    segments that also hold other blocks, except expandable segments: that is PyTorch's own
    definition (free_block() in CUDACachingAllocator.cpp excludes them).
    """
    groups = {name: _empty_group() for name in SNAPSHOT_GROUPS}
    for segment in segments:
        if segment.get("device") != device:
            continue
        kind = "large" if segment.get("segment_type") == "large" else "small"
        group = groups[f"{'private' if _is_private(segment) else 'general'}_{kind}"]
        blocks = [b for b in segment.get("blocks", ()) if isinstance(b, Mapping)]
        total = _int(segment.get("total_size")) or sum(_int(b.get("size")) for b in blocks)
        group["reserved"] += total
        group["segments"] += 1
        group["blocks"] += len(blocks)
        allocated = active = free = split_free = run = 0
        split = len(blocks) > 1 and not segment.get("is_expandable", False)
        for block in blocks:
            size = _int(block.get("size"))
            state = block.get("state")
            if state == "inactive":
                free += size
                run += size
                if split:
                    split_free += size
                group["largest_free_block"] = max(group["largest_free_block"], run)
                continue
            run = 0
            active += size  # active_allocated and the pending-free state, whatever its spelling
            if state == "active_allocated":
                allocated += size
        group["allocated"] += _int(segment.get("allocated_size", allocated))
        group["active"] += _int(segment.get("active_size", active))
        group["free"] += free
        group["inactive_split"] += split_free
    return groups


def expandable_in_snapshot(segments: Iterable[Mapping[str, Any]]) -> bool:
    return any(bool(s.get("is_expandable")) for s in segments)


def _sub(a: int, b: int) -> int:
    return max(0, a - b)


def pool_values(
    stats: Mapping[str, int], groups: Mapping[str, Mapping[str, int]] | None
) -> dict[str, dict[str, int]]:
    """Per-pool byte gauges for the catalog: all, large, small (general pools), private.

    memory_stats() counts CUDA-graph private pools inside large_pool/small_pool, so the private
    share seen in the last snapshot is subtracted: `all` is then the general pools only and the
    fragmentation ratios computed on it are not inflated by graph pools (PyTorch's OOM message
    excludes them the same way). free and largest_free_block exist only once a snapshot was taken.
    Without a snapshot, large/small/all are the raw stats and there is no `private` pool.
    """
    result: dict[str, dict[str, int]] = {}
    for pool in ("large", "small"):
        values: dict[str, int] = {}
        private = groups.get(f"private_{pool}") if groups else None
        general = groups.get(f"general_{pool}") if groups else None
        for name in GAUGE_STATS:
            key = f"{name}.{STAT_POOLS[pool]}.current"
            if key not in stats:
                continue
            field = name.removesuffix("_bytes")
            values[field] = _sub(stats[key], private[field] if private else 0)
        if general is not None:
            values["free"] = general["free"]
            values["largest_free_block"] = general["largest_free_block"]
        result[pool] = values
    total: dict[str, int] = {}
    for field in POOL_GAUGES:
        parts = [result[p][field] for p in ("large", "small") if field in result[p]]
        if len(parts) == 2:
            total[field] = max(parts) if field == "largest_free_block" else sum(parts)
    if not any(f"{n}.large_pool.current" in stats for n in GAUGE_STATS):
        # Only the "all" figures are known (unusual, but keep what there is).
        for name in GAUGE_STATS:
            if f"{name}.all.current" in stats:
                total[name.removesuffix("_bytes")] = stats[f"{name}.all.current"]
    result["all"] = total
    if groups:
        pl, ps = groups["private_large"], groups["private_small"]
        result["private"] = {
            field: max(pl[field], ps[field])
            if field == "largest_free_block"
            else pl[field] + ps[field]
            for field in POOL_GAUGES
        }
    return result


def counters(stats: Mapping[str, int]) -> dict[str, int]:
    """The catalog's counters (alloc_retries, ooms, device_allocs, device_frees) that exist."""
    return {name: stats[key] for name, key in COUNTER_STATS.items() if key in stats}


def external_fragmentation(free: int, largest_free_block: int) -> float:
    """1 - largest_free_block / free (0 when nothing is free); the recording rule's formula."""
    return 0.0 if free <= 0 else 1.0 - largest_free_block / free


def split_fragmentation(inactive_split: int, reserved: int) -> float:
    return 0.0 if reserved <= 0 else inactive_split / reserved


def reserved_unallocated(reserved: int, allocated: int) -> float:
    return 0.0 if reserved <= 0 else (reserved - allocated) / reserved
