"""Starting the probe once per process, from the environment (plugins and .pth hook)."""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path

from exporter.probe.files import DEFAULT_PROBE_DIR
from exporter.probe.probe import Probe, ProbeConfig, StatsSource

log = logging.getLogger("inferwatch.probe")

_lock = threading.Lock()
_probe: Probe | None = None
_config: ProbeConfig | None = None


def probe_dir_from_env(environ: Mapping[str, str]) -> Path | None:
    """INFERWATCH_PROBE_DIR, else the default directory if it was mounted; None = stay off."""
    if environ.get("INFERWATCH_PROBE_DISABLED", "").lower() in ("1", "true", "yes"):
        return None
    configured = environ.get("INFERWATCH_PROBE_DIR", "")
    if configured:
        return Path(configured)
    return Path(DEFAULT_PROBE_DIR) if os.path.isdir(DEFAULT_PROBE_DIR) else None


def start(config: ProbeConfig, source: StatsSource | None = None) -> Probe:
    """Start this process's probe once; later calls return the running one."""
    global _probe, _config
    with _lock:
        if _probe is None or not _probe.running:
            _probe = Probe(config, source)
            _config = config
            _probe.start()
            log.debug("inferwatch probe started, writing %s", _probe.path)
        return _probe


def start_from_env(environ: Mapping[str, str] | None = None) -> Probe | None:
    """What the plugins and the .pth hook call: start if a probe directory is configured."""
    environ = os.environ if environ is None else environ
    directory = probe_dir_from_env(environ)
    if directory is None:
        return None
    return start(ProbeConfig.from_env(directory, environ))


def _stop_at_exit() -> None:
    if _probe is not None:
        _probe.stop()


def _restart_in_child() -> None:
    """A forked child has no probe thread (and its own pid): start a fresh probe there."""
    global _probe
    if _config is not None:
        _probe = None
        start(_config)


atexit.register(_stop_at_exit)
os.register_at_fork(after_in_child=_restart_in_child)
