"""Builds a state file the way the previous release wrote it, for the migration tests.

SCHEMA below is that release's schema, verbatim (`remediations/state.py` at commit 0ae4aec; no
`PRAGMA user_version`, so version 0): never edit it, add a new fixture for a new release;
FIRST_SWAPS is the `swaps` table of the release before it (no swap-back bookkeeping columns).
The rows written are what an operator has at stake: an engaged kill switch, an open circuit, a
claimed alert (its start written with a +02:00 offset), a cooldown, audit rows and a model swap.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS dedupe (key TEXT PRIMARY KEY, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS target_state (
    target TEXT PRIMARY KEY,
    cooldown_until REAL NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    last_failure REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS flags (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    alertname TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    result TEXT,
    reason TEXT NOT NULL DEFAULT '',
    playbook TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_action_time ON audit (action, time);
CREATE INDEX IF NOT EXISTS audit_time ON audit (time);
CREATE TABLE IF NOT EXISTS swaps (
    target TEXT PRIMARY KEY,
    namespace TEXT,
    deployment TEXT NOT NULL,
    original TEXT NOT NULL,
    lighter TEXT NOT NULL,
    swapped_at REAL NOT NULL,
    back_at REAL,
    quiet_seconds REAL NOT NULL DEFAULT 0,
    in_flight INTEGER NOT NULL DEFAULT 0,
    resolved_at REAL,
    resolved_by TEXT
);
"""
FIRST_SWAPS = """
CREATE TABLE swaps (
    target TEXT PRIMARY KEY,
    namespace TEXT,
    deployment TEXT NOT NULL,
    original TEXT NOT NULL,
    lighter TEXT NOT NULL,
    swapped_at REAL NOT NULL,
    back_at REAL
);
"""
CLAIMED = "0123456789abcdef@2026-11-21T07:29:57.774000+02:00"
AUDIT_ROWS = 300


def write(path: Path, now: float, *, first_swaps: bool = False) -> None:
    """A previous release's state file at `path`, as of `now`."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    schema = SCHEMA
    if first_swaps:
        schema = schema[: schema.index("CREATE TABLE IF NOT EXISTS swaps")] + FIRST_SWAPS
    db.executescript(schema)
    db.execute("INSERT INTO flags VALUES ('kill_switch', 1), ('circuit_open', 1)")
    db.execute("INSERT INTO dedupe VALUES (?, ?)", (CLAIMED, now + 3600))
    db.execute("INSERT INTO target_state VALUES ('deployment/web', ?, 2, ?)", (now + 600, now))
    db.executemany(
        "INSERT INTO audit (time, alertname, fingerprint, action, target, result, reason)"
        " VALUES (?, 'InferwatchLLMQueueBacklog', ?, 'scale', 'deployment/web', 'blocked',"
        " 'cooldown: test')",
        [(now - AUDIT_ROWS + n, f"f{n}") for n in range(AUDIT_ROWS)],
    )
    db.execute(
        "INSERT INTO swaps (target, namespace, deployment, original, lighter, swapped_at)"
        " VALUES ('deployment/web', NULL, 'web', 'big', 'small', ?)",
        (now - 60,),
    )
    db.close()
