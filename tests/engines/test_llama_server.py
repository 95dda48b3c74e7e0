"""A real llama.cpp llama-server (SmolLM2-135M on CPU): real completions, then the exporter's
normalized counters and gauges must equal what the engine says on its own /metrics, and the
canary probe must measure a time to first token."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from exporter.collectors.base import CollectorContext
from exporter.collectors.llm import LlmCollector, LlmSettings
from harness.services import free_port, llama_server, llama_server_binary, smollm2_model
from tests.engines.conftest import raw_samples, total

pytestmark = pytest.mark.integration

Sample = tuple[str, dict[str, str], float]


@pytest.fixture(scope="module")
def engine_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model = smollm2_model()
    if llama_server_binary() is None or model is None:
        pytest.skip("llama-server or the SmolLM2 model is not installed; run ./run setup")
    port = free_port()
    with llama_server(model, tmp_path_factory.mktemp("llama"), port):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def make_collector(http: aiohttp.ClientSession, **settings: Any) -> LlmCollector:
    cfg = LlmSettings.model_validate(
        {"timeout_seconds": 10, "target_timeout_seconds": 5, **settings}
    )
    return LlmCollector(cfg, CollectorContext(http=http, nvml=None))  # type: ignore[arg-type]


async def normalized(c: LlmCollector) -> list[Sample]:
    async with asyncio.timeout(c.settings.timeout_seconds):
        families = await c.update()
    return [(s.name, dict(s.labels), s.value) for f in families for s in f.samples]


async def engine_metrics(http: aiohttp.ClientSession, url: str) -> list[Sample]:
    async with http.get(url + "/metrics") as resp:
        return raw_samples(await resp.text())


async def complete(
    http: aiohttp.ClientSession, url: str, prompt: str, tokens: int
) -> dict[str, Any]:
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "ignore_eos": True,  # llama.cpp: generate exactly max_tokens, so load lasts
        "temperature": 0,
    }
    async with http.post(url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        result: dict[str, Any] = await resp.json()
        return result


async def test_token_counters_match_the_engine(
    engine_url: str, http: aiohttp.ClientSession
) -> None:
    c = make_collector(http, targets=[{"url": engine_url}])
    before = await engine_metrics(http, engine_url)
    answers = [await complete(http, engine_url, f"Count to {n}.", 8) for n in range(3)]
    samples = await normalized(c)
    after = await engine_metrics(http, engine_url)

    assert total(samples, "inferwatch_llm_up") == 1
    assert total(samples, "inferwatch_llm_healthy") == 1
    labels = next(
        lbl for name, lbl, _ in samples if name == "inferwatch_llm_generation_tokens_total"
    )
    assert labels["engine"] == "llamacpp"
    assert labels["model"] == smollm2_model().name  # type: ignore[union-attr]  # from /props
    for ours, theirs in [
        ("inferwatch_llm_generation_tokens_total", "llamacpp:tokens_predicted_total"),
        ("inferwatch_llm_prompt_tokens_total", "llamacpp:prompt_tokens_total"),
        ("inferwatch_llm_prefix_cache_hits_tokens_total", "llamacpp:prompt_tokens_cached_total"),
        ("inferwatch_llm_inter_token_latency_seconds_count", "llamacpp:tokens_predicted_total"),
    ]:
        assert total(samples, ours) == total(after, theirs)
    generated = sum(a["usage"]["completion_tokens"] for a in answers)
    assert (
        total(samples, "inferwatch_llm_generation_tokens_total")
        - total(before, "llamacpp:tokens_predicted_total")
        == generated
    )
    await c.close()


async def test_running_and_waiting_gauges_match_the_engine(
    engine_url: str, http: aiohttp.ClientSession
) -> None:
    """Four long requests on two slots: two run, two wait. Compare inside a window where the
    engine's own gauges read the same before and after our scrape."""
    c = make_collector(http, targets=[{"url": engine_url}])
    load = [asyncio.create_task(complete(http, engine_url, f"Story {n}", 24)) for n in range(4)]
    matched = None
    try:
        for _ in range(200):
            before = await engine_metrics(http, engine_url)
            samples = await normalized(c)
            after = await engine_metrics(http, engine_url)
            gauges = ("llamacpp:requests_processing", "llamacpp:requests_deferred")
            stable = all(total(before, g) == total(after, g) for g in gauges)
            busy = all(total(after, g) > 0 for g in gauges)
            if stable and busy:
                matched = (samples, after)
                break
            await asyncio.sleep(0.05)
    finally:
        await asyncio.gather(*load, return_exceptions=True)
    assert matched is not None, "never saw a stable moment with requests running and waiting"
    samples, engine = matched
    assert total(samples, "inferwatch_llm_requests_running") == total(
        engine, "llamacpp:requests_processing"
    )
    assert total(samples, "inferwatch_llm_requests_waiting") == total(
        engine, "llamacpp:requests_deferred"
    )
    await c.close()


async def test_canary_probe_measures_time_to_first_token(
    engine_url: str, http: aiohttp.ClientSession
) -> None:
    c = make_collector(
        http,
        targets=[{"url": engine_url}],
        canary={"enabled": True, "interval_seconds": 0.5, "timeout_seconds": 8},
    )
    samples: list[Sample] = []
    for _ in range(100):
        samples = await normalized(c)
        if any(name == "inferwatch_llm_probe_success" for name, _, _ in samples):
            break
        await asyncio.sleep(0.1)
    await c.close()
    assert total(samples, "inferwatch_llm_probe_success") == 1
    ttft = total(samples, "inferwatch_llm_probe_ttft_seconds")
    duration = total(samples, "inferwatch_llm_probe_duration_seconds")
    assert 0 < ttft <= duration
