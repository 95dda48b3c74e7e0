"""Leader election on a coordination.k8s.io/v1 Lease, so that of several replicas one acts.

kubernetes_asyncio ships no leader election (only the synchronous `kubernetes` client has one),
so this is a small port of client-go's tools/leaderelection (leaderelection.go and
resourcelock/leaselock.go) with the same record, the same rules and the same defaults:

- The Lease's spec is the record: holderIdentity, leaseDurationSeconds, acquireTime, renewTime,
  leaseTransitions. Every write is a create (409 AlreadyExists: someone else was first) or an
  update carrying the resourceVersion that was read (409 Conflict: someone else wrote since).
- A candidate tries every RetryPeriod (jittered by 1.2, as client-go's wait.JitterUntil). It may
  take the Lease when it is free (no holder, or released) or when the record it observed has not
  changed for LeaseDuration by its *own* clock (observedTime; no clock is compared across
  machines). Taking it over bumps leaseTransitions and sets acquireTime.
- The leader renews every RetryPeriod; when it has not renewed within RenewDeadline it stops
  leading. Since RenewDeadline < LeaseDuration, it stops before any other replica may take over:
  `leading` is false from RenewDeadline after the start of its last successful renewal, whatever
  the loop is doing (a renewal stuck in a dead connection included).
- On a graceful stop the leader releases the Lease (holder cleared, leaseDurationSeconds 1), as
  client-go's ReleaseOnCancel, so a rolling update hands over within a RetryPeriod.

https://github.com/kubernetes/client-go/blob/master/tools/leaderelection/leaderelection.go
https://kubernetes.io/docs/concepts/architecture/leases/
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from remediations.backends import TargetKind
from remediations.cluster_state import ClusterState
from remediations.config import LeaderElectionSettings
from remediations.targets import TargetRef

log = logging.getLogger("remediations.leader")
JITTER = 1.2  # client-go's JitterFactor


def default_identity() -> str:
    """client-go's convention: the pod (host) name plus a unique suffix, so a restarted
    process never mistakes the previous one's record for its own."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def micro_time(ts: float) -> str:
    """A metav1.MicroTime: RFC 3339 with microseconds."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Runs the acquire/renew loop; `leading` says, at any instant, whether to act."""

    def __init__(
        self,
        settings: LeaderElectionSettings,
        api: client.ApiClient,
        *,
        on_change: Callable[[bool], None] = lambda leading: None,
    ) -> None:
        self.settings = settings
        self.identity = settings.identity or default_identity()
        self.coordination = client.CoordinationV1Api(api)
        self._on_change = on_change
        self._is_holder = False
        self._renewed = -1e18  # monotonic start of the last successful acquire/renew
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0  # monotonic, when _observed last changed
        self._leading_event = asyncio.Event()
        self.term = 0  # counts the times this replica started leading
        self._task: asyncio.Task[None] | None = None

    @property
    def leading(self) -> bool:
        """True only while the last renewal started less than RenewDeadline ago."""
        fresh = time.monotonic() - self._renewed < self.settings.renew_deadline_seconds
        return self._is_holder and fresh

    def leading_for(self) -> float:
        """Seconds this replica may still act without renewing (0 when not leading)."""
        if not self._is_holder:
            return 0.0
        return max(0.0, self._renewed + self.settings.renew_deadline_seconds - time.monotonic())

    async def wait_leading(self) -> None:
        while not self.leading:
            self._leading_event.clear()
            await self._leading_event.wait()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop the loop and release the Lease if this replica holds it."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._is_holder:
            try:
                await asyncio.wait_for(self._release(), self.settings.retry_period_seconds)
            except Exception as exc:  # the Lease then expires after its duration
                log.warning("could not release lease %s: %s", self.settings.lease_name, exc)
            self._set_holder(False)

    async def _run(self) -> None:
        retry = self.settings.retry_period_seconds
        while True:
            started = time.monotonic()
            budget = self.leading_for() if self._is_holder else self.settings.renew_deadline_seconds
            try:
                ok = await asyncio.wait_for(self._try_acquire_or_renew(), max(budget, 0.001))
            except Exception as exc:  # one failed try; the deadline decides what it means
                log.warning("lease %s: acquire/renew failed: %s", self.settings.lease_name, exc)
                ok = False
            if ok:
                self._renewed = started
                self._set_holder(True)
            elif self._is_holder and not self.leading:
                log.error(
                    "lease %s: not renewed within %gs; stopped leading",
                    self.settings.lease_name,
                    self.settings.renew_deadline_seconds,
                )
                self._set_holder(False)
            # Renew on the RetryPeriod; candidates jitter theirs (wait.JitterUntil).
            pause = retry if self._is_holder else retry * (1 + random.random() * (JITTER - 1))
            if self._is_holder:  # wake in time to notice a missed deadline
                pause = min(pause, max(self.leading_for(), 0.001))
            await asyncio.sleep(pause)

    def _set_holder(self, holder: bool) -> None:
        was = self._is_holder
        self._is_holder = holder
        if holder:
            self._leading_event.set()
        if holder and not was:
            self.term += 1
        if holder != was:
            log.warning(
                "%s %s leading (lease %s/%s)",
                self.identity,
                "started" if holder else "stopped",
                self.settings.lease_namespace,
                self.settings.lease_name,
            )
            self._on_change(holder)

    def _record(self, now: float, acquired: float, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.settings.lease_duration_seconds)),
            "acquireTime": micro_time(acquired),
            "renewTime": micro_time(now),
            "leaseTransitions": transitions,
        }

    async def _try_acquire_or_renew(self) -> bool:
        """client-go's tryAcquireOrRenew: one read, then at most one conditional write."""
        ns, name = self.settings.lease_namespace, self.settings.lease_name
        now = time.time()
        try:
            lease = await self.coordination.read_namespaced_lease(name, ns)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = _lease(name, ns, None, self._record(now, now, 0))
            try:
                await self.coordination.create_namespaced_lease(ns, body)
            except ApiException as exc2:
                if exc2.status == 409:  # another replica created it first
                    return False
                raise
            self._observe((self.identity, body["spec"]["renewTime"]))
            return True
        spec = lease.spec
        holder = spec.holder_identity or ""
        record = (holder, spec.renew_time, spec.acquire_time, spec.lease_transitions)
        if record != self._observed:
            self._observe(record)
        duration = spec.lease_duration_seconds or self.settings.lease_duration_seconds
        if holder and holder != self.identity and self._observed_at + duration > time.monotonic():
            return False  # held by another replica, and not expired by our clock
        transitions = spec.lease_transitions or 0
        acquired = now
        if holder == self.identity and spec.acquire_time is not None:
            acquired = spec.acquire_time.timestamp()
        else:
            transitions += 1
        body = _lease(
            name, ns, lease.metadata.resource_version, self._record(now, acquired, transitions)
        )
        try:
            await self.coordination.replace_namespaced_lease(name, ns, body)
        except ApiException as exc:
            if exc.status == 409:  # written by another replica since we read it
                return False
            raise
        self._observe((self.identity, body["spec"]["renewTime"]))
        return True

    def _observe(self, record: tuple[Any, ...]) -> None:
        self._observed = record
        self._observed_at = time.monotonic()

    async def _release(self) -> None:
        """client-go's release(): clear the holder so a candidate need not wait it out."""
        ns, name = self.settings.lease_namespace, self.settings.lease_name
        lease = await self.coordination.read_namespaced_lease(name, ns)
        if lease.spec.holder_identity != self.identity:
            return
        now = time.time()
        spec = {
            "holderIdentity": "",
            "leaseDurationSeconds": 1,
            "acquireTime": micro_time(now),
            "renewTime": micro_time(now),
            "leaseTransitions": lease.spec.lease_transitions or 0,
        }
        body = _lease(name, ns, lease.metadata.resource_version, spec)
        try:
            await self.coordination.replace_namespaced_lease(name, ns, body)
        except ApiException as exc:  # 409: written since, so no longer ours to release
            log.warning("lease %s: release: HTTP %s", name, exc.status)


