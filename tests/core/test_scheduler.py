"""The exporter core's promises: a failing or hung collector never breaks /metrics, its series are
dropped and its success goes 0, and a scrape never triggers collection or rendering."""

from __future__ import annotations

import asyncio
import gzip
import logging
import threading
from collections.abc import Sequence
from typing import Any

import pytest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from exporter.collectors.base import Collector, CollectorContext, CollectorSettings, NoDataError
from exporter.scheduler import Scheduler, refresh_once, run_forever
from exporter.snapshot import SnapshotStore
from harness.wait import eventually_async

CONTEXT = CollectorContext(http=None, nvml=None)  # type: ignore[arg-type]  # unused by these


class Scripted(Collector[CollectorSettings]):
    """Replays a script: a number (gauge value), "raise", "hang", "nodata" or "unencodable"."""

    def __init__(self, name: str, script: list[Any], timeout: float = 0.2) -> None:
        super().__init__(CollectorSettings(interval_seconds=0.01, timeout_seconds=timeout), CONTEXT)
        self.name = name  # type: ignore[misc]
        self.script = list(script)
        self.calls = 0
        self.progress = asyncio.Event()  # set at every update() call

    async def until_calls(self, n: int) -> None:
        """Wait (bounded) until update() has been called n times."""
        async with asyncio.timeout(5):
            while self.calls < n:
                self.progress.clear()
                await self.progress.wait()

    async def update(self) -> Sequence[Metric]:
        step = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        self.progress.set()
        if step == "raise":
            raise RuntimeError("source broke")
        if step == "hang":
            await asyncio.sleep(3600)
        if step == "nodata":
            raise NoDataError("nothing_here")
        family = GaugeMetricFamily(f"test_{self.name}_value", "A scripted value.")
        family.add_metric([], object() if step == "unencodable" else float(step))
        return [family]


def samples(store: SnapshotStore) -> dict[str, float]:
    text = store.exposition(openmetrics=False, gzipped=False).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items()))
            out[key] = s.value
    return out


async def test_failing_collector_drops_its_series_and_keeps_others() -> None:
    good, bad = Scripted("good", [1]), Scripted("bad", [5, "raise"])
    store = SnapshotStore(["good", "bad"])
    for c in (good, bad, good, bad):
        await refresh_once(c, store)
    got = samples(store)
    assert got["test_good_value"] == 1
    assert "test_bad_value" not in got  # dropped, so Prometheus marks it stale
    assert got["inferwatch_exporter_collector_success{collector=bad}"] == 0
    assert got["inferwatch_exporter_collector_success{collector=good}"] == 1
    assert got["inferwatch_exporter_collector_errors_total{collector=bad}"] == 1
    assert got["inferwatch_exporter_collector_last_success_timestamp_seconds{collector=bad}"] > 0


async def test_hung_collector_times_out_then_recovers() -> None:
    hung = Scripted("hung", ["hang", 7], timeout=0.05)
    store = SnapshotStore(["hung"])
    assert not await refresh_once(hung, store)
    assert samples(store)["inferwatch_exporter_collector_success{collector=hung}"] == 0
    assert await refresh_once(hung, store)
    got = samples(store)
    assert got["test_hung_value"] == 7
    assert got["inferwatch_exporter_collector_success{collector=hung}"] == 1


async def test_background_loops_never_overlap_and_stop_cleanly() -> None:
    """One run in flight: a slow collector is not re-entered; stop() cancels every loop."""
    in_flight = 0
    peak = 0

    class Slow(Scripted):
        async def update(self) -> Sequence[Metric]:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.03)
            in_flight -= 1
            return await super().update()

    slow = Slow("slow", [3])
    store = SnapshotStore(["slow"])
    scheduler = Scheduler([slow], store)
    await scheduler.start()
    await eventually_async(lambda: slow.calls >= 3, within=10, what="3 refreshes", interval=0.01)
    await scheduler.stop()
    assert slow.calls >= 3
    assert peak == 1
    assert store.ready


def test_scrapes_serve_cached_bytes_rendered_once_per_publish() -> None:
    store = SnapshotStore(["x"])
    assert not store.ready
    renders = store.render_count
    for _ in range(50):
        store.exposition(openmetrics=False, gzipped=False)
    assert store.render_count == renders  # scrapes never render
    plain = store.exposition(openmetrics=False, gzipped=False)
    assert gzip.decompress(store.exposition(openmetrics=False, gzipped=True)) == plain
    om = store.exposition(openmetrics=True, gzipped=False).decode()
    assert om.rstrip().endswith("# EOF")
    assert "inferwatch_exporter_build_info" in om


async def test_publish_rerenders_with_new_values() -> None:
    c = Scripted("c", [1, 2])
    store = SnapshotStore(["c"])
    await refresh_once(c, store)
    before = store.exposition(openmetrics=False, gzipped=True)
    await refresh_once(c, store)
    assert samples(store)["test_c_value"] == 2
    assert store.exposition(openmetrics=False, gzipped=True) != before
    assert store.ready


