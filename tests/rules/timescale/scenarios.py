# ruff: noqa: E501  (scenario tables: PromQL and label sets read best on one line)
"""The incidents Inferwatch exists for, replayed at the timescales they really take.

A replay is one promtool test file: several independent fleets (one model each, on their own
nodes, so their alerts never mix) over the same clock, with the faults that turn each into its
incident. Checks name which alerts fire (name, severity, and the model, pod or node they name) at
given moments, and which alerts fired at all over the whole replay, so that everything else
provably stayed silent. Every rule file is loaded. Times are hours from the start; day 1 starts at
midnight. Samples (and rule evaluations) are 5 minutes apart where the incident takes hours, one
minute where it takes minutes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.rules.timescale.fleet import (
    GIB,
    Fleet,
    H,
    ReplicaState,
    Series,
    as_dicts,
    at,
    exporter_of,
    node_series,
    ramp,
    simulate,
    steps,
    target_of,
)

BY = "alertname, severity, model, pod, node"


def fired(alert: str, severity: str, *, model: str = "", pod: str = "", node: str = "") -> str:
    """The labels of one firing alert as the checks group them."""
    pairs = [
        ("alertname", alert),
        ("severity", severity),
        ("model", model),
        ("pod", pod),
        ("node", node),
    ]
    return "{" + ",".join(f'{k}="{v}"' for k, v in pairs if v) + "}"


@dataclass
class Replay:
    name: str
    hours: float
    step: int  # seconds between samples and between rule evaluations
    fleets: list[Fleet]
    firing_at: dict[float, set[str]] = field(default_factory=dict)
    fired_ever: set[str] = field(default_factory=set)
    extra: list[Series] = field(default_factory=list)
    exprs: list[dict[str, Any]] = field(default_factory=list)
    incidents: list[str] = field(default_factory=list)
    watch: str = ".+"  # the alert names the `firing_at` checks look at (regex)

    def series(self) -> list[Series]:
        out: list[Series] = []
        for fleet in self.fleets:
            out += simulate(fleet, self.hours, self.step)
            out += node_series(fleet, self.hours, self.step)
        return out + self.extra

    def alerts_checked(self) -> set[tuple[str, str]]:
        """(alertname, severity) of every alert a check expects to fire."""
        found = set()
        for labels in self.fired_ever | set().union(*self.firing_at.values()):
            pairs = dict(p.split("=", 1) for p in labels.strip("{}").split(","))
            found.add((pairs["alertname"].strip('"'), pairs["severity"].strip('"')))
        return found


def eval_order(rule_files: list[str]) -> list[str]:
    """Alert groups first, then recording groups before the groups that read them.

    Without `group_eval_order` promtool evaluates the groups of one timestamp in random order, so
    an alert read records one step old or fresh from run to run and a replay was flaky. Alerts
    first read the records of the previous evaluation: the later of the two cases a real
    Prometheus has (its groups run independently), the same in every run.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for path in rule_files:
        for group in yaml.safe_load(Path(path).read_text())["groups"]:
            groups[group["name"]] = group["rules"]
    writes = {n: {r["record"] for r in rs if "record" in r} for n, rs in groups.items()}
    alerting = [n for n, rs in groups.items() if any("alert" in r for r in rs)]
    pending = [n for n in groups if n not in alerting]
    order: list[str] = []
    while pending:
        for name in pending:
            text = " ".join(str(r["expr"]) for r in groups[name])
            if not any(
                re.search(rf"(?<![\w:]){re.escape(rec)}(?![\w:])", text)
                for other in pending
                if other != name
                for rec in writes[other]
            ):
                order.append(name)
                pending.remove(name)
                break
        else:
            raise ValueError(f"recording groups read each other: {pending}")
    return alerting + order


