"""`inferwatch-exporter`: serve, `normalize`, `check-config`. Exit code 2 on bad usage or config."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from exporter import __version__
from exporter.settings import ConfigError

log = logging.getLogger("exporter")

DESCRIPTION = """\
Inferwatch exporter: publishes NVML GPU health, CUDA caching-allocator fragmentation (from the
in-process probe) and inference engines' metrics normalized into one schema, on /metrics.

commands:
  (none)                     serve /metrics, /healthz, /readyz (default 0.0.0.0:9835)
  normalize FILE|URL         print what the exporter would publish for one engine's /metrics
  check-config FILE          validate a config file and print the effective config

config precedence: defaults < --config YAML < INFERWATCH_* environment < flags.
Nested keys in the environment use '__', e.g.
  INFERWATCH_COLLECTORS__GPU__INTERVAL_SECONDS=5   INFERWATCH_LOG_FORMAT=json
"""


def _serve_parser() -> argparse.ArgumentParser:
    from exporter.simulate import SCENARIOS

    p = argparse.ArgumentParser(
        prog="inferwatch-exporter",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See docs/exporter.md for every config key and metric.",
    )
    p.add_argument("--config", metavar="FILE", help="YAML config file")
    p.add_argument("--listen", metavar="HOST:PORT", help="address to serve on (0.0.0.0:9835)")
    p.add_argument(
        "--simulate",
        metavar="SCENARIO",
        choices=sorted(SCENARIOS),
        help="simulated GPUs and probe files instead of real ones: " + ", ".join(sorted(SCENARIOS)),
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["text", "json"])
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def _check_config(argv: Sequence[str]) -> int:
    from exporter.config import load_config

    p = argparse.ArgumentParser(
        prog="inferwatch-exporter check-config",
        description="Validate a config file (with INFERWATCH_* env applied) and print it.",
    )
    p.add_argument("file", metavar="FILE")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        print(f"inferwatch-exporter: invalid config:\n{exc}", file=sys.stderr)
        return 2
    print(cfg.model_dump_json(indent=2))
    return 0


def serve(argv: Sequence[str]) -> int:
    from aiohttp import web

    from exporter.app import create_app
    from exporter.config import load_config
    from exporter.logs import setup_logging

    args = _serve_parser().parse_args(argv)
    flags = {
        "listen": args.listen,
        "simulate": args.simulate,
        "log_level": args.log_level,
        "log_format": args.log_format,
    }
    try:
        cfg = load_config(args.config, flags=flags)
    except ConfigError as exc:
        print(f"inferwatch-exporter: invalid config:\n{exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level, cfg.log_format)
    log.info("inferwatch-exporter %s listening on %s", __version__, cfg.listen)
    # run_app turns SIGTERM/SIGINT into a graceful shutdown that runs every cleanup context.
    web.run_app(create_app(cfg), host=cfg.host, port=cfg.port, print=None, access_log=None)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "normalize":
        from exporter.engines.cli import normalize_main

        return normalize_main(argv[1:])
    if argv and argv[0] == "check-config":
        return _check_config(argv[1:])
    return serve(argv)


if __name__ == "__main__":
    sys.exit(main())
