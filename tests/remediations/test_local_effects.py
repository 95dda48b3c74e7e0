"""Local backend: a change counts once its effect is seen, and a failed one is undone.

Real replica processes (Python's http.server), a real Prometheus for in-flight requests, and the
real `inferwatch-remediator` process for what a SIGKILL leaves behind.
"""

from __future__ import annotations

import signal
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from harness.services import LOOPBACK, ManagedProcess, free_port, prometheus
from remediations.backends.local import LocalBackend
from remediations.backends.local_settings import LocalSettings
from remediations.process import signal_group, start_time
from remediations.targets import TargetRef
from tests.remediations.conftest import TOKEN, deployment, make_config, results, running, wait_for
from tests.remediations.test_local_backend import notification, send


def picky_engine() -> list[str]:
    """An HTTP engine that cannot start on the model `broken.gguf` (exits at once)."""
    code = (
        "import http.server,sys;sys.argv[3]=='broken.gguf' and sys.exit(3);"
        "http.server.ThreadingHTTPServer((sys.argv[1],int(sys.argv[2])),"
        "http.server.SimpleHTTPRequestHandler).serve_forever()"
    )
    return [sys.executable, "-c", code, "{host}", "{port}", "{model}"]


def picky(tmp_path: Path, replicas: int = 3) -> dict[str, Any]:
    return deployment(
        "web",
        replicas=replicas,
        command=picky_engine(),
        model="big.gguf",
        model_name="big",
        lighter_model="broken.gguf",
    )


async def test_a_rolling_swap_stops_at_the_first_replica_that_fails_and_restores_it(
    tmp_path: Path,
) -> None:
    local = LocalSettings.model_validate(
        {
            "endpoint_file": tmp_path / "endpoints.json",
            "port_range": [low := free_port() % 20000 + 30000, low + 60],
            "deployments": [picky(tmp_path)],
        }
    )
    async with LocalBackend(local) as backend:
        first, *rest = backend.replicas_of("web")
        untouched = [r.process.pid for r in rest if r.process is not None]
        rollout = await backend.set_model(TargetRef(deployment="web"), "broken.gguf", 5.0)
        assert not rollout.ok and rollout.restored
        assert rollout.detail.startswith(f"{first.name} was not ready on broken.gguf")
        assert "put 1 replica(s) back on big.gguf" in rollout.detail
        # only the first replica was touched; every replica serves the main model
        assert [r.process.pid for r in rest if r.process is not None] == untouched
        assert {r.model for r in backend.replicas_of("web")} == {"big.gguf"}
        assert all(r.serving and r.running for r in backend.replicas_of("web"))
        info = await backend.deployment(TargetRef(deployment="web"))
        assert (info.model, info.ready) == ("big.gguf", 3)


async def test_a_swap_that_cannot_start_is_recorded_failed_and_leaves_nothing_to_undo(
    tmp_path: Path,
) -> None:
    playbooks = tmp_path / "p.yaml"
    playbooks.write_text(
        yaml.safe_dump(
            {
                "playbooks": [
                    {
                        "name": "swap",
                        "match": {"remediation": "swap_model"},
                        "action": "swap_model",
                        "params": {"ready_timeout_seconds": 5},
                    }
                ]
            }
        )
    )
    cfg = make_config(
        tmp_path,
        prometheus_url=None,
        deployments=[picky(tmp_path, replicas=2)],
        playbooks=str(playbooks),
        guards={"recheck": False},
    )
    alert = {"alertname": "InferwatchLLMCapacityExhausted", "remediation": "swap_model"}
    async with running(cfg) as (url, remediator):
        await send(url, notification({**alert, "model": "big"}))
        (failed,) = await wait_for(lambda: results(remediator, "failed"), what="the failure")
        assert "was not ready on broken.gguf" in failed.reason
        assert remediator.state.swap("deployment/web") is None
        assert {r.model for r in remediator.backend.replicas_of("web")} == {"big.gguf"}


