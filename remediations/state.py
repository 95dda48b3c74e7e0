"""Everything the remediator must remember across restarts, in one SQLite file.

Dedupe keys, per-target cooldowns and failure counts, the circuit breaker, the kill switch, model
swaps to undo, and the audit log. An audit row is written with no result *before* an action
changes anything; a row still without a result at start-up was cut off by a restart and is
closed as failed ("interrupted") — never re-run — while its dedupe key stays claimed.

Calls are synchronous on the event loop: each is a few tens of microseconds (WAL, no fsync per
commit), and keeping check-and-claim free of awaits is what makes them atomic.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

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
# Columns added to `swaps` after its first release: state files written before get them here.
SWAP_COLUMNS = {
    "quiet_seconds": "REAL NOT NULL DEFAULT 0",
    "in_flight": "INTEGER NOT NULL DEFAULT 0",
    "resolved_at": "REAL",
    "resolved_by": "TEXT",
}

ACTED = ("succeeded", "failed", "dry_run")
INTERRUPTED = "interrupted: the remediator stopped while this action ran; not repeated"


@dataclass(frozen=True)
class AuditEntry:
    id: int
    time: float
    alertname: str
    fingerprint: str
    action: str
    target: str
    result: str | None
    reason: str
    playbook: str


@dataclass(frozen=True)
class Swap:
    """A model swap to undo. The alert may resolve while the swap still runs (restarting
    replicas changes what the rule sees), so the resolution is kept as a fact of its own and
    turned into `back_at` once the swap is over."""

    target: str
    namespace: str | None
    deployment: str
    original: str
    lighter: str
    swapped_at: float
    back_at: float | None  # when to swap back: set once the alert resolved and the swap ended
    quiet_seconds: float = 0.0  # after the resolution (or the swap's end), wait this long
    in_flight: bool = False  # the swap is still running
    resolved_at: float | None = None  # the alert resolved (and has not fired again since)
    resolved_by: str | None = None  # that alert's dedupe key: a late duplicate of it is no re-fire


class State:
    def __init__(self, path: Path | str, *, audit_max_entries: int = 10000) -> None:
        self.path = str(path)
        self.audit_max_entries = audit_max_entries
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        have = {row[1] for row in self.db.execute("PRAGMA table_info(swaps)")}
        for column, decl in SWAP_COLUMNS.items():
            if column not in have:
                self.db.execute(f"ALTER TABLE swaps ADD COLUMN {column} {decl}")
        self._writes = 0
        self._pending: list[tuple[object, ...]] = []

    def close(self) -> None:
        self.flush()
        self.db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- start-up ---------------------------------------------------------------------------

    def close_interrupted(self) -> list[AuditEntry]:
        """Close actions a previous run left open; they are reported, never resumed blindly."""
        rows = self._audit_rows("WHERE result IS NULL", ())
        self.db.execute(
            "UPDATE audit SET result = 'failed', reason = ? WHERE result IS NULL", (INTERRUPTED,)
        )
        return rows

    # -- idempotency ------------------------------------------------------------------------

    def seen(self, key: str, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        row = self.db.execute("SELECT expires FROM dedupe WHERE key = ?", (key,)).fetchone()
        return row is not None and row[0] > now

    def claim(self, key: str, ttl: float, now: float | None = None) -> bool:
        """True if this call is the first to claim `key` within its TTL."""
        now = time.time() if now is None else now
        with self._tx() as db:
            row = db.execute("SELECT expires FROM dedupe WHERE key = ?", (key,)).fetchone()
            if row is not None and row[0] > now:
                return False
            db.execute(
                "INSERT OR REPLACE INTO dedupe (key, expires) VALUES (?, ?)", (key, now + ttl)
            )
        return True

    # -- per target -------------------------------------------------------------------------

    def cooldown_left(self, target: str, now: float | None = None) -> float:
        now = time.time() if now is None else now
        row = self.db.execute(
            "SELECT cooldown_until FROM target_state WHERE target = ?", (target,)
        ).fetchone()
        return max(0.0, row[0] - now) if row else 0.0

    def failures(self, target: str, window: float, now: float | None = None) -> int:
        """Failures since the last success, if the latest one lies within `window`."""
        now = time.time() if now is None else now
        row = self.db.execute(
            "SELECT failures, last_failure FROM target_state WHERE target = ?", (target,)
        ).fetchone()
        if row is None or row[1] < now - window:
            return 0
        return int(row[0])

    def record_attempt(
        self, target: str, *, ok: bool, cooldown: float, now: float | None = None
    ) -> None:
        now = time.time() if now is None else now
        self.db.execute(
            """INSERT INTO target_state (target, cooldown_until, failures, last_failure)
               VALUES (?, ?, ?, ?)
               ON CONFLICT (target) DO UPDATE SET
                 cooldown_until = excluded.cooldown_until,
                 failures = CASE WHEN ? THEN 0 ELSE target_state.failures + 1 END,
                 last_failure = CASE WHEN ? THEN target_state.last_failure
                                     ELSE excluded.last_failure END""",
            (target, now + cooldown, 0 if ok else 1, 0 if ok else now, ok, ok),
        )

    def start_cooldown(self, target: str, cooldown: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.db.execute(
            """INSERT INTO target_state (target, cooldown_until) VALUES (?, ?)
               ON CONFLICT (target) DO UPDATE SET cooldown_until = excluded.cooldown_until""",
            (target, now + cooldown),
        )

    # -- rate limits ------------------------------------------------------------------------

    def actions_since(self, since: float, action: str | None = None) -> int:
        """Actions started since `since` (in progress included; blocked ones excluded)."""
        sql = (
            "SELECT COUNT(*) FROM audit WHERE time >= ? AND (result IS NULL OR result IN (?, ?, ?))"
        )
        args: tuple[object, ...] = (since, *ACTED)
        if action is not None:
            sql += " AND action = ?"
            args += (action,)
        return int(self.db.execute(sql, args).fetchone()[0])

    # -- flags: circuit breaker and kill switch -----------------------------------------------

    def flag(self, name: str) -> int:
        row = self.db.execute("SELECT value FROM flags WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def set_flag(self, name: str, value: int) -> None:
        self.db.execute(
            "INSERT INTO flags (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    # -- audit ------------------------------------------------------------------------------

    def audit(
        self,
        *,
        alertname: str,
        fingerprint: str,
        action: str,
        target: str,
        result: str | None,
        reason: str,
        playbook: str = "",
        now: float | None = None,
        deferred: bool = False,
    ) -> int:
        """Append to the audit log. `deferred` rows (blocked alerts: no rate limit or claim
        depends on them) are written in batches, so an alert storm costs one commit per batch
        rather than one per alert; every read flushes them first. Returns the row id (0 when
        deferred)."""
        now = time.time() if now is None else now
        row = (now, alertname, fingerprint, action, target, result, reason, playbook)
        if deferred:
            self._pending.append(row)
            if len(self._pending) >= 500:
                self.flush()
            return 0
        self.flush()
        cur = self.db.execute(
            "INSERT INTO audit (time, alertname, fingerprint, action, target, result, reason,"
            " playbook) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            row,
        )
        self._count_writes(1)
        return int(cur.lastrowid or 0)

    def flush(self) -> None:
        """Write deferred audit rows in one transaction."""
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        with self._tx() as db:
            db.executemany(
                "INSERT INTO audit (time, alertname, fingerprint, action, target, result, reason,"
                " playbook) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        self._count_writes(len(rows))

    def _count_writes(self, n: int) -> None:
        before, self._writes = self._writes, self._writes + n
        if before // 500 != self._writes // 500:
            self._prune()

    def finish(self, audit_id: int, result: str, reason: str) -> None:
        self.db.execute(
            "UPDATE audit SET result = ?, reason = ? WHERE id = ?", (result, reason, audit_id)
        )

    def recent(self, limit: int = 100, *, finished: bool = False) -> list[AuditEntry]:
        """Newest first; `finished` leaves out actions still running (no result yet)."""
        where = "WHERE result IS NOT NULL " if finished else ""
        return self._audit_rows(f"{where}ORDER BY id DESC LIMIT ?", (limit,))

    def in_progress(self) -> list[AuditEntry]:
        """Actions running now, newest first (few: one per worker and swap back at most)."""
        return self._audit_rows("WHERE result IS NULL ORDER BY id DESC", ())

    def _audit_rows(self, tail: str, args: tuple[object, ...]) -> list[AuditEntry]:
        self.flush()
        rows = self.db.execute(
            "SELECT id, time, alertname, fingerprint, action, target, result, reason, playbook "
            f"FROM audit {tail}",
            args,
        ).fetchall()
        return [AuditEntry(*row) for row in rows]

    def _prune(self) -> None:
        now = time.time()
        self.db.execute("DELETE FROM dedupe WHERE expires <= ?", (now,))
        self.db.execute(
            "DELETE FROM audit WHERE result IS NOT NULL AND id <= (SELECT MAX(id) FROM audit) - ?",
            (self.audit_max_entries,),
        )

    # -- model swaps ------------------------------------------------------------------------

    def begin_swap(self, swap: Swap) -> None:
        """Recorded before the first replica changes, so a restart mid-swap still swaps back."""
        self.db.execute(
            "INSERT OR REPLACE INTO swaps VALUES (?, ?, ?, ?, ?, ?, NULL, ?, 1, NULL, NULL)",
            (
                swap.target,
                swap.namespace,
                swap.deployment,
                swap.original,
                swap.lighter,
                swap.swapped_at,
                swap.quiet_seconds,
            ),
        )

    def end_swap(self, target: str, now: float | None = None) -> Swap | None:
        """The swap is over: if its alert resolved meanwhile, swap back after the quiet period."""
        now = time.time() if now is None else now
        self.db.execute(
            """UPDATE swaps SET in_flight = 0, back_at = CASE WHEN resolved_at IS NOT NULL
                   THEN ? + quiet_seconds END
               WHERE target = ? AND in_flight = 1""",
            (now, target),
        )
        return self.swap(target)

    def end_interrupted_swaps(self, now: float | None = None) -> list[Swap]:
        """At start-up: swaps a previous run left mid-way are over (and may be due to undo)."""
        targets = [r[0] for r in self.db.execute("SELECT target FROM swaps WHERE in_flight = 1")]
        return [s for t in targets if (s := self.end_swap(t, now)) is not None]

    def swap_resolved(self, target: str, alert_key: str, now: float | None = None) -> Swap | None:
        """The swap's alert resolved: swap back after the quiet period (counted from the swap's
        end when it still runs). None when there is no swap to undo."""
        now = time.time() if now is None else now
        self.db.execute(
            """UPDATE swaps SET resolved_at = ?, resolved_by = ?,
                   back_at = CASE WHEN in_flight THEN NULL ELSE ? + quiet_seconds END
               WHERE target = ?""",
            (now, alert_key, now, target),
        )
        return self.swap(target)

    def swap_fired(self, target: str, alert_key: str) -> None:
        """The alert fired again: stay on the lighter model. A late copy of the notification
        that resolved (same alert, same start) is not a new firing."""
        self.db.execute(
            """UPDATE swaps SET resolved_at = NULL, resolved_by = NULL, back_at = NULL
               WHERE target = ? AND (resolved_by IS NULL OR resolved_by != ?)""",
            (target, alert_key),
        )

    def swap(self, target: str) -> Swap | None:
        row = self.db.execute("SELECT * FROM swaps WHERE target = ?", (target,)).fetchone()
        return _swap(row) if row else None

    def schedule_swap_back(self, target: str, back_at: float) -> None:
        """Try the swap back again at `back_at` (the last attempt failed)."""
        self.db.execute("UPDATE swaps SET back_at = ? WHERE target = ?", (back_at, target))

    def swaps_due(self, now: float | None = None) -> list[Swap]:
        now = time.time() if now is None else now
        rows = self.db.execute(
            "SELECT * FROM swaps WHERE in_flight = 0 AND back_at IS NOT NULL AND back_at <= ?",
            (now,),
        ).fetchall()
        return [_swap(row) for row in rows]

    def drop_swap(self, target: str) -> None:
        self.db.execute("DELETE FROM swaps WHERE target = ?", (target,))


def _swap(row: Any) -> Swap:
    return replace(Swap(*row), in_flight=bool(row[8]))
