"""The cuda_allocator collector on a directory of probe files, good and bad, with NVML joined."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from prometheus_client.core import Metric

from exporter.collectors.base import NoDataError
from exporter.nvml import Nvml
from exporter.probe import files
from exporter.probe.probe import Probe, ProbeConfig
from exporter.simulate import fake_nvml
from tests.cuda.conftest import UUID_A, UUID_B, FakeHost, age, make_collector
from tests.cuda.pytorch_shapes import MiB
from tests.cuda.test_probe import InjectedSource

POD = ("llm", "vllm-0", "vllm")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(families: Sequence[Metric]) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def ident(uuid: str, pod: tuple[str, str, str], pool: str) -> dict[str, str]:
    namespace, name, container = pod
    return {"uuid": uuid, "namespace": namespace, "pod": name, "container": container, "pool": pool}


@pytest.fixture
def gpus() -> Iterator[fake_nvml.FakeNvmlLib]:
    lib = fake_nvml.FakeNvmlLib(
        [
            fake_nvml.FakeGpu(uuid=UUID_A, processes=[fake_nvml.FakeProcess(100, 300 * MiB)]),
            fake_nvml.FakeGpu(uuid=UUID_B, pci_bus_id="00000000:01:00.0"),
        ]
    )
    fake_nvml.install(lib)
    yield lib
    fake_nvml.uninstall()


async def test_publishes_the_catalog_attributed_to_the_pod(
    host: FakeHost, nvml: Nvml, gpus: fake_nvml.FakeNvmlLib
) -> None:
    host.add_process(100, pod=POD)
    host.write_probe(100, retries=4)
    found = samples(await make_collector(host, nvml).update())

    pre = "inferwatch_cuda_allocator"
    all_pool = ident(UUID_A, POD, "all")
    # 40 MiB reserved: a 20 MiB segment with every other 2 MiB block free, and a 20 MiB free one.
    assert value(found, f"{pre}_reserved_bytes", **all_pool) == 40 * MiB
    assert value(found, f"{pre}_allocated_bytes", **all_pool) == 10 * MiB
    assert value(found, f"{pre}_inactive_split_bytes", **all_pool) == 10 * MiB
    assert value(found, f"{pre}_free_bytes", **all_pool) == 30 * MiB
    assert value(found, f"{pre}_largest_free_block_bytes", **all_pool) == 20 * MiB
    assert value(found, f"{pre}_reserved_bytes", **ident(UUID_A, POD, "large")) == 40 * MiB
    assert value(found, f"{pre}_reserved_bytes", **ident(UUID_A, POD, "small")) == 0
    assert value(found, f"{pre}_reserved_bytes", **ident(UUID_A, POD, "private")) == 0
    assert value(found, f"{pre}_alloc_retries_total", **all_pool) == 4
    assert value(found, f"{pre}_ooms_total", **all_pool) == 0
    assert value(found, f"{pre}_device_allocs_total", **all_pool) == 1
    assert value(found, f"{pre}_device_frees_total", **all_pool) == 0
    info = {**all_pool, "backend": "native", "expandable_segments": "false"}
    assert value(found, f"{pre}_info", **info, torch_version="2.13.0+cu128") == 1
    age_seconds = value(found, f"{pre}_probe_age_seconds", **all_pool)
    assert age_seconds is not None and 0 <= age_seconds < 60
    assert value(found, f"{pre}_process_start_time_seconds", **all_pool) == 1_700_000_000.0
    # NVML says the process uses 300 MiB; 40 MiB of it is the allocator's.
    assert value(found, f"{pre}_outside_bytes", **all_pool) == 260 * MiB
    assert all("pid" not in dict(labels) for _, labels in found)


async def test_stale_dead_and_bad_files(
    host: FakeHost, nvml: Nvml, caplog: pytest.LogCaptureFixture
) -> None:
    host.add_process(100, pod=POD)
    host.add_process(101, start_ticks=5555)  # pid 101 was reused by a later process
    good = host.write_probe(100)
    gone = host.write_probe(200)  # no /proc/200
    reused = host.write_probe(101, start_ticks=1000)
    old = host.write_probe(100, hostname="other")
    age(old, 3600)
    corrupt = host.probe_dir / "broken-1.json"
    corrupt.write_text('{"format": "inferwatch-probe/1", "pid": 1')
    wrong = host.probe_dir / "wrong-2.json"
    wrong.write_text(json.dumps({"format": "inferwatch-probe/1", "pid": "x"}))
    half = host.probe_dir / f"{files.TEMP_PREFIX}node-100.json.abc"
    half.write_text('{"format": ')
    other = host.probe_dir / "README"
    other.write_text("not a probe file")

    collector = make_collector(host, nvml, nvml_join=False)
    with caplog.at_level(logging.WARNING):
        found = samples(await collector.update())
        found_again = samples(await collector.update())

    remaining = sorted(p.name for p in host.probe_dir.iterdir())
    assert remaining == sorted([good.name, corrupt.name, wrong.name, half.name, other.name])
    assert not gone.exists() and not reused.exists() and not old.exists()
    skipped = [r.getMessage() for r in caplog.records if "skipping probe file" in r.getMessage()]
    assert len(skipped) == 2  # once per bad file, not once per refresh
    assert any("broken-1.json" in m for m in skipped)
    uuids = {dict(labels)["pod"] for name, labels in found if name.endswith("reserved_bytes")}
    assert uuids == {"vllm-0"}
    assert found.keys() == found_again.keys()


async def test_keep_files_when_removal_is_off(host: FakeHost, nvml: Nvml) -> None:
    gone = host.write_probe(200)
    found = samples(await make_collector(host, nvml, remove_stale=False, nvml_join=False).update())
    assert gone.exists()
    assert not any(name.endswith("reserved_bytes") for name, _ in found)


async def test_a_process_in_its_own_pid_namespace_is_found_through_nvml(
    host: FakeHost, nvml: Nvml, gpus: fake_nvml.FakeNvmlLib
) -> None:
    # Inside its pod the server is pid 7; on the host (and in NVML) it is pid 100.
    host.add_process(100, pod=POD, inner_pid=7)
    host.write_probe(7, pid_namespace="pid:[4026532999]")
    # Another pod's process NVML does not list (yet): kept, published without pod labels.
    unknown = host.write_probe(9, pid_namespace="pid:[4026533000]", uuid=UUID_B)

    found = samples(await make_collector(host, nvml).update())
    assert value(
        found, "inferwatch_cuda_allocator_reserved_bytes", **ident(UUID_A, POD, "all")
    ) == (40 * MiB)
    assert value(found, "inferwatch_cuda_allocator_outside_bytes", **ident(UUID_A, POD, "all")) == (
        260 * MiB
    )
    assert unknown.exists()
    assert value(
        found, "inferwatch_cuda_allocator_reserved_bytes", **ident(UUID_B, ("", "", ""), "all")
    ) == (40 * MiB)


async def test_processes_sharing_labels_are_summed(host: FakeHost, nvml: Nvml) -> None:
    host.add_process(100, pod=POD)
    host.add_process(101, pod=POD)
    for pid in (100, 101):
        host.write_probe(pid, retries=1)
    found = samples(await make_collector(host, nvml, nvml_join=False).update())
    all_pool = ident(UUID_A, POD, "all")
    assert value(found, "inferwatch_cuda_allocator_reserved_bytes", **all_pool) == 80 * MiB
    assert value(found, "inferwatch_cuda_allocator_largest_free_block_bytes", **all_pool) == (
        20 * MiB
    )
    assert value(found, "inferwatch_cuda_allocator_alloc_retries_total", **all_pool) == 2


async def test_without_nvml_or_directory_it_still_works(
    tmp_path: Path, host: FakeHost, nvml: Nvml
) -> None:
    host.add_process(100, pod=POD)
    host.write_probe(100, snapshot=False)
    found = samples(await make_collector(host, nvml).update())  # no NVML library here
    all_pool = ident(UUID_A, POD, "all")
    assert value(found, "inferwatch_cuda_allocator_reserved_bytes", **all_pool) == 40 * MiB
    assert value(found, "inferwatch_cuda_allocator_free_bytes", **all_pool) is None
    assert value(found, "inferwatch_cuda_allocator_outside_bytes", **all_pool) is None

    host.probe_dir.rename(tmp_path / "elsewhere")
    with pytest.raises(NoDataError, match="no_probe_files"):  # success, with nothing to say
        await make_collector(host, nvml).update()


async def test_reads_what_the_real_probe_writes(tmp_path: Path, nvml: Nvml) -> None:
    source = InjectedSource()
    source.initialized = True
    probe = Probe(ProbeConfig(directory=tmp_path), source, environ={})
    assert probe.tick()
    host_proc = "/proc"  # this process is alive there, in this pid namespace
    collector = make_collector(
        type("Host", (), {"probe_dir": tmp_path, "proc": Path(host_proc)})(),  # type: ignore[arg-type]
        nvml,
        nvml_join=False,
    )
    found = samples(await collector.update())
    reserved = {
        dict(labels)["pool"]: v
        for (name, labels), v in found.items()
        if name == "inferwatch_cuda_allocator_reserved_bytes"
    }
    assert reserved == {"all": 20 * MiB, "large": 20 * MiB, "small": 0, "private": 0}
    assert probe.path.exists()
    probe.stop()


def test_unchanged_files_are_not_parsed_again(host: FakeHost, nvml: Nvml) -> None:
    host.add_process(100)
    path = host.write_probe(100)
    directory = make_collector(host, nvml).directory
    first = directory.scan(os.path.getmtime(path))
    second = directory.scan(os.path.getmtime(path))
    assert first and first[0] is second[0]
    path.write_text(path.read_text().replace('"pid": 100', '"pid": 100 '))
    third = directory.scan(os.path.getmtime(path))
    assert third[0] is not first[0] and third[0] == first[0]
