"""Remediator webhook under load: 1,000 Alertmanager notifications/s for 10 s, slow actions.

The remediator runs as its real CLI in a subprocess on 127.0.0.1 with the local backend; every
action is a scale-up whose new replica takes a second to become ready, so the workers are busy
while the webhook keeps acknowledging. The load repeats 200 alert identities over 10 targets
(Alertmanager retries and HA double delivery), so exactly one action per target is correct.

The baseline, in the same run and with the same load: a bare aiohttp handler that reads the body
and answers 202, in its own subprocess served the way the remediator serves (asyncio.run, an
AppRunner without access log). The load alternates between the two every 100 ms (each gets
1,000/s while it is its turn, 10 s in all), so machine load moves both alike — the replicas the
first actions start take a second or two of both CPUs, which 2 s rounds left to whichever side
had that round — and their ratio is what compares across runs (design target: p99 within 2x of
the bare handler, and under 20 ms).

Prints one line: p99 ack latency and its ratio to the bare handler, actions taken, duplicates
(must be 0).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench import Ratio, Summary
from harness.services import LOOPBACK, ManagedProcess, free_port

RATE = 1000  # notifications per second
SECONDS = 10
# The load takes turns between the two servers this often, so that a change in machine load
# during the run hits both alike.
WINDOW_SECONDS = 0.1
TARGETS = 10
IDENTITIES = 200
TOKEN = "bench-token"
# A replica that is ready after one second; a bare socket loop so that starting ten of them
# costs little CPU (the bench measures the webhook, not Python start-up).
SLOW_ENGINE = [
    sys.executable,
    "-I",
    "-S",
    "-c",
    "import socket,sys,time\n"
    "time.sleep(1.0)\n"
    "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    "s.bind((sys.argv[1],int(sys.argv[2])));s.listen(16)\n"
    "while True:\n"
    " c,_=s.accept();c.recv(4096)\n"
    " c.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok');c.close()\n",
    "{host}",
    "{port}",
]


# The baseline: what any aiohttp webhook costs on this machine, with no work behind it.
BARE_202 = """
import asyncio, sys
from aiohttp import web

async def alerts(request):
    await request.read()
    return web.Response(status=202)

async def healthz(request):
    return web.Response(text="ok")

async def serve():
    app = web.Application()
    app.router.add_post("/alerts", alerts)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, sys.argv[1], int(sys.argv[2])).start()
    await asyncio.Event().wait()

asyncio.run(serve())
"""


def config(workdir: Path, port: int) -> Path:
    low = 30000 + port % 20000
    deployments = [
        {
            "name": f"model-{i}",
            "command": SLOW_ENGINE,
            "model": f"model-{i}",
            "replicas": 0,
            "min_replicas": 0,
            "max_replicas": 2,
            "ready_path": "/",
            "ready_timeout_seconds": 30,
        }
        for i in range(TARGETS)
    ]
    path = workdir / "remediator.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "listen": f"{LOOPBACK}:{port}",
                "state": str(workdir / "state.db"),
                "backend": "local",
                "log_level": "warning",
                "guards": {
                    "recheck": False,
                    "action_rate_limit": {"max_actions": 100, "window_seconds": 3600},
                    "global_rate_limit": {"max_actions": 100, "window_seconds": 3600},
                },
                "local": {
                    "endpoint_file": str(workdir / "endpoints.json"),
                    "port_range": [low, low + 40],
                    "deployments": deployments,
                },
            }
        )
    )
    return path


def notification(identity: int) -> bytes:
    target = identity % TARGETS
    return json.dumps(
        {
            "version": "4",
            "status": "firing",
            "receiver": "remediator",
            "groupKey": f'{{}}:{{instance="{identity}"}}',
            "truncatedAlerts": 0,
            "alerts": [
                {
                    "status": "firing",
                    "labels": {
                        "alertname": "InferwatchLLMQueueBacklog",
                        "remediation": "scale_up",
                        "model": f"model-{target}",
                        "instance": f"10.0.{target}.{identity}:8000",
                    },
                    "annotations": {"summary": "Requests keep waiting."},
                    "startsAt": "2026-11-21T05:29:57.774Z",
                    "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "",
                    "fingerprint": f"{identity:016x}",
                }
            ],
        }
    ).encode()


async def load(urls: dict[str, str], seconds: float) -> dict[str, tuple[list[float], Counter[int]]]:
    """RATE notifications/s to each of `urls` for `seconds`, taking turns every WINDOW_SECONDS."""
    bodies = [notification(i) for i in range(IDENTITIES)]
    rng = random.Random(7)
    results: dict[str, tuple[list[float], Counter[int]]] = {n: ([], Counter()) for n in urls}
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    sessions = {n: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) for n in urls}
    try:

        async def one(name: str, body: bytes) -> None:
            latencies, codes = results[name]
            start = time.perf_counter()
            async with sessions[name].post(
                f"{urls[name]}/alerts", data=body, headers=headers
            ) as resp:
                await resp.read()
                codes[resp.status] += 1
            latencies.append(time.perf_counter() - start)

        async def warm(name: str) -> None:  # Alertmanager keeps its connections open; so do we
            async with sessions[name].get(f"{urls[name]}/healthz") as resp:
                await resp.read()

        await asyncio.gather(*(warm(n) for n in urls for _ in range(64)))
        names = list(urls)
        tasks = []
        t0 = time.perf_counter()
        per_window = round(RATE * WINDOW_SECONDS)  # whole windows: each side gets RATE * seconds
        for i in range(round(RATE * seconds) * len(names)):
            delay = t0 + i / RATE - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            name = names[i // per_window % len(names)]
            tasks.append(asyncio.create_task(one(name, bodies[rng.randrange(IDENTITIES)])))
        await asyncio.gather(*tasks)
    finally:
        for session in sessions.values():
            await session.close()
    return results


async def settle(url: str) -> list[dict[str, Any]]:
    """Wait (bounded) until every notification is handled and every action finished."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        for _ in range(600):
            async with session.get(
                f"{url}/actions?limit=10000", headers={"Authorization": f"Bearer {TOKEN}"}
            ) as resp:
                body = await resp.json()
                actions, running = body["actions"], body["in_progress"]
            async with session.get(f"{url}/metrics") as resp:
                text = await resp.text()
            depth = next(
                float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith("inferwatch_remediation_queue_depth")
            )
            if depth == 0 and not running:
                return list(actions)
            await asyncio.sleep(0.5)
    raise TimeoutError("the remediator did not settle within 300 s")


