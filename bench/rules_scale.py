"""What the rule files cost a fleet's Prometheus: a real Prometheus scraping a synthetic fleet.

Per size (GPUs / vLLM replicas: 1,000/250, 4,000/1,000, 8,000/2,000), a fresh Prometheus (the
one on PATH) scrapes one target per simulated node (8 H100s, 2 vLLM replicas at tensor-parallel
4, one GPU process per GPU) every 15 s, with the target labels the chart's ServiceMonitor leaves
(`job`, `instance`, `node`; honor_labels), and evaluates every rules/*.rules.yaml as found on disk
when the bench starts, at kube-prometheus-stack's evaluation interval (30 s) unless a group sets
its own. Node bodies are pre-rendered from the exporter's own vLLM normalization of a real vLLM
capture (real bucket layouts, normalized names) plus the GPU (health included: 18 NVLink links,
PCIe, row remapping), allocator and self-metrics families the exporter publishes for an H100;
counters advance with time.

History: selectors that look back (`offset`, or a range of an hour or more) need data the live
minutes do not have, so the bench backfills those metrics with `promtool tsdb create-blocks-from
openmetrics` at a coarse step (raw series from the same value functions the live fleet serves,
recorded series at the value their rule gives live), up to a day back, and waits until
Prometheus has loaded the blocks. Then it reads `/api/v1/rules` for a few evaluation rounds.

Printed per size: each group's evaluation time (median of the rounds) as a fraction of its
interval, the slowest rule, recorded series / raw series, Prometheus RSS; then growth factors
between sizes (1.0 = linear in fleet size). Goal: every group under 10% of its interval at the
largest size, growth close to linear, recorded <= 10% of raw.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script for the fleet child process
    sys.path.insert(0, str(ROOT))

from bench import Ratio, Summary  # noqa: E402 - after the path set-up above
from harness.prometheus import Prometheus  # noqa: E402
from harness.services import LOOPBACK, ManagedProcess, free_port, prometheus  # noqa: E402
from harness.wait import TRANSIENT, eventually  # noqa: E402

RULES = ROOT / "rules"
VLLM_FIXTURE = ROOT / "tests" / "fixtures" / "engines" / "vllm-3.txt"
FIXTURE_MODEL = "qwen3.6-27b-autoround"
SIZES = {1000: 250, 4000: 1000, 8000: 2000}  # GPUs -> vLLM replicas
GPUS_PER_NODE = 8
NVLINK_LINKS = 18  # an H100 SXM's
TENSOR_PARALLEL = 4
REPLICAS_PER_MODEL = 8
NAMESPACES = 8
SCRAPE_INTERVAL_S = 15
EVALUATION_INTERVAL_S = 30  # kube-prometheus-stack / prometheus-operator default
JOB = "inferwatch-exporter"  # the ServiceMonitor's job: the exporter Service's name
GOAL_FRACTION = 0.10
GOAL_RECORDED = 0.10
GROWTH_SLACK = 1.5  # "close to linear": eval time may grow at most 1.5x faster than the fleet
HISTORY_S = 86400 + 3600  # a day (+ the longest recorded window) of backfill at most
LONG_RANGE_S = 3600  # ranges at least this long get backfilled history
THROTTLE_REASONS = (
    "gpu_idle",
    "applications_clocks_setting",
    "sw_power_cap",
    "hw_slowdown",
    "sync_boost",
    "sw_thermal_slowdown",
    "hw_thermal_slowdown",
    "hw_power_brake_slowdown",
    "display_clock_setting",
)
POOLS = ("all", "large", "small", "private")
POOLED = ("reserved", "allocated", "active", "inactive_split", "free", "largest_free_block")

PROPOSED_GROUP = "proposed.shared-bucket-rates"
_QUANTILE = re.compile(
    r"^histogram_quantile\(\s*([0-9.]+)\s*,\s*sum by \(([^)]*)\)\s*\(\s*rate\("
    r"([a-zA-Z_:][a-zA-Z0-9_:]*)_bucket(\{[^}]*\})?\[(\w+)\]\)\s*\)\s*\)$"
)


# -- the synthetic fleet ------------------------------------------------------------------------


@dataclass
class Series:
    """One exposition line: `prefix value`, value = base + rate * (t - epoch)."""

    name: str
    labels: dict[str, str]
    base: float
    rate: float = 0.0

    @property
    def prefix(self) -> str:
        return self.name + _labels(self.labels)

    def value(self, t: float, epoch: float) -> float:
        return self.base + self.rate * max(0.0, t - epoch)


def _labels(pairs: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(pairs.items()))
    return "{" + inner + "}" if inner else ""


def _series(name: str, labels: dict[str, str], base: float, rate: float = 0.0) -> Series:
    return Series(name, labels, base, rate)


@dataclass(frozen=True)
class Fleet:
    gpus: int
    replicas: int

    @property
    def nodes(self) -> int:
        return math.ceil(self.gpus / GPUS_PER_NODE)

    @property
    def replicas_per_node(self) -> int:
        return max(1, round(self.replicas / self.nodes))

    def node_name(self, node: int) -> str:
        return f"gpu-node-{node:05d}"

    def instance(self, node: int) -> str:
        return f"10.{node // 65536 % 256}.{node // 256 % 256}.{node % 256}:9400"


def _namespace(replica: int) -> str:
    """A model's replicas are one Deployment: one namespace per model, models spread over teams."""
    return f"team-{replica // REPLICAS_PER_MODEL % NAMESPACES}"


