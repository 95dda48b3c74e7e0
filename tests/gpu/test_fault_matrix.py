"""The NVML error policy, case by case: every NVML call the gpu collector makes x each return
code a driver can give it -> exactly which series a user sees and what `inferwatch_gpu_up` says.

The cases are generated from two tables: CALLS (which series each call feeds, and what a
fallback call restores) and the policy's reading of each code. GPU 1 of two gets the fault; GPU 0
must be untouched, and every error is counted in inferwatch_exporter_nvml_errors_total.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import pynvml
import pytest

from exporter.nvml import UNKNOWN_LOST_REFRESHES
from exporter.simulate.fake_nvml import FakeGpu, FakeProcess
from exporter.simulate.scenarios import PodSpec, Scenario, SimProcess
from tests.gpu.conftest import Rig, Samples, eventually, samples

MakeRig = Callable[..., Rig]
P = "inferwatch_gpu_"


@dataclass(frozen=True)
class Call:
    """What one NVML call feeds: series (name, extra label) dropped when it fails, and the part a
    fallback call brings back when it answers NOT_SUPPORTED."""

    feeds: frozenset[tuple[str, str]] = frozenset()
    fallback_restores: frozenset[tuple[str, str]] = frozenset()
    identity: bool = False
    info_field: str = ""  # identity calls: the info label left empty on failure
    once_per_init: bool = False  # asked until it answers, then not again until NVML re-inits


def _feeds(*names: str) -> frozenset[tuple[str, str]]:
    return frozenset((n if ":" not in n else n.split(":")[0], n.split(":")[1] if ":" in n else "")
                     for n in names)  # fmt: skip


MEMORY = ("memory_total_bytes", "memory_used_bytes", "memory_free_bytes")
LINKS = 2  # NVLink links of the matrix's GPUs
NVLINK_UP = tuple(f"nvlink_up:{link}" for link in range(LINKS))
NVLINK_ERRORS = tuple(f"nvlink_errors_total:{link}" for link in range(LINKS))
GPM = tuple(
    f"gpm_{name}"
    for name in (
        "sm_utilization_ratio",
        "sm_occupancy_ratio",
        "tensor_utilization_ratio",
        "dram_bandwidth_utilization_ratio",
        "pcie_bytes_per_second",
        "nvlink_bytes_per_second",
    )
)
CALLS: dict[str, Call] = {
    "nvmlDeviceGetHandleByIndex_v2": Call(identity=True),
    "nvmlDeviceGetUUID": Call(identity=True),
    "nvmlDeviceGetName": Call(identity=True, info_field="name"),
    "nvmlDeviceGetPciInfo_v3": Call(identity=True, info_field="pci_bus_id"),
    "nvmlDeviceRegisterEvents": Call(),
    "nvmlDeviceGetMigMode": Call(info_field="mig_mode"),
    "nvmlDeviceGetMemoryInfo_v2": Call(
        _feeds(*MEMORY, "memory_reserved_bytes"), fallback_restores=_feeds(*MEMORY)
    ),
    "nvmlDeviceGetUtilizationRates": Call(
        _feeds("utilization_ratio", "memory_copy_utilization_ratio")
    ),
    "nvmlDeviceGetTemperatureV": Call(
        _feeds("temperature_celsius:gpu"), fallback_restores=_feeds("temperature_celsius:gpu")
    ),
    "nvmlDeviceGetPowerUsage": Call(_feeds("power_watts")),
    "nvmlDeviceGetEnforcedPowerLimit": Call(_feeds("power_limit_watts")),
    "nvmlDeviceGetTotalEnergyConsumption": Call(_feeds("energy_joules_total")),
    "nvmlDeviceGetClockInfo": Call(_feeds("clock_hertz")),
    "nvmlDeviceGetCurrentClocksEventReasons": Call(
        _feeds("throttle_active"), fallback_restores=_feeds("throttle_active")
    ),
    "nvmlDeviceGetFieldValues": Call(
        _feeds(
            "ecc_errors_total",
            "temperature_celsius:memory",
            "recovery_action",
            *NVLINK_UP,
            *NVLINK_ERRORS,
        )
    ),
    "nvmlDeviceGetRemappedRows": Call(
        _feeds("remapped_rows", "row_remap_pending", "row_remap_failure")
    ),
    "nvmlDeviceGetPcieReplayCounter": Call(_feeds("pcie_replays_total")),
    "nvmlDeviceGetCurrPcieLinkGeneration": Call(_feeds("pcie_link_generation:current")),
    "nvmlDeviceGetMaxPcieLinkGeneration": Call(_feeds("pcie_link_generation:max")),
    "nvmlDeviceGetCurrPcieLinkWidth": Call(_feeds("pcie_link_width:current")),
    "nvmlDeviceGetMaxPcieLinkWidth": Call(_feeds("pcie_link_width:max")),
    "nvmlDeviceGetNvLinkState": Call(_feeds(*NVLINK_UP, *NVLINK_ERRORS)),
    "nvmlDeviceGetNvLinkErrorCounter": Call(_feeds(*NVLINK_ERRORS)),
    "nvmlGpmQueryDeviceSupport": Call(_feeds(*GPM), once_per_init=True),
    "nvmlGpmSampleGet": Call(_feeds(*GPM)),
    "nvmlDeviceGetComputeRunningProcesses_v3": Call(_feeds("process_memory_bytes")),
}
LOST = ("GPU_IS_LOST", "RESET_REQUIRED")
UNSUPPORTED = ("NOT_SUPPORTED",)
TRANSIENT = ("NO_PERMISSION", "UNKNOWN", "TIMEOUT")
CODES = (*LOST, *UNSUPPORTED, *TRANSIENT)


def _scenario() -> Scenario:
    pod = PodSpec("llm", "vllm-0", "server")
    procs = {100: SimProcess(100, "python -m vllm", pod), 101: SimProcess(101, "python -m vllm")}
    gpus = [FakeGpu(uuid=f"GPU-{i}", pci_bus_id=f"00000000:{i + 1:02X}:00.0") for i in range(2)]
    for i, gpu in enumerate(gpus):
        gpu.processes = [FakeProcess(100 + i, (i + 1) * 2**30)]
        gpu.ecc_corrected = 3
        gpu.nvlink_links = LINKS
    return Scenario("matrix", "fault matrix", gpus, procs)


def series(found: Samples, gpu: str) -> dict[tuple[str, str], list[float]]:
    """GPU `gpu`'s samples by (name without prefix, sensor or link; other labels merged)."""
    out: dict[tuple[str, str], list[float]] = {}
    for (name, labels), value in found.items():
        d = dict(labels)
        if d.get("gpu") != gpu or not name.startswith(P):
            continue
        key = (name.removeprefix(P), d.get("sensor") or d.get("link", ""))
        out.setdefault(key, []).append(value)
    return out


