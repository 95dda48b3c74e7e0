"""The probe thread: reads allocator state inside the inference process and writes the probe file.

Rules it keeps, because breaking them can stall or crash the server it lives in:
- it never initializes CUDA (it waits for `torch.cuda.is_initialized()`), never imports torch
  itself (it waits for the server to), and never calls `empty_cache()` or `synchronize()`;
- every torch call is guarded: a failure is logged once, retried on the next round, and the
  recovery is logged;
- `memory_snapshot()` holds the allocator mutex while it walks every block, so it runs rarely and
  is timed: a slow snapshot doubles its interval (up to a cap), fast ones bring it back;
- no lock is held across a torch call (the thread shares nothing but a stop event).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from exporter.probe import files, formulas

log = logging.getLogger("inferwatch.probe")
T = TypeVar("T")


class StatsSource(Protocol):
    """Where allocator data comes from: torch in production, a stand-in in tests."""

    def ready(self) -> bool:
        """True once the process itself has initialized CUDA; must never initialize it."""

    def device_count(self) -> int: ...

    def memory_stats(self, device: int) -> Mapping[str, Any]: ...

    def memory_snapshot(self) -> Sequence[Mapping[str, Any]]: ...

    def device_uuid(self, device: int) -> str: ...

    def backend(self) -> str: ...

    def torch_version(self) -> str: ...


def normalize_uuid(raw: str) -> str:
    """NVML spells UUIDs "GPU-xxxxxxxx-..."; torch's uuid property omits the prefix."""
    raw = raw.strip()
    return raw if raw.startswith(("GPU-", "MIG-")) else f"GPU-{raw}"


class TorchSource:
    """torch.cuda, looked up in sys.modules only: the probe never imports torch on its own."""

    def __init__(self) -> None:
        self._snapshot_kwargs: dict[str, Any] | None = None

    @staticmethod
    def _cuda() -> Any:
        torch = sys.modules.get("torch")
        cuda = getattr(torch, "cuda", None) if torch is not None else None
        if cuda is None or not hasattr(cuda, "is_initialized"):
            return None  # not imported yet, or still being imported by the main thread
        return cuda

    def ready(self) -> bool:
        cuda = self._cuda()
        return bool(cuda is not None and cuda.is_initialized())

    def device_count(self) -> int:
        return int(self._cuda().device_count())

    def memory_stats(self, device: int) -> Mapping[str, Any]:
        result: Mapping[str, Any] = self._cuda().memory_stats(device)
        return result

    def memory_snapshot(self) -> Sequence[Mapping[str, Any]]:
        cuda = self._cuda()
        if self._snapshot_kwargs is None:
            # include_traces=False (torch >= 2.13) skips stack frames: the "lightweight" snapshot.
            params = inspect.signature(cuda.memory_snapshot).parameters
            self._snapshot_kwargs = {"include_traces": False} if "include_traces" in params else {}
        result: Sequence[Mapping[str, Any]] = cuda.memory_snapshot(**self._snapshot_kwargs)
        return result

    def device_uuid(self, device: int) -> str:
        return normalize_uuid(str(self._cuda().get_device_properties(device).uuid))

    def backend(self) -> str:
        return str(self._cuda().get_allocator_backend())

    def torch_version(self) -> str:
        return str(getattr(sys.modules.get("torch"), "__version__", "unknown"))


def alloc_conf(environ: Mapping[str, str]) -> str:
    """PYTORCH_ALLOC_CONF (torch >= 2.10), else its older alias PYTORCH_CUDA_ALLOC_CONF."""
    return environ.get("PYTORCH_ALLOC_CONF") or environ.get("PYTORCH_CUDA_ALLOC_CONF") or ""


def expandable_from_conf(conf: str) -> bool:
    for item in conf.split(","):
        key, _, value = item.partition(":")
        if key.strip() == "expandable_segments":
            return value.strip().lower() == "true"
    return False


