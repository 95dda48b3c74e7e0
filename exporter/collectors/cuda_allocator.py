"""PyTorch caching-allocator state from the probe files written inside inference processes.

Each refresh lists the probe directory on the collector's own thread, re-parses only files
whose mtime or size changed, drops files that are stale (older than `stale_after_seconds`, or
whose process is gone per `proc_root`) and removes them, and skips corrupt ones with one log
line each. NVML's per-process memory (same pid, on the NVML worker thread) is joined in to show GPU
memory held outside the allocator (CUDA context, NCCL, cuBLAS workspaces, custom allocators).

Probe pids are as the process sees them (its own pid namespace in a pod). They are mapped to host
pids through NVML's pid list and `<proc_root>/<pid>/status` NSpid, matched on the process start
time; a process in the exporter's own pid namespace is looked up directly.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from pydantic import Field

from exporter import NAMESPACE
from exporter.attribution import PodResolver
from exporter.catalog import MetricSpec, counter, gauge
from exporter.collectors.base import (
    Collector,
    CollectorContext,
    CollectorSettings,
    NoDataError,
    register,
)
from exporter.nvml import (
    NvmlBusyError,
    NvmlError,
    NvmlUnavailableError,
    ProcessReading,
    read_processes,
)
from exporter.probe import files, formulas

log = logging.getLogger(__name__)
T = TypeVar("T")

PREFIX = f"{NAMESPACE}_cuda_allocator"
LABELS = ["uuid", "namespace", "pod", "container", "pool"]

GAUGE_HELP = {
    "reserved": "Bytes the caching allocator holds from the driver (segments).",
    "allocated": "Bytes in live tensors.",
    "active": "Bytes in live tensors or freed but still in use by another stream.",
    "inactive_split": "Free bytes in segments that also hold live blocks (cannot be released).",
    "free": "Free (inactive) bytes, from the last memory_snapshot().",
    "largest_free_block": "Largest contiguous free run, from the last memory_snapshot().",
}
COUNTER_HELP = {
    "alloc_retries": "Allocations that flushed the cache and retried device malloc.",
    "ooms": "Out-of-memory errors raised by the allocator.",
    "device_allocs": "Device memory allocation calls (cudaMalloc / page maps).",
    "device_frees": "Device memory free calls (cudaFree / page unmaps).",
}


class CudaAllocatorSettings(CollectorSettings):
    probe_dir: str = Field(
        files.DEFAULT_PROBE_DIR,
        description="Directory the in-process probes write to (shared hostPath in Kubernetes).",
    )
    stale_after_seconds: float = Field(
        120.0, gt=0, description="A probe file not rewritten for this long is dropped."
    )
    remove_stale: bool = Field(
        True, description="Delete stale probe files (and those of exited processes)."
    )
    nvml_join: bool = Field(
        True, description="Join NVML per-process memory to publish memory outside the allocator."
    )


@dataclass(frozen=True)
class DeviceRecord:
    """One GPU of a probe file, with the catalog values computed once per parse."""

    uuid: str
    stats: dict[str, int]
    groups: dict[str, dict[str, int]] | None
    pools: dict[str, dict[str, int]]
    counters: dict[str, int]

    @classmethod
    def build(
        cls, uuid: str, stats: dict[str, int], groups: dict[str, dict[str, int]] | None
    ) -> DeviceRecord:
        pools = formulas.pool_values(stats, groups)
        return cls(uuid, stats, groups, pools, formulas.counters(stats))


@dataclass(frozen=True)
class ProbeRecord:
    """One parsed probe file."""

    name: str
    pid: int
    start_ticks: int | None
    start_time_seconds: float | None
    pid_namespace: str | None
    written_at: float
    kubernetes: tuple[str, str] | None
    torch_version: str
    backend: str
    expandable_segments: bool
    devices: tuple[DeviceRecord, ...]


class BadProbeFileError(ValueError):
    """A probe file that parses but does not have the expected shape."""


def _int_map(value: Any, what: str) -> dict[str, int]:
    """The integer fields of an object; a negative or oversized count rejects the file."""
    if not isinstance(value, dict):
        raise BadProbeFileError(f"{what} is not an object")
    counts = {str(k): files.count_value(v, f"{what}.{k}") for k, v in value.items()}
    return {k: v for k, v in counts.items() if v is not None}


def _groups(value: Any) -> dict[str, dict[str, int]] | None:
    if not isinstance(value, dict):
        return None
    groups = value.get("groups")
    if not isinstance(groups, dict):
        return None
    parsed = {name: _int_map(groups.get(name, {}), name) for name in formulas.SNAPSHOT_GROUPS}
    return {
        name: {f: group.get(f, 0) for f in formulas.SNAPSHOT_FIELDS}
        for name, group in parsed.items()
    }


def parse_probe_file(name: str, data: bytes) -> ProbeRecord:
    """Parse and check one probe file; raise ValueError (incl. JSON errors) when it is unusable."""
    doc = files.load_json(data)
    if not isinstance(doc, dict):
        raise BadProbeFileError("top level is not an object")
    if not str(doc.get("format", "")).startswith("inferwatch-probe/1"):
        raise BadProbeFileError(f"unknown format {doc.get('format')!r}")
    pid = doc.get("pid")
    written_at = files.timestamp_value(doc.get("written_at"), "written_at")
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 2**31:
        raise BadProbeFileError("pid missing or not a process id")
    devices = []
    raw_devices = doc.get("devices")
    if not isinstance(raw_devices, list):
        raise BadProbeFileError("devices is not a list")
    for entry in raw_devices:
        if not isinstance(entry, dict) or not isinstance(entry.get("uuid"), str):
            raise BadProbeFileError("a device has no uuid")
        stats = _int_map(entry.get("stats"), "stats")
        devices.append(DeviceRecord.build(entry["uuid"], stats, _groups(entry.get("snapshot"))))
    allocator = doc.get("allocator")
    if not isinstance(allocator, dict):
        allocator = {}
    k8s = doc.get("kubernetes")
    kubernetes = (
        (str(k8s.get("namespace", "")), str(k8s.get("pod", ""))) if isinstance(k8s, dict) else None
    )
    ticks, started = doc.get("start_time_ticks"), doc.get("start_time_seconds")
    namespace = doc.get("pid_namespace")
    return ProbeRecord(
        name=name,
        pid=pid,
        start_ticks=files.count_value(ticks, "start_time_ticks"),
        start_time_seconds=None
        if started is None
        else files.timestamp_value(started, "start_time_seconds"),
        pid_namespace=namespace if isinstance(namespace, str) else None,
        written_at=written_at,
        kubernetes=kubernetes,
        torch_version=str(doc.get("torch_version", "unknown")),
        backend=str(allocator.get("backend", "unknown")),
        expandable_segments=bool(allocator.get("expandable_segments", False)),
        devices=tuple(devices),
    )


# NVML per-process memory: host pid -> {gpu uuid: used bytes or None (not available)}
ProcessMemory = dict[int, dict[str, int | None]]


def by_pid(by_gpu: Mapping[str, Sequence[ProcessReading]]) -> ProcessMemory:
    """NVML's per-GPU process lists turned around: host pid -> {gpu uuid: used bytes}."""
    result: ProcessMemory = {}
    for uuid, processes in by_gpu.items():
        for process in processes:
            result.setdefault(process.pid, {})[uuid] = process.used_bytes
    return result


