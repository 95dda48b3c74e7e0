"""A fake NVML library object for machines without a GPU, driven from Python.

It is assigned to `pynvml.nvmlLib`, so the real pynvml wrappers run unmodified against it: they
allocate the ctypes structs, pass out-parameters with `byref`, negotiate sizes in two calls and
turn return codes into NVMLError subclasses. The fake therefore speaks the C ABI: it writes into
the objects it is handed and returns NVML return codes, never Python values or exceptions.
A symbol the fake does not define raises AttributeError in pynvml's lookup, which pynvml reports
as NVMLError_FunctionNotFound (what an older driver does).

It is as strict as the real library where the exporter could tell the difference (NVML API
reference, "Event Handling Methods" and "Initialization and Cleanup"):
- events are only reported to event sets a device was registered with, from then on; an Xid
  that happens before anyone registered is not buffered;
- `nvmlEventSetWait` fails with NVML_ERROR_GPU_IS_LOST once a registered GPU is lost;
- `usedGpuMemory` can be NVML_VALUE_NOT_AVAILABLE (pynvml turns it into None);
- handles and event sets die with `nvmlShutdown`: after re-init, old ones are invalid;
- any return code can be injected per call (symbol) and per GPU (`FakeGpu.errors`), or for
  every GPU (`FakeNvmlLib.errors`): NO_PERMISSION, UNKNOWN, TIMEOUT, NOT_SUPPORTED, ...
- sticky health ("GPU recovery action", nvml.h `nvmlDeviceGpuRecoveryAction_t`; row remapping,
  `nvmlDeviceGetRemappedRows`) stays set until `reset_gpu()`, like `nvidia-smi -r`: a reset
  clears the recovery action and applies pending remaps; a remap *failure* survives it. A change
  of recovery action is reported as Xid 154, as the driver logs it;
- NVLink calls take a link index below NVML_NVLINK_MAX_LINKS (else INVALID_ARGUMENT); links the
  board does not have answer NOT_SUPPORTED, and so does every NVLink call on a board without;
- GPM (nvml.h "GPM Functions"): a sample must be allocated, then filled by nvmlGpmSampleGet (or
  nvmlGpmMigSampleGet for a GPU instance, MIG only); nvmlGpmMetricsGet needs the struct version,
  two filled samples of the same device, the second newer, and answers per metric; a GPU without
  GPM answers NOT_SUPPORTED to sampling while nvmlGpmQueryDeviceSupport says isSupportedDevice 0.
"""

from __future__ import annotations

import collections
import ctypes
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pynvml

SUCCESS = int(pynvml.NVML_SUCCESS)
HANDLE_BASE = 0x1000
HANDLE_STRIDE = 0x100
EPOCH_STRIDE = 0x100000  # handles of one nvmlInit..nvmlShutdown epoch; older ones are invalid
EVENT_SET_BASE = 0x9000
MIG_DISABLED_INSTANCE = 0xFFFFFFFF  # what NVML reports as gpuInstanceId outside MIG

# Symbols that are not about one device: they keep answering when a GPU is lost.
_SYSTEM_SYMBOLS = frozenset(
    {
        "nvmlInitWithFlags",
        "nvmlInit_v2",
        "nvmlShutdown",
        "nvmlErrorString",
        "nvmlSystemGetDriverVersion",
        "nvmlSystemGetCudaDriverVersion_v2",
        "nvmlSystemGetCudaDriverVersion",
        "nvmlDeviceGetCount_v2",
        "nvmlDeviceGetHandleByIndex_v2",
        "nvmlEventSetCreate",
        "nvmlEventSetWait_v2",
        "nvmlEventSetFree",
        "nvmlGpmSampleAlloc",  # host memory and arithmetic: no device access
        "nvmlGpmSampleFree",
        "nvmlGpmMetricsGet",
    }
)


@dataclass
class FakeProcess:
    """A compute process on a fake GPU (or on one of its MIG instances)."""

    pid: int
    used_bytes: int | None  # None: NVML_VALUE_NOT_AVAILABLE (e.g. no per-process accounting)
    gpu_instance_id: int = MIG_DISABLED_INSTANCE
    compute_instance_id: int = MIG_DISABLED_INSTANCE


@dataclass
class FakeMigInstance:
    gpu_instance_id: int
    compute_instance_id: int
    uuid: str
    name: str
    memory_total: int
    memory_used: int