@dataclass(frozen=True)
class ProbeConfig:
    directory: Path
    stats_interval: float = 10.0
    snapshot_interval: float = 60.0  # 0 disables snapshots (no free/largest_free_block)
    snapshot_budget: float = 0.05  # seconds; a slower snapshot doubles the interval
    max_snapshot_interval: float = 1800.0
    ready_poll: float = 1.0  # how often to look for CUDA initialization

    @classmethod
    def from_env(cls, directory: Path, environ: Mapping[str, str]) -> ProbeConfig:
        """INFERWATCH_PROBE_{INTERVAL,SNAPSHOT_INTERVAL,SNAPSHOT_BUDGET} in seconds."""

        def number(name: str, default: float) -> float:
            raw = environ.get(name, "")
            try:
                value = float(raw) if raw else default
            except ValueError:
                log.warning("inferwatch probe: ignoring %s=%r (not a number)", name, raw)
                return default
            return value if value >= 0 else default

        return cls(
            directory=directory,
            stats_interval=max(0.1, number("INFERWATCH_PROBE_INTERVAL", cls.stats_interval)),
            snapshot_interval=number("INFERWATCH_PROBE_SNAPSHOT_INTERVAL", cls.snapshot_interval),
            snapshot_budget=number("INFERWATCH_PROBE_SNAPSHOT_BUDGET", cls.snapshot_budget),
        )


class _Failed:
    """Marker for a guarded call that raised."""


FAILED = _Failed()


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read()


def process_identity() -> dict[str, Any]:
    """pid, start time and pid namespace: what the exporter needs to find this process."""
    identity: dict[str, Any] = {"pid": os.getpid(), "start_time_ticks": None}
    identity["start_time_seconds"] = None
    try:
        ticks = files.proc_start_ticks(_read("/proc/self/stat"))
        identity["start_time_ticks"] = ticks
        btime = next(
            int(line.split()[1])
            for line in _read("/proc/stat").splitlines()
            if line.startswith("btime ")
        )
        if ticks is not None:
            identity["start_time_seconds"] = btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    try:
        identity["pid_namespace"] = os.readlink("/proc/self/ns/pid")
    except OSError:
        identity["pid_namespace"] = None
    return identity


def kubernetes_identity(environ: Mapping[str, str]) -> dict[str, str] | None:
    """Namespace and pod as the pod sees itself: a fallback when the exporter has no hostPID."""
    if "KUBERNETES_SERVICE_HOST" not in environ:
        return None
    namespace = environ.get("POD_NAMESPACE", "")
    if not namespace:
        try:
            namespace = _read("/var/run/secrets/kubernetes.io/serviceaccount/namespace").strip()
        except OSError:
            namespace = ""
    return {"namespace": namespace, "pod": environ.get("POD_NAME") or socket.gethostname()}


