"""The only places NVML runs: one worker thread for reads, one event thread for Xid events.

Collectors hand the worker one function per refresh (`await nvml.run(fn)`), so a hung driver
call blocks one job, not the event loop. Jobs from different collectors queue behind each other
as long as the running one is making progress; once a job has been running longer than
`hung_after_seconds` (a hung driver call) or the queue is full, new jobs fail fast with
NvmlBusyError instead of piling up behind it. Xid events arrive through `nvmlEventSetWait`, which
blocks by design, so it gets its own thread (XidWatcher) that only waits and counts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import pynvml

log = logging.getLogger(__name__)
T = TypeVar("T")


class NvmlBusyError(RuntimeError):
    """The NVML worker is stuck in a driver call, or too many jobs wait for it."""


class Nvml:
    def __init__(self, hung_after_seconds: float = 5.0, max_queued: int = 4) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nvml")
        self.hung_after_seconds = hung_after_seconds
        self.max_queued = max_queued
        self._queued = 0  # submitted and not finished, the running job included
        self._running_since: float | None = None  # set on the worker thread
        self._initialized = False
        self._reinit = False
        self.generation = 0  # bumped by every successful nvmlInit; handles die with it

    @property
    def busy(self) -> bool:
        """True while a job is stuck in the driver or the queue is full."""
        started = self._running_since
        hung = started is not None and time.monotonic() - started > self.hung_after_seconds
        return hung or self._queued >= self.max_queued

    @property
    def idle(self) -> bool:
        """No job running or waiting."""
        return self._queued == 0

    async def run(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the NVML thread (after nvmlInit there); NvmlBusyError if it is stuck."""
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
        if self._initialized and not self.busy:
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
