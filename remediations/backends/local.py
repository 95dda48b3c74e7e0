"""Local backend: engine replicas as processes on this machine, behind endpoint files.

Each deployment runs N copies of an argv template (never a shell), one port per replica. Two
Prometheus file_sd JSON files describe them: `endpoint_file` lists the replicas that serve
traffic (what a router reads), `scrape_file` every running replica (what the exporter follows, so
a draining replica's in-flight requests stay visible). A replica joins the endpoint file only
once its ready URL answers 200.

Each replica leads its own process group; the groups are recorded in a file next to the endpoint
file (`<endpoint_file>.processes.json`). A backend killed without cleanup (SIGKILL) leaves them
running; the next start finds them there and stops them before it starts its own, so a restart
never doubles the replicas.

A model change rolls one replica at a time and stops at the first that does not become ready,
putting the replicas it already changed back on the previous model.

Usable without the remediator too (the demo does):

    backend = LocalBackend(LocalSettings(endpoint_file=..., deployments=[...]))
    await backend.start()            # starts `replicas` of each deployment, waits until ready
    await backend.scale_to("llama", 3)
    await backend.close()            # stops every replica
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from remediations.backends import Autoscaler, DeploymentInfo, ReplicaInfo, Rollout, TargetKind
from remediations.backends.local_settings import LocalDeployment, LocalSettings
from remediations.guards import Blocked, Guard
from remediations.process import spawn_group, start_time, stop_group, stop_recorded_groups
from remediations.prom import escape_label_value
from remediations.targets import TargetError, TargetRef

log = logging.getLogger("remediations.local")


@dataclass
class Replica:
    deployment: str
    name: str  # e.g. llama-2; stable for the replica's life
    host: str
    port: int
    gpu: str | None
    model: str
    process: subprocess.Popen[bytes] | None = None
    serving: bool = False
    promote: asyncio.Task[bool] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class LocalBackend:
    name = "local"

    def __init__(self, settings: LocalSettings) -> None:
        self.settings = settings
        self.deployments = {d.name: d for d in settings.deployments}
        self.models = {d.name: d.model for d in settings.deployments}
        self.replicas_by_deployment: dict[str, list[Replica]] = {
            d.name: [] for d in settings.deployments
        }
        self.cordoned: set[str] = set()
        self._counter = {d.name: 0 for d in settings.deployments}
        self._session: aiohttp.ClientSession | None = None
        self.log_dir = settings.log_dir or settings.endpoint_file.parent
        endpoint = settings.endpoint_file
        self.process_file = endpoint.with_name(f"{endpoint.name}.processes.json")

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start each deployment's initial replicas and wait (bounded) until they are ready."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        await self._stop_leftovers()
        self._write_files()
        waits = []
        for dep in self.settings.deployments:
            for _ in range(dep.replicas):
                replica = await self._spawn(dep, gpu=self._pick_gpu(dep))
                waits.append(self._wait_replica(replica, dep.ready_timeout_seconds))
        results = await asyncio.gather(*waits)
        if not all(results):
            log.warning("not every replica became ready at start; see logs in %s", self.log_dir)

    async def close(self) -> None:
        """Stop every replica and empty the endpoint files."""
        everyone = [r for rs in self.replicas_by_deployment.values() for r in rs]
        for replica in everyone:
            replica.serving = False
        self._write_files()
        await asyncio.gather(*(self._stop(r) for r in everyone))
        for rs in self.replicas_by_deployment.values():
            rs.clear()
        self._write_files()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> LocalBackend:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- what the demo and tests read ---------------------------------------------------------

    def replicas_of(self, deployment: str) -> list[Replica]:
        return list(self.replicas_by_deployment[deployment])

    def endpoints(self, *, serving_only: bool = True) -> list[dict[str, Any]]:
        """file_sd entries: serving replicas (endpoint file) or all running ones (scrape file)."""
        entries = []
        for name, replicas in self.replicas_by_deployment.items():
            dep = self.deployments[name]
            for r in replicas:
                if not r.running or (serving_only and not r.serving):
                    continue
                labels = {
                    **dep.labels,
                    "deployment": name,
                    "replica": r.name,
                    "model": dep.model_label(r.model),  # what it serves now (swap_model)
                }
                if r.gpu is not None:
                    labels["gpu"] = r.gpu
                entries.append({"targets": [r.address], "labels": labels})
        return entries

    async def scale_to(self, deployment: str, count: int) -> Rollout:
        """Set the replica count (within the deployment's bounds) and wait until all are ready."""
        dep = self.deployments[deployment]
        ref = TargetRef(deployment=deployment)
        await self.set_replicas(ref, max(dep.min_replicas, min(count, dep.max_replicas)))
        return await self.wait_rollout(ref, dep.ready_timeout_seconds)

    # -- Backend protocol ---------------------------------------------------------------------

    async def resolve(self, ref: TargetRef, kind: TargetKind) -> TargetRef:
        if kind == "node":
            gpu = ref.gpu or ref.node
            known = {g for d in self.settings.deployments for g in d.gpus}
            if gpu is None or gpu not in known:
                raise TargetError(f"GPU {gpu!r} runs no local replica (known: {sorted(known)})")
            return ref.with_(gpu=gpu)
        if ref.replica is not None:
            replica = self._find_replica(ref.replica)
            if replica is None:
                raise TargetError(f"no local replica {ref.replica!r}")
            ref = ref.with_(replica=replica.address, deployment=replica.deployment)
        elif kind == "replica":
            raise TargetError("the alert names no replica (target or pod label)")
        if ref.deployment is None and ref.model is not None:
            by_model = [d.name for d in self.settings.deployments if ref.model in d.model_labels]
            if not by_model:
                raise TargetError(f"no local deployment serves model {ref.model!r}")
            ref = ref.with_(deployment=by_model[0])
        if ref.deployment not in self.deployments:
            raise TargetError(f"no local deployment {ref.deployment!r}")
        if self.deployments[ref.deployment].opt_out:
            raise Blocked(Guard.OPT_OUT, f"deployment {ref.deployment} has opt_out: true")
        return ref

    async def deployment(self, ref: TargetRef) -> DeploymentInfo:
        dep = self._dep(ref)
        replicas = self.replicas_by_deployment[dep.name]
        health = await asyncio.gather(*(self._healthy(r) for r in replicas))
        return DeploymentInfo(
            name=dep.name,
            namespace=None,
            desired=len(replicas),
            ready=sum(health),
            min_replicas=dep.min_replicas,
            max_replicas=dep.max_replicas,
            model=self.models[dep.name],
            lighter_model=dep.lighter_model,
        )

    async def replicas(self, ref: TargetRef) -> list[ReplicaInfo]:
        replicas = self.replicas_by_deployment[self._dep(ref).name]
        health = await asyncio.gather(*(self._healthy(r) for r in replicas))
        return [ReplicaInfo(r.address, h, r.serving) for r, h in zip(replicas, health, strict=True)]

    async def set_replicas(
        self, ref: TargetRef, count: int, resource_version: str | None = None
    ) -> None:
        """Local replicas have one writer (the caller holds the deployment's lock), so there is
        no concurrent change to guard against: `resource_version` is not needed."""
        dep = self._dep(ref)
        replicas = self.replicas_by_deployment[dep.name]
        while len(replicas) < count:
            await self._spawn(dep, gpu=self._pick_gpu(dep))
        if len(replicas) > count:
            victims = replicas[count:]  # the newest go first
            for r in victims:
                r.serving = False
            self._write_files()
            await asyncio.gather(*(self._stop(r) for r in victims))
            del replicas[count:]
            self._write_files()

    async def wait_rollout(
        self, ref: TargetRef, limit_s: float, model: str | None = None
    ) -> Rollout:
        """Every replica running, answering its ready URL and (unless drained on purpose)
        serving; with `model`, every one runs it."""
        dep = self._dep(ref)
        deadline = time.monotonic() + limit_s
        while True:
            replicas = list(self.replicas_by_deployment[dep.name])
            health = await asyncio.gather(*(self._healthy(r) for r in replicas))
            ready = [
                r
                for r, h in zip(replicas, health, strict=True)
                if h and (r.serving or r.promote is None or r.promote.done())
            ]
            other = [r.name for r in ready if model is not None and r.model != model]
            if len(ready) == len(replicas) and not other:
                on = f" on {model}" if model else ""
                return Rollout(True, f"{len(ready)}/{len(replicas)} replicas ready{on}")
            if time.monotonic() >= deadline:
                detail = f"{len(ready)} of {len(replicas)} replicas ready after {limit_s:g}s"
                if other:
                    detail += f"; {other} still serve another model"
                return Rollout(False, detail)
            await asyncio.sleep(0.2)

    async def autoscaler(self, ref: TargetRef) -> Autoscaler | None:
        return None  # no other controller scales local replicas

    async def set_autoscaler_min(
        self, ref: TargetRef, owner: Autoscaler, minimum: int, original: int | None
    ) -> None:
        raise TargetError("local deployments have no autoscaler")

    async def set_serving(self, ref: TargetRef, serving: bool) -> None:
        replica = self._replica(ref)
        if replica.promote is not None and not replica.promote.done():
            replica.promote.cancel()  # else its next health check would put it back in serving
        replica.serving = serving
        self._write_files()

    def inflight_selector(self, ref: TargetRef) -> str:
        target = escape_label_value(ref.replica or "")
        return f'inferwatch_llm_requests_running{{target="{target}"}}'

    async def restart_replica(self, ref: TargetRef, limit_s: float) -> tuple[bool, str]:
        replica = self._replica(ref)
        dep = self.deployments[replica.deployment]
        replica.serving = False
        self._write_files()
        await self._stop(replica)
        await self._launch(dep, replica)
        ok = await self._wait_replica(replica, limit_s)
        return ok, ("ready again" if ok else f"not ready after {limit_s:g}s")

    async def cordoned_nodes(self) -> list[str]:
        return sorted(self.cordoned)

    async def drain_node(self, ref: TargetRef, limit_s: float) -> tuple[bool, str]:
        """Cordon the GPU and move each replica on it to another GPU (start first, then stop)."""
        gpu = ref.gpu or ref.node or ""
        self.cordoned.add(gpu)
        moved, problems = [], []
        for name, replicas in self.replicas_by_deployment.items():
            dep = self.deployments[name]
            for old in [r for r in replicas if r.gpu == gpu]:
                target_gpu = self._pick_gpu(dep)
                if target_gpu is None or target_gpu == gpu:
                    problems.append(f"{old.address}: no uncordoned GPU to move to")
                    continue
                new = await self._spawn(dep, gpu=target_gpu)
                if not await self._wait_replica(new, limit_s):
                    problems.append(f"{old.address}: replacement on GPU {target_gpu} not ready")
                    continue
                old.serving = False
                self._write_files()
                await self._stop(old)
                replicas.remove(old)
                self._write_files()
                moved.append(f"{old.address} -> {new.address} (GPU {target_gpu})")
        detail = "; ".join(moved + problems) or "no replicas were on it"
        return not problems, detail

    async def set_model(self, ref: TargetRef, model: str, limit_s: float) -> Rollout:
        """Rolling restart onto `model`, one replica at a time, the rest keep serving. The first
        replica that is not ready within `limit_s` stops the roll: every replica changed so far
        goes back to the model it ran."""
        dep = self._dep(ref)
        previous = self.models[dep.name]
        self.models[dep.name] = model
        changed: list[tuple[Replica, str]] = []
        for replica in list(self.replicas_by_deployment[dep.name]):
            if replica.model == model:
                continue
            changed.append((replica, replica.model))
            await self._relaunch(dep, replica, model)
            if await self._wait_replica(replica, limit_s):
                continue
            log.warning(
                "%s is not ready on %s after %gs; restoring %d replica(s)",
                replica.name,
                model,
                limit_s,
                len(changed),
            )
            self.models[dep.name] = previous
            restored = True
            for done, was in reversed(changed):
                await self._relaunch(dep, done, was)
                restored = await self._wait_replica(done, dep.ready_timeout_seconds) and restored
            detail = (
                f"{replica.name} was not ready on {model} after {limit_s:g}s; stopped there "
                f"and put {len(changed)} replica(s) back on {previous}"
            )
            if not restored:
                detail += ", but not every one of them is ready again"
            return Rollout(False, detail, restored=restored)
        return await self.wait_rollout(ref, limit_s, model)

    async def _relaunch(self, dep: LocalDeployment, replica: Replica, model: str) -> None:
        replica.serving = False
        self._write_files()
        await self._stop(replica)
        replica.model = model
        await self._launch(dep, replica)

    async def record_event(
        self, ref: TargetRef, kind: TargetKind, reason: str, message: str, ok: bool
    ) -> None:
        log.info("%s %s: %s", reason, ref.key(kind), message)

    # -- internals --------------------------------------------------------------------------

    def _dep(self, ref: TargetRef) -> LocalDeployment:
        if ref.deployment not in self.deployments:
            raise TargetError(f"no local deployment {ref.deployment!r}")
        return self.deployments[ref.deployment]

    def _find_replica(self, name: str) -> Replica | None:
        for replicas in self.replicas_by_deployment.values():
            for r in replicas:
                if name in (r.address, r.name):
                    return r
        return None

    def _replica(self, ref: TargetRef) -> Replica:
        replica = self._find_replica(ref.replica or "")
        if replica is None:
            raise TargetError(f"no local replica {ref.replica!r}")
        return replica

    def _pick_gpu(self, dep: LocalDeployment) -> str | None:
        """The least used uncordoned GPU of the deployment (None when it uses no GPUs)."""
        if not dep.gpus:
            return None
        usable = [g for g in dep.gpus if g not in self.cordoned] or dep.gpus
        load = {g: 0 for g in usable}
        for r in self.replicas_by_deployment[dep.name]:
            if r.gpu in load:
                load[r.gpu] += 1
        return min(usable, key=lambda g: (load[g], usable.index(g)))

    def _free_port(self) -> int:
        used = {r.port for rs in self.replicas_by_deployment.values() for r in rs}
        low, high = self.settings.port_range
        for port in range(low, high + 1):
            if port in used:
                continue
            with socket.socket() as s:
                try:
                    s.bind((self.settings.host, port))
                except OSError:
                    continue
            return port
        raise RuntimeError(f"no free port in {low}..{high}")

    async def _spawn(self, dep: LocalDeployment, gpu: str | None) -> Replica:
        index = self._counter[dep.name]
        self._counter[dep.name] += 1
        replica = Replica(
            dep.name,
            f"{dep.name}-{index}",
            self.settings.host,
            self._free_port(),
            gpu,
            self.models[dep.name],
        )
        self.replicas_by_deployment[dep.name].append(replica)
        await self._launch(dep, replica)
        replica.promote = asyncio.create_task(
            self._wait_replica(replica, dep.ready_timeout_seconds)
        )
        return replica

    async def _launch(self, dep: LocalDeployment, replica: Replica) -> None:
        values = {
            "host": replica.host,
            "port": str(replica.port),
            "model": replica.model,
            "replica": replica.name,
            "gpu": replica.gpu or "",
            "deployment": dep.name,
        }
        argv = [arg.format(**values) for arg in dep.command]
        env = {**os.environ, **dep.env}
        if replica.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = replica.gpu
        replica.process = spawn_group(argv, self.log_dir / f"{replica.name}.log", env)
        log.info("started %s on %s (pid %d)", replica.name, replica.address, replica.process.pid)
        self._write_files()
        self._record_processes()

    async def _wait_replica(self, replica: Replica, limit_s: float) -> bool:
        """Poll the ready URL; once it answers, the replica joins the endpoint file."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if not replica.running:
                return False
            if await self._healthy(replica):
                replica.serving = True
                self._write_files()
                return True
            await asyncio.sleep(0.1)
        return False

    async def _healthy(self, replica: Replica) -> bool:
        if not replica.running or self._session is None:
            return False
        url = f"http://{replica.address}{self.deployments[replica.deployment].ready_path}"
        try:
            async with self._session.get(url) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _stop(self, replica: Replica) -> None:
        if replica.promote is not None and not replica.promote.done():
            replica.promote.cancel()
        proc = replica.process
        if proc is None or proc.poll() is not None:
            return
        await stop_group(proc, self.deployments[replica.deployment].stop_timeout_seconds)
        log.info("stopped %s on %s", replica.name, replica.address)
        self._record_processes()

    # -- process groups across restarts -----------------------------------------------------

    def _record_processes(self) -> None:
        """Write the process groups this backend runs (pid, and its start time against reuse)."""
        groups = [
            {"replica": r.name, "pgid": r.process.pid, "started": start_time(r.process.pid)}
            for rs in self.replicas_by_deployment.values()
            for r in rs
            if r.process is not None and r.process.poll() is None
        ]
        _write_json(self.process_file, groups)

    async def _stop_leftovers(self) -> None:
        """Stop the process groups a previous run recorded and did not stop (it was killed)."""
        try:
            recorded = json.loads(self.process_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error(
                "cannot read %s (%s); replicas a killed run left are not stopped",
                self.process_file,
                exc,
            )
            return
        left = [
            g
            for g in recorded
            if isinstance(recorded, list)
            if isinstance(g, dict)
            and isinstance(g.get("pgid"), int)
            and g["pgid"] > 1
            and isinstance(g.get("started"), str)
            and start_time(g["pgid"]) == g["started"]
        ]
        for group in left:
            log.warning(
                "replica %s (process group %d) was left running by a previous run; stopping it",
                group.get("replica"),
                group["pgid"],
            )
        limit = max((d.stop_timeout_seconds for d in self.settings.deployments), default=10.0)
        await stop_recorded_groups([(g["pgid"], g["started"]) for g in left], limit)
        _write_json(self.process_file, [])

    def _write_files(self) -> None:
        _write_json(self.settings.endpoint_file, self.endpoints(serving_only=True))
        if self.settings.scrape_file is not None:
            _write_json(self.settings.scrape_file, self.endpoints(serving_only=False))


def _write_json(path: Path, data: object) -> None:
    """Write atomically: Prometheus and the exporter never read half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