def promtool_test(replay: Replay, rule_files: list[str]) -> dict[str, Any]:
    exprs = list(replay.exprs)
    for hours, firing in sorted(replay.firing_at.items()):
        exprs.append(
            {
                "expr": f'group by ({BY}) (ALERTS{{alertstate="firing",alertname=~"{replay.watch}"}})',
                "eval_time": at(hours),
                "exp_samples": [{"labels": f, "value": 1} for f in sorted(firing)],
            }
        )
    exprs.append(
        {
            "expr": f'group by ({BY}) (max_over_time(ALERTS{{alertstate="firing"}}[{at(replay.hours)}]))',
            "eval_time": at(replay.hours),
            "exp_samples": [{"labels": f, "value": 1} for f in sorted(replay.fired_ever)],
        }
    )
    return {
        "rule_files": rule_files,
        "evaluation_interval": f"{replay.step}s",
        "group_eval_order": eval_order(rule_files),
        "tests": [
            {
                "name": f"{replay.name}: " + "; ".join(replay.incidents),
                "interval": f"{replay.step}s",
                "input_series": as_dicts(replay.series()),
                "promql_expr_test": exprs,
            }
        ],
    }


Fault = Callable[[int, float, ReplicaState], None]


def during(
    start_h: float, end_h: float, edit: Callable[[ReplicaState], None], who: set[int] | None = None
) -> Fault:
    def apply(r: int, t: float, st: ReplicaState) -> None:
        if start_h * H <= t < end_h * H and (who is None or r in who):
            edit(st)

    return apply


def creep(t: float, start_h: float, values: tuple[float, float, float]) -> float:
    """From values[0] to values[1] in 24 h, then to values[2] in 24 h more."""
    if t < (start_h + 24) * H:
        return ramp(t, start_h, start_h + 24, values[0], values[1])
    return ramp(t, start_h + 24, start_h + 48, values[1], values[2])


def slow_creep(start_h: float, who: set[int]) -> Fault:
    """p95 TTFT 85 -> 198 -> 320 ms and prefix-cache hits 92 -> 56 -> 39% over 48 h. The whole
    request slows too, so the replica holds 1.6-2.4x yesterday's requests at the same arrival
    rate (Little's law)."""

    def apply(r: int, t: float, st: ReplicaState) -> None:
        if r in who and t >= start_h * H:
            st.slow = creep(t, start_h, (1.0, 198 / 85, 320 / 85))
            st.duration_factor = 1 + 0.45 * (st.slow - 1)
            st.prefix_hit_ratio = creep(t, start_h, (0.92, 0.56, 0.39))

    return apply


def restart(at_h: float, replica: int, new_pod: str) -> Fault:
    def apply(r: int, t: float, st: ReplicaState) -> None:
        if r == replica and t >= at_h * H:
            st.pod = new_pod

    return apply


def _set(**attrs: Any) -> Callable[[ReplicaState], None]:
    def edit(st: ReplicaState) -> None:
        for k, v in attrs.items():
            setattr(st, k, v)

    return edit


DRIFT = "InferwatchLLMLatencyDrift"
PREFIX = "InferwatchLLMPrefixCacheHitRatioDrop"
RISING = "InferwatchLLMFleetLatencyRising"
REGRESSION = "InferwatchLLMFleetLatencyRegression"
TTFT_HIGH = "InferwatchLLMTTFTHigh"
ERR_HIGH = "InferwatchLLMErrorRateHigh"
ERR_ELEVATED = "InferwatchLLMErrorRateElevated"
DROP = "InferwatchLLMTrafficDrop"
FORECAST = "InferwatchLLMLoadForecastExceedsCapacity"
BACKLOG = "InferwatchLLMQueueBacklog"
BOUND = "InferwatchLLMTTFTSLOBoundMissing"
FRAG = "InferwatchCUDAFragmentationHigh"
LEAK = "InferwatchCUDAMemoryLeak"
EXPORTER_DOWN = "InferwatchExporterDown"

# -- two days: a healthy fleet, a 3x rollout, a traffic drop ------------------------------------

CHAT = "qwen2.5-32b-instruct"
CODER = "qwen2.5-coder-32b"
ASSIST = "mistral-small-24b"
HEALTHY_PODS = [f"chat-{r}" for r in range(4)]