@dataclass
class _Series:
    """Values of one label set (several processes can share one: summed, largest kept)."""

    gauges: dict[str, int]
    counters: dict[str, int]
    probe_age: float = 0.0
    start_time: float | None = None
    outside: int | None = None


@dataclass(frozen=True)
class _Cached:
    mtime_ns: int
    size: int
    record: ProbeRecord | None  # None: the file was bad at this mtime/size (already logged)


class ProbeDirectory:
    """The probe directory and what was parsed from it; used from one worker thread at a time."""

    def __init__(
        self, settings: CudaAllocatorSettings, proc_root: str, pods: PodResolver | None = None
    ) -> None:
        self.settings = settings
        self.path = Path(settings.probe_dir)
        self.proc_root = Path(proc_root)
        self.pods = pods or PodResolver(proc_root)
        self._cache: dict[str, _Cached] = {}
        self._missing_logged = False
        self.skipped = dict.fromkeys(files.REJECT_REASONS, 0)
        """Probe files skipped, by reason; each version of a file (mtime, size) counted once."""
        self._duplicates: set[str] = set()

    def _remove(self, path: Path, why: str) -> None:
        if not self.settings.remove_stale:
            return
        try:
            path.unlink()
            log.debug("removed probe file %s (%s)", path, why)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove probe file %s (%s): %s", path, why, exc.strerror or exc)

    def scan(self, now: float) -> list[ProbeRecord]:
        """Fresh, well-formed records; stale files removed, bad ones skipped (logged once)."""
        try:
            entries = list(os.scandir(self.path))
        except OSError as exc:
            if not self._missing_logged:
                log.info("probe directory %s not readable: %s", self.path, exc.strerror or exc)
                self._missing_logged = True
            self._cache.clear()
            return []
        self._missing_logged = False
        stale_after = self.settings.stale_after_seconds
        records: list[ProbeRecord] = []
        seen: set[str] = set()
        for entry in entries:
            name = entry.name
            try:
                st = entry.stat(follow_symlinks=False)  # a symlink's target is never read
            except OSError:
                continue  # removed meanwhile
            if now - st.st_mtime > stale_after:
                if name.endswith(files.SUFFIX):  # also a writer's leftover temp file
                    self._remove(Path(entry.path), "stale")
                continue
            if name.startswith(files.TEMP_PREFIX) or not name.endswith(files.SUFFIX):
                continue
            seen.add(name)
            cached = self._cache.get(name)
            if cached is None or (cached.mtime_ns, cached.size) != (st.st_mtime_ns, st.st_size):
                cached = _Cached(st.st_mtime_ns, st.st_size, self._parse(Path(entry.path)))
                self._cache[name] = cached
            record = cached.record
            if record is not None and now - record.written_at <= stale_after:
                records.append(record)
        for name in [n for n in self._cache if n not in seen]:
            del self._cache[name]
        return records

    def _parse(self, path: Path) -> ProbeRecord | None:
        """The file's record, or None: a bad file is skipped, logged and counted (once per
        version), never fails the refresh."""
        try:
            return parse_probe_file(path.name, files.read_bounded(path))
        except FileNotFoundError:
            return None  # removed since it was listed
        except files.RejectedFileError as exc:
            self._skip(path, exc.reason, exc)
        except (ValueError, TypeError) as exc:  # a document of the wrong shape
            self._skip(path, "invalid", exc)
        return None

    def _skip(self, path: Path, reason: str, error: Exception) -> None:
        self.skipped[reason] += 1
        log.warning("skipping probe file %s (%s): %s", path, reason, error)

    def _read(self, pid: int, name: str) -> str | None:
        try:
            return (self.proc_root / str(pid) / name).read_text(errors="replace")
        except OSError:
            return None

    def _view_namespace(self) -> str | None:
        try:
            return os.readlink(self.proc_root / "self" / "ns" / "pid")
        except OSError:
            return None

    def _host_pids(self, nvml_pids: Sequence[int]) -> dict[tuple[int, int | None], int]:
        """(pid as seen inside its namespace, start ticks) -> host pid, for NVML's processes."""
        mapping: dict[tuple[int, int | None], int] = {}
        for host_pid in nvml_pids:
            stat, status = self._read(host_pid, "stat"), self._read(host_pid, "status")
            if stat is None or status is None:
                continue
            inner = files.ns_pid(status)
            if inner is not None:
                mapping[(inner, files.proc_start_ticks(stat))] = host_pid
        return mapping

    def _alive_here(self, record: ProbeRecord) -> bool:
        stat = self._read(record.pid, "stat")
        if stat is None:
            return False
        ticks = files.proc_start_ticks(stat)
        return record.start_ticks is None or ticks is None or ticks == record.start_ticks

    def families(
        self, records: list[ProbeRecord], memory: ProcessMemory | None, now: float
    ) -> list[Metric]:
        """Resolve pids and pods, drop files of exited processes, build the metric families."""
        host_pids = self._host_pids(list(memory or ()))
        view = self._view_namespace()
        series: dict[tuple[str, str, str, str, str], _Series] = {}
        info: set[tuple[str, ...]] = set()
        live_pids: list[int] = []
        processes: set[tuple[object, ...]] = set()
        duplicates: set[str] = set()
        # Newest first: of several files claiming one process, the latest write is the truth.
        for record in sorted(records, key=lambda r: r.written_at, reverse=True):
            host_pid = host_pids.get((record.pid, record.start_ticks))
            if host_pid is None and record.pid_namespace == view:
                if not self._alive_here(record):
                    self._remove(self.path / record.name, "process exited")
                    self._cache.pop(record.name, None)
                    continue
                host_pid = record.pid
            process = (
                ("host", host_pid)
                if host_pid is not None
                else (record.pid_namespace, record.pid, record.start_ticks)
            )
            if process in processes:  # a copy would add its counters to the real file's
                duplicates.add(record.name)
                continue
            processes.add(process)
            ref = self.pods.for_pid(host_pid) if host_pid is not None else None
            if host_pid is not None:
                live_pids.append(host_pid)
            # Only what the exporter resolved itself names a pod: the file's own `kubernetes`
            # claim is never published (it could aim a restart alert at another team's pod).
            who = (ref.namespace, ref.pod, ref.container) if ref is not None else ("", "", "")
            per_gpu = (memory or {}).get(host_pid, {}) if host_pid is not None else {}
            for device in record.devices:
                self._add(series, info, record, device, who, per_gpu, now)
        for name in sorted(duplicates - self._duplicates):
            newer = ValueError("a newer file names the same process")
            self._skip(self.path / name, "duplicate", newer)
        self._duplicates = duplicates
        return [*build_families(series, info), self.skipped_family()]

    def skipped_family(self) -> Metric:
        family = CounterMetricFamily(
            f"{PREFIX}_probe_files_skipped",
            "Probe files skipped, by reason: not_regular (FIFO, device, symlink), too_large, "
            "unreadable, invalid (JSON, shape or values), duplicate (same process as a newer "
            "file). Each version of a file counts once.",
            labels=["reason"],
        )
        for reason, count in self.skipped.items():
            family.add_metric([reason], count)
        return family

    @staticmethod
    def _add(
        series: dict[tuple[str, str, str, str, str], _Series],
        info: set[tuple[str, ...]],
        record: ProbeRecord,
        device: DeviceRecord,
        who: tuple[str, str, str],
        per_gpu: Mapping[str, int | None],
        now: float,
    ) -> None:
        for pool, values in device.pools.items():
            key = (device.uuid, *who, pool)
            entry = series.setdefault(key, _Series({}, {}))
            for field, value in values.items():
                if field == "largest_free_block":
                    entry.gauges[field] = max(entry.gauges.get(field, 0), value)
                else:
                    entry.gauges[field] = entry.gauges.get(field, 0) + value
        entry = series.setdefault((device.uuid, *who, "all"), _Series({}, {}))
        for name, value in device.counters.items():
            entry.counters[name] = entry.counters.get(name, 0) + value
        entry.probe_age = max(entry.probe_age, max(0.0, now - record.written_at))
        if record.start_time_seconds is not None:
            entry.start_time = max(entry.start_time or 0.0, record.start_time_seconds)
        used = per_gpu.get(device.uuid)
        if used is None and len(per_gpu) == 1 and len(record.devices) == 1:
            used = next(iter(per_gpu.values()))  # MIG: NVML names the parent GPU, torch the MIG
        reserved = device.stats.get("reserved_bytes.all.current")
        if used is not None and reserved is not None:
            entry.outside = (entry.outside or 0) + max(0, used - reserved)
        expandable = "true" if record.expandable_segments else "false"
        info.add((device.uuid, *who, "all", record.backend, expandable, record.torch_version))


