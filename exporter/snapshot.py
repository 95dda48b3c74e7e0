"""Snapshots and the rendered exposition.

Each collector publishes an immutable snapshot; after every publish the store renders the whole
exposition once (plain text now; OpenMetrics and gzip on first request) and caches the bytes, so a
scrape only picks a cached byte string. No NVML, HTTP or file I/O ever happens on the scrape path.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from exporter import NAMESPACE, __version__

PLAIN_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@dataclass(frozen=True)
class Snapshot:
    """The result of one collector refresh."""

    families: tuple[Metric, ...] = ()
    success: bool = False
    duration_seconds: float = 0.0
    finished_at: float = 0.0


@dataclass
class CollectorStatus:
    """What the store knows about one collector across refreshes."""

    snapshot: Snapshot = field(default_factory=Snapshot)
    completed: bool = False
    errors_total: int = 0
    last_success_timestamp: float = 0.0


class _FamiliesCollector:
    """Adapter so prometheus-client's own encoders render a fixed list of families."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


class SnapshotStore:
    def __init__(self, collectors: Iterable[str]) -> None:
        self.status: dict[str, CollectorStatus] = {name: CollectorStatus() for name in collectors}
        self._cache: dict[tuple[bool, bool], bytes] = {}
        self.render_count = 0
        self._render()

    @property
    def ready(self) -> bool:
        """True once every enabled collector has completed one refresh (success or not)."""
        return all(s.completed for s in self.status.values())

    def publish(self, name: str, snapshot: Snapshot) -> None:
        """Swap in a collector's new snapshot and re-render the exposition once."""
        status = self.status[name]
        status.snapshot = snapshot
        status.completed = True
        if snapshot.success:
            status.last_success_timestamp = snapshot.finished_at
        else:
            status.errors_total += 1
        self._render()

    def exposition(self, *, openmetrics: bool, gzipped: bool) -> bytes:
        """The cached bytes for a format; rendered at most once per publish."""
        key = (openmetrics, gzipped)
        body = self._cache.get(key)
        if body is None:
            plain = self._cache.get((openmetrics, False))
            if plain is None:
                plain = self._encode(openmetrics)
                self._cache[(openmetrics, False)] = plain
            body = gzip.compress(plain, compresslevel=6, mtime=0) if gzipped else plain
            self._cache[key] = body
        return body

    def families(self) -> list[Metric]:
        """Every family: the collectors' snapshots, then the exporter's own metrics."""
        out: list[Metric] = []
        for status in self.status.values():
            out.extend(status.snapshot.families)
        out.extend(self._self_metrics())
        return out

    def _render(self) -> None:
        self._cache = {(False, False): self._encode(False)}
        self.render_count += 1

    def _encode(self, openmetrics: bool) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_FamiliesCollector(self.families()))  # type: ignore[arg-type]
        encode = generate_openmetrics if openmetrics else generate_latest
        body: bytes = encode(registry)  # type: ignore[no-untyped-call]
        return body

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
