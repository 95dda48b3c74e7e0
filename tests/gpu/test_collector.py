"""The GPU collector against the fake NVML under the real pynvml, scenario by scenario."""

from __future__ import annotations

import asyncio
import ctypes.util
from collections.abc import Callable

import aiohttp
import pynvml
import pytest

from exporter.collectors.base import CollectorContext, NoDataError
from exporter.collectors.gpu import GpuCollector, GpuSettings
from exporter.nvml import Nvml, NvmlBusyError
from exporter.scheduler import refresh_once
from exporter.simulate.fake_nvml import FakeGpu
from exporter.simulate.scenarios import GiB, Scenario, default, large, mig
from exporter.snapshot import SnapshotStore
from tests.gpu.conftest import Rig, eventually, pick, samples

MakeRig = Callable[..., Rig]


async def test_default_scenario_reports_every_gpu_in_base_units(make_rig: MakeRig) -> None:
    scenario = default()
    rig = make_rig(scenario)
    found = await rig.collect()

    assert pick(found, "inferwatch_gpu_devices") == [4.0]
    assert sorted(pick(found, "inferwatch_gpu_up")) == [1.0] * 4
    gpu0 = scenario.gpus[0]
    labels = {"gpu": "0", "uuid": gpu0.uuid}
    assert pick(found, "inferwatch_gpu_memory_total_bytes", **labels) == [80 * GiB]
    assert pick(found, "inferwatch_gpu_memory_used_bytes", **labels) == [70 * GiB]
    assert pick(found, "inferwatch_gpu_memory_reserved_bytes", **labels) == [512 * 2**20]
    assert pick(found, "inferwatch_gpu_memory_free_bytes", **labels) == [
        80 * GiB - 70 * GiB - 512 * 2**20
    ]
    assert pick(found, "inferwatch_gpu_utilization_ratio", **labels) == [0.85]
    assert pick(found, "inferwatch_gpu_power_watts", **labels) == [gpu0.power_mw / 1000]
    assert pick(found, "inferwatch_gpu_power_limit_watts", **labels) == [700.0]
    assert pick(found, "inferwatch_gpu_clock_hertz", clock="memory", **labels) == [2619e6]
    assert pick(found, "inferwatch_gpu_temperature_celsius", sensor="memory", **labels) == [45.0]
    assert pick(found, "inferwatch_gpu_ecc_errors_total", type="uncorrected", **labels) == [0.0]
    (info,) = [ls for (n, ls) in found if n == "inferwatch_gpu_info" and ("gpu", "0") in ls]
    assert dict(info) == {
        "gpu": "0",
        "uuid": gpu0.uuid,
        "name": "NVIDIA H100 80GB HBM3",
        "pci_bus_id": "00000000:18:00.0",
        "driver_version": "580.65.06",
        "cuda_version": "13.0",
        "mig_mode": "disabled",
    }


async def test_changes_in_nvml_show_up_on_the_next_refresh(make_rig: MakeRig) -> None:
    scenario = default()
    rig = make_rig(scenario)
    await rig.collect()
    gpu = scenario.gpus[2]
    gpu.energy_mj = 5_000_000
    gpu.clocks_event_reasons = (
        pynvml.nvmlClocksEventReasonHwThermalSlowdown | pynvml.nvmlClocksEventReasonSwPowerCap
    )
    gpu.ecc_corrected = 7
    found = await rig.collect()
    labels = {"gpu": "2", "uuid": gpu.uuid}
    assert pick(found, "inferwatch_gpu_energy_joules_total", **labels) == [5000.0]
    active = {
        dict(ls)["reason"]
        for (n, ls), v in found.items()
        if n == "inferwatch_gpu_throttle_active" and ("gpu", "2") in ls and v == 1.0
    }
    assert active == {"hw_thermal_slowdown", "sw_power_cap"}
    assert len(pick(found, "inferwatch_gpu_throttle_active", **labels)) == 9
    assert pick(found, "inferwatch_gpu_ecc_errors_total", type="corrected", **labels) == [7.0]