@dataclass
class FakeGpu:
    """One simulated device; every field is what NVML would report, in NVML's units."""

    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    pci_bus_id: str = "00000000:00:00.0"
    memory_total: int = 80 * 2**30
    memory_reserved: int = 512 * 2**20
    memory_used: int = 0
    utilization_gpu: int = 0  # percent
    utilization_memory: int = 0  # percent
    temperature: int = 40  # °C
    memory_temperature: int = 45  # °C, via field value NVML_FI_DEV_MEMORY_TEMP
    power_mw: int = 70_000
    power_limit_mw: int = 700_000
    energy_mj: int = 0
    clocks_mhz: dict[int, int] = field(
        default_factory=lambda: {
            pynvml.NVML_CLOCK_GRAPHICS: 1980,
            pynvml.NVML_CLOCK_SM: 1980,
            pynvml.NVML_CLOCK_MEM: 2619,
        }
    )
    clocks_event_reasons: int = pynvml.nvmlClocksEventReasonGpuIdle
    ecc_corrected: int = 0
    ecc_uncorrected: int = 0
    recovery_action: int = pynvml.NVML_GPU_RECOVERY_ACTION_NONE
    remapped_correctable: int = 0
    remapped_uncorrectable: int = 0
    remap_pending: bool = False
    remap_failure: bool = False
    pcie_replays: int = 0
    pcie_generation: tuple[int, int] = (5, 5)  # (current, max)
    pcie_width: tuple[int, int] = (16, 16)  # (current, max)
    nvlink_links: int = 18  # H100 SXM: 18 NVLink4 links; 0: a board without NVLink
    nvlink_down: set[int] = field(default_factory=set)  # inactive links
    # (link, nvmlNvLinkErrorCounter_t) -> count; counters missing here answer NOT_SUPPORTED,
    # as DL_CRC_DATA/DL_ECC_DATA do on Hopper.
    nvlink_errors: dict[tuple[int, int], int] = field(default_factory=dict)
    nvlink_counters: frozenset[int] = frozenset(
        {
            pynvml.NVML_NVLINK_ERROR_DL_REPLAY,
            pynvml.NVML_NVLINK_ERROR_DL_RECOVERY,
            pynvml.NVML_NVLINK_ERROR_DL_CRC_FLIT,
        }
    )
    gpm_supported: bool = True  # Hopper and later
    # GPM metric id -> value NVML computes between two samples (percent or MiB/s).
    gpm_values: dict[int, float] = field(
        default_factory=lambda: {
            pynvml.NVML_GPM_METRIC_SM_UTIL: 40.0,
            pynvml.NVML_GPM_METRIC_SM_OCCUPANCY: 25.0,
            pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: 30.0,
            pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL: 55.0,
            pynvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC: 100.0,
            pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC: 200.0,
            pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC: 1000.0,
            pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC: 2000.0,
        }
    )
    mig_mode: int | None = pynvml.NVML_DEVICE_MIG_DISABLE  # None: MIG not supported
    mig_instances: list[FakeMigInstance] = field(default_factory=list)
    processes: list[FakeProcess] = field(default_factory=list)
    lost: bool = False
    # Symbols answering NVML_ERROR_NOT_SUPPORTED for this device (e.g. consumer boards, MIG).
    not_supported: set[str] = field(default_factory=set)
    # Symbol -> NVML return code this device answers with (injected faults).
    errors: dict[str, int] = field(default_factory=dict)


@dataclass
class _GpmSample:
    filled: tuple[int, int | None, int] | None = None  # (gpu index, gpu instance, sequence)


@dataclass
class _EventSet:
    devices: dict[int, int] = field(default_factory=dict)  # gpu index -> registered event mask
    queue: collections.deque[tuple[int, int, int]] = field(default_factory=collections.deque)


def _target(arg: Any) -> Any:
    """The object behind an out-parameter passed as byref(x) or pointer(x)."""
    if isinstance(arg, ctypes._Pointer):
        return arg.contents
    return arg._obj


def _address(ptr: Any) -> int:
    """The integer value of an opaque NVML handle (a ctypes POINTER instance)."""
    return ctypes.cast(ptr, ctypes.c_void_p).value or 0


def _store_address(ptr_obj: Any, value: int) -> None:
    """Write an address into a POINTER instance in place, as C's `*handle = ...` does."""
    ctypes.c_void_p.from_address(ctypes.addressof(ptr_obj)).value = value


def _value(arg: Any) -> int:
    return int(arg.value) if hasattr(arg, "value") else int(arg)


def _write_string(buffer: Any, size: Any, text: str) -> int:
    raw = text.encode()
    if len(raw) + 1 > _value(size):
        return int(pynvml.NVML_ERROR_INSUFFICIENT_SIZE)
    buffer.value = raw
    return SUCCESS


