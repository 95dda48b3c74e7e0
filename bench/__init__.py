"""Benchmarks: each bench/<name>.py measures against a baseline in the same run.

A bench's `main()` returns a `Summary`: its one summary line and the ratios it measured, each with
its design target (`python -m bench` prints them all in one table). A plain `str` is accepted as
a summary line without ratios.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Ratio:
    """ours / baseline (or baseline / ours, as `name` says), measured in one run."""

    name: str
    value: float
    at_most: float | None = None
    at_least: float | None = None

    @property
    def target(self) -> str:
        if self.at_most is not None:
            return f"<= {self.at_most:g}x"
        if self.at_least is not None:
            return f">= {self.at_least:g}x"
        return "none"

    @property
    def met(self) -> bool | None:
        """Whether the target is met; None without a target."""
        if self.at_most is not None:
            return self.value <= self.at_most
        if self.at_least is not None:
            return self.value >= self.at_least
        return None


@dataclass(frozen=True)
class Summary:
    line: str
    ratios: tuple[Ratio, ...] = ()
