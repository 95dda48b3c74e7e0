"""The allocator formulas against stats and snapshots shaped exactly like PyTorch's.

Shapes and their sources are in tests/cuda/pytorch_shapes.py.
"""

from __future__ import annotations

import pytest

from exporter.probe import formulas
from tests.cuda.pytorch_shapes import MiB, block, memory_stats, segment


def fragmented_snapshot() -> list[dict[str, object]]:
    """Every other 2 MiB block freed in a 20 MiB segment, one whole free segment, a graph pool."""
    blocks = [block(2 * MiB, "active_allocated" if i % 2 == 0 else "inactive") for i in range(10)]
    return [
        segment(blocks, address=0x1000_0000),
        segment([block(40 * MiB, "inactive")], address=0x2000_0000),
        segment(
            [block(1 * MiB, "active_allocated"), block(1 * MiB, "inactive")],
            segment_type="small",
            address=0x3000_0000,
        ),
        # A CUDA-graph private pool: mostly free after capture, must not count as fragmentation.
        segment(
            [block(4 * MiB, "active_allocated"), block(60 * MiB, "inactive")],
            pool_id=(1, 3),
            address=0x4000_0000,
        ),
        # Another device's segment is ignored for device 0.
        segment([block(20 * MiB, "inactive")], device=1, address=0x5000_0000),
    ]


def test_snapshot_groups_separate_private_pools_and_find_the_largest_free_run() -> None:
    groups = formulas.snapshot_groups(fragmented_snapshot(), device=0)

    large = groups["general_large"]
    assert large["reserved"] == 60 * MiB
    assert large["allocated"] == 10 * MiB
    assert large["free"] == 50 * MiB  # 5 x 2 MiB holes + the whole 40 MiB segment
    assert large["largest_free_block"] == 40 * MiB
    assert large["inactive_split"] == 10 * MiB  # holes in a split segment; not the whole one
    assert groups["general_small"]["free"] == 1 * MiB
    assert groups["general_small"]["inactive_split"] == 1 * MiB
    private = groups["private_large"]
    assert (private["reserved"], private["free"], private["largest_free_block"]) == (
        64 * MiB,
        60 * MiB,
        60 * MiB,
    )
    assert groups["private_small"]["reserved"] == 0


def test_adjacent_free_blocks_form_one_run_and_pending_frees_break_it() -> None:
    for pending in ("active_pending_free", "active_awaiting_free"):  # C++ and docstring spelling
        blocks = [
            block(2 * MiB, "inactive"),
            block(2 * MiB, "inactive"),
            block(2 * MiB, pending),
            block(2 * MiB, "inactive"),
        ]
        seg = segment(blocks)
        del seg["active_size"], seg["allocated_size"]  # derive them from the blocks
        group = formulas.snapshot_groups([seg], device=0)["general_large"]
        assert group["largest_free_block"] == 4 * MiB
        assert group["free"] == 6 * MiB
        assert group["active"] == 2 * MiB
        assert group["allocated"] == 0


def test_expandable_segments_have_no_inactive_split() -> None:
    seg = segment([block(2 * MiB, "active_allocated"), block(6 * MiB, "inactive")], expandable=True)
    group = formulas.snapshot_groups([seg], device=0)["general_large"]
    assert group["inactive_split"] == 0
    assert group["free"] == 6 * MiB
    assert formulas.expandable_in_snapshot([seg])


def test_pool_values_subtract_private_pools_from_the_stats() -> None:
    # The stats count the graph pool (64 MiB reserved, 4 allocated, 60 inactive split) in
    # large_pool, as PyTorch does.
    stats = formulas.stats_subset(
        memory_stats(
            large={
                "reserved_bytes": 124 * MiB,
                "allocated_bytes": 14 * MiB,
                "active_bytes": 14 * MiB,
                "inactive_split_bytes": 70 * MiB,
            },
            small={
                "reserved_bytes": 2 * MiB,
                "allocated_bytes": MiB,
                "active_bytes": MiB,
                "inactive_split_bytes": MiB,
            },
            retries=3,
            ooms=1,
            device_allocs=7,
            device_frees=2,
        )
    )
    pools = formulas.pool_values(stats, formulas.snapshot_groups(fragmented_snapshot(), 0))

    assert pools["large"] == {
        "reserved": 60 * MiB,
        "allocated": 10 * MiB,
        "active": 10 * MiB,
        "inactive_split": 10 * MiB,
        "free": 50 * MiB,
        "largest_free_block": 40 * MiB,
    }
    assert pools["all"]["reserved"] == 62 * MiB
    assert pools["all"]["free"] == 51 * MiB
    assert pools["all"]["largest_free_block"] == 40 * MiB
    assert pools["private"]["reserved"] == 64 * MiB
    assert pools["private"]["free"] == 60 * MiB
    assert formulas.counters(stats) == {
        "alloc_retries": 3,
        "ooms": 1,
        "device_allocs": 7,
        "device_frees": 2,
    }

    # The recording rules' inputs give the ratios the design defines.
    all_pool = pools["all"]
    assert formulas.external_fragmentation(
        all_pool["free"], all_pool["largest_free_block"]
    ) == pytest.approx(1 - 40 / 51)
    assert formulas.split_fragmentation(
        all_pool["inactive_split"], all_pool["reserved"]
    ) == pytest.approx(11 / 62)
    assert formulas.reserved_unallocated(all_pool["reserved"], all_pool["allocated"]) == (
        pytest.approx((62 - 11) / 62)
    )


def test_without_a_snapshot_only_stats_pools_exist() -> None:
    stats = formulas.stats_subset(memory_stats(large={"reserved_bytes": 20 * MiB}))
    pools = formulas.pool_values(stats, None)
    assert set(pools) == {"all", "large", "small"}
    assert pools["all"]["reserved"] == 20 * MiB
    assert "free" not in pools["all"]


def test_stats_subset_keeps_only_known_keys_and_survives_odd_values() -> None:
    stats = memory_stats(large={"reserved_bytes": MiB})
    stats["num_ooms"] = None  # not a number: counts as 0
    del stats["num_device_free"]  # older torch: key absent, counter left out
    subset = formulas.stats_subset(stats)
    assert subset["reserved_bytes.large_pool.current"] == MiB
    assert subset["num_ooms"] == 0
    assert "num_device_free" not in subset
    assert "max_split_size" not in subset
    assert formulas.device_in_use(stats)
    assert not formulas.device_in_use(formulas.stats_subset({}))


def test_ratios_are_zero_when_nothing_is_free_or_reserved() -> None:
    assert formulas.external_fragmentation(0, 0) == 0.0
    assert formulas.split_fragmentation(5, 0) == 0.0
    assert formulas.reserved_unallocated(0, 0) == 0.0
