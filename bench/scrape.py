"""/metrics scrape latency: ours vs prometheus-client's own exposition vs NVML-on-scrape.

Shape: 8 simulated GPUs, 256 GPU processes, 16 engine targets (a vLLM fixture served on
127.0.0.1), fake NVML calls costing 200 us each (GIL released, like a ctypes driver call;
`--nvml-latency-us` or SCRAPE_BENCH_NVML_LATENCY_US to change).

Every variant runs in its own process behind the same aiohttp server and is scraped the same
way: over HTTP on 127.0.0.1, keep-alive, with Prometheus's scrape headers (OpenMetrics
preferred, gzip), so the HTTP stack is a shared constant and the ratios isolate per-scrape work.
  ours  - the exporter (create_app, --simulate large): sends bytes rendered once per refresh.
  floor - prometheus-client encoding (+gzip, as its own server does) of the same samples from a
          prebuilt registry on every scrape: the "same samples" parsed from ours' exposition.
  naive - the same NVML reads, /proc attribution and families as ours, but done inside
          collect() on every scrape (other samples prebuilt, as in floor).
  big   - ours again, with one more engine target serving a 2 MB exposition; its /metrics p99
          while engines refresh every second is compared with ours' (same 1 s refresh, without
          the big target): normalizing a big engine runs off the event loop, so it must not
          delay scrapes (target <= 1.5x).
Then ours alone: RSS, and CPU over an idle window with one scrape (a 15 s scrape interval);
that CPU includes the simulator's own ticking and the 16 engine refreshes.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script for the child processes
    sys.path.insert(0, str(ROOT))

from bench import Ratio, Summary  # noqa: E402 - after the path fix, for the script form

if TYPE_CHECKING:  # imported where used: the child servers measured here do not load it
    from harness.services import ManagedProcess

LOOPBACK = "127.0.0.1"
FIXTURE = ROOT / "tests" / "fixtures" / "engines" / "vllm-3.txt"
ENGINES = 16
PROMETHEUS_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
}
DEFAULT_LATENCY_US = 200.0
BIG_BYTES = 2 * 1024 * 1024
REFRESH_SECONDS = 1.0  # engine refresh during the "big" comparison: scrapes overlap refreshes


def big_exposition(text: str, size: int = BIG_BYTES) -> str:
    """The fixture grown to `size` bytes: every family's samples repeated with a `replica`
    label (families stay contiguous, as the text format requires)."""
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("# HELP") or not blocks:
            blocks.append([])
        blocks[-1].append(line)
    per_copy = sum(len(line) + 12 for b in blocks for line in b if not line.startswith("#"))
    copies = max(1, size // max(per_copy, 1) + 1)
    out: list[str] = []
    for block in blocks:
        out += [line for line in block if line.startswith("#")]
        samples = [line for line in block if line and not line.startswith("#")]
        for i in range(copies):
            for line in samples:
                name, brace, rest = line.partition("{")
                out.append(
                    f'{name}{{replica="{i}",{rest}'
                    if brace
                    else line.replace(" ", f'{{replica="{i}"}} ', 1)
                )
    return "\n".join(out) + "\n"


# -- child processes ------------------------------------------------------------------------


def _serve_engines(port: int) -> None:
    """16 engine targets' worth of /metrics, /health and /version on one port (any prefix);
    /big/metrics is one 2 MB exposition."""
    from aiohttp import web

    text = FIXTURE.read_text()
    big = big_exposition(text).encode()

    async def handle(request: web.Request) -> web.Response:
        path = request.path
        if path.endswith("/health"):
            return web.Response(text="ok")
        if path.endswith("/version"):
            return web.json_response({"version": "0.10.1"})
        if path.startswith("/big/"):
            return web.Response(body=big, content_type="text/plain")
        return web.Response(text=text, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    web.run_app(app, host=LOOPBACK, port=port, print=None, access_log=None)


def _set_latency(latency_s: float) -> None:
    import pynvml

    pynvml.nvmlLib.latency_s = latency_s


def _serve_ours(
    port: int, latency_s: float, engines_port: int, big: bool = False, refresh: float = 15.0
) -> None:
    from aiohttp import web

    from exporter.app import create_app
    from exporter.config import ExporterConfig

    targets = [
        {
            "url": f"http://{LOOPBACK}:{engines_port}/e{i}/metrics",
            "engine": "vllm",
            "name": f"engine-{i}",
        }
        for i in range(ENGINES)
    ]
    if big:
        url = f"http://{LOOPBACK}:{engines_port}/big/metrics"
        targets.append({"url": url, "engine": "vllm", "name": "engine-big"})
    llm = {"targets": targets, "interval_seconds": refresh, "timeout_seconds": min(10, refresh)}
    llm["target_timeout_seconds"] = min(3, 0.9 * llm["timeout_seconds"])
    cfg = ExporterConfig.model_validate(
        {
            "listen": f"{LOOPBACK}:{port}",
            "simulate": "large",
            "log_level": "warning",
            "collectors": {"llm": llm},
        }
    )
    app = create_app(cfg)

    async def latency(app: web.Application) -> None:  # runs after the simulation installed NVML
        _set_latency(latency_s)

    app.on_startup.append(latency)
    web.run_app(app, host=LOOPBACK, port=port, print=None, access_log=None)


def _prebuilt(text: str, skip_prefix: str | None = None) -> list[Any]:
    from prometheus_client.parser import text_string_to_metric_families

    return [
        f
        for f in text_string_to_metric_families(text)
        if skip_prefix is None or not f.name.startswith(skip_prefix)
    ]


def _serve_registry(port: int, registry: Any) -> None:
    """What prometheus-client's own server does per scrape: encode, then gzip if accepted."""
    from aiohttp import web
    from prometheus_client.exposition import choose_encoder

    async def metrics(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(registry)
        headers = {"Content-Type": content_type}
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ready")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/readyz", ready)
    web.run_app(app, host=LOOPBACK, port=port, print=None, access_log=None)


