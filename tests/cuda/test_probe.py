"""The probe thread with an injected stats source (no GPU, no torch needed)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from exporter.probe import files
from exporter.probe import runtime as probe_pkg
from exporter.probe.probe import Probe, ProbeConfig, expandable_from_conf, normalize_uuid
from harness.wait import eventually
from tests.cuda.pytorch_shapes import MiB, block, memory_stats, segment

UUID0 = "GPU-11111110-2222-3333-4444-555555555555"


class InjectedSource:
    """Stands in for torch.cuda: data shaped like PyTorch's, failures and slowness on demand."""

    def __init__(self) -> None:
        self.initialized = False
        self.stats: dict[int, dict[str, Any]] = {
            0: memory_stats(
                large={
                    "reserved_bytes": 20 * MiB,
                    "allocated_bytes": 10 * MiB,
                    "active_bytes": 10 * MiB,
                    "inactive_split_bytes": 10 * MiB,
                },
                retries=2,
            ),
            1: memory_stats(large={}, device_allocs=0),  # a device this process never used
        }
        blocks = [block(2 * MiB, "active_allocated" if i % 2 else "inactive") for i in range(10)]
        self.segments = [segment(blocks)]
        self.fail: set[str] = set()
        self.snapshot_delay = 0.0
        self.calls: list[str] = []

    def _maybe_fail(self, name: str) -> None:
        self.calls.append(name)
        if name in self.fail:
            raise RuntimeError(f"{name} exploded")

    def ready(self) -> bool:
        self._maybe_fail("ready")
        return self.initialized

    def device_count(self) -> int:
        self._maybe_fail("device_count")
        return len(self.stats)

    def memory_stats(self, device: int) -> Mapping[str, Any]:
        self._maybe_fail("memory_stats")
        return self.stats[device]

    def memory_snapshot(self) -> Sequence[Mapping[str, Any]]:
        self._maybe_fail("memory_snapshot")
        time.sleep(self.snapshot_delay)
        return self.segments

    def device_uuid(self, device: int) -> str:
        self._maybe_fail("device_uuid")
        return normalize_uuid(f"1111111{device}-2222-3333-4444-555555555555")

    def backend(self) -> str:
        return "native"

    def torch_version(self) -> str:
        return "2.13.0+cu128"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make_probe(tmp_path: Path, source: InjectedSource, **config: Any) -> Probe:
    cfg = ProbeConfig(directory=tmp_path, **{"stats_interval": 0.02, "ready_poll": 0.01, **config})
    return Probe(cfg, source, environ={"PYTORCH_ALLOC_CONF": "max_split_size_mb:128"})


def test_thread_waits_for_cuda_then_writes_one_atomic_file(tmp_path: Path) -> None:
    source = InjectedSource()
    probe = make_probe(tmp_path, source)
    probe.start()
    try:
        time.sleep(0.15)
        assert list(tmp_path.iterdir()) == []
        assert "memory_stats" not in source.calls  # nothing touched before CUDA is initialized

        source.initialized = True
        assert eventually(probe.path.exists, 5, interval=0.01)
        assert eventually(lambda: probe.writes >= 3, 5, interval=0.01)
    finally:
        probe.stop(remove_file=False)

    assert [p.name for p in tmp_path.iterdir()] == [probe.path.name]  # no temp files left
    doc = json.loads(probe.path.read_text())
    assert doc["format"] == files.FORMAT
    assert doc["pid"] == os.getpid()
    assert doc["start_time_ticks"] == files.proc_start_ticks(Path("/proc/self/stat").read_text())
    assert doc["torch_version"] == "2.13.0+cu128"
    assert doc["allocator"] == {
        "backend": "native",
        "expandable_segments": False,
        "alloc_conf": "max_split_size_mb:128",
    }
    assert doc["cost"]["stats_seconds"] >= 0 and doc["cost"]["snapshot_seconds"] >= 0
    [device] = doc["devices"]  # device 1 holds nothing and is left out
    assert device["uuid"] == UUID0
    assert device["stats"]["num_alloc_retries"] == 2
    assert device["snapshot"]["groups"]["general_large"]["largest_free_block"] == 2 * MiB
    assert device["snapshot"]["groups"]["general_large"]["free"] == 10 * MiB