def _per_replica(
    expr: str, eval_time: str, value: float, model: str = CHAT, pods: list[str] = HEALTHY_PODS
) -> dict[str, Any]:
    """A check of one value on every replica of a model (`MODEL` in expr: its matcher)."""
    return {
        "expr": expr.replace("MODEL", f'{{model="{model}"}}'),
        "eval_time": eval_time,
        "exp_samples": [
            {
                "labels": f'{{namespace="llm",pod="{p}",engine="vllm",model="{model}",target="{target_of(p)}"}}',
                "value": value,
            }
            for p in pods
        ],
    }


def _per_model(expr: str, eval_time: str, value: float, model: str = CHAT) -> dict[str, Any]:
    return {
        "expr": expr.replace("MODEL", f'{{model="{model}"}}'),
        "eval_time": eval_time,
        "exp_samples": [
            {"labels": f'{{namespace="llm",engine="vllm",model="{model}"}}', "value": value}
        ],
    }


TWO_DAYS = Replay(
    name="two-days",
    hours=48,
    step=300,
    incidents=[
        f"{CHAT}: 4 replicas through two days with a 2x noon peak, nothing fires",
        f"{CODER}: a rollout at 10:00 on day 2 makes every replica 3x slower (p95 within the SLO "
        "bound): paged within 2 hours, firing until the end",
        f"{ASSIST}: traffic falls to 40% for an hour at 14:00 on day 2: caught within 30 minutes",
    ],
    fleets=[
        Fleet(model=CHAT, pods="chat", nodes="node-chat"),
        Fleet(
            model=CODER,
            pods="coder",
            nodes="node-coder",
            seed=3,
            faults=[during(34, 99, _set(slow=3.0, duration_factor=1.5))],
        ),
        Fleet(
            model=ASSIST,
            pods="assist",
            nodes="node-assist",
            seed=5,
            faults=[during(38, 39, _set(traffic=0.4))],
        ),
    ],
    firing_at={
        12.5: set(),
        33.9: set(),
        # The 30-minute p95 passes 1.2x and 2x within minutes; then 30m (2x) and 1h (1.2x) of for.
        34.75: {fired(REGRESSION, "critical", model=CODER)},
        35.25: {fired(REGRESSION, "critical", model=CODER), fired(RISING, "warning", model=CODER)},
        38.5: {
            fired(REGRESSION, "critical", model=CODER),
            fired(RISING, "warning", model=CODER),
            fired(DROP, "warning", model=ASSIST),
        },
        39.75: {fired(REGRESSION, "critical", model=CODER), fired(RISING, "warning", model=CODER)},
        47.9: {fired(REGRESSION, "critical", model=CODER), fired(RISING, "warning", model=CODER)},
    },
    fired_ever={
        fired(REGRESSION, "critical", model=CODER),
        fired(RISING, "warning", model=CODER),
        fired(DROP, "warning", model=ASSIST),
    },
    exprs=[
        _per_replica(
            "round(max by (namespace, pod, engine, model, target) (inferwatch_llm_upMODEL))",
            "1d3h",
            1,
        ),
        # Round-robin: each replica gets a quarter of the requests; 0.5 request/s each at night.
        _per_replica(
            "round(replica:inferwatch_llm_requests_per_model_requests:ratio_rate30mMODEL, 0.01)",
            "1d12h",
            0.25,
        ),
        _per_model("round(model:inferwatch_llm_requests:rate30mMODEL, 0.1)", "1d3h", 2),
        _per_model(
            "round(model:inferwatch_llm_requests_per_replica:rate30mMODEL, 0.1)", "1d3h", 0.5
        ),
        # Day 2 looks like day 1: the fleet baselines read 1; the 3x rollout reads about 3.
        _per_model(
            "round(model:inferwatch_llm_latency_vs_baseline:ratioMODEL, 0.1)", "1d12h30m", 1
        ),
        _per_model(
            "(model:inferwatch_llm_latency_vs_baseline:ratioMODEL > bool 2.5) * (model:inferwatch_llm_latency_vs_baseline:ratioMODEL < bool 4.5)",
            "1d12h30m",
            1,
            model=CODER,
        ),
        _per_model(
            "round(model:inferwatch_llm_requests:rate5mMODEL / model:inferwatch_llm_requests:rate5m_baseline, 0.1)",
            "1d12h30m",
            1,
        ),
        _per_model(
            "(model:inferwatch_llm_time_to_first_token_seconds:median_p95_rate30m_baselineMODEL > bool 0.08)"
            " * (model:inferwatch_llm_time_to_first_token_seconds:median_p95_rate30mMODEL < bool 0.12)",
            "1d12h30m",
            1,
        ),
        _per_replica(
            "round(replica:inferwatch_llm_prefix_cache_hits_per_queries:baseline_ratio_rate30mMODEL, 0.01)",
            "1d12h",
            0.92,
        ),
    ],
)

