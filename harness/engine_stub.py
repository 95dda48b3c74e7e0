"""A stand-in engine HTTP server on 127.0.0.1 that replays real captures from
tests/fixtures/engines (each with a .source saying where it was recorded).

It serves a capture's text as /metrics (never invented text), plus /health and an info
endpoint, and can misbehave the ways real engines and proxies do: hang mid-response, answer
HTML, cut the body short, answer 503.

With `requests_per_second` set it replays the capture as a live engine: every counter sample
(and a histogram's or summary's _bucket/_count/_sum) is the captured value times a factor that
grows with time, so rates, latency quantiles and ratios read from the capture's own
distribution; gauges stay as captured. The factor grows at a varying pace (a slow swell around
the given mean), so rates move like real traffic. Run one as a process with
`python -m harness.engine_stub vllm-3 PORT --requests-per-second 2`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "engines"
Mode = str  # "ok" | "hang" | "html" | "truncated" | "error"
TYPE_LINE = re.compile(r"# TYPE (\S+) (\w+)")
CUMULATIVE_SUFFIXES = ("_bucket", "_count", "_sum")
SWELL_SECONDS = 40.0  # one slow rise and fall of the replayed traffic
SWELL_DEPTH = 0.6  # the pace swings between 40 % and 160 % of the mean (always advancing)


def fixture_text(name: str) -> str:
    return (FIXTURES / f"{name}.txt").read_text(encoding="utf-8")


def _split_sample(line: str) -> tuple[str, str, str] | None:
    """(name, series, rest) of a sample line: rest is the value and an optional timestamp."""
    if not line or line.startswith("#"):
        return None
    end = line.rfind("}") + 1 if "{" in line else line.find(" ")
    if end <= 0:
        return None
    series, rest = line[:end], line[end:].strip()
    name = series.split("{", 1)[0]
    return name, series, rest


def cumulative_lines(text: str) -> set[int]:
    """Indexes of the lines holding cumulative samples: counters and histogram/summary
    _bucket/_count/_sum (never _created, a timestamp, nor a quantile, a gauge)."""
    kinds: dict[str, str] = {}
    found = set()
    for index, line in enumerate(text.split("\n")):
        if match := TYPE_LINE.match(line):
            kinds[match.group(1)] = match.group(2)
            continue
        parts = _split_sample(line)
        if parts is None:
            continue
        name = parts[0]
        if kinds.get(name) == "counter" or kinds.get(name.removesuffix("_total")) == "counter":
            found.add(index)
            continue
        for suffix in CUMULATIVE_SUFFIXES:
            family = name.removesuffix(suffix)
            if name.endswith(suffix) and kinds.get(family) in ("histogram", "summary"):
                found.add(index)
    return found


def captured_requests(text: str) -> float:
    """How many requests the capture counts (its e2e latency histogram), at least 1."""
    total = 0.0
    for line in text.split("\n"):
        parts = _split_sample(line)
        if parts and parts[0].endswith("e2e_request_latency_seconds_count"):
            total += float(parts[2].split()[0])
    return max(1.0, total)


def swell(elapsed: float) -> float:
    """Seconds of traffic at the mean pace replayed after `elapsed` seconds (monotonic)."""
    w = 2 * math.pi / SWELL_SECONDS
    return elapsed + SWELL_DEPTH / w * math.sin(w * elapsed)


@dataclass
class EngineStub:
    fixture: str
    mode: Mode = "ok"
    healthy: bool = True
    info: dict[str, Any] = field(default_factory=dict)
    info_path: str = "/info"
    requests_per_second: float | None = None  # None: the capture, byte for byte
    clock: Callable[[], float] = time.monotonic
    metrics_requests: int = 0

    def __post_init__(self) -> None:
        self.started = self.clock()
        self._loaded = ""
        self._load()

    def _load(self) -> None:
        """(Re)read the capture: a test may switch `fixture` to show the engine moved on."""
        if self._loaded != self.fixture:
            self.text = fixture_text(self.fixture)
            self._cumulative = cumulative_lines(self.text)
            self._per_second = (self.requests_per_second or 0.0) / captured_requests(self.text)
            self._loaded = self.fixture

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/health", self.health)
        app.router.add_get(self.info_path, self.info_handler)
        return app

    def exposition(self) -> str:
        """The capture, with its cumulative samples advanced to now."""
        self._load()
        if not self._per_second:
            return self.text
        factor = 1 + self._per_second * swell(self.clock() - self.started)
        lines = self.text.split("\n")
        for index in self._cumulative:
            parts = _split_sample(lines[index])
            assert parts is not None
            _, series, rest = parts
            value, *timestamp = rest.split()
            lines[index] = " ".join([series, repr(float(value) * factor), *timestamp])
        return "\n".join(lines)

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        self.metrics_requests += 1
        text = self.exposition()
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.engine_stub", description=__doc__)
    parser.add_argument("fixture", help="a capture in tests/fixtures/engines, e.g. vllm-3")
    parser.add_argument("port", type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--info-path", default="/info")
    parser.add_argument("--info", default="{}", help="JSON served at --info-path")
    parser.add_argument("--requests-per-second", type=float, default=None)
    args = parser.parse_args(argv)
    if not (FIXTURES / f"{args.fixture}.txt").is_file():
        parser.error(f"no capture {args.fixture!r} in {FIXTURES}")
    stub = EngineStub(
        args.fixture,
        info=json.loads(args.info),
        info_path=args.info_path,
        requests_per_second=args.requests_per_second,
    )
    web.run_app(stub.app(), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
