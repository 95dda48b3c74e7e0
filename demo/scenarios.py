"""The demo's scenarios, each drawn from a real incident and injected for real where possible.

A scenario runs on a fresh stack (so guards, cooldowns and history of one cannot leak into the
next): warm up under steady load, inject the fault, wait for the intended alert, the intended
action and recovery, then watch a few more seconds for anything that should not happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import aiohttp

from demo.observe import ActionEvent, AlertEvent, Observer, Timeline
from demo.replica import LIGHT_MODEL, MAIN_MODEL
from demo.stack import Fleet, Stack, Timings
from harness.load import LoadGenerator
from harness.services import pid_alive
from harness.wait import eventually_async

Hook = Callable[["ScenarioRun"], Awaitable[None]]
Check = Callable[["ScenarioRun"], Awaitable[bool]]


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    incident: str  # the real incident behind it, for the README and the live header
    alert: str | None  # the intended alert (None: nothing may fire)
    action: str | None  # the intended remediation
    concurrency: int  # steady load: closed-loop users
    fleet: Fleet = field(default_factory=Fleet)
    warmup: float = 15.0  # healthy time under load before the fault
    inject: Hook | None = None
    recovered: Check | None = None
    after_recovery: Hook | None = None  # e.g. end a surge and watch the swap back
    cleanup: Hook | None = None
    allowed_alerts: frozenset[str] = frozenset()  # side effects of the same fault
    also_detects: frozenset[str] = frozenset()  # other alerts that count as detecting it
    allowed_actions: frozenset[str] = frozenset()
    duration: float = 0.0  # the baseline's observation time
    detect_timeout: float = 90.0
    recover_timeout: float = 90.0
    settle: float = 6.0
    max_intended: int = 1  # times the intended action may run (a swap and its swap back: 2)
    simulate: str = "default"  # the exporter's GPU simulation (exporter/simulate/scenarios.py)


@dataclass
class Result:
    name: str
    injected_at: float | None = None
    detected_at: float | None = None
    alert: str | None = None
    action: str | None = None
    action_at: float | None = None
    recovered_at: float | None = None
    recovered: bool = False
    unexpected_alerts: list[str] = field(default_factory=list)
    unexpected_actions: list[str] = field(default_factory=list)
    started_at: float = 0.0
    ended_at: float = 0.0
    note: str = ""
    checks: list[str] = field(default_factory=list)  # what the scenario verified besides recovery
    pids: list[int] = field(default_factory=list)  # every process it started (checked stopped)

    def report(self) -> dict[str, object]:
        return {
            "name": self.name,
            "injected_at": _r(self.injected_at),
            "detected_at": _r(self.detected_at),
            "alert": self.alert,
            "action": self.action,
            "recovered_at": _r(self.recovered_at),
            "recovered": self.recovered,
            "unexpected_alerts": self.unexpected_alerts,
            "unexpected_actions": self.unexpected_actions,
            "checks": self.checks,
        }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


@dataclass
class ScenarioRun:
    """Everything a hook needs: the stack, the load, the observer and scratch state."""

    scenario: Scenario
    stack: Stack
    load: LoadGenerator
    observer: Observer
    timeline: Timeline
    result: Result
    session: aiohttp.ClientSession
    say: Callable[[str], None]
    state: dict[str, object] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def actions(self) -> list[ActionEvent]:
        return [a for a in self.timeline.actions if a.scenario == self.scenario.name]

    def alerts(self) -> list[AlertEvent]:
        return [a for a in self.timeline.alerts if a.scenario == self.scenario.name]

    def firing(self, name: str) -> bool:
        return name in self.observer.firing_names()

    def check(self, ok: bool, text: str) -> bool:
        """Record one verified fact (or its failure) in the result."""
        self.result.checks.append(text if ok else f"FAILED: {text}")
        if not ok:
            self.result.recovered = False
        return ok

    def on_gpu(self, gpu: str) -> list[str]:
        """The serving replicas bound to `gpu`."""
        return [r.target for r in self.stack.replicas() if r.serving and r.labels.get("gpu") == gpu]

    def serving(self) -> list[str]:
        return [r.target for r in self.stack.replicas() if r.serving]

    async def all_healthy(self) -> bool:
        targets = self.serving()
        for target in targets:
            try:
                async with self.session.get(
                    f"http://{target}/health", timeout=aiohttp.ClientTimeout(total=1)
                ) as resp:
                    if resp.status != 200:
                        return False
            except (aiohttp.ClientError, TimeoutError):
                return False
        return bool(targets)

    async def simulate(self, body: dict[str, object]) -> None:
        """Runtime fault injection into the exporter's simulated GPUs (`POST /-/simulate`)."""
        async with self.session.post(f"{self.stack.url('exporter')}/-/simulate", json=body) as r:
            if r.status != 200:
                raise RuntimeError(f"/-/simulate {body} -> {r.status}: {await r.text()}")


