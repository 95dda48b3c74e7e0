"""The collector interface and registry (node_exporter style: one collector per file).

A collector turns a source (NVML, probe files, engine endpoints) into metric families. It never
runs on the scrape path: the scheduler calls `update()` in a background loop, with a timeout and
at most one run in flight, and publishes what it returns as an immutable snapshot.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from prometheus_client.core import Metric
from pydantic import Field

from exporter.settings import FrozenModel

if TYPE_CHECKING:
    import aiohttp

    from exporter.nvml import Nvml


class CollectorSettings(FrozenModel):
    """What every collector has; each collector extends it with its own keys."""

    enabled: bool = True
    interval_seconds: float = Field(
        15.0, gt=0, description="Seconds between refreshes (match your scrape interval)."
    )
    timeout_seconds: float = Field(
        10.0, gt=0, description="A refresh taking longer is abandoned and counts as a failure."
    )


@dataclass(frozen=True)
class CollectorContext:
    """Shared resources a collector may use; owned by the app's cleanup contexts."""

    http: aiohttp.ClientSession
    nvml: Nvml
    proc_root: str = "/proc"


S = TypeVar("S", bound=CollectorSettings)


class Collector(abc.ABC, Generic[S]):
    """Subclass, set `name`, implement `update()`; register with `@register`."""

    name: ClassVar[str]

    def __init__(self, settings: S, context: CollectorContext) -> None:
        self.settings = settings
        self.context = context

    @abc.abstractmethod
    async def update(self) -> Sequence[Metric]:
        """Read the source and return fresh metric families. Raise on failure."""

    async def close(self) -> None:
        """Release what `update()` opened (threads, watches). Called once at shutdown."""


CollectorFactory = Callable[[Any, CollectorContext], Collector[Any]]
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