class _Fixed:
    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> Iterator[Any]:
        return iter(self.families)


def _serve_floor(port: int, exposition: Path) -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(_prebuilt(exposition.read_text())))  # type: ignore[arg-type]
    _serve_registry(port, registry)


def _serve_naive(port: int, latency_s: float, exposition: Path) -> None:
    """Our own GPU code, but run synchronously inside collect() on every scrape."""
    import asyncio

    import pynvml
    from prometheus_client import CollectorRegistry

    from exporter.collectors.base import CollectorContext
    from exporter.collectors.gpu import GpuCollector, GpuSettings
    from exporter.config import ExporterConfig
    from exporter.nvml import Nvml
    from exporter.simulate import Simulation, fake_nvml

    simulation = Simulation.from_name("large")
    cfg = simulation.configure(ExporterConfig(listen=f"{LOOPBACK}:{port}"))
    fake_nvml.install(simulation.lib)
    _set_latency(latency_s)
    pynvml.nvmlInit()
    context = CollectorContext(http=None, nvml=Nvml(), proc_root=cfg.proc_root)  # type: ignore[arg-type]
    gpu = GpuCollector(GpuSettings(xid_events=False), context)

    class NaiveGpu:
        def collect(self) -> Iterator[Any]:
            reading = gpu.reader.read()
            pids = [p.pid for g in reading.gpus for p in g.processes or ()]
            return iter(gpu._families(reading, context.pods.resolve(pids)))

    registry = CollectorRegistry(auto_describe=False)
    registry.register(NaiveGpu())  # type: ignore[arg-type]
    others = _prebuilt(exposition.read_text(), skip_prefix="inferwatch_gpu_")
    registry.register(_Fixed(others))  # type: ignore[arg-type]
    asyncio.set_event_loop(asyncio.new_event_loop())
    try:
        _serve_registry(port, registry)
    finally:
        if simulation.root is not None:
            shutil.rmtree(simulation.root, ignore_errors=True)