def other_gpu_series(found: Samples) -> Samples:
    return {k: v for k, v in found.items() if dict(k[1]).get("gpu") == "0"}


@dataclass
class Expect:
    up: float | None  # None: GPU 1 is not listed at all
    uuid: str = "GPU-1"
    dropped: set[tuple[str, str]] = field(default_factory=set)
    info: dict[str, str] = field(default_factory=dict)


def expected(call: str, code: str) -> Expect:
    spec = CALLS[call]
    if code in LOST:
        if call in ("nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetUUID"):
            return Expect(up=0.0, uuid="")  # never named: reported by index only
        return Expect(up=0.0)
    if spec.identity and not spec.info_field:
        return Expect(up=None)  # cannot be named this refresh, and was never seen: not listed
    dropped = set(spec.feeds)
    if code in UNSUPPORTED:
        dropped -= spec.fallback_restores
    info = {spec.info_field: "unsupported" if call == "nvmlDeviceGetMigMode" else ""}
    return Expect(up=1.0, dropped=dropped, info=info if spec.info_field else {})


CASES = list(itertools.product(CALLS, CODES))


@pytest.mark.parametrize(("call", "code"), CASES, ids=[f"{c}-{k}" for c, k in CASES])
async def test_fault_matrix(make_rig: MakeRig, call: str, code: str) -> None:
    # Two refreshes each: GPM metrics need two samples.
    baseline_rig = make_rig(_scenario(), gpm=True)
    await baseline_rig.collect()
    baseline = await baseline_rig.collect()
    await baseline_rig.collector.close()

    scenario = _scenario()
    scenario.gpus[1].errors[call] = int(getattr(pynvml, f"NVML_ERROR_{code}"))
    rig = make_rig(scenario, gpm=True)
    await rig.collect()
    found = await rig.collect()
    want = expected(call, code)

    if code in LOST:  # NVML is re-initialized: GPM starts over (two samples) on every GPU
        found = {k: v for k, v in found.items() if not k[0].startswith(P + "gpm_")}
        baseline = {k: v for k, v in baseline.items() if not k[0].startswith(P + "gpm_")}
    assert other_gpu_series(found) == other_gpu_series(baseline), "GPU 0 must be untouched"
    ups = {dict(k[1]).get("uuid"): v for k, v in found.items() if k[0] == P + "up"}
    if want.up is None:
        assert set(ups) == {"GPU-0"}
    else:
        assert ups[want.uuid] == want.up
    got, base = series(found, "1"), series(baseline, "1")
    if want.up == 1.0:
        assert set(got) == set(base) - want.dropped
        fallback = CALLS[call].fallback_restores  # another call's answer: may differ
        for key in set(got) - fallback - {("info", "")}:
            assert got[key] == base[key], key
        info = next(dict(k[1]) for k in found if k[0] == P + "info" and dict(k[1])["gpu"] == "1")
        for label, value in want.info.items():
            assert info[label] == value
    elif want.up == 0.0:
        assert set(got) <= {("up", ""), ("info", "")}  # nothing but "it is lost"

    errors = samples(rig.nvml.error_families())
    counted = errors.get(
        ("inferwatch_exporter_nvml_errors_total", (("call", call), ("code", code)))
    )
    assert counted is not None and counted >= 1


