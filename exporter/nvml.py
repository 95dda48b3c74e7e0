"""The NVML boundary: the only module that imports pynvml.

Everything the exporter asks NVML goes through here and comes back as typed readings
(`NvmlReading`, `GpuReading`, `ProcessReading`). One table, `POLICY`, decides per NVML return code
what an error means everywhere (identity, metrics, MIG, processes, events):

- GPU_IS_LOST, RESET_REQUIRED: the GPU is lost (`inferwatch_gpu_up 0`; NVML is re-initialized
  every `reinit_interval_seconds` so a reset GPU comes back). A GPU that disappears from
  enumeration is lost too.
- NOT_SUPPORTED, FUNCTION_NOT_FOUND: that one metric is dropped for that GPU, and not asked again.
- LIBRARY_NOT_FOUND: no NVML on this host, a CPU node (the gpu collector has no data). With
  the library present, DRIVER_NOT_LOADED is a broken GPU node: the gpu collector fails.
- Everything else (NO_PERMISSION, UNKNOWN, TIMEOUT, ...): transient for that call; the value is
  missing this refresh. UNKNOWN from *every* device call of a GPU for `UNKNOWN_LOST_REFRESHES`
  refreshes in a row counts as lost: some drivers answer UNKNOWN rather than GPU_IS_LOST for a
  GPU that fell off the bus, and a GPU that answers nothing at all is not serving anyone.

Every error is counted in `inferwatch_exporter_nvml_errors_total{call,code}`. A call still running
after `hung_after_seconds` is a hung driver: `inferwatch_exporter_nvml_hung` is 1 while it lasts and
`inferwatch_exporter_nvml_hangs_total{call}` counts it once per hang.

Threads: `Nvml.run(fn)` runs jobs on one NVML worker thread (so a hung driver call blocks one job,
not the event loop); XidWatcher's thread only waits on the event set and counts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import enum
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pynvml
from prometheus_client.core import Metric

from exporter.snapshot import NVML_ERRORS, NVML_HANGS, NVML_HUNG

log = logging.getLogger(__name__)
T = TypeVar("T")


class Outcome(enum.Enum):
    LOST = "lost"
    UNSUPPORTED = "unsupported"
    UNAVAILABLE = "unavailable"
    TRANSIENT = "transient"


CODE_NAMES: dict[int, str] = {
    int(getattr(pynvml, name)): name.removeprefix("NVML_ERROR_")
    for name in dir(pynvml)
    if name.startswith("NVML_ERROR_") and isinstance(getattr(pynvml, name), int)
}
POLICY: dict[int, Outcome] = {
    pynvml.NVML_ERROR_GPU_IS_LOST: Outcome.LOST,
    pynvml.NVML_ERROR_RESET_REQUIRED: Outcome.LOST,
    pynvml.NVML_ERROR_NOT_SUPPORTED: Outcome.UNSUPPORTED,
    pynvml.NVML_ERROR_FUNCTION_NOT_FOUND: Outcome.UNSUPPORTED,
    pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: Outcome.UNAVAILABLE,
}
UNKNOWN_LOST_REFRESHES = 3


def outcome(code: int) -> Outcome:
    """What an NVML return code means for the exporter (see the module docstring)."""
    return POLICY.get(code, Outcome.TRANSIENT)


def code_name(code: int) -> str:
    return CODE_NAMES.get(code, str(code))


NvmlError = pynvml.NVMLError


class NvmlBusyError(RuntimeError):
    """The NVML worker is stuck in a driver call, or too many jobs wait for it."""


class NvmlUnavailableError(RuntimeError):
    """NVML cannot be loaded at all: no NVIDIA driver/libnvidia-ml.so.1 on this host."""


class GpuLostError(Exception):
    def __init__(self, call: str, code: int) -> None:
        super().__init__(f"{call}: {code_name(code)}")
        self.code = code


# -- readings -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuIdentity:
    index: int
    uuid: str
    name: str
    pci_bus_id: str


@dataclass(frozen=True)
class ProcessReading:
    pid: int
    used_bytes: int | None  # None: NVML_VALUE_NOT_AVAILABLE


@dataclass
class MigReading:
    gpu_instance_id: int | None
    compute_instance_id: int | None
    uuid: str
    name: str
    memory_total: int | None = None
    memory_used: int | None = None


@dataclass
class GpmReading:
    """GPM metrics of one GPU (gpu_instance_id None) or MIG instance between two samples."""

    gpu_instance_id: int | None
    values: dict[str, float] = field(default_factory=dict)  # GPM_METRICS key -> base unit


@dataclass
class GpuReading:
    """One GPU in one refresh, in base units; None means "not available this refresh"."""

    identity: GpuIdentity
    up: bool
    mig_mode: str = "unsupported"
    memory_total_bytes: float | None = None
    memory_used_bytes: float | None = None
    memory_free_bytes: float | None = None
    memory_reserved_bytes: float | None = None
    utilization_ratio: float | None = None
    memory_copy_utilization_ratio: float | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    energy_joules: float | None = None
    temperature_gpu: float | None = None
    temperature_memory: float | None = None
    clocks_hertz: dict[str, float] = field(default_factory=dict)
    throttle_reasons: int | None = None
    ecc_corrected: float | None = None
    ecc_uncorrected: float | None = None
    # Sticky health: these stay set until the GPU is reset/recovered (NVML reports them so).
    recovery_action: float | None = None  # nvmlDeviceGpuRecoveryAction_t, via field value
    remapped_rows: dict[str, float] = field(default_factory=dict)  # bank -> rows
    remap_pending: bool | None = None
    remap_failure: bool | None = None
    pcie_replays: float | None = None
    pcie_link_generation: dict[str, float] = field(default_factory=dict)  # current|max
    pcie_link_width: dict[str, float] = field(default_factory=dict)  # current|max
    nvlink_links: float | None = None  # NVLink links on the board; None: no NVLink
    nvlink_up: dict[int, bool] = field(default_factory=dict)  # link -> active
    nvlink_errors: dict[tuple[int, str], float] = field(default_factory=dict)  # (link, type)
    gpm: list[GpmReading] = field(default_factory=list)  # whole GPU, then MIG instances
    processes: list[ProcessReading] | None = None  # None: not read or not available
    mig: list[MigReading] = field(default_factory=list)


@dataclass
class NvmlReading:
    driver_version: str
    cuda_version: str
    device_count: int
    gpus: list[GpuReading]
    xids: dict[tuple[str, int], int]


@dataclass(frozen=True)
class ReadOptions:
    process_memory: bool = True
    xid_events: bool = True
    gpm: bool = False
    reinit_interval_seconds: float = 60.0


MIG_MODES = {pynvml.NVML_DEVICE_MIG_DISABLE: "disabled", pynvml.NVML_DEVICE_MIG_ENABLE: "enabled"}
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
    "temperature_memory": pynvml.NVML_FI_DEV_MEMORY_TEMP,
    "recovery_action": pynvml.NVML_FI_DEV_GET_GPU_RECOVERY_ACTION,
    "nvlink_links": pynvml.NVML_FI_DEV_NVLINK_LINK_COUNT,
}
# NVLink error counters (nvmlNvLinkErrorCounter_t) -> `type` label; Hopper and later answer
# NOT_SUPPORTED for some (that counter is dropped alone).
NVLINK_ERRORS = {
    "replay": pynvml.NVML_NVLINK_ERROR_DL_REPLAY,
    "recovery": pynvml.NVML_NVLINK_ERROR_DL_RECOVERY,
    "crc_flit": pynvml.NVML_NVLINK_ERROR_DL_CRC_FLIT,
    "crc_data": pynvml.NVML_NVLINK_ERROR_DL_CRC_DATA,
    "ecc_data": pynvml.NVML_NVLINK_ERROR_DL_ECC_DATA,
}
MIB = 2**20
# GPM metric -> (NVML metric id, scale to the base unit). nvml.h: utilizations and occupancy
# are percentages (0-100), throughputs MiB/s.
GPM_METRICS: dict[str, tuple[int, float]] = {
    "sm_utilization": (pynvml.NVML_GPM_METRIC_SM_UTIL, 0.01),
    "sm_occupancy": (pynvml.NVML_GPM_METRIC_SM_OCCUPANCY, 0.01),
    "tensor_utilization": (pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL, 0.01),
    "dram_bandwidth_utilization": (pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL, 0.01),
    "pcie_tx": (pynvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC, MIB),
    "pcie_rx": (pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC, MIB),
    "nvlink_tx": (pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC, MIB),
    "nvlink_rx": (pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC, MIB),
}
# nvmlDeviceGpuRecoveryAction_t (nvml.h): what the driver says the GPU needs before it is healthy.
RECOVERY_ACTIONS = {
    pynvml.NVML_GPU_RECOVERY_ACTION_NONE: "none",
    pynvml.NVML_GPU_RECOVERY_ACTION_GPU_RESET: "gpu_reset",
    pynvml.NVML_GPU_RECOVERY_ACTION_NODE_REBOOT: "node_reboot",
    pynvml.NVML_GPU_RECOVERY_ACTION_DRAIN_P2P: "drain_p2p",
    pynvml.NVML_GPU_RECOVERY_ACTION_DRAIN_AND_RESET: "drain_and_reset",
    pynvml.NVML_GPU_RECOVERY_ACTION_RECOVER_IMEX_DOMAIN: "recover_imex_domain",
    pynvml.NVML_GPU_RECOVERY_ACTION_BUS_RESET: "bus_reset",
    pynvml.NVML_GPU_RECOVERY_ACTION_SYSTEM_REBOOT: "system_reboot",
}
# (metric key, label) -> NVML call, for the PCIe link's generation and width.
PCIE_LINK = {
    ("generation", "current"): "nvmlDeviceGetCurrPcieLinkGeneration",
    ("generation", "max"): "nvmlDeviceGetMaxPcieLinkGeneration",
    ("width", "current"): "nvmlDeviceGetCurrPcieLinkWidth",
    ("width", "max"): "nvmlDeviceGetMaxPcieLinkWidth",
}


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


def handle_address(handle: Any) -> int:
    """A device handle's address: stable per device for one NVML init, usable as a dict key."""
    return ctypes.cast(handle, ctypes.c_void_p).value or 0


