"""Engine targets from config and from Prometheus file_sd files (re-read when they change)."""

from __future__ import annotations

import logging
import os
import stat
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from exporter.engines.registry import ENGINES
from exporter.engines.settings import CanarySettings, TargetSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """One engine endpoint to scrape; `name` is its `target` label and identity."""

    name: str
    base_url: str
    metrics_url: str
    engine: str = "auto"
    model: str | None = None
    health_url: str | None = None
    info_url: str | None = None
    canary: CanarySettings | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    """Extra identity labels on every series (namespace, pod in Kubernetes)."""

    def health_for(self, engine: str) -> str:
        if self.health_url:
            return self.health_url
        path = ENGINES[engine].health_path if engine in ENGINES else "/health"
        return self.base_url + path

    def info_for(self, engine: str) -> str | None:
        if self.info_url:
            return self.info_url
        path = ENGINES[engine].info_path if engine in ENGINES else None
        return self.base_url + path if path else None


def target_from_settings(settings: TargetSettings) -> Target:
    parts = urllib.parse.urlsplit(settings.url)
    base = f"{parts.scheme}://{parts.netloc}"
    has_path = parts.path not in ("", "/")
    metrics = settings.url if has_path else base + "/metrics"
    return Target(
        name=settings.name or parts.netloc,
        base_url=base,
        metrics_url=metrics,
        engine=settings.engine,
        model=settings.model,
        health_url=settings.health_url,
        info_url=settings.info_url,
        canary=settings.canary,
    )


def targets_from_file_sd(data: Any) -> list[Target]:
    """Prometheus file_sd: `[{"targets": ["host:port"], "labels": {...}}]`.

    Labels used: `engine`, `model`, `__scheme__`, `__metrics_path__`; others are ignored.
    Raises ValueError naming the first bad entry.
    """
    if not isinstance(data, list):
        raise ValueError("top level must be a list of target groups")
    found: list[Target] = []
    for index, group in enumerate(data):
        where = f"target group [{index}]"
        if not isinstance(group, dict) or not isinstance(group.get("targets"), list):
            raise ValueError(f"{where}: needs a 'targets' list")
        labels = group.get("labels") or {}
        if not isinstance(labels, dict):
            raise ValueError(f"{where}: 'labels' must be a mapping")
        engine = str(labels.get("engine", "auto"))
        if engine != "auto" and engine not in ENGINES:
            raise ValueError(f"{where}: unknown engine {engine!r}")
        scheme = str(labels.get("__scheme__", "http"))
        if scheme not in ("http", "https"):
            raise ValueError(f"{where}: __scheme__ {scheme!r} is not http or https")
        path = str(labels.get("__metrics_path__", "/metrics"))
        if not path.startswith("/"):
            raise ValueError(f"{where}: __metrics_path__ {path!r} must start with '/'")
        model = labels.get("model")
        for address in group["targets"]:
            host_port = str(address)
            if not host_port or "/" in host_port or host_port.startswith(":"):
                raise ValueError(f"{where}: target {host_port!r} is not host:port")
            base = f"{scheme}://{host_port}"
            found.append(
                Target(
                    name=host_port,
                    base_url=base,
                    metrics_url=base + path,
                    engine=engine,
                    model=str(model) if model else None,
                )
            )
    return found


def read_text_bounded(path: str, limit: int) -> str:
    """UTF-8 text of a regular file of at most `limit` bytes (a FIFO or device raises)."""
    with open(path, "rb", opener=_nonblocking) as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise ValueError("not a regular file")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes")
    return data.decode("utf-8")


def _nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)


@dataclass
class _Watched:
    stamp: tuple[int, int, int] | None = None
    targets: list[Target] = field(default_factory=list)
    error: str | None = None


MAX_FILE_BYTES = 4 * 1024 * 1024
"""A file_sd file listing thousands of targets is well under this."""


class FileSD:
    """Re-reads each file when its mtime, size or inode changes; a bad edit keeps the last list.

    An empty file (0 bytes or only whitespace) is what an in-place rewrite (`>` redirection, an
    editor's truncate-then-write) shows for an instant, so it also keeps the last list: every
    engine series vanishing for a few seconds is worse than a moment's delay. To remove all
    targets, write an empty list (`[]`).
    """

    def __init__(self, paths: Sequence[str]) -> None:
        self._files = {path: _Watched() for path in paths}

    def targets(self) -> list[Target]:
        found: list[Target] = []
        for path, watched in self._files.items():
            self._refresh(path, watched)
            found.extend(watched.targets)
        return found

    def _refresh(self, path: str, watched: _Watched) -> None:
        try:
            st = os.stat(path)
        except OSError as exc:
            self._fail(path, watched, f"cannot read: {exc.strerror or exc}", keep=False)
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == watched.stamp:
            return
        watched.stamp = stamp
        try:
            text = read_text_bounded(path, MAX_FILE_BYTES)
            if not text.strip():
                raise ValueError("file is empty (a rewrite in progress?); write [] for no targets")
            data = yaml.safe_load(text)  # None: only comments, an intended empty list
            targets = targets_from_file_sd([] if data is None else data)
        except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError) as exc:
            self._fail(path, watched, str(exc).splitlines()[0], keep=True)
            return
        if watched.error or watched.targets != targets:
            log.info("file_sd %s: %d targets", path, len(targets))
        watched.targets = targets
        watched.error = None

    @staticmethod
    def _fail(path: str, watched: _Watched, error: str, *, keep: bool) -> None:
        if watched.error != error:
            kept = f", keeping {len(watched.targets)} targets" if keep else ""
            log.warning("file_sd %s: %s%s", path, error, kept)
        watched.error = error
        if not keep:
            watched.targets = []
            watched.stamp = None
