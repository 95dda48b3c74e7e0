"""The normalized LLM catalog and the vocabulary engine mappings are written in.

A mapping lists, per normalized metric, the engine's sources in order of preference (newest name
first); the normalizer takes the first one present in the exposition. That is what keeps
dashboards working across renames, and a metric with no source left shows up as
`inferwatch_llm_mapping_missing{metric}` 1 instead of a silent flat line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from exporter.catalog import MetricSpec

PREFIX = "inferwatch_llm_"

Kind = Literal["gauge", "counter", "histogram"]
Aggregation = Literal["sum", "max"]


@dataclass(frozen=True)
class Spec:
    """One normalized metric. `name` is the family name (counters without `_total`)."""

    name: str
    kind: Kind
    doc: str
    aggregation: Aggregation = "sum"
    """How samples that end up with the same labels combine (data-parallel ranks, TP ranks)."""

    @property
    def key(self) -> str:
        """The name users see in PromQL (counters with `_total`), used as `metric` label."""
        return self.name + "_total" if self.kind == "counter" else self.name

    def __reduce__(self) -> tuple[Callable[[str], Spec], tuple[str]]:
        """Pickled by name: a spec that comes back from another process is the same object
        (code compares specs with `is`)."""
        return spec_named, (self.name,)


def _spec(name: str, kind: Kind, doc: str, aggregation: Aggregation = "sum") -> Spec:
    return Spec(PREFIX + name, kind, doc, aggregation)


CATALOG: tuple[Spec, ...] = (
    _spec("requests_running", "gauge", "Requests in the running batch."),
    _spec("requests_waiting", "gauge", "Requests queued, not yet scheduled."),
    _spec("kv_cache_usage_ratio", "gauge", "Used fraction of the KV cache (0-1).", "max"),
    _spec("prompt_tokens", "counter", "Prompt (prefill) tokens processed."),
    _spec("generation_tokens", "counter", "Tokens generated."),
    _spec("prefix_cache_queries_tokens", "counter", "Prompt tokens looked up in the prefix cache."),
    _spec("prefix_cache_hits_tokens", "counter", "Prompt tokens found in the prefix cache."),
    _spec("requests", "counter", "Finished requests by outcome and finished_reason."),
    _spec("preemptions", "counter", "Requests preempted to free KV cache."),
    _spec("request_prompt_tokens", "histogram", "Prompt length per request, tokens."),
    _spec("request_generation_tokens", "histogram", "Generated length per request, tokens."),
    _spec("time_to_first_token_seconds", "histogram", "Time to first token."),
    _spec("inter_token_latency_seconds", "histogram", "Time between output tokens."),
    _spec("request_duration_seconds", "histogram", "End-to-end request latency."),
    _spec("request_queue_time_seconds", "histogram", "Time a request waited in the queue."),
)
SPECS: dict[str, Spec] = {spec.name: spec for spec in CATALOG}

LabelFn = Callable[[Mapping[str, str]], Mapping[str, str] | None]
"""Derive output labels from a source sample's labels; None drops the sample."""

Shape = Literal["value", "histogram", "sum_count"]


@dataclass(frozen=True)
class Source:
    """Where one normalized metric comes from in one engine.

    - shape "value": the samples named `name` (a gauge or a counter as written on the wire),
      plus/minus other sample names with the same labels (e.g. cached + uncached tokens).
    - shape "histogram": the family `name` (`_bucket`, `_sum`, `_count`), engine buckets kept.
    - shape "sum_count": a cumulative sum `name` and a count `count`; exported as `_sum`/`_count`.
    `divisor` converts to base units (µs → s: 1e6, percent → ratio: 100), `le` included.
    """

    name: str
    shape: Shape = "value"
    count: str | None = None
    divisor: float = 1.0
    where: tuple[tuple[str, str], ...] = ()
    plus: tuple[str, ...] = ()
    minus: tuple[str, ...] = ()
    labels: LabelFn | None = None
    companions: tuple[Source, ...] = ()
    """Emitted together with this source when it is chosen (success + failure counters)."""
    requires: str | None = None
    """A sample name that must also be present for this source to count as present."""
    note: str = ""

    def sample_names(self) -> tuple[str, ...]:
        """Every sample name this source reads (the parser skips all others)."""
        if self.shape == "histogram":
            own: tuple[str, ...] = (self.name + "_bucket", self.name + "_sum", self.name + "_count")
        elif self.shape == "sum_count":
            assert self.count is not None
            own = (self.name, self.count)
        else:
            own = (self.name, *self.plus, *self.minus)
        if self.requires:
            own += (self.requires,)
        for companion in self.companions:
            own += companion.sample_names()
        return own

    @property
    def presence_name(self) -> str:
        """The sample name whose presence selects this source."""
        return self.name + "_count" if self.shape == "histogram" else self.name

    def describe(self) -> str:
        text = self.name
        if self.where:
            text += "{" + ",".join(f'{k}="{v}"' for k, v in self.where) + "}"
        if self.shape == "sum_count":
            text += f" / {self.count}"
        for extra in self.plus:
            text += f" + {extra}"
        for extra in self.minus:
            text += f" - {extra}"
        if self.divisor != 1.0:
            text += f" (÷{self.divisor:g})"
        for companion in self.companions:
            text += " & " + companion.describe()
        return text


