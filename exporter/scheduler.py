"""The collector runtime: lifecycle, one background loop per collector, and its failure policy.

The scheduler starts each collector (`start()`), refreshes it on its interval with a timeout and
one run in flight, and closes it at shutdown (`close()`, then its executor). The whole iteration
is guarded: a failure anywhere (collect, encode, publish) drops the collector's series, sets
`inferwatch_exporter_collector_success` to 0, counts in `..._collector_errors_total` and is
logged once per distinct error (and once when it recovers). Stale data is never presented as
fresh: a loop that cannot publish leaves no snapshot behind. `NoDataError` is not a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from exporter.collectors.base import Collector, NoDataError
from exporter.snapshot import Snapshot, SnapshotStore

log = logging.getLogger(__name__)


class RefreshLog:
    """Logs a collector's failures once per distinct error, and its recovery once."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.last_error: str | None = None

    def failed(self, error: str, exc: BaseException | None = None) -> None:
        if error != self.last_error:
            log.warning(
                "collector %s: %s", self.name, error, exc_info=exc if log.isEnabledFor(10) else None
            )
        self.last_error = error

    def succeeded(self) -> None:
        if self.last_error is not None:
            log.info("collector %s: recovered", self.name)
        self.last_error = None


async def refresh_once(
    collector: Collector[Any], store: SnapshotStore, refresh_log: RefreshLog | None = None
) -> bool:
    """Run one refresh under the collector's timeout and publish its outcome; never raises
    (except on cancellation). True when fresh data (or a "no data" state) was published."""
    name = collector.name
    refresh_log = refresh_log or RefreshLog(name)
    started = time.monotonic()
    timeout = collector.settings.timeout_seconds
    try:
        try:
            async with asyncio.timeout(timeout):
                families = tuple(await collector.update())
            snapshot = Snapshot(families, True, time.monotonic() - started, time.time())
        except NoDataError as exc:
            snapshot = Snapshot((), True, time.monotonic() - started, time.time(), exc.reason)
        await store.publish_async(name, snapshot)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if isinstance(exc, TimeoutError):
            error = f"refresh timed out after {timeout}s"
        else:
            error = f"refresh failed: {type(exc).__name__}: {exc}"
        refresh_log.failed(error, exc)
        store.fail(name, time.monotonic() - started)
        return False
    refresh_log.succeeded()
    return True


async def run_forever(collector: Collector[Any], store: SnapshotStore) -> None:
    """Refresh every interval; a slow refresh delays the next one instead of overlapping it."""
    interval = collector.settings.interval_seconds
    refresh_log = RefreshLog(collector.name)
    while True:
        started = time.monotonic()
        try:
            await refresh_once(collector, store, refresh_log)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the failure path itself broke: never end the loop silently
            refresh_log.failed(f"refresh loop error: {type(exc).__name__}: {exc}", exc)
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


async def watch_forever(collector: Collector[Any], store: SnapshotStore) -> None:
    """Run a collector's `watch()`; a failure is logged (the refresh loop goes on), not lost."""
    try:
        await collector.watch(store)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("collector %s: watch failed: %s: %s", collector.name, type(exc).__name__, exc)


class Scheduler:
    """Owns the collectors' lifecycle and tasks; started and stopped by the app."""

    def __init__(self, collectors: list[Collector[Any]], store: SnapshotStore) -> None:
        self.collectors = collectors
        self.store = store
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start each collector, then its loop. A collector that cannot start is failed."""
        for collector in self.collectors:
            try:
                await collector.start()
            except Exception as exc:
                log.warning("collector %s: start failed: %s", collector.name, exc)
                self.store.fail(collector.name, 0.0)
                continue
            task = asyncio.create_task(run_forever(collector, self.store), name=collector.name)
            self._tasks.append(task)
            watcher = asyncio.create_task(
                watch_forever(collector, self.store), name=f"{collector.name}-watch"
            )
            self._tasks.append(watcher)

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
            collector.shutdown_executor()
