"""Everything the remediator must remember across restarts, in one SQLite file.

Dedupe keys, per-target cooldowns and failure counts, the circuit breaker, the kill switch, model
swaps to undo, and the audit log. An audit row is written with no result *before* an action
changes anything; a row still without a result at start-up was cut off by a restart and is
closed as failed ("interrupted") — never re-run — while its dedupe key stays claimed.

Calls are synchronous on the event loop: each is a few tens of microseconds (WAL, no fsync per
commit), and keeping check-and-claim free of awaits is what makes them atomic. They never wait
for a lock (busy timeout 0): while another process holds the file's write lock, a call raises
StateBusy at once instead of stalling the event loop, and writes that record what already
happened (results, failures, flags, blocked alerts) are kept in memory and written later.

The file's schema version is `PRAGMA user_version`; MIGRATIONS bring older files up to
SCHEMA_VERSION at start-up, inside one transaction. A file that is empty, not SQLite, damaged,
newer than this code, read-only or locked is refused with StateError and one clear message.

Under leader election (Kubernetes backend) the engine gets remediations.cluster_state.ClusterState,
this class with the facts that must survive losing a node kept on Kubernetes objects; this file
is then the replica's cache, journal and audit log.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from remediations.alertmanager import episode_time

log = logging.getLogger("remediations")

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
CREATE TABLE IF NOT EXISTS resolved (key TEXT PRIMARY KEY, at REAL NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS raised_minimums (
    target TEXT PRIMARY KEY,
    namespace TEXT,
    deployment TEXT NOT NULL,
    restore_at REAL NOT NULL
);
"""
# Columns added to `swaps` after its first release: state files written before get them here.
SWAP_COLUMNS = {
    "quiet_seconds": "REAL NOT NULL DEFAULT 0",
    "in_flight": "INTEGER NOT NULL DEFAULT 0",
    "resolved_at": "REAL",
    "resolved_by": "TEXT",
}
SWAP_FIELDS = (
    "target, namespace, deployment, original, lighter, swapped_at, back_at, quiet_seconds,"
    " in_flight, resolved_at, resolved_by"
)
AUDIT_FIELDS = "id, time, alertname, fingerprint, action, target, result, reason, playbook"

ACTED = ("succeeded", "failed", "dry_run")
INTERRUPTED = "interrupted: the remediator stopped while this action ran; not repeated"
LOCK_WAIT_AT_START_S = 2.0  # start-up may wait this long for another process's write lock


class StateError(Exception):
    """The state file cannot be used; the message names the file, what is wrong and what to do."""


class StateBusy(StateError):
    """Another process holds the state file's write lock right now; try again later."""


def _is_busy(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc)
    )


def normalize_key(key: str) -> str:
    """A dedupe key `fingerprint@startsAt` with its time in UTC, whatever offset it was sent in.

    Keys of state files written before the times were normalized get the same form, so an alert
    handled before the upgrade stays handled.
    """
    fingerprint, sep, starts = key.rpartition("@")
    if not sep:
        return key
    try:
        parsed = datetime.fromisoformat(starts.replace("Z", "+00:00"))
    except ValueError:
        return key
    return f"{fingerprint}@{episode_time(parsed)}"


def _migrate_1(db: sqlite3.Connection) -> None:
    """The previous release (no user_version): swap columns it may lack, the `resolved` table
    (late firings), and dedupe keys with their times in UTC."""
    have = {row[1] for row in db.execute("PRAGMA table_info(swaps)")}
    for column, decl in SWAP_COLUMNS.items():
        if column not in have:
            db.execute(f"ALTER TABLE swaps ADD COLUMN {column} {decl}")
    rows = db.execute("SELECT key, expires FROM dedupe").fetchall()
    for key, expires in rows:
        new = normalize_key(key)
        if new != key:
            db.execute("DELETE FROM dedupe WHERE key = ?", (key,))
            db.execute(
                "INSERT INTO dedupe (key, expires) VALUES (?, ?) ON CONFLICT (key) DO UPDATE"
                " SET expires = MAX(expires, excluded.expires)",
                (new, expires),
            )