async def test_formats_scrapers_ask_for_are_prebuilt_on_every_publish() -> None:
    """After Prometheus asked once for gzipped OpenMetrics, publishes build it in advance."""
    c = Scripted("c", [1, 2, 3])
    store = SnapshotStore(["c"])
    await refresh_once(c, store)
    first = store.exposition(openmetrics=True, gzipped=True)  # first ask: built here, once
    assert (True, True) in store.wanted
    await refresh_once(c, store)
    renders = store.render_count
    body = store.exposition(openmetrics=True, gzipped=True)
    assert store.render_count == renders  # served from the cache built at publish time
    assert body != first
    text = gzip.decompress(body).decode()
    assert text.count("# EOF") == 1 and text.endswith("# EOF\n")
    assert "test_c_value 2.0" in text


async def test_a_failed_publish_drops_the_series_sets_success_0_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Encoding (the publish step) breaks: never the old snapshot presented as fresh."""
    c = Scripted("c", [4, "unencodable"])
    store = SnapshotStore(["c"])
    assert await refresh_once(c, store)
    assert samples(store)["test_c_value"] == 4
    with caplog.at_level(logging.WARNING, logger="exporter.scheduler"):
        task = asyncio.create_task(run_forever(c, store))
        await c.until_calls(6)  # several failing refreshes in the loop, which keeps running
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    got = samples(store)
    assert "test_c_value" not in got
    assert got["inferwatch_exporter_collector_success{collector=c}"] == 0
    assert got["inferwatch_exporter_collector_errors_total{collector=c}"] >= 4
    logged = [r.getMessage() for r in caplog.records if "collector c" in r.getMessage()]
    assert len(logged) == 1 and "TypeError" in logged[0]  # once per distinct error


async def test_no_data_is_success_with_a_reason_not_a_failure() -> None:
    c = Scripted("c", [2, "nodata"])
    store = SnapshotStore(["c"])
    await refresh_once(c, store)
    assert await refresh_once(c, store)
    got = samples(store)
    assert "test_c_value" not in got
    assert got["inferwatch_exporter_collector_success{collector=c}"] == 1
    assert got["inferwatch_exporter_collector_no_data{collector=c}{reason=nothing_here}"] == 1
    assert got["inferwatch_exporter_collector_errors_total{collector=c}"] == 0


async def test_lifecycle_start_once_then_updates_then_close() -> None:
    events: list[str] = []

    class Tracked(Scripted):
        async def start(self) -> None:
            events.append("start")

        async def update(self) -> Sequence[Metric]:
            events.append("update")
            return await super().update()

        async def close(self) -> None:
            events.append("close")

    c = Tracked("c", [1])
    store = SnapshotStore(["c"])
    scheduler = Scheduler([c], store)
    await scheduler.start()
    await c.until_calls(2)
    await scheduler.stop()
    assert events[0] == "start" and events[-1] == "close"
    assert events.count("start") == 1 and events.count("close") == 1
    assert set(events[1:-1]) == {"update"}


async def test_an_abandoned_refresh_never_overlaps_the_next_one() -> None:
    """Blocking work runs on the collector's own thread: a timed-out job finishes first."""
    release = threading.Event()
    running = 0
    overlapped = False

    def blocking(wait: bool) -> int:
        nonlocal running, overlapped
        running += 1
        overlapped |= running > 1
        if wait:
            release.wait(5)
        running -= 1
        return 1

    class Blocking(Scripted):
        async def update(self) -> Sequence[Metric]:
            self.calls += 1
            await self.run_blocking(blocking, self.calls == 1)
            family = GaugeMetricFamily("test_blocking_value", "A value.")
            family.add_metric([], float(self.calls))
            return [family]

    c = Blocking("b", [0], timeout=0.05)
    store = SnapshotStore(["b"])
    assert not await refresh_once(c, store)  # abandoned while its thread still runs
    second = asyncio.create_task(refresh_once(c, store))
    # The second job is either waiting in the collector's own queue (right) or already running
    # beside the abandoned one (wrong: `overlapped`); release the first only once it is one of them.
    await eventually_async(
        lambda: running > 1 or (c._executor is not None and c._executor._work_queue.qsize() > 0),
        within=10,
        what="the second job submitted",
        interval=0.01,
    )
    release.set()
    await second
    assert not overlapped  # the second job queued behind the abandoned one, never beside it
    c.shutdown_executor()


async def test_a_collector_that_cannot_start_is_failing_and_the_others_run() -> None:
    class Broken(Scripted):
        async def start(self) -> None:
            raise RuntimeError("no watch")

    bad, good = Broken("bad", [1]), Scripted("good", [1])
    store = SnapshotStore(["bad", "good"])
    scheduler = Scheduler([bad, good], store)
    await scheduler.start()
    await good.until_calls(2)  # the first refresh is published before the second starts
    await scheduler.stop()
    got = samples(store)
    assert got["inferwatch_exporter_collector_success{collector=bad}"] == 0
    assert bad.calls == 0
    assert got["test_good_value"] == 1
