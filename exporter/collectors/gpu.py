"""GPU health from NVML: identity, utilization, memory, thermals, power, clocks, throttling, ECC,
Xid events, per-process memory attributed to pods, and MIG instances.

One refresh is one job on the NVML worker thread that returns plain values; families are built
afterwards on the event loop. Per-GPU failures stay per GPU: NOT_SUPPORTED / FUNCTION_NOT_FOUND
drop that one metric for that GPU (remembered, so it is not retried every refresh), a lost GPU
reports `inferwatch_gpu_up 0` while the others keep reporting, and a GPU seen before but gone
from NVML stays listed with up 0 so alerts can see it vanish.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pynvml
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from pydantic import Field

from exporter import NAMESPACE
from exporter.attribution import PodRef, PodResolver
from exporter.collectors.base import Collector, CollectorContext, CollectorSettings, register
from exporter.nvml import NvmlBusyError, XidWatcher

log = logging.getLogger(__name__)
T = TypeVar("T")

PREFIX = f"{NAMESPACE}_gpu"
GPU_LABELS = ["gpu", "uuid"]

# Errors meaning "this GPU cannot do that": drop the metric for this GPU, do not ask again.
UNSUPPORTED = frozenset({pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND})
# Errors meaning "this GPU is gone or broken": gpu_up 0 for it, the others keep reporting.
LOST = frozenset(
    {
        pynvml.NVML_ERROR_GPU_IS_LOST,
        pynvml.NVML_ERROR_UNKNOWN,
        pynvml.NVML_ERROR_RESET_REQUIRED,
        pynvml.NVML_ERROR_GPU_NOT_FOUND,
    }
)
# NVML itself is absent: no driver on this host (or not mounted into the container).
UNAVAILABLE = frozenset({pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED})

CLOCKS = {
    "graphics": pynvml.NVML_CLOCK_GRAPHICS,
    "sm": pynvml.NVML_CLOCK_SM,
    "memory": pynvml.NVML_CLOCK_MEM,
}
THROTTLE_REASONS = {
    "gpu_idle": pynvml.nvmlClocksEventReasonGpuIdle,
    "applications_clocks_setting": pynvml.nvmlClocksEventReasonApplicationsClocksSetting,
    "sw_power_cap": pynvml.nvmlClocksEventReasonSwPowerCap,
    "hw_slowdown": pynvml.nvmlClocksEventReasonHwSlowdown,
    "sync_boost": pynvml.nvmlClocksEventReasonSyncBoost,
    "sw_thermal_slowdown": pynvml.nvmlClocksEventReasonSwThermalSlowdown,
    "hw_thermal_slowdown": pynvml.nvmlClocksEventReasonHwThermalSlowdown,
    "hw_power_brake_slowdown": pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown,
    "display_clock_setting": pynvml.nvmlClocksEventReasonDisplayClockSetting,
}
# One nvmlDeviceGetFieldValues call (one ioctl) for these; each entry has its own return code.
FIELDS = {
    "ecc_corrected": pynvml.NVML_FI_DEV_ECC_SBE_VOL_TOTAL,
    "ecc_uncorrected": pynvml.NVML_FI_DEV_ECC_DBE_VOL_TOTAL,
    "memory_temperature": pynvml.NVML_FI_DEV_MEMORY_TEMP,
}
MIG_MODES = {pynvml.NVML_DEVICE_MIG_DISABLE: "disabled", pynvml.NVML_DEVICE_MIG_ENABLE: "enabled"}


class GpuSettings(CollectorSettings):
    """`collectors.gpu`: NVML device metrics."""

    process_memory: bool = Field(
        True,
        description="Per-process GPU memory summed per pod (needs host PIDs: hostPID or the "
        "host's /proc at proc_root).",
    )
    xid_events: bool = Field(True, description="Count Xid errors from NVML's event API.")
    log_root: str | None = Field(
        None,
        description="Directory holding the kubelet's containers/ and pods/ log dirs, used to "
        "name pods; default: var/log next to proc_root.",
    )
    reinit_interval_seconds: float = Field(
        60.0,
        gt=0,
        description="While a GPU is lost, re-initialize NVML this often (to see a reset GPU).",
    )


class NvmlUnavailableError(RuntimeError):
    """NVML cannot be loaded at all: the collector fails, the rest of the exporter serves on."""


class _GpuLost(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class GpuIdentity:
    index: int
    uuid: str
    name: str
    pci_bus_id: str


@dataclass
class MigReading:
    gpu_instance_id: int
    compute_instance_id: int
    uuid: str
    name: str
    memory_total: int | None = None
    memory_used: int | None = None


@dataclass
class GpuReading:
    """One GPU in one refresh, already in base units; a None value means "not available"."""

    identity: GpuIdentity
    up: bool
    mig_mode: str = "unsupported"
    gauges: dict[str, float] = field(default_factory=dict)
    temperatures: dict[str, float] = field(default_factory=dict)
    clocks: dict[str, float] = field(default_factory=dict)
    throttle_reasons: int | None = None
    ecc: dict[str, float] = field(default_factory=dict)
    energy_joules: float | None = None
    processes: list[tuple[int, int]] = field(default_factory=list)  # (pid, bytes)
    mig: list[MigReading] = field(default_factory=list)


@dataclass
class NvmlReading:
    driver_version: str
    cuda_version: str
    count: int
    gpus: list[GpuReading]
    xids: dict[tuple[str, int], int]


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _cuda_version(raw: int) -> str:
    """NVML's 12040 -> "12.4"."""
    return f"{raw // 1000}.{raw % 1000 // 10}"


