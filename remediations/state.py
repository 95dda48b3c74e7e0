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
from dataclasses import dataclass
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
    back_at REAL
);
"""

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
    target: str
    namespace: str | None
    deployment: str
    original: str
    lighter: str
    swapped_at: float
    back_at: float | None  # when to swap back: set once the alert resolved


class State:
    def __init__(self, path: Path | str, *, audit_max_entries: int = 10000) -> None:
        self.path = str(path)
        self.audit_max_entries = audit_max_entries
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
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

    def recent(self, limit: int = 100) -> list[AuditEntry]:
        return self._audit_rows("ORDER BY id DESC LIMIT ?", (limit,))

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

    def record_swap(self, swap: Swap) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO swaps VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                swap.target,
                swap.namespace,
                swap.deployment,
                swap.original,
                swap.lighter,
                swap.swapped_at,
                swap.back_at,
            ),
        )

    def swap(self, target: str) -> Swap | None:
        row = self.db.execute("SELECT * FROM swaps WHERE target = ?", (target,)).fetchone()
        return Swap(*row) if row else None

    def schedule_swap_back(self, target: str, back_at: float | None) -> None:
        """Set when to swap back (the alert resolved), or clear it (the alert fired again)."""
        self.db.execute("UPDATE swaps SET back_at = ? WHERE target = ?", (back_at, target))

    def swaps_due(self, now: float | None = None) -> list[Swap]:
        now = time.time() if now is None else now
        rows = self.db.execute(
            "SELECT * FROM swaps WHERE back_at IS NOT NULL AND back_at <= ?", (now,)
        ).fetchall()
        return [Swap(*row) for row in rows]

    def drop_swap(self, target: str) -> None:
        self.db.execute("DELETE FROM swaps WHERE target = ?", (target,))
