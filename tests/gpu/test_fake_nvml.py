"""The fake speaks NVML's C ABI, so the real pynvml code paths run against it."""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import pynvml
import pytest

from exporter.simulate.fake_nvml import FakeGpu, FakeNvmlLib, FakeProcess


def test_process_list_uses_the_two_call_size_negotiation(
    install_fake: Callable[[list[FakeGpu]], FakeNvmlLib],
) -> None:
    gpu = FakeGpu(uuid="GPU-a", processes=[FakeProcess(p, p * 1000) for p in range(1, 4)])
    lib = install_fake([gpu])
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    procs = pynvml.nvmlDeviceGetComputeRunningProcesses_v3(handle)
    assert [(p.pid, p.usedGpuMemory) for p in procs] == [(1, 1000), (2, 2000), (3, 3000)]
    assert lib.calls["nvmlDeviceGetComputeRunningProcesses_v3"] == 2  # size query, then fill

    count = ctypes.c_uint(1)  # a buffer too small is refused, with the size needed
    small = (pynvml.c_nvmlProcessInfo_v3_t * 1)()
    ret = lib.nvmlDeviceGetComputeRunningProcesses_v3(handle, ctypes.byref(count), small)
    assert (ret, count.value) == (pynvml.NVML_ERROR_INSUFFICIENT_SIZE, 3)
    pynvml.nvmlShutdown()


def test_versioned_memory_struct_is_checked(
    install_fake: Callable[[list[FakeGpu]], FakeNvmlLib],
) -> None:
    lib = install_fake([FakeGpu(uuid="GPU-a")])
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    memory = pynvml.c_nvmlMemory_v2_t()
    memory.version = 1  # wrong version
    ret = lib.nvmlDeviceGetMemoryInfo_v2(handle, ctypes.byref(memory))
    assert ret == pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
    pynvml.nvmlShutdown()


def test_errors_become_pynvml_exception_classes(
    install_fake: Callable[[list[FakeGpu]], FakeNvmlLib],
) -> None:
    lib = install_fake([FakeGpu(uuid="GPU-a", lost=True)])
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()
    pynvml.nvmlInit()
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetHandleByIndex(0)
    lib.missing.add("nvmlDeviceGetCount_v2")
    pynvml._nvmlGetFunctionPointer_cache.clear()
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        pynvml.nvmlDeviceGetCount()
    pynvml.nvmlShutdown()


def test_event_wait_blocks_until_timeout_then_delivers_xids(
    install_fake: Callable[[list[FakeGpu]], FakeNvmlLib],
) -> None:
    lib = install_fake([FakeGpu(uuid="GPU-a"), FakeGpu(uuid="GPU-b")])
    pynvml.nvmlInit()
    events = pynvml.nvmlEventSetCreate()
    handle = pynvml.nvmlDeviceGetHandleByIndex(1)
    pynvml.nvmlDeviceRegisterEvents(handle, pynvml.nvmlEventTypeXidCriticalError, events)
    with pytest.raises(pynvml.NVMLError_Timeout):
        pynvml.nvmlEventSetWait(events, 10)
    lib.inject_xid(1, 48)
    data = pynvml.nvmlEventSetWait(events, 1000)
    assert (data.eventData, data.eventType) == (48, pynvml.nvmlEventTypeXidCriticalError)
    assert (
        ctypes.cast(data.device, ctypes.c_void_p).value
        == ctypes.cast(handle, ctypes.c_void_p).value
    )
    pynvml.nvmlEventSetFree(events)
    pynvml.nvmlShutdown()


def test_handles_die_with_nvml_shutdown(
    install_fake: Callable[[list[FakeGpu]], FakeNvmlLib],
) -> None:
    install_fake([FakeGpu(uuid="GPU-a")])
    pynvml.nvmlInit()
    old = pynvml.nvmlDeviceGetHandleByIndex(0)
    pynvml.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetUUID(old)
    pynvml.nvmlInit()
    with pytest.raises(pynvml.NVMLError_InvalidArgument):  # a handle of the last init
        pynvml.nvmlDeviceGetUUID(old)
    assert pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(0)) == "GPU-a"
    pynvml.nvmlShutdown()


def test_event_wait_fails_with_gpu_is_lost_and_events_are_not_buffered(
    install_fake: Callable[[list[FakeGpu]], FakeNvmlLib],
) -> None:
    lib = install_fake([FakeGpu(uuid="GPU-a")])
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    lib.inject_xid(0, 13)  # nobody registered: never reported
    event_set = pynvml.nvmlEventSetCreate()
    pynvml.nvmlDeviceRegisterEvents(handle, pynvml.nvmlEventTypeXidCriticalError, event_set)
    with pytest.raises(pynvml.NVMLError_Timeout):
        pynvml.nvmlEventSetWait(event_set, 10)
    lib.inject_xid(0, 79)  # reported, then the GPU is gone
    assert pynvml.nvmlEventSetWait(event_set, 10).eventData == 79
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlEventSetWait(event_set, 10)
    pynvml.nvmlEventSetFree(event_set)
    pynvml.nvmlShutdown()


@pytest.mark.parametrize(
    "code",
    [
        pynvml.NVML_ERROR_NO_PERMISSION,
        pynvml.NVML_ERROR_UNKNOWN,
        pynvml.NVML_ERROR_TIMEOUT,
        pynvml.NVML_ERROR_NOT_SUPPORTED,
    ],
)
def test_faults_are_injected_per_call_and_per_gpu(
    install_fake: Callable[[list[FakeGpu]], FakeNvmlLib], code: int
) -> None:
    lib = install_fake(
        [FakeGpu(uuid="GPU-a"), FakeGpu(uuid="GPU-b", errors={"nvmlDeviceGetPowerUsage": code})]
    )
    pynvml.nvmlInit()
    a, b = (pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(2))
    assert pynvml.nvmlDeviceGetPowerUsage(a) == 70_000
    with pytest.raises(pynvml.NVMLError) as raised:
        pynvml.nvmlDeviceGetPowerUsage(b)
    assert raised.value.value == code
    assert pynvml.nvmlDeviceGetEnforcedPowerLimit(b) == 700_000  # only that call
    lib.errors["nvmlDeviceGetEnforcedPowerLimit"] = code  # every GPU
    with pytest.raises(pynvml.NVMLError):
        pynvml.nvmlDeviceGetEnforcedPowerLimit(a)
    pynvml.nvmlShutdown()


def test_used_memory_can_be_not_available(
    install_fake: Callable[[list[FakeGpu]], FakeNvmlLib],
) -> None:
    install_fake([FakeGpu(uuid="GPU-a", processes=[FakeProcess(7, None)])])
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    (proc,) = pynvml.nvmlDeviceGetComputeRunningProcesses_v3(handle)
    assert (proc.pid, proc.usedGpuMemory) == (
        7,
        None,
    )  # pynvml's reading of NVML_VALUE_NOT_AVAILABLE
    pynvml.nvmlShutdown()