def _field_value(entry: Any) -> float:
    kind = entry.valueType
    value = entry.value
    if kind == pynvml.NVML_VALUE_TYPE_DOUBLE:
        return float(value.dVal)
    if kind == pynvml.NVML_VALUE_TYPE_UNSIGNED_INT:
        return float(value.uiVal)
    if kind == pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG:
        return float(value.ulVal)
    if kind == pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG:
        return float(value.sllVal)
    if kind == pynvml.NVML_VALUE_TYPE_SIGNED_INT:
        return float(value.siVal)
    if kind == pynvml.NVML_VALUE_TYPE_UNSIGNED_SHORT:
        return float(value.usVal)
    return float(value.ullVal)


@register("gpu")
class GpuCollector(Collector[GpuSettings]):
    def __init__(self, settings: GpuSettings, context: CollectorContext) -> None:
        super().__init__(settings, context)
        self.pods = PodResolver(context.proc_root, settings.log_root)
        self.xids = XidWatcher()
        # Touched only inside NVML jobs (one at a time, on the NVML thread).
        self._generation = -1
        self._identities: dict[int, GpuIdentity] = {}
        self._system: tuple[str, str] | None = None
        self._unsupported: set[tuple[str, str]] = set()
        self._last_reinit = 0.0
        # Every GPU ever seen, by uuid: a vanished one keeps reporting up 0.
        self.known: dict[str, GpuIdentity] = {}

    async def update(self) -> Sequence[Metric]:
        try:
            reading = await self.context.nvml.run(self._read)
        except pynvml.NVMLError as exc:
            if exc.value in UNAVAILABLE:
                raise NvmlUnavailableError(
                    f"NVML unavailable ({exc}): no NVIDIA driver/libnvidia-ml.so.1 here; "
                    "GPU metrics are off, the other collectors keep serving"
                ) from None
            raise
        pods: dict[int, PodRef | None] = {}
        if self.settings.process_memory:
            pids = [pid for gpu in reading.gpus for pid, _ in gpu.processes]
            pods = await asyncio.to_thread(self._attribute, pids)
        return self._families(reading, pods)

    async def close(self) -> None:
        try:
            await self.context.nvml.run(self.xids.stop)
        except NvmlBusyError:  # the worker is stuck in the driver: just let the thread end
            self.xids.request_stop()

    # -- NVML thread ----------------------------------------------------------------------------

    def _read(self) -> NvmlReading:
        generation = self.context.nvml.generation
        if generation != self._generation:  # first job, or NVML was re-initialized
            self.xids.stop()
            self._identities.clear()
            self._system = None
            self._generation = generation
        if self._system is None:
            driver = _text(pynvml.nvmlSystemGetDriverVersion())
            try:
                cuda = _cuda_version(pynvml.nvmlSystemGetCudaDriverVersion_v2())
            except pynvml.NVMLError:
                cuda = ""
            self._system = (driver, cuda)
        count = pynvml.nvmlDeviceGetCount()
        gpus = [self._read_gpu(index) for index in range(count)]
        seen = {gpu.identity.uuid for gpu in gpus}
        gpus += [
            GpuReading(ident, up=False) for uuid, ident in self.known.items() if uuid not in seen
        ]
        if any(not gpu.up for gpu in gpus):
            now = time.monotonic()
            if now - self._last_reinit >= self.settings.reinit_interval_seconds:
                self._last_reinit = now
                self.context.nvml.reset()  # takes effect before the next job
        return NvmlReading(*self._system, count, gpus, self.xids.counts())

    def _read_gpu(self, index: int) -> GpuReading:
        identity = self._identities.get(index)
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            if identity is None:
                identity = GpuIdentity(
                    index,
                    _text(pynvml.nvmlDeviceGetUUID(handle)),
                    _text(pynvml.nvmlDeviceGetName(handle)),
                    _text(pynvml.nvmlDeviceGetPciInfo_v3(handle).busId),
                )
                self._identities[index] = identity
                self.known[identity.uuid] = identity
        except pynvml.NVMLError as exc:
            log.debug("gpu %d: cannot open: %s", index, exc)
            fallback = identity or next(
                (i for i in self.known.values() if i.index == index), GpuIdentity(index, "", "", "")
            )
            return GpuReading(fallback, up=False)
        reading = GpuReading(identity, up=True)
        try:
            self._fill(reading, handle)
        except _GpuLost as lost:
            log.debug("gpu %d (%s): lost (NVML error %d)", index, identity.uuid, lost.code)
            return GpuReading(identity, up=False)
        return reading

    def _get(self, uuid: str, key: str, fn: Callable[..., T], *args: Any) -> T | None:
        """Call NVML; None when unsupported (remembered) or on a transient error."""
        if (uuid, key) in self._unsupported:
            return None
        try:
            return fn(*args)
        except pynvml.NVMLError as exc:
            if exc.value in LOST:
                raise _GpuLost(exc.value) from None
            if exc.value in UNSUPPORTED:
                self._unsupported.add((uuid, key))
                log.info("gpu %s: %s not supported by this GPU/driver; metric dropped", uuid, key)
            else:
                log.debug("gpu %s: %s failed: %s", uuid, key, exc)
            return None

    def _fill(self, r: GpuReading, handle: Any) -> None:
        uuid = r.identity.uuid
        get = self._get
        if self.settings.xid_events:
            get(uuid, "xid_events", self.xids.watch, handle, uuid)

        mig = get(uuid, "mig_mode", pynvml.nvmlDeviceGetMigMode, handle)
        if mig is not None:
            r.mig_mode = MIG_MODES.get(mig[0], str(mig[0]))

        memory = get(
            uuid, "memory_v2", pynvml.nvmlDeviceGetMemoryInfo, handle, pynvml.nvmlMemory_v2
        )
        if memory is not None:
            r.gauges["memory_total_bytes"] = float(memory.total)
            r.gauges["memory_used_bytes"] = float(memory.used)
            r.gauges["memory_free_bytes"] = float(memory.free)
            r.gauges["memory_reserved_bytes"] = float(memory.reserved)
        else:  # drivers before 510: v1 only, whose `used` includes the reservation
            memory = get(uuid, "memory", pynvml.nvmlDeviceGetMemoryInfo, handle)
            if memory is not None:
                r.gauges["memory_total_bytes"] = float(memory.total)
                r.gauges["memory_used_bytes"] = float(memory.used)
                r.gauges["memory_free_bytes"] = float(memory.free)

        util = get(uuid, "utilization", pynvml.nvmlDeviceGetUtilizationRates, handle)
        if util is not None:
            r.gauges["utilization_ratio"] = util.gpu / 100.0
            r.gauges["memory_copy_utilization_ratio"] = util.memory / 100.0

        temp = get(
            uuid,
            "temperature_v",
            pynvml.nvmlDeviceGetTemperatureV,
            handle,
            pynvml.NVML_TEMPERATURE_GPU,
        )
        if temp is None and (uuid, "temperature_v") in self._unsupported:
            temp = get(
                uuid,
                "temperature",
                pynvml.nvmlDeviceGetTemperature,
                handle,
                pynvml.NVML_TEMPERATURE_GPU,
            )
        if temp is not None:
            r.temperatures["gpu"] = float(temp)

        power = get(uuid, "power", pynvml.nvmlDeviceGetPowerUsage, handle)
        if power is not None:
            r.gauges["power_watts"] = power / 1000.0
        limit = get(uuid, "power_limit", pynvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        if limit is not None:
            r.gauges["power_limit_watts"] = limit / 1000.0
        energy = get(uuid, "energy", pynvml.nvmlDeviceGetTotalEnergyConsumption, handle)
        if energy is not None:
            r.energy_joules = energy / 1000.0

        for clock, clock_type in CLOCKS.items():
            mhz = get(uuid, f"clock_{clock}", pynvml.nvmlDeviceGetClockInfo, handle, clock_type)
            if mhz is not None:
                r.clocks[clock] = mhz * 1e6

        reasons = get(
            uuid, "clocks_event_reasons", pynvml.nvmlDeviceGetCurrentClocksEventReasons, handle
        )
        if reasons is None and (uuid, "clocks_event_reasons") in self._unsupported:
            reasons = get(
                uuid,
                "clocks_throttle_reasons",
                pynvml.nvmlDeviceGetCurrentClocksThrottleReasons,
                handle,
            )
        r.throttle_reasons = reasons

        self._fill_fields(r, handle)
        if self.settings.process_memory:
            procs = get(uuid, "processes", pynvml.nvmlDeviceGetComputeRunningProcesses_v3, handle)
            for proc in procs or ():
                if proc.usedGpuMemory is not None:
                    r.processes.append((int(proc.pid), int(proc.usedGpuMemory)))
        if r.mig_mode == "enabled":
            self._fill_mig(r, handle)

    def _fill_fields(self, r: GpuReading, handle: Any) -> None:
        uuid = r.identity.uuid
        wanted = {k: f for k, f in FIELDS.items() if (uuid, k) not in self._unsupported}
        if not wanted:
            return
        values = self._get(
            uuid, "field_values", pynvml.nvmlDeviceGetFieldValues, handle, list(wanted.values())
        )
        if values is None:
            return
        for key, entry in zip(wanted, values, strict=True):
            if entry.nvmlReturn == pynvml.NVML_SUCCESS:
                value = _field_value(entry)
                if key == "memory_temperature":
                    r.temperatures["memory"] = value
                else:
                    r.ecc[key.removeprefix("ecc_")] = value
            elif entry.nvmlReturn in UNSUPPORTED:
                self._unsupported.add((uuid, key))
            elif entry.nvmlReturn in LOST:
                raise _GpuLost(entry.nvmlReturn)

    def _fill_mig(self, r: GpuReading, handle: Any) -> None:
        uuid = r.identity.uuid
        slots = self._get(uuid, "mig_devices", pynvml.nvmlDeviceGetMaxMigDeviceCount, handle)
        for slot in range(slots or 0):
            try:
                mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except pynvml.NVMLError as exc:
                if exc.value in LOST:
                    raise _GpuLost(exc.value) from None
                continue  # NOT_FOUND: an empty slot
            instance = MigReading(
                gpu_instance_id=pynvml.nvmlDeviceGetGpuInstanceId(mig),
                compute_instance_id=pynvml.nvmlDeviceGetComputeInstanceId(mig),
                uuid=_text(pynvml.nvmlDeviceGetUUID(mig)),
                name=_text(pynvml.nvmlDeviceGetName(mig)),
            )
            memory = self._get(uuid, "mig_memory", pynvml.nvmlDeviceGetMemoryInfo, mig)
            if memory is not None:
                instance.memory_total, instance.memory_used = memory.total, memory.used
            r.mig.append(instance)

    # -- worker thread (file reads) -------------------------------------------------------------

    def _attribute(self, pids: list[int]) -> dict[int, PodRef | None]:
        self.pods.retain(pids)
        return {pid: self.pods.for_pid(pid) for pid in pids}

    # -- event loop -------------------------------------------------------------------------------

    def _families(self, reading: NvmlReading, pods: dict[int, PodRef | None]) -> list[Metric]:
        def gauge(name: str, doc: str, extra: Sequence[str] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=[*GPU_LABELS, *extra])

        info = gauge(
            "info",
            "GPU identity; always 1. Join on (gpu, uuid) for names and versions.",
            ["name", "pci_bus_id", "driver_version", "cuda_version", "mig_mode"],
        )
        up = gauge("up", "1 if NVML answers for the GPU, 0 if it is lost or gone.")
        count = GaugeMetricFamily(f"{PREFIX}_count", "GPUs NVML reports on this host.")
        count.add_metric([], float(reading.count))
        simple = {
            "utilization_ratio": "Fraction of the last sample period a kernel was running.",
            "memory_copy_utilization_ratio": "Fraction of time device memory was read or written.",
            "memory_total_bytes": "Total device memory.",
            "memory_used_bytes": "Device memory allocated by processes (excludes reserved).",
            "memory_free_bytes": "Device memory free for allocation.",
            "memory_reserved_bytes": "Device memory reserved by the driver and firmware.",
            "power_watts": "Power draw.",
            "power_limit_watts": "Enforced power limit.",
        }
        families = {key: gauge(key, doc) for key, doc in simple.items()}
        temperature = gauge("temperature_celsius", "Temperature by sensor.", ["sensor"])
        energy = CounterMetricFamily(
            f"{PREFIX}_energy_joules", "Energy consumed since the driver loaded.", labels=GPU_LABELS
        )
        clock = gauge("clock_hertz", "Current clock frequency.", ["clock"])
        throttle = gauge(
            "throttle_active", "1 while this clocks-event (throttle) reason is active.", ["reason"]
        )
        ecc = CounterMetricFamily(
            f"{PREFIX}_ecc_errors",
            "ECC errors since the driver loaded (volatile).",
            labels=[*GPU_LABELS, "type"],
        )
        xid = CounterMetricFamily(
            f"{PREFIX}_xid_errors",
            "Xid errors reported by NVML events since the exporter started.",
            labels=[*GPU_LABELS, "xid"],
        )
        process_memory = gauge(
            "process_memory_bytes",
            "GPU memory used by compute processes, summed per pod container (empty labels: "
            "processes outside Kubernetes).",
            ["namespace", "pod", "container"],
        )
        mig_info = gauge(
            "mig_info",
            "MIG instance identity; always 1.",
            ["gpu_instance_id", "compute_instance_id", "mig_uuid", "profile"],
        )
        mig_total = gauge("mig_memory_total_bytes", "MIG instance memory.", ["gpu_instance_id"])
        mig_used = gauge(
            "mig_memory_used_bytes", "MIG instance memory in use.", ["gpu_instance_id"]
        )

        index_of = {gpu.identity.uuid: str(gpu.identity.index) for gpu in reading.gpus}
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
            for key, value in gpu.gauges.items():
                families[key].add_metric(labels, value)
            for sensor, celsius in gpu.temperatures.items():
                temperature.add_metric([*labels, sensor], celsius)
            if gpu.energy_joules is not None:
                energy.add_metric(labels, gpu.energy_joules)
            for name, hertz in gpu.clocks.items():
                clock.add_metric([*labels, name], hertz)
            if gpu.throttle_reasons is not None:
                for reason, bit in THROTTLE_REASONS.items():
                    active = 1.0 if gpu.throttle_reasons & bit else 0.0
                    throttle.add_metric([*labels, reason], active)
            for kind, total in gpu.ecc.items():
                ecc.add_metric([*labels, kind], total)
            per_pod: dict[tuple[str, str, str], int] = defaultdict(int)
            for pid, used in gpu.processes:
                ref = pods.get(pid)
                pod_key = (ref.namespace, ref.pod, ref.container) if ref else ("", "", "")
                per_pod[pod_key] += used
            for pod_key, used in sorted(per_pod.items()):
                process_memory.add_metric([*labels, *pod_key], float(used))
            for m in gpu.mig:
                gi = str(m.gpu_instance_id)
                mig_info.add_metric([*labels, gi, str(m.compute_instance_id), m.uuid, m.name], 1.0)
                if m.memory_total is not None and m.memory_used is not None:
                    mig_total.add_metric([*labels, gi], float(m.memory_total))
                    mig_used.add_metric([*labels, gi], float(m.memory_used))
        for (uuid, code), total in sorted(reading.xids.items()):
            xid.add_metric([index_of.get(uuid, ""), uuid, str(code)], float(total))

        return [
            info,
            up,
            count,
            *families.values(),
            temperature,
            energy,
            clock,
            throttle,
            ecc,
            xid,
            process_memory,
            mig_info,
            mig_total,
            mig_used,
        ]
