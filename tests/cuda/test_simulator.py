"""The simulated probe files: the real collector reads them; "creep" fragments over time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter.collectors.cuda_allocator import parse_probe_file
from exporter.probe import formulas
from exporter.simulate.probe_files import ProbeFileSimulator

UUID = "GPU-cccccccc-0000-0000-0000-000000000003"


def all_pool(directory: Path, pid: int) -> dict[str, int]:
    [path] = [p for p in directory.iterdir() if p.name.endswith(f"-{pid}.json")]
    record = parse_probe_file(path.name, path.read_bytes())
    [device] = record.devices
    return formulas.pool_values(device.stats, device.groups)["all"]


def fragmentation(values: dict[str, int]) -> float:
    return formulas.external_fragmentation(values["free"], values["largest_free_block"])


def test_healthy_files_are_steady_and_parse_like_the_probes(tmp_path: Path) -> None:
    sim = ProbeFileSimulator(tmp_path, [(100, UUID), (101, UUID)])
    sim.write(0)
    first = all_pool(tmp_path, 100)
    sim.write(600)
    assert all_pool(tmp_path, 100) == first
    assert fragmentation(first) == pytest.approx(0.4, abs=0.01)
    assert first["reserved"] - first["allocated"] == first["free"]  # consistent with the stats
    doc = json.loads(next(tmp_path.iterdir()).read_text())
    assert doc["devices"][0]["uuid"] == UUID
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sim-100.json", "sim-101.json"]


def test_creep_raises_fragmentation_reserved_and_retries(tmp_path: Path) -> None:
    sim = ProbeFileSimulator(tmp_path, [(100, UUID)])
    sim.write(10)
    sim.set_mode("creep")
    seen = []
    for elapsed in (20, 80, 200, 400, 1500):
        sim.write(elapsed)
        values = all_pool(tmp_path, 100)
        [path] = tmp_path.iterdir()
        stats = json.loads(path.read_text())["devices"][0]["stats"]
        seen.append((fragmentation(values), values["reserved"], stats["num_alloc_retries"]))
    frags, reserved, retries = zip(*seen, strict=True)
    assert list(frags) == sorted(frags) and frags[-1] > 0.9 > frags[0]
    assert list(reserved) == sorted(reserved) and reserved[-1] > reserved[0]
    assert retries[0] == 0 and retries[-1] > retries[-2] > 0

    sim.set_mode("healthy")  # back to normal, as after a restart
    sim.write(900)
    assert fragmentation(all_pool(tmp_path, 100)) == pytest.approx(0.4, abs=0.01)


def test_unknown_mode_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="creep"):
        ProbeFileSimulator(tmp_path, []).set_mode("chaos")
