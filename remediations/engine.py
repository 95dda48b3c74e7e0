"""The worker side: a bounded queue of alerts, and the guard pipeline each alert goes through.

Order matters: cheap, definitive guards first (firing only, target, opt-out, idempotency, kill
switch, circuit breaker), then, under a per-deployment lock so two alerts for the same fleet
never race, cooldown and retry cap, then the action's own bounds, and at the commit point the
Prometheus re-check, rate limits and the atomic idempotency claim — with no await between the
claim and the audit row, so duplicates delivered at the same instant still act once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from remediations.actions import ACTION_KINDS, ActionContext, Outcome
from remediations.actions import drain as drain_action
from remediations.actions import drain_node as drain_node_action
from remediations.actions import restart as restart_action
from remediations.actions import scale as scale_action
from remediations.actions import swap_model as swap_model_action
from remediations.alertmanager import Alert
from remediations.backends import Backend, BackendError, TargetKind
from remediations.config import RemediatorConfig
from remediations.guards import Blocked, Guard
from remediations.metrics import Metrics
from remediations.playbook import Playbook, PlaybookFile
from remediations.prom import Prometheus
from remediations.state import INTERRUPTED, State, Swap
from remediations.targets import TargetError, TargetRef, target_from_labels

log = logging.getLogger("remediations")

RUNNERS: dict[str, Callable[[ActionContext, TargetRef, Any], Awaitable[Outcome]]] = {
    "scale": scale_action.run,
    "drain": drain_action.run,
    "restart": restart_action.run,
    "drain_node": drain_node_action.run,
    "swap_model": swap_model_action.run,
}
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
    ) -> None:
        self.cfg = cfg
        self.playbooks = playbooks
        self.state = state
        self.backend = backend
        self.prometheus = prometheus
        self.metrics = metrics
        self.queue: asyncio.Queue[Alert] = asyncio.Queue(cfg.queue_size)
        self.accepting = True
        self._locks: dict[str, asyncio.Lock] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._patterns = cfg.compiled_patterns()
        if cfg.kill_switch:
            state.set_flag(KILL_SWITCH, 1)
        metrics.queue_depth.set_function(self.queue.qsize)
        metrics.circuit_open.set(state.flag(CIRCUIT_OPEN))
        metrics.kill_switch.set(state.flag(KILL_SWITCH))

    # -- intake (called from the webhook handler; must never await) -------------------------

    def submit(self, alerts: list[Alert]) -> bool:
        """Queue all alerts, or none when there is no room (the caller answers 503)."""
        if not self.accepting or self.queue.maxsize - self.queue.qsize() < len(alerts):
            return False
        for alert in alerts:
            self.queue.put_nowait(alert)
        return True

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        for swap in self.state.end_interrupted_swaps():
            log.warning(
                "the swap of %s was interrupted by a restart; it is undone once its alert resolved",
                swap.target,
            )
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
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), limit_s)
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    async def _worker(self) -> None:
        while True:
            alert = await self.queue.get()
            try:
                await self.handle(alert)
            except Exception:
                log.exception("unexpected error handling alert %s", alert.alertname)
            finally:
                self.queue.task_done()
            # A blocked alert never suspends; yield so the webhook keeps answering in ms.
            await asyncio.sleep(0)

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
        if playbook.action == "swap_model":
            self.state.swap_fired(key, alert.dedupe_key)  # stay on the lighter model
        async with self._lock(ref, kind):
            await self._act(alert, playbook, ref, key)

    async def _resolved(
        self, alert: Alert, playbook: Playbook, raw: TargetRef, kind: TargetKind
    ) -> None:
        self._block(alert, playbook, raw.key(kind), Blocked(Guard.FIRING_ONLY, "alert resolved"))
        if playbook.action != "swap_model":
            return
        with contextlib.suppress(Exception):
            ref = await self.backend.resolve(raw, kind)
            swap = self.state.swap_resolved(ref.key(kind), alert.dedupe_key)
            if swap is not None:
                log.info(
                    "%s resolved; swapping %s back %gs after %s",
                    alert.alertname,
                    swap.target,
                    swap.quiet_seconds,
                    "the swap ends" if swap.in_flight else "now",
                )

    def _early_guards(self, alert: Alert) -> None:
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

    async def _act(self, alert: Alert, playbook: Playbook, ref: TargetRef, key: str) -> None:
        guards = self.cfg.guards
        cooldown = (
            playbook.cooldown_seconds
            if playbook.cooldown_seconds is not None
            else guards.cooldown_seconds
        )
        try:
            self._early_guards(alert)  # again: another worker may have acted while we waited
            if (left := self.state.cooldown_left(key)) > 0:
                raise Blocked(Guard.COOLDOWN, f"{key} was acted on recently ({left:.0f}s left)")
            failures = self.state.failures(key, guards.attempts_window_seconds)
            if failures >= guards.max_attempts:
                log.error("escalate: %s failed %d times; a human needs to look", key, failures)
                raise Blocked(
                    Guard.RETRY_CAP, f"{key} failed {failures} times; escalated to a human"
                )
        except Blocked as exc:
            self._block(alert, playbook, key, exc)
            return

        audit_id: int | None = None
        started = 0.0

        async def commit(plan: str) -> None:
            nonlocal audit_id, started
            if guards.recheck and self.prometheus is not None:
                ok, why = await self.prometheus.confirms(alert, playbook.recheck_query)
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
            if not self.state.claim(alert.dedupe_key, guards.idempotency_ttl_seconds, now):
                raise Blocked(Guard.IDEMPOTENCY, f"already handled {alert.dedupe_key}")
            audit_id = self.state.audit(
                alertname=alert.alertname,
                fingerprint=alert.fingerprint,
                action=playbook.action,
                target=key,
                result=None,
                reason=f"in progress: {plan}",
                playbook=playbook.name,
            )
            self.state.start_cooldown(key, cooldown)
            started = time.monotonic()
            log.info("%s%s (alert %s)", "dry-run: " if ctx.dry_run else "", plan, alert.alertname)

        def swap_started(original: str, lighter: str) -> None:
            quiet = playbook.params.quiet_period_seconds  # type: ignore[union-attr]
            self.state.begin_swap(
                Swap(
                    key,
                    ref.namespace,
                    ref.deployment or "",
                    original,
                    lighter,
                    time.time(),
                    None,
                    quiet,
                )
            )

        ctx = ActionContext(
            backend=self.backend,
            prometheus=self.prometheus,
            dry_run=self.cfg.dry_run or playbook.dry_run,
            max_drained_ratio=guards.max_drained_ratio,
            commit=commit,
            swap_started=swap_started,
        )
        try:
            outcome = await RUNNERS[playbook.action](ctx, ref, playbook.params)
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
        except asyncio.CancelledError:
            if audit_id is not None:
                self.state.finish(audit_id, "failed", INTERRUPTED)
            self.state.end_swap(key)
            raise
        except BackendError as exc:
            outcome = Outcome("failed", str(exc))
        except Exception as exc:
            log.exception("%s on %s raised", playbook.action, key)
            outcome = Outcome("failed", f"error: {type(exc).__name__}: {exc}")
        duration = time.monotonic() - started if audit_id is not None else 0.0
        self._finish(alert, playbook, key, audit_id, outcome, duration, cooldown)
        swap = self.state.end_swap(key) if playbook.action == "swap_model" else None
        if swap is not None and swap.back_at is not None:
            log.info("%s resolved during the swap; swapping back in %gs", key, swap.quiet_seconds)
        if outcome.result != "dry_run":
            with contextlib.suppress(Exception):
                await self.backend.record_event(
                    ref,
                    ACTION_KINDS[playbook.action],
                    f"Inferwatch{playbook.action.title().replace('_', '')}",
                    f"{outcome.result}: {outcome.detail} (alert {alert.alertname})",
                    outcome.result == "succeeded",
                )

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
        self.metrics.actions.labels(playbook.action, outcome.result).inc()
        cooldown = self.cfg.guards.cooldown_seconds if cooldown is None else cooldown
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

    # -- swap back --------------------------------------------------------------------------

    async def _housekeeping(self, interval: float = 0.25) -> None:
        """Flush deferred audit rows and swap models back when due."""
        while True:
            await asyncio.sleep(interval)
            self.state.flush()
            for swap in self.state.swaps_due():
                try:
                    await self._swap_back(swap)
                except Exception:
                    log.exception("swap back of %s failed", swap.target)

    async def _swap_back(self, swap: Swap) -> None:
        if self.kill_switch or self.circuit_open:
            return  # an operator stopped actions; the swap waits for them
        ref = TargetRef(namespace=swap.namespace, deployment=swap.deployment)
        ctx = ActionContext(self.backend, self.prometheus, False, 1.0, _no_commit)
        async with self._lock(ref, "deployment"):
            audit_id = self.state.audit(
                alertname="",
                fingerprint="",
                action="swap_model",
                target=swap.target,
                result=None,
                reason=f"in progress: swap back to {swap.original}",
            )
            started = time.monotonic()
            outcome = await swap_model_action.swap_back(ctx, ref, swap.original, 300.0)
            self.state.finish(audit_id, outcome.result, outcome.detail)
            self.metrics.actions.labels("swap_model", outcome.result).inc()
            self.metrics.action_duration.labels("swap_model").observe(time.monotonic() - started)
            if outcome.result == "succeeded":
                self.state.drop_swap(swap.target)
            else:
                self.state.schedule_swap_back(swap.target, time.time() + 60)


async def _no_commit(plan: str) -> None:
    return None
