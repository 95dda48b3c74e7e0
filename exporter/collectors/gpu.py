"""GPU health from NVML: identity, utilization, memory, thermals, power, clocks, throttling, ECC,
Xid events with NVIDIA's recommended action per Xid, sticky health (recovery action, row
remapping, PCIe replays and link state), per-process memory attributed to pods, and MIG instances.

One refresh is one job on the NVML worker thread (exporter.nvml.GpuReader) that returns typed
readings; families are built afterwards on the event loop. What an NVML error means (a dropped
metric, a transient gap, a lost GPU) is decided by exporter.nvml.POLICY, in one place. A node
without NVML or without GPUs is "no data", not a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import functools
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric
from pydantic import Field

from exporter import NAMESPACE
from exporter.attribution import PodRef
from exporter.catalog import MetricSpec, counter, gauge
from exporter.collectors.base import (
    Collector,
    CollectorContext,
    CollectorSettings,
    NoDataError,
    register,
)
from exporter.nvml import (
    GPM_METRICS,
    RECOVERY_ACTIONS,
    THROTTLE_REASONS,
    GpuReader,
    GpuReading,
    NvmlBusyError,
    NvmlReading,
    NvmlUnavailableError,
    ReadOptions,
    XidWatcher,
)
from exporter.snapshot import SnapshotStore

log = logging.getLogger(__name__)

PREFIX = f"{NAMESPACE}_gpu"
GPU = ("gpu", "uuid")
XID_CATALOG = Path(__file__).resolve().parents[1] / "gpu_xid_catalog.csv"
SCOPES = ("application", "gpu", "node", "none")
# How often the Xid re-publisher compares what is published with what was counted (it also
# wakes on every Xid at once); catches a refresh that published older counts than the watcher.
XID_RECHECK_SECONDS = 1.0


@dataclass(frozen=True)
class XidAction:
    """NVIDIA's immediate action for one Xid and the group Inferwatch routes it by."""

    action: str
    scope: str
    confirmed: str  # "catalog" (read on NVIDIA's page) or where else the row came from


# An Xid missing from the catalog: treated as a GPU-level fault, never silently ignored.
UNKNOWN_XID = XidAction("UNKNOWN", "gpu", "")


@functools.cache
def xid_actions(path: Path = XID_CATALOG) -> dict[int, XidAction]:
    """The Xid catalog (exporter/gpu_xid_catalog.csv, its source in its header); ValueError if a
    row is malformed, so a broken data file fails at start, not at the first Xid."""
    rows = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    table: dict[int, XidAction] = {}
    for row in csv.DictReader(rows):
        if row["scope"] not in SCOPES or not row["action"]:
            raise ValueError(f"{path.name}: bad row for Xid {row['xid']}: {row}")
        table[int(row["xid"])] = XidAction(row["action"], row["scope"], row["confirmed"])
    return table


class GpuSettings(CollectorSettings):
    """`collectors.gpu`: NVML device metrics."""

    process_memory: bool = Field(
        True,
        description="Per-process GPU memory summed per pod (needs host PIDs: hostPID or the "
        "host's /proc at proc_root).",
    )
    xid_events: bool = Field(True, description="Count Xid errors from NVML's event API.")
    reinit_interval_seconds: float = Field(
        60.0,
        gt=0,
        description="While a GPU is lost, re-initialize NVML this often (to see a reset GPU).",
    )
    gpm: bool = Field(
        False,
        description="Profiling metrics from NVML GPM (SM activity and occupancy, tensor and DRAM "
        "utilization, PCIe and NVLink throughput) where the GPU supports it (Hopper and later); "
        "per MIG GPU instance when MIG is enabled.",
    )


