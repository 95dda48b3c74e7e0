"""GPU faults the way NVIDIA's tooling reads them: the action per Xid, sticky health that stays
until the GPU is recovered, a hung driver, GPM profiling, and Xids visible on the next scrape."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import pynvml
import pytest

from exporter.collectors.gpu import SCOPES, XID_CATALOG, xid_actions
from exporter.nvml import NvmlBusyError
from exporter.scheduler import refresh_once, watch_forever
from exporter.simulate import Simulation, SimulationInputError
from exporter.simulate.scenarios import default, mig
from exporter.snapshot import SnapshotStore
from tests.gpu.conftest import Rig, eventually, pick, samples

MakeRig = Callable[..., Rig]
P = "inferwatch_gpu_"
# The Xids that matter for A100/H100 inference (issue 17); each must be in the catalog.
INFERENCE_XIDS = (8, 13, 31, 32, 38, 43, 45, 48, 61, 62, 63, 64, 68, 69, 74, 79, 92, 94, 95)
INFERENCE_XIDS += (109, 110, 119, 120, 121, 136, 140, 143, *range(144, 151), 154, 155, 156)


# -- the Xid catalog ---------------------------------------------------------------------------


def test_the_catalog_covers_every_inference_xid_with_a_routable_scope() -> None:
    table = xid_actions()
    assert set(INFERENCE_XIDS) <= set(table)
    assert {entry.scope for entry in table.values()} <= set(SCOPES)
    # The routing the rules rely on, as NVIDIA's catalog gives it.
    assert table[13].action == "RESTART_APP" and table[13].scope == "application"
    assert table[31].scope == "application"
    assert table[79].action == "RESTART_BM" and table[79].scope == "node"
    assert table[119].action == "RESET_GPU" and table[119].scope == "gpu"
    assert table[154].scope == "none"  # its recovery action is published separately
    assert table[8].confirmed == "catalog"


def test_the_catalog_names_its_source_and_date() -> None:
    header = [line for line in XID_CATALOG.read_text().splitlines() if line.startswith("#")]
    text = "\n".join(header)
    assert "docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html" in text
    assert "Resolution Bucket (Immediate Action)" in text
    assert "read 20" in text


def test_a_malformed_catalog_fails_at_load_not_at_the_first_xid(tmp_path: Path) -> None:
    bad = tmp_path / "xids.csv"
    bad.write_text("# header\nxid,mnemonic,action,scope,confirmed\n13,X,RESTART_APP,pod,catalog\n")
    with pytest.raises(ValueError, match="Xid 13"):
        xid_actions(bad)


async def test_each_seen_xid_gets_its_action_and_scope(make_rig: MakeRig) -> None:
    rig = make_rig(default())
    await rig.collect()  # registers the GPUs for events
    for xid in (13, 79, 999):
        rig.lib.inject_xid(0, xid)
    assert await eventually(lambda: len(rig.collector.xids.counts()) == 3)
    found = await rig.collect()
    actions = {
        dict(k[1])["xid"]: (dict(k[1])["action"], dict(k[1])["scope"])
        for k in found
        if k[0] == P + "xid_action_info"
    }
    assert actions == {
        "13": ("RESTART_APP", "application"),
        "79": ("RESTART_BM", "node"),
        "999": ("UNKNOWN", "gpu"),  # not in the catalog: treated as a GPU fault, not ignored
    }
    assert pick(found, P + "xid_errors_total", xid="13") == [1.0]


async def test_no_xid_no_action_series(make_rig: MakeRig) -> None:
    found = await make_rig(default()).collect()
    assert not [k for k in found if k[0] == P + "xid_action_info"]


# -- sticky health -----------------------------------------------------------------------------


def _health(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], uuid: str
) -> dict[str, float]:
    def one(name: str, **labels: str) -> float:
        (value,) = pick(found, P + name, uuid=uuid, **labels)
        return value

    return {
        "recovery": one("recovery_action"),
        "pending": one("row_remap_pending"),
        "failure": one("row_remap_failure"),
        "uncorrectable": one("remapped_rows", bank="uncorrectable"),
    }


async def test_a_row_remap_stays_pending_until_the_gpu_is_reset(make_rig: MakeRig) -> None:
    scenario = default()
    rig = make_rig(scenario)
    uuid = scenario.gpus[0].uuid
    await rig.collect()
    assert _health(await rig.collect(), uuid) == {
        "recovery": 0.0,
        "pending": 0.0,
        "failure": 0.0,
        "uncorrectable": 0.0,
    }
    rig.lib.remap_row(0)
    for _ in range(3):  # sticky: every refresh, not for a fixed time
        found = await rig.collect()
        assert _health(found, uuid) == {
            "recovery": 1.0,
            "pending": 1.0,
            "failure": 0.0,
            "uncorrectable": 1.0,
        }
    assert pick(found, P + "recovery_action", uuid=uuid, action="gpu_reset") == [1.0]
    assert await eventually(lambda: rig.collector.xids.counts().get((uuid, 154)) == 1)

    rig.lib.reset_gpu(0)
    found = await rig.collect()
    assert _health(found, uuid) == {
        "recovery": 0.0,
        "pending": 0.0,
        "failure": 0.0,
        "uncorrectable": 1.0,  # the remap stays: it is applied, not undone
    }


async def test_a_remap_failure_survives_a_reset(make_rig: MakeRig) -> None:
    scenario = default()
    rig = make_rig(scenario)
    rig.lib.init_count += 1  # inject through the library before the first refresh
    rig.lib.remap_row(1, fail=True)
    rig.lib.reset_gpu(1)
    rig.lib.init_count -= 1
    found = await rig.collect()
    assert _health(found, scenario.gpus[1].uuid)["failure"] == 1.0


async def test_recovery_action_names_each_driver_value(make_rig: MakeRig) -> None:
    scenario = default()
    rig = make_rig(scenario)
    scenario.gpus[0].recovery_action = pynvml.NVML_GPU_RECOVERY_ACTION_DRAIN_AND_RESET
    found = await rig.collect()
    uuid = scenario.gpus[0].uuid
    assert pick(found, P + "recovery_action", uuid=uuid, action="drain_and_reset") == [4.0]


async def test_pcie_replays_and_a_degraded_link_are_visible(make_rig: MakeRig) -> None:
    scenario = default()
    gpu = scenario.gpus[0]
    gpu.pcie_replays, gpu.pcie_generation, gpu.pcie_width = 42, (3, 5), (8, 16)
    found = await make_rig(scenario).collect()
    assert pick(found, P + "pcie_replays_total", uuid=gpu.uuid) == [42.0]
    assert pick(found, P + "pcie_link_generation", uuid=gpu.uuid, link="current") == [3.0]
    assert pick(found, P + "pcie_link_generation", uuid=gpu.uuid, link="max") == [5.0]
    assert pick(found, P + "pcie_link_width", uuid=gpu.uuid, link="current") == [8.0]
    assert pick(found, P + "pcie_link_width", uuid=gpu.uuid, link="max") == [16.0]


async def test_nvlink_errors_per_link_and_a_down_link(make_rig: MakeRig) -> None:
    scenario = default()
    gpu = scenario.gpus[0]
    gpu.nvlink_links, gpu.nvlink_down = 4, {3}
    gpu.nvlink_errors[(1, pynvml.NVML_NVLINK_ERROR_DL_REPLAY)] = 7
    rig = make_rig(scenario)
    found = await rig.collect()
    ups = {dict(k[1])["link"]: v for k, v in found.items() if k[0] == P + "nvlink_up"
           and dict(k[1])["uuid"] == gpu.uuid}  # fmt: skip
    assert ups == {"0": 1.0, "1": 1.0, "2": 1.0, "3": 0.0}
    assert pick(found, P + "nvlink_errors_total", uuid=gpu.uuid, link="1", type="replay") == [7.0]
    # Hopper answers NOT_SUPPORTED for the CRC-data and ECC-data counters: only those dropped.
    types = {dict(k[1])["type"] for k in found if k[0] == P + "nvlink_errors_total"}
    assert types == {"replay", "recovery", "crc_flit"}
    assert not pick(found, P + "nvlink_errors_total", uuid=gpu.uuid, link="3")  # down: not read


async def test_a_board_without_nvlink_has_no_nvlink_series_and_no_errors(make_rig: MakeRig) -> None:
    scenario = default()
    for gpu in scenario.gpus:
        gpu.nvlink_links = 0
    rig = make_rig(scenario)
    found = await rig.collect()
    assert not [k for k in found if "nvlink" in k[0]]
    assert rig.lib.calls["nvmlDeviceGetNvLinkState"] == 0
    errors = samples(rig.nvml.error_families())
    assert not [k for k in errors if k[0] == "inferwatch_exporter_nvml_errors_total"]


# -- a hung driver -------------------------------------------------------------------------------


def _hang_samples(rig: Rig) -> tuple[float, dict[str, float]]:
    found = samples(rig.nvml.error_families())
    hung = found[("inferwatch_exporter_nvml_hung", ())]
    hangs = {
        dict(k[1])["call"]: v
        for k, v in found.items()
        if k[0] == "inferwatch_exporter_nvml_hangs_total"
    }
    return hung, hangs


async def test_a_hung_driver_call_is_published_and_counted_once(make_rig: MakeRig) -> None:
    rig = make_rig(default(), timeout_seconds=0.2)
    store = SnapshotStore(["gpu"])
    assert await refresh_once(rig.collector, store)
    assert _hang_samples(rig) == (0.0, {})
    rig.nvml.hung_after_seconds = 0.0  # any call still running at the next look is hung
    with rig.lib.hang():
        assert not await refresh_once(rig.collector, store)  # timed out inside the driver
        assert _hang_samples(rig)[0] == 1.0
        for _ in range(3):  # the same hang, seen again: counted once
            assert not await refresh_once(rig.collector, store)
        hung, hangs = _hang_samples(rig)
        assert hung == 1.0 and sum(hangs.values()) == 1.0
        (call,) = hangs
        assert call.startswith("nvmlDevice")  # the C function it is stuck in
        with pytest.raises(NvmlBusyError):
            await rig.nvml.run(lambda: None)
    assert await eventually(lambda: rig.nvml.idle)
    assert _hang_samples(rig)[0] == 0.0
    assert await refresh_once(rig.collector, store)


# -- GPM -------------------------------------------------------------------------------------------


async def test_gpm_is_off_by_default(make_rig: MakeRig) -> None:
    rig = make_rig(default())
    await rig.collect()
    found = await rig.collect()
    assert not [k for k in found if k[0].startswith(P + "gpm_")]
    assert rig.lib.calls["nvmlGpmQueryDeviceSupport"] == 0


async def test_gpm_metrics_in_base_units_from_the_second_refresh(make_rig: MakeRig) -> None:
    scenario = default()
    rig = make_rig(scenario, gpm=True)
    first = await rig.collect()
    assert not [k for k in first if k[0].startswith(P + "gpm_")]  # one sample is not a rate
    found = await rig.collect()
    uuid = scenario.gpus[0].uuid
    assert pick(found, P + "gpm_sm_utilization_ratio", uuid=uuid) == [0.40]
    assert pick(found, P + "gpm_sm_occupancy_ratio", uuid=uuid) == [0.25]
    assert pick(found, P + "gpm_tensor_utilization_ratio", uuid=uuid) == [0.30]
    assert pick(found, P + "gpm_dram_bandwidth_utilization_ratio", uuid=uuid) == [0.55]
    assert pick(found, P + "gpm_pcie_bytes_per_second", uuid=uuid, direction="rx") == [200 * 2**20]
    assert pick(found, P + "gpm_nvlink_bytes_per_second", uuid=uuid, direction="tx") == [
        1000 * 2**20
    ]
    # Samples are freed as they are replaced: one live sample per GPU.
    assert len(rig.lib._gpm_samples) == len(scenario.gpus)


async def test_gpm_on_a_gpu_without_it_is_asked_once_and_dropped(make_rig: MakeRig) -> None:
    scenario = mig()  # GPU 0 is an A100: no GPM; GPU 1 an H100
    rig = make_rig(scenario, gpm=True)
    for _ in range(3):
        found = await rig.collect()
    assert not pick(found, P + "gpm_sm_utilization_ratio", uuid=scenario.gpus[0].uuid)
    assert pick(found, P + "gpm_sm_utilization_ratio", uuid=scenario.gpus[1].uuid)
    assert rig.lib.calls["nvmlGpmQueryDeviceSupport"] == 2  # once per GPU and NVML init
    assert rig.lib.calls["nvmlGpmMigSampleGet"] == 0


async def test_gpm_per_mig_gpu_instance(make_rig: MakeRig) -> None:
    scenario = mig()
    scenario.gpus[0].gpm_supported = True  # as an H100 in MIG mode (the A100 has no GPM)
    rig = make_rig(scenario, gpm=True)
    await rig.collect()
    found = await rig.collect()
    instances = {
        dict(k[1])["gpu_instance_id"]
        for k in found
        if k[0] == P + "gpm_sm_utilization_ratio" and dict(k[1])["uuid"] == scenario.gpus[0].uuid
    }
    expected = {str(m.gpu_instance_id) for m in scenario.gpus[0].mig_instances}
    assert instances == expected and "" not in instances


ALL_CODES = ["GPU_IS_LOST", "RESET_REQUIRED", "NOT_SUPPORTED", "NO_PERMISSION", "UNKNOWN"]
ALL_CODES += ["TIMEOUT"]


@pytest.mark.parametrize("call", ["nvmlGpmSampleAlloc", "nvmlGpmMetricsGet"])
@pytest.mark.parametrize("code", ALL_CODES)
async def test_a_failing_gpm_library_call_drops_gpm_only(
    make_rig: MakeRig, call: str, code: str
) -> None:
    """The calls without a device handle fail for every GPU at once (FakeNvmlLib.errors)."""
    rig = make_rig(default(), gpm=True)
    await rig.collect()
    rig.lib.errors[call] = int(getattr(pynvml, f"NVML_ERROR_{code}"))
    found = await rig.collect()
    assert not [k for k in found if k[0].startswith(P + "gpm_")]
    ups = [v for k, v in found.items() if k[0] == P + "up"]
    if code in ("GPU_IS_LOST", "RESET_REQUIRED"):  # the policy: lost, whichever call said so
        assert ups and set(ups) == {0.0}
        return
    assert ups and set(ups) == {1.0}
    errors = samples(rig.nvml.error_families())
    key = ("inferwatch_exporter_nvml_errors_total", (("call", call), ("code", code)))
    assert errors.get(key, 0) >= 1
    del rig.lib.errors[call]
    if code != "NOT_SUPPORTED":  # transient: back within two refreshes
        await rig.collect()
        found = await rig.collect()
        assert pick(found, P + "gpm_sm_utilization_ratio")


@pytest.mark.parametrize("code", ALL_CODES)
async def test_a_failing_gpm_sample_free_is_counted_and_changes_nothing(
    make_rig: MakeRig, code: str
) -> None:
    rig = make_rig(default(), gpm=True)
    await rig.collect()
    rig.lib.errors["nvmlGpmSampleFree"] = int(getattr(pynvml, f"NVML_ERROR_{code}"))
    found = await rig.collect()
    assert pick(found, P + "gpm_sm_utilization_ratio")
    assert set(pick(found, P + "up")) == {1.0}
    errors = samples(rig.nvml.error_families())
    key = ("inferwatch_exporter_nvml_errors_total", (("call", "nvmlGpmSampleFree"), ("code", code)))
    assert errors.get(key, 0) >= 1
    del rig.lib.errors["nvmlGpmSampleFree"]


@pytest.mark.parametrize("code", ALL_CODES)
async def test_a_failing_mig_gpm_sample_drops_that_gpus_gpm_only(
    make_rig: MakeRig, code: str
) -> None:
    scenario = mig()
    scenario.gpus[0].gpm_supported = True  # as an H100 in MIG mode
    scenario.gpus[0].errors["nvmlGpmMigSampleGet"] = int(getattr(pynvml, f"NVML_ERROR_{code}"))
    rig = make_rig(scenario, gpm=True)
    await rig.collect()
    found = await rig.collect()
    uuid = scenario.gpus[0].uuid
    assert not pick(found, P + "gpm_sm_utilization_ratio", uuid=uuid)
    up = pick(found, P + "up", uuid=uuid)
    lost = code in ("GPU_IS_LOST", "RESET_REQUIRED")
    assert up == ([0.0] if lost else [1.0])
    if not lost:  # (a lost GPU re-initializes NVML: every GPU's GPM starts over)
        assert pick(found, P + "gpm_sm_utilization_ratio", uuid=scenario.gpus[1].uuid)


# -- an Xid shows on the next scrape -----------------------------------------------------------


async def test_an_xid_is_published_before_the_next_refresh(make_rig: MakeRig) -> None:
    scenario = default()
    rig = make_rig(scenario)
    store = SnapshotStore(["gpu"])
    assert await refresh_once(rig.collector, store)  # registers the GPUs for Xid events
    refreshes = rig.lib.calls["nvmlDeviceGetCount_v2"]
    watcher = asyncio.create_task(watch_forever(rig.collector, store))
    try:
        assert await eventually(lambda: rig.collector.xids.on_count is not None)
        rig.lib.inject_xid(1, 13)

        def shown() -> bool:
            text = store.exposition(openmetrics=False, gzipped=False).decode()
            return 'inferwatch_gpu_xid_errors_total{gpu="1"' in text and (
                'action="RESTART_APP"' in text
            )

        assert await eventually(shown)
        assert rig.lib.calls["nvmlDeviceGetCount_v2"] == refreshes  # no refresh ran
        snapshot = store.status["gpu"].snapshot
        assert snapshot.success and pick(samples(list(snapshot.families)), P + "up")
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    assert rig.collector.xids.on_count is None


async def test_a_failed_collector_is_not_revived_by_an_xid(make_rig: MakeRig) -> None:
    scenario = default()
    rig = make_rig(scenario)
    store = SnapshotStore(["gpu"])
    assert await refresh_once(rig.collector, store)
    store.fail("gpu", 0.0)  # e.g. the next refresh failed: its series are gone
    rig.lib.inject_xid(0, 13)
    assert await eventually(lambda: bool(rig.collector.xids.counts()))
    assert not await rig.collector.republish_xids(store)
    assert store.status["gpu"].snapshot.families == ()


async def test_a_refresh_never_publishes_fewer_xids_than_were_counted(make_rig: MakeRig) -> None:
    """The refresh takes Xid counts when it builds families, not when it read NVML."""
    scenario = default()
    rig = make_rig(scenario)
    await rig.collect()
    rig.lib.inject_xid(0, 31)
    assert await eventually(lambda: bool(rig.collector.xids.counts()))
    found = await rig.collect()
    assert pick(found, P + "xid_errors_total", xid="31") == [1.0]


def test_scopes_group_actions_for_routing() -> None:
    """application -> restart the replica; gpu/node -> drain; none -> nothing."""
    table = xid_actions()
    by_scope: dict[str, set[str]] = {}
    for entry in table.values():
        by_scope.setdefault(entry.scope, set()).add(entry.action)
    assert by_scope["application"] >= {"RESTART_APP"}
    assert by_scope["gpu"] >= {"RESET_GPU"}
    assert by_scope["node"] >= {"RESTART_BM"}
    assert by_scope["none"] >= {"IGNORE"}
    assert not (by_scope["application"] & (by_scope["gpu"] | by_scope["node"]))


def test_the_simulation_injects_sticky_faults_and_rejects_bad_input() -> None:
    sim = Simulation(default())
    sim.lib.init_count += 1  # as if the exporter had initialized NVML
    sim.apply({"action": "remap_row", "gpu": 1})
    assert sim.state()["gpus"][1]["remap_pending"] is True
    assert sim.state()["gpus"][1]["recovery_action"] == 1
    sim.apply({"action": "pcie_replays", "gpu": 0, "count": 5})
    sim.apply({"action": "nvlink_errors", "gpu": 0, "link": 2, "count": 3})
    sim.apply({"action": "gpm", "gpu": 0, "supported": False})
    gpu = sim.scenario.gpus[0]
    assert (gpu.pcie_replays, gpu.gpm_supported) == (5, False)
    assert gpu.nvlink_errors[(2, pynvml.NVML_NVLINK_ERROR_DL_REPLAY)] == 3
    sim.apply({"action": "reset_gpu", "gpu": 1})
    assert sim.state()["gpus"][1]["remap_pending"] is False
    assert sim.state()["gpus"][1]["recovery_action"] == 0
    for bad in (
        {"action": "recovery_action", "gpu": 0, "value": 8},
        {"action": "nvlink_errors", "gpu": 0, "link": 99},
        {"action": "remap_row", "gpu": 0, "fail": "yes"},
        {"action": "gpm", "gpu": 0},
        {"action": "reset_gpu", "gpu": 9},
    ):
        with pytest.raises(SimulationInputError):
            sim.apply(bad)