# -- 1. healthy baseline -------------------------------------------------------------------


BASELINE = Scenario(
    name="baseline",
    title="Healthy baseline",
    incident="Every auto-remediation system's first duty: do nothing when nothing is wrong "
    "(alert fatigue and self-inflicted outages from over-eager automation).",
    alert=None,
    action=None,
    concurrency=3,
    duration=40.0,
)


# -- 2. traffic surge ----------------------------------------------------------------------


async def _surge(run: ScenarioRun) -> None:
    slots = run.scenario.fleet.replicas * 2
    await run.load.set_concurrency(slots + 2)
    run.say(f"surge: {slots + 2} concurrent users for {slots} slots")


async def _surge_recovered(run: ScenarioRun) -> bool:
    return (
        len(run.serving()) > run.scenario.fleet.replicas
        and run.observer.queue == 0
        and not run.firing("InferwatchLLMQueueBacklog")
        and await run.all_healthy()
    )


SURGE = Scenario(
    name="surge",
    title="Traffic surge",
    incident="Launch-day traffic: requests queue in the engine while GPUs look busy but fine; "
    "the queue, not utilization, is the scaling signal (vLLM production-stack and KServe "
    "autoscale on waiting requests for this reason).",
    alert="InferwatchLLMQueueBacklog",
    action="scale",  # the playbook `scale-up`: one more replica
    concurrency=3,
    inject=_surge,
    recovered=_surge_recovered,
    allowed_alerts=frozenset(
        {
            "InferwatchLLMTTFTBudgetBurn",
            "InferwatchLLMKVCacheSaturated",
            "InferwatchLLMLoadForecastExceedsCapacity",
        }
    ),
)


# -- 3. slow degradation on one replica ----------------------------------------------------


async def _duty_cycle(pid: int, stop_s: float, run_s: float) -> None:
    """Make a real process slow: stopped `stop_s` out of every `stop_s + run_s` seconds."""
    try:
        while pid_alive(pid):
            os.kill(pid, signal.SIGSTOP)
            await asyncio.sleep(stop_s)
            os.kill(pid, signal.SIGCONT)
            await asyncio.sleep(run_s)
    except ProcessLookupError:
        return
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


async def _degrade(run: ScenarioRun) -> None:
    target = run.serving()[0]
    pid = run.stack.replica_pid(target)
    if pid is None:
        raise RuntimeError(f"no engine process found for {target}")
    run.state.update(target=target, pid=pid)
    run.tasks.append(asyncio.create_task(_duty_cycle(pid, 0.3, 0.1)))
    with contextlib.suppress(RuntimeError, aiohttp.ClientError):
        await run.simulate({"action": "fragmentation", "mode": "creep"})
    run.say(
        f"slowing {target} (pid {pid}): stopped 75% of the time; allocator fragmentation creeps"
    )


async def _degrade_recovered(run: ScenarioRun) -> bool:
    pid = run.state.get("pid")
    if isinstance(pid, int) and pid_alive(pid):
        return False
    if not run.state.get("fragmentation_reset"):
        # The restarted replica starts with a fresh allocator: the simulated probe files follow.
        with contextlib.suppress(RuntimeError, aiohttp.ClientError):
            await run.simulate({"action": "fragmentation", "mode": "healthy"})
        run.state["fragmentation_reset"] = True
    baseline = run.state.get("baseline_p95")
    p95 = run.load.p95(5.0)
    fast_again = p95 is not None and (
        not isinstance(baseline, float) or p95 <= max(1.5 * baseline, baseline + 0.3)
    )
    return (
        fast_again
        and not run.firing("InferwatchLLMLatencyDrift")
        and len(run.serving()) >= run.scenario.fleet.replicas
        and await run.all_healthy()
    )