INFO = gauge(
    f"{PREFIX}_info",
    "GPU identity; always 1. Join on (gpu, uuid) for names and versions.",
    [*GPU, "name", "pci_bus_id", "driver_version", "cuda_version", "mig_mode"],
)
UP = gauge(f"{PREFIX}_up", "1 if NVML answers for the GPU, 0 if it is lost or gone.", GPU)
DEVICES = gauge(f"{PREFIX}_devices", "GPUs NVML reports on this host.")
# GpuReading attribute -> spec, for the plain per-GPU gauges.
GAUGES: dict[str, MetricSpec] = {
    "utilization_ratio": gauge(
        f"{PREFIX}_utilization_ratio",
        "Fraction of the last sample period a kernel was running.",
        GPU,
    ),
    "memory_copy_utilization_ratio": gauge(
        f"{PREFIX}_memory_copy_utilization_ratio",
        "Fraction of time device memory was read or written.",
        GPU,
    ),
    "memory_total_bytes": gauge(f"{PREFIX}_memory_total_bytes", "Total device memory.", GPU),
    "memory_used_bytes": gauge(
        f"{PREFIX}_memory_used_bytes",
        "Device memory allocated by processes (excludes reserved).",
        GPU,
    ),
    "memory_free_bytes": gauge(
        f"{PREFIX}_memory_free_bytes", "Device memory free for allocation.", GPU
    ),
    "memory_reserved_bytes": gauge(
        f"{PREFIX}_memory_reserved_bytes", "Device memory reserved by the driver and firmware.", GPU
    ),
    "power_watts": gauge(f"{PREFIX}_power_watts", "Power draw.", GPU),
    "power_limit_watts": gauge(f"{PREFIX}_power_limit_watts", "Enforced power limit.", GPU),
}
TEMPERATURE = gauge(f"{PREFIX}_temperature_celsius", "Temperature by sensor.", [*GPU, "sensor"])
ENERGY = counter(f"{PREFIX}_energy_joules", "Energy consumed since the driver loaded.", GPU)
CLOCK = gauge(f"{PREFIX}_clock_hertz", "Current clock frequency.", [*GPU, "clock"])
THROTTLE = gauge(
    f"{PREFIX}_throttle_active",
    "1 while this clocks-event (throttle) reason is active.",
    [*GPU, "reason"],
)
ECC = counter(
    f"{PREFIX}_ecc_errors", "ECC errors since the driver loaded (volatile).", [*GPU, "type"]
)
XID = counter(
    f"{PREFIX}_xid_errors",
    "Xid errors reported by NVML events since the exporter started.",
    [*GPU, "xid"],
)
XID_ACTION = gauge(
    f"{PREFIX}_xid_action_info",
    "NVIDIA's recommended immediate action for an Xid seen on this node (Xid catalog), and its "
    "scope: application (restart the replica on that GPU), gpu or node (drain the node), none. "
    "Always 1; join on xid.",
    ["xid", "action", "scope"],
    when="an Xid was seen",
)
RECOVERY_ACTION = gauge(
    f"{PREFIX}_recovery_action",
    "What the driver says the GPU needs before it is healthy (NVML GPU recovery action): "
    "0 none, 1 GPU reset, 2 node reboot, 3 drain P2P, 4 drain and reset, 5 recover IMEX domain, "
    "6 bus reset, 7 system reboot. Stays set until done.",
    [*GPU, "action"],
)
REMAPPED_ROWS = gauge(
    f"{PREFIX}_remapped_rows",
    "Memory rows remapped since manufacture, by the error bank that caused it.",
    [*GPU, "bank"],
)
REMAP_PENDING = gauge(
    f"{PREFIX}_row_remap_pending",
    "1 while a row remap waits for a GPU reset to take effect.",
    GPU,
)
REMAP_FAILURE = gauge(
    f"{PREFIX}_row_remap_failure",
    "1 once a row remap failed: the GPU needs replacement.",
    GPU,
)
PCIE_REPLAYS = counter(
    f"{PREFIX}_pcie_replays", "PCIe replays (link-level retransmissions) since reset.", GPU
)
PCIE_GENERATION = gauge(
    f"{PREFIX}_pcie_link_generation",
    "PCIe link generation: current (may drop at idle) and max (what the GPU and slot support).",
    [*GPU, "link"],
)
PCIE_WIDTH = gauge(
    f"{PREFIX}_pcie_link_width",
    "PCIe link width in lanes: current and max; current below max under load is a degraded link.",
    [*GPU, "link"],
)
NVLINK_UP = gauge(
    f"{PREFIX}_nvlink_up",
    "1 while this NVLink link is active, 0 while it is down.",
    [*GPU, "link"],
    when="the board has NVLink",
)
NVLINK_ERRORS = counter(
    f"{PREFIX}_nvlink_errors",
    "NVLink data-link errors since the driver loaded, by link and type (replay, recovery, "
    "crc_flit, crc_data, ecc_data; the ones the GPU reports).",
    [*GPU, "link", "type"],
    when="the board has NVLink",
)
GPM_WHEN = "collectors.gpu.gpm is on and the GPU supports GPM"
GPM_LABELS = [*GPU, "gpu_instance_id"]
# GPM_METRICS key -> (spec, direction label or None)
GPM: dict[str, tuple[MetricSpec, str | None]] = {}
_GPM_SPECS = {
    "sm_utilization": gauge(
        f"{PREFIX}_gpm_sm_utilization_ratio",
        "Fraction of SMs busy (GPM), between the last two refreshes.",
        GPM_LABELS,
        when=GPM_WHEN,
    ),
    "sm_occupancy": gauge(
        f"{PREFIX}_gpm_sm_occupancy_ratio",
        "Resident warps over the SMs' maximum (GPM), between the last two refreshes.",
        GPM_LABELS,
        when=GPM_WHEN,
    ),
    "tensor_utilization": gauge(
        f"{PREFIX}_gpm_tensor_utilization_ratio",
        "Fraction of time any tensor pipe was active (GPM).",
        GPM_LABELS,
        when=GPM_WHEN,
    ),
    "dram_bandwidth_utilization": gauge(
        f"{PREFIX}_gpm_dram_bandwidth_utilization_ratio",
        "Device memory bandwidth used over its peak (GPM).",
        GPM_LABELS,
        when=GPM_WHEN,
    ),
    "pcie": gauge(
        f"{PREFIX}_gpm_pcie_bytes_per_second",
        "PCIe throughput by direction (tx: from the GPU) (GPM).",
        [*GPM_LABELS, "direction"],
        when=GPM_WHEN,
    ),
    "nvlink": gauge(
        f"{PREFIX}_gpm_nvlink_bytes_per_second",
        "NVLink throughput over all links by direction (GPM).",
        [*GPM_LABELS, "direction"],
        when=GPM_WHEN,
    ),
}
for _key in GPM_METRICS:
    _base, _, _direction = _key.rpartition("_")
    if _direction in ("tx", "rx"):
        GPM[_key] = (_GPM_SPECS[_base], _direction)
    else:
        GPM[_key] = (_GPM_SPECS[_key], None)
