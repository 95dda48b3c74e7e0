"""The probe file: one JSON document per process, replaced atomically, read by the exporter.

Format (version 1; the exporter ignores unknown keys, so new fields can be added freely):

    {"format": "inferwatch-probe/1", "pid": 4242, "start_time_ticks": 123456,
     "start_time_seconds": 1718000000.5, "pid_namespace": "pid:[4026531836]",
     "hostname": "vllm-0", "kubernetes": {"namespace": "llm", "pod": "vllm-0"} | null,
     "written_at": 1718000100.0, "torch_version": "2.13.0+cu128",
     "allocator": {"backend": "native", "expandable_segments": false, "alloc_conf": "..."},
     "cost": {"stats_seconds": 0.0002, "snapshot_seconds": 0.004,
              "stats_interval_seconds": 10, "snapshot_interval_seconds": 60},
     "devices": [{"index": 0, "uuid": "GPU-...", "stats": {<memory_stats() subset>},
                  "snapshot": {"taken_at": 1718000090.0, "groups": {<snapshot_groups()>}} | null}]}

`pid` and `start_time_ticks` (field 22 of /proc/<pid>/stat) are as the process sees them; the
exporter maps them to a host pid through NVML's pids and /proc/<pid>/status NSpid.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

FORMAT = "inferwatch-probe/1"
# Where the Helm chart mounts the shared hostPath (probe and exporter alike).
DEFAULT_PROBE_DIR = "/run/inferwatch/probe"
SUFFIX = ".json"
TEMP_PREFIX = "."  # half-written files start with a dot; readers skip them


def file_name(hostname: str, pid: int) -> str:
    """Unique per node: pids repeat across pods (each has its own pid 1), hostnames do not."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in hostname)[:100] or "host"
    return f"{safe}-{pid}{SUFFIX}"


def write_atomic(path: Path, document: dict[str, Any]) -> None:
    """Write to a temp file in the same directory, then rename over the target."""
    data = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX + path.name + ".")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def proc_start_ticks(stat_text: str) -> int | None:
    """Field 22 (starttime, clock ticks after boot) of a /proc/<pid>/stat line."""
    # comm (field 2) may contain spaces and parentheses; the fields after the last ')' are fixed.
    _, _, rest = stat_text.rpartition(")")
    fields = rest.split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def ns_pid(status_text: str) -> int | None:
    """The innermost pid from a /proc/<pid>/status NSpid line (the pid the process sees)."""
    for line in status_text.splitlines():
        if line.startswith("NSpid:"):
            parts = line.split()[1:]
            try:
                return int(parts[-1])
            except (IndexError, ValueError):
                return None
    return None
