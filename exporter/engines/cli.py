"""`inferwatch-exporter normalize FILE|URL`: what the exporter would publish for one exposition.

The normalized exposition goes to stdout (pipe it into promtool or a diff); a short report of
which sources were used and which metrics have none goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric

from exporter.engines.normalize import Families, Normalized, normalize_text
from exporter.engines.parser import ParseError
from exporter.engines.registry import ENGINE_NAMES, EngineNotDetected
from exporter.engines.schema import SPECS

FETCH_TIMEOUT_SECONDS = 10.0
MAX_INPUT_BYTES = 64 * 1024 * 1024


class InputError(Exception):
    """The input could not be read; the message says what and why."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="inferwatch-exporter normalize",
        description="Print the normalized inferwatch_llm_* exposition for one engine's /metrics "
        "text (a file, '-' for stdin, or an http(s) URL); a report goes to stderr.",
    )
    p.add_argument("source", metavar="FILE|URL")
    p.add_argument("--engine", choices=["auto", *ENGINE_NAMES], default="auto")
    p.add_argument("--target", help="value of the target label (default: file name or host:port)")
    p.add_argument("--model", help="model label for engines whose metrics carry none")
    return p


def read_source(source: str) -> tuple[str, str]:
    """(text, default target label) from a file, stdin or URL; raises InputError."""
    if source == "-":
        return sys.stdin.read(), "stdin"
    parsed = urllib.parse.urlsplit(source)
    if parsed.scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(source, timeout=FETCH_TIMEOUT_SECONDS) as resp:
                body = resp.read(MAX_INPUT_BYTES + 1)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise InputError(f"cannot fetch {source}: {exc}") from exc
        target = parsed.netloc
    else:
        path = Path(source)
        try:
            with path.open("rb") as f:
                body = f.read(MAX_INPUT_BYTES + 1)
        except OSError as exc:
            raise InputError(f"cannot read {source}: {exc.strerror or exc}") from exc
        target = path.name
    if len(body) > MAX_INPUT_BYTES:
        raise InputError(f"{source}: larger than {MAX_INPUT_BYTES} bytes")
    return body.decode("utf-8", errors="replace"), target


class _Fixed:
    """Lets prometheus-client's own encoder render a fixed list of families."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def render(result: Normalized) -> bytes:
    families = Families()
    families.add_all(result.status)
    families.add_all(result.groups)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families.metrics()))
    return generate_latest(registry)


def report(result: Normalized, detected: bool, out: TextIO) -> None:
    how = "auto-detected" if detected else "as given"
    models = ", ".join(m or '""' for m in result.models)
    print(f"engine: {result.engine} ({how}); model: {models}", file=out)
    for name, source in result.hits.items():
        print(f"  hit      {SPECS[name].key:<52} <- {source}", file=out)
    for spec in result.missing:
        print(f"  missing  {spec.key}", file=out)
    print(
        f"{len(result.hits)} mapped, {len(result.missing)} missing, "
        f"{result.series_count} series, {result.dropped} input samples dropped",
        file=out,
    )
    for error in result.errors:
        print(f"  dropped: {error}", file=out)


def normalize_main(argv: list[str]) -> int:
    """Exit 0 on success, 1 when the text holds no known engine, 2 on bad usage or input."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        text, default_target = read_source(args.source)
    except InputError as exc:
        print(f"inferwatch-exporter normalize: {exc}", file=sys.stderr)
        return 2
    target = args.target or default_target
    try:
        result = normalize_text(text, args.engine, target=target, model=args.model)
    except ParseError as exc:
        print(f"inferwatch-exporter normalize: {args.source}: {exc}", file=sys.stderr)
        return 2
    except EngineNotDetected as exc:
        print(
            f"inferwatch-exporter normalize: {args.source}: {exc} (engine: unknown); "
            f"use --engine to force one of {', '.join(ENGINE_NAMES)}",
            file=sys.stderr,
        )
        return 1
    sys.stdout.buffer.write(render(result))
    sys.stdout.flush()
    report(result, args.engine == "auto", sys.stderr)
    return 0