def _engine_template() -> list[tuple[str, dict[str, str], float, str]]:
    """One vLLM replica as the exporter normalizes it: (name, labels, value, kind)."""
    from exporter.engines import normalize_text

    result = normalize_text(
        VLLM_FIXTURE.read_text(),
        "vllm",
        target="TARGET",
        extra_labels={"namespace": "NAMESPACE", "pod": "POD"},
    )
    out: list[tuple[str, dict[str, str], float, str]] = []
    for group in result.groups + result.status:
        for name, labels, value in group.samples:
            out.append((name, dict(labels), value, group.spec.kind))
    return out


def _histogram_rates(template: list[tuple[str, dict[str, str], float, str]]) -> dict[str, float]:
    """Per histogram bucket: the fraction of requests at or under `le` in the real capture."""
    counts = {n.removesuffix("_count"): v for n, _, v, _ in template if n.endswith("_count")}
    fractions: dict[str, float] = {}
    for name, labels, value, _ in template:
        if name.endswith("_bucket"):
            family = name.removesuffix("_bucket")
            total = counts.get(family, 0.0)
            fractions[f"{name}|{labels['le']}"] = value / total if total > 0 else 1.0
    return fractions


def node_series(fleet: Fleet, node: int) -> list[Series]:
    """Everything one node's exporter publishes (deterministic in `node`)."""
    out: list[Series] = [_series("inferwatch_gpu_devices", {}, GPUS_PER_NODE)]
    for gpu in range(GPUS_PER_NODE):
        uuid = f"GPU-{node:08x}-{gpu:04x}-5a59-80ba-e3db74d7b755"
        d = {"gpu": str(gpu), "uuid": uuid}
        out.append(
            _series(
                "inferwatch_gpu_info",
                {**d, "name": "NVIDIA H100 80GB HBM3", "driver_version": "580.65.06"}
                | {"cuda_version": "13.0", "mig_mode": "disabled", "pci_bus_id": f"0:{gpu}"},
                1,
            )
        )
        for name, value in (
            ("up", 1),
            ("utilization_ratio", 0.8),
            ("memory_copy_utilization_ratio", 0.3),
            ("memory_total_bytes", 85899345920),
            ("memory_used_bytes", 77309411328),
            ("memory_free_bytes", 8589934592),
            ("memory_reserved_bytes", 536870912),
            ("power_watts", 550),
            ("power_limit_watts", 700),
        ):
            out.append(_series(f"inferwatch_gpu_{name}", d, value))
        out.append(_series("inferwatch_gpu_temperature_celsius", {**d, "sensor": "gpu"}, 61))
        out.append(_series("inferwatch_gpu_temperature_celsius", {**d, "sensor": "memory"}, 70))
        out.append(_series("inferwatch_gpu_energy_joules_total", d, 1e6, 550))
        for clock in ("graphics", "sm", "memory"):
            out.append(_series("inferwatch_gpu_clock_hertz", {**d, "clock": clock}, 1.98e9))
        for reason in THROTTLE_REASONS:
            out.append(_series("inferwatch_gpu_throttle_active", {**d, "reason": reason}, 0))
        for kind in ("corrected", "uncorrected"):
            out.append(_series("inferwatch_gpu_ecc_errors_total", {**d, "type": kind}, 0))
        # Health, as the exporter publishes it for an H100 (18 NVLink links, PCIe Gen5 x16).
        for link in range(NVLINK_LINKS):
            out.append(_series("inferwatch_gpu_nvlink_up", {**d, "link": str(link)}, 1))
            for kind in ("crc_flit", "recovery", "replay"):
                labels = {**d, "link": str(link), "type": kind}
                out.append(_series("inferwatch_gpu_nvlink_errors_total", labels, 0))
        for link, (generation, width) in {"current": (5, 16), "max": (5, 16)}.items():
            out.append(
                _series("inferwatch_gpu_pcie_link_generation", {**d, "link": link}, generation)
            )
            out.append(_series("inferwatch_gpu_pcie_link_width", {**d, "link": link}, width))
        out.append(_series("inferwatch_gpu_pcie_replays_total", d, 0))
        for bank in ("correctable", "uncorrectable"):
            out.append(_series("inferwatch_gpu_remapped_rows", {**d, "bank": bank}, 0))
        out.append(_series("inferwatch_gpu_row_remap_pending", d, 0))
        out.append(_series("inferwatch_gpu_row_remap_failure", d, 0))
        out.append(_series("inferwatch_gpu_recovery_action", {**d, "action": "none"}, 0))
        # One tensor-parallel rank of a replica on this GPU.
        replica = node * fleet.replicas_per_node + gpu // TENSOR_PARALLEL
        pod = {"namespace": _namespace(replica), "pod": f"vllm-{replica:05d}"}
        proc = {**d, **pod, "container": "vllm"}
        out.append(_series("inferwatch_gpu_process_memory_bytes", proc, 76e9))
        for name in POOLED:
            for pool in POOLS:
                value = 6e10 if pool in ("all", "large") else 1e8
                out.append(
                    _series(
                        f"inferwatch_cuda_allocator_{name}_bytes", {**proc, "pool": pool}, value
                    )
                )
        every = {**proc, "pool": "all"}
        info = {**every, "backend": "native", "expandable_segments": "false"}
        out.append(_series("inferwatch_cuda_allocator_info", info | {"torch_version": "2.8.0"}, 1))
        out.append(_series("inferwatch_cuda_allocator_alloc_retries_total", every, 0))
        out.append(_series("inferwatch_cuda_allocator_ooms_total", every, 0))
        out.append(_series("inferwatch_cuda_allocator_device_allocs_total", every, 300, 0.01))
        out.append(_series("inferwatch_cuda_allocator_device_frees_total", every, 10, 0.01))
        out.append(_series("inferwatch_cuda_allocator_probe_age_seconds", every, 3))
        out.append(_series("inferwatch_cuda_allocator_process_start_time_seconds", every, 1.7e9))
        out.append(_series("inferwatch_cuda_allocator_outside_bytes", every, 5e8))
    out += _replica_series(fleet, node)
    out.append(_series("inferwatch_exporter_build_info", {"version": "0.1.0"}, 1))
    for collector in ("gpu", "cuda_allocator", "llm"):
        c = {"collector": collector}
        out.append(_series("inferwatch_exporter_collector_success", c, 1))
        out.append(_series("inferwatch_exporter_collector_duration_seconds", c, 0.01))
        out.append(_series("inferwatch_exporter_collector_errors_total", c, 0))
        out.append(_series("inferwatch_exporter_collector_last_success_timestamp_seconds", c, 0, 1))
    return out


