"""The collector interface and registry (node_exporter style: one collector per file).

A collector turns a source (NVML, probe files, engine endpoints) into metric families. It never
runs on the scrape path. The scheduler owns its lifecycle: `start()` once (background work such as
watches begins here, never lazily inside `update()`), `update()` in a background loop with a
timeout and at most one run in flight, `close()` once at shutdown. Blocking work goes through
`run_blocking()`, onto the collector's own single-thread executor, so a refresh abandoned on
timeout can never overlap the next one: the next one's blocking work queues behind it.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from prometheus_client.core import Metric
from pydantic import Field

from exporter.attribution import PodResolver
from exporter.catalog import MetricSpec
from exporter.settings import FrozenModel

if TYPE_CHECKING:
    import aiohttp

    from exporter.nvml import Nvml
    from exporter.snapshot import SnapshotStore

T = TypeVar("T")


class CollectorSettings(FrozenModel):
    """What every collector has; each collector extends it with its own keys."""

    enabled: bool = True
    interval_seconds: float = Field(
        15.0, gt=0, description="Seconds between refreshes (match your scrape interval)."
    )
    timeout_seconds: float = Field(
        10.0, gt=0, description="A refresh taking longer is abandoned and counts as a failure."
    )


class NoDataError(Exception):
    """Nothing to collect here, and that is fine (node_exporter's ErrNoData).

    A GPU-less node, an empty probe directory, no engine targets: the refresh publishes no
    series, `inferwatch_exporter_collector_success` stays 1 and
    `inferwatch_exporter_collector_no_data{reason}` says why, so no "collector failing" alert
    fires on nodes that simply have nothing of this kind.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class CollectorContext:
    """Shared resources a collector may use; owned by the app's cleanup contexts.

    `pods` is one pod resolver for every collector (gpu and cuda_allocator name the same
    processes); it is thread-safe and prunes itself.
    """

    http: aiohttp.ClientSession
    nvml: Nvml
    proc_root: str = "/proc"
    log_root: str | None = None
    pods: PodResolver = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pods", PodResolver(self.proc_root, self.log_root))


S = TypeVar("S", bound=CollectorSettings)


class Collector(abc.ABC, Generic[S]):
    """Subclass, set `settings_model` and `metrics`, implement `update()`; `@register` it."""

    name: ClassVar[str]
    settings_model: ClassVar[type[CollectorSettings]] = CollectorSettings
    metrics: ClassVar[tuple[MetricSpec, ...]] = ()

    def __init__(self, settings: S, context: CollectorContext) -> None:
        self.settings = settings
        self.context = context
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    async def start(self) -> None:
        """Begin background work (watches, event threads). Called once, before any update."""

    @abc.abstractmethod
    async def update(self) -> Sequence[Metric]:
        """Read the source and return fresh metric families. Raise on failure, NoDataError
        when there is legitimately nothing to publish."""

    async def watch(self, store: SnapshotStore) -> None:
        """Optional: publish changes between refreshes (an event that must show on the next
        scrape). Runs beside the refresh loop until cancelled; most collectors have none."""

    async def close(self) -> None:
        """Stop what `start()` began. Called once at shutdown; the executor is shut after."""

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on this collector's own thread, one job at a time, in order."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix=f"collector-{self.name}"
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def shutdown_executor(self) -> None:
        """Drop queued jobs; a job stuck in a system call is left to finish on its own."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


COLLECTORS: dict[str, type[Collector[Any]]] = {}

C = TypeVar("C", bound=type[Collector[Any]])


def register(name: str) -> Callable[[C], C]:
    """Class decorator: make a collector known under `name` (= its config key and label)."""

    def wrap(cls: C) -> C:
        if name in COLLECTORS:
            raise ValueError(f"collector {name!r} registered twice")
        cls.name = name
        COLLECTORS[name] = cls
        return cls

    return wrap
