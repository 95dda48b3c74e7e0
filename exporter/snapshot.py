"""Snapshots and the rendered exposition.

Each collector publishes an immutable snapshot, encoded off the event loop. After every publish
the store joins the collectors' encoded parts into the bodies of the formats scrapers asked for
recently (text or OpenMetrics, plain or gzip), so a scrape only picks a cached byte string.
No NVML, HTTP or file I/O, and no encoding, happens on the scrape path.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from prometheus_client import PlatformCollector, ProcessCollector
from prometheus_client.core import Metric

from exporter import NAMESPACE, __version__
from exporter.catalog import MetricSpec, counter, gauge
from exporter.exposition import OM_EOF, encode

log = logging.getLogger(__name__)

PLAIN_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


Encoding = bool  # True: OpenMetrics, False: Prometheus text 0.0.4
Format = tuple[Encoding, bool]  # (openmetrics, gzipped)
WANTED_SECONDS = 600.0

_PREFIX = f"{NAMESPACE}_exporter"
BUILD_INFO = gauge(f"{_PREFIX}_build_info", "Inferwatch exporter build; always 1.", ["version"])
DURATION = gauge(
    f"{_PREFIX}_collector_duration_seconds",
    "Duration of the collector's last refresh.",
    ["collector"],
)
SUCCESS = gauge(
    f"{_PREFIX}_collector_success",
    "1 if the collector's last refresh succeeded, else 0.",
    ["collector"],
)
LAST_SUCCESS = gauge(
    f"{_PREFIX}_collector_last_success_timestamp_seconds",
    "Unix time of the collector's last successful refresh (values may be that old).",
    ["collector"],
)
ERRORS = counter(
    f"{_PREFIX}_collector_errors", "Refreshes that failed or timed out.", ["collector"]
)
NO_DATA = gauge(
    f"{_PREFIX}_collector_no_data",
    "1 while the collector has nothing to publish on this node, and why (not a failure).",
    ["collector", "reason"],
    when="a collector has nothing to collect on this node",
)
NVML_ERRORS = counter(
    f"{_PREFIX}_nvml_errors",
    "NVML calls that returned an error, by C function and NVML return code.",
    ["call", "code"],
    when="an NVML call failed",
)
NVML_HUNG = gauge(
    f"{_PREFIX}_nvml_hung",
    "1 while an NVML call has been running longer than the hang threshold (a wedged driver).",
)
NVML_HANGS = counter(
    f"{_PREFIX}_nvml_hangs",
    "NVML calls found stuck in the driver past the hang threshold, by C function.",
    ["call"],
    when="an NVML call hung",
)
# The exporter's own series: these, plus client_python's process_* and python_info.
EXPORTER_METRICS: tuple[MetricSpec, ...] = (
    BUILD_INFO,
    DURATION,
    SUCCESS,
    LAST_SUCCESS,
    ERRORS,
    NO_DATA,
    NVML_ERRORS,
    NVML_HUNG,
    NVML_HANGS,
)
PROCESS_METRICS: tuple[MetricSpec, ...] = (
    gauge("process_virtual_memory_bytes", "Virtual memory size in bytes."),
    gauge("process_resident_memory_bytes", "Resident memory size in bytes."),
    gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds."),
    counter("process_cpu_seconds", "Total user and system CPU time spent in seconds."),
    gauge("process_open_fds", "Number of open file descriptors."),
    gauge("process_max_fds", "Maximum number of open file descriptors."),
    gauge(
        "python_info",
        "Python platform information",
        ["implementation", "major", "minor", "patchlevel", "version"],
    ),
)  # a format nobody scraped for this long is no longer built in advance


@dataclass(frozen=True)
class Snapshot:
    """The result of one collector refresh, with its families pre-encoded (by encoding)."""

    families: tuple[Metric, ...] = ()
    success: bool = False
    duration_seconds: float = 0.0
    finished_at: float = 0.0
    no_data: str | None = None  # success with nothing to publish, and why
    encoded: dict[Encoding, bytes] = field(default_factory=dict, compare=False)


@dataclass
class CollectorStatus:
    """What the store knows about one collector across refreshes."""

    snapshot: Snapshot = field(default_factory=Snapshot)
    completed: bool = False
    errors_total: int = 0
    last_success_timestamp: float = 0.0


def encode_snapshot(snapshot: Snapshot, encodings: Iterable[Encoding]) -> Snapshot:
    """The same snapshot with its families encoded; run off the event loop (CPU work)."""
    encoded = {e: encode(snapshot.families, e) for e in set(encodings)}
    return replace(snapshot, encoded=encoded)


class SnapshotStore:
    """Per-collector encoded parts, joined into cached bodies for the formats scrapers want.

    A scrape never encodes or compresses once its format has been asked for: every publish
    rebuilds the bodies of the wanted formats (`publish_async` does the CPU work in a thread).
    The exporter's own metrics come last: per-collector status, the process's CPU and memory
    (client_python's ProcessCollector and PlatformCollector) and any added `sources`.
    """

    def __init__(self, collectors: Iterable[str]) -> None:
        self.status: dict[str, CollectorStatus] = {name: CollectorStatus() for name in collectors}
        self.sources: list[Callable[[], Iterable[Metric]]] = [
            ProcessCollector(registry=None).collect,
            PlatformCollector(registry=None).collect,
        ]
        self._asked: dict[Format, float] = {}  # format -> when a scrape last asked for it
        self._bodies: dict[Format, bytes] = {}
        self._generation = 0
        self.render_count = 0

    @property
    def ready(self) -> bool:
        """True once every enabled collector has completed one refresh (success or not)."""
        return all(s.completed for s in self.status.values())

    @property
    def wanted(self) -> set[Format]:
        """Formats a scrape asked for in the last WANTED_SECONDS: built at every publish."""
        now = time.monotonic()
        return {fmt for fmt, asked in self._asked.items() if now - asked < WANTED_SECONDS}

    @property
    def encodings(self) -> set[Encoding]:
        return {openmetrics for openmetrics, _ in self.wanted}

    def publish(self, name: str, snapshot: Snapshot) -> None:
        """Swap in a collector's new snapshot and rebuild the wanted bodies (synchronously)."""
        generation = self._record(name, snapshot)
        self._swap(generation, self._build(self._parts_for(self.wanted), self.wanted))

    def fail(self, name: str, duration_seconds: float) -> None:
        """Record a failed refresh: the collector's series are dropped, success 0, errors + 1.

        Synchronous and cheap (the other collectors' parts are already encoded), so it works
        even when the failure was in encoding or publishing itself.
        """
        generation = self._record(name, Snapshot((), False, duration_seconds, time.time()))
        try:
            self._swap(generation, self._build(self._parts_for(self.wanted), self.wanted))
        except Exception as exc:  # never serve the failed collector's old series
            log.warning("rebuilding /metrics after %s failed: %s", name, exc)
            self._bodies = {}

    async def publish_async(self, name: str, snapshot: Snapshot) -> None:
        """Like publish, with encoding and compression in a worker thread, off the event loop."""
        wanted = set(self.wanted)
        snapshot = await asyncio.to_thread(encode_snapshot, snapshot, self.encodings)
        generation = self._record(name, snapshot)
        parts = self._parts_for(wanted)
        self._swap(generation, await asyncio.to_thread(self._build, parts, wanted))

    def exposition(self, *, openmetrics: bool, gzipped: bool) -> bytes:
        """The cached body for a format; a format asked for the first time is built once here."""
        fmt = (openmetrics, gzipped)
        self._asked[fmt] = time.monotonic()
        body = self._bodies.get(fmt)
        if body is None:
            built = self._build(self._parts_for({fmt}), {fmt})
            self._bodies.update(built)
            body = built[fmt]
        return body

    def _own_metrics(self) -> list[Metric]:
        """The exporter's own families; in a worker thread when publishing (reads /proc/self)."""
        out = self._self_metrics()
        for source in self.sources:
            out.extend(source())
        return out

    def _record(self, name: str, snapshot: Snapshot) -> int:
        status = self.status[name]
        status.snapshot = snapshot
        status.completed = True
        if snapshot.success:
            status.last_success_timestamp = snapshot.finished_at
        else:
            status.errors_total += 1
        self._generation += 1
        return self._generation

    def _parts_for(self, formats: Iterable[Format]) -> dict[Encoding, list[bytes]]:
        """Each collector's encoded part (encoding it now if the refresh did not), then ours."""
        parts: dict[Encoding, list[bytes]] = {}
        for openmetrics in {f[0] for f in formats}:
            out = parts.setdefault(openmetrics, [])
            for status in self.status.values():
                snap = status.snapshot
                if openmetrics not in snap.encoded:
                    status.snapshot = snap = encode_snapshot(snap, [openmetrics, *snap.encoded])
                out.append(snap.encoded[openmetrics])
        return parts

    def _build(
        self, parts: dict[Encoding, list[bytes]], formats: Iterable[Format]
    ) -> dict[Format, bytes]:
        bodies: dict[Format, bytes] = {}
        own = self._own_metrics()
        for openmetrics, gzipped in formats:
            tail = encode(own, openmetrics) + (OM_EOF if openmetrics else b"")
            plain = b"".join(parts[openmetrics]) + tail
            bodies[(openmetrics, gzipped)] = (
                gzip.compress(plain, compresslevel=1, mtime=0) if gzipped else plain
            )
        return bodies

    def _swap(self, generation: int, bodies: dict[Format, bytes]) -> None:
        """Install freshly built bodies unless a newer publish already did."""
        if generation == self._generation:
            self._bodies = bodies
            self.render_count += 1

    def _self_metrics(self) -> list[Metric]:
        build = BUILD_INFO.gauge()
        build.add_metric([__version__], 1)
        duration, success, last = DURATION.gauge(), SUCCESS.gauge(), LAST_SUCCESS.gauge()
        errors, no_data = ERRORS.counter(), NO_DATA.gauge()
        for name, status in self.status.items():
            if not status.completed:
                continue
            duration.add_metric([name], status.snapshot.duration_seconds)
            success.add_metric([name], 1.0 if status.snapshot.success else 0.0)
            last.add_metric([name], status.last_success_timestamp)
            errors.add_metric([name], float(status.errors_total))
            if status.snapshot.success and status.snapshot.no_data is not None:
                no_data.add_metric([name, status.snapshot.no_data], 1.0)
        return [build, duration, success, last, errors, no_data]
