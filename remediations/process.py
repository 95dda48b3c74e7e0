"""Child processes that lead their own process group, and how they are stopped.

The one process-group manager: the remediator's local backend runs engine replicas with it,
and the test/demo/bench harness (`harness.services.ManagedProcess`) runs Prometheus,
Alertmanager, llama-server and our own services with it. It lives in the installed remediator
package, not the exporter or the harness, because the local backend is its installed user (the
harness is not installed and so cannot be imported by installed code; the exporter starts no
processes).

Each child starts a new session, so one signal to its group reaches everything it started.
A stop sends SIGCONT first (a SIGSTOPped process, e.g. a hung-replica drill or a debugger,
would otherwise keep SIGTERM pending until the bound and then get SIGKILL), then SIGTERM, and
SIGKILL once the bound has passed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger("remediations.process")

POLL_S = 0.05
# SIGKILL takes effect at once; this only bounds the wait for the kernel to report it.
KILL_WAIT_S = 5.0


def spawn_group(
    argv: Sequence[str],
    log_path: Path,
    env: Mapping[str, str],
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` (never a shell) leading a new process group, stdout and stderr appended to
    `log_path`. Plain Popen (vfork + exec, no child-watcher thread): it returns at exec, so an
    event loop calling it is not stalled; exit is observed with poll()."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Signal a process group; a group that is gone is a no-op, one we may not signal is
    logged (never raised: a stop must go on to the next group)."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        log.error("cannot signal process group %d: %s", pgid, exc)


def start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/<pid>/stat), None once it is gone; a reused
    pid has another start time. A zombie (exited, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may contain spaces and ")"; fields after it are fixed.
    fields = stat.rpartition(")")[2].split()
    if not fields or fields[0] == "Z":
        return None
    return fields[19]


def terminate_group(proc: subprocess.Popen[bytes]) -> bool:
    """SIGCONT + SIGTERM to the child's group; False when the child has already exited."""
    if proc.poll() is not None:
        return False
    signal_group(proc.pid, signal.SIGCONT)
    signal_group(proc.pid, signal.SIGTERM)
    return True


async def _exited(proc: subprocess.Popen[bytes], limit_s: float) -> bool:
    deadline = time.monotonic() + limit_s
    while proc.poll() is None:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(POLL_S)
    return True


async def stop_group(proc: subprocess.Popen[bytes], limit_s: float) -> None:
    """Stop the child's group without blocking the event loop: SIGCONT + SIGTERM, SIGKILL
    after `limit_s`, then wait (bounded) until the child is reaped."""
    if not terminate_group(proc):
        return
    if not await _exited(proc, limit_s):
        signal_group(proc.pid, signal.SIGKILL)
        await _exited(proc, KILL_WAIT_S)


def stop_group_sync(proc: subprocess.Popen[bytes], limit_s: float) -> None:
    """`stop_group` for code without an event loop."""
    if not terminate_group(proc):
        return
    try:
        proc.wait(limit_s)
    except subprocess.TimeoutExpired:
        signal_group(proc.pid, signal.SIGKILL)
        proc.wait(KILL_WAIT_S)


async def stop_recorded_groups(groups: Sequence[tuple[int, str]], limit_s: float) -> None:
    """Stop process groups this process did not start (a killed run's, recorded as (pgid,
    start time)): the same SIGCONT + SIGTERM, SIGKILL after `limit_s`. A group whose leader has
    another start time is a reused pid and is not touched."""
    left = [(pgid, started) for pgid, started in groups if pgid > 1 and start_time(pgid) == started]
    for pgid, _ in left:
        signal_group(pgid, signal.SIGCONT)
        signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + limit_s
    while left and time.monotonic() < deadline:
        left = [(pgid, started) for pgid, started in left if start_time(pgid) == started]
        await asyncio.sleep(POLL_S)
    for pgid, _ in left:
        signal_group(pgid, signal.SIGKILL)
