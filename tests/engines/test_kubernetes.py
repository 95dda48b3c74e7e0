"""Kubernetes discovery with the real kubernetes_asyncio client against the loopback fake API:
only this node's labelled, running pods are scraped, and the watch follows adds and deletes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from exporter.collectors.base import CollectorContext, NoDataError
from exporter.collectors.llm import LlmCollector, LlmSettings
from harness.engine_stub import EngineStub
from harness.kube_api import FakeKubeApi, engine_pod
from tests.engines.conftest import fixture_text, raw_samples, total

Sample = tuple[str, dict[str, str], float]
SELECT = {"inferwatch.io/scrape": "true"}


@pytest.fixture
async def stubs() -> AsyncIterator[Callable[[str], Any]]:
    servers: list[TestServer] = []

    async def start(fixture: str) -> int:
        server = TestServer(EngineStub(fixture).app(), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return int(server.port)  # type: ignore[arg-type]

    yield start
    for server in servers:
        await server.close()


async def refresh_until(
    c: LlmCollector, done: Callable[[list[Sample]], bool], attempts: int = 100
) -> list[Sample]:
    samples: list[Sample] = []
    for _ in range(attempts):
        async with asyncio.timeout(c.settings.timeout_seconds):
            try:
                families = await c.update()
            except NoDataError:  # no pods discovered (yet)
                families = []
        samples = [(s.name, dict(s.labels), s.value) for f in families for s in f.samples]
        if done(samples):
            return samples
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not reached; last targets: {targets(samples)}")


def targets(samples: list[Sample]) -> set[str]:
    return {labels["target"] for name, labels, _ in samples if name == "inferwatch_llm_up"}


async def test_pods_on_this_node_are_discovered_and_followed(
    tmp_path: Path, stubs: Callable[[str], Any]
) -> None:
    vllm_port, tgi_port = await stubs("vllm-3"), await stubs("llamacpp-b11434")
    async with FakeKubeApi() as api, aiohttp.ClientSession() as http:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        engine_label = {"inference.networking.k8s.io/engine-type": "vllm", **SELECT}
        api.put_pod(
            engine_pod(
                "vllm-0",
                namespace="llm",
                ip="127.0.0.1",
                labels=engine_label,
                ports={"metrics": 1, "http": vllm_port},
            )
        )
        api.put_pod(
            engine_pod(
                "elsewhere", node="node-b", ip="127.0.0.2", labels=SELECT, ports={"http": vllm_port}
            )
        )
        api.put_pod(engine_pod("unlabelled", ip="127.0.0.3", ports={"http": vllm_port}))
        api.put_pod(
            engine_pod(
                "starting", ip=None, phase="Pending", labels=SELECT, ports={"http": vllm_port}
            )
        )
        settings = LlmSettings.model_validate(
            {
                "timeout_seconds": 5,
                "target_timeout_seconds": 1,
                "kubernetes": {
                    "enabled": True,
                    "node_name": "node-a",
                    "kubeconfig": str(kubeconfig),
                },
            }
        )
        c = LlmCollector(settings, CollectorContext(http=http, nvml=None))  # type: ignore[arg-type]
        await c.start()
        try:
            vllm_target = f"127.0.0.1:{vllm_port}"
            samples = await refresh_until(c, lambda s: targets(s) == {vllm_target})
            running = [(lbl, v) for n, lbl, v in samples if n == "inferwatch_llm_requests_running"]
            assert [lbl["namespace"] for lbl, _ in running] == ["llm"]
            assert [lbl["pod"] for lbl, _ in running] == ["vllm-0"]
            assert running[0][1] == total(
                raw_samples(fixture_text("vllm-3")), "vllm:num_requests_running"
            )

            # The watch follows changes: a new engine pod appears, a deleted one disappears.
            api.put_pod(
                engine_pod(
                    "llama-0",
                    namespace="llm",
                    ip="127.0.0.1",
                    labels=SELECT,
                    annotations={"inferwatch.io/port": str(tgi_port)},
                )
            )
            llama_target = f"127.0.0.1:{tgi_port}"
            samples = await refresh_until(c, lambda s: targets(s) == {vllm_target, llama_target})
            engines = {
                lbl["target"]: lbl["engine"] for n, lbl, _ in samples if n == "inferwatch_llm_up"
            }
            assert engines == {vllm_target: "vllm", llama_target: "llamacpp"}
            api.remove_pod("llm", "vllm-0")
            await refresh_until(c, lambda s: targets(s) == {llama_target})
        finally:
            await c.close()

        pod_requests = [r for r in api.requests if r.path == "/api/v1/pods"]
        assert pod_requests, "the client must list pods across namespaces"
        for request in pod_requests:
            assert request.query["fieldSelector"] == "spec.nodeName=node-a"
            assert request.query["labelSelector"] == "inferwatch.io/scrape=true"
        assert any(r.query.get("watch", "").lower() == "true" for r in pod_requests)
        lists = [r for r in pod_requests if r.query.get("watch", "").lower() != "true"]
        assert len(lists) == 1, "one list, then the watch follows every change (no relisting)"


async def test_without_a_node_name_discovery_stays_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("NODE_NAME", raising=False)
    async with FakeKubeApi() as api, aiohttp.ClientSession() as http:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        settings = LlmSettings.model_validate(
            {"kubernetes": {"enabled": True, "kubeconfig": str(kubeconfig)}}
        )
        c = LlmCollector(settings, CollectorContext(http=http, nvml=None))  # type: ignore[arg-type]
        await c.start()
        for _ in range(3):  # every refresh: no targets, and no new error line
            with pytest.raises(NoDataError, match="no_targets"):
                await c.update()
        await c.close()
    assert api.requests == []
    assert caplog.text.count("node name unknown") == 1
