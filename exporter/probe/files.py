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

The probe directory is writable by every inference pod, so the exporter reads it as hostile input:
`read_bounded` never follows a symlink, never blocks on a FIFO or device, and never reads more
than `MAX_FILE_BYTES`; `load_json` refuses deep nesting and non-finite numbers before and while
parsing. Both raise `RejectedFileError`, whose `reason` is the label of the skipped-files counter.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

FORMAT = "inferwatch-probe/1"
# Where the Helm chart mounts the shared hostPath (probe and exporter alike).
DEFAULT_PROBE_DIR = "/run/inferwatch/probe"
SUFFIX = ".json"
TEMP_PREFIX = "."  # half-written files start with a dot; readers skip them

MAX_FILE_BYTES = 1024 * 1024
"""A probe file is a few KiB per GPU; anything larger is no probe file (or a sparse-file attack)."""
MAX_JSON_DEPTH = 16
"""The format nests 6 deep (document, devices, device, snapshot, groups, group)."""
MAX_COUNT = 2**63 - 1
"""Byte and event counts are int64 in PyTorch (and exactly representable up to 2**53 as floats)."""

REJECT_REASONS = ("not_regular", "too_large", "unreadable", "invalid", "duplicate")


class RejectedFileError(ValueError):
    """A probe file that is skipped; `reason` is one of REJECT_REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_bounded(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file, at most `limit`; never follows a symlink or blocks.

    O_NOFOLLOW refuses a symlink (to /dev/zero, to another pod's file); O_NONBLOCK makes opening a
    FIFO return at once; fstat on the opened descriptor (not the name, which can be swapped)
    rejects anything but a regular file before a byte is read; the size check stops a sparse file.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise  # removed since it was listed: nothing to report
    except OSError as exc:
        if os.path.islink(path):
            raise RejectedFileError("not_regular", "is a symlink (not followed)") from None
        raise RejectedFileError("unreadable", f"cannot open: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RejectedFileError("not_regular", "is not a regular file (FIFO, device, socket)")
        if st.st_size > limit:
            raise RejectedFileError("too_large", f"is {st.st_size} bytes, over {limit}")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:  # a file growing while read still stops at limit + 1 bytes
            chunk = os.read(fd, min(64 * 1024, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise RejectedFileError("too_large", f"grew over {limit} bytes while read")
        return b"".join(chunks)
    except OSError as exc:
        raise RejectedFileError("unreadable", f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def json_depth(data: bytes | bytearray) -> int:
    """Deepest nesting of arrays and objects (brackets inside strings do not count)."""
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]!r} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a probe writes")


def load_json(data: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse a probe document; RejectedFileError("invalid") for deep nesting, NaN, Infinity,
    1e999 and anything json rejects (the C parser would raise RecursionError when nested deep)."""
    depth = json_depth(data)
    if depth > max_depth:
        raise RejectedFileError("invalid", f"JSON nested {depth} deep (at most {max_depth})")
    try:
        return json.loads(data, parse_float=_finite_float, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError included
        raise RejectedFileError("invalid", f"not valid JSON: {exc}") from None


def count_value(value: Any, what: str) -> int | None:
    """A byte or event count: a JSON integer in 0..MAX_COUNT; None for what is no integer (an
    unknown field); RejectedFileError for a negative or oversized one."""
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    if not 0 <= value <= MAX_COUNT:
        shown = (
            str(value)
            if abs(value) < 10**30
            else f"{str(value)[:12]}... ({len(str(value))} digits)"
        )
        raise RejectedFileError("invalid", f"{what} = {shown} is not a count in 0..2**63-1")
    return value


def timestamp_value(value: Any, what: str) -> float:
    """A Unix time in seconds: finite and positive (never +Inf, which would pass every guard)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise RejectedFileError("invalid", f"{what} is missing or not a number")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise RejectedFileError("invalid", f"{what} = {number} is not a Unix time")
    return number


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
