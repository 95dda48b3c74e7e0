"""Bounded HTTP reads from engines, and error messages an operator can act on.

An engine endpoint is input the exporter does not control: every body is read in chunks up to a
byte cap (aiohttp decompresses per chunk with a bound, so a gzip bomb stops at the cap too), JSON
is depth-checked before parsing, and each target may hold only `CONNECTIONS_PER_TARGET`
connections, so hung targets cannot use up a shared pool and delay the healthy ones.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import aiohttp

from exporter.engines.parser import MAX_LABEL_VALUE_CHARS
from exporter.engines.schema import EngineInfo
from exporter.probe.files import json_depth

CONNECTIONS_PER_TARGET = 4
"""/metrics, the health check, the info endpoint and the canary may run at the same time."""
MAX_INFO_BYTES = 1024 * 1024
"""llama.cpp's /props carries the chat template (tens of KiB); TGI's /info is smaller."""
MAX_INFO_DEPTH = 32
MAX_REDIRECTS = 5


class ResponseError(Exception):
    """The target answered, but not with something we can use."""


def engine_connector() -> aiohttp.TCPConnector:
    """A connection pool with a budget per target (host, port) instead of one shared total.

    aiohttp's default (100 in all) let 100 hung targets hold every connection, so the healthy
    targets listed after them waited for a free one until their own timeout.
    """
    return aiohttp.TCPConnector(limit=0, limit_per_host=CONNECTIONS_PER_TARGET)


async def read_body(resp: aiohttp.ClientResponse, limit: int) -> bytearray:
    """The (decompressed) body, or ResponseError as soon as it passes `limit` bytes (grown in
    place: no list of chunks joined into a second copy)."""
    body = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        if len(body) + len(chunk) > limit:
            raise ResponseError(f"response from {resp.url} larger than {limit} bytes")
        body += chunk
    return body


def describe(exc: BaseException) -> str:
    """One line saying what went wrong, for logs and the down reason (never empty)."""
    if isinstance(exc, aiohttp.TooManyRedirects):
        hops = " -> ".join(str(r.url) for r in exc.history[-3:])
        return f"redirect loop: more than {MAX_REDIRECTS} redirects ({hops} -> ...)"
    url = getattr(exc, "url", None) or (exc.args[0] if exc.args else "?")
    if isinstance(exc, aiohttp.RedirectClientError):
        return f"redirected to {url}, not a valid http(s) URL (not followed)"
    if isinstance(exc, aiohttp.NonHttpUrlClientError):
        return f"{url} is not an http(s) URL"
    if isinstance(exc, aiohttp.InvalidURL):
        return f"invalid URL {url}" + (f": {exc.description}" if exc.description else "")
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status} {exc.message} from {exc.request_info.real_url}".strip()
    return str(exc) or type(exc).__name__


async def health_problem(session: aiohttp.ClientSession, url: str) -> str | None:
    """None when the health endpoint answers 200, else why not (logged on change)."""
    try:
        async with session.get(url, max_redirects=MAX_REDIRECTS) as resp:
            if resp.status == 200:
                return None
            return f"HTTP {resp.status} from {url}"
    except (aiohttp.ClientError, OSError) as exc:
        return f"{url}: {describe(exc)}"


async def fetch_info(
    session: aiohttp.ClientSession, url: str, parse: Callable[[Any], EngineInfo]
) -> EngineInfo:
    """The engine's info endpoint (TGI /info, llama.cpp /props) read under the same kind of caps
    as /metrics; raises ResponseError, aiohttp.ClientError or OSError."""
    async with session.get(url, max_redirects=MAX_REDIRECTS) as resp:
        if resp.status != 200:
            raise ResponseError(f"HTTP {resp.status} from {url}")
        data = await read_body(resp, MAX_INFO_BYTES)
    depth = json_depth(data)
    if depth > MAX_INFO_DEPTH:
        raise ResponseError(f"{url}: JSON nested {depth} deep (at most {MAX_INFO_DEPTH})")
    try:
        info = parse(json.loads(data))
    except (ValueError, RecursionError) as exc:
        raise ResponseError(f"{url}: not JSON: {exc}") from None
    for what, value in (("model", info.model), ("version", info.version)):
        if value is not None and len(value) > MAX_LABEL_VALUE_CHARS:
            raise ResponseError(f"{url}: {what} longer than {MAX_LABEL_VALUE_CHARS} characters")
    return info