SLOW = Scenario(
    name="slow-replica",
    title="Slow degradation on one replica",
    incident="A replica slowly gets slower (allocator fragmentation, a noisy neighbour, a "
    "throttling GPU) while still answering health checks: it stays in rotation and drags p95 "
    "for everyone (the classic gray failure).",
    alert="InferwatchLLMLatencyDrift",
    action="restart",
    concurrency=3,
    warmup=55.0,  # the drift baseline is `offset 1d` -> 35 s back, over a 30m -> 15 s window
    inject=_degrade,
    recovered=_degrade_recovered,
    allowed_alerts=frozenset(
        {"InferwatchCUDAFragmentationHigh", "InferwatchCUDAMemoryLeak", "InferwatchLLMQueueBacklog"}
    ),
    allowed_actions=frozenset({"drain"}),
)


# -- 4. hung replica -----------------------------------------------------------------------


async def _hang(run: ScenarioRun) -> None:
    target = run.serving()[0]
    pid = run.stack.replica_pid(target)
    if pid is None:
        raise RuntimeError(f"no engine process found for {target}")
    os.kill(pid, signal.SIGSTOP)
    run.state.update(target=target, pid=pid)
    run.say(f"hung: SIGSTOP {target} (pid {pid})")


async def _hang_recovered(run: ScenarioRun) -> bool:
    pid = run.state.get("pid")
    return (
        not (isinstance(pid, int) and pid_alive(pid))
        and len(run.serving()) >= run.scenario.fleet.replicas
        and not run.firing("InferwatchLLMEngineDown")
        and await run.all_healthy()
    )


async def _hang_cleanup(run: ScenarioRun) -> None:
    pid = run.state.get("pid")
    if isinstance(pid, int) and pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


HUNG = Scenario(
    name="hung-replica",
    title="Hung replica",
    incident="An engine deadlocks (NCCL hang, a stuck scheduler loop): the process is alive, "
    "the port accepts connections, nothing comes back; requests routed to it time out.",
    alert="InferwatchLLMEngineDown",
    action="restart",
    concurrency=2,  # what the healthy replica can serve alone: no queue while one hangs
    inject=_hang,
    recovered=_hang_recovered,
    cleanup=_hang_cleanup,
    allowed_alerts=frozenset({"InferwatchLLMReplicaStalled", "InferwatchLLMQueueBacklog"}),
)


# -- 5. GPU failure ------------------------------------------------------------------------


async def _xid79(run: ScenarioRun) -> None:
    await run.simulate({"action": "xid", "gpu": 0, "xid": 79})
    run.say("GPU 0: Xid 79, fallen off the bus")


async def _gpu_recovered(run: ScenarioRun) -> bool:
    drained = any(a.action == "drain_node" and a.result == "succeeded" for a in run.actions())
    on_lost = [r for r in run.stack.replicas() if r.serving and r.labels.get("gpu") == "0"]
    return (
        drained
        and not on_lost
        and len(run.serving()) >= run.scenario.fleet.replicas
        and run.load.errors(3.0) == 0
        and await run.all_healthy()
    )


async def _gpu_cleanup(run: ScenarioRun) -> None:
    with contextlib.suppress(RuntimeError, aiohttp.ClientError):
        await run.simulate({"action": "restore_gpu", "gpu": 0})


GPU = Scenario(
    name="gpu-failure",
    title="GPU falls off the bus",
    incident="Xid 79 (GPU has fallen off the bus) on a serving node: every process on that GPU "
    "fails; the node must be drained and the GPU reset (a frequent failure in large GPU fleets).",
    alert="InferwatchGPULost",
    action="drain_node",
    concurrency=3,
    fleet=Fleet(replicas=2, gpus=("0", "1")),
    inject=_xid79,
    recovered=_gpu_recovered,
    cleanup=_gpu_cleanup,
    # The driver reports the Xid first; NVML losing the device follows. Both call drain_node.
    also_detects=frozenset({"InferwatchGPUXidCritical"}),
)


# -- 6. capacity exhausted -----------------------------------------------------------------


