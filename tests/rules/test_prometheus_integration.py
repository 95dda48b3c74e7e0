"""The rules in a real Prometheus, scraping the exporter in simulate mode: an Xid 79 injected on one
GPU reaches /api/v1/alerts as InferwatchGPUXidCritical and InferwatchGPULost, with the labels the
drain_node playbook needs, and only for that GPU."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import services
from harness.services import LOOPBACK, free_port, prometheus
from harness.wait import eventually
from tests.rules.conftest import RenderRules

# The chart's own overrides, rendered by helm: evaluate every second, no waiting on `for`.
OVERRIDES = {"alerts": {"InferwatchGPULost": {"for": "0s"}}, "groupInterval": "1s"}


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


def post_json(url: str, body: dict[str, Any]) -> int:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        return int(resp.status)


def firing(prom_url: str) -> list[dict[str, Any]]:
    alerts = get_json(f"{prom_url}/api/v1/alerts")["data"]["alerts"]
    return [a for a in alerts if a["state"] == "firing"]


@pytest.mark.integration
def test_xid79_reaches_prometheus_alerts(tmp_path: Path, render_rules: RenderRules) -> None:
    rules_file = tmp_path / "inferwatch.rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": render_rules(OVERRIDES)}, sort_keys=False))
    exporter_port, prom_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(rules_file)],
                "scrape_configs": [
                    {
                        "job_name": "inferwatch",
                        "static_configs": [
                            {
                                "targets": [f"{LOOPBACK}:{exporter_port}"],
                                "labels": {"node": "test-node"},
                            }
                        ],
                    }
                ],
            }
        )
    )
    exporter = services.exporter(tmp_path, exporter_port)
    prom_url = f"http://{LOOPBACK}:{prom_port}"
    with exporter, prometheus(config, tmp_path, prom_port):
        query = f"{prom_url}/api/v1/query?query=uuid:inferwatch_gpu_up:max"
        gpus = eventually(lambda: get_json(query)["data"]["result"], 30, "recorded GPU series")
        assert {g["metric"]["node"] for g in gpus} == {"test-node"}
        uuid = next(g["metric"]["uuid"] for g in gpus if g["metric"]["gpu"] == "1")

        status = post_json(
            f"http://{LOOPBACK}:{exporter_port}/-/simulate", {"action": "xid", "gpu": 1, "xid": 79}
        )
        assert status == 200

        def both_fire() -> list[dict[str, Any]] | None:
            alerts = [
                a
                for a in firing(prom_url)
                if a["labels"]["alertname"] in {"InferwatchGPUXidCritical", "InferwatchGPULost"}
            ]
            names = {a["labels"]["alertname"] for a in alerts}
            return alerts if names == {"InferwatchGPUXidCritical", "InferwatchGPULost"} else None

        alerts = eventually(both_fire, 60, "InferwatchGPUXidCritical and InferwatchGPULost to fire")
        for alert in alerts:
            labels = alert["labels"]
            assert labels["gpu"] == "1", "only the GPU that fell off the bus"
            assert labels["uuid"] == uuid
            assert (labels["node"], labels["severity"], labels["remediation"]) == (
                "test-node",
                "critical",
                "drain_node",
            )
            assert alert["annotations"]["runbook_url"].endswith(f"/{labels['alertname']}.md")
        xid = next(a for a in alerts if a["labels"]["alertname"] == "InferwatchGPUXidCritical")
        assert xid["labels"]["xid"] == "79"
