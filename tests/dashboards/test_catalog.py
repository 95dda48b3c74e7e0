"""The maintained catalog matches what the exporter really publishes (simulated GPUs)."""

from __future__ import annotations

import re
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from harness.services import LOOPBACK, ManagedProcess, free_port
from tests.support.catalog import ALWAYS_PUBLISHED, PUBLISHED

# Families the simulated exporter publishes without engine targets or a remediator.
SIMULATED_PREFIXES = ("inferwatch_gpu_", "inferwatch_cuda_allocator_", "inferwatch_exporter_")
NAME = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", re.M)


def scrape_until(url: str, expected: set[str], timeout: float = 20.0) -> set[str]:
    """Series names at url, once every expected name is there or at the timeout.

    Collectors run asynchronously and some series appear only after an event (the simulated
    GPU's initial Xid is read from NVML's event queue), so one early scrape is not enough.
    """
    deadline = time.monotonic() + timeout
    names: set[str] = set()
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=2) as resp:
            text = resp.read().decode()
        names = {m for m in NAME.findall(text) if not m.endswith("_created")}
        if expected <= names:
            return names
        time.sleep(0.5)
    return names


@pytest.mark.integration
def test_catalog_matches_the_simulated_exporter(tmp_path: Path) -> None:
    expected = {n for n in ALWAYS_PUBLISHED if n.startswith(SIMULATED_PREFIXES)}
    port = free_port()
    argv = [sys.executable, "-m", "exporter", "--simulate", "default",
            "--listen", f"{LOOPBACK}:{port}"]  # fmt: skip
    with ManagedProcess(
        "exporter", argv, tmp_path / "exporter.log", ready_url=f"http://{LOOPBACK}:{port}/metrics"
    ):
        names = scrape_until(f"http://{LOOPBACK}:{port}/metrics", expected)
    published = {n for n in names if n.startswith(SIMULATED_PREFIXES)}
    assert published - PUBLISHED == set(), "exported but not declared by the exporter"
    assert expected - published == set(), "in the catalog but not exported"