class Probe:
    """One per process: `start()` runs the daemon thread; `stop()` ends it, removes the file."""

    def __init__(
        self,
        config: ProbeConfig,
        source: StatsSource | None = None,
        *,
        clock: Callable[[], float] = time.time,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.source: StatsSource = source if source is not None else TorchSource()
        self._clock = clock
        self._environ = os.environ if environ is None else environ
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing: set[str] = set()
        self._identity = process_identity()
        self.path = config.directory / files.file_name(socket.gethostname(), os.getpid())
        self.snapshot_interval = config.snapshot_interval
        self._next_snapshot = 0.0
        self._snapshots: dict[int, dict[str, dict[str, int]]] = {}
        self._snapshot_taken_at: float | None = None
        self._snapshot_expandable = False
        self._uuids: dict[int, str] = {}
        self._static: dict[str, Any] | None = None
        self.stats_seconds: float | None = None
        self.snapshot_seconds: float | None = None
        self.writes = 0

    # -- thread control -------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="inferwatch-probe", daemon=True)
        self._thread.start()

    def stop(self, *, remove_file: bool = True) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if remove_file:
            with contextlib.suppress(OSError):
                self.path.unlink()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        wait = 0.0
        while not self._stop.wait(wait):
            try:
                wrote = self.tick()
            except Exception as exc:
                self._failed("probe round", exc)
                wrote = False
            wait = self.config.stats_interval if wrote else self.config.ready_poll

    # -- one round ------------------------------------------------------------------------

    def _failed(self, what: str, exc: BaseException) -> None:
        if what not in self._failing:
            self._failing.add(what)
            log.warning("inferwatch probe: %s failed (logged once, retrying): %s", what, exc)

    def _call(self, what: str, fn: Callable[..., T], *args: Any) -> T | _Failed:
        try:
            result = fn(*args)
        except Exception as exc:
            self._failed(what, exc)
            return FAILED
        if what in self._failing:
            self._failing.discard(what)
            log.info("inferwatch probe: %s works again", what)
        return result

    def tick(self) -> bool:
        """One round: read stats (and a snapshot when due), write the file. False = not ready."""
        ready = self._call("torch.cuda.is_initialized", self.source.ready)
        if ready is not True:
            return False
        count = self._call("torch.cuda.device_count", self.source.device_count)
        if isinstance(count, _Failed):
            return False
        started = time.perf_counter()
        devices: dict[int, dict[str, int]] = {}
        for index in range(count):
            stats = self._call("torch.cuda.memory_stats", self.source.memory_stats, index)
            if not isinstance(stats, _Failed) and formulas.device_in_use(stats):
                devices[index] = formulas.stats_subset(stats)
        self.stats_seconds = time.perf_counter() - started
        if not devices:
            return False
        now = self._clock()
        if self.config.snapshot_interval > 0 and now >= self._next_snapshot:
            self._take_snapshot(list(devices))
            self._next_snapshot = now + self.snapshot_interval
        self._write(devices, now)
        return True

    def _take_snapshot(self, devices: list[int]) -> None:
        started = time.perf_counter()
        segments = self._call("torch.cuda.memory_snapshot", self.source.memory_snapshot)
        elapsed = time.perf_counter() - started
        if isinstance(segments, _Failed):
            return
        self.snapshot_seconds = elapsed
        self._adapt_snapshot_interval(elapsed)
        self._snapshots = {i: formulas.snapshot_groups(segments, i) for i in devices}
        self._snapshot_expandable = formulas.expandable_in_snapshot(segments)
        self._snapshot_taken_at = self._clock()

    def _adapt_snapshot_interval(self, elapsed: float) -> None:
        """Slow snapshot (allocator mutex + GIL held): back off; fast again: return towards base."""
        base, cap = self.config.snapshot_interval, self.config.max_snapshot_interval
        if elapsed > self.config.snapshot_budget:
            new = min(cap, max(base, self.snapshot_interval * 2))
            if new != self.snapshot_interval:
                log.info(
                    "inferwatch probe: memory_snapshot took %.1f ms; next in %.0f s",
                    elapsed * 1000,
                    new,
                )
            self.snapshot_interval = new
        else:
            self.snapshot_interval = max(base, self.snapshot_interval / 2)

    def _static_fields(self) -> dict[str, Any]:
        """What does not change while the process lives: read once (retried until it works)."""
        if self._static is None:
            backend = self._call("torch.cuda.get_allocator_backend", self.source.backend)
            version = self._call("torch.__version__", self.source.torch_version)
            if isinstance(backend, _Failed) or isinstance(version, _Failed):
                return {"backend": "unknown", "torch_version": "unknown"}
            self._static = {"backend": backend, "torch_version": version}
        return self._static

    def _uuid(self, index: int) -> str | None:
        if index not in self._uuids:
            uuid = self._call("torch.cuda.get_device_properties", self.source.device_uuid, index)
            if isinstance(uuid, _Failed):
                return None
            self._uuids[index] = uuid
        return self._uuids[index]

    def _write(self, devices: dict[int, dict[str, int]], now: float) -> None:
        static = self._static_fields()
        conf = alloc_conf(self._environ)
        entries = []
        for index, stats in devices.items():
            uuid = self._uuid(index)
            if uuid is None:
                continue
            groups = self._snapshots.get(index)
            snapshot = (
                {"taken_at": self._snapshot_taken_at, "groups": groups}
                if groups is not None
                else None
            )
            entries.append({"index": index, "uuid": uuid, "stats": stats, "snapshot": snapshot})
        document: dict[str, Any] = {
            "format": files.FORMAT,
            **self._identity,
            "hostname": socket.gethostname(),
            "kubernetes": kubernetes_identity(self._environ),
            "written_at": now,
            "torch_version": static["torch_version"],
            "allocator": {
                "backend": static["backend"],
                "expandable_segments": expandable_from_conf(conf) or self._snapshot_expandable,
                "alloc_conf": conf,
            },
            "cost": {
                "stats_seconds": self.stats_seconds,
                "snapshot_seconds": self.snapshot_seconds,
                "stats_interval_seconds": self.config.stats_interval,
                "snapshot_interval_seconds": self.snapshot_interval,
            },
            "devices": entries,
        }
        written = self._call(f"writing {self.path}", self._write_document, document)
        if written is True:
            self.writes += 1

    def _write_document(self, document: dict[str, Any]) -> bool:
        self.config.directory.mkdir(parents=True, exist_ok=True)
        files.write_atomic(self.path, document)
        return True
