"""The llm collector against engine HTTP servers on 127.0.0.1: concurrent scrapes, a hung or
broken engine costs only its own series, file_sd reloads, the cardinality cap holds."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer
from prometheus_client.core import Metric

from exporter.collectors.base import CollectorContext, NoDataError
from exporter.collectors.llm import LlmCollector, LlmSettings
from exporter.settings import ConfigError, load_settings
from harness.engine_stub import EngineStub
from harness.wait import eventually_async
from tests.engines.conftest import fixture_text, raw_samples, total

Sample = tuple[str, dict[str, str], float]
StartStub = Callable[[EngineStub], Awaitable[str]]


@pytest.fixture
async def start_stub() -> AsyncIterator[StartStub]:
    servers: list[TestServer] = []

    async def start(stub: EngineStub) -> str:
        server = TestServer(stub.app(), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return f"127.0.0.1:{server.port}"

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def collector(http: aiohttp.ClientSession, **settings: Any) -> LlmCollector:
    defaults: dict[str, Any] = {"timeout_seconds": 5.0, "target_timeout_seconds": 0.5}
    cfg = LlmSettings.model_validate({**defaults, **settings})
    return LlmCollector(cfg, CollectorContext(http=http, nvml=None))  # type: ignore[arg-type]


def flat(families: list[Metric] | Any) -> list[Sample]:
    return [(s.name, dict(s.labels), s.value) for f in families for s in f.samples]


def of_target(samples: list[Sample], target: str) -> list[Sample]:
    return [s for s in samples if s[1].get("target") == target]


async def update(c: LlmCollector) -> list[Sample]:
    # The scheduler runs update() under the collector's timeout; so do we. No targets: no data.
    async with asyncio.timeout(c.settings.timeout_seconds):
        try:
            return flat(await c.update())
        except NoDataError:
            return []


async def test_hung_engine_is_down_within_its_timeout_and_others_stay_fresh(
    http: aiohttp.ClientSession, start_stub: StartStub, caplog: pytest.LogCaptureFixture
) -> None:
    good = EngineStub("llamacpp-1")
    hung = EngineStub("vllm-3", mode="hang")
    good_addr, hung_addr = await start_stub(good), await start_stub(hung)
    c = collector(
        http,
        targets=[
            {"url": f"http://{good_addr}", "model": "tiny"},
            {"url": f"http://{hung_addr}/metrics"},
        ],
    )
    with caplog.at_level(logging.WARNING, logger="exporter.collectors.llm"):
        first = await update(c)  # under the collector's 5 s timeout, as the scheduler runs it
    # The hung target was cut by its own 0.5 s timeout, not by the collector's (which would
    # have failed the whole update): the stub hangs for an hour.
    assert f"llm target {hung_addr}: down: no answer within 0.5s" in caplog.messages
    assert total(of_target(first, hung_addr), "inferwatch_llm_up") == 0
    assert {s[0] for s in of_target(first, hung_addr)} <= {
        "inferwatch_llm_up",
        "inferwatch_llm_healthy",
        "inferwatch_llm_dropped_series_total",
    }
    good_raw = raw_samples(fixture_text("llamacpp-1"))
    assert total(of_target(first, good_addr), "inferwatch_llm_up") == 1
    assert total(of_target(first, good_addr), "inferwatch_llm_generation_tokens_total") == total(
        good_raw, "llamacpp:tokens_predicted_total"
    )

    good.fixture = "llamacpp-b11434"  # the engine moved on; the next refresh must show it
    second = await update(c)
    assert total(of_target(second, good_addr), "inferwatch_llm_generation_tokens_total") == total(
        raw_samples(fixture_text("llamacpp-b11434")), "llamacpp:tokens_predicted_total"
    )
    assert total(of_target(second, hung_addr), "inferwatch_llm_up") == 0
    assert good.metrics_requests == 2
    await c.close()


@pytest.mark.parametrize("mode", ["html", "error"])
async def test_html_or_error_response_is_down_not_a_crash(
    mode: str, http: aiohttp.ClientSession, start_stub: StartStub
) -> None:
    broken, good = EngineStub("vllm-3", mode=mode), EngineStub("vllm-1")
    broken_addr, good_addr = await start_stub(broken), await start_stub(good)
    c = collector(http, targets=[{"url": f"http://{broken_addr}"}, {"url": f"http://{good_addr}"}])
    samples = await update(c)
    assert total(of_target(samples, broken_addr), "inferwatch_llm_up") == 0
    assert total(of_target(samples, good_addr), "inferwatch_llm_up") == 1
    assert total(of_target(samples, good_addr), "inferwatch_llm_requests_waiting") == total(
        raw_samples(fixture_text("vllm-1")), "vllm:num_requests_waiting"
    )


async def test_truncated_response_drops_the_cut_sample_and_counts_it(
    http: aiohttp.ClientSession, start_stub: StartStub
) -> None:
    addr = await start_stub(EngineStub("vllm-3", mode="truncated"))
    c = collector(http, targets=[{"url": f"http://{addr}"}])
    samples = await update(c)
    assert total(samples, "inferwatch_llm_up") == 1
    assert total(samples, "inferwatch_llm_dropped_series_total", reason="invalid") == 1


async def test_unhealthy_engine_and_model_from_info(
    http: aiohttp.ClientSession, start_stub: StartStub
) -> None:
    stub = EngineStub(
        "tgi-1",
        healthy=False,
        info={"model_id": "teknium/OpenHermes-2.5-Mistral-7B", "version": "3.3.5"},
    )
    addr = await start_stub(stub)
    c = collector(http, targets=[{"url": f"http://{addr}", "engine": "tgi"}])
    samples = await update(c)
    assert total(samples, "inferwatch_llm_up") == 1
    assert total(samples, "inferwatch_llm_healthy") == 0
    assert {s[1]["model"] for s in samples if s[0] == "inferwatch_llm_requests_running"} == {
        "teknium/OpenHermes-2.5-Mistral-7B"
    }
    assert total(samples, "inferwatch_llm_engine_info", engine_version="3.3.5") == 1


async def test_file_sd_is_reread_when_it_changes(
    http: aiohttp.ClientSession, start_stub: StartStub, tmp_path: Path
) -> None:
    first, second = await start_stub(EngineStub("vllm-3")), await start_stub(EngineStub("sglang-2"))
    sd = tmp_path / "engines.json"
    sd.write_text(json.dumps([{"targets": [first], "labels": {"engine": "vllm", "replica": "a"}}]))
    c = collector(http, file_sd=[str(sd)])
    samples = await update(c)
    assert {s[1]["target"] for s in samples} == {first}

    sd.write_text(
        yaml.safe_dump([{"targets": [first, second], "labels": {"model": "fallback-name"}}])
    )
    samples = await update(c)
    assert {s[1]["target"] for s in samples} == {first, second}
    engines = {s[1]["target"]: s[1]["engine"] for s in samples if s[0] == "inferwatch_llm_up"}
    assert engines == {first: "vllm", second: "sglang"}

    sd.write_text("[{targets: [")  # a half-written edit keeps the last good list
    samples = await update(c)
    assert {s[1]["target"] for s in samples} == {first, second}

    sd.unlink()
    assert await update(c) == []


async def test_cardinality_cap_keeps_whole_groups_and_counts_the_rest(
    http: aiohttp.ClientSession, start_stub: StartStub
) -> None:
    addr = await start_stub(EngineStub("tgi-1"))
    uncapped = await update(collector(http, targets=[{"url": f"http://{addr}"}]))
    c = collector(http, targets=[{"url": f"http://{addr}"}], max_series_per_target=40)
    capped = await update(c)
    catalog = [s for s in capped if s[0] not in _STATUS]
    all_catalog = [s for s in uncapped if s[0] not in _STATUS]
    assert len(catalog) <= 40
    dropped = total(capped, "inferwatch_llm_dropped_series_total", reason="cardinality")
    assert dropped == len(all_catalog) - len(catalog) > 0
    # A group (a histogram's buckets, sum and count) is kept whole or not at all.
    kept, full = group_sizes(catalog), group_sizes(all_catalog)
    assert kept and all(kept[key] == full[key] for key in kept)
    again = await update(c)
    assert total(again, "inferwatch_llm_dropped_series_total", reason="cardinality") == 2 * dropped


def group_sizes(samples: list[Sample]) -> dict[tuple[str, tuple[tuple[str, str], ...]], int]:
    sizes: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
    for name, labels, _ in samples:
        base = name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
        key = (base, tuple(sorted((k, v) for k, v in labels.items() if k != "le")))
        sizes[key] = sizes.get(key, 0) + 1
    return sizes


_STATUS = {
    "inferwatch_llm_up",
    "inferwatch_llm_healthy",
    "inferwatch_llm_engine_info",
    "inferwatch_llm_mapping_missing",
    "inferwatch_llm_dropped_series_total",
}


async def test_failed_canary_is_published_as_failure(
    http: aiohttp.ClientSession, start_stub: StartStub
) -> None:
    addr = await start_stub(EngineStub("llamacpp-b11434"))  # no completion endpoint: 404
    c = collector(
        http,
        targets=[{"url": f"http://{addr}"}],
        canary={"enabled": True, "interval_seconds": 0.05, "timeout_seconds": 1},
    )
    await update(c)
    for _ in range(100):
        samples = await update(c)
        if any(s[0] == "inferwatch_llm_probe_success" for s in samples):
            break
        await asyncio.sleep(0.02)
    assert total(samples, "inferwatch_llm_probe_success") == 0
    assert not any(s[0] == "inferwatch_llm_probe_ttft_seconds" for s in samples)
    await c.close()


async def test_big_expositions_go_to_a_process_with_the_same_result_and_survive_its_death(
    http: aiohttp.ClientSession, start_stub: StartStub, caplog: pytest.LogCaptureFixture
) -> None:
    addr = await start_stub(EngineStub("vllm-3"))
    targets = [{"url": f"http://{addr}"}]
    expected = await update(collector(http, targets=targets))  # a small exposition: the thread
    c = collector(http, targets=targets, process_normalize_bytes=0, target_timeout_seconds=4.0)
    before = set(multiprocessing.active_children())
    try:
        first = await update(c)  # on the thread, while the process starts
        await eventually_async(lambda: c._normalizer.ready, 30, "normalizer process ready")
        (worker,) = set(multiprocessing.active_children()) - before
        second = await update(c)
        catalog = [sorted((s for s in r if s[0] not in _STATUS), key=repr) for r in (first, second)]
        assert (
            catalog[0]
            == catalog[1]
            == sorted((s for s in expected if s[0] not in _STATUS), key=repr)
        )
        assert total(second, "inferwatch_llm_engine_info") == 1  # specs came back as themselves

        os.kill(worker.pid, signal.SIGKILL)  # the OOM killer's way
        with caplog.at_level(logging.WARNING, logger="exporter"):
            died = await update(c)
        assert total(died, "inferwatch_llm_up") == 0
        assert any("normalizer process died" in m for m in caplog.messages)
        again = await update(c)  # on the thread again, while a new process starts
        assert total(again, "inferwatch_llm_up") == 1
        assert sorted((s for s in again if s[0] not in _STATUS), key=repr) == catalog[0]
    finally:
        await c.close()
    await eventually_async(lambda: not set(multiprocessing.active_children()) - before, 30)


def test_target_timeout_must_be_below_collector_timeout(tmp_path: Path) -> None:
    cfg = tmp_path / "llm.yaml"
    cfg.write_text("timeout_seconds: 2\ntarget_timeout_seconds: 5\n")
    with pytest.raises(ConfigError, match="target_timeout_seconds"):
        load_settings(LlmSettings, cfg, env_prefix="X_")


def test_bad_target_url_is_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "llm.yaml"
    cfg.write_text("targets:\n  - url: ftp://engine\n")
    with pytest.raises(ConfigError, match=r"targets\.0\.url"):
        load_settings(LlmSettings, cfg, env_prefix="X_")
