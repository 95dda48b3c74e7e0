"""Local backend: replicas as real processes, endpoint files in Prometheus file_sd format."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from remediations.backends.local import LocalBackend
from remediations.backends.local_settings import LocalSettings
from remediations.playbook import load_playbooks
from remediations.targets import TargetRef
from tests.remediations.conftest import (
    FIXTURES,
    TOKEN,
    deployment,
    http_engine,
    make_config,
    quick_drains,
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
        assert (await backend.scale_to("web", 3)).ok
        assert len(json.loads((tmp_path / "endpoints.json").read_text())) == 3
    assert json.loads((tmp_path / "endpoints.json").read_text()) == []
    assert all(not r.running for r in replicas)


async def test_a_stopped_replica_is_continued_and_ends_on_sigterm(tmp_path: Path) -> None:
    """SIGSTOPped (hung) engines must get SIGTERM, not wait out the timeout for SIGKILL."""
    async with LocalBackend(
        settings(tmp_path, deployment("web", replicas=2, stop_timeout_seconds=3))
    ) as backend:
        replica = backend.replicas_of("web")[1]
        assert replica.process is not None
        os.kill(replica.process.pid, signal.SIGSTOP)
        await backend.set_replicas(TargetRef(deployment="web"), 1)
        assert replica.process.returncode == -signal.SIGTERM


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
        playbooks=quick_drains(tmp_path),
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
        drained, _ = await wait_for(
            lambda: len(results(remediator, "succeeded")) == 2 and results(remediator, "succeeded"),
            what="drain",
        )
        # no Prometheus: the drain waited its whole timeout rather than cutting requests
        assert drained.reason.endswith(
            "no Prometheus to watch in-flight requests; waited the whole 0.3s"
        )
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


def swap_config(tmp_path: Path, **overrides: Any) -> Any:
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
    # Replicas take a second to start, so the swap (a rolling restart) takes a few.
    dep = deployment(
        "web",
        replicas=2,
        model="big.gguf",
        model_name="big",
        lighter_model="small.gguf",
        command=[*http_engine(delay=1.0), "{model}"],
    )
    return make_config(
        tmp_path,
        prometheus_url=None,
        deployments=[dep],
        playbooks=str(playbooks),
        guards={"recheck": False},
        **overrides,
    )


SWAP_ALERT = {
    "alertname": "InferwatchLLMCapacityExhausted",
    "remediation": "swap_model",
    "model": "big",
}


def served(tmp_path: Path) -> set[str]:
    """The `model` labels of the endpoint and scrape files."""
    entries = [
        *json.loads((tmp_path / "endpoints.json").read_text()),
        *json.loads((tmp_path / "scrape.json").read_text()),
    ]
    return {e["labels"]["model"] for e in entries}


@pytest.mark.parametrize("resolves", ["after the swap", "during the swap"])
async def test_swap_model_and_back_after_the_alert_resolves(tmp_path: Path, resolves: str) -> None:
    """Restarting replicas changes what the rule sees, so the alert may resolve mid-swap."""
    cfg = swap_config(tmp_path)
    async with running(cfg, playbooks=load_playbooks(cfg.playbooks)) as (url, remediator):
        backend = remediator.backend
        await send(url, notification(SWAP_ALERT))
        if resolves == "during the swap":
            swap = await wait_for(lambda: remediator.state.swap("deployment/web"), what="swap")
            assert swap.in_flight
            await send(url, notification(SWAP_ALERT, status="resolved"))
        await wait_for(lambda: results(remediator, "succeeded"), what="swap")
        assert {r.model for r in backend.replicas_of("web")} == {"small.gguf"}
        # the files name the model being served, not the configured one
        assert served(tmp_path) == {"small.gguf"}
        assert all(r.serving for r in backend.replicas_of("web"))
        if resolves == "after the swap":
            await send(url, notification(SWAP_ALERT, status="resolved"))
        await wait_for(lambda: len(results(remediator, "succeeded")) == 2, what="swap back")
        assert {r.model for r in backend.replicas_of("web")} == {"big.gguf"}
        assert served(tmp_path) == {"big"}
        argv = [p for r in backend.replicas_of("web") for p in [r.process]]
        assert all(p is not None and p.returncode is None for p in argv)
        assert remediator.state.swap("deployment/web") is None


async def test_an_alert_firing_again_keeps_the_lighter_model(tmp_path: Path) -> None:
    cfg = swap_config(tmp_path)
    async with running(cfg, playbooks=load_playbooks(cfg.playbooks)) as (url, remediator):
        await send(url, notification(SWAP_ALERT))
        await wait_for(lambda: remediator.state.swap("deployment/web"), what="swap")
        await send(url, notification(SWAP_ALERT, status="resolved"))
        # a late copy of the first notification is not a new firing ...
        await send(url, notification(SWAP_ALERT))
        await wait_for(lambda: results(remediator, "succeeded"), what="swap")
        swap = remediator.state.swap("deployment/web")
        assert swap is not None and swap.back_at is not None
        # ... a new episode is (the swap back waits for it to resolve)
        await send(url, notification({**SWAP_ALERT, "model": "small.gguf"}, fingerprint="2"))
        await wait_for(lambda: remediator.state.swap("deployment/web").back_at is None)
        assert {r.model for r in remediator.backend.replicas_of("web")} == {"small.gguf"}


async def test_a_swap_cut_off_by_a_restart_is_undone_after_the_alert_resolved(
    tmp_path: Path,
) -> None:
    cfg = swap_config(tmp_path, shutdown_timeout_seconds=0)
    async with running(cfg, playbooks=load_playbooks(cfg.playbooks)) as (url, remediator):
        await send(url, notification(SWAP_ALERT))
        await wait_for(lambda: remediator.state.swap("deployment/web"), what="swap")
        await send(url, notification(SWAP_ALERT, status="resolved"))
        await wait_for(lambda: remediator.state.swap("deployment/web").resolved_at)
    # stopped mid-swap; the next run knows both the swap and that its alert resolved
    async with running(cfg, playbooks=load_playbooks(cfg.playbooks)) as (url, remediator):
        await wait_for(
            lambda: remediator.state.swap("deployment/web") is None, what="the swap back"
        )
        (back,) = [e for e in results(remediator, "succeeded") if e.action == "swap_model"]
        assert back.reason == "web already serves big.gguf"
        assert {r.model for r in remediator.backend.replicas_of("web")} == {"big.gguf"}