# -- three days: one replica creeping, the same after a restart, the whole fleet creeping --------

RAG = "qwen2.5-32b-rag"
AGENT = "qwen2.5-32b-agent"
AGENT_PODS = [f"agent-{r}" for r in range(4)]

THREE_DAYS = Replay(
    name="three-days",
    hours=72,
    step=300,
    incidents=[
        f"{CHAT}: one replica creeps for 48 h from the start of day 2; drift fires within hours "
        "and keeps firing while the replica stays slow (3-4x its peers on day 3)",
        f"{RAG}: the same creep, and the slow pod is restarted at 16:00 on day 2 onto the same bad "
        "node: the old pod's alert clears at once, the new pod is judged against its peers once "
        "its counters cover one 30-minute window (not on its cold first requests)",
        f"{AGENT}: the same creep on all four replicas (a bad rollout): the peer test sees 1.0 and "
        "320 ms is far inside the SLO; the fleet baseline and the 3-day prefix-cache best catch it",
    ],
    fleets=[
        Fleet(model=CHAT, pods="chat", nodes="node-chat", faults=[slow_creep(24, {0})]),
        Fleet(
            model=RAG,
            pods="rag",
            nodes="node-rag",
            seed=7,
            faults=[slow_creep(24, {0}), restart(40, 0, "rag-0-b")],
        ),
        Fleet(
            model=AGENT,
            pods="agent",
            nodes="node-agent",
            seed=9,
            faults=[slow_creep(24, {0, 1, 2, 3})],
        ),
    ],
    # vLLM's buckets are coarse between 0.1 and 0.25 s: interpolated in that bucket, the fleet's
    # p95 of ~150 ms reads over 2x the 85 ms of the day before, so the page comes from ~33 h, and
    # it resolves on day 3, when yesterday was slow too (no week-old baseline in 3 days).
    firing_at={
        # Day 1 healthy; the creep reaches 1.5x the peers (~128 ms) about 9 h in, then 30m of for.
        30: {fired(RISING, "warning", model=AGENT)},
        36: {
            fired(DRIFT, "warning", model=CHAT, pod="chat-0"),
            fired(DRIFT, "warning", model=RAG, pod="rag-0"),
            fired(RISING, "warning", model=AGENT),
            fired(REGRESSION, "critical", model=AGENT),
        },
        39.9: {
            fired(DRIFT, "warning", model=CHAT, pod="chat-0"),
            fired(DRIFT, "warning", model=RAG, pod="rag-0"),
            fired(RISING, "warning", model=AGENT),
            fired(REGRESSION, "critical", model=AGENT),
        },
        # The deleted pod's alert is gone at the next evaluation; the new pod fires after one
        # window (30m) and its 30m of for.
        40.1: {
            fired(DRIFT, "warning", model=CHAT, pod="chat-0"),
            fired(RISING, "warning", model=AGENT),
            fired(REGRESSION, "critical", model=AGENT),
        },
        41.25: {
            fired(DRIFT, "warning", model=CHAT, pod="chat-0"),
            fired(DRIFT, "warning", model=RAG, pod="rag-0-b"),
            fired(RISING, "warning", model=AGENT),
            fired(REGRESSION, "critical", model=AGENT),
        },
        44: {
            fired(DRIFT, "warning", model=CHAT, pod="chat-0"),
            fired(DRIFT, "warning", model=RAG, pod="rag-0-b"),
            fired(RISING, "warning", model=AGENT),
            fired(REGRESSION, "critical", model=AGENT),
        },
        # Day 3: still firing at 3-4x the peers; the prefix-cache slide (92 -> 39%) fired too.
        71.9: {
            fired(DRIFT, "warning", model=CHAT, pod="chat-0"),
            fired(PREFIX, "warning", model=CHAT, pod="chat-0"),
            fired(DRIFT, "warning", model=RAG, pod="rag-0-b"),
            fired(PREFIX, "warning", model=RAG, pod="rag-0-b"),
            fired(RISING, "warning", model=AGENT),
        }
        | {fired(PREFIX, "warning", model=AGENT, pod=p) for p in AGENT_PODS},
    },
    fired_ever={
        fired(DRIFT, "warning", model=CHAT, pod="chat-0"),
        fired(PREFIX, "warning", model=CHAT, pod="chat-0"),
        fired(DRIFT, "warning", model=RAG, pod="rag-0"),
        fired(DRIFT, "warning", model=RAG, pod="rag-0-b"),
        fired(PREFIX, "warning", model=RAG, pod="rag-0-b"),
        fired(RISING, "warning", model=AGENT),
        fired(REGRESSION, "critical", model=AGENT),
    }
    | {fired(PREFIX, "warning", model=AGENT, pod=p) for p in AGENT_PODS},
)