def _lease(name: str, namespace: str, resource_version: str | None, spec: dict[str, Any]) -> Any:
    """A Lease body; an update carries the resourceVersion it read (its precondition)."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if resource_version is not None:
        meta["resourceVersion"] = resource_version
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}


class NotLeader(Exception):
    """Raised at the commit point on a replica that does not (or no longer) lead: the alert goes
    back on its queue, untouched."""


class HighAvailability:
    """Fencing for the engine's commit point: act only while leading, and only on a claim
    written with a resourceVersion precondition on the target object
    (ClusterState.claim_target)."""

    def __init__(self, elector: LeaderElector, state: ClusterState) -> None:
        self.elector = elector
        self.state = state

    async def claim(
        self,
        ref: TargetRef,
        kind: TargetKind,
        key: str,
        ttl_s: float,
        *,
        target: str | None = None,
        cooldown_s: float = 0.0,
        max_attempts: int = 1 << 30,
        attempts_window_s: float = 0.0,
        record: dict[str, Any] | None = None,
    ) -> str | None:
        """None once this replica holds the claim; else the holder that had it (Blocked when
        the cluster's facts forbid the action). The claim must land while this replica still
        leads (bounded by what is left of its RenewDeadline), so no other leader can exist
        when it does."""
        left = self.elector.leading_for()
        if left <= 0:
            raise NotLeader(f"{self.elector.identity} does not lead")
        try:
            return await asyncio.wait_for(
                self.state.claim_target(
                    ref,
                    kind,
                    target or ref.key(kind),
                    key,
                    ttl_s=ttl_s,
                    cooldown_s=cooldown_s,
                    max_attempts=max_attempts,
                    attempts_window_s=attempts_window_s,
                    record=record or {},
                ),
                left,
            )
        except TimeoutError:
            raise NotLeader(f"{self.elector.identity}: leadership ran out while claiming") from None

    def check(self) -> None:
        if not self.elector.leading:
            raise NotLeader(f"{self.elector.identity} does not lead")