@pytest.mark.parametrize("call", [c for c, s in CALLS.items() if s.feeds and not s.once_per_init])
async def test_transient_errors_heal_and_unsupported_ones_stay_dropped(
    make_rig: MakeRig, call: str
) -> None:
    for code in ("TIMEOUT", "NOT_SUPPORTED"):
        scenario = _scenario()
        rig = make_rig(scenario, gpm=True)
        await rig.collect()
        baseline = series(await rig.collect(), "1")
        scenario.gpus[1].errors[call] = int(getattr(pynvml, f"NVML_ERROR_{code}"))
        await rig.collect()
        del scenario.gpus[1].errors[call]
        await rig.collect()  # GPM: the first sample after a gap
        healed = series(await rig.collect(), "1")
        if code == "TIMEOUT":
            assert healed == baseline
        else:  # not asked again: the fallback (if any) keeps answering
            lost = set(CALLS[call].feeds) - CALLS[call].fallback_restores
            assert set(baseline) - set(healed) == {k for k in baseline if k in lost}
        await rig.collector.close()


async def test_unknown_from_every_call_for_n_refreshes_means_lost(make_rig: MakeRig) -> None:
    scenario = _scenario()
    rig = make_rig(scenario)
    await rig.collect()  # named and registered while healthy
    unknown = int(pynvml.NVML_ERROR_UNKNOWN)
    scenario.gpus[1].errors = {c: unknown for c in CALLS}
    for _ in range(UNKNOWN_LOST_REFRESHES - 1):
        found = await rig.collect()
        assert found[(P + "up", (("gpu", "1"), ("uuid", "GPU-1")))] == 1.0  # not lost yet
    found = await rig.collect()
    assert found[(P + "up", (("gpu", "1"), ("uuid", "GPU-1")))] == 0.0
    assert found[(P + "up", (("gpu", "0"), ("uuid", "GPU-0")))] == 1.0


