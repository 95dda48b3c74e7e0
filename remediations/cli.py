"""`inferwatch-remediator`: serve the Alertmanager webhook. Exit code 2 on bad usage or config."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import ssl
import sys
from collections.abc import Sequence

from exporter.settings import ConfigError
from remediations import __version__

log = logging.getLogger("remediations")

DESCRIPTION = """\
Inferwatch remediator: receives Alertmanager webhooks on POST /alerts and runs guarded
playbooks (scale, drain, restart, drain_node, swap_model) on Kubernetes or local processes.

Run with --dry-run first: every guard runs and GET /actions shows what would have been done.

endpoints:
  POST /alerts          Alertmanager webhook (bearer token)    GET /actions   audit log
  POST /killswitch      {"enabled": true|false} (token)         GET /metrics   Prometheus
  POST /circuit/reset   close the circuit breaker (token)       GET /healthz

config precedence: defaults < --config YAML < INFERWATCH_REMEDIATOR_* environment < flags.
The bearer token comes from --token-file, `token_file:` or INFERWATCH_REMEDIATOR_TOKEN.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="inferwatch-remediator",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See docs/remediator.md for playbooks, guards and the local backend.",
    )
    p.add_argument("--config", metavar="FILE", help="YAML config file")
    p.add_argument("--listen", metavar="HOST:PORT", help="address to serve on (0.0.0.0:9836)")
    p.add_argument("--playbooks", metavar="FILE", help="playbooks YAML (default: built-in)")
    p.add_argument("--state", metavar="FILE", help="SQLite state file")
    p.add_argument(
        "--dry-run", action="store_true", default=None, help="record actions, change nothing"
    )
    p.add_argument("--token-file", metavar="FILE", help="file holding the bearer token")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["text", "json"])
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from exporter.logs import setup_logging
    from remediations.app import create_app, serve
    from remediations.config import load_config
    from remediations.playbook import load_playbooks
    from remediations.state import StateError

    args = _parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    flags = {
        "listen": args.listen,
        "playbooks": args.playbooks,
        "state": args.state,
        "dry_run": args.dry_run,
        "token_file": args.token_file,
        "log_level": args.log_level,
        "log_format": args.log_format,
    }
    try:
        cfg = load_config(args.config, flags=flags)
        token = cfg.bearer_token()
        playbooks = load_playbooks(cfg.playbooks)
        ssl_context = None
        if cfg.tls is not None:
            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                ssl_context.load_cert_chain(cfg.tls.cert_file, cfg.tls.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"tls: cannot load {cfg.tls.cert_file}: {exc}") from None
    except ConfigError as exc:
        print(f"inferwatch-remediator: invalid config:\n{exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level, cfg.log_format)
    try:
        # Opens and checks the state file before any replica starts.
        app = create_app(cfg, token=token, playbooks=playbooks)
    except StateError as exc:
        print(f"inferwatch-remediator: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"inferwatch-remediator: invalid config:\n{exc}", file=sys.stderr)
        return 2
    log.info("inferwatch-remediator %s listening on %s", __version__, cfg.listen)
    # Everything loaded so far (modules, schemas, the app) lives as long as the process: out of
    # the collector's sight, a full collection no longer walks it while acknowledgements wait.
    gc.freeze()
    try:
        # SIGTERM/SIGINT: a graceful shutdown that drains the queue.
        asyncio.run(serve(app, ssl_context))
    except OSError as exc:
        print(f"inferwatch-remediator: cannot listen on {cfg.listen}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
