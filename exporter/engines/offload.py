"""Normalize big expositions in a process of their own.

The parse is pure Python. On a thread it holds the GIL in switch-interval slices, and each time
the event loop gives the GIL up around a socket call it waits for a slice to end: one 2 MB
exposition parsed every second multiplied /metrics p99 by 2.4 (`bench/scrape.py`). In another
process the parse holds nothing /metrics needs; only the text goes there and the small
normalized result comes back. Real engines expose well under 1 MB, so most exporters never
start the process: the first exposition over `LlmSettings.process_normalize_bytes` starts it
(and is itself normalized on the collector's thread, so no refresh waits for a process to
boot); the next ones go to it once it answers. If it dies, one refresh of that target fails
saying so, and the next big exposition starts a new one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class NormalizerDied(Exception):
    """The normalizer process exited (killed, out of memory) before answering."""


def _warm_up() -> None:
    """Runs first in the new process: the imports a job needs, before any job waits on them."""
    importlib.import_module("exporter.engines.normalize")


class NormalizerProcess:
    """One worker process, one job at a time: an abandoned job finishes before the next starts,
    as on the collector's own thread."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._warm: concurrent.futures.Future[None] | None = None
        self._cannot_start: str | None = None

    @property
    def ready(self) -> bool:
        """Started and warmed up: a job sent now waits for no process start."""
        warm = self._warm
        return warm is not None and warm.done() and warm.exception() is None

    def start(self) -> None:
        """Start the process in the background (again, if the last one died); idempotent. Where
        no process can start (no /dev/shm for its semaphores, a process limit), big expositions
        stay on the collector's thread, said once in the log."""
        warm = self._warm
        if self._cannot_start or (warm is not None and not (warm.done() and warm.exception())):
            return
        self.close()
        try:
            # spawn: forking a process that runs threads and an event loop is not safe.
            context = multiprocessing.get_context("spawn")
            self._pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=context)
            self._warm = self._pool.submit(_warm_up)
        except (OSError, RuntimeError) as exc:
            self.close()
            self._cannot_start = f"{type(exc).__name__}: {exc}"
            log.error(
                "%s: cannot start a normalizer process (%s); big expositions are normalized on "
                "the collector's thread",
                self.name,
                self._cannot_start,
            )
            return
        log.info("%s: starting a process for expositions over the size limit", self.name)

    async def run(self, job: Callable[[], T]) -> T:
        """`job` (picklable: a partial of a module-level function) run in the process."""
        pool = self._pool
        if pool is None:
            raise NormalizerDied("the normalizer process is not running")
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, job)
        except BrokenProcessPool as exc:
            if self._pool is pool:
                self.close()
            log.error("%s: normalizer process died; the next big exposition starts one", self.name)
            raise NormalizerDied("the normalizer process died") from exc

    def close(self) -> None:
        """Queued jobs dropped; the process exits after the job it is running."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._warm = None
