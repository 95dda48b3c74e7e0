"""The state the cluster keeps, for replicas under leader election (Kubernetes backend).

A replica's SQLite file dies with its node; what must survive failover lives on Kubernetes
objects instead, written with `resourceVersion` preconditions (a stale write is 409 Conflict:
read again, decide again), so two replicas can never both claim one action:

- on the target object (the Deployment, or the Node for drain_node), as annotations:
  `inferwatch.io/claim` (the alerts claimed on it, by whom), `inferwatch.io/cooldown-until`,
  `inferwatch.io/attempts` (failures since the last success), `inferwatch.io/in-progress` (the
  action running on it, by whom) and `inferwatch.io/swap-restore` (a model swap to undo);
- on one ConfigMap beside the Lease (`<lease name>-state`): the kill switch and the circuit
  breaker (`kill_switch`, `circuit_open`, `consecutive_failures`).

ClusterState is the engine's State with those facts taken from the cluster: the claim, the
cooldown, the attempts and the in-progress record are checked and written together in one
conditional patch at the commit point (`claim`); what changes later (an outcome, a swap's
progress, a flag) is written to SQLite at once and to the cluster by one writer task in order
(`written()` waits for it). SQLite stays this replica's cache, journal and audit log.

On every new term the leader adopts the cluster's facts (`adopt`) before it acts: flags, swaps
to undo, and actions a previous leader left in progress, which are recorded as interrupted (in
this replica's audit log), never repeated, and whose swaps are still undone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from remediations.backends import BackendError, Conflict, TargetKind
from remediations.backends.kubernetes import KubernetesBackend
from remediations.guards import Blocked, Guard
from remediations.state import State, StateError, Swap
from remediations.targets import TargetRef

log = logging.getLogger("remediations.cluster_state")

PREFIX = "inferwatch.io/"
CLAIM_ANNOTATION = PREFIX + "claim"
COOLDOWN_ANNOTATION = PREFIX + "cooldown-until"
ATTEMPTS_ANNOTATION = PREFIX + "attempts"
IN_PROGRESS_ANNOTATION = PREFIX + "in-progress"
SWAP_ANNOTATION = PREFIX + "swap-restore"
MAX_CLAIMS = 32  # claims kept per object (the newest): the annotation stays small
CONFLICT_RETRIES = 5
FLAGS = ("kill_switch", "circuit_open", "consecutive_failures")  # ConfigMap data keys
WRITE_RETRY_SECONDS = 1.0


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str | None) -> float:
    """An RFC 3339 time from an annotation; a missing or mangled one is 0 (long past)."""
    try:
        return datetime.fromisoformat((value or "").replace("Z", "+00:00")).timestamp()
    except ValueError:
        if value:
            log.warning("ignoring a time that is not RFC 3339: %r", value[:80])
        return 0.0


def parse_json(key: str, value: str | None) -> dict[str, Any]:
    """A JSON object from an annotation; a mangled one counts as absent (and is replaced)."""
    try:
        data = json.loads(value) if value else {}
    except ValueError:
        log.warning("%s is not JSON; treating it as absent", key)
        return {}
    return data if isinstance(data, dict) else {}


def dump(data: dict[str, Any] | None) -> str | None:
    return None if not data else json.dumps(data, sort_keys=True, separators=(",", ":"))


@dataclass
class TargetFacts:
    """What the cluster keeps about one target (besides its swap, which SQLite caches).

    The object that carries it is the target's Deployment (or Node): the per-target
    annotations are maps keyed by the target, since replica actions (restart, drain) keep their
    facts per pod on the pod's Deployment (a pod is replaced, its Deployment stays)."""

    target: str  # the engine's target key, e.g. deployment/llm/web or replica/llm/web-abc
    ref: TargetRef  # names the object: namespace + deployment, or node
    kind: TargetKind  # the object's kind: "deployment" or "node"
    cooldown_until: float = 0.0
    failures: int = 0
    last_failure: float = 0.0
    in_progress: dict[str, Any] | None = None
    swap_written: bool = False  # the object carries a swap-restore annotation

    def read(self, notes: dict[str, str]) -> None:
        self.cooldown_until = parse_time(entries(notes, COOLDOWN_ANNOTATION).get(self.target))
        attempts = entries(notes, ATTEMPTS_ANNOTATION).get(self.target)
        attempts = attempts if isinstance(attempts, dict) else {}
        self.failures = int(attempts.get("failures") or 0)
        self.last_failure = float(attempts.get("lastFailure") or 0.0)
        running = entries(notes, IN_PROGRESS_ANNOTATION).get(self.target)
        self.in_progress = running if isinstance(running, dict) and running else None
        self.swap_written = SWAP_ANNOTATION in notes

    def changes(self, notes: dict[str, str], now: float) -> dict[str, str | None]:
        """The annotation values that put this target's entries into the maps `notes` holds
        (entries of other targets kept, expired cooldowns and empty ones dropped); only the
        ones that differ."""
        attempts = {"failures": self.failures, "lastFailure": round(self.last_failure, 3)}
        mine: dict[str, Any] = {
            COOLDOWN_ANNOTATION: rfc3339(self.cooldown_until)
            if self.cooldown_until > now
            else None,
            ATTEMPTS_ANNOTATION: attempts if self.failures else None,
            IN_PROGRESS_ANNOTATION: self.in_progress,
        }
        out: dict[str, str | None] = {}
        for key, value in mine.items():
            merged = entries(notes, key)
            merged.pop(self.target, None)
            if value is not None:
                merged[self.target] = value
            if key == COOLDOWN_ANNOTATION:
                merged = {t: v for t, v in merged.items() if parse_time(str(v)) > now}
            new = dump(merged)
            if new != notes.get(key):
                out[key] = new
        return out