PROCESS_MEMORY = gauge(
    f"{PREFIX}_process_memory_bytes",
    "GPU memory used by compute processes, summed per pod container (empty labels: processes "
    "outside Kubernetes).",
    [*GPU, "namespace", "pod", "container"],
)
MIG_INFO = gauge(
    f"{PREFIX}_mig_info",
    "MIG instance identity; always 1.",
    [*GPU, "gpu_instance_id", "compute_instance_id", "mig_uuid", "profile"],
    when="MIG enabled",
)
MIG_TOTAL = gauge(
    f"{PREFIX}_mig_memory_total_bytes",
    "MIG instance memory.",
    [*GPU, "gpu_instance_id"],
    when="MIG enabled",
)
MIG_USED = gauge(
    f"{PREFIX}_mig_memory_used_bytes",
    "MIG instance memory in use.",
    [*GPU, "gpu_instance_id"],
    when="MIG enabled",
)


def _id(value: int | None) -> str:
    return "" if value is None else str(value)


@register("gpu")
class GpuCollector(Collector[GpuSettings]):
    settings_model = GpuSettings
    metrics = (
        INFO,
        UP,
        DEVICES,
        *GAUGES.values(),
        TEMPERATURE,
        ENERGY,
        CLOCK,
        THROTTLE,
        ECC,
        XID,
        XID_ACTION,
        RECOVERY_ACTION,
        REMAPPED_ROWS,
        REMAP_PENDING,
        REMAP_FAILURE,
        PCIE_REPLAYS,
        PCIE_GENERATION,
        PCIE_WIDTH,
        NVLINK_UP,
        NVLINK_ERRORS,
        *_GPM_SPECS.values(),
        PROCESS_MEMORY,
        MIG_INFO,
        MIG_TOTAL,
        MIG_USED,
    )

    def __init__(self, settings: GpuSettings, context: CollectorContext) -> None:
        super().__init__(settings, context)
        options = ReadOptions(
            process_memory=settings.process_memory,
            xid_events=settings.xid_events,
            reinit_interval_seconds=settings.reinit_interval_seconds,
            gpm=settings.gpm,
        )
        self.reader = GpuReader(context.nvml, options)
        self.xid_catalog = xid_actions()
        self._index_of: dict[str, str] = {}  # uuid -> gpu index, from the last refresh

    @property
    def xids(self) -> XidWatcher:
        return self.reader.xids

    async def update(self) -> Sequence[Metric]:
        try:
            reading = await self.context.nvml.run(self.reader.read)
        except NvmlUnavailableError as exc:
            raise NoDataError("nvml_unavailable") from exc
        if not reading.gpus:
            raise NoDataError("no_gpus")
        pods: dict[int, PodRef | None] = {}
        if self.settings.process_memory:
            pids = [p.pid for gpu in reading.gpus for p in gpu.processes or ()]
            pods = await self.run_blocking(self.context.pods.resolve, pids)
        return self._families(reading, pods)

    async def watch(self, store: SnapshotStore) -> None:
        """Re-publish the Xid families as soon as the watcher counts an Xid, so the next scrape
        shows it without waiting for a refresh (encoding runs in a thread, like a refresh's)."""
        loop = asyncio.get_running_loop()
        counted = asyncio.Event()

        def notify() -> None:  # on the Xid watcher thread
            with contextlib.suppress(RuntimeError):  # the loop is closing: nothing to publish
                loop.call_soon_threadsafe(counted.set)

        self.xids.on_count = notify
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(XID_RECHECK_SECONDS):
                        await counted.wait()
                counted.clear()
                await self.republish_xids(store)
        finally:
            self.xids.on_count = None

    async def republish_xids(self, store: SnapshotStore) -> bool:
        """Swap fresh Xid families into the published snapshot; True if it was stale.

        Only a successful snapshot is touched: a failed or "no data" collector has no series.
        """
        current = store.status[self.name].snapshot
        counts = self.xids.counts()
        if not current.success or not current.families:
            return False
        published = {
            (s.labels["uuid"], int(s.labels["xid"])): int(s.value)
            for family in current.families
            if family.name == XID.name
            for s in family.samples
            if s.name.endswith("_total")
        }
        if published == counts:
            return False
        fresh = {f.name: f for f in self._xid_families(counts)}
        families = tuple(fresh.get(f.name, f) for f in current.families)
        await store.publish_async(self.name, replace(current, families=families, encoded={}))
        return True

    def _xid_families(self, counts: dict[tuple[str, int], int]) -> list[Metric]:
        xid, xid_action = XID.counter(), XID_ACTION.gauge()
        for (uuid, code), total in sorted(counts.items()):
            xid.add_metric([self._index_of.get(uuid, ""), uuid, str(code)], float(total))
        # Only the Xids seen here: a handful of series instead of ~160 on every node.
        for code in sorted({code for _, code in counts}):
            known = self.xid_catalog.get(code, UNKNOWN_XID)
            xid_action.add_metric([str(code), known.action, known.scope], 1.0)
        return [xid, xid_action]

    async def close(self) -> None:
        try:
            await self.context.nvml.run(self.reader.close)
        except NvmlBusyError:  # the worker is stuck in the driver: just let the thread end
            self.reader.xids.request_stop()
        except NvmlUnavailableError:  # NVML never came up: nothing was registered
            pass

    def _families(self, reading: NvmlReading, pods: dict[int, PodRef | None]) -> list[Metric]:
        info, up, devices = INFO.gauge(), UP.gauge(), DEVICES.gauge()
        devices.add_metric([], float(reading.device_count))
        simple = {key: spec.gauge() for key, spec in GAUGES.items()}
        temperature, clock, throttle = TEMPERATURE.gauge(), CLOCK.gauge(), THROTTLE.gauge()
        energy, ecc = ENERGY.counter(), ECC.counter()
        process_memory = PROCESS_MEMORY.gauge()
        health = _HealthFamilies()
        mig_info, mig_total, mig_used = MIG_INFO.gauge(), MIG_TOTAL.gauge(), MIG_USED.gauge()

        self._index_of = {gpu.identity.uuid: str(gpu.identity.index) for gpu in reading.gpus}
        for gpu in reading.gpus:
            ident = gpu.identity
            labels = [str(ident.index), ident.uuid]
            up.add_metric(labels, 1.0 if gpu.up else 0.0)
            if ident.uuid:
                info.add_metric(
                    [
                        *labels,
                        ident.name,
                        ident.pci_bus_id,
                        reading.driver_version,
                        reading.cuda_version,
                        gpu.mig_mode,
                    ],
                    1.0,
                )
            if not gpu.up:
                continue
            for key, family in simple.items():
                value = getattr(gpu, key)
                if value is not None:
                    family.add_metric(labels, value)
            if gpu.temperature_gpu is not None:
                temperature.add_metric([*labels, "gpu"], gpu.temperature_gpu)
            if gpu.temperature_memory is not None:
                temperature.add_metric([*labels, "memory"], gpu.temperature_memory)
            if gpu.energy_joules is not None:
                energy.add_metric(labels, gpu.energy_joules)
            for name, hertz in gpu.clocks_hertz.items():
                clock.add_metric([*labels, name], hertz)
            if gpu.throttle_reasons is not None:
                for reason, bit in THROTTLE_REASONS.items():
                    active = 1.0 if gpu.throttle_reasons & bit else 0.0
                    throttle.add_metric([*labels, reason], active)
            if gpu.ecc_corrected is not None:
                ecc.add_metric([*labels, "corrected"], gpu.ecc_corrected)
            if gpu.ecc_uncorrected is not None:
                ecc.add_metric([*labels, "uncorrected"], gpu.ecc_uncorrected)
            health.add(labels, gpu)
            self._process_memory(process_memory, labels, gpu, pods)
            for m in gpu.mig:
                gi = _id(m.gpu_instance_id)
                mig_info.add_metric([*labels, gi, _id(m.compute_instance_id), m.uuid, m.name], 1.0)
                if m.memory_total is not None and m.memory_used is not None:
                    mig_total.add_metric([*labels, gi], float(m.memory_total))
                    mig_used.add_metric([*labels, gi], float(m.memory_used))
        # Counted now, not at read time: never older than what `watch` may have published.
        xid, xid_action = self._xid_families(self.xids.counts())

        return [
            info,
            up,
            devices,
            *simple.values(),
            temperature,
            energy,
            clock,
            throttle,
            ecc,
            xid,
            xid_action,
            *health.families(),
            process_memory,
            mig_info,
            mig_total,
            mig_used,
        ]

    @staticmethod
    def _process_memory(
        family: GaugeMetricFamily,
        labels: list[str],
        gpu: GpuReading,
        pods: dict[int, PodRef | None],
    ) -> None:
        """Sum per pod container; processes whose usage NVML cannot tell are left out."""
        per_pod: dict[tuple[str, str, str], int] = defaultdict(int)
        for process in gpu.processes or ():
            if process.used_bytes is None:
                continue
            ref = pods.get(process.pid)
            pod_key = (ref.namespace, ref.pod, ref.container) if ref else ("", "", "")
            per_pod[pod_key] += process.used_bytes
        for pod_key, used in sorted(per_pod.items()):
            family.add_metric([*labels, *pod_key], float(used))


