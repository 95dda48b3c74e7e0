"""/metrics latency while hostile engines are scraped (issue 14, items 5 and 6).

Two exporters run in turn, each in its own process with only the llm collector, refreshing
every second: `baseline` scrapes 2 healthy engines (the vLLM fixture); `attack` scrapes the same
2 plus one engine exposing 200,000 distinct series and one whose /metrics carries 15 lines with
a 1 MB label value each. /metrics is scraped the same way in both (keep-alive, Prometheus's
headers, 5 ms apart) for the same number of scrapes; the summary is the p99 ratio
attack / baseline (1.0: the hostile engines cost /metrics nothing), with the peak RSS of each.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script for the child processes
    sys.path.insert(0, str(ROOT))

from bench.scrape import (  # noqa: E402 - after the sys.path fix for the child processes
    FIXTURE,
    LOOPBACK,
    _child,
    _free_port,
    _p,
    _scrape_times,
    _stop,
)

SCRAPES = 400
FLOOD_SERIES = 200_000
HUGE_LINES = 15


def _serve_engines(port: int) -> None:
    """/good0, /good1: the fixture; /flood: 200k series; /huge: 1 MB label values."""
    from aiohttp import web

    good = FIXTURE.read_text()
    flood = "".join(
        f'vllm:num_requests_running{{model_name="m{i}"}} 1\n' for i in range(FLOOD_SERIES)
    )
    huge = 'vllm:num_requests_running{model_name="m"} 2\n' + "".join(
        f'vllm:num_requests_running{{model_name="m",x="{"a" * 1_000_000}{i}"}} 9\n'
        for i in range(HUGE_LINES)
    )
    bodies = {"flood": flood, "huge": huge}

    async def handle(request: web.Request) -> web.Response:
        first, _, rest = request.path.strip("/").partition("/")
        if rest == "health":
            return web.Response(text="ok")
        return web.Response(text=bodies.get(first, good), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    web.run_app(app, host=LOOPBACK, port=port, print=None, access_log=None)


def _serve_exporter(port: int, engines_port: int, mode: str) -> None:
    from aiohttp import web

    from exporter.app import create_app
    from exporter.config import ExporterConfig

    names = ["good0", "good1"] + (["flood", "huge"] if mode == "attack" else [])
    targets = [
        {"url": f"http://{LOOPBACK}:{engines_port}/{name}/metrics", "engine": "vllm", "name": name}
        for name in names
    ]
    cfg = ExporterConfig.model_validate(
        {
            "listen": f"{LOOPBACK}:{port}",
            "log_level": "warning",
            "collectors": {
                "gpu": {"enabled": False},
                "cuda_allocator": {"enabled": False},
                "llm": {"targets": targets, "interval_seconds": 1.0},
            },
        }
    )
    web.run_app(create_app(cfg), host=LOOPBACK, port=port, print=None, access_log=None)


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _measure(mode: str, engines_port: int, log: Path) -> tuple[float, float, float]:
    """(p50, p99 seconds, peak RSS MB) of SCRAPES scrapes of one exporter."""
    port = _free_port()
    proc = _child(["exporter", str(port), str(engines_port), mode], log, port=port, script=__file__)
    try:
        proc.wait_ready(60)  # a child that exits raises with the tail of its log
        time.sleep(2.0)  # a few refreshes in, so both modes are measured in steady state
        times: list[float] = []
        for _ in range(SCRAPES // 50):
            times += _scrape_times(port, 50)
            time.sleep(0.25)  # spread the scrapes over several refreshes
        return _p(times, 50), _p(times, 99), _peak_rss_mb(proc.pid)
    finally:
        _stop(proc)


def main() -> str:
    with tempfile.TemporaryDirectory(prefix="inferwatch-bench-") as tmp:
        log = Path(tmp) / "children.log"
        engines_port = _free_port()
        engines = _child(["engines", str(engines_port)], log, script=__file__)
        try:
            base50, base99, base_rss = _measure("baseline", engines_port, log)
            att50, att99, att_rss = _measure("attack", engines_port, log)
        finally:
            _stop(engines)
    return (
        f"/metrics p99 with a 200k-series and a 1 MB-label engine {att99 * 1e3:.1f} ms vs "
        f"{base99 * 1e3:.1f} ms baseline: {att99 / base99:.2f}x (p50 {att50 / base50:.2f}x); "
        f"peak RSS {att_rss:.0f} MB vs {base_rss:.0f} MB"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "engines":
        _serve_engines(int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "exporter":
        _serve_exporter(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        print(main())