def entries(notes: dict[str, str], key: str) -> dict[str, Any]:
    """A per-target map annotation (target -> value)."""
    return parse_json(key, notes.get(key))


def swap_record(swap: Swap, holder: str) -> dict[str, Any]:
    return {
        "original": swap.original,
        "lighter": swap.lighter,
        "swappedAt": swap.swapped_at,
        "backAt": swap.back_at,
        "quietSeconds": swap.quiet_seconds,
        "inFlight": swap.in_flight,
        "resolvedAt": swap.resolved_at,
        "resolvedBy": swap.resolved_by,
        "holder": holder,
    }


def swap_from(target: str, ref: TargetRef, data: dict[str, Any]) -> Swap | None:
    try:
        return Swap(
            target=target,
            namespace=ref.namespace,
            deployment=ref.deployment or "",
            original=str(data["original"]),
            lighter=str(data["lighter"]),
            swapped_at=float(data["swappedAt"]),
            back_at=None if data.get("backAt") is None else float(data["backAt"]),
            quiet_seconds=float(data.get("quietSeconds") or 0.0),
            in_flight=bool(data.get("inFlight")),
            resolved_at=None if data.get("resolvedAt") is None else float(data["resolvedAt"]),
            resolved_by=None if data.get("resolvedBy") is None else str(data["resolvedBy"]),
        )
    except (KeyError, TypeError, ValueError):
        log.error("%s on %s is not a swap record; ignored", SWAP_ANNOTATION, target)
        return None


@dataclass(frozen=True)
class Interrupted:
    """An action a previous leader left in progress on a target."""

    target: str
    action: str
    alertname: str
    holder: str
    plan: str


