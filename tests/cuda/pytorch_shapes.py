"""Allocator data shaped exactly like PyTorch's, for CPU-only tests.

Where the shapes come from:
- memory_stats(): torch/csrc/cuda/Module.cpp `THCPModule_memoryStats` (pytorch/pytorch @ 003ce815:
  nested dict {"allocated_bytes": {"all"|"small_pool"|"large_pool": {"current","peak",
  "allocated","freed"}}, "num_alloc_retries", "num_ooms", "max_split_size", "oversize_*"}),
  flattened with "." by torch/cuda/memory.py `memory_stats()`; the extra counters
  num_sync_all_streams, num_device_alloc, num_device_free, num_oom_rejections and
  reserved_bytes_by_private_pools are from the `memory_stats` docstring of torch 2.13.0
  (torch/cuda/memory.py in the torch-2.13.0 wheel).
- memory_snapshot(): the same Module.cpp `THCPModule_memorySnapshot` (segment keys device, address,
  total_size, allocated_size, active_size, requested_size, stream, segment_type, segment_pool_id,
  blocks; block keys size, requested_size, state in "active_allocated" | "active_pending_free" |
  "inactive") and the `Segment`/`Block` TypedDicts in torch 2.13.0 torch/cuda/memory.py
  `_snapshot()` docstring (adds is_expandable, address, frames, and spells the pending state
  "active_awaiting_free").
"""

from __future__ import annotations

from typing import Any

MiB = 1024 * 1024
STAT_ARRAYS = (
    "allocation",
    "segment",
    "active",
    "inactive_split",
    "allocated_bytes",
    "reserved_bytes",
    "active_bytes",
    "inactive_split_bytes",
    "requested_bytes",
)


def _stat(current: int) -> dict[str, int]:
    return {"current": current, "peak": current, "allocated": current, "freed": 0}


def memory_stats(
    *,
    large: dict[str, int],
    small: dict[str, int] | None = None,
    retries: int = 0,
    ooms: int = 0,
    device_allocs: int = 1,
    device_frees: int = 0,
) -> dict[str, Any]:
    """A flat memory_stats() dict; `large`/`small` give "current" per stat array name."""
    small = small or {}
    nested: dict[str, Any] = {
        "num_alloc_retries": retries,
        "num_ooms": ooms,
        "num_sync_all_streams": retries,
        "num_device_alloc": device_allocs,
        "num_device_free": device_frees,
        "num_oom_rejections": 0,
        "max_split_size": -1,
        "oversize_allocations": _stat(0),
        "oversize_segments": _stat(0),
    }
    for name in STAT_ARRAYS:
        lv, sv = large.get(name, 0), small.get(name, 0)
        nested[name] = {"all": _stat(lv + sv), "small_pool": _stat(sv), "large_pool": _stat(lv)}
    flat: dict[str, Any] = {}

    def flatten(prefix: str, value: Any) -> None:  # torch's _recurse_add_to_result
        if isinstance(value, dict):
            for key, inner in value.items():
                flatten(f"{prefix}.{key}" if prefix else key, inner)
        else:
            flat[prefix] = value

    flatten("", nested)
    return dict(sorted(flat.items()))


def block(size: int, state: str) -> dict[str, Any]:
    requested = size if state != "inactive" else 0
    return {"size": size, "requested_size": requested, "state": state, "frames": []}


def segment(
    blocks: list[dict[str, Any]],
    *,
    device: int = 0,
    segment_type: str = "large",
    pool_id: tuple[int, int] = (0, 0),
    address: int = 0x7F0000000000,
    expandable: bool = False,
) -> dict[str, Any]:
    total = sum(b["size"] for b in blocks)
    allocated = sum(b["size"] for b in blocks if b["state"] == "active_allocated")
    active = sum(b["size"] for b in blocks if b["state"] != "inactive")
    return {
        "device": device,
        "address": address,
        "total_size": total,
        "allocated_size": allocated,
        "active_size": active,
        "requested_size": sum(b["requested_size"] for b in blocks),
        "stream": 0,
        "segment_type": segment_type,
        "segment_pool_id": pool_id,
        "is_expandable": expandable,
        "blocks": blocks,
    }
