"""Turn one engine's exposition into the normalized `inferwatch_llm_*` series.

Samples that end up with the same labels (data-parallel or tensor-parallel ranks, model versions)
are combined per the metric's aggregation; histograms keep the engine's own buckets (`le`
converted to base units) and are never merged across engines or targets.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import Metric

from exporter.engines.parser import Exposition, Labels, Sample, parse, reject_non_exposition
from exporter.engines.registry import ENGINES, EngineNotDetected, detect_engine
from exporter.engines.schema import (
    CATALOG,
    ENGINE_INFO,
    MAPPING_MISSING,
    EngineInfo,
    EngineMapping,
    Source,
    Spec,
)

INF = math.inf
GroupKey = tuple[str, tuple[tuple[str, str], ...]]
"""(model, derived labels) — what samples of one source are combined by."""


def go_float(value: float) -> str:
    """A bucket bound as Prometheus writes it (`+Inf`, `0.5`, `1.0`)."""
    if value == INF:
        return "+Inf"
    if value == -INF:
        return "-Inf"
    return repr(float(value))


@dataclass
class Group:
    """One label set of one metric: one sample, or a histogram's buckets + sum + count."""

    spec: Spec
    samples: list[tuple[str, Labels, float]]


@dataclass
class Normalized:
    """The outcome for one target's exposition: plain data, so it can come back from the
    process that normalizes big expositions (specs pickle by name)."""

    engine: str
    target: str
    groups: list[Group] = field(default_factory=list)
    status: list[Group] = field(default_factory=list)
    hits: dict[str, str] = field(default_factory=dict)
    """Per mapped metric, the source it was read from (`Source.describe()`)."""
    missing: list[Spec] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    dropped: int = 0
    capped: int = 0
    """Sample lines not parsed because the target's series cap was reached."""
    errors: list[str] = field(default_factory=list)

    @property
    def series_count(self) -> int:
        return sum(len(g.samples) for g in self.groups)


class _Builder:
    """Reads one mapping's sources out of a parsed exposition."""

    def __init__(
        self,
        mapping: EngineMapping,
        expo: Exposition,
        base: Labels,
        fallback_model: str,
    ) -> None:
        self.mapping = mapping
        self.expo = expo
        self.base = base
        self.fallback_model = fallback_model
        self.dropped = 0
        self.models: dict[str, None] = {}

    def model_of(self, labels: Mapping[str, str]) -> str:
        for name in self.mapping.model_labels:
            value = labels.get(name)
            if value:
                return value
        return self.fallback_model

    def selected(self, source: Source, name: str) -> Iterable[tuple[GroupKey, Sample]]:
        """Samples of `name` passing the source's filter, with their group key."""
        for sample in self.expo.get(name):
            labels = sample.labels
            if source.where and any(labels.get(k) != v for k, v in source.where):
                continue
            extra: Mapping[str, str] = {}
            if source.labels is not None:
                derived = source.labels(labels)
                if derived is None:
                    continue
                extra = derived
            yield (self.model_of(labels), tuple(extra.items())), sample

    def present(self, source: Source) -> bool:
        if source.requires and not self.expo.get(source.requires):
            return False
        if source.where:
            return any(True for _ in self.selected(source, source.presence_name))
        return bool(self.expo.get(source.presence_name))

    def labels(self, key: GroupKey, **more: str) -> Labels:
        model, extra = key
        self.models[model] = None
        return {"engine": self.mapping.engine, "model": model, **self.base, **dict(extra), **more}

    def finite(self, value: float) -> bool:
        if math.isfinite(value):
            return True
        self.dropped += 1
        return False

    def values(self, spec: Spec, source: Source) -> list[Group]:
        acc: dict[GroupKey, float] = {}
        take_max = spec.aggregation == "max"
        for key, sample in self.selected(source, source.name):
            if not self.finite(sample.value):
                continue
            value = sample.value / source.divisor
            old = acc.get(key)
            if old is None:
                acc[key] = value
            else:
                acc[key] = max(old, value) if take_max else old + value
        for sign, names in ((1.0, source.plus), (-1.0, source.minus)):
            for name in names:
                for key, sample in self.selected(source, name):
                    if key in acc and self.finite(sample.value):
                        acc[key] += sign * sample.value / source.divisor
        return [
            Group(spec, [(spec.key, self.labels(key), max(value, 0.0) if source.minus else value)])
            for key, value in acc.items()
        ]

    def histograms(self, spec: Spec, source: Source) -> list[Group]:
        buckets: dict[GroupKey, dict[float, float]] = {}
        for key, sample in self.selected(source, source.name + "_bucket"):
            try:
                bound = float(sample.labels.get("le", ""))
            except ValueError:
                self.dropped += 1
                continue
            if math.isnan(bound) or not self.finite(sample.value):
                continue
            per_key = buckets.setdefault(key, {})
            bound = bound / source.divisor
            per_key[bound] = per_key.get(bound, 0.0) + sample.value
        sums = self._summed(source, source.name + "_sum", source.divisor)
        counts = self._summed(source, source.name + "_count", 1.0)
        groups = []
        for key, count in counts.items():
            series = buckets.get(key, {})
            series.setdefault(INF, count)
            samples = [
                (spec.name + "_bucket", self.labels(key, le=go_float(le)), series[le])
                for le in sorted(series)
            ]
            if key in sums:
                samples.append((spec.name + "_sum", self.labels(key), sums[key]))
            samples.append((spec.name + "_count", self.labels(key), count))
            groups.append(Group(spec, samples))
        return groups

    def sums_and_counts(self, spec: Spec, source: Source) -> list[Group]:
        assert source.count is not None
        sums = self._summed(source, source.name, source.divisor)
        counts = self._summed(Source(source.count, labels=source.labels), source.count, 1.0)
        # Only the +Inf bucket (= count): OpenMetrics requires it, and no quantile is invented.
        return [
            Group(
                spec,
                [
                    (spec.name + "_bucket", self.labels(key, le="+Inf"), counts[key]),
                    (spec.name + "_sum", self.labels(key), total),
                    (spec.name + "_count", self.labels(key), counts[key]),
                ],
            )
            for key, total in sums.items()
            if key in counts
        ]

    def _summed(self, source: Source, name: str, divisor: float) -> dict[GroupKey, float]:
        acc: dict[GroupKey, float] = {}
        for key, sample in self.selected(source, name):
            if self.finite(sample.value):
                acc[key] = acc.get(key, 0.0) + sample.value / divisor
        return acc

    def build(self, spec: Spec, source: Source) -> list[Group]:
        if source.shape == "histogram":
            return self.histograms(spec, source)
        if source.shape == "sum_count":
            return self.sums_and_counts(spec, source)
        return self.values(spec, source)