def build_families(
    series: Mapping[tuple[str, str, str, str, str], _Series], info: set[tuple[str, ...]]
) -> list[Metric]:
    families: list[Metric] = []
    for field in formulas.POOL_GAUGES:
        gauge = GaugeMetricFamily(f"{PREFIX}_{field}_bytes", GAUGE_HELP[field], labels=LABELS)
        for key, entry in series.items():
            if field in entry.gauges:
                gauge.add_metric(list(key), entry.gauges[field])
        families.append(gauge)
    for name, text in COUNTER_HELP.items():
        counter = CounterMetricFamily(f"{PREFIX}_{name}", text, labels=LABELS)
        for key, entry in series.items():
            if name in entry.counters:
                counter.add_metric(list(key), entry.counters[name])
        families.append(counter)
    info_family = GaugeMetricFamily(
        f"{PREFIX}_info",
        "Allocator backend and settings of the processes on a GPU (value 1).",
        labels=[*LABELS, "backend", "expandable_segments", "torch_version"],
    )
    for labels in sorted(info):
        info_family.add_metric(list(labels), 1)
    families.append(info_family)
    age = GaugeMetricFamily(
        f"{PREFIX}_probe_age_seconds", "Seconds since the probe last wrote.", labels=LABELS
    )
    start = GaugeMetricFamily(
        f"{PREFIX}_process_start_time_seconds",
        "Start time of the (youngest) process, Unix seconds; for warm-up guards in alerts.",
        labels=LABELS,
    )
    outside = GaugeMetricFamily(
        f"{PREFIX}_outside_bytes",
        "GPU memory the processes hold outside the allocator: NVML per-process used minus "
        "reserved (CUDA context, NCCL, cuBLAS workspaces, custom allocators).",
        labels=LABELS,
    )
    for key, entry in series.items():
        if key[4] != "all" or not (entry.counters or entry.gauges):
            continue
        age.add_metric(list(key), entry.probe_age)
        if entry.start_time is not None:
            start.add_metric(list(key), entry.start_time)
        if entry.outside is not None:
            outside.add_metric(list(key), entry.outside)
    families += [age, start, outside]
    return families


