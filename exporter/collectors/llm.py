"""The `llm` collector: scrape inference engines and publish the normalized `inferwatch_llm_*`.

Targets come from config, Prometheus file_sd files and (optionally) Kubernetes pods on this node.
Every refresh fetches all targets concurrently, each under its own timeout (shorter than the
collector's), so a hung engine costs at most that timeout and never fails the others: it gets
`inferwatch_llm_up` 0 and its other series are dropped, the rest publish fresh data.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
from prometheus_client.core import Metric
from pydantic import Field, model_validator

from exporter.collectors.base import (
    Collector,
    CollectorContext,
    CollectorSettings,
    NoDataError,
    register,
)
from exporter.engines.canary import Canary
from exporter.engines.fetch import (
    MAX_REDIRECTS,
    ResponseError,
    describe,
    fetch_info,
    health_problem,
    read_body,
)
from exporter.engines.normalize import Families, Group, Normalized, normalize_text
from exporter.engines.offload import NormalizerDied, NormalizerProcess
from exporter.engines.parser import ParseError, reject_non_exposition
from exporter.engines.registry import ENGINES, EngineNotDetected, detect_engine
from exporter.engines.schema import (
    DROPPED_SERIES,
    ENGINE_INFO,
    HEALTHY,
    PROBE_DURATION,
    PROBE_SUCCESS,
    PROBE_TTFT,
    UP,
    EngineInfo,
    declared_metrics,
)
from exporter.engines.settings import CanarySettings, KubernetesSettings, TargetSettings
from exporter.engines.targets import FileSD, Target, target_from_settings

if TYPE_CHECKING:
    from exporter.engines.kubernetes import PodWatcher

log = logging.getLogger(__name__)

ACCEPT = "text/plain;version=0.0.4;q=1,text/plain;q=0.5,*/*;q=0.1"


class LlmSettings(CollectorSettings):
    targets: list[TargetSettings] = Field(default_factory=list)
    file_sd: list[str] = Field(
        default_factory=list, description="Prometheus file_sd JSON/YAML files, re-read on change."
    )
    kubernetes: KubernetesSettings = KubernetesSettings()
    target_timeout_seconds: float = Field(
        3.0, gt=0, description="Per target; must be below timeout_seconds."
    )
    max_series_per_target: int = Field(5000, ge=1, description="Cardinality cap per target.")
    max_parsed_samples_per_target: int = Field(
        10000,
        ge=1,
        description="Engine samples parsed per target (real engines expose under 2,000); the "
        "rest of a larger exposition is counted as dropped, not parsed.",
    )
    max_response_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    process_normalize_bytes: int = Field(
        512 * 1024,
        ge=0,
        description="Expositions of at least this many bytes are normalized in a helper "
        "process (started on first need), so their parse never holds the GIL that /metrics "
        "needs; smaller ones on the collector's thread. 0: every exposition.",
    )
    info_refresh_seconds: float = Field(
        300.0, gt=0, description="How often to re-read the engine's info endpoint."
    )
    canary: CanarySettings = CanarySettings()

    @model_validator(mode="after")
    def _timeouts(self) -> LlmSettings:
        if self.target_timeout_seconds >= self.timeout_seconds:
            raise ValueError(
                f"target_timeout_seconds ({self.target_timeout_seconds}) must be below "
                f"timeout_seconds ({self.timeout_seconds})"
            )
        return self


class ScrapeError(Exception):
    """The target answered, but not with something we can use."""


@dataclass
class TargetState:
    """What outlives one refresh for one target."""

    target: Target
    engine: str | None = None
    info: EngineInfo = field(default_factory=EngineInfo)
    info_fetched_at: float | None = None
    models: list[str] = field(default_factory=list)
    dropped: dict[str, float] = field(default_factory=lambda: {"cardinality": 0, "invalid": 0})
    last_error: str | None = None
    health_problem: str | None = None
    info_error: str | None = None
    canary: Canary | None = None

    @property
    def model(self) -> str:
        return self.target.model or self.info.model or (self.models[0] if self.models else "")


@register("llm")
class LlmCollector(Collector[LlmSettings]):
    settings_model = LlmSettings
    metrics = declared_metrics()

    def __init__(self, settings: LlmSettings, context: CollectorContext) -> None:
        super().__init__(settings, context)
        self._static = [target_from_settings(t) for t in settings.targets]
        self._file_sd = FileSD(settings.file_sd)
        self._pods: PodWatcher | None = None
        if settings.kubernetes.enabled:
            # Imported only when used: kubernetes_asyncio costs ~45 MB of RSS.
            from exporter.engines.kubernetes import PodWatcher

            self._pods = PodWatcher(settings.kubernetes)
        self._states: dict[str, TargetState] = {}
        self._normalizer = NormalizerProcess(f"collector {self.name}")

    async def start(self) -> None:
        """Kubernetes discovery (if enabled) runs from here until close()."""
        if self._pods is not None:
            self._pods.start()

    async def targets(self) -> list[Target]:
        """Static, then file_sd, then Kubernetes; the first target with a name wins."""
        found: dict[str, Target] = {}
        pods = self._pods.targets() if self._pods else []
        file_sd = await asyncio.to_thread(self._file_sd.targets)  # file reads off the loop
        for target in [*self._static, *file_sd, *pods]:
            found.setdefault(target.name, target)
        return list(found.values())

    async def update(self) -> Sequence[Metric]:
        targets = await self.targets()
        await self._sync_states(targets)
        if not targets:
            raise NoDataError("no_targets")
        states = [self._states[t.name] for t in targets]
        results = await asyncio.gather(*(self._scrape(s) for s in states))
        return await self.run_blocking(merge_families, results)

    async def close(self) -> None:
        for state in self._states.values():
            if state.canary is not None:
                await state.canary.stop()
        if self._pods is not None:
            await self._pods.stop()
        self._normalizer.close()

    async def _sync_states(self, targets: list[Target]) -> None:
        wanted = {t.name: t for t in targets}
        for name in list(self._states):
            state = self._states[name]
            if wanted.get(name) != state.target:
                if state.canary is not None:
                    await state.canary.stop()
                del self._states[name]
        for name, target in wanted.items():
            if name not in self._states:
                self._states[name] = TargetState(target)

    def _canary_settings(self, target: Target) -> CanarySettings:
        return target.canary or self.settings.canary

    def _ensure_canary(self, state: TargetState) -> None:
        settings = self._canary_settings(state.target)
        if settings.enabled and state.canary is None:
            url = state.target.base_url + settings.path
            state.canary = Canary(self.context.http, url, settings, state.model, state.target.name)
            state.canary.start()
        if state.canary is not None:
            state.canary.model = state.model or None

    async def _scrape(self, state: TargetState) -> list[Group]:
        """Never raises; always returns at least the target's up/healthy series."""
        target = state.target
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.target_timeout_seconds
        hint = target.engine if target.engine != "auto" else (state.engine or "auto")
        health = asyncio.create_task(health_problem(self.context.http, target.health_for(hint)))
        normalized: Normalized | None = None
        error: str | None = None
        try:
            async with asyncio.timeout_at(deadline):
                normalized = await self._collect(state)
        except TimeoutError:
            error = f"no answer within {self.settings.target_timeout_seconds}s"
        except (
            aiohttp.ClientError,
            OSError,
            ScrapeError,
            ResponseError,
            ParseError,
            EngineNotDetected,
            NormalizerDied,
        ) as exc:
            error = describe(exc)
        except Exception as exc:
            log.exception("llm target %s: unexpected error", target.name)
            error = f"{type(exc).__name__}: {exc}"
        try:
            async with asyncio.timeout_at(max(deadline, loop.time() + 0.05)):
                problem = await health
        except TimeoutError:
            problem = f"no answer from {target.health_for(hint)} within the target timeout"
        finally:
            health.cancel()
        healthy = problem is None
        self._log_health(state, problem)
        self._log_transition(state, error)
        self._ensure_canary(state)
        return self._groups(state, normalized, healthy)

    async def _collect(self, state: TargetState) -> Normalized:
        target = state.target
        body = await self._fetch_metrics(target.metrics_url)
        in_process = self._in_process(len(body))
        engine = target.engine
        if not in_process:
            # The engine first (a few string searches, off the loop), so that its info endpoint
            # (the model name) is read before the text is normalized.
            engine = state.engine = await self.run_blocking(engine_of, body, target.engine)
            await self._refresh_info(state, engine)
        normalize = functools.partial(
            normalize_text,
            body,  # decoded where it is parsed: on the thread, or in the process
            engine,
            target=target.name,
            info=state.info,
            model=target.model,
            extra_labels=dict(target.labels),
            max_samples=self.settings.max_parsed_samples_per_target,
        )
        if in_process:
            # Checked, detected and parsed there: this process never scans the big body. The
            # info read now serves the next refresh (a big target's first refresh ran on the
            # thread, so its model name was known from the start).
            result = await self._normalizer.run(normalize)
            state.engine = result.engine
            await self._refresh_info(state, result.engine)
        else:
            result = await self.run_blocking(normalize)
        state.models = [m for m in result.models if m]
        return result

    def _in_process(self, size: int) -> bool:
        """Whether to normalize in the helper process (exporter.engines.offload): a big
        exposition once that process runs; the first big one starts it and stays on the thread."""
        if size < self.settings.process_normalize_bytes:
            return False
        if self._normalizer.ready:
            return True
        self._normalizer.start()
        return False

    async def _fetch_metrics(self, url: str) -> bytearray:
        headers = {"Accept": ACCEPT}
        async with self.context.http.get(url, headers=headers, max_redirects=MAX_REDIRECTS) as resp:
            if resp.status != 200:
                raise ScrapeError(f"HTTP {resp.status} from {url}")
            if "html" in resp.headers.get("Content-Type", ""):
                raise ParseError(f"{url} answered with HTML, not a Prometheus exposition")
            return await read_body(resp, self.settings.max_response_bytes)

    async def _refresh_info(self, state: TargetState, engine: str) -> None:
        """Model and version from the engine's info endpoint; failures keep what we had."""
        now = time.monotonic()
        due = state.info_fetched_at is None or (
            now - state.info_fetched_at >= self.settings.info_refresh_seconds
        )
        url = state.target.info_for(engine)
        if not due or url is None:
            return
        state.info_fetched_at = now
        try:
            state.info = await fetch_info(self.context.http, url, ENGINES[engine].parse_info)
        except (aiohttp.ClientError, OSError, ResponseError) as exc:
            error = describe(exc)
            if error != state.info_error:  # once per change, not every info refresh
                log.warning("llm target %s: info endpoint: %s", state.target.name, error)
            state.info_error = error
        else:
            state.info_error = None

    def _log_health(self, state: TargetState, problem: str | None) -> None:
        if problem is not None and problem != state.health_problem:
            log.warning("llm target %s: unhealthy: %s", state.target.name, problem)
        elif problem is None and state.health_problem is not None:
            log.info("llm target %s: healthy again", state.target.name)
        state.health_problem = problem

    def _log_transition(self, state: TargetState, error: str | None) -> None:
        if error is not None and error != state.last_error:
            log.warning("llm target %s: down: %s", state.target.name, error)
        elif error is None and state.last_error is not None:
            log.info("llm target %s: up again", state.target.name)
        state.last_error = error

    def _groups(
        self, state: TargetState, normalized: Normalized | None, healthy: bool
    ) -> list[Group]:
        target = state.target
        engine = normalized.engine if normalized else (state.engine or target.engine)
        labels = {"engine": engine, "model": state.model, "target": target.name, **target.labels}
        groups = [
            Group(UP, [(UP.key, labels, 1.0 if normalized else 0.0)]),
            Group(HEALTHY, [(HEALTHY.key, labels, 1.0 if healthy else 0.0)]),
        ]
        if normalized is not None:
            state.dropped["invalid"] += normalized.dropped
            # engine_info (one per model) counts against the cap like every other series;
            # mapping_missing is one per catalog entry, bounded by the code.
            infos = [g for g in normalized.status if g.spec is ENGINE_INFO]
            groups += [g for g in normalized.status if g.spec is not ENGINE_INFO]
            limit = self.settings.max_series_per_target
            kept, dropped = cap_series([*infos, *normalized.groups], limit)
            dropped += normalized.capped
            if dropped and not state.dropped["cardinality"]:
                log.warning(
                    "llm target %s: %d series over the cap of %d dropped",
                    target.name,
                    dropped,
                    self.settings.max_series_per_target,
                )
            state.dropped["cardinality"] += dropped
            groups += kept
        for reason, count in state.dropped.items():
            groups.append(
                Group(DROPPED_SERIES, [(DROPPED_SERIES.key, {**labels, "reason": reason}, count)])
            )
        probe = state.canary.last if state.canary else None
        if probe is not None:
            groups.append(Group(PROBE_SUCCESS, [(PROBE_SUCCESS.key, labels, float(probe.success))]))
            if probe.ttft_seconds is not None:
                groups.append(Group(PROBE_TTFT, [(PROBE_TTFT.key, labels, probe.ttft_seconds)]))
            if probe.duration_seconds is not None:
                groups.append(
                    Group(PROBE_DURATION, [(PROBE_DURATION.key, labels, probe.duration_seconds)])
                )
        return groups


def merge_families(results: list[list[Group]]) -> list[Metric]:
    """Every target's groups as one family per metric (CPU work: on the collector's thread)."""
    families = Families()
    for groups in results:
        families.add_all(groups)
    return families.metrics()


def engine_of(text: bytearray, configured: str) -> str:
    """The engine of an exposition (checked to be one): as configured, or detected."""
    reject_non_exposition(text)
    if configured != "auto":
        return configured
    detected = detect_engine(text)
    if detected is None:
        raise EngineNotDetected("no known LLM engine metrics in the response")
    return detected


def cap_series(groups: list[Group], limit: int) -> tuple[list[Group], int]:
    """Keep whole groups (a histogram is all or nothing) in catalog order up to `limit` series."""
    kept: list[Group] = []
    used = dropped = 0
    for group in groups:
        size = len(group.samples)
        if used + size > limit:
            dropped += size
            continue
        kept.append(group)
        used += size
    return kept, dropped