# -- the worker ---------------------------------------------------------------------------------


class Nvml:
    """One NVML worker thread; collectors hand it one function per refresh (`await run(fn)`).

    Jobs from different collectors queue behind each other as long as the running one makes
    progress; once a job has been running longer than `hung_after_seconds` (a hung driver call)
    or the queue is full, new jobs fail fast with NvmlBusyError instead of piling up.
    """

    def __init__(self, hung_after_seconds: float = 5.0, max_queued: int = 4) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nvml")
        self.hung_after_seconds = hung_after_seconds
        self.max_queued = max_queued
        self._queued = 0  # submitted and not finished, the running job included
        self._running_since: float | None = None  # set on the worker thread
        self.current_call = ""  # the NVML function a job is in now (set by GpuReader)
        self._hang_counted: float | None = None  # _running_since of the hang already counted
        self._hangs: Counter[str] = Counter()
        self._initialized = False
        self._reinit = False
        self.generation = 0  # bumped by every successful nvmlInit; handles die with it
        self._errors_lock = threading.Lock()
        self._errors: Counter[tuple[str, str]] = Counter()
        self.processes = ProcessTable()

    @property
    def hung(self) -> bool:
        """True while a job has been inside the driver longer than `hung_after_seconds`."""
        started = self._running_since
        return started is not None and time.monotonic() - started > self.hung_after_seconds

    @property
    def busy(self) -> bool:
        """True while a job is stuck in the driver or the queue is full."""
        return self.hung or self._queued >= self.max_queued

    def _note_hang(self) -> None:
        """Count a hang once, under the call it is stuck in (event loop; cheap)."""
        started = self._running_since
        if self.hung and started is not None and started != self._hang_counted:
            self._hang_counted = started
            call = self.current_call or "unknown"
            with self._errors_lock:
                self._hangs[call] += 1
            log.warning("NVML call %s hung for over %ss", call, self.hung_after_seconds)

    @property
    def idle(self) -> bool:
        """No job running or waiting."""
        return self._queued == 0

    async def run(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the NVML thread (after nvmlInit there); NvmlBusyError if it is stuck.

        NvmlUnavailableError when NVML cannot be loaded; other NVML errors propagate.
        """
        self._note_hang()
        if self.busy:
            raise NvmlBusyError("the NVML worker is stuck in a driver call")
        self._queued += 1
        future = self._executor.submit(self._timed, fn)
        future.add_done_callback(self._finished)
        return await asyncio.wrap_future(future)

    def _finished(self, _: concurrent.futures.Future[Any]) -> None:
        self._queued -= 1

    def _timed(self, fn: Callable[[], T]) -> T:
        self._running_since = time.monotonic()
        try:
            return self._call(fn)
        finally:
            self._running_since = None
            self.current_call = ""

    def _call(self, fn: Callable[[], T]) -> T:
        if self._reinit and self._initialized:
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError as exc:
                log.debug("nvmlShutdown before re-init failed: %s", exc)
            self._initialized = False
        self._reinit = False
        if not self._initialized:
            self.current_call = "nvmlInit"
            try:
                pynvml.nvmlInit()
            except pynvml.NVMLError as exc:
                self.count_error("nvmlInit", exc.value)
                if outcome(exc.value) is Outcome.UNAVAILABLE:
                    raise NvmlUnavailableError(
                        f"NVML unavailable ({exc}): no NVIDIA driver/libnvidia-ml.so.1 here"
                    ) from None
                raise
            self._initialized = True
            self.generation += 1
        return fn()

    def reset(self) -> None:
        """Shut down and re-initialize NVML before the next job (after a GPU was lost)."""
        self._reinit = True

    def count_error(self, call: str, code: int) -> None:
        with self._errors_lock:
            self._errors[(call, code_name(code))] += 1

    def error_families(self) -> list[Metric]:
        """`inferwatch_exporter_nvml_errors_total{call,code}` (read by the exposition)."""
        family = NVML_ERRORS.counter()
        with self._errors_lock:
            errors = sorted(self._errors.items())
            hangs = sorted(self._hangs.items())
        for (call, code), total in errors:
            family.add_metric([call, code], float(total))
        hung, hang_counter = NVML_HUNG.gauge(), NVML_HANGS.counter()
        hung.add_metric([], 1.0 if self.hung else 0.0)
        for call, total in hangs:
            hang_counter.add_metric([call], float(total))
        return [family, hung, hang_counter]

    def close(self) -> None:
        if self._initialized and not self.busy:
            try:
                self._executor.submit(pynvml.nvmlShutdown).result(timeout=2)
            except Exception as exc:
                log.debug("nvmlShutdown failed: %s", exc)
        self._executor.shutdown(wait=False, cancel_futures=True)


class ProcessTable:
    """The newest per-GPU compute-process list, shared by every collector for one refresh.

    The gpu collector records it while it reads the GPUs; cuda_allocator uses it when it is
    fresh enough instead of asking NVML (and /proc) again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at = -1e18
        self._by_gpu: dict[str, list[ProcessReading]] = {}

    def record(self, by_gpu: dict[str, list[ProcessReading]]) -> None:
        with self._lock:
            self._by_gpu = by_gpu
            self._at = time.monotonic()

    def fresh(self, max_age_seconds: float) -> dict[str, list[ProcessReading]] | None:
        with self._lock:
            if time.monotonic() - self._at <= max_age_seconds:
                return self._by_gpu
        return None


# -- reading GPUs (on the NVML worker thread only) ------------------------------------------------


class _Calls:
    """Per-GPU error bookkeeping for one refresh."""

    def __init__(self) -> None:
        self.ok = 0
        self.unknown = 0
        self.failed = 0


class GpuReader:
    """Reads every GPU in one NVML job and applies `POLICY` to each call's error."""

    def __init__(self, nvml: Nvml, options: ReadOptions) -> None:
        self.nvml = nvml
        self.options = options
        self.xids = XidWatcher(nvml)
        self._generation = -1
        self._identities: dict[int, GpuIdentity] = {}
        self._system: tuple[str, str] | None = None
        self._unsupported: set[tuple[str, str]] = set()  # (uuid, call)
        self._unknown_streak: dict[str, int] = {}
        self._last_reinit = 0.0
        self._gpm_samples: dict[tuple[str, int | None], Any] = {}  # last sample per GPU/MIG
        self._gpm_supported: set[str] = set()  # uuids GPM said yes for, this NVML init
        # Every GPU ever seen, by uuid: a vanished one keeps reporting up 0.
        self.known: dict[str, GpuIdentity] = {}

    def read(self) -> NvmlReading:
        generation = self.nvml.generation
        if generation != self._generation:  # first job, or NVML was re-initialized
            self.xids.stop()
            self._free_gpm_samples()
            self._gpm_supported.clear()
            self._identities.clear()
            self._system = None
            self._generation = generation
        elif self.xids.paused:  # the event wait failed: register again on a new event set
            self.xids.stop()
        if self._system is None:
            driver = _text(self._system_call("nvmlSystemGetDriverVersion"))
            try:
                cuda = _cuda_version(self._system_call("nvmlSystemGetCudaDriverVersion_v2"))
            except pynvml.NVMLError:
                cuda = ""
            self._system = (driver, cuda)
        count = int(self._system_call("nvmlDeviceGetCount_v2"))
        gpus = [g for g in (self._read_gpu(index) for index in range(count)) if g is not None]
        seen = {gpu.identity.uuid for gpu in gpus}
        gpus += [
            GpuReading(ident, up=False) for uuid, ident in self.known.items() if uuid not in seen
        ]
        if any(not gpu.up for gpu in gpus):
            now = time.monotonic()
            if now - self._last_reinit >= self.options.reinit_interval_seconds:
                self._last_reinit = now
                self.nvml.reset()  # takes effect before the next job
        if self.options.process_memory:
            self.nvml.processes.record(
                {g.identity.uuid: g.processes for g in gpus if g.processes is not None}
            )
        return NvmlReading(*self._system, count, gpus, self.xids.counts())

    _SYSTEM_CALLS: dict[str, Callable[[], Any]] = {
        "nvmlSystemGetDriverVersion": pynvml.nvmlSystemGetDriverVersion,
        "nvmlSystemGetCudaDriverVersion_v2": pynvml.nvmlSystemGetCudaDriverVersion_v2,
        "nvmlDeviceGetCount_v2": pynvml.nvmlDeviceGetCount,
    }

    def _system_call(self, call: str) -> Any:
        """A call not about one GPU: any error fails the whole read (counted first)."""
        try:
            return self._SYSTEM_CALLS[call]()
        except pynvml.NVMLError as exc:
            self.nvml.count_error(call, exc.value)
            raise

    def _get(
        self,
        calls: _Calls,
        uuid: str,
        call: str,
        fn: Callable[..., T],
        *args: Any,
        key: str | None = None,
    ) -> T | None:
        """Call NVML under POLICY: the value, or None (unsupported, remembered per `key`, which
        defaults to the call's name; or transient). GpuLostError when the GPU is lost."""
        key = key or call
        if (uuid, key) in self._unsupported:
            return None
        self.nvml.current_call = call
        try:
            value = fn(*args)
        except pynvml.NVMLError as exc:
            self._failed(calls, uuid, call, exc.value, key)
            return None
        calls.ok += 1
        return value

    def _failed(
        self, calls: _Calls, uuid: str, call: str, code: int, key: str | None = None
    ) -> None:
        self.nvml.count_error(call, code)
        kind = outcome(code)
        if kind is Outcome.LOST:
            raise GpuLostError(call, code)
        if kind is Outcome.UNSUPPORTED and uuid:  # only a named GPU can remember it
            self._unsupported.add((uuid, key or call))
            log.info("gpu %s: %s not supported by this GPU/driver; metric dropped", uuid, call)
            return
        calls.failed += 1
        if code == pynvml.NVML_ERROR_UNKNOWN:
            calls.unknown += 1
        log.debug("gpu %s: %s failed: %s", uuid, call, code_name(code))

    def _identity(self, calls: _Calls, index: int, handle: Any) -> GpuIdentity | None:
        """The GPU's identity, cached per NVML init; None when it cannot be named (yet)."""
        cached = self._identities.get(index)
        if cached is not None:
            return cached
        uuid = self._get(calls, "", "nvmlDeviceGetUUID", pynvml.nvmlDeviceGetUUID, handle)
        if uuid is None:  # unnamed this refresh: reuse what this index was, if anything
            return next((i for i in self.known.values() if i.index == index), None)
        uuid = _text(uuid)
        # Known by uuid from here on, so a GPU lost while naming it is reported under its uuid.
        self.known.setdefault(uuid, GpuIdentity(index, uuid, "", ""))
        name = self._get(calls, uuid, "nvmlDeviceGetName", pynvml.nvmlDeviceGetName, handle)
        pci = self._get(
            calls, uuid, "nvmlDeviceGetPciInfo_v3", pynvml.nvmlDeviceGetPciInfo_v3, handle
        )
        identity = GpuIdentity(
            index, uuid, _text(name) if name is not None else "", _text(pci.busId) if pci else ""
        )
        if (name is not None and pci is not None) or calls.failed == 0:
            self._identities[index] = identity  # complete, or as complete as it will get
        self.known[uuid] = identity
        return identity

    def _read_gpu(self, index: int) -> GpuReading | None:
        calls = _Calls()
        identity = self._identities.get(index)
        try:
            handle = self._get(
                calls, "", "nvmlDeviceGetHandleByIndex_v2", pynvml.nvmlDeviceGetHandleByIndex, index
            )
            if handle is None:  # no values this refresh; listed under what it was, if known
                identity = identity or next(
                    (i for i in self.known.values() if i.index == index), None
                )
            else:
                identity = self._identity(calls, index, handle)
            if identity is None:
                return None  # never named: nothing to report it under yet
            reading = GpuReading(identity, up=True)
            if handle is not None:
                self._fill(calls, reading, handle)
        except GpuLostError as lost:
            fallback = identity or next(
                (i for i in self.known.values() if i.index == index), GpuIdentity(index, "", "", "")
            )
            log.debug("gpu %d (%s): lost (%s)", index, fallback.uuid, lost)
            return GpuReading(fallback, up=False)
        if calls.unknown and calls.ok == 0 and calls.unknown == calls.failed:
            streak = self._unknown_streak.get(identity.uuid, 0) + 1
            self._unknown_streak[identity.uuid] = streak
            if streak >= UNKNOWN_LOST_REFRESHES:
                log.debug("gpu %s: only UNKNOWN for %d refreshes: lost", identity.uuid, streak)
                return GpuReading(identity, up=False)
        else:
            self._unknown_streak.pop(identity.uuid, None)
        return reading

    def _fill(self, calls: _Calls, r: GpuReading, handle: Any) -> None:
        uuid = r.identity.uuid

        def get(call: str, fn: Callable[..., T], *args: Any, key: str | None = None) -> T | None:
            return self._get(calls, uuid, call, fn, *args, key=key)

        if self.options.xid_events and not self.xids.registered(handle, uuid):
            get("nvmlDeviceRegisterEvents", self.xids.watch, handle, uuid)

        mig = get("nvmlDeviceGetMigMode", pynvml.nvmlDeviceGetMigMode, handle)
        if mig is not None:
            r.mig_mode = MIG_MODES.get(mig[0], str(mig[0]))

        v2 = "nvmlDeviceGetMemoryInfo_v2"
        memory = get(v2, pynvml.nvmlDeviceGetMemoryInfo, handle, pynvml.nvmlMemory_v2)
        if memory is not None:
            r.memory_total_bytes = float(memory.total)
            r.memory_used_bytes = float(memory.used)
            r.memory_free_bytes = float(memory.free)
            r.memory_reserved_bytes = float(memory.reserved)
        elif (uuid, v2) in self._unsupported:  # drivers before 510: `used` includes reserved
            memory = get("nvmlDeviceGetMemoryInfo", pynvml.nvmlDeviceGetMemoryInfo, handle)
            if memory is not None:
                r.memory_total_bytes = float(memory.total)
                r.memory_used_bytes = float(memory.used)
                r.memory_free_bytes = float(memory.free)

        util = get("nvmlDeviceGetUtilizationRates", pynvml.nvmlDeviceGetUtilizationRates, handle)
        if util is not None:
            r.utilization_ratio = util.gpu / 100.0
            r.memory_copy_utilization_ratio = util.memory / 100.0

        gpu_sensor = pynvml.NVML_TEMPERATURE_GPU
        temp = get(
            "nvmlDeviceGetTemperatureV", pynvml.nvmlDeviceGetTemperatureV, handle, gpu_sensor
        )
        if temp is None and (uuid, "nvmlDeviceGetTemperatureV") in self._unsupported:
            temp = get(
                "nvmlDeviceGetTemperature", pynvml.nvmlDeviceGetTemperature, handle, gpu_sensor
            )
        if temp is not None:
            r.temperature_gpu = float(temp)

        power = get("nvmlDeviceGetPowerUsage", pynvml.nvmlDeviceGetPowerUsage, handle)
        if power is not None:
            r.power_watts = power / 1000.0
        limit = get(
            "nvmlDeviceGetEnforcedPowerLimit", pynvml.nvmlDeviceGetEnforcedPowerLimit, handle
        )
        if limit is not None:
            r.power_limit_watts = limit / 1000.0
        energy = get(
            "nvmlDeviceGetTotalEnergyConsumption",
            pynvml.nvmlDeviceGetTotalEnergyConsumption,
            handle,
        )
        if energy is not None:
            r.energy_joules = energy / 1000.0

        for clock, clock_type in CLOCKS.items():  # per domain: one may be unsupported
            call = "nvmlDeviceGetClockInfo"
            mhz = get(call, pynvml.nvmlDeviceGetClockInfo, handle, clock_type, key=f"clock:{clock}")
            if mhz is not None:
                r.clocks_hertz[clock] = mhz * 1e6

        events = "nvmlDeviceGetCurrentClocksEventReasons"
        reasons = get(events, pynvml.nvmlDeviceGetCurrentClocksEventReasons, handle)
        if reasons is None and (uuid, events) in self._unsupported:
            reasons = get(
                "nvmlDeviceGetCurrentClocksThrottleReasons",
                pynvml.nvmlDeviceGetCurrentClocksThrottleReasons,
                handle,
            )
        r.throttle_reasons = reasons

        self._fill_fields(calls, r, handle)
        self._fill_health(calls, r, handle)
        if self.options.process_memory:
            procs = get(
                "nvmlDeviceGetComputeRunningProcesses_v3",
                pynvml.nvmlDeviceGetComputeRunningProcesses_v3,
                handle,
            )
            if procs is not None:
                r.processes = [
                    ProcessReading(
                        int(p.pid), None if p.usedGpuMemory is None else int(p.usedGpuMemory)
                    )
                    for p in procs
                ]
        if r.mig_mode == "enabled":
            self._fill_mig(calls, r, handle)
        if self.options.gpm:
            self._fill_gpm(calls, r, handle)

    def _fill_fields(self, calls: _Calls, r: GpuReading, handle: Any) -> None:
        uuid = r.identity.uuid
        wanted = {k: f for k, f in FIELDS.items() if (uuid, f"field:{k}") not in self._unsupported}
        if not wanted:
            return
        values = self._get(
            calls,
            uuid,
            "nvmlDeviceGetFieldValues",
            pynvml.nvmlDeviceGetFieldValues,
            handle,
            list(wanted.values()),
        )
        if values is None:
            return
        for key, entry in zip(wanted, values, strict=True):
            code = int(entry.nvmlReturn)
            if code == pynvml.NVML_SUCCESS:
                setattr(r, key, _field_value(entry))
            elif outcome(code) is Outcome.UNSUPPORTED:
                self._unsupported.add((uuid, f"field:{key}"))
                log.info(
                    "gpu %s: field:%s not supported by this GPU/driver; metric dropped", uuid, key
                )
            else:
                self._failed(calls, uuid, "nvmlDeviceGetFieldValues", code)

    def _fill_health(self, calls: _Calls, r: GpuReading, handle: Any) -> None:
        """Row remapping, PCIe replays and link state: each dropped alone when unsupported."""
        uuid = r.identity.uuid

        def get(call: str, fn: Callable[..., T], *args: Any) -> T | None:
            return self._get(calls, uuid, call, fn, *args)

        remapped = get("nvmlDeviceGetRemappedRows", pynvml.nvmlDeviceGetRemappedRows, handle)
        if remapped is not None:
            corrected, uncorrected, pending, failure = remapped
            r.remapped_rows = {"correctable": float(corrected), "uncorrectable": float(uncorrected)}
            r.remap_pending, r.remap_failure = bool(pending), bool(failure)
        replays = get(
            "nvmlDeviceGetPcieReplayCounter", pynvml.nvmlDeviceGetPcieReplayCounter, handle
        )
        if replays is not None:
            r.pcie_replays = float(replays)
        for (kind, which), call in PCIE_LINK.items():
            value = get(call, getattr(pynvml, call), handle)
            if value is not None:
                target = r.pcie_link_generation if kind == "generation" else r.pcie_link_width
                target[which] = float(value)
        self._fill_nvlink(calls, r, handle)

    def _fill_nvlink(self, calls: _Calls, r: GpuReading, handle: Any) -> None:
        """Per-link state and error counters, for the links the board has (field value)."""
        uuid = r.identity.uuid
        for link in range(int(r.nvlink_links or 0)):
            state = self._get(
                calls,
                uuid,
                "nvmlDeviceGetNvLinkState",
                pynvml.nvmlDeviceGetNvLinkState,
                handle,
                link,
            )
            if state is None:
                continue
            r.nvlink_up[link] = bool(state)
            if not state:
                continue  # an inactive link has no error counters to read
            for name, counter in NVLINK_ERRORS.items():
                value = self._get(
                    calls,
                    uuid,
                    "nvmlDeviceGetNvLinkErrorCounter",
                    pynvml.nvmlDeviceGetNvLinkErrorCounter,
                    handle,
                    link,
                    counter,
                    key=f"nvlink_error:{name}",
                )
                if value is not None:
                    r.nvlink_errors[(link, name)] = float(value)

    def _fill_gpm(self, calls: _Calls, r: GpuReading, handle: Any) -> None:
        """GPM metrics between this refresh's sample and the last one (none on the first).

        Only where nvmlGpmQueryDeviceSupport says so (Hopper and later); a GPU without it is
        asked once. With MIG enabled, per GPU instance (nvmlGpmMigSampleGet) instead.
        """
        uuid = r.identity.uuid
        if uuid not in self._gpm_supported:
            support = self._get(
                calls, uuid, "nvmlGpmQueryDeviceSupport", pynvml.nvmlGpmQueryDeviceSupport, handle
            )
            if support is None:
                return
            if not support.isSupportedDevice:
                self._unsupported.add((uuid, "nvmlGpmQueryDeviceSupport"))
                log.info("gpu %s: GPM not supported by this GPU; GPM metrics dropped", uuid)
                return
            self._gpm_supported.add(uuid)
        if r.mig_mode == "enabled":
            for instance in {m.gpu_instance_id for m in r.mig if m.gpu_instance_id is not None}:
                self._gpm_one(calls, r, handle, instance)
        else:
            self._gpm_one(calls, r, handle, None)

    def _gpm_one(self, calls: _Calls, r: GpuReading, handle: Any, instance: int | None) -> None:
        uuid = r.identity.uuid
        sample = self._get(calls, uuid, "nvmlGpmSampleAlloc", pynvml.nvmlGpmSampleAlloc)
        if sample is None:
            return
        if instance is None:
            got = self._get(
                calls, uuid, "nvmlGpmSampleGet", pynvml.nvmlGpmSampleGet, handle, sample
            )
        else:
            got = self._get(
                calls,
                uuid,
                "nvmlGpmMigSampleGet",
                pynvml.nvmlGpmMigSampleGet,
                handle,
                instance,
                sample,
            )
        if got is None:
            self._free_gpm_sample(sample)
            return
        previous = self._gpm_samples.pop((uuid, instance), None)
        self._gpm_samples[(uuid, instance)] = sample
        if previous is None:
            return  # GPM metrics need two samples: from the next refresh on
        request = pynvml.c_nvmlGpmMetricsGet_t()
        request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
        request.sample1, request.sample2 = previous, sample
        wanted = {
            k: v for k, v in GPM_METRICS.items() if (uuid, f"gpm:{k}") not in self._unsupported
        }
        request.numMetrics = len(wanted)
        for i, (metric_id, _) in enumerate(wanted.values()):
            request.metrics[i].metricId = metric_id
        result = self._get(calls, uuid, "nvmlGpmMetricsGet", pynvml.nvmlGpmMetricsGet, request)
        self._free_gpm_sample(previous)
        if result is None:
            return
        reading = GpmReading(instance)
        for i, (key, (_, scale)) in enumerate(wanted.items()):
            code = int(result.metrics[i].nvmlReturn)
            if code == pynvml.NVML_SUCCESS:
                reading.values[key] = float(result.metrics[i].value) * scale
            elif outcome(code) is Outcome.UNSUPPORTED:
                self._unsupported.add((uuid, f"gpm:{key}"))
                log.info("gpu %s: GPM metric %s not supported; metric dropped", uuid, key)
            else:
                self._failed(calls, uuid, "nvmlGpmMetricsGet", code)
        r.gpm.append(reading)

    def _free_gpm_sample(self, sample: Any) -> None:
        try:
            pynvml.nvmlGpmSampleFree(sample)
        except pynvml.NVMLError as exc:
            self.nvml.count_error("nvmlGpmSampleFree", exc.value)

    def _free_gpm_samples(self) -> None:
        """Samples belong to the NVML init they came from: free them before re-sampling."""
        samples, self._gpm_samples = self._gpm_samples, {}
        for sample in samples.values():
            try:
                pynvml.nvmlGpmSampleFree(sample)
            except pynvml.NVMLError as exc:  # already gone with nvmlShutdown: nothing leaks
                log.debug("nvmlGpmSampleFree after re-init: %s", exc)

    def _fill_mig(self, calls: _Calls, r: GpuReading, handle: Any) -> None:
        uuid = r.identity.uuid

        def get(call: str, fn: Callable[..., T], *args: Any, key: str | None = None) -> T | None:
            return self._get(calls, uuid, call, fn, *args, key=key)

        slots = get("nvmlDeviceGetMaxMigDeviceCount", pynvml.nvmlDeviceGetMaxMigDeviceCount, handle)
        for slot in range(slots or 0):
            try:
                mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except pynvml.NVMLError as exc:
                if exc.value == pynvml.NVML_ERROR_NOT_FOUND:
                    continue  # an empty slot: not an error
                self._failed(calls, uuid, "nvmlDeviceGetMigDeviceHandleByIndex", exc.value)
                continue
            mig_uuid = get("nvmlDeviceGetUUID", pynvml.nvmlDeviceGetUUID, mig, key="mig:uuid")
            if mig_uuid is None:
                continue  # cannot name the instance this refresh
            name = get("nvmlDeviceGetName", pynvml.nvmlDeviceGetName, mig, key="mig:name")
            instance = MigReading(
                gpu_instance_id=get(
                    "nvmlDeviceGetGpuInstanceId", pynvml.nvmlDeviceGetGpuInstanceId, mig
                ),
                compute_instance_id=get(
                    "nvmlDeviceGetComputeInstanceId", pynvml.nvmlDeviceGetComputeInstanceId, mig
                ),
                uuid=_text(mig_uuid),
                name=_text(name) if name is not None else "",
            )
            memory = get(
                "nvmlDeviceGetMemoryInfo", pynvml.nvmlDeviceGetMemoryInfo, mig, key="mig:memory"
            )
            if memory is not None:
                instance.memory_total, instance.memory_used = memory.total, memory.used
            r.mig.append(instance)

    def close(self) -> None:
        """On the NVML worker thread: stop the Xid watcher, free its event set and GPM samples."""
        self.xids.stop()
        self._free_gpm_samples()


def read_processes(nvml: Nvml) -> dict[str, list[ProcessReading]]:
    """Every GPU's compute processes (NVML worker thread only); a failing GPU is skipped."""
    result: dict[str, list[ProcessReading]] = {}
    for index in range(pynvml.nvmlDeviceGetCount()):
        call = nvml.current_call = "nvmlDeviceGetHandleByIndex_v2"
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            call = nvml.current_call = "nvmlDeviceGetUUID"
            uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
            call = nvml.current_call = "nvmlDeviceGetComputeRunningProcesses_v3"
            processes = pynvml.nvmlDeviceGetComputeRunningProcesses_v3(handle)
        except pynvml.NVMLError as exc:
            nvml.count_error(call, exc.value)
            continue  # the gpu collector reports what is wrong with this GPU
        result[uuid] = [
            ProcessReading(int(p.pid), None if p.usedGpuMemory is None else int(p.usedGpuMemory))
            for p in processes
        ]
    nvml.processes.record(result)
    return result


# What the wait returns once nvmlShutdown (a re-init) has freed its event set: not an error.
_CLOSED = frozenset({pynvml.NVML_ERROR_UNINITIALIZED, pynvml.NVML_ERROR_INVALID_ARGUMENT})


class XidWatcher:
    """A thread blocked in nvmlEventSetWait that counts Xid events per (device uuid, xid).

    `watch()` runs on the NVML worker thread (inside a refresh job): it creates the event set
    and registers devices. The thread only waits and counts; `counts()` is read by the collector.
    Counts survive re-initialization: after a lost GPU comes back, the next refresh registers
    it again on a new event set and counting resumes.
    """

    def __init__(self, nvml: Nvml, wait_ms: int = 500) -> None:
        self.nvml = nvml
        self.wait_ms = wait_ms
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, int]] = Counter()
        self._devices: dict[int, str] = {}  # handle address -> uuid
        self._event_set: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.paused = False  # the wait failed: no counting until registered again
        # Called on the watcher thread after each Xid is counted (the gpu collector re-publishes).
        self.on_count: Callable[[], None] | None = None

    def registered(self, handle: Any, uuid: str) -> bool:
        return self._devices.get(handle_address(handle)) == uuid

    def watch(self, handle: Any, uuid: str) -> None:
        """Register a device for Xid events (NVML worker thread only). Raises NVMLError."""
        if self._event_set is None:
            self._event_set = pynvml.nvmlEventSetCreate()
        pynvml.nvmlDeviceRegisterEvents(
            handle, pynvml.nvmlEventTypeXidCriticalError, self._event_set
        )
        with self._lock:
            self._devices[handle_address(handle)] = uuid
        if self._thread is None:
            self._stop.clear()
            self.paused = False
            self._thread = threading.Thread(
                target=self._run, args=(self._event_set,), name="nvml-xid", daemon=True
            )
            self._thread.start()

    def counts(self) -> dict[tuple[str, int], int]:
        with self._lock:
            return dict(self._counts)

    def _run(self, event_set: Any) -> None:
        while not self._stop.is_set():
            try:
                data = pynvml.nvmlEventSetWait(event_set, self.wait_ms)
            except pynvml.NVMLError as exc:
                if exc.value == pynvml.NVML_ERROR_TIMEOUT:
                    continue
                self.paused = True  # it would fail again at once: register anew next refresh
                if self._stop.is_set() or exc.value in _CLOSED:
                    log.debug("Xid event set closed (NVML re-initialized): %s", exc)
                    return
                self.nvml.count_error("nvmlEventSetWait_v2", exc.value)
                log.warning("Xid event wait failed, counting paused until re-registration: %s", exc)
                return
            if not data.eventType & pynvml.nvmlEventTypeXidCriticalError:
                continue
            with self._lock:
                uuid = self._devices.get(handle_address(data.device))
                if uuid is not None:
                    self._counts[(uuid, int(data.eventData))] += 1
            notify = self.on_count
            if uuid is not None and notify is not None:
                notify()

    def request_stop(self) -> None:
        """Let the thread end after its current wait, without touching NVML."""
        self._stop.set()

    def stop(self) -> None:
        """Stop the thread and free the event set (on the NVML worker thread)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.wait_ms / 1000 + 1)
            self._thread = None
        if self._event_set is not None:
            try:
                pynvml.nvmlEventSetFree(self._event_set)
            except pynvml.NVMLError as exc:
                log.debug("nvmlEventSetFree failed: %s", exc)
            self._event_set = None
        with self._lock:
            self._devices.clear()
