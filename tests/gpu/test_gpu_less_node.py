"""A CPU node (no NVIDIA driver, no probe files, no engines): the exporter's real output, fed to
promtool with the real rules, fires no alert. Before "no data" existed, the gpu collector
counted as failing there and InferwatchExporterCollectorFailing fired on every CPU node."""

from __future__ import annotations

import asyncio
import ctypes.util
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import create_app
from exporter.config import ExporterConfig
from tests.support.catalog import RULES_DIR, rule_groups

AiohttpClient = Callable[[web.Application], Any]
RULE_FILES = ["exporter.rules.yaml", "gpu.rules.yaml", "cuda-allocator.rules.yaml"]
TARGET = {"instance": "10.0.0.7:9835", "job": "inferwatch-exporter", "node": "cpu-node-1"}
GPU_NODE = {
    "series": 'inferwatch_gpu_up{gpu="0",instance="10.0.0.8:9835",job="inferwatch-exporter",'
    'node="gpu-node-1",uuid="GPU-8f1c"}',
    "values": "1x60",
}

pytestmark = [
    pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed"),
    pytest.mark.skipif(
        ctypes.util.find_library("nvidia-ml") is not None, reason="a real NVML is installed here"
    ),
]


async def exposition(aiohttp_client: AiohttpClient, tmp_path: Path) -> str:
    cfg = ExporterConfig.model_validate(
        {
            "listen": "127.0.0.1:9835",
            "proc_root": str(tmp_path / "proc"),
            "collectors": {
                "gpu": {"interval_seconds": 0.1},
                "cuda_allocator": {"interval_seconds": 0.1, "probe_dir": str(tmp_path / "p")},
                "llm": {"interval_seconds": 0.1, "timeout_seconds": 5},
            },
        }
    )
    client: TestClient[web.Request, web.Application] = await aiohttp_client(create_app(cfg))
    for _ in range(200):  # bounded: every collector's first refresh
        if (await client.get("/readyz")).status == 200:
            break
        await asyncio.sleep(0.05)
    return await (await client.get("/metrics")).text()


def input_series(text: str, minutes: int) -> list[dict[str, str]]:
    """Every sample as a promtool input series, constant for `minutes` (timestamps advance)."""
    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = {**sample.labels, **TARGET}
            selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            if sample.name.endswith("_timestamp_seconds"):
                values = f"0+60x{minutes}"  # last success keeps up with time()
            else:
                values = f"{sample.value:g}x{minutes}"
            out.append({"series": f"{sample.name}{{{selector}}}", "values": values})
    return out


async def test_a_gpu_less_node_fires_no_alert(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    text = await exposition(aiohttp_client, tmp_path)
    for collector in ("gpu", "cuda_allocator", "llm"):
        assert f'inferwatch_exporter_collector_success{{collector="{collector}"}} 1.0' in text
    assert 'collector_no_data{collector="gpu",reason="nvml_unavailable"} 1.0' in text
    assert "inferwatch_gpu_up" not in text

    files = [RULES_DIR / name for name in RULE_FILES]
    alerts = sorted({r["alert"] for p, r in rule_groups() if p in files and "alert" in r})
    test = {
        "rule_files": [str(f) for f in files],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                # The CPU node's real output, in a cluster whose other node has a GPU
                # (InferwatchGPUMetricsAbsent is about a cluster without any GPU).
                "input_series": [*input_series(text, 60), GPU_NODE],
                "alert_rule_test": [
                    {"eval_time": f"{t}m", "alertname": name, "exp_alerts": []}
                    for t in (10, 59)
                    for name in alerts
                ],
            }
        ],
    }
    path = tmp_path / "gpu_less_test.yaml"
    path.write_text(yaml.safe_dump(test))
    result = await asyncio.to_thread(
        subprocess.run,
        ["promtool", "test", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "InferwatchExporterCollectorFailing" in alerts and "InferwatchGPULost" in alerts
