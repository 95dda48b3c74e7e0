"""The probe inside a real (CPU-only) PyTorch: it idles, never initializes CUDA, never crashes.

Needs a CPU build of torch, which `./run setup` installs (or stops, saying how to get one: PyPI's
Linux x86_64 torch is the multi-GB CUDA build). Without it these tests skip, and the suite fails
on that skip (tests/conftest.py).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.probe.probe import Probe, ProbeConfig, TorchSource

torch = pytest.importorskip("torch")

CHILD = """
import json, site, sys, threading, time
site.addsitedir(sys.argv[1])  # processes the .pth like site-packages at start-up
started = "exporter.probe.runtime" in sys.modules
import torch
torch.ones(4).sum()  # the server does some CPU work
time.sleep(float(sys.argv[2]))  # probe rounds (it looks once a second)
print(json.dumps({
    "hook_loaded": started,
    "thread": any(t.name == "inferwatch-probe" for t in threading.enumerate()),
    "cuda_initialized": torch.cuda.is_initialized(),
}))
"""


def run_child(tmp_path: Path, env_extra: dict[str, str], wait: float) -> dict[str, bool]:
    site_dir = tmp_path / "site"
    site_dir.mkdir(exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "exporter.probe", "install-pth", "--target", str(site_dir)],
        check=True,
        capture_output=True,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERWATCH_")}
    env.update(env_extra, PYTHONPATH=str(Path.cwd()))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(site_dir), str(wait)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    result: dict[str, bool] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_pth_hook_idles_without_cuda_and_writes_nothing(tmp_path: Path) -> None:
    probe_dir = tmp_path / "probes"
    result = run_child(tmp_path, {"INFERWATCH_PROBE_DIR": str(probe_dir)}, wait=2.5)
    assert result == {"hook_loaded": True, "thread": True, "cuda_initialized": False}
    assert not probe_dir.exists() or not any(probe_dir.iterdir())


def test_pth_hook_does_nothing_without_the_switch(tmp_path: Path) -> None:
    result = run_child(tmp_path, {}, wait=0)
    assert result == {"hook_loaded": False, "thread": False, "cuda_initialized": False}


def test_torch_calls_failing_on_a_cpu_build_are_guarded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    source = TorchSource()
    assert source.ready() is False  # the real check, on a build without CUDA
    # Pretend the server initialized CUDA: the CPU build's allocator calls then raise.
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda.memory, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    probe = Probe(ProbeConfig(directory=tmp_path), source, environ={})
    with caplog.at_level(logging.WARNING, logger="inferwatch.probe"):
        for _ in range(3):
            assert probe.tick() is False
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "memory_stats" in messages[0]  # logged once, not per round
    assert list(tmp_path.iterdir()) == []
    assert source.torch_version() == torch.__version__
