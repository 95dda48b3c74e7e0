"""Snapshots and the rendered exposition.

Each collector publishes an immutable snapshot, encoded off the event loop. After every publish
the store joins the collectors' encoded parts into the bodies of the formats scrapers asked for
recently (text or OpenMetrics, plain or gzip), so a scrape only picks a cached byte string.
No NVML, HTTP or file I/O, and no encoding, happens on the scrape path.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from exporter import NAMESPACE, __version__
from exporter.exposition import OM_EOF, encode

PLAIN_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


Encoding = bool  # True: OpenMetrics, False: Prometheus text 0.0.4
Format = tuple[Encoding, bool]  # (openmetrics, gzipped)
WANTED_SECONDS = 600.0  # a format nobody scraped for this long is no longer built in advance


@dataclass(frozen=True)
class Snapshot:
    """The result of one collector refresh, with its families pre-encoded (by encoding)."""

    families: tuple[Metric, ...] = ()
    success: bool = False
    duration_seconds: float = 0.0
    finished_at: float = 0.0
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
    """

    def __init__(self, collectors: Iterable[str]) -> None:
        self.status: dict[str, CollectorStatus] = {name: CollectorStatus() for name in collectors}
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

    def families(self) -> list[Metric]:
        """Every family: the collectors' snapshots, then the exporter's own metrics."""
        out: list[Metric] = []
        for status in self.status.values():
            out.extend(status.snapshot.families)
        out.extend(self._self_metrics())
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
            out.append(encode(self._self_metrics(), openmetrics))
        return parts

    @staticmethod
    def _build(
        parts: dict[Encoding, list[bytes]], formats: Iterable[Format]
    ) -> dict[Format, bytes]:
        bodies: dict[Format, bytes] = {}
        for openmetrics, gzipped in formats:
            plain = b"".join(parts[openmetrics]) + (OM_EOF if openmetrics else b"")
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
        prefix = f"{NAMESPACE}_exporter"
        build = GaugeMetricFamily(
            f"{prefix}_build_info", "Inferwatch exporter build; always 1.", labels=["version"]
        )
        build.add_metric([__version__], 1)
        duration = GaugeMetricFamily(
            f"{prefix}_collector_duration_seconds",
            "Duration of the collector's last refresh.",
            labels=["collector"],
        )
        success = GaugeMetricFamily(
            f"{prefix}_collector_success",
            "1 if the collector's last refresh succeeded, else 0.",
            labels=["collector"],
        )
        last = GaugeMetricFamily(
            f"{prefix}_collector_last_success_timestamp_seconds",
            "Unix time of the collector's last successful refresh (values may be that old).",
            labels=["collector"],
        )
        errors = CounterMetricFamily(
            f"{prefix}_collector_errors",
            "Refreshes that failed or timed out.",
            labels=["collector"],
        )
        for name, status in self.status.items():
            if not status.completed:
                continue
            duration.add_metric([name], status.snapshot.duration_seconds)
            success.add_metric([name], 1.0 if status.snapshot.success else 0.0)
            last.add_metric([name], status.last_success_timestamp)
            errors.add_metric([name], float(status.errors_total))
        return [build, duration, success, last, errors]


def failed_snapshot(started: float) -> Snapshot:
    """A failure drops the collector's series, so Prometheus stale-marks them."""
    return Snapshot((), False, time.monotonic() - started, time.time())