async def test_process_memory_is_summed_per_pod_without_pids(make_rig: MakeRig) -> None:
    scenario = default()
    rig = make_rig(scenario)
    found = await rig.collect()
    rows = {
        (dict(ls)["gpu"], dict(ls)["namespace"], dict(ls)["pod"], dict(ls)["container"]): v
        for (n, ls), v in found.items()
        if n == "inferwatch_gpu_process_memory_bytes"
    }
    assert rows == {
        ("0", "llm", "vllm-llama-0", "vllm"): 70 * GiB,
        ("1", "llm", "vllm-llama-0", "vllm"): 70 * GiB,
        ("2", "llm", "sglang-qwen-0", "sglang"): 36 * GiB,  # two processes, one series
        ("3", "", "", ""): 12 * GiB,  # a host process: not in a pod
    }
    assert not any("pid" in dict(ls) for (_, ls) in found)


async def test_256_processes_on_8_gpus_all_accounted(make_rig: MakeRig) -> None:
    scenario = large()
    rig = make_rig(scenario)
    rig.lib.latency_s = 0.0  # the bench's driver latency is not what this test is about
    found = await rig.collect()
    total = sum(pick(found, "inferwatch_gpu_process_memory_bytes"))
    assert total == sum(p.used_bytes for g in scenario.gpus for p in g.processes)
    assert pick(found, "inferwatch_gpu_devices") == [8.0]


async def test_injected_xid_increments_the_counter(make_rig: MakeRig) -> None:
    scenario = default()
    rig = make_rig(scenario)
    await rig.collect()  # registers the devices for events
    uuid = scenario.gpus[2].uuid
    rig.lib.inject_xid(2, 31)
    rig.lib.inject_xid(2, 31)
    rig.lib.inject_xid(2, 94)

    async def xids() -> list[float]:
        found = await rig.collect()
        return pick(found, "inferwatch_gpu_xid_errors_total", gpu="2", uuid=uuid, xid="31")

    for _ in range(100):  # the event thread counts asynchronously
        if await xids() == [2.0]:
            break
        await asyncio.sleep(0.05)
    found = await rig.collect()
    assert pick(found, "inferwatch_gpu_xid_errors_total", uuid=uuid, xid="31") == [2.0]
    assert pick(found, "inferwatch_gpu_xid_errors_total", uuid=uuid, xid="94") == [1.0]
    assert sorted(pick(found, "inferwatch_gpu_up")) == [1.0] * 4  # not a lost-GPU Xid


async def test_lost_gpu_reports_up_0_while_the_others_keep_reporting(make_rig: MakeRig) -> None:
    scenario = default()
    rig = make_rig(scenario)
    await rig.collect()
    lost = scenario.gpus[1]
    rig.lib.set_lost(1, True)
    found = await rig.collect()
    assert pick(found, "inferwatch_gpu_up", uuid=lost.uuid) == [0.0]
    assert pick(found, "inferwatch_gpu_info", uuid=lost.uuid) == [1.0]  # identity kept
    assert pick(found, "inferwatch_gpu_memory_used_bytes", uuid=lost.uuid) == []
    for other in (0, 2, 3):
        uuid = scenario.gpus[other].uuid
        assert pick(found, "inferwatch_gpu_up", uuid=uuid) == [1.0]
        assert len(pick(found, "inferwatch_gpu_memory_used_bytes", uuid=uuid)) == 1

    rig.lib.set_lost(1, False)
    found = await rig.collect()  # the lost GPU made the collector re-initialize NVML
    assert pick(found, "inferwatch_gpu_up", uuid=lost.uuid) == [1.0]
    assert pick(found, "inferwatch_gpu_memory_used_bytes", uuid=lost.uuid) == [70 * GiB]