# -- half a day: fast thresholds, errors, a TTFT histogram without the SLO bound, GPU memory ------

SMALL = "llama-3.1-8b"
# An engine started with custom buckets (vLLM --custom-histogram-buckets) that skip 0.75.
CUSTOM_TTFT_BUCKETS = ("0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0")


def _allocator(
    node: str, hours: float, step: int, shape: Callable[[float], dict[str, float]]
) -> list[Series]:
    """One vLLM process's CUDA caching allocator (pool "all") and its GPU, in bytes."""
    labels = {
        "uuid": f"GPU-{node}",
        "namespace": "llm",
        "pod": f"{node}-vllm",
        "container": "vllm",
        "instance": exporter_of(node),
        "job": "inferwatch",
        "node": node,
        "pool": "all",
    }
    gpu = {
        "gpu": "0",
        "uuid": f"GPU-{node}",
        "instance": exporter_of(node),
        "job": "inferwatch",
        "node": node,
    }
    rows = [shape(t) for t in steps(hours, step)]
    out = [
        Series(f"inferwatch_cuda_allocator_{k}_bytes", labels, [round(r[k]) for r in rows])
        for k in ("reserved", "allocated", "free", "largest_free_block", "inactive_split")
    ]
    out += [
        Series("inferwatch_cuda_allocator_alloc_retries_total", labels, [0] * len(rows)),
        Series("inferwatch_gpu_up", gpu, [1] * len(rows)),
        Series("inferwatch_gpu_memory_total_bytes", gpu, [80 * 10**9] * len(rows)),
        Series("inferwatch_gpu_memory_used_bytes", gpu, [round(r["used"]) for r in rows]),
        Series(
            "inferwatch_exporter_build_info",
            {"version": "0.3.0", "instance": exporter_of(node), "job": "inferwatch", "node": node},
            [1] * len(rows),
        ),
    ]
    return out


def fragmenting(t: float) -> dict[str, float]:
    """vLLM: weights + KV cache allocated up front (73 GB); from 02:00 to 04:00 the cache of
    freed blocks grows to 5.8 GB in pieces (largest 0.64 GB) and the GPU is 96% full."""
    cached = ramp(t, 2, 4, 0.6e9, 5.8e9)
    largest = ramp(t, 2, 4, 0.5e9, 0.64e9)
    return {
        "reserved": 73e9 + cached,
        "allocated": 73e9,
        "free": cached,
        "largest_free_block": largest,
        "inactive_split": cached * 0.5,
        "used": 76.8e9 if t >= 3 * H else 74.2e9,
    }