# -- the measuring parent -------------------------------------------------------------------


def _free_port() -> int:
    from harness.services import free_port

    return free_port()


def _child(
    args: Sequence[str], log: Path, *, port: int | None = None, script: str = __file__
) -> ManagedProcess:
    """A bench script (this one unless `script`) started again as a child server, in its own
    process group; with `port`, `wait_ready` waits for its /readyz."""
    from harness.services import ManagedProcess

    ready_url = f"http://{LOOPBACK}:{port}/readyz" if port is not None else None
    return ManagedProcess(
        f"bench child {' '.join(args[:2])}",
        [sys.executable, str(Path(script).resolve()), *args],
        log,
        ready_url=ready_url,
        env={"PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    ).spawn()


def _get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    conn.request("GET", path, headers=PROMETHEUS_HEADERS)
    resp = conn.getresponse()
    return resp.status, resp.read()


def _scrape_times(port: int, count: int, gap: float = 0.0) -> list[float]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    times = []
    try:
        for _ in range(count):
            time.sleep(gap)
            started = time.perf_counter()
            status, body = _get(conn, "/metrics")
            times.append(time.perf_counter() - started)
            if status != 200 or not body:
                raise RuntimeError(f"scrape of port {port} answered {status}")
    finally:
        conn.close()
    return times


def _p(times: list[float], q: float) -> float:
    return (
        statistics.quantiles(times, n=100, method="inclusive")[int(q) - 1]
        if q < 100
        else max(times)
    )


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _stop(*procs: ManagedProcess) -> None:
    for proc in procs:
        proc.stop(10)


def real_nvml_costs(repeat: int = 200) -> str:
    """Median cost of each NVML read the collector makes, on the first real GPU, if any."""
    import ctypes.util

    import pynvml

    if ctypes.util.find_library("nvidia-ml") is None:
        return "real NVML call costs: not measured (no NVIDIA driver here)"
    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        calls: dict[str, Any] = {
            "memory_v2": lambda: pynvml.nvmlDeviceGetMemoryInfo(handle, pynvml.nvmlMemory_v2),
            "utilization": lambda: pynvml.nvmlDeviceGetUtilizationRates(handle),
            "temperature": lambda: pynvml.nvmlDeviceGetTemperatureV(handle, 0),
            "power": lambda: pynvml.nvmlDeviceGetPowerUsage(handle),
            "energy": lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle),
            "clock": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "throttle": lambda: pynvml.nvmlDeviceGetCurrentClocksEventReasons(handle),
            "fields": lambda: pynvml.nvmlDeviceGetFieldValues(handle, [3, 4, 82]),
            "processes": lambda: pynvml.nvmlDeviceGetComputeRunningProcesses_v3(handle),
        }
        medians = {}
        for name, call in calls.items():
            try:
                call()
            except pynvml.NVMLError:
                continue
            samples = []
            for _ in range(repeat):
                started = time.perf_counter()
                call()
                samples.append(time.perf_counter() - started)
            medians[name] = 1e6 * statistics.median(samples)
        gpu = pynvml.nvmlDeviceGetName(handle)
        gpu = gpu.decode() if isinstance(gpu, bytes) else gpu
    finally:
        pynvml.nvmlShutdown()
    shown = ", ".join(f"{k} {v:.0f}" for k, v in medians.items())
    return f"real NVML median us/call on {gpu}: {shown}"


def _big_engine(
    log: Path,
    latency_us: float,
    engines_port: int,
    scrapes: int,
    children: list[ManagedProcess],
) -> tuple[float, tuple[float, float]]:
    """p99 of /metrics with a 2 MB engine among the targets / without it, both refreshing every
    second (scrapes spread out so they land during refreshes); (ratio, (p99 with, without))."""
    ports = {name: _free_port() for name in ("fast", "big")}
    procs = {}
    for name, port in ports.items():
        args = ["--serve", "ours", "--port", str(port), "--latency-us", str(latency_us)]
        args += ["--engines-port", str(engines_port), "--refresh", str(REFRESH_SECONDS)]
        procs[name] = _child(args + (["--big"] if name == "big" else []), log, port=port)
        children.append(procs[name])
    try:
        for proc in procs.values():
            proc.wait_ready(60)
        time.sleep(3 * REFRESH_SECONDS)  # the big target parsed and normalized a few times
        times: dict[str, list[float]] = {"fast": [], "big": []}
        rounds = 10
        for _ in range(rounds):  # interleaved, spread over refreshes
            for name, port in ports.items():
                times[name] += _scrape_times(port, max(scrapes // rounds, 10), gap=0.02)
    finally:
        _stop(*procs.values())
    with_big, without = 1000 * _p(times["big"], 99), 1000 * _p(times["fast"], 99)
    return with_big / without, (with_big, without)


def run(latency_us: float, scrapes: int, naive_scrapes: int, idle_seconds: float) -> Summary:
    with tempfile.TemporaryDirectory(prefix="inferwatch-bench-") as tmp:
        work = Path(tmp)
        log = work / "children.log"
        ports = {name: _free_port() for name in ("engines", "ours", "floor", "naive")}
        engines = _child(["--serve", "engines", "--port", str(ports["engines"])], log)
        ours = _child(
            [
                "--serve",
                "ours",
                "--port",
                str(ports["ours"]),
                "--latency-us",
                str(latency_us),
                "--engines-port",
                str(ports["engines"]),
            ],
            log,
            port=ports["ours"],
        )
        children = [engines, ours]
        try:
            ours.wait_ready(60)
            time.sleep(6)  # a second refresh of every collector: engines and Xid settle
            conn = http.client.HTTPConnection(LOOPBACK, ports["ours"], timeout=30)
            conn.request("GET", "/metrics")  # plain text: the floor's input
            exposition = work / "exposition.txt"
            exposition.write_bytes(conn.getresponse().read())
            conn.close()
            text = exposition.read_text()
            engine_series = text.count('target="engine-')
            size_kb = len(text.encode()) / 1024
            floor = _child(
                [
                    "--serve",
                    "floor",
                    "--port",
                    str(ports["floor"]),
                    "--exposition",
                    str(exposition),
                ],
                log,
                port=ports["floor"],
            )
            naive = _child(
                [
                    "--serve",
                    "naive",
                    "--port",
                    str(ports["naive"]),
                    "--latency-us",
                    str(latency_us),
                    "--exposition",
                    str(exposition),
                ],
                log,
                port=ports["naive"],
            )
            children += [floor, naive]
            floor.wait_ready(60)
            naive.wait_ready(60)

            times: dict[str, list[float]] = {"ours": [], "floor": [], "naive": []}
            first_after_refresh: list[float] = []
            for name in times:
                _scrape_times(ports[name], 5)  # warm-up
            rounds = 5
            for _ in range(rounds):  # interleaved, so machine noise hits every variant alike
                # Each round starts seconds after the last: ours has published since, so its
                # first scrape is the one a real 15 s scrape interval always gets.
                ours_round = _scrape_times(ports["ours"], scrapes // rounds)
                first_after_refresh.append(ours_round[0])
                times["ours"] += ours_round
                times["floor"] += _scrape_times(ports["floor"], scrapes // rounds)
                times["naive"] += _scrape_times(ports["naive"], naive_scrapes // rounds)
            _stop(floor, naive)

            big_ratio, big_ms = _big_engine(log, latency_us, ports["engines"], scrapes, children)

            # Idle: one scrape, then nothing for the rest of the window (15 s scrape interval).
            cpu_before = _cpu_seconds(ours.pid)
            window_start = time.monotonic()
            _scrape_times(ports["ours"], 1)
            time.sleep(idle_seconds)
            cpu = (_cpu_seconds(ours.pid) - cpu_before) / (time.monotonic() - window_start)
            rss = _rss_mb(ours.pid)
        except Exception:
            sys.stderr.write(log.read_text(errors="replace")[-4000:])
            raise
        finally:
            _stop(*children)

    ms = {k: (1000 * _p(v, 50), 1000 * _p(v, 99)) for k, v in times.items()}
    vs_floor = ms["ours"][1] / ms["floor"][1]
    vs_naive = ms["naive"][1] / ms["ours"][1]
    ok = vs_floor <= 1.5 and vs_naive >= 20 and rss < 80 and cpu < 0.01 and big_ratio <= 1.5
    ratios = (
        Ratio("scrape p99 ours / prometheus-client floor", vs_floor, at_most=1.5),
        Ratio("scrape p99 naive (NVML on scrape) / ours", vs_naive, at_least=20),
        Ratio("scrape p99 with a 2 MB engine / without, 1 s refresh", big_ratio, at_most=1.5),
    )
    line = (
        f"scrape p99 ours {ms['ours'][1]:.2f} ms = {vs_floor:.2f}x floor {ms['floor'][1]:.2f} ms "
        f"(target <=1.5x), naive {ms['naive'][1]:.1f} ms = {vs_naive:.0f}x ours (target >=20x); "
        f"p50 ours/floor/naive {ms['ours'][0]:.2f}/{ms['floor'][0]:.2f}/{ms['naive'][0]:.1f} ms; "
        f"ours' first scrape after a refresh {1000 * statistics.median(first_after_refresh):.1f}"
        " ms "
        f"(median of {len(first_after_refresh)}); exposition {size_kb:.0f} KB; "
        f"RSS {rss:.0f} MB (target <80), idle CPU {100 * cpu:.2f}% of a core at 15 s scrapes "
        f"(target <1%); 8 GPUs, 256 procs, {ENGINES} engines ({engine_series} engine series), "
        f"NVML {latency_us:g} us/call, {len(times['ours'])}/{len(times['floor'])}/"
        f"{len(times['naive'])} scrapes over HTTP, OpenMetrics+gzip; "
        f"with one 2 MB engine exposition among the targets (1 s refresh) /metrics p99 "
        f"{big_ms[0]:.2f} ms = {big_ratio:.2f}x without it {big_ms[1]:.2f} ms (target <=1.5x); "
        f"{'targets met' if ok else 'TARGETS MISSED'}; {real_nvml_costs()}"
    )
    return Summary(line, ratios)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    env_latency = os.environ.get("SCRAPE_BENCH_NVML_LATENCY_US")
    p.add_argument(
        "--nvml-latency-us",
        type=float,
        default=float(env_latency) if env_latency else DEFAULT_LATENCY_US,
        help="fake NVML cost per call (default 200, or SCRAPE_BENCH_NVML_LATENCY_US)",
    )
    p.add_argument("--scrapes", type=int, default=200, help="scrapes of ours and of the floor")
    p.add_argument("--naive-scrapes", type=int, default=25)
    p.add_argument("--idle-seconds", type=float, default=15.0)
    p.add_argument("--serve", choices=["engines", "ours", "floor", "naive"], help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--latency-us", type=float, default=DEFAULT_LATENCY_US, help=argparse.SUPPRESS)
    p.add_argument("--engines-port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--exposition", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--big", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--refresh", type=float, default=15.0, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> Summary:
    """Run the benchmark and return its summary line and ratios."""
    args = _parser().parse_args([] if argv is None else argv)
    return run(args.nvml_latency_us, args.scrapes, args.naive_scrapes, args.idle_seconds)


def _child_main(args: argparse.Namespace) -> None:
    latency_s = args.latency_us / 1e6
    if args.serve == "engines":
        _serve_engines(args.port)
    elif args.serve == "ours":
        _serve_ours(args.port, latency_s, args.engines_port, args.big, args.refresh)
    elif args.serve == "floor":
        _serve_floor(args.port, args.exposition)
    else:
        _serve_naive(args.port, latency_s, args.exposition)


if __name__ == "__main__":
    parsed = _parser().parse_args()
    if parsed.serve:
        _child_main(parsed)
    else:
        print(main(sys.argv[1:]).line)
