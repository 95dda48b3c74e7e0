"""Fixtures for the GPU collector: the fake NVML under the real pynvml, and a collector on it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.core import Metric

from exporter.collectors.base import CollectorContext
from exporter.collectors.gpu import GpuCollector, GpuSettings
from exporter.nvml import Nvml
from exporter.simulate import fake_nvml, write_host_files
from exporter.simulate.fake_nvml import FakeGpu, FakeNvmlLib
from exporter.simulate.scenarios import BUILDERS, Scenario
from harness.wait import eventually_async

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(families: list[Metric]) -> Samples:
    """{(sample name, sorted labels): value} for easy asserts."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def pick(found: Samples, name: str, **labels: str) -> list[float]:
    """Values of every sample named `name` whose labels include `labels`."""
    want = set(labels.items())
    return [v for (n, ls), v in found.items() if n == name and want <= set(ls)]


eventually = eventually_async  # the GPU tests' name for the harness' bounded wait


@pytest.fixture
def install_fake() -> Iterator[Callable[[list[FakeGpu]], FakeNvmlLib]]:
    installed: list[FakeNvmlLib] = []

    def install(gpus: list[FakeGpu]) -> FakeNvmlLib:
        lib = FakeNvmlLib(gpus)
        fake_nvml.install(lib)
        installed.append(lib)
        return lib

    yield install
    for _ in installed:
        fake_nvml.uninstall()


@pytest.fixture
def scenario(request: pytest.FixtureRequest) -> Scenario:
    """A scenario by name (parametrize indirectly), default `default`."""
    return BUILDERS[getattr(request, "param", "default")]()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Rig:
    """A GPU collector on a fake NVML and a fake host /proc."""

    def __init__(self, lib: FakeNvmlLib, collector: GpuCollector, nvml: Nvml) -> None:
        self.lib = lib
        self.collector = collector
        self.nvml = nvml

    async def collect(self) -> Samples:
        return samples(list(await self.collector.update()))


@pytest.fixture
async def make_rig(
    tmp_path: Path,
    http: aiohttp.ClientSession,
    install_fake: Callable[[list[FakeGpu]], FakeNvmlLib],
) -> AsyncIterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(scenario: Scenario, **settings: Any) -> Rig:
        write_host_files(tmp_path, scenario.processes)
        lib = install_fake(scenario.gpus)
        nvml = Nvml()
        context = CollectorContext(http=http, nvml=nvml, proc_root=str(tmp_path / "proc"))
        collector = GpuCollector(GpuSettings(**settings), context)
        collector.xids.wait_ms = 20  # shorter event waits: quicker shutdown in tests
        rig = Rig(lib, collector, nvml)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        await rig.collector.close()
        rig.nvml.close()
