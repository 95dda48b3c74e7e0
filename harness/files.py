"""File_sd files: one atomic writer (a reader such as Prometheus or the exporter never sees half
a file) and one reader."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_atomic(path: Path, text: str, mode: int | None = None) -> Path:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)
    return path


def read_file_sd(path: Path) -> list[tuple[str, dict[str, str]]]:
    """(target, labels) pairs of a Prometheus file_sd JSON file; [] while it is absent or bad."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    out = []
    for entry in entries if isinstance(entries, list) else []:
        for target in entry.get("targets", []):
            out.append((str(target), {str(k): str(v) for k, v in entry.get("labels", {}).items()}))
    return out
