"""One closed-loop load generator speaking the OpenAI chat API to engines.

N workers each keep one request in flight, like N users who send the next message when the last
answer arrives. Each request goes to the target with the fewest of our requests in flight
(least-outstanding, what a router does). Targets are a fixed list or a file_sd file (the demo's
local-backend endpoint file), so scaling, draining and restarts change where traffic goes
exactly as they would behind a router.
A closed loop makes the queue deterministic: with N workers and S slots in total, N - S requests
wait, whatever the CPU speed of the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from harness.files import read_file_sd

PROMPTS = (
    "Write one sentence about GPUs.",
    "Name three colours of the sea.",
    "Describe a quiet morning in a few words.",
    "Give a short tip for writing tests.",
)


@dataclass(frozen=True)
class Sample:
    start: float  # monotonic seconds
    end: float
    target: str
    ok: bool

    @property
    def latency(self) -> float:
        return self.end - self.start


class LoadGenerator:
    def __init__(
        self,
        targets: Path | Sequence[str],
        *,
        max_tokens: int = 24,
        model: str = "demo",
        timeout: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint_file = targets if isinstance(targets, Path) else None
        self.max_tokens = max_tokens
        self.model = model
        self.timeout = timeout
        self.clock = clock
        self.samples: deque[Sample] = deque(maxlen=20000)
        self.in_flight: dict[str, int] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._targets: list[str] = [] if isinstance(targets, Path) else list(targets)
        self._targets_mtime = 0.0
        self._session: aiohttp.ClientSession | None = None
        self._prompts = itertools.cycle(PROMPTS)
        self._ids = itertools.count(1)

    @property
    def concurrency(self) -> int:
        return len(self._workers)

    async def __aenter__(self) -> LoadGenerator:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.set_concurrency(0)
        if self._session is not None:
            await self._session.close()

    async def set_concurrency(self, n: int) -> None:
        while len(self._workers) < n:
            self._workers.append(asyncio.create_task(self._worker()))
        extra = self._workers[n:]
        del self._workers[n:]
        for task in extra:
            task.cancel()
        for task in extra:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def targets(self) -> list[str]:
        if self.endpoint_file is None:
            return self._targets
        try:
            mtime = self.endpoint_file.stat().st_mtime
        except OSError:
            return self._targets
        if mtime != self._targets_mtime:
            found = [t for t, _ in read_file_sd(self.endpoint_file)]
            if found or not self._targets:
                self._targets = found
            self._targets_mtime = mtime
        return self._targets

    def _pick(self) -> str | None:
        targets = self.targets()
        if not targets:
            return None
        return min(targets, key=lambda t: self.in_flight.get(t, 0))

    async def _worker(self) -> None:
        assert self._session is not None
        while True:
            target = self._pick()
            if target is None:
                await asyncio.sleep(0.2)
                continue
            self.in_flight[target] = self.in_flight.get(target, 0) + 1
            start = self.clock()
            ok = False
            try:
                ok = await self._request(target)
            except (aiohttp.ClientError, TimeoutError, OSError):
                ok = False
            finally:
                self.in_flight[target] -= 1
                self.samples.append(Sample(start, self.clock(), target, ok))
            if not ok:
                await asyncio.sleep(0.2)  # a failing replica is not hammered in a tight loop

    async def _request(self, target: str) -> bool:
        assert self._session is not None
        body = {
            "model": self.model,
            # A fresh number up front keeps the engine's prefix cache from answering the prompt,
            # so prompt-token rates follow the request rate as with real users.
            "messages": [{"role": "user", "content": f"#{next(self._ids)} {next(self._prompts)}"}],
            "max_tokens": self.max_tokens,
            "temperature": 0.7,
        }
        async with self._session.post(f"http://{target}/v1/chat/completions", json=body) as resp:
            if resp.status != 200:
                return False
            data = await resp.json()
            return bool(data.get("choices"))

    # -- statistics over the last `window` seconds -----------------------------------------
    def recent(self, window: float) -> list[Sample]:
        since = self.clock() - window
        return [s for s in self.samples if s.end >= since]

    def p95(self, window: float = 10.0) -> float | None:
        lat = sorted(s.latency for s in self.recent(window) if s.ok)
        if not lat:
            return None
        return lat[min(len(lat) - 1, math.ceil(0.95 * len(lat)) - 1)]

    def rate(self, window: float = 10.0) -> float:
        return sum(1 for s in self.recent(window) if s.ok) / window

    def errors(self, window: float = 10.0) -> int:
        return sum(1 for s in self.recent(window) if not s.ok)