_TEMPLATE: list[tuple[str, dict[str, str], float, str]] = []
_FRACTIONS: dict[str, float] = {}


def _replica_series(fleet: Fleet, node: int) -> list[Series]:
    if not _TEMPLATE:
        _TEMPLATE.extend(_engine_template())
        _FRACTIONS.update(_histogram_rates(_TEMPLATE))
    out: list[Series] = []
    requests_per_s = 2.0
    for k in range(fleet.replicas_per_node):
        replica = node * fleet.replicas_per_node + k
        subst = {
            "TARGET": f"{fleet.instance(node).split(':')[0]}:{8000 + k}",
            "NAMESPACE": _namespace(replica),
            "POD": f"vllm-{replica:05d}",
            FIXTURE_MODEL: f"model-{replica // REPLICAS_PER_MODEL:04d}",
        }
        for name, labels, value, kind in _TEMPLATE:
            labels = {key: subst.get(v, v) for key, v in labels.items()}
            rate = 0.0
            if name.endswith("_bucket"):
                rate = requests_per_s * _FRACTIONS[f"{name}|{labels['le']}"]
            elif name.endswith("_count"):
                rate = requests_per_s
            elif name.endswith("_sum"):
                rate = requests_per_s * (value / max(1.0, _count_of(name)))
            elif kind == "counter" and name.endswith("_total"):
                rate = 50.0 if "tokens" in name else 0.0
                if name == "inferwatch_llm_requests_total":
                    rate = requests_per_s if labels.get("outcome") == "success" else 0.0
            out.append(_series(name, labels, value, rate))
        ident_labels = {
            "engine": "vllm",
            "model": subst[FIXTURE_MODEL],
            "target": subst["TARGET"],
            "namespace": subst["NAMESPACE"],
            "pod": subst["POD"],
        }
        out.append(_series("inferwatch_llm_up", ident_labels, 1))
        out.append(_series("inferwatch_llm_healthy", ident_labels, 1))
    return out


def _count_of(sum_name: str) -> float:
    count = sum_name.removesuffix("_sum") + "_count"
    return next((v for n, _, v, _ in _TEMPLATE if n == count), 1.0)


# -- the fleet server (child process) -----------------------------------------------------------