async def test_xid_79_marks_the_gpu_lost_and_is_counted(make_rig: MakeRig) -> None:
    scenario = default()
    rig = make_rig(scenario)
    await rig.collect()
    rig.lib.inject_xid(0, 79)
    uuid = scenario.gpus[0].uuid
    found = await rig.collect()
    assert pick(found, "inferwatch_gpu_up", uuid=uuid) == [0.0]

    async def counted() -> bool:
        got = pick(await rig.collect(), "inferwatch_gpu_xid_errors_total", uuid=uuid, xid="79")
        return got == [1.0]

    for _ in range(100):
        if await counted():
            break
        await asyncio.sleep(0.05)
    assert await counted()


async def test_gpu_that_vanishes_stays_listed_as_down(make_rig: MakeRig) -> None:
    scenario = default()
    rig = make_rig(scenario)
    await rig.collect()
    gone = scenario.gpus.pop()  # after a re-init NVML no longer enumerates it
    rig.nvml.reset()
    found = await rig.collect()
    assert pick(found, "inferwatch_gpu_devices") == [3.0]
    assert pick(found, "inferwatch_gpu_up", gpu="3", uuid=gone.uuid) == [0.0]


async def test_not_supported_drops_only_that_metric_and_is_not_retried(make_rig: MakeRig) -> None:
    scenario = default()
    scenario.gpus[1].not_supported = {"nvmlDeviceGetPowerUsage", "field:82"}
    rig = make_rig(scenario)
    found = await rig.collect()
    uuid1 = scenario.gpus[1].uuid
    assert pick(found, "inferwatch_gpu_up", uuid=uuid1) == [1.0]
    assert pick(found, "inferwatch_gpu_power_watts", uuid=uuid1) == []
    assert pick(found, "inferwatch_gpu_temperature_celsius", uuid=uuid1, sensor="memory") == []
    assert pick(found, "inferwatch_gpu_temperature_celsius", uuid=uuid1, sensor="gpu") == [40.0]
    assert pick(found, "inferwatch_gpu_power_limit_watts", uuid=uuid1) == [700.0]
    assert len(pick(found, "inferwatch_gpu_power_watts")) == 3  # the other GPUs still report
    calls = rig.lib.calls["nvmlDeviceGetPowerUsage"]
    await rig.collect()
    assert rig.lib.calls["nvmlDeviceGetPowerUsage"] == calls + 3  # GPU 1 not asked again


async def test_older_driver_without_symbols_falls_back_or_drops(make_rig: MakeRig) -> None:
    scenario = default()
    rig = make_rig(scenario)
    rig.lib.missing |= {
        "nvmlDeviceGetTemperatureV",
        "nvmlDeviceGetMemoryInfo_v2",
        "nvmlDeviceGetTotalEnergyConsumption",
    }
    found = await rig.collect()
    uuid = scenario.gpus[0].uuid
    assert pick(found, "inferwatch_gpu_temperature_celsius", uuid=uuid, sensor="gpu") == [40.0]
    # v1 memory: `used` includes the reservation, and there is no reserved series.
    assert pick(found, "inferwatch_gpu_memory_used_bytes", uuid=uuid) == [70 * GiB + 512 * 2**20]
    assert pick(found, "inferwatch_gpu_memory_reserved_bytes") == []
    assert pick(found, "inferwatch_gpu_energy_joules_total") == []
    assert sorted(pick(found, "inferwatch_gpu_up")) == [1.0] * 4


async def test_mig_gpu_reports_instances_and_no_utilization(make_rig: MakeRig) -> None:
    scenario = mig()
    rig = make_rig(scenario)
    found = await rig.collect()
    a100 = scenario.gpus[0].uuid
    (info,) = [dict(ls) for (n, ls) in found if n == "inferwatch_gpu_info" and ("uuid", a100) in ls]
    assert info["mig_mode"] == "enabled"
    assert pick(found, "inferwatch_gpu_utilization_ratio", uuid=a100) == []
    assert len(pick(found, "inferwatch_gpu_utilization_ratio")) == 1  # the H100 still has it
    assert pick(found, "inferwatch_gpu_mig_memory_total_bytes", uuid=a100, gpu_instance_id="1") == [
        40 * GiB
    ]
    assert pick(found, "inferwatch_gpu_mig_memory_used_bytes", uuid=a100, gpu_instance_id="1") == [
        30 * GiB
    ]
    assert len(pick(found, "inferwatch_gpu_mig_info", uuid=a100)) == 3
    assert pick(found, "inferwatch_gpu_process_memory_bytes", uuid=a100, pod="triton-0") == [
        8 * GiB
    ]


