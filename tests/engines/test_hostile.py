"""Issue 14, items 4-10: hostile and broken engines on 127.0.0.1 against the real llm collector,
using the exporter's own connection pool (`engine_connector`, as the app wires it). Each attack
that worked is replayed; the assertions are the safe behaviour: a capped read, `up 0` with a
reason an operator can act on, a counter, and healthy targets that stay fresh."""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from exporter.collectors.base import CollectorContext, NoDataError
from exporter.collectors.llm import LlmCollector, LlmSettings
from exporter.engines.fetch import MAX_INFO_BYTES, MAX_REDIRECTS, engine_connector
from exporter.engines.parser import MAX_LINE_CHARS
from tests.engines.conftest import fixture_text

Sample = tuple[str, dict[str, str], float]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Serve = Callable[[dict[str, Handler]], Awaitable[str]]

UP = "inferwatch_llm_up"
DROPPED = "inferwatch_llm_dropped_series_total"


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start an engine on 127.0.0.1 with the given routes; returns host:port."""
    servers: list[TestServer] = []

    async def start(routes: dict[str, Handler]) -> str:
        app = web.Application()
        for path, handler in routes.items():
            app.router.add_get(path, handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return f"127.0.0.1:{server.port}"

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=engine_connector()) as session:
        yield session


def collector(http: aiohttp.ClientSession, **settings: Any) -> LlmCollector:
    defaults: dict[str, Any] = {"timeout_seconds": 5.0, "target_timeout_seconds": 1.0}
    cfg = LlmSettings.model_validate({**defaults, **settings})
    return LlmCollector(cfg, CollectorContext(http=http, nvml=None))  # type: ignore[arg-type]


async def update(c: LlmCollector) -> list[Sample]:
    async with asyncio.timeout(c.settings.timeout_seconds):
        return [(s.name, dict(s.labels), s.value) for f in await c.update() for s in f.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [v for n, lab, v in samples if n == name and labels.items() <= lab.items()]
    assert len(found) == 1, f"{name} {labels}: {found}"
    return found[0]


def text_handler(text: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=text, content_type="text/plain")

    return handler


async def ok_health(request: web.Request) -> web.Response:
    return web.Response(text="{}")


def engine(metrics: str, **more: Handler) -> dict[str, Handler]:
    return {"/metrics": text_handler(metrics), "/health": ok_health, **more}


def log_lines(caplog: pytest.LogCaptureFixture, target: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if target in r.getMessage()]


def peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def test_info_endpoint_endless_body_and_gzip_bomb_are_cut_at_the_cap(
    http: aiohttp.ClientSession, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 4: /props answering forever, or 512 MiB of zeros gzipped into 500 KiB."""

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"model_alias": "')
        for _ in range(16 * 1024):  # 1 GiB at most; the exporter hangs up long before
            await response.write(b"x" * 65536)
        return response

    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    body = b"".join(bomb.compress(zeros) for _ in range(512)) + bomb.flush()

    async def gzip_bomb(request: web.Request) -> web.Response:
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        return web.Response(body=body, headers=headers)

    metrics = fixture_text("llamacpp-1")
    endless_addr = await serve(engine(metrics, **{"/props": endless}))
    bomb_addr = await serve(engine(metrics, **{"/props": gzip_bomb}))
    c = collector(http, targets=[{"url": f"http://{endless_addr}"}, {"url": f"http://{bomb_addr}"}])
    before = peak_rss_kib()
    with caplog.at_level(logging.WARNING):
        samples = await update(c)
    assert peak_rss_kib() - before < 64 * 1024, "reading the info endpoints grew the peak RSS"
    for addr in (endless_addr, bomb_addr):
        assert value(samples, UP, target=addr) == 1  # /metrics is fine: the engine is up
        assert value(samples, "inferwatch_llm_engine_info", target=addr, model="") == 1
        [line] = log_lines(caplog, addr)
        assert f"info endpoint: response from http://{addr}/props larger than" in line
        assert str(MAX_INFO_BYTES) in line


async def test_200k_series_from_one_target_stop_the_parse_and_are_capped(
    http: aiohttp.ClientSession, serve: Serve
) -> None:
    """Item 5: 200k distinct models on one engine, next to a healthy one."""
    flood = "".join(f'vllm:num_requests_running{{model_name="m{i}"}} 1\n' for i in range(200_000))
    flood_addr = await serve(engine(flood))
    good_addr = await serve(engine(fixture_text("llamacpp-1")))
    c = collector(
        http,
        targets=[{"url": f"http://{flood_addr}"}, {"url": f"http://{good_addr}", "model": "tiny"}],
        max_series_per_target=1000,
        max_parsed_samples_per_target=4000,
    )
    samples = await update(c)
    flood_series = [s for s in samples if s[1].get("target") == flood_addr]
    infos = [s for s in flood_series if s[0] == "inferwatch_llm_engine_info"]
    running = [s for s in flood_series if s[0] == "inferwatch_llm_requests_running"]
    assert len(infos) + len(running) <= 1000
    assert value(samples, UP, target=flood_addr) == 1
    # Everything past the cap is counted: what was parsed (4000 models: as many engine_info and
    # requests_running series) beyond the 1000 kept, and the 196,000 lines never parsed.
    kept = len(infos) + len(running)
    dropped = value(samples, DROPPED, target=flood_addr, reason="cardinality")
    assert dropped == 2 * 4000 - kept + 196_000
    assert value(samples, UP, target=good_addr) == 1
    assert value(samples, "inferwatch_llm_requests_running", target=good_addr) >= 0
    await c.close()  # the flood started the normalizer process


