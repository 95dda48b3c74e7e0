"""The only places NVML runs: one worker thread for reads, one event thread for Xid events.

Collectors hand the worker one function per refresh (`await nvml.run(fn)`), so a hung driver
call blocks one job, not the event loop; while that job is still stuck, new jobs fail fast with
NvmlBusyError instead of queueing behind it. Xid events arrive through `nvmlEventSetWait`, which
blocks by design, so it gets its own thread (XidWatcher) that only waits and counts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import pynvml

log = logging.getLogger(__name__)
T = TypeVar("T")


class NvmlBusyError(RuntimeError):
    """The previous NVML job has not returned yet (a hung driver call)."""


class Nvml:
    def __init__(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nvml")
        self._pending: concurrent.futures.Future[Any] | None = None
        self._initialized = False
        self._reinit = False
        self.generation = 0  # bumped by every successful nvmlInit; handles die with it

    async def run(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the NVML thread (after nvmlInit there); raise NvmlBusyError if stuck."""
        if self._pending is not None and not self._pending.done():
            raise NvmlBusyError("previous NVML call has not returned")
        future = self._executor.submit(self._call, fn)
        self._pending = future
        return await asyncio.wrap_future(future)

    def _call(self, fn: Callable[[], T]) -> T:
        if self._reinit and self._initialized:
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError as exc:
                log.debug("nvmlShutdown before re-init failed: %s", exc)
            self._initialized = False
        self._reinit = False
        if not self._initialized:
            pynvml.nvmlInit()
            self._initialized = True
            self.generation += 1
        return fn()

    def reset(self) -> None:
        """Shut down and re-initialize NVML before the next job (after a GPU was lost)."""
        self._reinit = True

    def close(self) -> None:
        if self._initialized and (self._pending is None or self._pending.done()):
            try:
                self._executor.submit(pynvml.nvmlShutdown).result(timeout=2)
            except Exception as exc:
                log.debug("nvmlShutdown failed: %s", exc)
        self._executor.shutdown(wait=False, cancel_futures=True)


def handle_address(handle: Any) -> int:
    """A device handle's address: stable per device for one NVML init, usable as a dict key."""
    return ctypes.cast(handle, ctypes.c_void_p).value or 0


class XidWatcher:
    """A thread blocked in nvmlEventSetWait that counts Xid events per (device uuid, xid).

    `watch()` runs on the NVML worker thread (inside a refresh job): it creates the event set
    and registers devices. The thread only waits and counts; `counts()` is read by the collector.
    """

    def __init__(self, wait_ms: int = 500) -> None:
        self.wait_ms = wait_ms
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, int]] = Counter()
        self._devices: dict[int, str] = {}  # handle address -> uuid
        self._event_set: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def watch(self, handle: Any, uuid: str) -> None:
        """Register a device for Xid events (NVML worker thread only). Raises NVMLError."""
        address = handle_address(handle)
        if self._devices.get(address) == uuid:
            return
        if self._event_set is None:
            self._event_set = pynvml.nvmlEventSetCreate()
        pynvml.nvmlDeviceRegisterEvents(
            handle, pynvml.nvmlEventTypeXidCriticalError, self._event_set
        )
        with self._lock:
            self._devices[address] = uuid
        if self._thread is None:
            self._stop.clear()
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
            except pynvml.NVMLError_Timeout:
                continue
            except pynvml.NVMLError as exc:
                # A broken event set (driver reset, GPU lost) would fail again at once.
                log.warning("Xid event wait failed, Xid counting paused until re-init: %s", exc)
                return
            if not data.eventType & pynvml.nvmlEventTypeXidCriticalError:
                continue
            with self._lock:
                uuid = self._devices.get(handle_address(data.device))
                if uuid is not None:
                    self._counts[(uuid, int(data.eventData))] += 1

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