def test_stop_removes_the_file(tmp_path: Path) -> None:
    source = InjectedSource()
    source.initialized = True
    probe = make_probe(tmp_path, source)
    assert probe.tick()
    assert probe.path.exists()
    probe.stop()
    assert not probe.path.exists()


def test_a_failing_source_is_logged_once_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = InjectedSource()
    source.initialized = True
    source.fail = {"memory_stats"}
    probe = make_probe(tmp_path, source)
    with caplog.at_level(logging.INFO, logger="inferwatch.probe"):
        for _ in range(5):
            assert not probe.tick()
        failures = [r for r in caplog.records if "memory_stats failed" in r.getMessage()]
        assert len(failures) == 1
        assert source.calls.count("memory_stats") == 10  # retried every round, both devices
        assert not probe.path.exists()

        source.fail = set()
        assert probe.tick()
        assert probe.path.exists()
        assert any("works again" in r.getMessage() for r in caplog.records)


def test_a_failing_snapshot_keeps_the_stats_flowing(tmp_path: Path) -> None:
    source = InjectedSource()
    source.initialized = True
    source.fail = {"memory_snapshot"}
    probe = make_probe(tmp_path, source)
    assert probe.tick()
    [device] = json.loads(probe.path.read_text())["devices"]
    assert device["stats"]["reserved_bytes.all.current"] == 20 * MiB
    assert device["snapshot"] is None


def test_slow_snapshots_back_off_and_fast_ones_recover(tmp_path: Path) -> None:
    source = InjectedSource()
    source.initialized = True
    source.snapshot_delay = 0.03
    clock = FakeClock()
    cfg = ProbeConfig(
        directory=tmp_path, snapshot_interval=60, snapshot_budget=0.01, max_snapshot_interval=240
    )
    probe = Probe(cfg, source, clock=clock, environ={})

    intervals = []
    for _ in range(4):
        probe.tick()
        intervals.append(probe.snapshot_interval)
        clock.now += probe.snapshot_interval  # just when the next snapshot is due
    assert intervals == [120, 240, 240, 240]
    assert source.calls.count("memory_snapshot") == 4

    source.snapshot_delay = 0.0
    for _ in range(3):
        probe.tick()
        clock.now += probe.snapshot_interval
    assert probe.snapshot_interval == 60

    # Between due times only the cheap stats are read.
    before = source.calls.count("memory_snapshot")
    probe.tick()
    clock.now += 1
    probe.tick()
    assert source.calls.count("memory_snapshot") == before + 1


def test_alloc_conf_and_uuid_parsing() -> None:
    assert expandable_from_conf("max_split_size_mb:64,expandable_segments:True")
    assert not expandable_from_conf("expandable_segments:False")
    assert not expandable_from_conf("")
    assert normalize_uuid("abc") == "GPU-abc"
    assert normalize_uuid("MIG-abc") == "MIG-abc"


def test_start_from_env_is_off_without_a_directory_and_idempotent_with_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(probe_pkg, "DEFAULT_PROBE_DIR", str(tmp_path / "not-mounted"))
    assert probe_pkg.start_from_env({}) is None
    env = {"INFERWATCH_PROBE_DIR": str(tmp_path), "INFERWATCH_PROBE_INTERVAL": "bogus"}
    first = probe_pkg.start_from_env(env)
    try:
        assert first is not None and first.running
        assert first.config.stats_interval == ProbeConfig.stats_interval  # bad value ignored
        assert probe_pkg.start_from_env(env) is first  # plugins load more than once
        assert probe_pkg.start_from_env({**env, "INFERWATCH_PROBE_DISABLED": "1"}) is None
    finally:
        first.stop()