# What this collector publishes (checked against its output by tests/core/test_registration.py).
METRICS: tuple[MetricSpec, ...] = (
    *(gauge(f"{PREFIX}_{f}_bytes", GAUGE_HELP[f], LABELS) for f in formulas.POOL_GAUGES),
    *(counter(f"{PREFIX}_{name}", text, LABELS) for name, text in COUNTER_HELP.items()),
    gauge(
        f"{PREFIX}_info",
        "Allocator backend and settings of the processes on a GPU (value 1).",
        [*LABELS, "backend", "expandable_segments", "torch_version"],
    ),
    gauge(f"{PREFIX}_probe_age_seconds", "Seconds since the probe last wrote.", LABELS),
    gauge(
        f"{PREFIX}_process_start_time_seconds",
        "Start time of the (youngest) process, Unix seconds; for warm-up guards in alerts.",
        LABELS,
    ),
    gauge(
        f"{PREFIX}_outside_bytes",
        "GPU memory the processes hold outside the allocator: NVML per-process used minus "
        "reserved (CUDA context, NCCL, cuBLAS workspaces, custom allocators).",
        LABELS,
    ),
    counter(
        f"{PREFIX}_probe_files_skipped",
        "Probe files skipped, by reason: not_regular (FIFO, device, symlink), too_large, "
        "unreadable, invalid (JSON, shape or values), duplicate (same process as a newer "
        "file). Each version of a file counts once.",
        ["reason"],
    ),
)


