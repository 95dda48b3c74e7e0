"""A real Prometheus scrapes `inferwatch-exporter --simulate default` on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from demo import services
from demo.services import LOOPBACK, free_port, prometheus

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed"),
]


def query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://{LOOPBACK}:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.load(resp)
    assert body["status"] == "success"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def wait_for(port: int, promql: str, want: int, timeout: float = 45.0) -> list[dict[str, Any]]:
    """Query until `want` series come back (Prometheus scrapes ~5 s after start, then every 1 s)."""
    deadline = time.monotonic() + timeout
    result = query(port, promql)
    while len(result) != want and time.monotonic() < deadline:
        time.sleep(0.5)
        result = query(port, promql)
    return result


def post_json(url: str, body: dict[str, Any]) -> None:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200


def test_prometheus_scrapes_simulated_gpu_series(tmp_path: Path) -> None:
    exporter_port, prom_port = free_port(), free_port()
    exporter = services.exporter(
        tmp_path, exporter_port, env={"INFERWATCH_COLLECTORS__GPU__INTERVAL_SECONDS": "1"}
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: inferwatch\n"
        "    static_configs:\n"
        f"      - targets: ['{LOOPBACK}:{exporter_port}']\n"
        "        labels: {node: sim}\n"
    )
    with exporter, prometheus(config, tmp_path, prom_port):
        up = wait_for(prom_port, 'inferwatch_gpu_up{job="inferwatch"} == 1', 4)
        assert len(up) == 4, (up, exporter.tail())
        assert {s["metric"]["node"] for s in up} == {"sim"}

        pods = query(prom_port, "sum by (pod) (inferwatch_gpu_process_memory_bytes)")
        assert {s["metric"].get("pod", "") for s in pods} == {"vllm-llama-0", "sglang-qwen-0", ""}
        info = query(prom_port, "inferwatch_gpu_info")
        assert {s["metric"]["name"] for s in info} == {"NVIDIA H100 80GB HBM3"}

        post_json(
            f"http://{LOOPBACK}:{exporter_port}/-/simulate", {"action": "xid", "gpu": 1, "xid": 79}
        )
        lost = wait_for(prom_port, "inferwatch_gpu_up == 0", 1)
        assert [s["metric"]["gpu"] for s in lost] == ["1"]
        xid = wait_for(prom_port, 'inferwatch_gpu_xid_errors_total{xid="79"}', 1)
        assert xid[0]["value"][1] == "1"