def leaking(t: float) -> dict[str, float]:
    """A steady 2 GiB/h leak from 02:00 with 28 GB free: exhausted about 13 h later."""
    grown = max(0.0, t - 2 * H) / H * 2 * GIB
    return {
        "reserved": 40e9 + grown,
        "allocated": 39e9 + grown,
        "free": 1e9,
        "largest_free_block": 0.9e9,
        "inactive_split": 0.1e9,
        "used": 52e9 + grown,
    }


def _rolling_update(node: str, hours: float, step: int, at_h: float) -> list[Series]:
    """The exporter DaemonSet pod on `node` is replaced at `at_h`: new pod IP, new instance."""
    n = int(hours * H / step) + 1
    cut = int(at_h * H / step)
    old = {"version": "0.3.0", "instance": "10.1.7.1:9835", "job": "inferwatch", "node": node}
    new = {"version": "0.3.1", "instance": "10.1.7.2:9835", "job": "inferwatch", "node": node}
    gpu_old = {
        "gpu": "0",
        "uuid": f"GPU-{node}",
        "instance": "10.1.7.1:9835",
        "job": "inferwatch",
        "node": node,
    }
    gpu_new = {**gpu_old, "instance": "10.1.7.2:9835"}
    before: list[float | None] = [1] * cut + [None] * (n - cut)
    after: list[float | None] = [None] * (cut + 1) + [1] * (n - cut - 1)
    return [
        Series("inferwatch_exporter_build_info", old, before),
        Series("inferwatch_exporter_build_info", new, after),
        Series("inferwatch_gpu_up", gpu_old, before),
        Series("inferwatch_gpu_up", gpu_new, after),
    ]


BOUND_SMALL = fired(BOUND, "info", model=SMALL)
FRAG_NODE = fired(FRAG, "warning", pod="node-frag-0-vllm", node="node-frag-0")
LEAK_TICKET = fired(LEAK, "warning", pod="node-leak-0-vllm", node="node-leak-0")
LEAK_PAGE = fired(LEAK, "critical", pod="node-leak-0-vllm", node="node-leak-0")
ERR_PAGE = fired(ERR_HIGH, "critical", model=CODER)
ERR_TICKET = fired(ERR_ELEVATED, "warning", model=CODER)
ERR_BURN = fired("InferwatchLLMErrorBudgetBurn", "warning", model=CODER)
TTFT_BURN = fired("InferwatchLLMTTFTBudgetBurn", "warning", model=CHAT)