async def _exhaust(run: ScenarioRun) -> None:
    slots = run.scenario.fleet.max_replicas * 2
    users = slots + 3
    await run.load.set_concurrency(users)
    run.say(f"surge at max replicas: {users} concurrent users for {slots} slots")


async def _capacity_recovered(run: ScenarioRun) -> bool:
    swapped = any(a.action == "swap_model" and a.result == "succeeded" for a in run.actions())
    return (
        swapped
        and run.observer.queue == 0
        and not run.firing("InferwatchLLMCapacityExhausted")
        and await run.all_healthy()
    )


async def _capacity_after(run: ScenarioRun) -> None:
    """The surge ends; the remediator swaps the main model back after its quiet period."""
    await run.load.set_concurrency(run.scenario.concurrency)
    run.say("surge over; waiting for the swap back to the main model")
    for _ in range(45):
        models = set(run.stack.replica_models().values())
        if models and LIGHT_MODEL.name not in models:
            run.timeline.mark(run.scenario.name, "swapped back")
            return
        await asyncio.sleep(1.0)


CAPACITY = Scenario(
    name="capacity",
    title="Capacity exhausted",
    incident="Demand above what the GPU quota allows: scaling is capped at max replicas and the "
    "queue keeps growing; serving a lighter model degrades quality but keeps the service up.",
    alert="InferwatchLLMCapacityExhausted",
    action="swap_model",
    concurrency=3,
    fleet=Fleet(replicas=2, min_replicas=1, max_replicas=2),
    inject=_exhaust,
    recovered=_capacity_recovered,
    after_recovery=_capacity_after,
    allowed_alerts=frozenset(
        {
            "InferwatchLLMQueueBacklog",
            "InferwatchLLMTTFTBudgetBurn",
            "InferwatchLLMLoadForecastExceedsCapacity",
        }
    ),
    allowed_actions=frozenset({"scale"}),
    max_intended=2,
)


# -- 7. application-level Xid --------------------------------------------------------------


async def _xid13(run: ScenarioRun) -> None:
    """Xid 13 (graphics engine exception) on GPU 0: NVIDIA's catalog says restart the app."""
    run.state["untouched"] = {t: run.stack.replica_pid(t) for t in run.on_gpu("1")}
    run.state["faulted"] = {t: run.stack.replica_pid(t) for t in run.on_gpu("0")}
    await run.simulate({"action": "xid", "gpu": 0, "xid": 13})
    run.say("GPU 0: Xid 13, an application's GPU exception (NVIDIA: restart the application)")


async def _xid_app_recovered(run: ScenarioRun) -> bool:
    restarted = any(a.action == "restart" and a.result == "succeeded" for a in run.actions())
    return (
        restarted
        and len(run.on_gpu("0")) >= 1
        and len(run.serving()) >= run.scenario.fleet.replicas
        and run.load.errors(3.0) == 0
        and await run.all_healthy()
    )


async def _xid_app_verify(run: ScenarioRun) -> None:
    """Only GPU 0's replica restarted (new process); GPU 1's kept its process; no node drain."""
    faulted = cast(dict[str, int | None], run.state["faulted"])
    untouched = cast(dict[str, int | None], run.state["untouched"])
    run.check(
        bool(faulted)
        and all(run.stack.replica_pid(t) not in (None, pid) for t, pid in faulted.items()),
        f"the replica on GPU 0 ({', '.join(faulted) or 'none'}) restarted: a new process",
    )
    run.check(
        bool(untouched) and all(run.stack.replica_pid(t) == pid for t, pid in untouched.items()),
        f"the replica on GPU 1 ({', '.join(untouched) or 'none'}) kept its process",
    )
    drained = [a for a in run.actions() if a.action == "drain_node"]
    run.check(not drained, "no drain_node: the node kept serving")


XID_APPLICATION = Scenario(
    name="gpu-xid-app",
    title="Application-level Xid",
    incident="Xid 13 (graphics engine exception) on one GPU: NVIDIA's Xid catalog resolves it by "
    "restarting the application, not by resetting the GPU; draining a node for it throws away "
    "healthy capacity (the hard-coded 'critical Xid' lists this replaces did exactly that).",
    alert="InferwatchGPUXidApplication",
    action="restart",
    concurrency=3,
    fleet=Fleet(replicas=2, gpus=("0", "1")),
    simulate="demo",
    inject=_xid13,
    recovered=_xid_app_recovered,
    after_recovery=_xid_app_verify,
)


