"""Synthetic but physically consistent scrape data of an inference fleet, for promtool.

One `Fleet` is a model served by replicas (one vLLM engine on one H100 each) behind a round-robin
Service. Every step it derives, per replica, what the exporter would publish:

- arrivals follow a daily curve (night 0.5, day 1.5, noon peak 3.0 requests/s per replica);
- a replica runs at most `max_num_seqs` requests; the rest wait (the queue grows by the excess
  arrivals and drains at the service rate), and in-flight requests follow Little's law
  (running = arrival rate x request duration);
- TTFT is log-normal around its p95 (vLLM's real bucket bounds, cumulative buckets), plus the time
  spent waiting in the queue; KV-cache usage grows with the running requests;
- counters are cumulative and monotone (floored expected counts), and carry the exporter's label
  set: namespace, pod, engine, model, target from the llm collector, instance/job/node from the
  scrape.

Faults are functions of time that change a replica's state (slower, fewer prefix-cache hits,
more errors, gone), so a scenario reads like the incident it replays.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

# vLLM's time-to-first-token buckets (vllm/v1/metrics, as the exporter republishes them).
VLLM_TTFT_BUCKETS = (
    "0.001", "0.005", "0.01", "0.02", "0.04", "0.06", "0.08", "0.1", "0.25", "0.5", "0.75",
    "1.0", "2.5", "5.0", "7.5", "10.0", "20.0", "40.0", "80.0", "160.0", "640.0", "2560.0",
)  # fmt: skip
H = 3600
GIB = 1024**3
SIGMA = 0.45  # log-normal spread of TTFT: p95 = 2.1x the median
Z95 = 1.645


def phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def daily_rate(t: float) -> float:
    """Arrivals per replica (requests/s): 0.5 at night, 1.5 in the day, 3.0 at the 12:30 peak."""
    h = (t / H) % 24
    day = 1 / (1 + math.exp(-(h - 7) * 2)) / (1 + math.exp((h - 21) * 2))
    return 0.5 + 1.0 * day + 1.5 * math.exp(-0.5 * ((h - 12.5) / 1.5) ** 2)


@dataclass
class ReplicaState:
    """What a replica is like at one moment; faults edit it."""

    slow: float = 1.0  # TTFT factor
    duration_factor: float = 1.0  # whole-request slowdown (Little's law: more in flight)
    p95_override: float | None = None  # a fixed p95 TTFT in seconds (fleet-wide incidents)
    prefix_hit_ratio: float = 0.92
    error_ratio: float = 0.002
    traffic: float = 1.0  # share of the usual arrivals (a traffic drop)
    up: bool = True  # answers /metrics (inferwatch_llm_up)
    scraped: bool = True  # its exporter is scraped (an exporter gap: no series at all)
    pod: str | None = None  # a restart gives a new pod name and target
    ttft_buckets: tuple[str, ...] = VLLM_TTFT_BUCKETS


Fault = Callable[[int, float, ReplicaState], None]
"""fault(replica index, t seconds, state): edits the state in place."""


@dataclass
class Fleet:
    replicas: int = 4
    namespace: str = "llm"
    model: str = "qwen2.5-32b-instruct"
    engine: str = "vllm"
    max_num_seqs: int = 64
    request_seconds: float = 8.0  # mean end-to-end request time at base speed
    base_p95: float = 0.085
    kv_per_request: float = 0.0145  # KV-cache fraction one running request holds (64 -> 0.93)
    prompt_tokens: int = 1000
    generation_tokens: int = 250
    rate: Callable[[float], float] = daily_rate
    faults: list[Fault] = field(default_factory=list)
    seed: int = 12
    max_waiting: float = math.inf  # clients give up beyond this queue (closed loop, timeouts)
    pods: str = "vllm"  # pod name prefix; pods are <pods>-<replica>
    nodes: str = "gpu-node"  # node name prefix; replica r runs on <nodes>-<r>


@dataclass
class Series:
    name: str
    labels: dict[str, str]
    values: list[float | None] = field(default_factory=list)  # None: not scraped

    def promtool(self) -> dict[str, str]:
        inner = ",".join(f'{k}="{v}"' for k, v in self.labels.items())
        return {"series": f"{self.name}{{{inner}}}", "values": encode(self.values)}


def _fmt(v: float) -> str:
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return format(v, ".8g")


def encode(values: list[float | None]) -> str:
    """promtool's expanding notation: runs with a constant step become `a+bxN`, gaps `_xN`; a
    series that ends gets a staleness marker, as Prometheus writes when a target disappears."""
    out: list[str] = []
    i, n = 0, len(values)
    while i < n:
        v = values[i]
        if v is None:
            j = i
            while j < n and values[j] is None:
                j += 1
            if i == 0:  # not there yet (a pod created later)
                out.append(f"_x{j - i}")
            elif j == n:  # gone (a deleted pod): Prometheus marks its series stale
                out.append("stale")
                break
            else:  # a gap (failed scrapes): stale, then nothing until it is back
                out.append("stale" if j - i == 1 else f"stale _x{j - i - 1}")
            i = j
            continue
        j = i + 1
        step = None
        while j < n and values[j] is not None:
            d = values[j] - values[j - 1]  # type: ignore[operator]
            if step is None:
                step = d
            elif abs(d - step) > 1e-9 * max(1.0, abs(step)):
                break
            j += 1
        run = j - i  # values i..j-1 follow v + k*step
        if run == 1:
            out.append(_fmt(v))
        elif step == 0:
            out.append(f"{_fmt(v)}x{run - 1}")
        else:
            assert step is not None
            if run > 2 and step == int(step) and v == int(v):
                sign = "+" if step > 0 else "-"
                out.append(f"{_fmt(v)}{sign}{_fmt(abs(step))}x{run - 1}")
            else:
                out.extend(_fmt(x) for x in values[i:j])  # type: ignore[arg-type]
        i = j
    return " ".join(out)


def _octets(name: str) -> str:
    h = sum((i + 1) * ord(c) for i, c in enumerate(name))
    return f"{h % 250}.{h // 250 % 250}"


def target_of(pod: str) -> str:
    """The engine target of a pod (its IP: a new pod gets a new one)."""
    return f"10.0.{_octets(pod)}:8000"


def exporter_of(node: str) -> str:
    """The exporter DaemonSet pod's address on a node."""
    return f"10.1.{_octets(node)}:9835"


