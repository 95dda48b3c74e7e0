"""The only place NVML runs: one dedicated worker thread, initialized lazily on that thread.

Collectors hand the worker one function per refresh (`await nvml.run(fn)`), so a hung driver
call blocks one job, not the event loop; while that job is still stuck, new jobs fail fast with
NvmlBusyError instead of queueing behind it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from typing import TypeVar

import pynvml

log = logging.getLogger(__name__)
T = TypeVar("T")


class NvmlBusyError(RuntimeError):
    """The previous NVML job has not returned yet (a hung driver call)."""


class Nvml:
    def __init__(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nvml")
        self._pending: concurrent.futures.Future[object] | None = None
        self._initialized = False

    async def run(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the NVML thread (after nvmlInit there); raise NvmlBusyError if stuck."""
        if self._pending is not None and not self._pending.done():
            raise NvmlBusyError("previous NVML call has not returned")
        future = self._executor.submit(self._call, fn)
        self._pending = future  # type: ignore[assignment]
        return await asyncio.wrap_future(future)

    def _call(self, fn: Callable[[], T]) -> T:
        if not self._initialized:
            pynvml.nvmlInit()
            self._initialized = True
        return fn()

    def reset(self) -> None:
        """Forget the init so the next job re-initializes (after GPU_IS_LOST or a driver reload)."""
        self._initialized = False

    def close(self) -> None:
        if self._initialized and (self._pending is None or self._pending.done()):
            try:
                self._executor.submit(pynvml.nvmlShutdown).result(timeout=2)
            except Exception as exc:
                log.debug("nvmlShutdown failed: %s", exc)
        self._executor.shutdown(wait=False, cancel_futures=True)