def _serve_fleet(gpus: int, replicas: int, port: int, epoch: float) -> None:
    """Every node's /metrics on one port: /node/<n>/metrics, gauges pre-rendered once."""
    from aiohttp import web

    fleet = Fleet(gpus, replicas)
    static: list[bytes] = []
    moving: list[list[tuple[str, float, float]]] = []
    for node in range(fleet.nodes):
        series = node_series(fleet, node)
        static.append("".join(f"{s.prefix} {s.base}\n" for s in series if not s.rate).encode())
        moving.append([(s.prefix, s.base, s.rate) for s in series if s.rate])

    async def metrics(request: web.Request) -> web.Response:
        node = int(request.match_info["node"])
        if not 0 <= node < fleet.nodes:
            raise web.HTTPNotFound()
        dt = time.time() - epoch
        body = static[node] + "".join(f"{p} {b + r * dt}\n" for p, b, r in moving[node]).encode()
        return web.Response(
            body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ready\n")

    app = web.Application()
    app.router.add_get("/node/{node}/metrics", metrics)
    app.router.add_get("/readyz", ready)
    web.run_app(app, host=LOOPBACK, port=port, print=None, access_log=None)


# -- rules: what they read ----------------------------------------------------------------------

_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_SELECTOR = re.compile(
    r"(?<![\w:])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?\s*(?:\[(\w+)(?::\w*)?\])?"
    r"\s*(?:offset\s+(\w+))?"
)


def duration_s(text: str) -> float:
    return sum(int(n) * _UNITS[u] for n, u in _DURATION.findall(text))


@dataclass
class RuleFiles:
    paths: list[Path]
    groups: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, directory: Path) -> RuleFiles:
        import yaml

        paths = sorted(directory.glob("*.rules.yaml"))
        groups = [g for p in paths for g in (yaml.safe_load(p.read_text()) or {})["groups"]]
        return cls(paths, groups)

    @property
    def recorded(self) -> set[str]:
        return {r["record"] for g in self.groups for r in g["rules"] if "record" in r}

    def interval_s(self, group: dict[str, Any]) -> float:
        return duration_s(group["interval"]) if "interval" in group else EVALUATION_INTERVAL_S

    def proposal(self) -> tuple[dict[str, Any], dict[str, str]]:
        """Quantiles of one histogram that each re-rate the same buckets, rewritten to record the
        summed bucket rates once and take every quantile from that record.

        Returns the proposed group (record names suffixed `:proposed`, loaded beside the
        originals) and {original record: proposed expression}.
        """
        shared: dict[tuple[str, str, str, str, float], list[tuple[str, str]]] = {}
        for group in self.groups:
            for rule in group["rules"]:
                m = _QUANTILE.match(" ".join(rule.get("expr", "").split()))
                if "record" in rule and m:
                    q, by, metric, matchers, window = m.groups()
                    key = (metric, matchers or "", by, window, self.interval_s(group))
                    shared.setdefault(key, []).append((rule["record"], q))
        rules: list[dict[str, str]] = []
        rewritten: dict[str, str] = {}
        for (metric, matchers, by, window, _), quantiles in shared.items():
            if len(quantiles) < 2:
                continue
            level = quantiles[0][0].split(":", 1)[0]
            rates = f"{level}_le:{metric}_bucket:rate{window}"
            labels = ", ".join(sorted(x.strip() for x in by.split(",")))
            rules.append(
                {
                    "record": rates,
                    "expr": f"sum by ({labels}) (rate({metric}_bucket{matchers}[{window}]))",
                }
            )
            for record, q in quantiles:
                rewritten[record] = f"histogram_quantile({q}, {rates})"
                rules.append({"record": f"{record}:proposed", "expr": rewritten[record]})
        intervals = {
            self.interval_s(g)
            for g in self.groups
            if any(r.get("record") in rewritten for r in g["rules"])
        }
        group = {
            "name": PROPOSED_GROUP,
            "interval": f"{int(max(intervals, default=EVALUATION_INTERVAL_S))}s",
            "rules": rules,
        }
        return group, rewritten

    def lookbacks(self) -> dict[str, list[tuple[float, float]]]:
        """Metric name -> (range, offset) of each selector that reaches back past live data."""
        found: dict[str, list[tuple[float, float]]] = {}
        for group in self.groups:
            for rule in group["rules"]:
                for m in _SELECTOR.finditer(rule["expr"]):
                    name, _, rng, off = m.groups()
                    r, o = duration_s(rng or ""), duration_s(off or "")
                    if o > 0 or r >= LONG_RANGE_S:
                        found.setdefault(name, []).append((r, o))
        return found


# -- Prometheus ---------------------------------------------------------------------------------