class _HealthFamilies:
    """The sticky-health families of one refresh (recovery action, row remapping, PCIe)."""

    def __init__(self) -> None:
        self.recovery, self.remapped = RECOVERY_ACTION.gauge(), REMAPPED_ROWS.gauge()
        self.pending, self.failure = REMAP_PENDING.gauge(), REMAP_FAILURE.gauge()
        self.replays = PCIE_REPLAYS.counter()
        self.generation, self.width = PCIE_GENERATION.gauge(), PCIE_WIDTH.gauge()
        self.nvlink_up, self.nvlink_errors = NVLINK_UP.gauge(), NVLINK_ERRORS.counter()
        self.gpm = {spec.name: spec.gauge() for spec in _GPM_SPECS.values()}

    def add(self, labels: list[str], gpu: GpuReading) -> None:
        if gpu.recovery_action is not None:
            code = int(gpu.recovery_action)
            self.recovery.add_metric(
                [*labels, RECOVERY_ACTIONS.get(code, str(code))], gpu.recovery_action
            )
        for bank, rows in gpu.remapped_rows.items():
            self.remapped.add_metric([*labels, bank], rows)
        if gpu.remap_pending is not None:
            self.pending.add_metric(labels, 1.0 if gpu.remap_pending else 0.0)
        if gpu.remap_failure is not None:
            self.failure.add_metric(labels, 1.0 if gpu.remap_failure else 0.0)
        if gpu.pcie_replays is not None:
            self.replays.add_metric(labels, gpu.pcie_replays)
        for link, value in gpu.pcie_link_generation.items():
            self.generation.add_metric([*labels, link], value)
        for link, value in gpu.pcie_link_width.items():
            self.width.add_metric([*labels, link], value)
        for index, up in sorted(gpu.nvlink_up.items()):
            self.nvlink_up.add_metric([*labels, str(index)], 1.0 if up else 0.0)
        for (index, kind), count in sorted(gpu.nvlink_errors.items()):
            self.nvlink_errors.add_metric([*labels, str(index), kind], count)
        for sample in gpu.gpm:
            instance = _id(sample.gpu_instance_id)
            for key, value in sample.values.items():
                spec, direction = GPM[key]
                extra = [direction] if direction else []
                self.gpm[spec.name].add_metric([*labels, instance, *extra], value)

    def families(self) -> list[Metric]:
        return [
            self.recovery,
            self.remapped,
            self.pending,
            self.failure,
            self.replays,
            self.generation,
            self.width,
            self.nvlink_up,
            self.nvlink_errors,
            *self.gpm.values(),
        ]