HALF_DAY = Replay(
    name="half-day",
    hours=14,
    step=300,
    incidents=[
        f"{CHAT}: the fleet's p95 TTFT at 850 ms (06:00-07:00), then 1.2 s (10:00-11:00): the fast "
        "threshold alert fires within minutes each time (the burn-rate tiers need 72%/30% of "
        "requests over the bound); no page below 2 s",
        f"{CODER}: 3.5% of requests fail for 2 h (06:00-08:00): paged within 40 minutes, not after "
        "5 h; then 2.5% for 2 h (10:00-12:00): a ticket, no page",
        f"{SMALL}: TTFT buckets without the 0.75 s SLO bound: an info alert names the bounds",
        "node-frag-0: vLLM's cached-but-free memory grows to 5.8 GB in pieces on a 96%-full GPU while "
        "(reserved - allocated) / reserved stays 0.07",
        "node-leak-0: a steady 2 GiB/h leak with 13 h left opens a ticket within 2 h and pages 4 h "
        "before exhaustion",
        "node-roll-0: a rolling update of the exporter (new pod IP) is not an exporter down",
    ],
    fleets=[
        Fleet(
            model=CHAT,
            pods="chat",
            nodes="node-chat",
            faults=[during(6, 7, _set(p95_override=0.85)), during(10, 11, _set(p95_override=1.2))],
        ),
        Fleet(
            model=CODER,
            pods="coder",
            nodes="node-coder",
            seed=3,
            faults=[during(6, 8, _set(error_ratio=0.035)), during(10, 12, _set(error_ratio=0.025))],
        ),
        Fleet(
            model=SMALL,
            pods="small",
            nodes="node-small",
            replicas=2,
            seed=4,
            base_p95=0.3,
            faults=[during(0, 99, _set(ttft_buckets=CUSTOM_TTFT_BUCKETS))],
        ),
    ],
    extra=[
        *_allocator("node-frag-0", 14, 300, fragmenting),
        *_allocator("node-leak-0", 14, 300, leaking),
        *_rolling_update("node-roll-0", 14, 300, 5),
    ],
    # With under 3 days of history, the SLO burn rates' slow tier (1x over 3 days and 6 hours)
    # sees little else than the incident: both budget-burn tickets fire too.
    firing_at={
        1.9: {BOUND_SMALL},
        5.9: {BOUND_SMALL, FRAG_NODE, LEAK_TICKET},
        6.75: {
            BOUND_SMALL,
            FRAG_NODE,
            LEAK_TICKET,
            fired(TTFT_HIGH, "warning", model=CHAT),
            ERR_PAGE,
            ERR_TICKET,
            ERR_BURN,
        },
        9.5: {BOUND_SMALL, FRAG_NODE, LEAK_TICKET, ERR_BURN},
        11: {
            BOUND_SMALL,
            FRAG_NODE,
            LEAK_TICKET,
            fired(TTFT_HIGH, "warning", model=CHAT),
            ERR_TICKET,
            ERR_BURN,
            TTFT_BURN,
        },
        13: {BOUND_SMALL, FRAG_NODE, LEAK_TICKET, LEAK_PAGE, ERR_BURN},
    },
    fired_ever={
        BOUND_SMALL,
        FRAG_NODE,
        LEAK_TICKET,
        LEAK_PAGE,
        ERR_PAGE,
        ERR_TICKET,
        ERR_BURN,
        TTFT_BURN,
        fired(TTFT_HIGH, "warning", model=CHAT),
    },
    exprs=[
        {
            # Cached-but-free memory against the GPU's headroom beyond the live set (what
            # InferwatchCUDAFragmentationHigh compares with 0.5).
            "expr": 'round((inferwatch_cuda_allocator_reserved_bytes{pool="all"} - inferwatch_cuda_allocator_allocated_bytes{pool="all"})'
            ' / clamp_min(0 - inferwatch_cuda_allocator_allocated_bytes{pool="all"} + on(uuid) group_left()'
            " max by (uuid) (uuid:inferwatch_gpu_memory_total_bytes:max), 1), 0.01)",
            "eval_time": "5h",
            "exp_samples": [
                {
                    "labels": '{uuid="GPU-node-frag-0",namespace="llm",pod="node-frag-0-vllm",container="vllm",instance="'
                    + exporter_of("node-frag-0")
                    + '",job="inferwatch",node="node-frag-0",pool="all"}',
                    "value": 0.83,
                },
                {
                    "labels": '{uuid="GPU-node-leak-0",namespace="llm",pod="node-leak-0-vllm",container="vllm",instance="'
                    + exporter_of("node-leak-0")
                    + '",job="inferwatch",node="node-leak-0",pool="all"}',
                    "value": 0.03,
                },
            ],
        },
        {
            # ... and against what the allocator reserved (compared with 0.2).
            "expr": 'round((inferwatch_cuda_allocator_reserved_bytes{pool="all"} - inferwatch_cuda_allocator_allocated_bytes{pool="all"}) / clamp_min(inferwatch_cuda_allocator_reserved_bytes{pool="all"}, 1), 0.01)',
            "eval_time": "5h",
            "exp_samples": [
                {
                    "labels": '{uuid="GPU-node-frag-0",namespace="llm",pod="node-frag-0-vllm",container="vllm",instance="'
                    + exporter_of("node-frag-0")
                    + '",job="inferwatch",node="node-frag-0",pool="all"}',
                    "value": 0.07,
                },
                {
                    "labels": '{uuid="GPU-node-leak-0",namespace="llm",pod="node-leak-0-vllm",container="vllm",instance="'
                    + exporter_of("node-leak-0")
                    + '",job="inferwatch",node="node-leak-0",pool="all"}',
                    "value": 0.02,
                },
            ],
        },
    ],
)

# -- minutes: a morning surge, an exporter gap in a backlog ---------------------------------------

BATCH = "qwen2.5-32b-batch"