class FleetPrometheus:
    """A real Prometheus (`harness.services.prometheus`) scraping the simulated fleet with the
    shipped rules plus the proposed rewrites, queried through `harness.prometheus`."""

    def __init__(self, workdir: Path, rules: RuleFiles, fleet: Fleet, fleet_port: int) -> None:
        self.workdir = workdir
        port = free_port()
        self.data = workdir / "prometheus-data"
        self.api = Prometheus(f"http://{LOOPBACK}:{port}", timeout=300)
        targets = [
            {
                "targets": [f"{LOOPBACK}:{fleet_port}"],
                "labels": {
                    "__metrics_path__": f"/node/{n}/metrics",
                    "instance": fleet.instance(n),
                    "node": fleet.node_name(n),
                },
            }
            for n in range(fleet.nodes)
        ]
        (workdir / "fleet.json").write_text(json.dumps(targets))
        config = {
            "global": {
                "scrape_interval": f"{SCRAPE_INTERVAL_S}s",
                "scrape_timeout": "10s",
                "evaluation_interval": f"{EVALUATION_INTERVAL_S}s",
            },
            "rule_files": [str(p) for p in rules.paths] + [str(workdir / "proposed.rules.yaml")],
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "honor_labels": True,
                    "file_sd_configs": [{"files": [str(workdir / "fleet.json")]}],
                }
            ],
        }
        (workdir / "prometheus.yml").write_text(json.dumps(config))
        proposed, self.rewritten = rules.proposal()
        self.proposed = [proposed]
        (workdir / "proposed.rules.yaml").write_text(json.dumps({"groups": [proposed]}))
        self.process = prometheus(workdir / "prometheus.yml", workdir, port)

    def start(self) -> None:
        self.process.start(ready_timeout=120)

    def stop(self) -> None:
        self.process.stop(timeout=60)

    def samples(self, expr: str) -> int:
        """Samples an instant evaluation of `expr` reads (query stats): its cost, whatever the
        machine's load."""
        data = self.api.api("query", {"query": expr, "stats": "all"})
        return int(data["stats"]["samples"]["totalQueryableSamples"])

    def scalar(self, expr: str) -> float:
        return self.api.value(expr) or 0.0

    def rules(self) -> list[dict[str, Any]]:
        return list(self.api.api("rules")["groups"])

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")


# -- backfill -----------------------------------------------------------------------------------


def _windows(lookbacks: list[tuple[float, float]], now: float, horizon: float) -> Iterator[float]:
    """Timestamps (s) covering each (range, offset) read during [now, now + horizon]."""
    stamps: set[float] = set()
    for rng, off in lookbacks:
        start = max(now - off - rng - 300, now - HISTORY_S)
        end = min(now - off + horizon, now - 60)
        # rate() needs two samples in its range: a quarter of it, at most an hour.
        step = 60.0 if rng < LONG_RANGE_S else min(3600.0, max(60.0, rng / 4))
        t = math.floor(start / step) * step
        while t <= end:
            stamps.add(t)
            t += step
    yield from sorted(stamps)


def write_backfill(
    path: Path,
    prom: FleetPrometheus,
    fleet: Fleet,
    rules: RuleFiles,
    epoch: float,
    now: float,
    horizon: float,
) -> tuple[int, int, float, str]:
    """OpenMetrics for every metric read with a long range or an offset.

    Returns (series, samples, the first timestamp written, the first series' name).
    """
    lookbacks = rules.lookbacks()
    recorded = rules.recorded
    series_n = samples_n = 0
    first: tuple[float, str] = (math.inf, "")
    with path.open("w") as out:
        raw = {n: lb for n, lb in lookbacks.items() if n not in recorded}
        if raw:
            per_name: dict[str, list[Series]] = {n: [] for n in raw}
            for node in range(fleet.nodes):
                target = {
                    "job": JOB,
                    "instance": fleet.instance(node),
                    "node": fleet.node_name(node),
                }
                for s in node_series(fleet, node):
                    if s.name in per_name:
                        per_name[s.name].append(Series(s.name, s.labels | target, s.base, s.rate))
            for name, series in per_name.items():
                stamps = list(_windows(raw[name], now, horizon))
                if series and stamps:
                    first = min(first, (stamps[0], name))
                for s in series:
                    prefix = s.prefix
                    for t in stamps:
                        out.write(f"{prefix} {s.value(t, epoch)} {t:.0f}\n")
                    series_n += 1
                    samples_n += len(stamps)
        for name, lb in lookbacks.items():
            if name not in recorded:
                continue
            stamps = list(_windows(lb, now, horizon))
            found = prom.api.query(name)
            if found and stamps:
                first = min(first, (stamps[0], name))
            for metric, value in found:
                if not math.isfinite(value):
                    continue
                prefix = name + _labels({k: v for k, v in metric.items() if k != "__name__"})
                for i, t in enumerate(stamps):
                    wobble = 1.0 + 0.02 * math.sin(i)  # yesterday was about the same
                    out.write(f"{prefix} {value * wobble} {t:.0f}\n")
                series_n += 1
                samples_n += len(stamps)
        out.write("# EOF\n")
    return series_n, samples_n, first[0] + 60, first[1]


# -- one size -----------------------------------------------------------------------------------