@dataclass(frozen=True)
class EngineInfo:
    """What an engine's info endpoint says about itself."""

    model: str | None = None
    version: str | None = None


InfoParser = Callable[[Any], EngineInfo]


def no_info(_: Any) -> EngineInfo:
    return EngineInfo()


@dataclass(frozen=True)
class EngineMapping:
    """One engine: how to recognize it, where its model label is, and every metric's sources."""

    engine: str
    markers: tuple[str, ...]
    """Metric name prefixes that identify the engine in an exposition."""
    model_labels: tuple[str, ...]
    metrics: Mapping[str, tuple[Source, ...]]
    health_path: str
    info_path: str | None = None
    parse_info: InfoParser = no_info
    versions: str = ""
    """Versions the mapping was checked against (README)."""
    detection_order: int = 50
    """Auto-detection tries engines in this order (lower first)."""
    wanted: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        unknown = set(self.metrics) - set(SPECS)
        if unknown:
            raise ValueError(f"{self.engine}: mapping names unknown metrics {sorted(unknown)}")
        names = {n for sources in self.metrics.values() for s in sources for n in s.sample_names()}
        object.__setattr__(self, "wanted", frozenset(names))

    def sources(self, spec: Spec) -> tuple[Source, ...]:
        return self.metrics.get(spec.name, ())


def metric(name: str) -> str:
    """The full normalized family name for a catalog short name (checked)."""
    full = PREFIX + name
    if full not in SPECS:
        raise KeyError(name)
    return full


ENGINE_INFO = _spec("engine_info", "gauge", "Engine identity; engine_version as reported.")
UP = _spec("up", "gauge", "1 when the engine's /metrics answered with an exposition we parse.")
HEALTHY = _spec("healthy", "gauge", "1 when the engine's health/ready endpoint answers 200.")
MAPPING_MISSING = _spec(
    "mapping_missing", "gauge", "1 when the engine exposes no source for a normalized metric."
)
DROPPED_SERIES = _spec(
    "dropped_series", "counter", "Series dropped: over the per-target cap, or invalid input."
)
PROBE_SUCCESS = _spec("probe_success", "gauge", "1 when the last canary completion streamed.")
PROBE_TTFT = _spec("probe_ttft_seconds", "gauge", "Time to first token of the last canary.")
PROBE_DURATION = _spec("probe_duration_seconds", "gauge", "Duration of the last canary.")

# Labels every normalized series has (plus a target's configured extra labels), and the
# metric-specific ones; declared here so docs, the test catalog and drift checks read one place.
TARGET_LABELS = ("engine", "model", "target")
EXTRA_LABELS: dict[str, tuple[str, ...]] = {
    ENGINE_INFO.name: ("engine_version",),
    MAPPING_MISSING.name: ("metric",),
    DROPPED_SERIES.name: ("reason",),
    PREFIX + "requests": ("outcome", "finished_reason"),
}
STATUS_SPECS: tuple[Spec, ...] = (
    ENGINE_INFO,
    UP,
    HEALTHY,
    MAPPING_MISSING,
    DROPPED_SERIES,
    PROBE_SUCCESS,
    PROBE_TTFT,
    PROBE_DURATION,
)


def spec_named(name: str) -> Spec:
    """The catalog or status spec called `name`."""
    return SPECS.get(name) or next(s for s in STATUS_SPECS if s.name == name)


def declared_metrics() -> tuple[MetricSpec, ...]:
    """The llm collector's catalog as MetricSpecs (status series first, then CATALOG)."""
    return tuple(
        MetricSpec(s.name, s.kind, s.doc, (*TARGET_LABELS, *EXTRA_LABELS.get(s.name, ())))
        for s in (*STATUS_SPECS, *CATALOG)
    )
