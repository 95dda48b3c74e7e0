"""Local backend: replicas as real processes, endpoint files in Prometheus file_sd format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from remediations.backends.local import LocalBackend
from remediations.backends.local_settings import LocalSettings
from remediations.playbook import load_playbooks
from remediations.targets import TargetRef
from tests.remediations.conftest import (
    FIXTURES,
    TOKEN,
    deployment,
    make_config,
    results,
    running,
    wait_for,
)

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def notification(
    labels: dict[str, str], fingerprint: str = "1", status: str = "firing"
) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((FIXTURES / "v0.25-firing.json").read_text())
    payload["status"] = status
    payload["alerts"][0].update(labels=labels, fingerprint=fingerprint, status=status)
    return payload


async def send(url: str, payload: dict[str, Any]) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{url}/alerts", json=payload, headers=AUTH) as resp,
    ):
        assert resp.status == 202


def settings(tmp_path: Path, *deployments: dict[str, Any]) -> LocalSettings:
    return LocalSettings.model_validate(
        {
            "endpoint_file": tmp_path / "endpoints.json",
            "scrape_file": tmp_path / "scrape.json",
            "port_range": [21000, 21100],
            "deployments": list(deployments),
        }
    )


async def test_endpoint_files_follow_the_file_sd_contract(tmp_path: Path) -> None:
    async with LocalBackend(
        settings(tmp_path, deployment("web", replicas=2, gpus=["0", "1"]))
    ) as backend:
        replicas = backend.replicas_of("web")
        entries = json.loads((tmp_path / "endpoints.json").read_text())
        assert entries == [
            {
                "targets": [r.address],
                "labels": {
                    "engine": "llamacpp",
                    "deployment": "web",
                    "replica": r.name,
                    "model": "web",
                    "gpu": gpu,
                },
            }
            for r, gpu in zip(replicas, ["0", "1"], strict=True)
        ]
        # a drained replica leaves the serving list but stays in the scrape list
        await backend.set_serving(TargetRef(replica=replicas[0].address), False)
        assert len(json.loads((tmp_path / "endpoints.json").read_text())) == 1
        assert len(json.loads((tmp_path / "scrape.json").read_text())) == 2
        await backend.set_serving(TargetRef(replica=replicas[0].address), True)
        assert await backend.scale_to("web", 3) == 3
        assert len(json.loads((tmp_path / "endpoints.json").read_text())) == 3
    assert json.loads((tmp_path / "endpoints.json").read_text()) == []
    assert all(not r.running for r in replicas)


async def test_command_template_is_an_argv_not_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    dep = deployment("web", model=f"x; touch {marker}", replicas=1)
    dep["command"] = [*dep["command"], "{model}"]
    async with LocalBackend(settings(tmp_path, dep)) as backend:
        assert backend.replicas_of("web")[0].running
    assert not marker.exists()


async def test_restart_and_drain_through_the_webhook(tmp_path: Path) -> None:
    cfg = make_config(
        tmp_path,
        prometheus_url=None,
        deployments=[deployment("web", replicas=2)],
        guards={"recheck": False, "cooldown_seconds": 0},
    )
    async with running(cfg) as (url, remediator):
        backend = remediator.backend
        first, second = backend.replicas_of("web")
        old_pid = first.process.pid
        await send(
            url,
            notification(
                {
                    "alertname": "InferwatchLLMReplicaStalled",
                    "remediation": "restart",
                    "target": first.address,
                }
            ),
        )
        (done,) = await wait_for(lambda: results(remediator, "succeeded"), what="restart")
        assert "ready again" in done.reason
        assert first.process.pid != old_pid and first.serving
        await send(
            url,
            notification({"alertname": "X", "remediation": "drain", "target": second.address}, "2"),
        )
        await wait_for(lambda: len(results(remediator, "succeeded")) == 2, what="drain")
        serving = [
            t for e in json.loads((tmp_path / "endpoints.json").read_text()) for t in e["targets"]
        ]
        assert serving == [first.address]
        assert second.running  # drained, not stopped


async def test_drain_node_moves_replicas_off_a_gpu(tmp_path: Path) -> None:
    cfg = make_config(
        tmp_path,
        prometheus_url=None,
        deployments=[deployment("web", replicas=2, gpus=["0", "1"])],
        guards={"recheck": False},
    )
    async with running(cfg) as (url, remediator):
        backend = remediator.backend
        on_gpu0 = [r for r in backend.replicas_of("web") if r.gpu == "0"]
        await send(
            url,
            notification(
                {"alertname": "InferwatchGPUXidCritical", "remediation": "drain_node", "gpu": "0"}
            ),
        )
        (done,) = await wait_for(lambda: results(remediator, "succeeded"), what="drain_node")
        assert {r.gpu for r in backend.replicas_of("web")} == {"1"}
        assert len(backend.replicas_of("web")) == 2
        assert all(not r.running for r in on_gpu0)
        assert await backend.cordoned_nodes() == ["0"]
        assert f"{on_gpu0[0].address} -> " in done.reason


async def test_swap_model_and_back_after_the_alert_resolves(tmp_path: Path) -> None:
    playbooks = tmp_path / "p.yaml"
    playbooks.write_text(
        yaml.safe_dump(
            {
                "playbooks": [
                    {
                        "name": "swap",
                        "match": {"remediation": "swap_model"},
                        "action": "swap_model",
                        "params": {"quiet_period_seconds": 0.3},
                    }
                ]
            }
        )
    )
    dep = deployment(
        "web", replicas=2, model="big.gguf", model_name="big", lighter_model="small.gguf"
    )
    dep["command"] = [*dep["command"], "{model}"]
    cfg = make_config(
        tmp_path,
        prometheus_url=None,
        deployments=[dep],
        playbooks=str(playbooks),
        guards={"recheck": False},
    )
    labels = {
        "alertname": "InferwatchLLMCapacityExhausted",
        "remediation": "swap_model",
        "model": "big",
    }
    async with running(cfg, playbooks=load_playbooks(playbooks)) as (url, remediator):
        backend = remediator.backend
        await send(url, notification(labels))
        await wait_for(lambda: results(remediator, "succeeded"), what="swap")
        assert {r.model for r in backend.replicas_of("web")} == {"small.gguf"}
        assert all(r.serving for r in backend.replicas_of("web"))
        await send(url, notification(labels, status="resolved"))
        await wait_for(lambda: len(results(remediator, "succeeded")) == 2, what="swap back")
        assert {r.model for r in backend.replicas_of("web")} == {"big.gguf"}
        argv = [p for r in backend.replicas_of("web") for p in [r.process]]
        assert all(p is not None and p.returncode is None for p in argv)