@dataclass
class Result:
    fleet: Fleet
    raw_series: float
    recorded_series: float
    biggest_records: list[tuple[str, int]]
    rss_bytes: int
    cpu_cores: float
    samples: dict[str, dict[str, int]]
    groups: dict[str, tuple[float, float, float]]  # name -> (median s, max s, interval s)
    slowest: dict[str, tuple[str, float]]  # group -> (rule, median s)
    backfill: tuple[int, int, float, str]
    rounds: int
    rewrites: list[str]

    @property
    def worst(self) -> tuple[str, float]:
        name, (med, _, interval) = max(self.groups.items(), key=lambda kv: kv[1][0] / kv[1][2])
        return name, med / interval

    @property
    def eval_s(self) -> float:
        return sum(med for med, _, _ in self.groups.values())

    @property
    def samples_read(self) -> int:
        """Samples every shipped rule reads in one round (the proposals left out)."""
        return sum(sum(rs.values()) for g, rs in self.samples.items() if g != PROPOSED_GROUP)


def _log(msg: str) -> None:
    print(f"[rules_scale] {msg}", file=sys.stderr, flush=True)


def run_size(fleet: Fleet, rules: RuleFiles, workdir: Path, rounds: int) -> Result:
    workdir.mkdir(parents=True, exist_ok=True)
    epoch = time.time() - HISTORY_S - 3600
    fleet_port = free_port()
    serve = ["--serve-fleet", str(fleet.gpus), str(fleet.replicas), str(fleet_port), str(epoch)]
    server = ManagedProcess(
        "fleet",
        [sys.executable, str(Path(__file__).resolve()), *serve],
        workdir / "fleet.log",
        ready_url=f"http://{LOOPBACK}:{fleet_port}/readyz",
    )
    prom = FleetPrometheus(workdir, rules, fleet, fleet_port)
    try:
        server.start(ready_timeout=600)
        prom.start()
        _log(f"{fleet.gpus} GPUs: Prometheus up, waiting for {fleet.nodes} targets")
        eventually(
            lambda: prom.scalar(f'count(up{{job="{JOB}"}} == 1)') >= fleet.nodes,
            300,
            "every target scraped",
            interval=2,
            ignore=TRANSIENT,
        )
        # Two evaluation rounds after the first scrapes, so recorded series have values.
        time.sleep(2 * EVALUATION_INTERVAL_S + SCRAPE_INTERVAL_S)
        now = time.time()
        horizon = (rounds + 6) * EVALUATION_INTERVAL_S + 600
        backfill_file = workdir / "backfill.om"
        counts = write_backfill(backfill_file, prom, fleet, rules, epoch, now, horizon)
        _log(f"backfill: {counts[0]} series, {counts[1]} samples; creating blocks")
        blocks = workdir / "blocks"
        subprocess.run(
            [
                "promtool",
                "tsdb",
                "create-blocks-from",
                "openmetrics",
                "--max-block-duration=24h",  # hidden in 2.42: two passes over the file, not 13
                str(backfill_file),
                str(blocks),
            ],
            check=True,
            capture_output=True,
        )
        backfill_file.unlink()
        moved = [p for p in blocks.iterdir() if p.is_dir()]
        for block in moved:
            shutil.move(str(block), str(prom.data / block.name))
        first = counts[2]
        eventually(
            lambda: not moved or prom.api.query(f"count({{__name__=~'{counts[3]}'}})", at=first),
            240,
            "backfilled blocks loaded",
            interval=5,
            ignore=(OSError, ValueError),
        )
        _log("blocks loaded; measuring rule groups")
        per_group: dict[str, list[float]] = {}
        per_rule: dict[str, dict[str, list[float]]] = {}
        intervals: dict[str, float] = {}
        seen: dict[str, str] = {}
        done = 0
        cpu_started, started = prom.cpu_seconds(), time.monotonic()
        deadline = time.monotonic() + (rounds + 4) * EVALUATION_INTERVAL_S * 2
        while done < rounds and time.monotonic() < deadline:
            time.sleep(EVALUATION_INTERVAL_S)
            fresh = False
            for g in prom.rules():
                key = g["name"]
                if seen.get(key) == g["lastEvaluation"]:
                    continue
                seen[key] = g["lastEvaluation"]
                fresh = True
                per_group.setdefault(key, []).append(float(g["evaluationTime"]))
                intervals[key] = float(g["interval"])
                for r in g["rules"]:
                    rname = r.get("record") or r.get("name", "?")
                    per_rule.setdefault(key, {}).setdefault(rname, []).append(
                        float(r.get("evaluationTime", 0))
                    )
            done += fresh
        cpu_cores = (prom.cpu_seconds() - cpu_started) / (time.monotonic() - started)
        recorded = rules.recorded
        regex = "|".join(re.escape(n) for n in sorted(recorded))
        recorded_n = prom.scalar(f'count({{__name__=~"{regex}"}})')
        by_level: dict[str, int] = {}
        for metric, count in prom.api.query(f'count by (__name__) ({{__name__=~"{regex}"}})'):
            level = metric["__name__"].split(":", 1)[0]
            by_level[level] = by_level.get(level, 0) + int(count)
        biggest = sorted(by_level.items(), key=lambda kv: -kv[1])
        raw_n = prom.scalar(f'sum(scrape_samples_post_metric_relabeling{{job="{JOB}"}})')
        rss = prom.rss_bytes()
        groups = {
            name: (statistics.median(v), max(v), intervals[name])
            for name, v in per_group.items()
            if name != PROPOSED_GROUP
        }
        slowest = {
            g: max(((r, statistics.median(v)) for r, v in rs.items()), key=lambda x: x[1])
            for g, rs in per_rule.items()
        }
        samples = {
            g["name"]: {
                (r.get("record") or r["alert"]): prom.samples(r["expr"]) for r in g["rules"]
            }
            for g in [*rules.groups, *prom.proposed]
        }
        rewrites = _compare(prom.rewritten, per_rule, samples)
        return Result(
            fleet,
            raw_n,
            recorded_n,
            biggest,
            rss,
            cpu_cores,
            samples,
            groups,
            slowest,
            counts,
            done,
            rewrites,
        )
    finally:
        prom.stop()
        server.stop(timeout=30)