def surge_rate(t: float) -> float:
    """1.5 requests/s per replica, ramping to 6 (4x) between 02:00 and 04:00, until 05:00."""
    if t < 4 * H:
        return ramp(t, 2, 4, 1.5, 6.0)
    return 6.0 if t < 5 * H else 1.5


BATCH_EXPORTERS_DOWN = {fired(EXPORTER_DOWN, "critical", node=f"node-batch-{r}") for r in range(3)}

MINUTES = Replay(
    name="minutes",
    hours=6,
    step=60,
    incidents=[
        f"{CHAT}: arrivals ramp to 4x between 02:00 and 04:00 on 12 s requests (64 slots: full at "
        "5.3 requests/s, 03:42): the forecast fires from the arrival trend before any request waits, "
        "the backlog alert only once the queue is there; with no replica added, the rest follows",
        f"{BATCH}: a saturated model (8 waiting per replica) loses its metrics for 20 minutes at 03:00 "
        "(its exporters restart): the backlog alert keeps firing through the gap, no resolved "
        "mid-incident; the exporters are reported down meanwhile",
    ],
    fleets=[
        Fleet(model=CHAT, pods="chat", nodes="node-chat", rate=surge_rate, request_seconds=12.0),
        Fleet(
            model=BATCH,
            pods="batch",
            nodes="node-batch",
            replicas=3,
            seed=8,
            rate=lambda t: 8.5,
            max_waiting=8,
            faults=[during(3, 3 + 20 / 60, _set(scraped=False))],
        ),
    ],
    watch="InferwatchLLM(LoadForecastExceedsCapacity|QueueBacklog)|InferwatchExporterDown",
    firing_at={
        1: {fired(BACKLOG, "warning", model=BATCH)},
        2.95: {fired(BACKLOG, "warning", model=BATCH)},
        3.1: {fired(BACKLOG, "warning", model=BATCH)} | BATCH_EXPORTERS_DOWN,
        3.3: {fired(BACKLOG, "warning", model=BATCH)} | BATCH_EXPORTERS_DOWN,
        3.5: {fired(BACKLOG, "warning", model=BATCH), fired(FORECAST, "warning", model=CHAT)},
        4: {fired(BACKLOG, "warning", model=BATCH), fired(BACKLOG, "warning", model=CHAT)},
    },
    exprs=[
        # The batch backlog alert was firing at every evaluation from 02:40 to 03:40, gap included.
        {
            "expr": f'count_over_time(ALERTS{{alertname="{BACKLOG}",alertstate="firing",model="{BATCH}"}}[1h])',
            "eval_time": "3h40m",
            "exp_samples": [
                {
                    "labels": f'{{alertname="{BACKLOG}",alertstate="firing",engine="vllm",model="{BATCH}",namespace="llm",remediation="scale_up",severity="warning"}}',
                    "value": 61,
                }
            ],
        },
    ],
    fired_ever={
        fired(FORECAST, "warning", model=CHAT),
        fired(BACKLOG, "warning", model=CHAT),
        fired("InferwatchLLMCapacityExhausted", "critical", model=CHAT),
        fired("InferwatchLLMTTFTBudgetBurn", "critical", model=CHAT),
        fired("InferwatchLLMTTFTBudgetBurn", "warning", model=CHAT),
        fired(TTFT_HIGH, "warning", model=CHAT),
        fired("InferwatchLLMTTFTVeryHigh", "critical", model=CHAT),
        fired(BACKLOG, "warning", model=BATCH),
        fired("InferwatchLLMTTFTBudgetBurn", "warning", model=BATCH),
        fired(TTFT_HIGH, "warning", model=BATCH),
    }
    | BATCH_EXPORTERS_DOWN
    | {
        fired("InferwatchLLMKVCacheSaturated", "warning", model=CHAT, pod=f"chat-{r}")
        for r in range(4)
    }
    | {
        fired("InferwatchLLMKVCacheSaturated", "warning", model=BATCH, pod=f"batch-{r}")
        for r in range(3)
    },
)

REPLAYS = [TWO_DAYS, THREE_DAYS, HALF_DAY, MINUTES]
