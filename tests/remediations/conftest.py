"""Fixtures for the remediator: real Prometheus and Alertmanager on 127.0.0.1, tiny engines.

The "engine" in most tests is Python's own http.server, started by the real local backend from
an argv template: a real process on a real port, ready when "/" answers. Tests that need the
real inference engine use llama-server (test_local_llama.py).
"""

from __future__ import annotations

import json
import sys
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestServer

from harness.services import LOOPBACK, alertmanager, free_port, prometheus
from harness.wait import eventually_async
from remediations.app import create_app, remediator_key
from remediations.config import RemediatorConfig, load_config
from remediations.engine import Remediator

TOKEN = "test-token-0123456789"
FIXTURES = Path(__file__).parent.parent / "fixtures" / "alertmanager"


def http_engine(delay: float = 0.0) -> list[str]:
    """argv for a stand-in engine: an HTTP server on {host}:{port}, after `delay` seconds."""
    code = (
        "import http.server,sys,time;time.sleep(float(sys.argv[3]));"
        "http.server.ThreadingHTTPServer((sys.argv[1],int(sys.argv[2])),"
        "http.server.SimpleHTTPRequestHandler).serve_forever()"
    )
    return [sys.executable, "-c", code, "{host}", "{port}", str(delay)]


def gated_engine(gate: Path) -> list[str]:
    """argv for a stand-in engine that starts serving once `gate` exists (or after 60 s): a test
    holds an action in progress for as long as it needs, without guessing at timings."""
    code = (
        "import http.server,os,sys,time\n"
        "for _ in range(1200):\n"
        " if os.path.exists(sys.argv[3]): break\n"
        " time.sleep(0.05)\n"
        "http.server.ThreadingHTTPServer((sys.argv[1],int(sys.argv[2])),"
        "http.server.SimpleHTTPRequestHandler).serve_forever()"
    )
    return [sys.executable, "-c", code, "{host}", "{port}", str(gate)]


def never_ready_engine() -> list[str]:
    return [sys.executable, "-c", "import time; time.sleep(600)", "{port}"]


def deployment(name: str, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": name,
        "command": http_engine(),
        "model": name,
        "replicas": 1,
        "min_replicas": 1,
        "max_replicas": 4,
        "ready_path": "/",
        "ready_timeout_seconds": 15,
        "stop_timeout_seconds": 5,
    }
    base.update(overrides)
    return base


def quick_drains(tmp_path: Path, seconds: float = 0.3) -> str:
    """The default playbooks with drains that wait `seconds`: without Prometheus a drain waits
    its whole timeout (120 s by default) before it counts as done."""
    from remediations.config import DEFAULT_PLAYBOOKS

    data = yaml.safe_load(DEFAULT_PLAYBOOKS.read_text())
    for playbook in data["playbooks"]:
        params = playbook.setdefault("params", {})
        if playbook["action"] == "drain":
            params["inflight_timeout_seconds"] = seconds
        elif playbook["action"] == "restart":
            params["drain_timeout_seconds"] = seconds
    path = tmp_path / "quick-drains.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def make_config(
    tmp_path: Path,
    *,
    prometheus_url: str | None,
    deployments: list[dict[str, Any]],
    port: int | None = None,
    **overrides: Any,
) -> RemediatorConfig:
    """A config file written to tmp_path and loaded the way the CLI loads it."""
    data: dict[str, Any] = {
        "listen": f"{LOOPBACK}:{port or free_port()}",
        "token": TOKEN,
        "state": str(tmp_path / "state.db"),
        "backend": "local",
        "local": {
            "endpoint_file": str(tmp_path / "endpoints.json"),
            "scrape_file": str(tmp_path / "scrape.json"),
            "port_range": [20000 + (free_port() % 20000), 0],
            "deployments": deployments,
        },
        "prometheus": {"url": prometheus_url},
        "guards": {"recheck": prometheus_url is not None},
    }
    low = data["local"]["port_range"][0]
    data["local"]["port_range"][1] = low + 60
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path = tmp_path / "remediator.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path, environ={})