async def test_megabyte_label_values_are_dropped_unparsed(
    http: aiohttp.ClientSession, serve: Serve
) -> None:
    """Item 6: 15 lines each carrying a 1 MB label value."""
    huge = "".join(
        f'vllm:num_requests_running{{model_name="m",x="{"a" * 1_000_000}{i}"}} 9\n'
        for i in range(15)
    )
    text = f'vllm:num_requests_running{{model_name="m"}} 2\n{huge}'
    addr = await serve(engine(text))
    c = collector(http, targets=[{"url": f"http://{addr}"}])
    samples = await update(c)
    await c.close()  # 15 MB started the normalizer process
    assert value(samples, UP, target=addr) == 1
    assert value(samples, "inferwatch_llm_requests_running", target=addr, model="m") == 2
    assert value(samples, DROPPED, target=addr, reason="invalid") == 15
    assert MAX_LINE_CHARS < 1_000_000


async def test_a_whitespace_variant_of_a_series_is_a_duplicate_not_a_second_series(
    http: aiohttp.ClientSession, serve: Serve
) -> None:
    """Item 7: `{model_name ="x"}` next to `{model_name="x"}` doubled the sums."""
    text = (
        'vllm:num_requests_running{model_name="x"} 3\n'
        'vllm:num_requests_running{model_name ="x"} 3\n'
        'vllm:prompt_tokens_total{model_name="x"} 100\n'
        'vllm:prompt_tokens_total{ model_name = "x" , } 100\n'
    )
    addr = await serve(engine(text))
    samples = await update(collector(http, targets=[{"url": f"http://{addr}"}]))
    assert value(samples, "inferwatch_llm_requests_running", target=addr, model="x") == 3
    assert value(samples, "inferwatch_llm_prompt_tokens_total", target=addr, model="x") == 100
    assert value(samples, DROPPED, target=addr, reason="invalid") == 2


async def test_many_hung_engines_do_not_starve_healthy_ones(
    http: aiohttp.ClientSession, serve: Serve
) -> None:
    """Item 8: 150 engines that accept connections and never answer, listed first."""
    held: list[asyncio.StreamWriter] = []

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accept, read nothing, answer nothing

    hung = [await asyncio.start_server(hang, "127.0.0.1", 0) for _ in range(150)]
    try:
        hung_addrs = [f"127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in hung]
        good = [await serve(engine(fixture_text("llamacpp-1"))) for _ in range(2)]
        c = collector(
            http,
            targets=[{"url": f"http://{a}"} for a in [*hung_addrs, *good]],
            target_timeout_seconds=1.0,
        )
        for _ in range(3):
            samples = await update(c)
            assert [value(samples, UP, target=a) for a in good] == [1, 1]
            assert {value(samples, UP, target=a) for a in hung_addrs} == {0}
    finally:
        for writer in held:
            writer.close()
        for server in hung:
            server.close()
            await server.wait_closed()


async def test_an_empty_file_sd_file_keeps_the_last_targets(
    http: aiohttp.ClientSession, serve: Serve, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 9: an in-place rewrite is empty for an instant; the targets must not vanish."""
    addr = await serve(engine(fixture_text("llamacpp-1")))
    sd = tmp_path / "engines.json"
    sd.write_text(json.dumps([{"targets": [addr], "labels": {"engine": "llamacpp"}}]))
    c = collector(http, file_sd=[str(sd)])
    assert value(await update(c), UP, target=addr) == 1

    sd.write_text("")  # truncated, not yet rewritten
    with caplog.at_level(logging.WARNING):
        assert value(await update(c), UP, target=addr) == 1
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("file_sd")]
    assert "empty" in line and "keeping 1 targets" in line

    sd.write_text("[]\n")  # an explicit empty list does remove them
    with pytest.raises(NoDataError, match="no_targets"):
        await update(c)


async def test_health_loss_redirect_loops_and_file_urls_say_what_is_wrong(
    http: aiohttp.ClientSession, serve: Serve, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 10: /health going to 503 logged nothing; a redirect loop said "message=''"."""
    healthy = {"ok": True}

    async def health(request: web.Request) -> web.Response:
        return web.Response(status=200 if healthy["ok"] else 503, text="{}")

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/metrics")

    async def to_file(request: web.Request) -> web.Response:
        raise web.HTTPFound("file:///etc/passwd")

    sick = await serve(engine(fixture_text("llamacpp-1"), **{"/health": health}))
    looping = await serve({"/metrics": loop, "/health": ok_health})
    filed = await serve({"/metrics": to_file, "/health": ok_health})
    sd = tmp_path / "engines.yaml"
    sd.write_text(f"- targets: ['{sick}', '{looping}', '{filed}']\n")
    c = collector(http, file_sd=[str(sd)])
    with caplog.at_level(logging.INFO):
        await update(c)
        healthy["ok"] = False
        samples = await update(c)
        assert value(samples, "inferwatch_llm_healthy", target=sick) == 0
        assert value(samples, UP, target=looping) == 0

        sd.write_text(f"- targets: ['{sick}']\n  labels: {{__scheme__: file, engine: llamacpp}}\n")
        await update(c)
    messages = [r.getMessage() for r in caplog.records]
    assert f"llm target {sick}: unhealthy: HTTP 503 from http://{sick}/health" in messages
    assert (
        f"file_sd {sd}: target group [0]: __scheme__ 'file' is not http or https, keeping 3 targets"
        in (messages)
    )
    [down] = log_lines(caplog, f"llm target {looping}: down")
    assert f"redirect loop: more than {MAX_REDIRECTS} redirects" in down
    assert f"http://{looping}/metrics" in down
    [down] = log_lines(caplog, f"llm target {filed}: down")
    assert down.endswith("redirected to file:///etc/passwd, not a valid http(s) URL (not followed)")
