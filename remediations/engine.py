"""The worker side: a bounded queue of alerts, and the guard pipeline each alert goes through.

Order matters: cheap, definitive guards first (firing only, target, opt-out, idempotency, kill
switch, circuit breaker), then, under a per-deployment lock so two alerts for the same fleet
never race, cooldown and retry cap, then the action's own bounds, and at the commit point the
Prometheus re-check, rate limits and the atomic idempotency claim — with no await between the
claim and the audit row, so duplicates delivered at the same instant still act once. Under
leader election the claim is also written to the target object, together with its cooldown and
in-progress record, and a new leader adopts what the cluster keeps before it acts
(remediations.cluster_state).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from remediations.actions import ActionContext, Outcome
from remediations.actions.registry import ACTION_KINDS, ACTIONS
from remediations.alertmanager import Alert
from remediations.backends import Backend, BackendError, TargetKind
from remediations.config import RemediatorConfig
from remediations.guards import Blocked, Guard
from remediations.leader import HighAvailability, NotLeader
from remediations.metrics import Metrics
from remediations.playbook import Playbook, PlaybookFile
from remediations.prom import Prometheus
from remediations.state import INTERRUPTED, State, StateError
from remediations.targets import TargetError, TargetRef, target_from_labels

log = logging.getLogger("remediations")

CIRCUIT_OPEN = "circuit_open"
CONSECUTIVE_FAILURES = "consecutive_failures"
KILL_SWITCH = "kill_switch"


class Remediator:
    def __init__(
        self,
        cfg: RemediatorConfig,
        playbooks: PlaybookFile,
        state: State,
        backend: Backend,
        prometheus: Prometheus | None,
        metrics: Metrics,
        *,
        ha: HighAvailability | None = None,
    ) -> None:
        self.cfg = cfg
        # Leader election: every replica queues; only the leader's workers take from the queue.
        self.ha = ha
        self.playbooks = playbooks
        self.state = state
        self.backend = backend
        self.prometheus = prometheus
        self.metrics = metrics
        # Bounded in submit(), so that one notification larger than the queue still fits.
        self.queue: asyncio.Queue[Alert] = asyncio.Queue()
        # A follower's copy of each alert (newest per fingerprint, with when it came), queued
        # once this replica leads: the leader has the same alerts and acts on them meanwhile.
        self._held: dict[str, tuple[float, Alert]] = {}
        self.accepting = True
        self._locks: dict[str, asyncio.Lock] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._adopted_term = 0  # the leadership term whose cluster state this replica adopted
        self._adopting = asyncio.Lock()
        self._patterns = cfg.compiled_patterns()
        if cfg.kill_switch:
            state.set_flag(KILL_SWITCH, 1)
        metrics.queue_depth.set_function(self.queue.qsize)
        metrics.held.set_function(lambda: len(self._held))
        metrics.circuit_open.set(state.flag(CIRCUIT_OPEN))
        metrics.kill_switch.set(state.flag(KILL_SWITCH))
        metrics.leader.set(1 if ha is None else 0)

    # -- intake (called from the webhook handler; must never await) -------------------------

    def submit(self, alerts: list[Alert]) -> bool:
        """Queue all alerts, or none when there is no room (the caller answers 503). An empty
        queue takes any notification: one larger than queue_size would otherwise get 503, and
        Alertmanager retry it, forever (its size is bounded by max_body_bytes)."""
        if self.ha is not None and not self._acting_term():
            return self._hold(alerts)
        waiting = self.queue.qsize()
        if not self.accepting or (waiting and waiting + len(alerts) > self.cfg.queue_size):
            return False
        for alert in alerts:
            self.queue.put_nowait(alert)
        return True

    def held_alerts(self) -> list[Alert]:
        """What this follower holds for when it leads, oldest first."""
        return [alert for _, alert in self._held.values()]

    def _acting_term(self) -> bool:
        """Leading, and the cluster's state of this term adopted (alerts go on the queue)."""
        assert self.ha is not None
        return self.ha.elector.leading and self._adopted_term == self.ha.elector.term

    def _hold(self, alerts: list[Alert]) -> bool:
        """A follower keeps the newest notification of each alert, for at most the idempotency
        TTL (the leader's claims outlive no longer), and at most `queue_size` of them: over weeks
        of following, held copies neither pile up nor turn the webhook into 503s."""
        if not self.accepting:
            return False
        now = time.monotonic()
        horizon = now - self.cfg.guards.idempotency_ttl_seconds
        for alert in alerts:
            old = self._held.pop(alert.fingerprint, None)
            if old is None or old[1].startsAt <= alert.startsAt:
                old = (now, alert)
            self._held[alert.fingerprint] = old  # re-inserted: the dict stays oldest first
        while self._held:
            fingerprint, (since, _) = next(iter(self._held.items()))
            if since >= horizon and len(self._held) <= self.cfg.queue_size:
                break
            del self._held[fingerprint]
            self.metrics.held_dropped.inc()
        return True

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        for spec in ACTIONS.values():
            spec.lifecycle.at_start(self.state)
        for entry in self.state.close_interrupted():
            log.warning(
                "action %s on %s (alert %s) was interrupted by a restart; recorded as failed, "
                "not repeated",
                entry.action,
                entry.target,
                entry.alertname,
            )
        self._workers = [asyncio.create_task(self._worker()) for _ in range(self.cfg.workers)]
        self._workers.append(asyncio.create_task(self._housekeeping()))

    async def stop(self, limit_s: float) -> None:
        """Stop taking alerts, let the queue drain for up to `limit_s`, then cancel the rest."""
        self.accepting = False
        if self.ha is not None and not self.ha.elector.leading:
            limit_s = 0  # its workers wait for leadership; with Alertmanager routing to every
            # replica, the leader has the same alerts (docs/remediator.md, "High availability")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), limit_s)
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    async def _worker(self) -> None:
        while True:
            if self.ha is not None:
                await self.ha.elector.wait_leading()
                await self._take_over()
            alert = await self.queue.get()
            try:
                await self.handle(alert)
            except NotLeader as exc:  # nothing was claimed: keep it for when this replica leads
                log.info("alert %s kept on the queue: %s", alert.alertname, exc)
                self.queue.put_nowait(alert)
            except StateError as exc:  # nothing was claimed: try the alert again, never drop it
                self.metrics.state_errors.inc()
                self.state.report_unavailable(exc)
                asyncio.get_running_loop().call_later(1.0, self.queue.put_nowait, alert)
            except Exception:
                self.metrics.errors.labels("worker").inc()
                log.exception("unexpected error handling alert %s", alert.alertname)
            finally:
                self.queue.task_done()
            # A blocked alert never suspends; yield so the webhook keeps answering in ms.
            await asyncio.sleep(0)

    async def _take_over(self) -> None:
        """Once per term, before the first alert: adopt what the cluster keeps (flags, swaps,
        actions a previous leader left in progress: recorded as interrupted, never repeated)."""
        assert self.ha is not None
        async with self._adopting:
            term = self.ha.elector.term
            if self._adopted_term == term:
                return
            actions = {p.action for p in self.playbooks.playbooks}
            kinds = {ACTION_KINDS[a] for a in actions}
            while True:
                try:
                    interrupted = await self.ha.state.adopt(
                        deployments=bool(kinds - {"node"}),
                        nodes="node" in kinds,
                        autoscalers="scale" in actions,
                        ttl_s=self.cfg.guards.idempotency_ttl_seconds,
                    )
                    break
                except Exception as exc:  # nothing is acted on until it worked
                    self._swallowed("take_over", f"adopting the cluster's state: {exc}")
                    await asyncio.sleep(1.0)
                    await self.ha.elector.wait_leading()
                    term = self.ha.elector.term
            for entry in interrupted:
                if entry.action in ACTIONS:
                    self.metrics.actions.labels(entry.action, "failed").inc()
                log.warning(
                    "action %s on %s (alert %s) was interrupted: %s stopped while it ran; "
                    "recorded as failed, not repeated",
                    entry.action,
                    entry.target,
                    entry.alertname,
                    entry.holder,
                )
            self._show_flags()
            self._adopted_term = term
            held, self._held = self._held, {}
            horizon = time.monotonic() - self.cfg.guards.idempotency_ttl_seconds
            for since, alert in held.values():  # the claims block what the old leader acted on
                if since >= horizon:
                    self.queue.put_nowait(alert)
            if held:
                log.info("leading: %d alert(s) held while following queued", len(held))
            log.info("leading (term %d): the cluster's state adopted", term)

    def _show_flags(self) -> None:
        self.metrics.circuit_open.set(self.state.flag(CIRCUIT_OPEN))
        self.metrics.kill_switch.set(self.state.flag(KILL_SWITCH))

    async def settle(self) -> None:
        """Wait until what was recorded is where every replica reads it (the cluster, under
        leader election; at once for the SQLite file). StateError if it is not, for now."""
        await self.state.written(self.cfg.leader_election.renew_deadline_seconds)

    # -- operator switches ------------------------------------------------------------------

    @property
    def circuit_open(self) -> bool:
        return bool(self.state.flag(CIRCUIT_OPEN))

    def reset_circuit(self) -> None:
        self.state.set_flag(CIRCUIT_OPEN, 0)
        self.state.set_flag(CONSECUTIVE_FAILURES, 0)
        self.metrics.circuit_open.set(0)
        log.warning("circuit breaker reset by an operator")

    @property
    def kill_switch(self) -> bool:
        return bool(self.state.flag(KILL_SWITCH))

    def set_kill_switch(self, on: bool) -> None:
        self.state.set_flag(KILL_SWITCH, int(on))
        self.metrics.kill_switch.set(int(on))
        log.warning("kill switch %s by an operator", "engaged" if on else "released")

    # -- the pipeline -----------------------------------------------------------------------

    async def handle(self, alert: Alert) -> None:
        playbook = self.playbooks.first_match(alert.labels)
        if playbook is None:
            log.debug("no playbook matches alert %s", alert.alertname)
            return
        kind = ACTION_KINDS[playbook.action]
        try:
            raw = target_from_labels(
                alert.labels,
                playbook.target.label_map(),
                namespaces=self.cfg.namespaces,
                default_namespace=playbook.target.default_namespace,
                kind=kind,
            )
        except TargetError as exc:
            self._block(alert, playbook, "-", Blocked(Guard.TARGET, str(exc)))
            return
        if alert.status != "firing":
            await self._resolved(alert, playbook, raw, kind)
            return
        shown = raw.key(kind)
        opt_out = self.cfg.guards.opt_out_label
        if "disabled" in (alert.labels.get(opt_out), alert.annotations.get(opt_out)):
            self._block(alert, playbook, shown, Blocked(Guard.OPT_OUT, f"alert sets {opt_out}"))
            return
        try:
            self._early_guards(alert)
            ref = await self.backend.resolve(raw, kind)
            self._check_names(ref, kind)
        except Blocked as exc:
            self._block(alert, playbook, shown, exc)
            return
        except TargetError as exc:
            self._block(alert, playbook, shown, Blocked(Guard.TARGET, str(exc)))
            return
        except Exception as exc:  # the backend could not be read: a failed attempt
            self._finish(alert, playbook, shown, None, Outcome("failed", f"resolve: {exc}"), 0.0)
            return
        key = ref.key(kind)
        ACTIONS[playbook.action].lifecycle.fired(self.state, key, alert.dedupe_key)
        async with self._lock(ref, kind):
            await self._act(alert, playbook, ref, key)

    async def _resolved(
        self, alert: Alert, playbook: Playbook, raw: TargetRef, kind: TargetKind
    ) -> None:
        self.state.resolve_episode(alert.dedupe_key, self.cfg.guards.idempotency_ttl_seconds)
        self._block(alert, playbook, raw.key(kind), Blocked(Guard.FIRING_ONLY, "alert resolved"))
        lifecycle = ACTIONS[playbook.action].lifecycle
        if not lifecycle.follows_resolution:
            return
        try:
            ref = await self.backend.resolve(raw, kind)
        except Exception as exc:  # the undo then waits for its timer (cooldown, next resolve)
            self._swallowed("resolve_resolved_target", f"{alert.alertname} resolved: {exc}")
            return
        lifecycle.resolved(self.state, ref.key(kind), alert.dedupe_key, alert.alertname)

    def _swallowed(self, where: str, what: str) -> None:
        """A failure that must not stop the pipeline: one log line and a counter, never silence."""
        self.metrics.errors.labels(where).inc()
        log.error("%s: %s", where, what)

    def _early_guards(self, alert: Alert) -> None:
        if self.state.resolved_at(alert.dedupe_key) is not None:
            raise Blocked(
                Guard.FIRING_ONLY, f"{alert.dedupe_key} resolved already (a late notification)"
            )
        if self.state.seen(alert.dedupe_key):
            raise Blocked(Guard.IDEMPOTENCY, f"already handled {alert.dedupe_key}")
        if self.kill_switch:
            raise Blocked(Guard.KILL_SWITCH, "the kill switch is engaged")
        if self.circuit_open:
            raise Blocked(Guard.CIRCUIT_BREAKER, "open until POST /circuit/reset")

    def _check_names(self, ref: TargetRef, kind: TargetKind) -> None:
        name = {"node": ref.node or ref.gpu, "replica": ref.replica}.get(kind, ref.deployment)
        if name and not any(p.fullmatch(name) for p in self._patterns):
            raise TargetError(f"{name!r} matches none of the allowed name patterns")

    def _lock(self, ref: TargetRef, kind: TargetKind) -> asyncio.Lock:
        scope = "nodes" if kind == "node" else f"{ref.namespace}/{ref.deployment or ref.model}"
        return self._locks.setdefault(scope, asyncio.Lock())

    def _target_guards(self, alert: Alert, key: str) -> None:
        """The guards checked under the target's lock, before the action reads anything."""
        guards = self.cfg.guards
        self._early_guards(alert)  # again: another worker may have acted while we waited
        if (left := self.state.cooldown_left(key)) > 0:
            raise Blocked(Guard.COOLDOWN, f"{key} was acted on recently ({left:.0f}s left)")
        failures = self.state.failures(key, guards.attempts_window_seconds)
        if failures >= guards.max_attempts:
            log.error("escalate: %s failed %d times; a human needs to look", key, failures)
            raise Blocked(Guard.RETRY_CAP, f"{key} failed {failures} times; escalated to a human")
        window = guards.escalate_window_seconds
        done = self.state.remediations_since(key, time.time() - window)
        if done >= guards.escalate_after:  # it keeps coming back: remediating does not help
            log.error("escalate: %s was remediated %d times in %gs", key, done, window)
            raise Blocked(
                Guard.ESCALATED,
                f"{key} was remediated {done} times in {window:g}s; left to a human",
            )

    async def _commit_guards(self, alert: Alert, playbook: Playbook) -> None:
        """The guards checked at the commit point, once the action knows what it would do."""
        guards = self.cfg.guards
        if guards.recheck and self.prometheus is not None:
            ok, why = await self.prometheus.confirms(
                alert, playbook.recheck_query, playbook.target.label_map()
            )
            if not ok:
                raise Blocked(Guard.RECHECK, why)
        self._early_guards(alert)
        now = time.time()
        per_action = guards.action_rate_limit
        if (
            self.state.actions_since(now - per_action.window_seconds, playbook.action)
            >= per_action.max_actions
        ):
            raise Blocked(
                Guard.RATE_LIMIT_ACTION,
                f"{per_action.max_actions} {playbook.action} actions "
                f"in {per_action.window_seconds:g}s",
            )
        overall = guards.global_rate_limit
        if self.state.actions_since(now - overall.window_seconds) >= overall.max_actions:
            raise Blocked(
                Guard.RATE_LIMIT_GLOBAL,
                f"{overall.max_actions} actions in {overall.window_seconds:g}s",
            )

    async def _act(self, alert: Alert, playbook: Playbook, ref: TargetRef, key: str) -> None:
        """Guard (under the target's lock), commit (ctx.commit, called by the action), execute
        (the action's run, which verifies), record (_finish, the Event, the lifecycle)."""
        guards = self.cfg.guards
        cooldown = (
            playbook.cooldown_seconds
            if playbook.cooldown_seconds is not None
            else guards.cooldown_seconds
        )
        try:
            self._target_guards(alert, key)
        except Blocked as exc:
            self._block(alert, playbook, key, exc)
            return

        audit_id: int | None = None
        started = 0.0

        async def commit(plan: str) -> None:
            """The commit point: last guards, then claim, journal and cooldown at once."""
            nonlocal audit_id, started
            await self._commit_guards(alert, playbook)
            if self.ha is not None:  # fencing: lead now, and hold the claim on the object
                if ctx.dry_run:
                    self.ha.check()
                else:
                    holder = await self.ha.claim(
                        ref,
                        ACTION_KINDS[playbook.action],
                        alert.dedupe_key,
                        guards.idempotency_ttl_seconds,
                        target=key,
                        cooldown_s=cooldown,
                        max_attempts=guards.max_attempts,
                        attempts_window_s=guards.attempts_window_seconds,
                        record={
                            "action": playbook.action,
                            "alertname": alert.alertname,
                            "fingerprint": alert.fingerprint,
                            "alert": alert.dedupe_key,
                            "playbook": playbook.name,
                            "plan": plan,
                        },
                    )
                    if holder is not None:
                        self.metrics.claims_lost.inc()
                        raise Blocked(
                            Guard.IDEMPOTENCY, f"{alert.dedupe_key} was claimed by {holder}"
                        )
            now = time.time()
            # Claim, journal and cooldown in one transaction (StateError: none of it happened).
            audit_id = self.state.begin_action(
                alert.dedupe_key,
                guards.idempotency_ttl_seconds,
                alertname=alert.alertname,
                fingerprint=alert.fingerprint,
                action=playbook.action,
                target=key,
                reason=f"in progress: {plan}",
                playbook=playbook.name,
                cooldown=cooldown,
                now=now,
            )
            if audit_id is None:
                raise Blocked(Guard.IDEMPOTENCY, f"already handled {alert.dedupe_key}")
            started = time.monotonic()
            if not ctx.dry_run:
                self.metrics.time_to_act.labels(playbook.action).observe(
                    max(0.0, time.time() - alert.startsAt.timestamp())
                )
            log.info("%s%s (alert %s)", "dry-run: " if ctx.dry_run else "", plan, alert.alertname)

        spec = ACTIONS[playbook.action]
        ctx = spec.lifecycle.bind(
            ActionContext(
                backend=self.backend,
                prometheus=self.prometheus,
                dry_run=self.cfg.dry_run or playbook.dry_run,
                max_drained_ratio=guards.max_drained_ratio,
                commit=commit,
            ),
            self.state,
            key,
            ref,
            playbook.params,
            cooldown,
        )
        try:
            outcome = await spec.run(ctx, ref, playbook.params)
        except Blocked as exc:
            if audit_id is None:
                self._block(alert, playbook, key, exc)
                return
            outcome = Outcome("failed", exc.reason)
        except TargetError as exc:
            if audit_id is None:
                self._block(alert, playbook, key, Blocked(Guard.TARGET, str(exc)))
                return
            outcome = Outcome("failed", str(exc))
        except NotLeader:
            spec.lifecycle.ended(self.state, key)
            raise  # before any claim: the worker keeps the alert
        except asyncio.CancelledError:
            if audit_id is not None:
                self.state.finish(audit_id, "failed", INTERRUPTED)
            spec.lifecycle.ended(self.state, key)
            raise
        except BackendError as exc:
            outcome = Outcome("failed", str(exc))
        except StateError:
            if audit_id is None:
                raise  # nothing was claimed or changed: the worker tries the alert again
            outcome = Outcome("failed", "the state file could not be written")
        except Exception as exc:
            log.exception("%s on %s raised", playbook.action, key)
            outcome = Outcome("failed", f"error: {type(exc).__name__}: {exc}")
        duration = time.monotonic() - started if audit_id is not None else 0.0
        self._finish(alert, playbook, key, audit_id, outcome, duration, cooldown)
        spec.lifecycle.ended(self.state, key)
        if self.ha is not None:  # the outcome on the cluster before the target's next action
            try:
                await self.settle()
            except StateError as exc:
                self._swallowed("cluster_state", f"{playbook.action} on {key}: {exc}")
        if outcome.result != "dry_run":
            try:
                await self.backend.record_event(
                    ref,
                    ACTION_KINDS[playbook.action],
                    f"Inferwatch{playbook.action.title().replace('_', '')}",
                    f"{outcome.result}: {outcome.detail} (alert {alert.alertname})",
                    outcome.result == "succeeded",
                )
            except Exception as exc:
                self._swallowed("record_event", f"{playbook.action} on {key}: {exc}")

    # -- recording --------------------------------------------------------------------------

    def _block(self, alert: Alert, playbook: Playbook, target: str, exc: Blocked) -> None:
        self.metrics.guard_blocks.labels(exc.guard.value).inc()
        self.metrics.actions.labels(playbook.action, "blocked").inc()
        self.state.audit(
            alertname=alert.alertname,
            fingerprint=alert.fingerprint,
            action=playbook.action,
            target=target,
            result="blocked",
            reason=exc.reason,
            playbook=playbook.name,
            deferred=True,
        )
        log.info("blocked %s on %s: %s", playbook.action, target, exc.reason)

    def _finish(
        self,
        alert: Alert,
        playbook: Playbook,
        target: str,
        audit_id: int | None,
        outcome: Outcome,
        duration: float,
        cooldown: float | None = None,
    ) -> None:
        if audit_id is None:
            self.state.audit(
                alertname=alert.alertname,
                fingerprint=alert.fingerprint,
                action=playbook.action,
                target=target,
                result=outcome.result,
                reason=outcome.detail,
                playbook=playbook.name,
            )
        else:
            self.state.finish(audit_id, outcome.result, outcome.detail)
            self.metrics.action_duration.labels(playbook.action).observe(duration)
            if outcome.result == "succeeded":
                self.metrics.time_to_effect.labels(playbook.action).observe(
                    max(0.0, time.time() - alert.startsAt.timestamp())
                )
        self.metrics.actions.labels(playbook.action, outcome.result).inc()
        cooldown = self.cfg.guards.cooldown_seconds if cooldown is None else cooldown
        # Only an attempt that got past its commit may have changed something: it starts the
        # cooldown whatever its result. One that failed before (target unreadable) may be
        # retried by the next delivery.
        if audit_id is None:
            cooldown = 0.0
        self.state.record_attempt(target, ok=outcome.result != "failed", cooldown=cooldown)
        self._count_for_circuit(outcome.result == "failed")
        level = logging.WARNING if outcome.result == "failed" else logging.INFO
        log.log(level, "%s %s on %s: %s", playbook.action, outcome.result, target, outcome.detail)

    def _count_for_circuit(self, failed: bool) -> None:
        if not failed:
            self.state.set_flag(CONSECUTIVE_FAILURES, 0)
            return
        failures = self.state.flag(CONSECUTIVE_FAILURES) + 1
        self.state.set_flag(CONSECUTIVE_FAILURES, failures)
        if failures >= self.cfg.guards.circuit_failure_threshold and not self.circuit_open:
            self.state.set_flag(CIRCUIT_OPEN, 1)
            self.metrics.circuit_open.set(1)
            log.error(
                "circuit breaker open after %d consecutive failures; POST /circuit/reset", failures
            )

    # -- what outlives an action (swaps to undo, minimums to restore) -------------------------

    async def _housekeeping(self, interval: float = 0.25) -> None:
        """Flush deferred audit rows; read the cluster's flags now and then; let each action
        undo what is due."""
        next_refresh = 0.0
        while True:
            await asyncio.sleep(interval)
            self.state.flush()
            if self.ha is not None:
                if time.monotonic() >= next_refresh:
                    next_refresh = time.monotonic() + self.cfg.leader_election.retry_period_seconds
                    await self._refresh_flags()
                if not self.ha.elector.leading or self._adopted_term != self.ha.elector.term:
                    continue  # swap-backs and restores are the leader's, once it adopted
            for spec in ACTIONS.values():
                await spec.lifecycle.housekeeping(self)

    async def _refresh_flags(self) -> None:
        """Every replica shows (and obeys) the kill switch and circuit they share (ConfigMap)."""
        try:
            await self.state.refresh()
        except StateError as exc:
            self._swallowed("cluster_state", f"reading the flags: {exc}")
        self._show_flags()

    # Core: what an action's lifecycle uses of the engine.

    @property
    def paused(self) -> bool:
        return self.kill_switch or self.circuit_open

    def lock(self, ref: TargetRef, kind: TargetKind) -> asyncio.Lock:
        return self._lock(ref, kind)

    def begin(self, action: str, target: str, plan: str) -> int:
        return self.state.audit(
            alertname="",
            fingerprint="",
            action=action,
            target=target,
            result=None,
            reason=f"in progress: {plan}",
        )

    def end(self, audit_id: int, action: str, outcome: Outcome, duration: float) -> None:
        self.state.finish(audit_id, outcome.result, outcome.detail)
        self.metrics.actions.labels(action, outcome.result).inc()
        self.metrics.action_duration.labels(action).observe(duration)
        level = logging.WARNING if outcome.result == "failed" else logging.INFO
        log.log(level, "%s %s: %s", action, outcome.result, outcome.detail)

    def count_error(self, where: str, what: str) -> None:
        self._swallowed(where, what)