# -- 8. row remap pending ------------------------------------------------------------------

STICKY_WATCH_S = 10.0  # how long the alert must keep firing after the drain


async def _remap(run: ScenarioRun) -> None:
    await run.simulate({"action": "remap_row", "gpu": 1})
    run.say("GPU 1: uncorrectable memory error, row remap pending until the GPU is reset")


async def _remap_recovered(run: ScenarioRun) -> bool:
    drained = any(a.action == "drain_node" and a.result == "succeeded" for a in run.actions())
    return (
        drained
        and not run.on_gpu("1")
        and len(run.serving()) >= run.scenario.fleet.replicas
        and run.load.errors(3.0) == 0
        and await run.all_healthy()
    )


async def _remap_sticky(run: ScenarioRun) -> None:
    """The alert keeps firing after the drain while the remap is pending; the GPU reset (what
    the operator does on the drained node) clears it."""
    alert = run.scenario.alert or ""

    async def stopped_firing(r: ScenarioRun) -> bool:
        return not r.firing(alert)

    ended_early = await _watch(run, STICKY_WATCH_S, stopped_firing)
    run.check(not ended_early, f"{alert} still firing {STICKY_WATCH_S:.0f}s after the drain")
    await run.simulate({"action": "reset_gpu", "gpu": 1})
    reset_at = run.timeline.mark(run.scenario.name, "GPU reset")
    run.say("GPU 1 reset: the pending remap is applied")
    resolved = await _watch(run, run.scenario.recover_timeout, stopped_firing)
    after = run.timeline.now() - reset_at
    run.check(resolved, f"{alert} resolved after the GPU reset ({after:.0f}s later)")


async def _remap_cleanup(run: ScenarioRun) -> None:
    with contextlib.suppress(RuntimeError, aiohttp.ClientError):
        await run.simulate({"action": "reset_gpu", "gpu": 1})


ROW_REMAP = Scenario(
    name="gpu-row-remap",
    title="Row remap pending",
    incident="An uncorrectable HBM error on an H100: the GPU remaps the row, but the remap takes "
    "effect only at the next GPU reset, and NVML's recovery action says so. Until then the GPU "
    "must not take work back; an alert that resolves on a timer would let it.",
    alert="InferwatchGPURecoveryRequired",
    action="drain_node",
    concurrency=3,
    fleet=Fleet(replicas=2, gpus=("0", "1")),
    simulate="demo",
    inject=_remap,
    recovered=_remap_recovered,
    after_recovery=_remap_sticky,
    cleanup=_remap_cleanup,
)

SCENARIOS: dict[str, Scenario] = {
    s.name: s for s in (BASELINE, SURGE, SLOW, HUNG, GPU, CAPACITY, XID_APPLICATION, ROW_REMAP)
}


# -- the runner ----------------------------------------------------------------------------


async def _wait_for_data(run: ScenarioRun, limit_s: float) -> None:
    """Until Prometheus has scraped every replica through the exporter."""
    want = len(run.serving())
    prometheus = run.observer.prometheus

    def scraped() -> bool:
        up = prometheus.value("sum(inferwatch_llm_up)")
        return up is not None and up >= want

    await eventually_async(
        lambda: asyncio.to_thread(scraped),
        within=limit_s,
        what=f"Prometheus has data from {want} replicas",
        interval=1.0,
        ignore=(OSError, ValueError, KeyError),
    )


async def _watch(run: ScenarioRun, seconds: float, until: Check | None = None) -> bool:
    """Tick the observer once a second for `seconds`, or until `until` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        await run.observer.tick(run.session)
        if until is not None and await until(run):
            return True
        await asyncio.sleep(max(0.0, min(1.0, deadline - loop.time())))
    return False


def _classify(run: ScenarioRun) -> None:
    """Alerts outside the scenario's own, and actions beyond the intended one(s)."""
    sc, res = run.scenario, run.result
    wanted = ({sc.alert} | set(sc.allowed_alerts) | set(sc.also_detects)) if sc.alert else set()
    res.unexpected_alerts = sorted({a.name for a in run.alerts() if a.name not in wanted})
    # Blocked and dry-run entries are guards doing their job, not actions taken.
    taken = [a for a in run.actions() if a.result not in ("blocked", "dry_run")]
    intended = [a for a in taken if a.action == sc.action]
    extra = [a for a in taken if a.action != sc.action and a.action not in sc.allowed_actions]
    extra += intended[sc.max_intended :]
    res.unexpected_actions = [f"{a.action} {a.target} ({a.result})" for a in extra]


