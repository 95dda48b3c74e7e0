"""The canary probe: a tiny streaming chat completion through the engine's OpenAI-compatible API.

It measures what users feel (time to first token, total time) even on engines that export no
latency histogram, and catches an engine whose /metrics answers while generation is stuck.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from exporter.engines.settings import CanarySettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeResult:
    success: bool
    ttft_seconds: float | None = None
    duration_seconds: float | None = None
    error: str | None = None


def _has_token(chunk: Any) -> bool:
    """A chunk carrying generated text (the first chunk often carries only the role)."""
    if not isinstance(chunk, dict):
        return False
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict) and (delta.get("content") or delta.get("reasoning_content")):
            return True
        if choice.get("text"):
            return True
    return False


async def probe(
    session: aiohttp.ClientSession, url: str, model: str | None, settings: CanarySettings
) -> ProbeResult:
    """One streaming completion; never raises (a failure is a result)."""
    body = {
        "model": settings.model or model or "default",
        "messages": [{"role": "user", "content": settings.prompt}],
        "max_tokens": settings.max_tokens,
        "temperature": 0,
        "stream": True,
    }
    started = time.monotonic()
    ttft: float | None = None
    try:
        async with asyncio.timeout(settings.timeout_seconds), session.post(url, json=body) as resp:
            if resp.status != 200:
                return ProbeResult(False, error=f"HTTP {resp.status}")
            done = False
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                if ttft is None and _has_token(json.loads(data)):
                    ttft = time.monotonic() - started
    except TimeoutError:
        return ProbeResult(False, error=f"no complete answer in {settings.timeout_seconds}s")
    except (aiohttp.ClientError, ValueError, RecursionError, OSError) as exc:  # deep JSON too
        return ProbeResult(False, error=f"{type(exc).__name__}: {exc}")
    if ttft is None:
        return ProbeResult(False, error="stream ended without a token")
    if not done:
        return ProbeResult(False, ttft, error="stream ended without [DONE]")
    return ProbeResult(True, ttft, time.monotonic() - started)


class Canary:
    """Probes one target every interval in the background; `last` is what gets published."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        settings: CanarySettings,
        model: str | None,
        target: str,
    ) -> None:
        self.session = session
        self.url = url
        self.settings = settings
        self.model = model
        self.target = target
        self.last: ProbeResult | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"canary {self.target}")

    async def _loop(self) -> None:
        while True:
            result = await probe(self.session, self.url, self.model, self.settings)
            if not result.success and (self.last is None or self.last.success):
                log.warning("canary %s: probe failed: %s", self.target, result.error)
            elif result.success and self.last is not None and not self.last.success:
                log.info("canary %s: probe succeeds again", self.target)
            self.last = result
            await asyncio.sleep(self.settings.interval_seconds)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