class FakeNvmlLib:
    """Stand-in for the `libnvidia-ml.so.1` CDLL object, thread-safe like the real library.

    `latency_s` is added to every call (with the GIL released, like a ctypes call), so code
    under test pays what driver ioctls cost. `hang()` makes device calls block until released,
    to test what a wedged driver does to the exporter.
    """

    def __init__(
        self,
        gpus: list[FakeGpu],
        *,
        driver_version: str = "580.65.06",
        cuda_version: int = 13000,
        latency_s: float = 0.0,
    ) -> None:
        self.gpus = gpus
        self.driver_version = driver_version
        self.cuda_version = cuda_version
        self.latency_s = latency_s
        self.missing: set[str] = set()  # symbols this "driver" lacks (FunctionNotFound)
        self.errors: dict[str, int] = {}  # symbol -> return code, for every device and call
        self.epoch = 0
        self.init_error = SUCCESS  # e.g. NVML_ERROR_DRIVER_NOT_LOADED: library but no driver
        self.calls: collections.Counter[str] = collections.Counter()
        self.init_count = 0
        self._lock = threading.Lock()
        self._events_changed = threading.Condition(self._lock)
        self._event_sets: dict[int, _EventSet] = {}
        self._next_event_set = EVENT_SET_BASE
        self._unhung = threading.Event()
        self._unhung.set()
        self._gpm_samples: dict[int, _GpmSample] = {}
        self._next_gpm_sample = 0x70000
        self._gpm_sequence = 0

    # -- how pynvml finds symbols ------------------------------------------------------------

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("nvml"):
            if name in object.__getattribute__(self, "missing"):
                raise AttributeError(name)
            fn = object.__getattribute__(self, name)
            return object.__getattribute__(self, "_wrap")(name, fn)
        return object.__getattribute__(self, name)

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            self.calls[name] += 1
            if self.latency_s:
                time.sleep(self.latency_s)
            if name not in _SYSTEM_SYMBOLS:
                self._unhung.wait()
            if name not in ("nvmlInitWithFlags", "nvmlInit_v2", "nvmlErrorString") and (
                self.init_count <= 0
            ):
                return pynvml.NVML_ERROR_UNINITIALIZED
            injected = self.errors.get(name)
            if injected is not None:
                return injected
            return fn(*args)

        return call

    # -- fault injection (called by tests and the Simulation) ---------------------------------

    @contextmanager
    def hang(self) -> Iterator[None]:
        """Device calls block inside the context, as on a wedged driver; released on exit."""
        self._unhung.clear()
        try:
            yield
        finally:
            self._unhung.set()

    def inject_xid(self, gpu: int, xid: int) -> None:
        """An Xid happens on a GPU: reported to the event sets it is registered with (none: it
        is not reported at all). Xid 79 (fallen off the bus) also loses the GPU."""
        with self._lock:
            event = (gpu, pynvml.nvmlEventTypeXidCriticalError, xid)
            for event_set in self._event_sets.values():
                if event_set.devices.get(gpu, 0) & pynvml.nvmlEventTypeXidCriticalError:
                    event_set.queue.append(event)
            if xid == 79:
                self.gpus[gpu].lost = True
            self._events_changed.notify_all()

    def set_recovery_action(self, gpu: int, action: int) -> None:
        """The driver decides the GPU needs `action`; reported as Xid 154 when it changes."""
        with self._lock:
            changed = self.gpus[gpu].recovery_action != action
            self.gpus[gpu].recovery_action = action
        if changed:
            self.inject_xid(gpu, 154)

    def remap_row(self, gpu: int, *, uncorrectable: bool = True, fail: bool = False) -> None:
        """A row remap: pending until the next GPU reset (`fail`: no spare row left)."""
        with self._lock:
            target = self.gpus[gpu]
            if fail:
                target.remap_failure = True
            else:
                target.remap_pending = True
                if uncorrectable:
                    target.remapped_uncorrectable += 1
                else:
                    target.remapped_correctable += 1
        self.set_recovery_action(gpu, pynvml.NVML_GPU_RECOVERY_ACTION_GPU_RESET)

    def reset_gpu(self, gpu: int) -> None:
        """`nvidia-smi -r`: pending remaps take effect, the recovery action clears, a lost GPU
        comes back; counters since reset (PCIe replays, NVLink errors) start over."""
        with self._lock:
            target = self.gpus[gpu]
            target.remap_pending = False
            target.lost = False
            target.pcie_replays = 0
            target.nvlink_errors.clear()
            self._events_changed.notify_all()
        self.set_recovery_action(gpu, pynvml.NVML_GPU_RECOVERY_ACTION_NONE)

    def set_lost(self, gpu: int, lost: bool) -> None:
        with self._lock:
            self.gpus[gpu].lost = lost
            self._events_changed.notify_all()

    def registered(self, gpu: int) -> bool:
        """True while some event set will report this GPU's Xids."""
        with self._lock:
            return any(
                event_set.devices.get(gpu, 0) & pynvml.nvmlEventTypeXidCriticalError
                for event_set in self._event_sets.values()
            )

    # -- helpers --------------------------------------------------------------------------------

    def _device(self, handle: Any) -> tuple[int, FakeGpu, FakeMigInstance | None] | int:
        """Decode a handle into (index, gpu, mig instance) or an NVML error code."""
        epoch, offset = divmod(_address(handle) - HANDLE_BASE, EPOCH_STRIDE)
        index, slot = divmod(offset, HANDLE_STRIDE)
        if epoch != self.epoch or not 0 <= index < len(self.gpus):
            return int(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[index]
        if gpu.lost:
            return int(pynvml.NVML_ERROR_GPU_IS_LOST)
        if slot == 0:
            return index, gpu, None
        if slot - 1 >= len(gpu.mig_instances):
            return int(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return index, gpu, gpu.mig_instances[slot - 1]

    def _gpu(self, handle: Any, symbol: str) -> tuple[int, FakeGpu, FakeMigInstance | None] | int:
        found = self._device(handle)
        if isinstance(found, int):
            return found
        if symbol in found[1].errors:
            return int(found[1].errors[symbol])
        if symbol in found[1].not_supported:
            return int(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return found

    def _handle(self, index: int, slot: int = 0) -> int:
        return HANDLE_BASE + self.epoch * EPOCH_STRIDE + index * HANDLE_STRIDE + slot

    # -- library and system ------------------------------------------------------------------

    def nvmlInitWithFlags(self, flags: int) -> int:
        if self.init_error != SUCCESS:
            return self.init_error
        with self._lock:
            if self.init_count == 0:
                self.epoch += 1  # a new epoch: handles of the last one are invalid
            self.init_count += 1
        return SUCCESS

    def nvmlShutdown(self) -> int:
        with self._lock:
            if self.init_count <= 0:
                return int(pynvml.NVML_ERROR_UNINITIALIZED)
            self.init_count -= 1
            if self.init_count == 0:  # the library is unloaded: event sets die with it
                self._event_sets.clear()
                self._events_changed.notify_all()
        return SUCCESS

    def nvmlErrorString(self, result: Any) -> bytes:
        return f"fake NVML error {_value(result)}".encode()

    def nvmlSystemGetDriverVersion(self, buffer: Any, size: Any) -> int:
        return _write_string(buffer, size, self.driver_version)

    def nvmlSystemGetCudaDriverVersion_v2(self, version_ref: Any) -> int:
        _target(version_ref).value = self.cuda_version
        return SUCCESS

    def nvmlDeviceGetCount_v2(self, count_ref: Any) -> int:
        _target(count_ref).value = len(self.gpus)
        return SUCCESS

    def nvmlDeviceGetHandleByIndex_v2(self, index: Any, handle_ref: Any) -> int:
        i = _value(index)
        if not 0 <= i < len(self.gpus):
            return int(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if self.gpus[i].lost:
            return int(pynvml.NVML_ERROR_GPU_IS_LOST)
        if "nvmlDeviceGetHandleByIndex_v2" in self.gpus[i].errors:
            return int(self.gpus[i].errors["nvmlDeviceGetHandleByIndex_v2"])
        _store_address(_target(handle_ref), self._handle(i))
        return SUCCESS

    # -- identity ------------------------------------------------------------------------------

    def nvmlDeviceGetName(self, handle: Any, buffer: Any, size: Any) -> int:
        found = self._gpu(handle, "nvmlDeviceGetName")
        if isinstance(found, int):
            return found
        _, gpu, mig = found
        return _write_string(buffer, size, mig.name if mig else gpu.name)

    def nvmlDeviceGetUUID(self, handle: Any, buffer: Any, size: Any) -> int:
        found = self._gpu(handle, "nvmlDeviceGetUUID")
        if isinstance(found, int):
            return found
        _, gpu, mig = found
        return _write_string(buffer, size, mig.uuid if mig else gpu.uuid)

    def nvmlDeviceGetPciInfo_v3(self, handle: Any, info_ref: Any) -> int:
        found = self._gpu(handle, "nvmlDeviceGetPciInfo_v3")
        if isinstance(found, int):
            return found
        info = _target(info_ref)
        bus_id = found[1].pci_bus_id.encode()
        info.busId = bus_id
        info.busIdLegacy = bus_id
        domain, bus, rest = found[1].pci_bus_id.split(":")
        info.domain, info.bus, info.device = int(domain, 16), int(bus, 16), int(rest[:2], 16)
        return SUCCESS

    # -- memory and utilization ----------------------------------------------------------------

    def nvmlDeviceGetMemoryInfo(self, handle: Any, memory_ref: Any) -> int:
        found = self._gpu(handle, "nvmlDeviceGetMemoryInfo")
        if isinstance(found, int):
            return found
        _, gpu, mig = found
        memory = _target(memory_ref)
        if mig is not None:
            memory.total, memory.used = mig.memory_total, mig.memory_used
        else:  # v1: `used` includes the driver's reservation
            memory.total, memory.used = gpu.memory_total, gpu.memory_used + gpu.memory_reserved
        memory.free = memory.total - memory.used
        return SUCCESS

    def nvmlDeviceGetMemoryInfo_v2(self, handle: Any, memory_ref: Any) -> int:
        found = self._gpu(handle, "nvmlDeviceGetMemoryInfo_v2")
        if isinstance(found, int):
            return found
        _, gpu, mig = found
        memory = _target(memory_ref)
        if memory.version != pynvml.nvmlMemory_v2:
            return int(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        if mig is not None:
            memory.total, memory.reserved, memory.used = mig.memory_total, 0, mig.memory_used
        else:
            memory.total, memory.reserved = gpu.memory_total, gpu.memory_reserved
            memory.used = gpu.memory_used
        memory.free = memory.total - memory.reserved - memory.used
        return SUCCESS

    def nvmlDeviceGetUtilizationRates(self, handle: Any, util_ref: Any) -> int:
        found = self._gpu(handle, "nvmlDeviceGetUtilizationRates")
        if isinstance(found, int):
            return found
        _, gpu, mig = found
        if mig is not None or gpu.mig_mode == pynvml.NVML_DEVICE_MIG_ENABLE:
            return int(pynvml.NVML_ERROR_NOT_SUPPORTED)  # as on real MIG devices
        util = _target(util_ref)
        util.gpu, util.memory = gpu.utilization_gpu, gpu.utilization_memory
        return SUCCESS

    # -- thermals, power, clocks -------------------------------------------------------------

    def nvmlDeviceGetTemperatureV(self, handle: Any, temp_ref: Any) -> int:
        found = self._gpu(handle, "nvmlDeviceGetTemperatureV")
        if isinstance(found, int):
            return found
        temp = _target(temp_ref)
        if temp.version != pynvml.nvmlTemperature_v1:
            return int(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        if _value(temp.sensorType) != pynvml.NVML_TEMPERATURE_GPU:
            return int(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        temp.temperature = found[1].temperature
        return SUCCESS

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: Any, temp_ref: Any) -> int:
        found = self._gpu(handle, "nvmlDeviceGetTemperature")
        if isinstance(found, int):
            return found
        if _value(sensor) != pynvml.NVML_TEMPERATURE_GPU:
            return int(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        _target(temp_ref).value = found[1].temperature
        return SUCCESS

    def nvmlDeviceGetPowerUsage(self, handle: Any, power_ref: Any) -> int:
        found = self._gpu(handle, "nvmlDeviceGetPowerUsage")
        if isinstance(found, int):
            return found
        _target(power_ref).value = found[1].power_mw
        return SUCCESS

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any, limit_ref: Any) -> int:
        found = self._gpu(handle, "nvmlDeviceGetEnforcedPowerLimit")
        if isinstance(found, int):
            return found
        _target(limit_ref).value = found[1].power_limit_mw
        return SUCCESS

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any, energy_ref: Any) -> int:
        found = self._gpu(handle, "nvmlDeviceGetTotalEnergyConsumption")
        if isinstance(found, int):
            return found
        _target(energy_ref).value = found[1].energy_mj
        return SUCCESS

    def nvmlDeviceGetClockInfo(self, handle: Any, clock_type: Any, clock_ref: Any) -> int:
        found = self._gpu(handle, "nvmlDeviceGetClockInfo")
        if isinstance(found, int):
            return found
        mhz = found[1].clocks_mhz.get(_value(clock_type))
        if mhz is None:
            return int(pynvml.NVML_ERROR_NOT_SUPPORTED)
        _target(clock_ref).value = mhz
        return SUCCESS

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any, reasons_ref: Any) -> int:
        return self._clocks_event_reasons(handle, reasons_ref, "EventReasons")

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: Any, reasons_ref: Any) -> int:
        """The pre-12.x name of the same call (still exported by newer drivers)."""
        return self._clocks_event_reasons(handle, reasons_ref, "ThrottleReasons")

    def _clocks_event_reasons(self, handle: Any, reasons_ref: Any, suffix: str) -> int:
        found = self._gpu(handle, "nvmlDeviceGetCurrentClocks" + suffix)
        if isinstance(found, int):
            return found
        _target(reasons_ref).value = found[1].clocks_event_reasons
        return SUCCESS

    # -- ECC and field values -----------------------------------------------------------------

    def nvmlDeviceGetTotalEccErrors(
        self, handle: Any, error_type: Any, counter_type: Any, count_ref: Any
    ) -> int:
        found = self._gpu(handle, "nvmlDeviceGetTotalEccErrors")
        if isinstance(found, int):
            return found
        gpu = found[1]
        corrected = _value(error_type) == pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED
        _target(count_ref).value = gpu.ecc_corrected if corrected else gpu.ecc_uncorrected
        return SUCCESS

    def nvmlDeviceGetFieldValues(self, handle: Any, count: Any, values_ref: Any) -> int:
        found = self._gpu(handle, "nvmlDeviceGetFieldValues")
        if isinstance(found, int):
            return found
        gpu = found[1]
        values = _target(values_ref)
        now_us = int(time.time() * 1e6)
        for i in range(_value(count)):
            entry = values[i]
            entry.timestamp = now_us
            reading = self._field(gpu, int(entry.fieldId))
            if reading is None:
                entry.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
                continue
            entry.nvmlReturn = SUCCESS
            entry.valueType, raw = reading
            if entry.valueType == pynvml.NVML_VALUE_TYPE_UNSIGNED_INT:
                entry.value.uiVal = raw
            else:
                entry.value.ullVal = raw
        return SUCCESS

    def _field(self, gpu: FakeGpu, field_id: int) -> tuple[int, int] | None:
        if f"field:{field_id}" in gpu.not_supported:
            return None
        if field_id == pynvml.NVML_FI_DEV_MEMORY_TEMP:
            return pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, gpu.memory_temperature
        if field_id == pynvml.NVML_FI_DEV_ECC_SBE_VOL_TOTAL:
            return pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, gpu.ecc_corrected
        if field_id == pynvml.NVML_FI_DEV_ECC_DBE_VOL_TOTAL:
            return pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, gpu.ecc_uncorrected
        if field_id == pynvml.NVML_FI_DEV_GET_GPU_RECOVERY_ACTION:
            return pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, gpu.recovery_action
        if field_id == pynvml.NVML_FI_DEV_NVLINK_LINK_COUNT:
            if not gpu.nvlink_links:
                return None
            return pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, gpu.nvlink_links
        return None

    # -- sticky health: row remapping, PCIe, NVLink ---------------------------------------------

    def _whole_gpu(self, handle: Any, symbol: str) -> FakeGpu | int:
        """The device for a call only a whole GPU answers (a MIG handle: NOT_SUPPORTED)."""
        found = self._gpu(handle, symbol)
        if isinstance(found, int):
            return found
        if found[2] is not None:
            return int(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return found[1]

    def nvmlDeviceGetRemappedRows(
        self, handle: Any, corr_ref: Any, unc_ref: Any, pending_ref: Any, failure_ref: Any
    ) -> int:
        gpu = self._whole_gpu(handle, "nvmlDeviceGetRemappedRows")
        if isinstance(gpu, int):
            return gpu
        _target(corr_ref).value = gpu.remapped_correctable
        _target(unc_ref).value = gpu.remapped_uncorrectable
        _target(pending_ref).value = int(gpu.remap_pending)
        _target(failure_ref).value = int(gpu.remap_failure)
        return SUCCESS

    def nvmlDeviceGetPcieReplayCounter(self, handle: Any, value_ref: Any) -> int:
        gpu = self._whole_gpu(handle, "nvmlDeviceGetPcieReplayCounter")
        if isinstance(gpu, int):
            return gpu
        _target(value_ref).value = gpu.pcie_replays
        return SUCCESS

    def _pcie_link(self, handle: Any, symbol: str, ref: Any, pick: Callable[[FakeGpu], int]) -> int:
        gpu = self._whole_gpu(handle, symbol)
        if isinstance(gpu, int):
            return gpu
        _target(ref).value = pick(gpu)
        return SUCCESS

    def nvmlDeviceGetCurrPcieLinkGeneration(self, handle: Any, ref: Any) -> int:
        symbol = "nvmlDeviceGetCurrPcieLinkGeneration"
        return self._pcie_link(handle, symbol, ref, lambda g: g.pcie_generation[0])

    def nvmlDeviceGetMaxPcieLinkGeneration(self, handle: Any, ref: Any) -> int:
        symbol = "nvmlDeviceGetMaxPcieLinkGeneration"
        return self._pcie_link(handle, symbol, ref, lambda g: g.pcie_generation[1])

    def nvmlDeviceGetCurrPcieLinkWidth(self, handle: Any, ref: Any) -> int:
        symbol = "nvmlDeviceGetCurrPcieLinkWidth"
        return self._pcie_link(handle, symbol, ref, lambda g: g.pcie_width[0])

    def nvmlDeviceGetMaxPcieLinkWidth(self, handle: Any, ref: Any) -> int:
        symbol = "nvmlDeviceGetMaxPcieLinkWidth"
        return self._pcie_link(handle, symbol, ref, lambda g: g.pcie_width[1])

    def _nvlink(self, handle: Any, symbol: str, link: Any) -> FakeGpu | int:
        gpu = self._whole_gpu(handle, symbol)
        if isinstance(gpu, int):
            return gpu
        index = _value(link)
        if not 0 <= index < pynvml.NVML_NVLINK_MAX_LINKS:
            return int(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if index >= gpu.nvlink_links:
            return int(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return gpu

    def nvmlDeviceGetNvLinkState(self, handle: Any, link: Any, active_ref: Any) -> int:
        gpu = self._nvlink(handle, "nvmlDeviceGetNvLinkState", link)
        if isinstance(gpu, int):
            return gpu
        _target(active_ref).value = int(_value(link) not in gpu.nvlink_down)
        return SUCCESS

    def nvmlDeviceGetNvLinkErrorCounter(
        self, handle: Any, link: Any, counter: Any, value_ref: Any
    ) -> int:
        gpu = self._nvlink(handle, "nvmlDeviceGetNvLinkErrorCounter", link)
        if isinstance(gpu, int):
            return gpu
        kind = _value(counter)
        if not 0 <= kind < pynvml.NVML_NVLINK_ERROR_COUNT:
            return int(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if kind not in gpu.nvlink_counters:
            return int(pynvml.NVML_ERROR_NOT_SUPPORTED)
        _target(value_ref).value = gpu.nvlink_errors.get((_value(link), kind), 0)
        return SUCCESS

    # -- GPM ------------------------------------------------------------------------------------

    def nvmlGpmQueryDeviceSupport(self, handle: Any, support_ref: Any) -> int:
        gpu = self._whole_gpu(handle, "nvmlGpmQueryDeviceSupport")
        if isinstance(gpu, int):
            return gpu
        support = _target(support_ref)
        if support.version != pynvml.NVML_GPM_SUPPORT_VERSION:
            return int(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        support.isSupportedDevice = int(gpu.gpm_supported)
        return SUCCESS

    def nvmlGpmSampleAlloc(self, sample_ref: Any) -> int:
        with self._lock:
            address = self._next_gpm_sample
            self._next_gpm_sample += 0x10
            self._gpm_samples[address] = _GpmSample()
        _store_address(_target(sample_ref), address)
        return SUCCESS

    def nvmlGpmSampleFree(self, sample: Any) -> int:
        with self._lock:
            if self._gpm_samples.pop(_address(sample), None) is None:
                return int(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return SUCCESS

    def _gpm_fill(self, handle: Any, symbol: str, instance: int | None, sample: Any) -> int:
        found = self._gpu(handle, symbol)
        if isinstance(found, int):
            return found
        index, gpu, mig = found
        if mig is not None:
            return int(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if not gpu.gpm_supported:
            return int(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if instance is not None:
            if gpu.mig_mode != pynvml.NVML_DEVICE_MIG_ENABLE:
                return int(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            if instance not in {m.gpu_instance_id for m in gpu.mig_instances}:
                return int(pynvml.NVML_ERROR_NOT_FOUND)
        with self._lock:
            target = self._gpm_samples.get(_address(sample))
            if target is None:
                return int(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            self._gpm_sequence += 1
            target.filled = (index, instance, self._gpm_sequence)
        return SUCCESS

    def nvmlGpmSampleGet(self, handle: Any, sample: Any) -> int:
        return self._gpm_fill(handle, "nvmlGpmSampleGet", None, sample)

    def nvmlGpmMigSampleGet(self, handle: Any, instance: Any, sample: Any) -> int:
        return self._gpm_fill(handle, "nvmlGpmMigSampleGet", _value(instance), sample)

    def nvmlGpmMetricsGet(self, request_ref: Any) -> int:
        request = _target(request_ref)
        if request.version != pynvml.NVML_GPM_METRICS_GET_VERSION:
            return int(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        if not 0 < request.numMetrics <= pynvml.NVML_GPM_METRIC_MAX:
            return int(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        with self._lock:
            first = self._gpm_samples.get(_address(request.sample1))
            second = self._gpm_samples.get(_address(request.sample2))
        if first is None or second is None or first.filled is None or second.filled is None:
            return int(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if first.filled[:2] != second.filled[:2] or first.filled[2] >= second.filled[2]:
            return int(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[first.filled[0]]  # computed from the samples: no device access
        for i in range(request.numMetrics):
            metric = request.metrics[i]
            value = gpu.gpm_values.get(int(metric.metricId))
            if value is None:
                metric.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
                continue
            metric.nvmlReturn = SUCCESS
            metric.value = value
        return SUCCESS

    # -- processes (two-call size negotiation) ------------------------------------------------

    def nvmlDeviceGetComputeRunningProcesses_v3(
        self, handle: Any, count_ref: Any, infos: Any
    ) -> int:
        found = self._gpu(handle, "nvmlDeviceGetComputeRunningProcesses_v3")
        if isinstance(found, int):
            return found
        _, gpu, mig = found
        processes = [
            p for p in gpu.processes if mig is None or p.gpu_instance_id == mig.gpu_instance_id
        ]
        count = _target(count_ref)
        if infos is None or count.value < len(processes):
            count.value = len(processes)
            return int(pynvml.NVML_ERROR_INSUFFICIENT_SIZE) if processes else SUCCESS
        for i, proc in enumerate(processes):
            infos[i].pid = proc.pid
            infos[i].usedGpuMemory = (
                pynvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value
                if proc.used_bytes is None
                else proc.used_bytes
            )
            infos[i].gpuInstanceId = proc.gpu_instance_id
            infos[i].computeInstanceId = proc.compute_instance_id
        count.value = len(processes)
        return SUCCESS

    # -- MIG ------------------------------------------------------------------------------------

    def nvmlDeviceGetMigMode(self, handle: Any, current_ref: Any, pending_ref: Any) -> int:
        found = self._gpu(handle, "nvmlDeviceGetMigMode")
        if isinstance(found, int):
            return found
        mode = found[1].mig_mode
        if mode is None:
            return int(pynvml.NVML_ERROR_NOT_SUPPORTED)
        _target(current_ref).value = mode
        _target(pending_ref).value = mode
        return SUCCESS

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any, count_ref: Any) -> int:
        found = self._gpu(handle, "nvmlDeviceGetMaxMigDeviceCount")
        if isinstance(found, int):
            return found
        if found[1].mig_mode is None:
            return int(pynvml.NVML_ERROR_NOT_SUPPORTED)
        _target(count_ref).value = 7
        return SUCCESS

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: Any, mig_ref: Any) -> int:
        found = self._gpu(handle, "nvmlDeviceGetMigDeviceHandleByIndex")
        if isinstance(found, int):
            return found
        gpu_index, gpu, mig = found
        if mig is not None or gpu.mig_mode != pynvml.NVML_DEVICE_MIG_ENABLE:
            return int(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        i = _value(index)
        if i >= len(gpu.mig_instances):
            return int(pynvml.NVML_ERROR_NOT_FOUND)
        _store_address(_target(mig_ref), self._handle(gpu_index, 1 + i))
        return SUCCESS

    def nvmlDeviceGetGpuInstanceId(self, handle: Any, id_ref: Any) -> int:
        found = self._gpu(handle, "nvmlDeviceGetGpuInstanceId")
        if isinstance(found, int):
            return found
        if found[2] is None:
            return int(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        _target(id_ref).value = found[2].gpu_instance_id
        return SUCCESS

    def nvmlDeviceGetComputeInstanceId(self, handle: Any, id_ref: Any) -> int:
        found = self._gpu(handle, "nvmlDeviceGetComputeInstanceId")
        if isinstance(found, int):
            return found
        if found[2] is None:
            return int(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        _target(id_ref).value = found[2].compute_instance_id
        return SUCCESS

    # -- events ---------------------------------------------------------------------------------

    def nvmlEventSetCreate(self, set_ref: Any) -> int:
        with self._lock:
            address = self._next_event_set
            self._next_event_set += 1
            self._event_sets[address] = _EventSet()
        _store_address(_target(set_ref), address)
        return SUCCESS

    def nvmlDeviceRegisterEvents(self, handle: Any, event_types: Any, event_set: Any) -> int:
        found = self._gpu(handle, "nvmlDeviceRegisterEvents")
        if isinstance(found, int):
            return found
        index, _, mig = found
        if mig is not None:
            return int(pynvml.NVML_ERROR_NOT_SUPPORTED)
        with self._lock:
            target = self._event_sets.get(_address(event_set))
            if target is None:
                return int(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            mask = _value(event_types)
            target.devices[index] = target.devices.get(index, 0) | mask
        return SUCCESS

    def nvmlEventSetWait_v2(self, event_set: Any, data_ref: Any, timeout_ms: Any) -> int:
        """Block until an event arrives or the timeout passes, like the real call."""
        deadline = time.monotonic() + _value(timeout_ms) / 1000
        with self._lock:
            while True:
                target = self._event_sets.get(_address(event_set))
                if target is None:
                    return int(pynvml.NVML_ERROR_INVALID_ARGUMENT)
                if target.queue:
                    gpu, event_type, payload = target.queue.popleft()
                    break
                if any(self.gpus[i].lost for i in target.devices):
                    return int(pynvml.NVML_ERROR_GPU_IS_LOST)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return int(pynvml.NVML_ERROR_TIMEOUT)
                self._events_changed.wait(remaining)
        data = _target(data_ref)
        data.device = ctypes.cast(ctypes.c_void_p(self._handle(gpu)), pynvml.c_nvmlDevice_t)
        data.eventType = event_type
        data.eventData = payload
        data.gpuInstanceId = MIG_DISABLED_INSTANCE
        data.computeInstanceId = MIG_DISABLED_INSTANCE
        return SUCCESS

    def nvmlEventSetFree(self, event_set: Any) -> int:
        with self._lock:
            if self._event_sets.pop(_address(event_set), None) is None:
                return int(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            self._events_changed.notify_all()
        return SUCCESS


_installed: list[Any] = []


def install(lib: FakeNvmlLib) -> None:
    """Point the real pynvml at `lib` (remembering what it pointed at before)."""
    with pynvml.libLoadLock:
        _installed.append(pynvml.nvmlLib)
        pynvml._nvmlGetFunctionPointer_cache.clear()
        pynvml.nvmlLib = lib


def uninstall() -> None:
    """Undo the last `install`: pynvml goes back to the library it had (usually none)."""
    with pynvml.libLoadLock:
        pynvml.nvmlLib = _installed.pop() if _installed else None
        pynvml._nvmlGetFunctionPointer_cache.clear()
        pynvml._nvmlLib_refcount = 0