async def test_a_drain_that_times_out_with_requests_in_flight_is_failed(tmp_path: Path) -> None:
    """Prometheus scrapes 3 requests running on the replica the whole time."""
    cfg_holder: dict[str, str] = {}

    async def metrics(request: web.Request) -> web.Response:
        target = cfg_holder.get("target", "")
        return web.Response(
            text=f'inferwatch_llm_requests_running{{target="{target}"}} 3\n',
            content_type="text/plain",
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    exporter = TestServer(app, host=LOOPBACK)
    await exporter.start_server()
    workdir = tmp_path / "prom"
    workdir.mkdir()
    config = workdir / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "inferwatch",
                        "honor_labels": True,
                        "static_configs": [{"targets": [f"{LOOPBACK}:{exporter.port}"]}],
                    }
                ],
            }
        )
    )
    port = free_port()
    playbooks = tmp_path / "p.yaml"
    playbooks.write_text(
        yaml.safe_dump(
            {
                "playbooks": [
                    {
                        "name": "drain",
                        "match": {"remediation": "drain"},
                        "action": "drain",
                        "params": {"inflight_timeout_seconds": 4, "poll_seconds": 0.5},
                    }
                ]
            }
        )
    )
    try:
        with prometheus(config, workdir, port):
            cfg = make_config(
                tmp_path,
                prometheus_url=f"http://{LOOPBACK}:{port}",
                deployments=[deployment("web", replicas=2)],
                playbooks=str(playbooks),
                guards={"recheck": False},
            )
            async with running(cfg) as (url, remediator):
                replica = remediator.backend.replicas_of("web")[1]
                cfg_holder["target"] = replica.address
                # Prometheus applies new targets within ~5 s; wait for the series itself
                query = (
                    f"http://{LOOPBACK}:{port}/api/v1/query?query=inferwatch_llm_requests_running"
                )
                await wait_for(lambda: replica.address in _get(query), 30, "the first scrape")
                await send(
                    url,
                    notification(
                        {"alertname": "X", "remediation": "drain", "target": replica.address}
                    ),
                )
                (failed,) = await wait_for(lambda: results(remediator, "failed"), what="drain")
                assert failed.reason.endswith("drain timed out after 4s with 3 in flight")
                assert not replica.serving and replica.running  # out of serving, not cut
    finally:
        await exporter.close()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def _alive(pgid: int, started: str | None) -> bool:
    return started is not None and start_time(pgid) == started


async def test_replicas_left_by_a_killed_remediator_are_stopped_by_the_next_one(
    tmp_path: Path,
) -> None:
    """SIGKILL gives no chance to clean up; the process groups recorded next to the endpoint
    file tell the next run what to stop, so a 2-replica deployment never runs 4."""
    cfg = make_config(
        tmp_path,
        prometheus_url=None,
        deployments=[deployment("web", replicas=2)],
        guards={"recheck": False},
    )
    config = tmp_path / "remediator.yaml"
    process_file = tmp_path / "endpoints.json.processes.json"

    def start() -> ManagedProcess:
        return ManagedProcess(
            "remediator",
            [sys.executable, "-m", "remediations", "--config", str(config)],
            tmp_path / "remediator.log",
            env={"INFERWATCH_REMEDIATOR_TOKEN": TOKEN},
        ).spawn()

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://{cfg.listen}/healthz", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def groups() -> list[tuple[int, str | None]]:
        data = yaml.safe_load(process_file.read_text()) if process_file.exists() else []
        return [(g["pgid"], g["started"]) for g in data or []]

    first = start()
    try:
        await wait_for(lambda: healthy() and len(groups()) == 2, 30, "the first run")
        old = groups()
        first.signal(signal.SIGKILL)
        assert first.proc is not None
        first.proc.wait(10)
        assert all(_alive(*g) for g in old)  # orphans, as the attack left them
        second = start()
        try:
            await wait_for(lambda: healthy() and len(groups()) == 2, 30, "the second run")
            assert not any(_alive(*g) for g in old)
            new = groups()
            assert all(_alive(*g) for g in new) and set(new).isdisjoint(old)
        finally:
            second.stop(30)
        assert not any(_alive(*g) for g in new)  # a clean stop leaves nothing behind
        assert groups() == []
    finally:
        first.stop()
        for pgid, started in groups():
            if _alive(pgid, started):
                signal_group(pgid, signal.SIGKILL)