def steps(hours: float, step: int) -> Iterator[float]:
    for k in range(int(hours * H / step) + 1):
        yield k * step


def simulate(fleet: Fleet, hours: float, step: int) -> list[Series]:
    """Every llm series of every replica, one sample per step."""
    rng = random.Random(fleet.seed)
    n_steps = int(hours * H / step) + 1
    series: dict[tuple[str, tuple[tuple[str, str], ...]], Series] = {}

    def put(k: int, name: str, labels: dict[str, str], value: float) -> None:
        key = (name, tuple(labels.items()))
        s = series.get(key)
        if s is None:
            s = series[key] = Series(name, labels, [None] * n_steps)
        s.values[k] = value

    counters: dict[tuple[str, str], float] = {}
    queue = [0.0] * fleet.replicas

    def add(pod: str, key: str, inc: float) -> float:
        counters[(pod, key)] = counters.get((pod, key), 0.0) + inc
        return counters[(pod, key)]

    for k, t in enumerate(steps(hours, step)):
        states = []
        for r in range(fleet.replicas):
            st = ReplicaState()
            for fault in fleet.faults:
                fault(r, t, st)
            states.append(st)
        live = [st for st in states if st.up]
        # Round-robin: the Service spreads the model's arrivals evenly over the ready replicas.
        total = sum(fleet.rate(t) * st.traffic for st in states)
        for r, st in enumerate(states):
            pod = st.pod or f"{fleet.pods}-{r}"
            if not st.scraped:
                continue
            labels = {
                "namespace": fleet.namespace,
                "pod": pod,
                "engine": fleet.engine,
                "model": fleet.model,
                "target": target_of(pod),
                "instance": exporter_of(f"{fleet.nodes}-{r}"),
                "job": "inferwatch",
                "node": f"{fleet.nodes}-{r}",
            }
            put(k, "inferwatch_llm_up", labels, 1 if st.up else 0)
            if not st.up:
                continue
            arrivals = total / len(live)
            duration = fleet.request_seconds * st.duration_factor
            service = fleet.max_num_seqs / duration  # requests/s at a full batch
            queue[r] = min(fleet.max_waiting, max(0.0, queue[r] + (arrivals - service) * step))
            completions = min(arrivals, service) if queue[r] == 0 else service
            running = min(float(fleet.max_num_seqs), arrivals * duration)
            wait = queue[r] / service  # seconds a new request waits
            noise = 1 + 0.03 * (rng.random() * 2 - 1)
            if st.p95_override is not None:
                p95 = st.p95_override * noise
            else:
                load = 1 + 0.15 * (fleet.rate(t) / 1.5 - 1)
                p95 = fleet.base_p95 * load * st.slow * noise
            p95 += wait
            median = p95 / math.exp(Z95 * SIGMA)
            done = completions * step
            count = add(pod, "count", done)
            for le in st.ttft_buckets:
                frac = phi((math.log(float(le)) - math.log(median)) / SIGMA)
                cum = add(pod, le, done * frac)
                put(
                    k,
                    "inferwatch_llm_time_to_first_token_seconds_bucket",
                    {**labels, "le": le},
                    math.floor(cum),
                )
            put(
                k,
                "inferwatch_llm_time_to_first_token_seconds_bucket",
                {**labels, "le": "+Inf"},
                math.floor(count),
            )
            put(k, "inferwatch_llm_time_to_first_token_seconds_count", labels, math.floor(count))
            mean = median * math.exp(SIGMA**2 / 2)
            put(
                k,
                "inferwatch_llm_time_to_first_token_seconds_sum",
                labels,
                round(add(pod, "sum", done * mean), 3),
            )
            for outcome, reason, share in (
                ("success", "stop", (1 - st.error_ratio) * 0.8),
                ("success", "length", (1 - st.error_ratio) * 0.2),
                ("error", "error", st.error_ratio),
            ):
                value = math.floor(add(pod, f"req/{reason}", done * share))
                put(
                    k,
                    "inferwatch_llm_requests_total",
                    {**labels, "outcome": outcome, "finished_reason": reason},
                    value,
                )
            prompt = add(pod, "prompt", done * fleet.prompt_tokens)
            put(k, "inferwatch_llm_prompt_tokens_total", labels, math.floor(prompt))
            put(
                k,
                "inferwatch_llm_generation_tokens_total",
                labels,
                math.floor(add(pod, "gen", done * fleet.generation_tokens)),
            )
            put(k, "inferwatch_llm_prefix_cache_queries_tokens_total", labels, math.floor(prompt))
            hits = add(pod, "hits", done * fleet.prompt_tokens * st.prefix_hit_ratio)
            put(k, "inferwatch_llm_prefix_cache_hits_tokens_total", labels, math.floor(hits))
            put(k, "inferwatch_llm_requests_running", labels, round(running))
            put(k, "inferwatch_llm_requests_waiting", labels, round(queue[r]))
            put(
                k,
                "inferwatch_llm_kv_cache_usage_ratio",
                labels,
                round(running * fleet.kv_per_request, 4),
            )
    return list(series.values())


