"""One background loop per collector: refresh on an interval, with a timeout, one run in flight.

A refresh that raises or runs past its timeout publishes a failed snapshot (series dropped,
success 0, errors counted) and is logged once per change of state; the other collectors and
/metrics are untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from exporter.collectors.base import Collector
from exporter.snapshot import Snapshot, SnapshotStore, failed_snapshot

log = logging.getLogger(__name__)


async def refresh_once(collector: Collector[Any], store: SnapshotStore) -> bool:
    """Run one refresh under the collector's timeout and publish the outcome."""
    name = collector.name
    started = time.monotonic()
    try:
        async with asyncio.timeout(collector.settings.timeout_seconds):
            families = await collector.update()
    except TimeoutError:
        log.warning(
            "collector %s: refresh timed out after %ss", name, collector.settings.timeout_seconds
        )
        await store.publish_async(name, failed_snapshot(started))
        return False
    except Exception as exc:
        log.warning("collector %s: refresh failed: %s", name, exc, exc_info=log.isEnabledFor(10))
        await store.publish_async(name, failed_snapshot(started))
        return False
    snapshot = Snapshot(tuple(families), True, time.monotonic() - started, time.time())
    await store.publish_async(name, snapshot)
    return True


async def run_forever(collector: Collector[Any], store: SnapshotStore) -> None:
    """Refresh every interval; a slow refresh delays the next one instead of overlapping it."""
    interval = collector.settings.interval_seconds
    was_ok: bool | None = None
    while True:
        started = time.monotonic()
        ok = await refresh_once(collector, store)
        if ok and was_ok is False:
            log.info("collector %s: recovered", collector.name)
        was_ok = ok
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


class Scheduler:
    """Owns the collectors' tasks; started and stopped by the app's cleanup context."""

    def __init__(self, collectors: list[Collector[Any]], store: SnapshotStore) -> None:
        self.collectors = collectors
        self.store = store
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for collector in self.collectors:
            task = asyncio.create_task(run_forever(collector, self.store), name=collector.name)
            self._tasks.append(task)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for collector in self.collectors:
            try:
                await collector.close()
            except Exception as exc:
                log.warning("collector %s: close failed: %s", collector.name, exc)
