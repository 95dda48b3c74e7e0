"""Which Kubernetes pod a host process belongs to, from files only (no API server, no RBAC).

`<proc_root>/<pid>/cgroup` names the pod UID and the container ID (cgroup v1 or v2, cgroupfs or
systemd driver, containerd / CRI-O / Docker). The kubelet's log directories on the same host name
them: `/var/log/containers/<pod>_<namespace>_<container>-<container id>.log` and
`/var/log/pods/<namespace>_<pod>_<uid>/`. The log root defaults to `var/log` next to
`proc_root` (so a host mounted at `/host` gives `/host/proc` and `/host/var/log`).

NVML reports host PIDs, so the exporter needs the host's /proc (hostPID, or host /proc mounted at
proc_root). Results are cached per (pid, process start time), so a recycled PID is re-read;
entries not asked for in `forget_after_seconds` are pruned, and the container index holds only
what the last listing of the log directory showed. One resolver serves every collector
(thread-safe), so the gpu and cuda_allocator collectors name a process the same way.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_POD_UID = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
)
_CONTAINER_ID = re.compile(
    r"(?:cri-containerd-|crio-|docker-|containerd-)?([0-9a-f]{64})(?:\.scope)?$"
)


@dataclass(frozen=True)
class PodRef:
    """A container in a pod. `container` is empty when only the pod could be named."""

    namespace: str
    pod: str
    container: str


def parse_cgroup(text: str) -> tuple[str, str | None] | None:
    """(pod UID, container ID or None) from a /proc/<pid>/cgroup file; None outside a pod."""
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        match = _POD_UID.search(path)
        if match:
            container = _CONTAINER_ID.search(path.rstrip("/"))
            return match.group(1).replace("_", "-"), container.group(1) if container else None
    return None


def start_time(stat_text: str) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), parsed after the `comm` field."""
    _, sep, rest = stat_text.rpartition(")")
    fields = rest.split()
    if not sep or len(fields) < 20:
        return None
    try:
        return int(fields[19])
    except ValueError:
        return None


class PodResolver:
    """pid -> PodRef | None; cheap to call every refresh (one small /proc read per known pid)."""

    def __init__(
        self,
        proc_root: str | Path = "/proc",
        log_root: str | Path | None = None,
        forget_after_seconds: float = 60.0,
    ) -> None:
        self.proc_root = Path(proc_root)
        self.log_root = Path(log_root) if log_root else self.proc_root.parent / "var" / "log"
        self.forget_after_seconds = forget_after_seconds
        self._lock = threading.Lock()
        self._by_pid: dict[int, tuple[int, PodRef | None]] = {}
        self._asked: dict[int, float] = {}  # pid -> when a collector last asked
        self._by_container: dict[str, PodRef] = {}

    def resolve(self, pids: Iterable[int]) -> dict[int, PodRef | None]:
        """Pods of these processes (blocking file reads: call from a worker thread)."""
        with self._lock:
            now = time.monotonic()
            result = {}
            for pid in pids:
                self._asked[pid] = now
                result[pid] = self._for_pid(pid)
            self._prune(now)
            return result

    def for_pid(self, pid: int) -> PodRef | None:
        """The pod of a running process, or None (not in a pod, gone, or unreadable)."""
        return self.resolve([pid])[pid]

    def __len__(self) -> int:
        return len(self._by_pid)

    def _prune(self, now: float) -> None:
        old = [p for p, at in self._asked.items() if now - at > self.forget_after_seconds]
        for pid in old:
            del self._asked[pid]
            self._by_pid.pop(pid, None)

    def _for_pid(self, pid: int) -> PodRef | None:
        try:
            started = start_time((self.proc_root / str(pid) / "stat").read_text())
        except OSError:
            self._by_pid.pop(pid, None)
            return None
        cached = self._by_pid.get(pid)
        if cached is not None and started is not None and cached[0] == started:
            return cached[1]
        try:
            parsed = parse_cgroup((self.proc_root / str(pid) / "cgroup").read_text())
        except OSError:
            return None
        ref = self._name(*parsed) if parsed else None
        if started is not None:
            self._by_pid[pid] = (started, ref)
        return ref

    def _name(self, uid: str, container_id: str | None) -> PodRef:
        if container_id:
            ref = self._by_container.get(container_id) or self._from_container_logs(container_id)
            if ref is not None:
                return ref
        pod_dir = self._from_pod_logs(uid)
        if pod_dir is not None:
            return pod_dir
        # The kubelet's log directories are not mounted: the pod UID is all there is to show.
        log.debug("pod %s: no kubelet log directory under %s", uid, self.log_root)
        return PodRef("", uid, "")

    def _from_container_logs(self, container_id: str) -> PodRef | None:
        """Index every container log name once per miss, so N new processes cost one listing."""
        try:
            names = [p.name for p in (self.log_root / "containers").iterdir()]
        except OSError:
            return None
        index: dict[str, PodRef] = {}
        for name in names:
            stem, _, last = name.removesuffix(".log").rpartition("-")
            parts = stem.split("_")
            if len(last) == 64 and len(parts) == 3:  # names never contain "_"
                index[last] = PodRef(parts[1], parts[0], parts[2])
        self._by_container = index  # what is listed now: deleted containers drop out
        return index.get(container_id)

    def _from_pod_logs(self, uid: str) -> PodRef | None:
        try:
            dirs = [p.name for p in (self.log_root / "pods").iterdir()]
        except OSError:
            return None
        for name in dirs:
            parts = name.split("_")
            if len(parts) == 3 and parts[2] == uid:
                return PodRef(namespace=parts[0], pod=parts[1], container="")
        return None
