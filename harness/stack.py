"""One loopback stack builder: real components on 127.0.0.1, each on a free port, with their
config files in one work directory, started in order and stopped in reverse.

The demo's stack (demo/stack.py) and the dashboard previews (dashboards/live_preview.py) are
both built from this; `stop_all` is the last line of defence on Ctrl-C or a crash.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from harness import services
from harness.files import write_atomic
from harness.services import LOOPBACK, ManagedProcess

log = logging.getLogger(__name__)

_ACTIVE: list[LoopbackStack] = []  # stacks started and not yet stopped


def stop_all() -> None:
    """Stop every stack still running."""
    for stack in list(_ACTIVE):
        stack.stop()


def scrape_job(
    name: str, targets: Sequence[str], labels: dict[str, str] | None = None, **extra: Any
) -> dict[str, Any]:
    """One static scrape_configs entry (`extra`: honor_labels, metrics_path, ...)."""
    static: dict[str, Any] = {"targets": list(targets)}
    if labels:
        static["labels"] = labels
    return {"job_name": name, **extra, "static_configs": [static]}


class LoopbackStack:
    """The processes of one run and the ports and files they use."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ports: dict[str, int] = {}
        self.processes: list[ManagedProcess] = []

    # -- ports, URLs and files ---------------------------------------------------------------
    def port(self, name: str) -> int:
        """The port of component `name`, chosen free on first use."""
        if name not in self.ports:
            self.ports[name] = services.free_port()
        return self.ports[name]

    def address(self, name: str) -> str:
        return f"{LOOPBACK}:{self.port(name)}"

    def url(self, name: str) -> str:
        return f"http://{self.address(name)}"

    def write(
        self, name: str, content: str | dict[str, Any] | list[Any], mode: int = 0o644
    ) -> Path:
        """A file in the work directory (YAML for a document), written atomically."""
        text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
        return write_atomic(self.workdir / name, text, mode)

    def prometheus_config(
        self,
        jobs: Sequence[dict[str, Any]],
        rule_files: Sequence[Path] = (),
        *,
        interval: float = 1.0,
        alertmanager: str | None = None,
    ) -> Path:
        """prometheus.yml: scrape and evaluate every `interval` s, alerts to `alertmanager`."""
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": f"{interval:g}s",
                "scrape_timeout": f"{interval:g}s",
                "evaluation_interval": f"{interval:g}s",
            },
            "rule_files": [str(p) for p in rule_files],
        }
        if alertmanager is not None:
            config["alerting"] = {
                "alertmanagers": [{"static_configs": [{"targets": [self.address(alertmanager)]}]}]
            }
        config["scrape_configs"] = list(jobs)
        return self.write("prometheus.yml", config)

    # -- processes -----------------------------------------------------------------------------
    def process(self, name: str) -> ManagedProcess | None:
        return next((p for p in self.processes if p.name == name), None)

    def _adopt(self, proc: ManagedProcess) -> None:
        if self not in _ACTIVE:
            _ACTIVE.append(self)
        self.processes.append(proc)

    def start_process(self, proc: ManagedProcess, timeout: float = 60.0) -> ManagedProcess:
        """Start `proc` (blocking until ready); it is stopped with the stack."""
        self._adopt(proc)
        return proc.start(ready_timeout=timeout)

    async def start_process_async(
        self, proc: ManagedProcess, limit_s: float = 60.0
    ) -> ManagedProcess:
        """`start_process` without blocking the event loop."""
        self._adopt(proc)
        return await proc.start_async(ready_timeout=limit_s)

    def prometheus_process(self) -> ManagedProcess:
        """Prometheus with the work directory's prometheus.yml (see `prometheus_config`)."""
        config = self.workdir / "prometheus.yml"
        return services.prometheus(config, self.workdir, self.port("prometheus"))

    def stop(self) -> None:
        """Stop in reverse start order; a process that fails to stop does not keep others up."""
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        for proc in reversed(self.processes):
            try:
                proc.stop(timeout=10)
            except Exception:
                log.exception("could not stop %s", proc.name)

    async def stop_async(self) -> None:
        """`stop` without blocking the event loop."""
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        for proc in reversed(self.processes):
            try:
                await proc.stop_async(10)
            except Exception:
                log.exception("could not stop %s", proc.name)

    @contextlib.contextmanager
    def stopped_at_exit(self) -> Iterator[LoopbackStack]:
        try:
            yield self
        finally:
            self.stop()