@asynccontextmanager
async def running(cfg: RemediatorConfig, **kwargs: Any) -> AsyncIterator[tuple[str, Remediator]]:
    """The app on cfg.listen (127.0.0.1), fully started; stopped (gracefully) on exit."""
    app = create_app(cfg, token=TOKEN, **kwargs)
    server = TestServer(app, host=cfg.host, port=cfg.port)
    await server.start_server()
    try:
        yield f"http://{cfg.listen}", app[remediator_key]
    finally:
        await server.close()


wait_for = eventually_async  # the remediator tests' name for the harness' bounded wait


def audit(remediator: Remediator) -> list[Any]:
    return remediator.state.recent(100000)


def results(remediator: Remediator, result: str) -> list[Any]:
    return [e for e in audit(remediator) if e.result == result]


# -- real Prometheus and Alertmanager ---------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus with no targets: re-checks run real PromQL (vector(1), ...)."""
    workdir = tmp_path_factory.mktemp("prometheus")
    config = workdir / "prometheus.yml"
    config.write_text("global: {scrape_interval: 15s}\n")
    port = free_port()
    with prometheus(config, workdir, port):
        yield f"http://{LOOPBACK}:{port}"


def alertmanager_config(path: Path, receiver_url: str, token: str = TOKEN) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "route": {
                    "receiver": "remediator",
                    "group_by": ["..."],
                    "group_wait": "1s",
                    "group_interval": "1s",
                    "repeat_interval": "1h",
                },
                "receivers": [
                    {
                        "name": "remediator",
                        "webhook_configs": [
                            {
                                "url": f"{receiver_url}/alerts",
                                "send_resolved": True,
                                "http_config": {
                                    "authorization": {"type": "Bearer", "credentials": token}
                                },
                            }
                        ],
                    }
                ],
            }
        )
    )
    return path


@pytest.fixture
def start_alertmanager(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Start real Alertmanagers routing to a receiver URL; all stopped after the test."""
    started = []

    def start(receiver_url: str) -> str:
        workdir = tmp_path / f"am{len(started)}"
        workdir.mkdir()
        port = free_port()
        proc = alertmanager(alertmanager_config(workdir / "am.yml", receiver_url), workdir, port)
        started.append(proc.start())
        return f"http://{LOOPBACK}:{port}"

    try:
        yield start
    finally:
        for proc in started:
            proc.stop()


def post_alerts(am_url: str, alerts: list[dict[str, Any]]) -> None:
    """POST alerts to Alertmanager's /api/v2/alerts (what Prometheus does)."""
    req = urllib.request.Request(
        f"{am_url}/api/v2/alerts",
        data=json.dumps(alerts).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200


def am_alert(
    labels: dict[str, str],
    *,
    expr: str | None = None,
    prometheus_url: str = "http://127.0.0.1:9090",
    starts_at: datetime | None = None,
    resolved: bool = False,
) -> dict[str, Any]:
    """`expr` defaults to one that returns this alert's series (the labels that pick its target):
    a re-check only believes a generatorURL expression whose result carries them."""
    if expr is None:
        expr = "vector(1)"
        for name in ("namespace", "deployment", "pod", "target", "node", "model", "gpu"):
            if name in labels:
                expr = f'label_replace({expr}, "{name}", "{labels[name]}", "", "")'
    now = datetime.now(UTC)
    start = starts_at or now - timedelta(minutes=1)
    alert: dict[str, Any] = {
        "labels": {"severity": "warning", **labels},
        "annotations": {"summary": "test alert."},
        "startsAt": start.isoformat(),
        "generatorURL": f"{prometheus_url}/graph?g0.expr={urllib.parse.quote(expr)}&g0.tab=1",
    }
    # An endsAt in the past resolves the alert; in the future it stays firing that long.
    alert["endsAt"] = (
        now - timedelta(seconds=1) if resolved else now + timedelta(hours=1)
    ).isoformat()
    return alert
