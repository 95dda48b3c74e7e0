"""The exporter app (built by create_app, as in production) serving simulated GPUs."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import create_app
from exporter.config import ExporterConfig
from exporter.simulate.fake_nvml import FakeGpu, FakeNvmlLib
from tests.support.catalog import ALWAYS_PUBLISHED

AiohttpClient = Callable[[web.Application], Any]
Client = TestClient[web.Request, web.Application]
GPU_CATALOG = sorted(name for name in ALWAYS_PUBLISHED if name.startswith("inferwatch_gpu_"))


def config(**overrides: Any) -> ExporterConfig:
    data: dict[str, Any] = {
        "listen": "127.0.0.1:9835",
        "collectors": {"gpu": {"interval_seconds": 0.1}},
    }
    data.update(overrides)
    return ExporterConfig.model_validate(data)


async def metrics_text(client: Client) -> str:
    resp = await client.get("/metrics")
    assert resp.status == 200
    return await resp.text()


def sample_names(text: str) -> set[str]:
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


async def until(client: Client, check: Callable[[str], bool], within: float = 10.0) -> str:
    """Scrape until the exposition satisfies `check` (bounded); return the last text."""
    deadline = asyncio.get_running_loop().time() + within
    text = await metrics_text(client)
    while not check(text) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
        text = await metrics_text(client)
    return text


@pytest.fixture
async def simulated(aiohttp_client: AiohttpClient) -> Client:
    client: Client = await aiohttp_client(create_app(config(simulate="default")))
    for _ in range(200):
        if (await client.get("/readyz")).status == 200:
            break
        await asyncio.sleep(0.05)
    return client


async def test_simulate_default_serves_every_gpu_metric_in_the_catalog(
    simulated: Client,
) -> None:
    text = await until(simulated, lambda t: set(GPU_CATALOG) <= sample_names(t))
    missing = set(GPU_CATALOG) - sample_names(text)
    assert not missing, f"catalog GPU metrics not served: {sorted(missing)}"


async def test_gzip_and_openmetrics_are_negotiated(simulated: Client) -> None:
    resp = await simulated.get(
        "/metrics",
        headers={
            "Accept": "application/openmetrics-text; version=1.0.0",
            "Accept-Encoding": "gzip",
        },
        auto_decompress=False,
    )
    assert resp.status == 200
    assert resp.headers["Content-Encoding"] == "gzip"
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    body = gzip.decompress(await resp.read()).decode()
    assert body.rstrip().endswith("# EOF")
    assert "inferwatch_gpu_up{" in body

    plain = await simulated.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert plain.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "Content-Encoding" not in plain.headers


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (./run setup)")
async def test_promtool_accepts_the_exposition(simulated: Client) -> None:
    text = await until(simulated, lambda t: "inferwatch_gpu_xid_errors_total{" in t)
    result = await asyncio.to_thread(
        subprocess.run,
        ["promtool", "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
    )
    # Clean: no parse error (rc 1) and no lint finding (rc 3) on the whole exposition,
    # the exporter's own process_* and nvml error series included.
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "" and result.stderr == ""


async def test_simulate_endpoint_injects_xid_loss_and_restore(simulated: Client) -> None:
    resp = await simulated.post("/-/simulate", json={"action": "xid", "gpu": 2, "xid": 48})
    assert resp.status == 200
    state = await resp.json()
    assert state["scenario"] == "default" and state["injected"][-1]["xid"] == 48
    await until(simulated, lambda t: 'gpu="2"' in t and 'xid="48"} 1.0' in t)
    assert 'xid="48"} 1.0' in await metrics_text(simulated)

    uuid = state["gpus"][1]["uuid"]
    await simulated.post("/-/simulate", json={"action": "lose_gpu", "gpu": 1})
    down = f'inferwatch_gpu_up{{gpu="1",uuid="{uuid}"}} 0.0'
    assert down in await until(simulated, lambda t: down in t)
    await simulated.post("/-/simulate", json={"action": "restore_gpu", "gpu": 1})
    up = f'inferwatch_gpu_up{{gpu="1",uuid="{uuid}"}} 1.0'
    assert up in await until(simulated, lambda t: up in t)

    resp = await simulated.post("/-/simulate", json={"action": "fragmentation", "mode": "creep"})
    assert (await resp.json())["fragmentation"] == "creep"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"action": "explode"}',
        b'{"action": "xid", "gpu": 9, "xid": 79}',
        b'{"action": "xid", "gpu": 0, "xid": "79"}',
        b'{"action": "lose_gpu", "gpu": true}',
        b'{"action": "fragmentation", "mode": "sideways"}',
    ],
)
async def test_simulate_endpoint_rejects_bad_input(simulated: Client, body: bytes) -> None:
    resp = await simulated.post("/-/simulate", data=body)
    assert resp.status == 400
    assert "error" in await resp.json()


async def test_simulate_endpoint_does_not_exist_outside_simulate_mode(
    aiohttp_client: AiohttpClient,
    install_fake: Callable[[list[FakeGpu]], FakeNvmlLib],
) -> None:
    install_fake([FakeGpu(uuid="GPU-a")])
    client: Client = await aiohttp_client(create_app(config()))
    resp = await client.post("/-/simulate", json={"action": "lose_gpu", "gpu": 0})
    assert resp.status in (404, 405)


async def test_readyz_waits_for_the_first_gpu_refresh(
    aiohttp_client: AiohttpClient,
    install_fake: Callable[[list[FakeGpu]], FakeNvmlLib],
) -> None:
    lib = install_fake([FakeGpu(uuid="GPU-a")])
    cfg = config(
        collectors={
            "gpu": {"interval_seconds": 0.1},
            "cuda_allocator": {"enabled": False},
            "llm": {"enabled": False},
        }
    )
    with lib.hang():  # the first NVML job is stuck in the driver
        client: Client = await aiohttp_client(create_app(cfg))
        resp = await client.get("/readyz")
        assert resp.status == 503
        assert "gpu" in await resp.text()
    for _ in range(200):
        if (await client.get("/readyz")).status == 200:
            break
        await asyncio.sleep(0.02)
    assert (await client.get("/readyz")).status == 200
    assert 'inferwatch_gpu_up{gpu="0",uuid="GPU-a"} 1.0' in await metrics_text(client)


async def test_a_node_without_nvml_is_no_data_not_a_failing_collector(
    aiohttp_client: AiohttpClient,
) -> None:
    """A CPU node (no driver, no libnvidia-ml): gpu has no data, nothing is "failing"."""
    import ctypes.util

    import pynvml

    if ctypes.util.find_library("nvidia-ml") is not None:
        pytest.skip("a real NVML is installed here")
    assert pynvml.nvmlLib is None
    client: Client = await aiohttp_client(create_app(config()))
    reason = 'collector_no_data{collector="gpu",reason="nvml_unavailable"} 1.0'
    text = await until(client, lambda t: reason in t)
    assert 'inferwatch_exporter_collector_success{collector="gpu"} 1.0' in text
    assert 'inferwatch_exporter_collector_errors_total{collector="gpu"} 0.0' in text
    assert 'inferwatch_exporter_collector_success{collector="llm"}' in text
    assert "inferwatch_exporter_build_info" in text
    assert "inferwatch_gpu_up" not in text