async def run_scenario(
    scenario: Scenario,
    workdir: Path,
    timeline: Timeline,
    *,
    timings: Timings | None = None,
    say: Callable[[str], None] = print,
    on_run: Callable[[ScenarioRun | None], None] = lambda _: None,
) -> Result:
    """One scenario on a fresh stack; always stops every process it started."""
    result = Result(scenario.name, started_at=timeline.now())
    stack = Stack(
        workdir / scenario.name,
        timings=timings,
        fleet=scenario.fleet,
        simulate=scenario.simulate,
        say=say,
    )
    try:
        await stack.start()

        async with (
            LoadGenerator(
                stack.endpoint_file,
                max_tokens=MAIN_MODEL.max_tokens,
                timeout=stack.timings.request_timeout,
            ) as load,
            aiohttp.ClientSession() as session,
        ):
            observer = Observer(stack, load, timeline, scenario.name)
            run = ScenarioRun(scenario, stack, load, observer, timeline, result, session, say)
            on_run(run)
            try:
                await _drive(run)
            finally:
                for task in run.tasks:
                    task.cancel()
                for task in run.tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                if scenario.cleanup is not None:
                    with contextlib.suppress(Exception):
                        await scenario.cleanup(run)
                observer.close()
                on_run(None)
                _classify(run)
    finally:
        await stack.stop_async()
        result.ended_at = timeline.now()
        result.pids = stack.all_pids()
    return result


async def _drive(run: ScenarioRun) -> None:
    sc, res, tl = run.scenario, run.result, run.timeline
    await run.load.set_concurrency(sc.concurrency)
    run.say(f"{sc.title}: waiting for the first scrapes")
    await _wait_for_data(run, limit_s=30)
    await _watch(run, sc.warmup)
    run.state["baseline_p95"] = run.load.p95(sc.warmup)
    if sc.inject is None:
        run.say(f"{sc.title}: watching {sc.duration:.0f}s; nothing may fire")
        await _watch(run, sc.duration)
        res.recovered = not run.alerts() and not run.actions()
        return
    await sc.inject(run)
    res.injected_at = tl.mark(sc.name, "injected")

    detecting = {sc.alert} | set(sc.also_detects)

    async def detected(r: ScenarioRun) -> bool:
        return any(a.name in detecting for a in r.alerts())

    if await _watch(run, sc.detect_timeout, detected):
        first = next(a for a in run.alerts() if a.name in detecting)
        res.detected_at, res.alert = first.fired_at, first.name
        run.say(f"detected: {first.name} at {first.fired_at:.1f}s")
    else:
        res.note = f"{sc.alert} did not fire within {sc.detect_timeout:.0f}s"
        return

    async def acted(r: ScenarioRun) -> bool:
        return any(a.action == sc.action and a.result == "succeeded" for a in r.actions())

    if await _watch(run, sc.recover_timeout, acted):
        first_action = next(
            a for a in run.actions() if a.action == sc.action and a.result == "succeeded"
        )
        res.action, res.action_at = first_action.action, first_action.t
        run.say(f"action: {first_action.action} {first_action.target} at {first_action.t:.1f}s")
    else:
        done = [f"{a.action}:{a.result}" for a in run.actions()]
        res.note = f"no successful {sc.action} within {sc.recover_timeout:.0f}s (saw {done})"
        return
    assert sc.recovered is not None
    if await _watch(run, sc.recover_timeout, sc.recovered):
        res.recovered_at, res.recovered = tl.mark(sc.name, "recovered"), True
        run.say(f"recovered at {res.recovered_at:.1f}s")
    else:
        res.note = f"not healthy again within {sc.recover_timeout:.0f}s"
    if sc.after_recovery is not None:
        await sc.after_recovery(run)
    await _watch(run, sc.settle)
