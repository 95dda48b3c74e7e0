"""PyTorch caching-allocator state from the probe files written inside inference processes.

Each refresh lists the probe directory off the event loop (asyncio.to_thread), re-parses only
files whose mtime or size changed, drops files that are stale (older than `stale_after_seconds`,
or whose process is gone per `proc_root`) and removes them, and skips corrupt ones with one log
line each. NVML's per-process memory (same pid, on the NVML worker thread) is joined in to show GPU
memory held outside the allocator (CUDA context, NCCL, cuBLAS workspaces, custom allocators).

Probe pids are as the process sees them (its own pid namespace in a pod). They are mapped to host
pids through NVML's pid list and `<proc_root>/<pid>/status` NSpid, matched on the process start
time; a process in the exporter's own pid namespace is looked up directly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pynvml
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from pydantic import Field

from exporter import NAMESPACE
from exporter.attribution import PodResolver
from exporter.collectors.base import Collector, CollectorContext, CollectorSettings, register
from exporter.nvml import NvmlBusyError
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
    if not isinstance(value, dict):
        raise BadProbeFileError(f"{what} is not an object")
    return {
        str(k): int(v) for k, v in value.items() if isinstance(v, int) and not isinstance(v, bool)
    }


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


def _optional_number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def parse_probe_file(name: str, data: bytes) -> ProbeRecord:
    """Parse and check one probe file; raise ValueError (incl. JSON errors) when it is unusable."""
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise BadProbeFileError("top level is not an object")
    if not str(doc.get("format", "")).startswith("inferwatch-probe/1"):
        raise BadProbeFileError(f"unknown format {doc.get('format')!r}")
    pid, written_at = doc.get("pid"), _optional_number(doc.get("written_at"))
    if not isinstance(pid, int) or pid <= 0 or written_at is None:
        raise BadProbeFileError("pid or written_at missing")
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
    ticks = doc.get("start_time_ticks")
    namespace = doc.get("pid_namespace")
    return ProbeRecord(
        name=name,
        pid=pid,
        start_ticks=ticks if isinstance(ticks, int) else None,
        start_time_seconds=_optional_number(doc.get("start_time_seconds")),
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


def read_process_memory() -> ProcessMemory:
    """Runs on the NVML worker thread only."""
    result: ProcessMemory = {}
    for index in range(pynvml.nvmlDeviceGetCount()):
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            processes = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except pynvml.NVMLError:
            continue  # a lost GPU: the gpu collector reports it; its processes are unknown here
        uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
        for process in processes:
            result.setdefault(int(process.pid), {})[uuid] = process.usedGpuMemory
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

    def __init__(self, settings: CudaAllocatorSettings, proc_root: str) -> None:
        self.settings = settings
        self.path = Path(settings.probe_dir)
        self.proc_root = Path(proc_root)
        self.pods = PodResolver(proc_root)
        self._cache: dict[str, _Cached] = {}
        self._missing_logged = False
        # A refresh abandoned on timeout leaves its thread running; the next one waits for it.
        self.lock = threading.Lock()

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
                st = entry.stat()
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
        try:
            return parse_probe_file(path.name, path.read_bytes())
        except OSError:
            return None
        except (ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
            log.warning("skipping probe file %s: %s", path, exc)
            return None

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
        for record in records:
            host_pid = host_pids.get((record.pid, record.start_ticks))
            if host_pid is None and record.pid_namespace == view:
                if not self._alive_here(record):
                    self._remove(self.path / record.name, "process exited")
                    self._cache.pop(record.name, None)
                    continue
                host_pid = record.pid
            ref = self.pods.for_pid(host_pid) if host_pid is not None else None
            if host_pid is not None:
                live_pids.append(host_pid)
            if ref is not None:
                who = (ref.namespace, ref.pod, ref.container)
            elif record.kubernetes is not None:
                who = (*record.kubernetes, "")
            else:
                who = ("", "", "")
            per_gpu = (memory or {}).get(host_pid, {}) if host_pid is not None else {}
            for device in record.devices:
                self._add(series, info, record, device, who, per_gpu, now)
        self.pods.retain(live_pids)
        return build_families(series, info)

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


@register("cuda_allocator")
class CudaAllocatorCollector(Collector[CudaAllocatorSettings]):
    def __init__(self, settings: CudaAllocatorSettings, context: CollectorContext) -> None:
        super().__init__(settings, context)
        self.directory = ProbeDirectory(settings, context.proc_root)
        self._memory: ProcessMemory | None = None
        self._nvml_failed = False

    async def update(self) -> Sequence[Metric]:
        now = time.time()
        records = await asyncio.to_thread(self._locked, self.directory.scan, now)
        memory = await self._process_memory() if records and self.settings.nvml_join else None
        return await asyncio.to_thread(self._locked, self.directory.families, records, memory, now)

    def _locked(self, fn: Callable[..., T], *args: Any) -> T:
        with self.directory.lock:
            return fn(*args)

    async def _process_memory(self) -> ProcessMemory | None:
        """NVML's per-process memory; the last good answer while the worker is stuck."""
        try:
            self._memory = await self.context.nvml.run(read_process_memory)
        except NvmlBusyError:
            return self._memory
        except pynvml.NVMLError as exc:
            if not self._nvml_failed:
                log.info("no NVML per-process memory (outside_bytes not published): %s", exc)
                self._nvml_failed = True
            self._memory = None
            return None
        self._nvml_failed = False
        return self._memory
        return self._memory
