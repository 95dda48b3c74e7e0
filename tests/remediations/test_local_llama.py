"""The local backend with real llama-server replicas (SmolLM2-135M on CPU).

A real Prometheus follows the backend's scrape file (file_sd) and reads each replica's own
in-flight gauge, renamed to the normalized name the remediator queries — so draining waits on
the real number of requests a real engine is serving.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from harness.services import LOOPBACK, free_port, llama_server_binary, prometheus, smollm2_model
from tests.remediations.conftest import TOKEN, make_config, results, running, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        llama_server_binary() is None or smollm2_model() is None,
        reason="llama-server or the SmolLM2 model is not installed (./run setup)",
    ),
]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def llama_deployment() -> dict[str, Any]:
    return {
        "name": "smollm",
        "command": [
            str(llama_server_binary()),
            "--model",
            "{model}",
            "--host",
            "{host}",
            "--port",
            "{port}",
            "--metrics",
            "--ctx-size",
            "4096",
            "--parallel",
            "2",
            "--threads",
            "1",
        ],
        "model": str(smollm2_model()),
        "model_name": "smollm2",
        "replicas": 1,
        "min_replicas": 1,
        "max_replicas": 3,
        "ready_path": "/health",
        "ready_timeout_seconds": 60,
    }


def prometheus_config(path: Path, scrape_file: Path) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "llama",
                        "file_sd_configs": [
                            {"files": [str(scrape_file)], "refresh_interval": "1s"}
                        ],
                        "relabel_configs": [
                            {"source_labels": ["__address__"], "target_label": "target"}
                        ],
                        "metric_relabel_configs": [
                            {
                                "source_labels": ["__name__"],
                                "regex": "llamacpp:requests_processing",
                                "target_label": "__name__",
                                "replacement": "inferwatch_llm_requests_running",
                            }
                        ],
                    }
                ],
            }
        )
    )
    return path


async def send(url: str, labels: dict[str, str], fingerprint: str) -> None:
    payload = {
        "version": "4",
        "status": "firing",
        "receiver": "remediator",
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": {},
                "startsAt": "2026-11-21T05:29:57.774Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "",
                "fingerprint": fingerprint,
            }
        ],
    }
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{url}/alerts", json=payload, headers=AUTH) as resp,
    ):
        assert resp.status == 202


async def complete(address: str, n_predict: int) -> dict[str, Any]:
    body = {
        "prompt": "Write a long story about a lighthouse keeper.",
        "n_predict": n_predict,
        "ignore_eos": True,
        "temperature": 0,
    }
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"http://{address}/completion", json=body, timeout=aiohttp.ClientTimeout(total=120)
        ) as resp,
    ):
        assert resp.status == 200
        result: dict[str, Any] = await resp.json()
        return result


async def test_scale_drain_and_restart_real_llama_servers(tmp_path: Path) -> None:
    prom_port = free_port()
    cfg = make_config(
        tmp_path,
        prometheus_url=f"http://{LOOPBACK}:{prom_port}",
        deployments=[llama_deployment()],
        guards={"recheck": False, "cooldown_seconds": 0},
    )
    prom_cfg = prometheus_config(tmp_path / "prometheus.yml", tmp_path / "scrape.json")
    with prometheus(prom_cfg, tmp_path, prom_port):
        async with running(cfg) as (url, remediator):
            backend = remediator.backend
            (first,) = backend.replicas_of("smollm")
            # scale up: a second real engine joins the endpoint file once it is ready
            await send(
                url,
                {
                    "alertname": "InferwatchLLMQueueBacklog",
                    "remediation": "scale_up",
                    "model": "smollm2",
                },
                "a1",
            )
            await wait_for(lambda: results(remediator, "succeeded"), within=90, what="scale-up")
            first, second = backend.replicas_of("smollm")
            serving = [
                t
                for e in json.loads((tmp_path / "endpoints.json").read_text())
                for t in e["targets"]
            ]
            assert serving == [first.address, second.address]
            assert (await complete(second.address, 8))["tokens_predicted"] == 8

            # Prometheus must see both replicas before a drain can rely on it
            async with aiohttp.ClientSession() as s:

                async def seen() -> int:
                    async with s.get(
                        f"http://{LOOPBACK}:{prom_port}/api/v1/query",
                        params={"query": "inferwatch_llm_requests_running"},
                    ) as resp:
                        return len((await resp.json())["data"]["result"])

                for _ in range(60):  # bounded: 30 s
                    if await seen() == 2:
                        break
                    await asyncio.sleep(0.5)
                assert await seen() == 2

            # restart the first replica while it serves a long completion: the drain waits
            old_pid = first.process.pid
            inflight = asyncio.create_task(complete(first.address, 200))
            await asyncio.sleep(0.5)
            await send(
                url,
                {
                    "alertname": "InferwatchLLMReplicaStalled",
                    "remediation": "restart",
                    "target": first.address,
                },
                "a2",
            )
            done = await wait_for(
                lambda: (
                    len(results(remediator, "succeeded")) == 2
                    and results(remediator, "succeeded")[0]
                ),
                within=120,
                what="restart",
            )
            finished = await inflight
            assert finished["tokens_predicted"] == 200  # not cut off by the restart
            assert "no requests in flight" in done.reason and "ready again" in done.reason
            assert first.process.pid != old_pid
            assert (await complete(first.address, 4))["tokens_predicted"] == 4

            # drain the second: out of the endpoint file, still running
            await send(
                url, {"alertname": "X", "remediation": "drain", "target": second.address}, "a3"
            )
            await wait_for(
                lambda: len(results(remediator, "succeeded")) == 3, within=60, what="drain"
            )
            serving = [
                t
                for e in json.loads((tmp_path / "endpoints.json").read_text())
                for t in e["targets"]
            ]
            assert serving == [first.address]
            assert second.running


async def test_a_lighter_model_that_cannot_start_stops_the_swap_at_the_first_replica(
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
                        "params": {"ready_timeout_seconds": 30},
                    }
                ]
            }
        )
    )
    # llama-server exits at once on a model file it cannot load
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file")
    dep = {**llama_deployment(), "replicas": 2, "lighter_model": str(broken)}
    cfg = make_config(
        tmp_path,
        prometheus_url=None,
        deployments=[dep],
        playbooks=str(playbooks),
        guards={"recheck": False},
    )
    async with running(cfg) as (url, remediator):
        first, second = remediator.backend.replicas_of("smollm")
        second_pid = second.process.pid
        await send(
            url,
            {
                "alertname": "InferwatchLLMCapacityExhausted",
                "remediation": "swap_model",
                "model": "smollm2",
            },
            "s1",
        )
        (failed,) = await wait_for(
            lambda: results(remediator, "failed"), within=120, what="the failed swap"
        )
        assert f"{first.name} was not ready on {broken}" in failed.reason
        assert second.process.pid == second_pid  # never touched
        # both replicas serve the main model again
        assert {r.model for r in remediator.backend.replicas_of("smollm")} == {dep["model"]}
        for replica in (first, second):
            assert (await complete(replica.address, 4))["tokens_predicted"] == 4
