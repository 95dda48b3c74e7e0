"""One bounded wait on a condition: poll until it holds, or fail saying what never happened.

Tests wait on the event itself with this instead of sleeping a fixed time: the bound only
decides how long a broken build takes to fail, never whether a working one passes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

# What a condition may raise while the thing it polls is still coming up.
TRANSIENT: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError)


class NotYet(AssertionError, TimeoutError):
    """The condition did not hold within the bound: a failed expectation to pytest, a timeout
    to the demo and bench."""


def _fail(what: str, within: float, last: object, error: BaseException | None) -> NotYet:
    detail = f"; last error: {error!r}" if error is not None else f"; last value: {last!r}"
    return NotYet(f"not within {within:g} s: {what}{detail}")


def eventually(
    condition: Callable[[], T],
    within: float = 20.0,
    what: str = "",
    *,
    interval: float = 0.1,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call `condition` until it returns something truthy and return that; raise `NotYet`
    after `within` seconds. Exceptions listed in `ignore` count as "not yet"."""
    deadline = time.monotonic() + within
    last: object = None
    error: BaseException | None = None
    while True:
        try:
            value = condition()
        except ignore as exc:
            error = exc
        else:
            if value:
                return value
            last, error = value, None
        if time.monotonic() >= deadline:
            raise _fail(what or getattr(condition, "__name__", "condition"), within, last, error)
        time.sleep(interval)


@overload
async def eventually_async(
    condition: Callable[[], Awaitable[T]],
    within: float = ...,
    what: str = ...,
    *,
    interval: float = ...,
    ignore: tuple[type[BaseException], ...] = ...,
) -> T: ...


@overload
async def eventually_async(
    condition: Callable[[], T],
    within: float = ...,
    what: str = ...,
    *,
    interval: float = ...,
    ignore: tuple[type[BaseException], ...] = ...,
) -> T: ...


async def eventually_async(
    condition: Callable[[], Any],
    within: float = 20.0,
    what: str = "",
    *,
    interval: float = 0.1,
    ignore: tuple[type[BaseException], ...] = (),
) -> Any:
    """`eventually` for an event loop: `condition` may be a plain or an async callable."""
    deadline = time.monotonic() + within
    last: object = None
    error: BaseException | None = None
    while True:
        try:
            value = condition()
            if isinstance(value, Awaitable):
                value = await value
        except ignore as exc:
            error = exc
        else:
            if value:
                return value
            last, error = value, None
        if time.monotonic() >= deadline:
            raise _fail(what or getattr(condition, "__name__", "condition"), within, last, error)
        await asyncio.sleep(interval)