def normalize_exposition(
    expo: Exposition,
    mapping: EngineMapping,
    *,
    target: str,
    info: EngineInfo | None = None,
    model: str | None = None,
    extra_labels: Mapping[str, str] | None = None,
) -> Normalized:
    """Map a parsed exposition; `model` (config) beats `info.model` when metrics carry none."""
    info = info or EngineInfo()
    base = {"target": target, **(extra_labels or {})}
    builder = _Builder(mapping, expo, base, model or info.model or "")
    result = Normalized(
        mapping.engine, target, dropped=expo.dropped, capped=expo.capped, errors=list(expo.errors)
    )
    for spec in CATALOG:
        chosen = next((s for s in mapping.sources(spec) if builder.present(s)), None)
        if chosen is None:
            result.missing.append(spec)
            continue
        result.hits[spec.name] = chosen.describe()
        for source in (chosen, *chosen.companions):
            result.groups.extend(builder.build(spec, source))
    result.dropped += builder.dropped
    result.models = list(builder.models) or [builder.fallback_model]
    target_labels = {"engine": mapping.engine, **base}
    for model_name in result.models:
        labels = {**target_labels, "model": model_name, "engine_version": info.version or ""}
        result.status.append(Group(ENGINE_INFO, [(ENGINE_INFO.key, labels, 1.0)]))
    for spec in CATALOG:
        missing = 0.0 if spec.name in result.hits else 1.0
        labels = {**target_labels, "metric": spec.key}
        result.status.append(Group(MAPPING_MISSING, [(MAPPING_MISSING.key, labels, missing)]))
    return result


def normalize_text(
    text: str | bytes | bytearray,
    engine: str = "auto",
    *,
    target: str,
    info: EngineInfo | None = None,
    model: str | None = None,
    extra_labels: Mapping[str, str] | None = None,
    max_samples: int | None = None,
) -> Normalized:
    """Detect (if auto), parse only what the mapping needs (at most `max_samples`), normalize.

    Raises ParseError for text that is no exposition, EngineNotDetected when auto finds no engine.
    A body (bytes) is decoded here, off the event loop, invalid UTF-8 replaced.
    """
    if not isinstance(text, str):
        text = text.decode("utf-8", errors="replace")
    reject_non_exposition(text)
    if engine == "auto":
        detected = detect_engine(text)
        if detected is None:
            raise EngineNotDetected("no known LLM engine metrics in the exposition")
        engine = detected
    mapping = ENGINES[engine]
    expo = parse(text, mapping.wanted, max_samples)
    return normalize_exposition(
        expo, mapping, target=target, info=info, model=model, extra_labels=extra_labels
    )


class Families:
    """Collects groups from many targets into one family per metric name (one TYPE line each)."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def add(self, group: Group) -> None:
        spec = group.spec
        family = self._families.get(spec.name)
        if family is None:
            family = Metric(spec.name, spec.doc, spec.kind)
            self._families[spec.name] = family
        for name, labels, value in group.samples:
            family.add_sample(name, labels, value)

    def add_all(self, groups: Iterable[Group]) -> None:
        for group in groups:
            self.add(group)

    def metrics(self) -> list[Metric]:
        return list(self._families.values())