async def test_hung_nvml_call_times_out_drops_series_then_recovers(make_rig: MakeRig) -> None:
    rig = make_rig(default(), timeout_seconds=0.2)
    store = SnapshotStore(["gpu"])
    assert await refresh_once(rig.collector, store)
    assert samples(list(store.status["gpu"].snapshot.families))

    with rig.lib.hang():
        assert not await refresh_once(rig.collector, store)  # timed out
        assert store.status["gpu"].snapshot.families == ()  # series dropped, not frozen
        assert not await refresh_once(rig.collector, store)  # the stuck call blocks the next
        text = store.exposition(openmetrics=False, gzipped=False).decode()
        assert 'inferwatch_exporter_collector_success{collector="gpu"} 0.0' in text
        assert "inferwatch_gpu_up" not in text
        # Once the call counts as hung, new jobs fail fast instead of queueing behind it.
        rig.nvml.hung_after_seconds = 0.0
        with pytest.raises(NvmlBusyError):
            await rig.nvml.run(lambda: None)
    # The stuck call returns; the worker is free again.
    assert await eventually(lambda: rig.nvml.idle)
    assert await refresh_once(rig.collector, store)
    text = store.exposition(openmetrics=False, gzipped=False).decode()
    assert 'inferwatch_exporter_collector_success{collector="gpu"} 1.0' in text
    assert "inferwatch_gpu_up{" in text


@pytest.mark.skipif(
    ctypes.util.find_library("nvidia-ml") is not None, reason="a real NVML is installed here"
)
async def test_nvml_library_missing_is_no_data_on_a_cpu_node(
    http: aiohttp.ClientSession,
) -> None:
    assert pynvml.nvmlLib is None  # nothing installed: pynvml will try to load the real library
    nvml = Nvml()
    try:
        collector = GpuCollector(GpuSettings(), CollectorContext(http=http, nvml=nvml))
        with pytest.raises(NoDataError, match="nvml_unavailable"):
            await collector.update()
        store = SnapshotStore(["gpu"])
        assert await refresh_once(collector, store)  # a CPU node: no data, not a failure
        assert store.status["gpu"].errors_total == 0
        assert store.status["gpu"].snapshot.no_data == "nvml_unavailable"
    finally:
        nvml.close()


async def test_driver_not_loaded_fails_the_collector_with_a_clear_error(
    make_rig: MakeRig,
) -> None:
    rig = make_rig(default())
    rig.lib.init_error = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    with pytest.raises(pynvml.NVMLError, match="Driver Not Loaded"):
        await rig.collector.update()
    rig.lib.init_error = pynvml.NVML_SUCCESS  # driver loaded later: the next refresh works
    assert pick(await rig.collect(), "inferwatch_gpu_devices") == [4.0]


def _scenario_with(gpus: list[FakeGpu]) -> Scenario:
    return Scenario("t", "test", gpus, {})


async def test_gpu_unopenable_from_the_start_is_down_with_index_only(make_rig: MakeRig) -> None:
    scenario = _scenario_with([FakeGpu(uuid="GPU-a"), FakeGpu(uuid="GPU-b", lost=True)])
    rig = make_rig(scenario)
    found = await rig.collect()
    assert pick(found, "inferwatch_gpu_up", gpu="0", uuid="GPU-a") == [1.0]
    assert pick(found, "inferwatch_gpu_up", gpu="1", uuid="") == [0.0]
    assert pick(found, "inferwatch_gpu_info", gpu="1") == []
