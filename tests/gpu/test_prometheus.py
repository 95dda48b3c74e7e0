"""A real Prometheus scrapes `inferwatch-exporter --simulate default` on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from harness import services
from harness.prometheus import Labels, Prometheus
from harness.services import LOOPBACK, free_port, prometheus
from harness.wait import TRANSIENT, eventually

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed"),
]


def wait_for(prom: Prometheus, promql: str, want: int) -> list[tuple[Labels, float]]:
    """Query until `want` series come back (Prometheus scrapes ~5 s after start, then every 1 s)."""

    def series() -> list[tuple[Labels, float]] | None:
        result = prom.query(promql)
        return result if len(result) == want else None

    return eventually(
        series, within=45.0, what=f"{want} series for {promql}", interval=0.5, ignore=TRANSIENT
    )


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
        prom = Prometheus(f"http://{LOOPBACK}:{prom_port}", timeout=5)
        up = wait_for(prom, 'inferwatch_gpu_up{job="inferwatch"} == 1', 4)
        assert len(up) == 4, (up, exporter.tail())
        assert {labels["node"] for labels, _ in up} == {"sim"}

        pods = prom.query("sum by (pod) (inferwatch_gpu_process_memory_bytes)")
        assert {labels.get("pod", "") for labels, _ in pods} == {
            "vllm-llama-0",
            "sglang-qwen-0",
            "",
        }
        info = prom.query("inferwatch_gpu_info")
        assert {labels["name"] for labels, _ in info} == {"NVIDIA H100 80GB HBM3"}

        post_json(
            f"http://{LOOPBACK}:{exporter_port}/-/simulate", {"action": "xid", "gpu": 1, "xid": 79}
        )
        lost = wait_for(prom, "inferwatch_gpu_up == 0", 1)
        assert [labels["gpu"] for labels, _ in lost] == ["1"]
        xid = wait_for(prom, 'inferwatch_gpu_xid_errors_total{xid="79"}', 1)
        assert xid[0][1] == 1