async def test_xid_counting_resumes_after_a_lost_gpu_comes_back(make_rig: MakeRig) -> None:
    scenario = _scenario()
    rig = make_rig(scenario, reinit_interval_seconds=0.001)
    key = (P + "xid_errors_total", (("gpu", "0"), ("uuid", "GPU-0"), ("xid", "48")))
    await rig.collect()  # registers both GPUs for Xid events
    rig.lib.inject_xid(0, 48)
    assert await eventually(lambda: rig.collector.xids.counts().get(("GPU-0", 48)) == 1)
    rig.lib.set_lost(0, True)  # the event wait now fails with GPU_IS_LOST
    assert await eventually(lambda: rig.collector.xids.paused)
    found = await rig.collect()
    assert found[(P + "up", (("gpu", "0"), ("uuid", "GPU-0")))] == 0.0
    rig.lib.set_lost(0, False)
    found = await rig.collect()  # NVML re-initialized: new handles, registered again
    assert found[(P + "up", (("gpu", "0"), ("uuid", "GPU-0")))] == 1.0
    assert rig.lib.registered(0)
    rig.lib.inject_xid(0, 48)
    assert await eventually(lambda: rig.collector.xids.counts().get(("GPU-0", 48)) == 2)
    assert (await rig.collect())[key] == 2.0


async def test_an_xid_before_registration_is_not_reported(make_rig: MakeRig) -> None:
    """Real NVML reports only events after registration; the fake must not buffer them."""
    scenario = _scenario()
    rig = make_rig(scenario)
    rig.lib.init_count += 1  # as if initialized, so the injection goes through the library
    rig.lib.inject_xid(1, 31)
    rig.lib.init_count -= 1
    found = await rig.collect()
    assert not [k for k in found if k[0] == P + "xid_errors_total"]


async def test_used_memory_not_available_is_left_out_not_zero(make_rig: MakeRig) -> None:
    scenario = _scenario()
    scenario.gpus[1].processes.append(FakeProcess(101, None))
    rig = make_rig(scenario)
    found = await rig.collect()
    per_pod = {
        dict(k[1])["pod"]: v
        for k, v in found.items()
        if k[0] == P + "process_memory_bytes" and dict(k[1])["gpu"] == "1"
    }
    assert per_pod == {"": 2 * 2**30}  # pid 101's usage is unknown: not summed in as 0


@pytest.mark.parametrize(
    "call",
    [
        "nvmlDeviceGetComputeInstanceId",
        "nvmlDeviceGetGpuInstanceId",
        "nvmlDeviceGetMaxMigDeviceCount",
    ],
)
@pytest.mark.parametrize("code", [*UNSUPPORTED, *TRANSIENT])
async def test_a_failing_mig_query_never_fails_the_collector(
    make_rig: MakeRig, call: str, code: str
) -> None:
    """One NOT_SUPPORTED from a MIG query used to drop every series of every GPU."""
    from exporter.simulate.scenarios import mig

    scenario = mig()
    scenario.gpus[0].errors[call] = int(getattr(pynvml, f"NVML_ERROR_{code}"))
    rig = make_rig(scenario)
    found = await rig.collect()
    ups = [v for k, v in found.items() if k[0] == P + "up"]
    assert ups == [1.0, 1.0]
    assert [k for k in found if k[0] == P + "memory_total_bytes"]  # the GPUs still report
    instances = [dict(k[1]) for k in found if k[0] == P + "mig_info"]
    if call == "nvmlDeviceGetMaxMigDeviceCount":
        assert instances == []  # the instances cannot be listed this refresh
    else:
        label = "compute_instance_id" if "Compute" in call else "gpu_instance_id"
        assert len(instances) == 3 and {i[label] for i in instances} == {""}