def node_series(fleet: Fleet, hours: float, step: int, *, used: float = 0.92) -> list[Series]:
    """One exporter and one H100 per node, as the gpu collector publishes them (vLLM holds
    `gpu_memory_utilization` of the GPU); scraped when the fleet's replica on it is."""
    out = []
    for r in range(fleet.replicas):
        node = f"{fleet.nodes}-{r}"
        scraped = []
        for t in steps(hours, step):
            st = ReplicaState()
            for fault in fleet.faults:
                fault(r, t, st)
            scraped.append(st.scraped)
        gpu = {
            "gpu": "0",
            "uuid": f"GPU-{node}",
            "instance": exporter_of(node),
            "job": "inferwatch",
            "node": node,
        }

        def when(v: float, scraped: list[bool] = scraped) -> list[float | None]:
            return [v if ok else None for ok in scraped]

        out += [
            Series("inferwatch_gpu_up", gpu, when(1)),
            Series("inferwatch_gpu_memory_total_bytes", gpu, when(80 * 10**9)),
            Series("inferwatch_gpu_memory_used_bytes", gpu, when(round(used * 80 * 10**9))),
            Series(
                "inferwatch_exporter_build_info",
                {
                    "version": "0.3.0",
                    "instance": exporter_of(node),
                    "job": "inferwatch",
                    "node": node,
                },
                when(1),
            ),
        ]
    return out


def at(hours: float) -> str:
    """A promtool duration for an offset from the start of the test."""
    minutes = round(hours * 60)
    d, rest = divmod(minutes, 24 * 60)
    h, m = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((d, "d"), (h, "h"), (m, "m")) if v) or "0m"


def ramp(t: float, start_h: float, end_h: float, a: float, b: float) -> float:
    """a before start, b after end, linear in between."""
    if t <= start_h * H:
        return a
    if t >= end_h * H:
        return b
    return a + (b - a) * (t - start_h * H) / ((end_h - start_h) * H)


def as_dicts(series: list[Series]) -> list[dict[str, Any]]:
    return [s.promtool() for s in series]