def _compare(
    rewritten: dict[str, str],
    per_rule: dict[str, dict[str, list[float]]],
    samples: dict[str, dict[str, int]],
) -> list[str]:
    """The rewritten rules' own cost vs the proposed group's, same Prometheus, same moment:
    samples read per evaluation (exact) and evaluation time (as loaded as the machine is)."""
    if not rewritten or PROPOSED_GROUP not in per_rule:
        return []
    read_before = sum(n for g, rs in samples.items() for r, n in rs.items() if r in rewritten)
    read_after = sum(samples.get(PROPOSED_GROUP, {}).values())
    before = sum(
        statistics.median(times)
        for group, rs in per_rule.items()
        if group != PROPOSED_GROUP
        for name, times in rs.items()
        if name in rewritten
    )
    after = sum(statistics.median(times) for times in per_rule[PROPOSED_GROUP].values())
    return [
        f"{len(rewritten)} histogram_quantile rules re-rating shared buckets -> bucket rates "
        f"recorded once ({PROPOSED_GROUP}): samples read {read_before} -> {read_after} "
        f"({read_after / max(1, read_before):.2f}x); eval time {before * 1000:.0f} -> "
        f"{after * 1000:.0f} ms ({after / before:.2f}x, wall clock on a loaded machine)"
    ]


# -- report -------------------------------------------------------------------------------------


def _report(result: Result) -> None:
    f = result.fleet
    print(
        f"\n== {f.gpus} GPUs, {f.replicas} vLLM replicas, {f.nodes} targets: "
        f"raw {result.raw_series:.0f} series, recorded {result.recorded_series:.0f} "
        f"({result.recorded_series / result.raw_series:.1%} of raw), "
        f"Prometheus RSS {result.rss_bytes / 2**20:.0f} MiB, CPU {result.cpu_cores:.2f} cores; "
        f"{result.rounds} rounds, backfill "
        f"{result.backfill[0]} series / {result.backfill[1]} samples"
    )
    print(
        f"   {'group':<44} {'median':>9} {'max':>9} {'of interval':>11} {'samples':>10}"
        "  slowest rule; rule reading most samples"
    )
    for name, (med, mx, interval) in sorted(result.groups.items()):
        rule, rule_s = result.slowest.get(name, ("-", 0.0))
        read = result.samples.get(name, {})
        heavy = max(read.items(), key=lambda kv: kv[1], default=("-", 0))
        flag = "" if med / interval < GOAL_FRACTION else "  <-- over goal"
        print(
            f"   {name:<44} {med * 1000:>7.1f}ms {mx * 1000:>7.1f}ms {med / interval:>10.2%}"
            f" {sum(read.values()):>10}  {rule} ({rule_s * 1000:.0f} ms);"
            f" {heavy[0]} ({heavy[1]}){flag}"
        )
    levels = ", ".join(f"{n}: {c}" for n, c in result.biggest_records)
    print(f"   recorded series by level: {levels}")
    for line in result.rewrites:
        print(f"   rewrite: {line}")


def _span(rng: float, off: float) -> str:
    parts = [f"[{rng / 3600:g}h]"] if rng else []
    return " ".join(parts + ([f"offset {off / 86400:g}d"] if off else []))