@register("cuda_allocator")
class CudaAllocatorCollector(Collector[CudaAllocatorSettings]):
    settings_model = CudaAllocatorSettings
    metrics = METRICS

    def __init__(self, settings: CudaAllocatorSettings, context: CollectorContext) -> None:
        super().__init__(settings, context)
        self.directory = ProbeDirectory(settings, context.proc_root, context.pods)
        self._memory: ProcessMemory | None = None
        self._nvml_failed = False

    async def update(self) -> Sequence[Metric]:
        """Blocking work on this collector's own thread: an abandoned refresh finishes first."""
        now = time.time()
        records = await self.run_blocking(self.directory.scan, now)
        memory = await self._process_memory() if records and self.settings.nvml_join else None
        families = await self.run_blocking(self.directory.families, records, memory, now)
        if not records and not any(self.directory.skipped.values()):
            raise NoDataError("no_probe_files")
        return families

    async def _process_memory(self) -> ProcessMemory | None:
        """NVML's per-process memory: the gpu collector's list from this interval if there is
        one (one process list per refresh), else read now; the last good answer while the
        worker is stuck."""
        shared = self.context.nvml.processes.fresh(self.settings.interval_seconds)
        if shared is not None:
            self._memory = by_pid(shared)
            return self._memory
        nvml = self.context.nvml
        try:
            self._memory = by_pid(await nvml.run(lambda: read_processes(nvml)))
        except NvmlBusyError:
            return self._memory
        except (NvmlError, NvmlUnavailableError) as exc:
            if not self._nvml_failed:
                log.info("no NVML per-process memory (outside_bytes not published): %s", exc)
                self._nvml_failed = True
            self._memory = None
            return None
        self._nvml_failed = False
        return self._memory
