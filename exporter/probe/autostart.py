"""Imported by the inferwatch-probe.pth hook at interpreter start (only if INFERWATCH_PROBE_DIR
is set). It starts the idle thread only: torch is never imported here."""

from __future__ import annotations

from exporter.probe.runtime import start_from_env

start_from_env()