class ClusterState(State):
    def __init__(
        self,
        path: Path | str,
        *,
        audit_max_entries: int = 10000,
        namespace: str,
        config_map: str,
    ) -> None:
        super().__init__(path, audit_max_entries=audit_max_entries)
        self.namespace = namespace
        self.config_map = config_map
        self.identity = ""
        self._backend: KubernetesBackend | None = None
        self._leading: Callable[[], bool] = lambda: False
        self._on_error: Callable[[str, str], None] = lambda where, what: None
        self._facts: dict[str, TargetFacts] = {}
        self._dirty: dict[str, None] = {}  # "flags" and "target:<key>" to write, in order
        self._dirty_flags: set[str] = set()
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()
        self._settled.set()
        self._writer: asyncio.Task[None] | None = None
        self._interruptions: set[tuple[str, str]] = set()  # (target, at) recorded already

    # -- wiring -----------------------------------------------------------------------------

    def bind(
        self,
        backend: KubernetesBackend,
        identity: str,
        leading: Callable[[], bool],
        on_error: Callable[[str, str], None],
    ) -> None:
        """Start writing to the cluster as `identity`; target facts only while `leading()`."""
        self._backend = backend
        self.identity = identity
        self._leading = leading
        self._on_error = on_error
        self._writer = asyncio.create_task(self._write_loop())

    async def unbind(self, limit_s: float) -> None:
        """Write what is pending (within `limit_s`), then stop the writer."""
        try:
            await self.written(limit_s)
        except StateError as exc:
            log.error("%s", exc)
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None

    @property
    def backend(self) -> KubernetesBackend:
        if self._backend is None:
            raise RuntimeError("ClusterState is not bound to a backend")
        return self._backend

    def _core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.backend.api_client)

    # -- flags: the ConfigMap ---------------------------------------------------------------

    def set_flag(self, name: str, value: int) -> None:
        super().set_flag(name, value)
        if name in FLAGS:
            self._dirty_flags.add(name)
            self._mark("flags")

    async def refresh(self) -> None:
        """Read the kill switch and circuit breaker from the ConfigMap into the cache (flags
        this replica has yet to write keep its own value)."""
        where = f"configmap {self.namespace}/{self.config_map}"
        try:
            cm = await self._core().read_namespaced_config_map(self.config_map, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return  # nobody set a flag yet
            raise StateError(f"{where}: HTTP {exc.status} {exc.reason}") from None
        except Exception as exc:  # the API cannot be reached: nothing may be decided on it
            raise StateError(f"{where}: {type(exc).__name__}: {exc}") from None
        for name in FLAGS:
            raw = (cm.data or {}).get(name)
            if name in self._dirty_flags or raw is None:
                continue
            try:
                super().set_flag(name, int(raw))
            except ValueError:
                log.error("configmap %s: %s=%r is not a number", self.config_map, name, raw)

    async def _write_flags(self) -> None:
        core, ns, name = self._core(), self.namespace, self.config_map
        for _ in range(CONFLICT_RETRIES):
            names = set(self._dirty_flags)
            if not names:
                return
            values = {n: str(self.flag(n)) for n in names}
            try:
                cm = await core.read_namespaced_config_map(name, ns)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                body = client.V1ConfigMap(
                    metadata=client.V1ObjectMeta(name=name, namespace=ns), data=values
                )
                try:
                    await core.create_namespaced_config_map(ns, body)
                except ApiException as exc2:
                    if exc2.status != 409:  # 409 AlreadyExists: another replica was first
                        raise
                    continue
            else:
                meta = client.V1ObjectMeta(
                    name=name, namespace=ns, resource_version=cm.metadata.resource_version
                )
                body = client.V1ConfigMap(metadata=meta, data={**(cm.data or {}), **values})
                try:
                    await core.replace_namespaced_config_map(name, ns, body)
                except ApiException as exc2:
                    if exc2.status != 409:  # Conflict: written since we read it
                        raise
                    continue
            self._dirty_flags -= {n for n in names if str(self.flag(n)) == values[n]}
            if self._dirty_flags:
                self._mark("flags")  # changed while we wrote: once more
            return
        raise BackendError(f"configmap {ns}/{name}: kept changing ({CONFLICT_RETRIES} conflicts)")

    # -- the claim at the commit point --------------------------------------------------------

    async def claim_target(
        self,
        ref: TargetRef,
        kind: TargetKind,
        target: str,
        alert_key: str,
        *,
        ttl_s: float,
        cooldown_s: float,
        max_attempts: int,
        attempts_window_s: float,
        record: dict[str, Any],
    ) -> str | None:
        """Claim alert `alert_key` on the target object, in one patch conditional on the
        resourceVersion read: the claim, the cooldown from now and the in-progress `record`.
        None once this replica holds the claim; the holder when another replica had it.
        Blocked when the cluster says the kill switch or circuit is on, the target cools down,
        failed too often, or runs another replica's action."""
        if facts_key(target) in self._dirty:
            await self.written()  # this target's last outcome first: the claim reads it back
        await self.refresh()
        if self.flag("kill_switch"):
            raise Blocked(Guard.KILL_SWITCH, "the kill switch is engaged (cluster)")
        if self.flag("circuit_open"):
            raise Blocked(Guard.CIRCUIT_BREAKER, "open until POST /circuit/reset (cluster)")
        for _ in range(CONFLICT_RETRIES):
            notes, version = await self.backend.read_facts(ref, kind)
            now = time.time()
            claims = claims_of(notes.get(CLAIM_ANNOTATION))
            mine = claims.get(alert_key)
            if mine is not None and now - float(mine["at"]) < ttl_s:
                return str(mine.get("holder", "?"))
            facts = TargetFacts(target, ref, "node" if kind == "node" else "deployment")
            facts.read(notes)
            running = facts.in_progress
            if running and running.get("holder") != self.identity:
                raise Blocked(
                    Guard.IDEMPOTENCY,
                    f"{target}: {running.get('action')} by {running.get('holder')} in progress",
                )
            if facts.cooldown_until > now:
                left = facts.cooldown_until - now
                raise Blocked(Guard.COOLDOWN, f"{target} was acted on recently ({left:.0f}s left)")
            if facts.failures >= max_attempts and facts.last_failure >= now - attempts_window_s:
                raise Blocked(
                    Guard.RETRY_CAP, f"{target} failed {facts.failures} times; escalated to a human"
                )
            kept = {k: v for k, v in claims.items() if now - float(v["at"]) < ttl_s}
            kept[alert_key] = {"holder": self.identity, "at": round(now, 3)}
            newest = dict(sorted(kept.items(), key=lambda kv: float(kv[1]["at"]))[-MAX_CLAIMS:])
            facts.cooldown_until = now + cooldown_s
            facts.in_progress = {**record, "holder": self.identity, "at": rfc3339(now)}
            changes = {CLAIM_ANNOTATION: dump(newest), **facts.changes(notes, now)}
            try:
                await self.backend.patch_facts(ref, kind, changes, version)
            except Conflict:
                log.info("claim on %s: changed since read; reading again", target)
                continue
            self._adopt_facts(target, facts)
            return None
        raise BackendError(f"claim on {target}: kept changing ({CONFLICT_RETRIES} conflicts)", 409)

    def _adopt_facts(self, target: str, facts: TargetFacts) -> None:
        """What the cluster said about `target` becomes this replica's cache."""
        self._facts[target] = facts

    # -- what happens after the claim: written to the cluster in order -------------------------

    def record_attempt(
        self, target: str, *, ok: bool, cooldown: float, now: float | None = None
    ) -> None:
        """An action's outcome: on the cluster too when it was one claimed there (its
        in-progress entry is replaced by the outcome); a dry run or an attempt that failed
        before its commit changes nothing on the cluster."""
        super().record_attempt(target, ok=ok, cooldown=cooldown, now=now)
        facts = self._facts.get(target)
        if facts is None or facts.in_progress is None:
            return
        facts.in_progress = None
        now = time.time() if now is None else now
        facts.cooldown_until = max(facts.cooldown_until, now + cooldown)
        if ok:
            facts.failures = 0
        else:
            facts.failures += 1
            facts.last_failure = now
        self._mark(facts_key(target))

    def cooldown_left(self, target: str, now: float | None = None) -> float:
        now = time.time() if now is None else now
        facts = self._facts.get(target)
        cluster = facts.cooldown_until - now if facts is not None else 0.0
        return max(super().cooldown_left(target, now), cluster)

    def failures(self, target: str, window: float, now: float | None = None) -> int:
        facts = self._facts.get(target)
        if facts is None:
            return super().failures(target, window, now)
        now = time.time() if now is None else now
        return facts.failures if facts.last_failure >= now - window else 0

    # Swaps: SQLite holds them (the swap lifecycle's queries), the target object a copy.

    def begin_swap(self, swap: Swap) -> None:
        super().begin_swap(swap)
        self._swap_changed(swap.target, swap)

    def end_swap(self, target: str, now: float | None = None) -> Swap | None:
        swap = super().end_swap(target, now)
        self._swap_changed(target, swap)
        return swap

    def swap_resolved(self, target: str, alert_key: str, now: float | None = None) -> Swap | None:
        swap = super().swap_resolved(target, alert_key, now)
        self._swap_changed(target, swap)
        return swap

    def swap_fired(self, target: str, alert_key: str) -> None:
        super().swap_fired(target, alert_key)
        self._swap_changed(target, self.swap(target))

    def schedule_swap_back(self, target: str, back_at: float) -> None:
        super().schedule_swap_back(target, back_at)
        self._swap_changed(target, self.swap(target))

    def drop_swap(self, target: str) -> None:
        super().drop_swap(target)
        self._swap_changed(target, None)

    def _swap_changed(self, target: str, swap: Swap | None) -> None:
        facts = self._facts.get(target)
        if facts is None and swap is not None:
            ref = TargetRef(namespace=swap.namespace, deployment=swap.deployment)
            facts = self._facts[target] = TargetFacts(target, ref, "deployment")
        if facts is not None and (swap is not None or facts.swap_written):
            self._mark(facts_key(target))

    # -- the writer -------------------------------------------------------------------------

    def _mark(self, key: str) -> None:
        self._dirty[key] = None
        self._settled.clear()
        self._wake.set()

    async def written(self, limit_s: float = 10.0) -> None:
        """Wait until everything recorded so far is on the cluster (StateError after
        `limit_s`: it is still kept, and written when the API answers again)."""
        try:
            await asyncio.wait_for(self._settled.wait(), limit_s)
        except TimeoutError:
            raise StateError(
                f"the Kubernetes API did not take the remediator's state within {limit_s:g}s "
                f"({len(self._dirty)} objects wait; they are written when it answers)"
            ) from None

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                key = next(iter(self._dirty))
                del self._dirty[key]
                try:
                    if key == "flags":
                        await self._write_flags()
                    else:
                        await self._write_target(key)
                except Exception as exc:  # kept dirty: tried again after a pause
                    self._on_error("cluster_state", f"writing {key}: {exc}")
                    self._dirty.setdefault(key, None)
                    await asyncio.sleep(WRITE_RETRY_SECONDS)
            self._settled.set()

    async def _write_target(self, key: str) -> None:
        target = key.removeprefix("target:")
        facts = self._facts.get(target)
        if facts is None:
            return
        if not self._leading():
            # Fencing: another replica may lead and own these facts now; it adopted them.
            log.warning("not leading: the cluster copy of %s is left to the leader", target)
            return
        for _ in range(CONFLICT_RETRIES):
            notes, version = await self.backend.read_facts(facts.ref, facts.kind)
            changes = facts.changes(notes, time.time())
            swap = self.swap(target)
            record = None if swap is None else dump(swap_record(swap, self.identity))
            if target == facts.ref.key(facts.kind) and notes.get(SWAP_ANNOTATION) != record:
                changes[SWAP_ANNOTATION] = record
            if not changes:
                facts.swap_written = record is not None
                break
            try:
                await self.backend.patch_facts(facts.ref, facts.kind, changes, version)
                break
            except Conflict:
                continue
            facts.swap_written = record is not None
            break
        else:
            raise BackendError(f"{target}: kept changing ({CONFLICT_RETRIES} conflicts)", 409)

    # -- a new term -------------------------------------------------------------------------

    async def adopt(
        self, *, deployments: bool, nodes: bool, autoscalers: bool, ttl_s: float
    ) -> list[Interrupted]:
        """Become the leader's state: the flags, every target's facts, claims (alerts handled
        within `ttl_s`) and swaps, from the Deployments (in the configured namespaces) and/or
        Nodes that carry them. Actions another replica left in progress are returned, recorded
        as interrupted and counted as failed attempts, their in-progress entries cleared; a
        swap it left in flight is over, and swapped back once its alert resolved. With
        `autoscalers`, an autoscaler minimum a replica raised on one of these Deployments (its
        `inferwatch.io/original-min-replicas`) is restored when the target's cooldown ends or
        its alert resolves, as by the replica that raised it."""
        await self.refresh()
        found: list[tuple[TargetRef, TargetKind, dict[str, str]]] = []
        scans: list[tuple[TargetKind, bool]] = [("deployment", deployments), ("node", nodes)]
        for kind, wanted in scans:
            if wanted:
                found += [
                    (ref, kind, notes) for ref, notes in await self.backend.annotated(kind, PREFIX)
                ]
        interrupted: list[Interrupted] = []
        seen_swaps: set[str] = set()
        for ref, kind, notes in found:
            for alert_key, claim in claims_of(notes.get(CLAIM_ANNOTATION)).items():
                self._run(
                    "INSERT INTO dedupe (key, expires) VALUES (?, ?) ON CONFLICT (key)"
                    " DO UPDATE SET expires = MAX(expires, excluded.expires)",
                    (alert_key, float(claim["at"]) + ttl_s),
                )
            own = ref.key(kind)
            targets = {own}
            for key in (COOLDOWN_ANNOTATION, ATTEMPTS_ANNOTATION, IN_PROGRESS_ANNOTATION):
                targets |= set(entries(notes, key))
            for target in sorted(targets):
                facts = TargetFacts(target, ref, kind)
                facts.read(notes)
                self._adopt_facts(target, facts)
                running = facts.in_progress
                if running and running.get("holder") != self.identity:
                    seen = (target, str(running.get("at")))
                    if seen in self._interruptions:  # recorded by an adoption cut off since
                        facts.in_progress = None
                        self._mark(facts_key(target))
                        continue
                    self._interruptions.add(seen)
                    interrupted.append(self._interrupted(target, running))
            if autoscalers and kind == "deployment" and CLAIM_ANNOTATION in notes:
                owner = await self.backend.autoscaler(ref)
                if owner is not None and owner.original_min is not None:
                    restore_at = self._facts[own].cooldown_until
                    self.minimum_raised(own, ref.namespace, ref.deployment or "", restore_at)
            raw_swap = parse_json(SWAP_ANNOTATION, notes.get(SWAP_ANNOTATION))
            swap = swap_from(own, ref, raw_swap) if raw_swap else None
            if swap is not None:
                seen_swaps.add(own)
                self._put_swap(swap)
                if swap.in_flight and raw_swap.get("holder") != self.identity:
                    self.end_swap(own)
        for target in self._swap_targets() - seen_swaps:
            State.drop_swap(self, target)  # undone (or dropped) by another leader since
        return interrupted

    def _interrupted(self, target: str, running: dict[str, Any]) -> Interrupted:
        """Record another replica's action cut off on `target`: failed, never repeated."""
        entry = Interrupted(
            target,
            str(running.get("action", "?")),
            str(running.get("alertname", "")),
            str(running.get("holder", "?")),
            str(running.get("plan", "")),
        )
        self.audit(
            alertname=entry.alertname,
            fingerprint=str(running.get("fingerprint", "")),
            action=entry.action,
            target=target,
            result="failed",
            reason=f"interrupted: {entry.holder} stopped while this action ran ({entry.plan}); "
            "not repeated",
            playbook=str(running.get("playbook", "")),
        )
        self.record_attempt(target, ok=False, cooldown=0.0)  # clears its in-progress entry
        return entry

    def _put_swap(self, swap: Swap) -> None:
        """The cluster's swap record replaces the cached one (not written back)."""
        State.drop_swap(self, swap.target)
        State.begin_swap(self, swap)
        self._run(
            "UPDATE swaps SET back_at = ?, in_flight = ?, resolved_at = ?, resolved_by = ?"
            " WHERE target = ?",
            (swap.back_at, int(swap.in_flight), swap.resolved_at, swap.resolved_by, swap.target),
        )

    def _swap_targets(self) -> set[str]:
        return {str(r[0]) for r in self._run("SELECT target FROM swaps").fetchall()}


def facts_key(target: str) -> str:
    return f"target:{target}"


def claims_of(raw: str | None) -> dict[str, dict[str, Any]]:
    """The claim annotation's map (alert -> holder, at); entries someone mangled are dropped."""
    data = parse_json(CLAIM_ANNOTATION, raw)
    return {
        k: v
        for k, v in data.items()
        if isinstance(v, dict) and isinstance(v.get("at"), int | float)
    }