def p99_ms(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[int(len(ordered) * 0.99)] * 1000


def main() -> Summary:
    with tempfile.TemporaryDirectory(prefix="bench-webhook-") as tmp:
        workdir = Path(tmp)
        bare_port, port = free_port(), free_port()
        bare = ManagedProcess(
            "bare-aiohttp-202",
            [sys.executable, "-c", BARE_202, LOOPBACK, str(bare_port)],
            workdir / "bare.log",
            ready_url=f"http://{LOOPBACK}:{bare_port}/healthz",
        )
        remediator = ManagedProcess(
            "remediator",
            [sys.executable, "-m", "remediations", "--config", str(config(workdir, port))],
            workdir / "remediator.log",
            ready_url=f"http://{LOOPBACK}:{port}/healthz",
            env={"INFERWATCH_REMEDIATOR_TOKEN": TOKEN},
        )
        with bare, remediator:
            url, bare_url = f"http://{LOOPBACK}:{port}", f"http://{LOOPBACK}:{bare_port}"
            results = asyncio.run(load({"remediator": url, "bare": bare_url}, SECONDS))
            latencies, codes = results["remediator"]
            base_latencies, base_codes = results["bare"]
            actions = asyncio.run(settle(url))
    acted = [a for a in actions if a["result"] in ("succeeded", "failed", "dry_run")]
    per_target = Counter(a["target"] for a in acted)
    duplicates = sum(n - 1 for n in per_target.values())
    p50 = sorted(latencies)[len(latencies) // 2] * 1000
    p99, base_p99 = p99_ms(latencies), p99_ms(base_latencies)
    not_accepted = sum(n for code, n in codes.items() if code != 202)
    base_not_accepted = sum(n for code, n in base_codes.items() if code != 202)
    line = (
        f"webhook: {len(latencies)} notifications at {RATE}/s for {SECONDS}s: p99 ack "
        f"{p99:.1f} ms = {p99 / base_p99:.2f}x a bare aiohttp 202 handler's {base_p99:.1f} ms "
        f"(target <= 2x and <= 20 ms; p50 {p50:.1f} ms), {len(acted)} actions "
        f"({sum(a['result'] == 'succeeded' for a in acted)} succeeded) for {TARGETS} targets, "
        f"{duplicates} duplicates, {not_accepted} not accepted (bare: {base_not_accepted})"
    )
    return Summary(line, (Ratio("webhook p99 ack / bare aiohttp 202", p99 / base_p99, at_most=2),))


if __name__ == "__main__":
    print(main().line)
