"""The GPU collector against real NVML, on a machine with an NVIDIA GPU (run by hand; ≤ 8 min).

    python tests/gpu_manual/real_gpu_check.py [--seconds 60] [--out gpu_manual_results.json]

It has NOT been run yet: no GPU was available where it was written, so every figure in the docs
about real hardware is still open until someone runs this and records the results.

What it does:
1. runs the gpu collector (GPM on) under the real scheduler for `--seconds` (60) with a 5 s
   refresh, and checks every metric the collector declares: present, or absent for a reason
   (a NOT_SUPPORTED logged for a call that feeds it, or its declared condition such as "MIG
   enabled" / "an Xid was seen" not holding); anything else is MISSING and fails the run;
2. times every NVML C function the collector calls (median, p95, calls per refresh), and the GPM
   calls' cost per GPU per refresh, plus whole refreshes with GPM off and on (same run, same GPU);
3. reads the recovery-action field and the remapped rows of every GPU directly and prints them;
4. runs tests/gpu_manual/fragmentation_proof.py (the allocator probe in a PyTorch process that
   fragments memory on purpose) if CUDA PyTorch is installed, else records "not run".
Results go to a JSON file; a summary is printed. Exit status 1 if a metric is MISSING or the
fragmentation proof failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pynvml

from exporter.collectors.base import CollectorContext
from exporter.collectors.gpu import GpuCollector, GpuSettings
from exporter.nvml import Nvml
from exporter.scheduler import Scheduler
from exporter.snapshot import SnapshotStore

HERE = Path(__file__).resolve().parent
GPM_CALLS = ("nvmlGpmQueryDeviceSupport", "nvmlGpmSampleAlloc", "nvmlGpmSampleGet")
GPM_CALLS += ("nvmlGpmMigSampleGet", "nvmlGpmMetricsGet", "nvmlGpmSampleFree")
# Metric (without prefix) -> the C functions that feed it (a NOT_SUPPORTED there explains it).
FEEDS: dict[str, tuple[str, ...]] = {
    "utilization_ratio": ("nvmlDeviceGetUtilizationRates",),
    "memory_copy_utilization_ratio": ("nvmlDeviceGetUtilizationRates",),
    "memory_reserved_bytes": ("nvmlDeviceGetMemoryInfo_v2",),
    "power_watts": ("nvmlDeviceGetPowerUsage",),
    "power_limit_watts": ("nvmlDeviceGetEnforcedPowerLimit",),
    "energy_joules": ("nvmlDeviceGetTotalEnergyConsumption",),
    "clock_hertz": ("nvmlDeviceGetClockInfo",),
    "throttle_active": ("nvmlDeviceGetCurrentClocksThrottleReasons",),
    "temperature_celsius": ("nvmlDeviceGetTemperatureV", "field:temperature_memory"),
    "ecc_errors": ("nvmlDeviceGetFieldValues", "field:ecc_corrected", "field:ecc_uncorrected"),
    "recovery_action": ("nvmlDeviceGetFieldValues", "field:recovery_action"),
    "nvlink_up": ("field:nvlink_links", "nvmlDeviceGetNvLinkState"),
    "nvlink_errors": ("field:nvlink_links", "nvmlDeviceGetNvLinkErrorCounter"),
    "remapped_rows": ("nvmlDeviceGetRemappedRows",),
    "row_remap_pending": ("nvmlDeviceGetRemappedRows",),
    "row_remap_failure": ("nvmlDeviceGetRemappedRows",),
    "pcie_replays": ("nvmlDeviceGetPcieReplayCounter",),
    "pcie_link_generation": ("nvmlDeviceGetCurrPcieLinkGeneration",),
    "pcie_link_width": ("nvmlDeviceGetCurrPcieLinkWidth",),
    "process_memory_bytes": ("nvmlDeviceGetComputeRunningProcesses_v3",),
}


class CallTimer:
    """Wraps pynvml's symbol lookup so every C call is timed by function name."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self._lookup: Callable[[str], Any] = pynvml._nvmlGetFunctionPointer

    def install(self) -> None:
        def lookup(name: str) -> Any:
            fn = self._lookup(name)

            def timed(*args: Any) -> Any:
                started = time.perf_counter()
                try:
                    return fn(*args)
                finally:
                    self.seconds[name].append(time.perf_counter() - started)

            return timed

        pynvml._nvmlGetFunctionPointer = lookup

    def uninstall(self) -> None:
        pynvml._nvmlGetFunctionPointer = self._lookup

    def reset(self) -> None:
        self.seconds.clear()