# MIGRATIONS[n] brings a file from user_version n to n + 1. CREATE TABLE IF NOT EXISTS in SCHEMA
# adds new tables; a migration adds columns and rewrites data. Append, never edit.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migrate_1]
SCHEMA_VERSION = len(MIGRATIONS)


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
        self.db = self._open()
        self._writes = 0
        self._pending: list[tuple[object, ...]] = []
        # Writes recording what already happened, kept while another process holds the lock.
        self._backlog: list[tuple[str, tuple[object, ...]]] = []
        self._last_busy_log = 0.0

    def _open(self) -> sqlite3.Connection:
        where = f"state file {self.path}"
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise StateError(f"{where}: its directory {directory} does not exist")
        if os.path.isfile(self.path) and os.path.getsize(self.path) == 0:
            raise StateError(
                f"{where} is empty (0 bytes): it was truncated, so the kill switch, circuit "
                "breaker, cooldowns and audit log it held are gone. Restore it from a backup, "
                "or delete it to start with an empty state."
            )
        try:
            db = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=LOCK_WAIT_AT_START_S,
            )
        except sqlite3.Error as exc:
            raise StateError(f"{where}: cannot open it: {exc}") from None
        try:
            self._check_and_migrate(db)
        except StateError:
            db.close()
            raise
        except sqlite3.Error as exc:
            db.close()
            if _is_busy(exc):
                raise StateError(
                    f"{where} is locked by another process (another remediator on the same "
                    f"file?) for more than {LOCK_WAIT_AT_START_S:g}s: {exc}"
                ) from None
            if "readonly" in str(exc) or (unwritable := self._unwritable()):
                raise StateError(
                    f"{where} is read-only ({unwritable or exc}): the remediator must be able "
                    "to write it, and to create its -wal and -shm files beside it."
                ) from None
            raise StateError(
                f"{where} is not a usable SQLite database ({exc}): it is damaged or not a "
                "remediator state file. Restore it from a backup, or move it away to start "
                "with an empty state."
            ) from None
        db.execute("PRAGMA busy_timeout = 0")  # never stall the event loop on a lock
        return db

    def _unwritable(self) -> str | None:
        """Why the file (or the -wal file SQLite needs beside it) cannot be written, if so."""
        for path in (self.path, self.path + "-wal"):
            existed = os.path.exists(path)
            if path != self.path and existed:
                continue
            try:
                os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                    return f"{path}: {exc.strerror}"
                return None
            if not existed:
                os.unlink(path)
        return None

    def _check_and_migrate(self, db: sqlite3.Connection) -> None:
        where = f"state file {self.path}"
        db.execute("PRAGMA journal_mode=WAL").fetchone()
        db.execute("PRAGMA synchronous=NORMAL")
        check = [row[0] for row in db.execute("PRAGMA quick_check")]
        if check != ["ok"]:
            raise sqlite3.DatabaseError("; ".join(str(c) for c in check[:3]))
        db.execute("BEGIN IMMEDIATE")  # the write lock: a read-only or locked file fails here
        try:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"{where} has schema version {version}; this remediator knows up to "
                    f"{SCHEMA_VERSION}: it was written by a newer release. Run that release."
                )
            tables = {
                r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if tables and "audit" not in tables:
                raise StateError(
                    f"{where} is an SQLite database, but not a remediator state file "
                    f"(tables: {', '.join(sorted(tables)[:5])}). Point --state elsewhere."
                )
            fresh = not tables
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            if not fresh:
                for n in range(version, SCHEMA_VERSION):
                    MIGRATIONS[n](db)
                    log.info("state file %s: migrated schema %d -> %d", self.path, n, n + 1)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        try:
            self.flush()
        except StateBusy:
            log.error(
                "state file %s is locked: %d records could not be written before exit",
                self.path,
                len(self._backlog) + len(self._pending),
            )
        self.db.close()

    def _run(self, sql: str, args: tuple[object, ...] = ()) -> sqlite3.Cursor:
        """One statement; a held lock becomes StateBusy, the file failing (disk full, I/O error,
        damage found while running) StateError: the caller must not take it for an action's
        failure. A constraint violation stays what it is: a bug."""
        try:
            return self.db.execute(sql, args)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.DatabaseError as exc:
            if _is_busy(exc):
                raise StateBusy(f"state file {self.path} is locked by another process") from exc
            raise StateError(f"state file {self.path} cannot be used: {exc}") from exc

    def _record(self, sql: str, args: tuple[object, ...]) -> None:
        """A write of something that already happened: kept for later if the file is locked."""
        if self._backlog:
            self._backlog.append((sql, args))
            return
        try:
            self._run(sql, args)
        except StateBusy:
            self._backlog.append((sql, args))
            self._note_busy()

    def report_unavailable(self, exc: StateError) -> None:
        """Log (at most every 10 s) that work waits for the state file."""
        now = time.monotonic()
        if now - self._last_busy_log >= 10:
            self._last_busy_log = now
            log.warning("%s; the alert waits and is tried again", exc)

    def _note_busy(self) -> None:
        now = time.monotonic()
        if now - self._last_busy_log >= 10:
            self._last_busy_log = now
            log.warning(
                "state file %s is locked by another process: %d records wait in memory",
                self.path,
                len(self._backlog) + len(self._pending),
            )

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._run("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self._run("ROLLBACK")
            raise
        try:
            self._run("COMMIT")
        except StateBusy:
            self._run("ROLLBACK")
            raise

    # -- what other replicas share (nothing: one process owns this file) --------------------

    async def refresh(self) -> None:
        """Read what other replicas may have changed; a local file has nothing to read."""

    async def written(self, limit_s: float = 10.0) -> None:
        """Wait until what was recorded is where other replicas read it; SQLite writes are
        there when they return."""

    # -- start-up ---------------------------------------------------------------------------

    def close_interrupted(self) -> list[AuditEntry]:
        """Close actions a previous run left open; they are reported, never resumed blindly."""
        rows = self._audit_rows("WHERE result IS NULL", ())
        self._run(
            "UPDATE audit SET result = 'failed', reason = ? WHERE result IS NULL", (INTERRUPTED,)
        )
        return rows

    # -- idempotency ------------------------------------------------------------------------

    def seen(self, key: str, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        row = self._run("SELECT expires FROM dedupe WHERE key = ?", (key,)).fetchone()
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

    def begin_action(
        self,
        key: str,
        ttl: float,
        *,
        alertname: str,
        fingerprint: str,
        action: str,
        target: str,
        reason: str,
        playbook: str,
        cooldown: float,
        now: float | None = None,
    ) -> int | None:
        """Claim `key`, journal the action (no result yet) and start the target's cooldown, all in
        one transaction: either all of it is written or none (StateBusy: the alert can be tried
        again; nothing was claimed). None when `key` was claimed already."""
        now = time.time() if now is None else now
        self.flush()
        with self._tx() as db:
            row = db.execute("SELECT expires FROM dedupe WHERE key = ?", (key,)).fetchone()
            if row is not None and row[0] > now:
                return None
            db.execute(
                "INSERT OR REPLACE INTO dedupe (key, expires) VALUES (?, ?)", (key, now + ttl)
            )
            cur = db.execute(
                "INSERT INTO audit (time, alertname, fingerprint, action, target, result, reason,"
                " playbook) VALUES (?, ?, ?, ?, ?, NULL, ?, ?)",
                (now, alertname, fingerprint, action, target, reason, playbook),
            )
            db.execute(
                """INSERT INTO target_state (target, cooldown_until) VALUES (?, ?)
                   ON CONFLICT (target) DO UPDATE SET cooldown_until = excluded.cooldown_until""",
                (target, now + cooldown),
            )
        self._count_writes(1)
        return int(cur.lastrowid or 0)

    # -- resolved episodes --------------------------------------------------------------------

    def resolve_episode(self, key: str, ttl: float, now: float | None = None) -> None:
        """The alert episode `key` resolved: a "firing" for it delivered later is stale."""
        now = time.time() if now is None else now
        self._record(
            "INSERT INTO resolved (key, at, expires) VALUES (?, ?, ?) ON CONFLICT (key)"
            " DO UPDATE SET expires = excluded.expires",
            (key, now, now + ttl),
        )

    def resolved_at(self, key: str, now: float | None = None) -> float | None:
        """When the episode `key` resolved, if it did (within its TTL)."""
        now = time.time() if now is None else now
        row = self._run("SELECT at, expires FROM resolved WHERE key = ?", (key,)).fetchone()
        return float(row[0]) if row is not None and row[1] > now else None

    # -- per target -------------------------------------------------------------------------

    def cooldown_left(self, target: str, now: float | None = None) -> float:
        now = time.time() if now is None else now
        row = self._run(
            "SELECT cooldown_until FROM target_state WHERE target = ?", (target,)
        ).fetchone()
        return max(0.0, row[0] - now) if row else 0.0

    def failures(self, target: str, window: float, now: float | None = None) -> int:
        """Failures since the last success, if the latest one lies within `window`."""
        now = time.time() if now is None else now
        row = self._run(
            "SELECT failures, last_failure FROM target_state WHERE target = ?", (target,)
        ).fetchone()
        if row is None or row[1] < now - window:
            return 0
        return int(row[0])

    def record_attempt(
        self, target: str, *, ok: bool, cooldown: float, now: float | None = None
    ) -> None:
        now = time.time() if now is None else now
        self._record(
            """INSERT INTO target_state (target, cooldown_until, failures, last_failure)
               VALUES (?, ?, ?, ?)
               ON CONFLICT (target) DO UPDATE SET
                 cooldown_until = MAX(target_state.cooldown_until, excluded.cooldown_until),
                 failures = CASE WHEN ? THEN 0 ELSE target_state.failures + 1 END,
                 last_failure = CASE WHEN ? THEN target_state.last_failure
                                     ELSE excluded.last_failure END""",
            (target, now + cooldown, 0 if ok else 1, 0 if ok else now, ok, ok),
        )

    def start_cooldown(self, target: str, cooldown: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._record(
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
        return int(self._run(sql, args).fetchone()[0])

    # -- flags: circuit breaker and kill switch -----------------------------------------------

    def flag(self, name: str) -> int:
        row = self._run("SELECT value FROM flags WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def set_flag(self, name: str, value: int) -> None:
        self._record(
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
        deferred, or when a finished action's row waits for the lock)."""
        now = time.time() if now is None else now
        row = (now, alertname, fingerprint, action, target, result, reason, playbook)
        if deferred:
            self._pending.append(row)
            if len(self._pending) >= 500:
                self._flush_quietly()
            return 0
        if result is not None:  # what already happened: never lost to a held lock
            self._record(
                "INSERT INTO audit (time, alertname, fingerprint, action, target, result, reason,"
                " playbook) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            return 0
        self.flush()
        cur = self._run(
            "INSERT INTO audit (time, alertname, fingerprint, action, target, result, reason,"
            " playbook) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            row,
        )
        self._count_writes(1)
        return int(cur.lastrowid or 0)

    def flush(self) -> None:
        """Write deferred audit rows and writes kept while the file was locked, in one
        transaction; StateBusy (and everything kept) while the lock is still held."""
        if not self._pending and not self._backlog:
            return
        rows, backlog = self._pending, self._backlog
        try:
            with self._tx() as db:
                for sql, args in backlog:
                    db.execute(sql, args)
                db.executemany(
                    "INSERT INTO audit (time, alertname, fingerprint, action, target, result,"
                    " reason, playbook) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
        except StateBusy:
            self._note_busy()
            raise
        self._pending, self._backlog = [], []
        if backlog:
            log.info(
                "state file %s writable again: %d kept records written", self.path, len(backlog)
            )
        self._count_writes(len(rows))

    def _flush_quietly(self) -> None:
        """Flush if the file is free; otherwise the rows wait for the next flush."""
        with suppress(StateBusy):
            self.flush()

    def _count_writes(self, n: int) -> None:
        before, self._writes = self._writes, self._writes + n
        if before // 500 != self._writes // 500:
            self._prune()

    def finish(self, audit_id: int, result: str, reason: str) -> None:
        self._record(
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
        self._flush_quietly()  # reading must not fail because a writer holds the lock (WAL)
        rows = self._run(f"SELECT {AUDIT_FIELDS} FROM audit {tail}", args).fetchall()
        return [AuditEntry(*row) for row in rows]

    def _prune(self) -> None:
        now = time.time()
        try:
            self._run("DELETE FROM dedupe WHERE expires <= ?", (now,))
            self._run("DELETE FROM resolved WHERE expires <= ?", (now,))
            self._run(
                "DELETE FROM audit WHERE result IS NOT NULL"
                " AND id <= (SELECT MAX(id) FROM audit) - ?",
                (self.audit_max_entries,),
            )
        except StateBusy:
            pass  # pruning waits for the next 500 writes

    # -- model swaps ------------------------------------------------------------------------

    def begin_swap(self, swap: Swap) -> None:
        """Recorded before the first replica changes, so a restart mid-swap still swaps back."""
        self._run(
            f"INSERT OR REPLACE INTO swaps ({SWAP_FIELDS})"
            " VALUES (?, ?, ?, ?, ?, ?, NULL, ?, 1, NULL, NULL)",
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
        self._run(
            """UPDATE swaps SET in_flight = 0, back_at = CASE WHEN resolved_at IS NOT NULL
                   THEN ? + quiet_seconds END
               WHERE target = ? AND in_flight = 1""",
            (now, target),
        )
        return self.swap(target)

    def end_interrupted_swaps(self, now: float | None = None) -> list[Swap]:
        """At start-up: swaps a previous run left mid-way are over (and may be due to undo)."""
        targets = [r[0] for r in self._run("SELECT target FROM swaps WHERE in_flight = 1")]
        return [s for t in targets if (s := self.end_swap(t, now)) is not None]

    def swap_resolved(self, target: str, alert_key: str, now: float | None = None) -> Swap | None:
        """The swap's alert resolved: swap back after the quiet period (counted from the swap's
        end when it still runs). None when there is no swap to undo."""
        now = time.time() if now is None else now
        self._run(
            """UPDATE swaps SET resolved_at = ?, resolved_by = ?,
                   back_at = CASE WHEN in_flight THEN NULL ELSE ? + quiet_seconds END
               WHERE target = ?""",
            (now, alert_key, now, target),
        )
        return self.swap(target)

    def swap_fired(self, target: str, alert_key: str) -> None:
        """The alert fired again: stay on the lighter model. A late copy of the notification
        that resolved (same alert, same start) is not a new firing."""
        self._run(
            """UPDATE swaps SET resolved_at = NULL, resolved_by = NULL, back_at = NULL
               WHERE target = ? AND (resolved_by IS NULL OR resolved_by != ?)""",
            (target, alert_key),
        )

    def swap(self, target: str) -> Swap | None:
        row = self._run(f"SELECT {SWAP_FIELDS} FROM swaps WHERE target = ?", (target,)).fetchone()
        return _swap(row) if row else None

    def schedule_swap_back(self, target: str, back_at: float) -> None:
        """Try the swap back again at `back_at` (the last attempt failed)."""
        self._run("UPDATE swaps SET back_at = ? WHERE target = ?", (back_at, target))

    def remediations_since(self, target: str, since: float) -> int:
        """Actions an alert started on `target` since `since` (succeeded, failed or in progress;
        undoing one, such as a swap back, is not another)."""
        row = self._run(
            "SELECT COUNT(*) FROM audit WHERE target = ? AND time >= ? AND alertname != ''"
            " AND (result IS NULL OR result IN ('succeeded', 'failed'))",
            (target, since),
        ).fetchone()
        return int(row[0])

    # -- autoscaler minimums the scale action raised (restored after cooldown or resolve) ---

    def minimum_raised(
        self, target: str, namespace: str | None, deployment: str, restore_at: float
    ) -> None:
        self._run(
            "INSERT INTO raised_minimums (target, namespace, deployment, restore_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (target) DO UPDATE SET"
            " restore_at = MAX(restore_at, excluded.restore_at)",
            (target, namespace, deployment, restore_at),
        )

    def restore_minimum_now(self, target: str, now: float | None = None) -> bool:
        """The alert resolved: restore at once. False when nothing was raised."""
        now = time.time() if now is None else now
        cur = self._run(
            "UPDATE raised_minimums SET restore_at = MIN(restore_at, ?) WHERE target = ?",
            (now, target),
        )
        return cur.rowcount > 0

    def minimums_due(self, now: float | None = None) -> list[tuple[str, str | None, str]]:
        """(target, namespace, deployment) whose raised minimum is due to be restored."""
        now = time.time() if now is None else now
        rows = self._run(
            "SELECT target, namespace, deployment FROM raised_minimums WHERE restore_at <= ?",
            (now,),
        ).fetchall()
        return [(str(r[0]), r[1], str(r[2])) for r in rows]

    def minimum_restored(self, target: str) -> None:
        self._run("DELETE FROM raised_minimums WHERE target = ?", (target,))

    def swaps_due(self, now: float | None = None) -> list[Swap]:
        now = time.time() if now is None else now
        rows = self._run(
            f"SELECT {SWAP_FIELDS} FROM swaps"
            " WHERE in_flight = 0 AND back_at IS NOT NULL AND back_at <= ?",
            (now,),
        ).fetchall()
        return [_swap(row) for row in rows]

    def drop_swap(self, target: str) -> None:
        self._run("DELETE FROM swaps WHERE target = ?", (target,))


def _swap(row: tuple[object, ...]) -> Swap:
    """A row of `SELECT {SWAP_FIELDS}`: the columns in the order of Swap's fields."""
    (target, namespace, deployment, original, lighter, swapped_at, back_at, quiet, in_flight,
     resolved_at, resolved_by) = row  # fmt: skip
    return Swap(
        target=str(target),
        namespace=None if namespace is None else str(namespace),
        deployment=str(deployment),
        original=str(original),
        lighter=str(lighter),
        swapped_at=float(swapped_at),  # type: ignore[arg-type]
        back_at=None if back_at is None else float(back_at),  # type: ignore[arg-type]
        quiet_seconds=float(quiet),  # type: ignore[arg-type]
        in_flight=bool(in_flight),
        resolved_at=None if resolved_at is None else float(resolved_at),  # type: ignore[arg-type]
        resolved_by=None if resolved_by is None else str(resolved_by),
    )
