"""A stand-in engine HTTP server on 127.0.0.1 that replays real captures from tests/fixtures.

It serves a capture's bytes as /metrics (never invented text), plus /health and an info
endpoint, and can misbehave the ways real engines and proxies do: hang mid-response, answer
HTML, cut the body short.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.engines.conftest import fixture_text

Mode = str  # "ok" | "hang" | "html" | "truncated" | "error"


@dataclass
class EngineStub:
    fixture: str
    mode: Mode = "ok"
    healthy: bool = True
    info: dict[str, Any] = field(default_factory=dict)
    info_path: str = "/info"
    metrics_requests: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/health", self.health)
        app.router.add_get(self.info_path, self.info_handler)
        return app

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        self.metrics_requests += 1
        text = fixture_text(self.fixture)
        if self.mode == "html":
            return web.Response(
                text="<html><body><h1>502 Bad Gateway</h1></body></html>", content_type="text/html"
            )
        if self.mode == "error":
            return web.Response(status=503, text="engine restarting\n")
        response = web.StreamResponse(headers={"Content-Type": "text/plain; version=0.0.4"})
        await response.prepare(request)
        if self.mode == "hang":
            await response.write(text[: len(text) // 2].encode())
            await asyncio.sleep(3600)
        if self.mode == "truncated":
            text = text[: len(text) - 3]
        await response.write(text.encode())
        await response.write_eof()
        return response

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.healthy else 503, text="{}")

    async def info_handler(self, request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(self.info), content_type="application/json")