def _growth(a: Result, b: Result) -> str:
    size = b.fleet.gpus / a.fleet.gpus
    return (
        f"{a.fleet.gpus}->{b.fleet.gpus} GPUs (x{size:.0f}): "
        f"raw x{b.raw_series / a.raw_series:.2f}, "
        f"samples read x{b.samples_read / a.samples_read:.2f}, "
        f"rule eval x{b.eval_s / a.eval_s:.2f} ({b.eval_s / a.eval_s / size:.2f} of linear), "
        f"RSS x{b.rss_bytes / a.rss_bytes:.2f}"
    )


def summary(results: list[Result], contention: str) -> Summary:
    """The one line, and the ratios behind it with their goals."""
    last = results[-1]
    worst, frac = last.worst
    ratios = [
        Ratio(f"slowest group / interval ({worst})", frac, at_most=GOAL_FRACTION),
        Ratio("recorded / raw series", last.recorded_series / last.raw_series, GOAL_RECORDED),
    ]
    for a, b in itertools.pairwise(results):
        size = b.fleet.gpus / a.fleet.gpus
        ratios.append(
            Ratio(
                f"samples rules read, growth / size growth, {a.fleet.gpus}->{b.fleet.gpus} GPUs",
                b.samples_read / a.samples_read / size,
                at_most=GROWTH_SLACK,
            )
        )
    growth = [
        f"samples read x{b.samples_read / a.samples_read:.2f}, eval time "
        f"x{b.eval_s / a.eval_s:.2f}, RSS x{b.rss_bytes / a.rss_bytes:.2f} for size "
        f"x{b.fleet.gpus / a.fleet.gpus:.0f}"
        for a, b in itertools.pairwise(results)
    ]
    over = [n for n, (m, _, i) in last.groups.items() if m / i >= GOAL_FRACTION]
    missed = [r.name for r in ratios if r.met is False]
    line = (
        f"rules at {last.fleet.gpus} GPUs/{last.fleet.replicas} replicas "
        f"({last.raw_series / 1000:.0f}k raw series): slowest group {worst} {frac:.1%} of its "
        f"interval (goal <10%; {len(over)} groups over), all groups {last.eval_s:.1f} s per "
        f"round; recorded {last.recorded_series / last.raw_series:.1%} of raw (goal <=10%); "
        f"Prometheus RSS {last.rss_bytes / 2**20:.0f} MiB, CPU {last.cpu_cores:.2f} cores; "
        f"growth {'; '.join(growth) or 'n/a (one size)'}; {contention}; "
        f"{'goal met' if not missed else 'goal NOT met'}"
    )
    return Summary(line, tuple(ratios))


def run(sizes: Iterable[int], rounds: int) -> Summary:
    for tool in ("prometheus", "promtool"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not on PATH (Debian package; ./run setup installs it)")
    rules = RuleFiles.load(RULES)
    _log(f"{len(rules.paths)} rule files, {len(rules.groups)} groups, read from {RULES.name}/")
    proposed, rewritten = rules.proposal()
    for record, expr in rewritten.items():
        print(f"proposed rewrite: {record}: {expr}")
    for rule in proposed["rules"]:
        if rule["record"].split(":")[0].endswith("_le"):
            print(
                f"proposed record (in the group of the quantiles): {rule['record']}: {rule['expr']}"
            )
    beyond = sorted(
        {
            f"{name} ({_span(r, o)})"
            for name, lb in rules.lookbacks().items()
            for r, o in lb
            if o + r > HISTORY_S
        }
    )
    if beyond:
        print(
            "note: no history past a day, so these read no (or partial) data: " + ", ".join(beyond)
        )
    results = []
    with tempfile.TemporaryDirectory(prefix="inferwatch-rules-scale-") as tmp:
        for gpus in sizes:
            fleet = Fleet(gpus, SIZES.get(gpus, gpus // 4))
            result = run_size(fleet, rules, Path(tmp) / str(gpus), rounds)
            _report(result)
            results.append(result)
    for a, b in itertools.pairwise(results):
        print("growth: " + _growth(a, b))
    load = os.getloadavg()[0]
    contention = f"load average {load:.0f} on {os.cpu_count()} CPUs at the end"
    print(f"note: {contention} (a shared machine inflates every wall-clock figure)")
    return summary(results, contention)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=list(SIZES),
        help="GPU counts, comma-separated (replicas: a quarter); default 1000,4000,8000",
    )
    p.add_argument("--rounds", type=int, default=4, help="evaluation rounds measured per size")
    p.add_argument("--serve-fleet", nargs=4, metavar=("GPUS", "REPLICAS", "PORT", "EPOCH"))
    return p


def main(argv: Sequence[str] | None = None) -> Summary:
    """Run the benchmark and return its summary line and ratios."""
    args = _parser().parse_args([] if argv is None else argv)
    return run(args.sizes, args.rounds)


if __name__ == "__main__":
    parsed = _parser().parse_args()
    if parsed.serve_fleet:
        g, r, port, epoch = parsed.serve_fleet
        _serve_fleet(int(g), int(r), int(port), float(epoch))
    else:
        print(main(sys.argv[1:]).line)