class NotSupportedLog(logging.Handler):
    """Collects the calls the exporter logged as not supported (its policy's log line)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.calls: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "not supported" in message:
            words = message.replace(";", " ").split()
            self.calls.update(w.rstrip(":") for w in words if w.startswith(("nvml", "field:")))
            if "GPM not supported" in message:
                self.calls.add("nvmlGpmQueryDeviceSupport")


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "count": len(values),
        "median_us": statistics.median(ordered) * 1e6,
        "p95_us": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] * 1e6,
    }


async def run_exporter(seconds: float) -> Any:
    """The gpu collector under the real scheduler; returns what it published at the end."""
    nvml = Nvml()
    async with aiohttp.ClientSession() as http:
        context = CollectorContext(http=http, nvml=nvml)
        settings = GpuSettings(interval_seconds=5, gpm=True)
        collector = GpuCollector(settings, context)
        store = SnapshotStore(["gpu"])
        store.sources.append(nvml.error_families)
        scheduler = Scheduler([collector], store)
        await scheduler.start()
        try:
            await asyncio.sleep(seconds)
        finally:
            await scheduler.stop()
            nvml.close()
    text = store.exposition(openmetrics=False, gzipped=False).decode()
    status = store.status["gpu"].snapshot
    return collector, text, status


def check_metrics(collector: GpuCollector, text: str, unsupported: set[str]) -> dict[str, str]:
    present = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    result: dict[str, str] = {}
    for spec in collector.metrics:
        short = spec.name.removeprefix("inferwatch_gpu_")
        feeds = FEEDS.get(short, GPM_CALLS if short.startswith("gpm_") else ())
        if any(name in present for name in spec.series_names):
            result[spec.exposed_name] = "present"
        elif hit := sorted(set(feeds) & unsupported):
            result[spec.exposed_name] = f"NOT_SUPPORTED ({', '.join(hit)})"
        elif spec.when:
            result[spec.exposed_name] = f"absent: only when {spec.when}"
        elif short == "xid_errors":  # event-driven: published once an Xid was counted
            result[spec.exposed_name] = "absent: no Xid during the run"
        else:
            result[spec.exposed_name] = "MISSING"
    return result


async def refresh_costs(refreshes: int) -> dict[str, float]:
    """Median wall time of a whole refresh with GPM off and on (same process, same GPUs)."""
    out: dict[str, float] = {}
    for gpm in (False, True):
        nvml = Nvml()
        async with aiohttp.ClientSession() as http:
            collector = GpuCollector(GpuSettings(gpm=gpm), CollectorContext(http=http, nvml=nvml))
            await collector.update()  # init, identity, Xid registration, first GPM sample
            times = []
            for _ in range(refreshes):
                started = time.perf_counter()
                await collector.update()
                times.append(time.perf_counter() - started)
            await collector.close()
        nvml.close()
        out[f"refresh_ms_gpm_{'on' if gpm else 'off'}"] = statistics.median(times) * 1e3
    return out


def read_sticky_fields() -> list[dict[str, Any]]:
    """Recovery action and remapped rows per GPU, straight from NVML (value or error name)."""
    pynvml.nvmlInit()
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            entry: dict[str, Any] = {"gpu": index, "name": str(pynvml.nvmlDeviceGetName(handle))}
            field_id = pynvml.NVML_FI_DEV_GET_GPU_RECOVERY_ACTION
            try:
                [value] = pynvml.nvmlDeviceGetFieldValues(handle, [field_id])
                entry["recovery_action"] = (
                    int(value.value.uiVal)
                    if value.nvmlReturn == pynvml.NVML_SUCCESS
                    else f"error {value.nvmlReturn}"
                )
            except pynvml.NVMLError as exc:
                entry["recovery_action"] = f"error {exc}"
            try:
                corr, unc, pending, failure = pynvml.nvmlDeviceGetRemappedRows(handle)
                entry["remapped_rows"] = {
                    "correctable": corr,
                    "uncorrectable": unc,
                    "pending": pending,
                    "failure": failure,
                }
            except pynvml.NVMLError as exc:
                entry["remapped_rows"] = f"error {exc}"
            gpus.append(entry)
        return gpus
    finally:
        pynvml.nvmlShutdown()


def fragmentation_proof(timeout: float) -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"status": "not run: PyTorch is not installed"}
    if not torch.cuda.is_available():
        return {"status": "not run: PyTorch has no CUDA device"}
    proc = subprocess.run(
        [sys.executable, str(HERE / "fragmentation_proof.py")],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return {
        "status": "passed" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})",
        "output": proc.stdout[-4000:] + proc.stderr[-2000:],
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the exporter runs")
    parser.add_argument("--out", type=Path, default=Path("gpu_manual_results.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    unsupported = NotSupportedLog()
    logging.getLogger("exporter").addHandler(unsupported)
    logging.getLogger("exporter").setLevel(logging.INFO)

    timer = CallTimer()
    timer.install()
    try:
        collector, text, snapshot = asyncio.run(run_exporter(args.seconds))
        refreshes = max(1, round(args.seconds / 5))
        calls = {name: _stats(values) for name, values in sorted(timer.seconds.items())}
        gpu_count = max(1, int(text.count("inferwatch_gpu_up{")))
        gpm_us = sum(sum(timer.seconds.get(name, [])) for name in GPM_CALLS) * 1e6
        timer.reset()
        costs = asyncio.run(refresh_costs(10))
    finally:
        timer.uninstall()
    metrics = check_metrics(collector, text, unsupported.calls)
    results: dict[str, Any] = {
        "collector_success": snapshot.success,
        "metrics": metrics,
        "not_supported_calls": sorted(unsupported.calls),
        "nvml_calls": calls,
        "gpm_us_per_gpu_per_refresh": gpm_us / gpu_count / refreshes,
        **costs,
        "sticky_fields": read_sticky_fields(),
        "fragmentation_proof": fragmentation_proof(timeout=240),
    }
    args.out.write_text(json.dumps(results, indent=2, default=str))

    missing = [name for name, state in metrics.items() if state == "MISSING"]
    print(f"collector success: {snapshot.success}; results in {args.out}")
    for name, state in metrics.items():
        print(f"  {name}: {state}")
    for name, stat in calls.items():
        print(f"  {name}: median {stat['median_us']:.1f} µs, p95 {stat['p95_us']:.1f} µs, "
              f"{stat['count']} calls")  # fmt: skip
    print(f"  GPM: {results['gpm_us_per_gpu_per_refresh']:.1f} µs per GPU per refresh")
    print(f"  refresh median: GPM off {costs['refresh_ms_gpm_off']:.2f} ms, "
          f"on {costs['refresh_ms_gpm_on']:.2f} ms")  # fmt: skip
    for gpu in results["sticky_fields"]:
        print(f"  gpu {gpu['gpu']}: recovery_action {gpu['recovery_action']}, "
              f"remapped_rows {gpu['remapped_rows']}")  # fmt: skip
    print(f"  fragmentation proof: {results['fragmentation_proof']['status']}")
    failed = missing or results["fragmentation_proof"]["status"].startswith("FAILED")
    print("RESULT:", "FAIL" if failed else "OK", f"(missing: {', '.join(missing) or 'none'})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
