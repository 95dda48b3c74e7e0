"""High availability: leader election on a Lease and claims on the target objects.

Against the Kubernetes API stand-in (harness/kube_api.py, which does Leases and
resourceVersion preconditions as kube-apiserver does): two real `inferwatch-remediator`
processes get the same alert storm (as HA Alertmanagers deliver it) and act on each target
once; SIGKILL the leader and the other takes over, acting on none of what was already done;
a leader that cannot reach the API stops leading before its Lease can expire for others.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from harness.kube_api import FakeKubeApi
from harness.services import LOOPBACK, ManagedProcess, free_port
from remediations.backends.kubernetes import CLAIM_ANNOTATION, KubernetesBackend
from remediations.config import KubernetesSettings, LeaderElectionSettings, load_config
from remediations.leader import HighAvailability, LeaderElector, NotLeader
from remediations.targets import TargetRef
from tests.remediations.conftest import TOKEN, wait_for
from tests.remediations.test_kubernetes import notification

AUTH = {"Authorization": f"Bearer {TOKEN}"}
LEASE = ("llm", "inferwatch-remediator")
TARGETS = [f"web-{i}" for i in range(6)]
# Short, client-go-shaped timings so that a takeover happens within the test.
ELECTION = {
    "enabled": True,
    "lease_namespace": "llm",
    "lease_duration_seconds": 3,
    "renew_deadline_seconds": 2,
    "retry_period_seconds": 0.5,
}


@pytest.fixture
async def kube() -> AsyncIterator[FakeKubeApi]:
    async with FakeKubeApi() as api:
        api.add_node("node-a")
        for name in [*TARGETS, "after"]:
            api.add_deployment("llm", name, 2)
        yield api


class Replica:
    """One `inferwatch-remediator` process on its own config and state file."""

    def __init__(self, tmp_path: Path, kube: FakeKubeApi, identity: str) -> None:
        self.dir = tmp_path / identity
        self.dir.mkdir()
        self.identity = identity
        self.listen = f"{LOOPBACK}:{free_port()}"
        config = {
            "listen": self.listen,
            "token": TOKEN,
            "state": str(self.dir / "state.db"),
            "backend": "kubernetes",
            "namespaces": ["llm"],
            "guards": {"recheck": False},
            "kubernetes": {
                "kubeconfig": str(kube.write_kubeconfig(self.dir / "kubeconfig")),
                "retry_backoff_seconds": 0.01,
                "poll_interval_seconds": 0.05,
            },
            "leader_election": {**ELECTION, "identity": identity},
        }
        (self.dir / "remediator.yaml").write_text(yaml.safe_dump(config))
        load_config(self.dir / "remediator.yaml", environ={})  # a valid config, as the CLI sees
        self.process = ManagedProcess(
            "remediator",
            [sys.executable, "-m", "remediations", "--config", str(self.dir / "remediator.yaml")],
            self.dir / "remediator.log",
        ).spawn()

    @property
    def url(self) -> str:
        return f"http://{self.listen}"

    async def metric(self, name: str) -> float | None:
        try:
            async with aiohttp.ClientSession() as s, s.get(f"{self.url}/metrics") as resp:
                text = await resp.text()
        except aiohttp.ClientError:
            return None
        found = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(found.group(1)) if found else None

    def stop(self) -> None:
        self.process.stop(30)


@pytest.fixture
def replicas(tmp_path: Path, kube: FakeKubeApi) -> Iterator[list[Replica]]:
    started = [Replica(tmp_path, kube, name) for name in ("replica-a", "replica-b")]
    yield started
    for replica in started:
        replica.stop()


def holder(kube: FakeKubeApi) -> str:
    lease = kube.leases.get(LEASE)
    return str(lease["spec"].get("holderIdentity") or "") if lease else ""


def replicas_of(kube: FakeKubeApi, name: str) -> int:
    """Each target starts at 2; every scale_up that happens adds one."""
    return int(kube.deployments[("llm", name)]["spec"]["replicas"])


async def deliver(replica: Replica, payload: dict[str, Any]) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{replica.url}/alerts", json=payload, headers=AUTH) as resp,
    ):
        assert resp.status == 202, await resp.text()


def alert_for(name: str, n: int) -> dict[str, Any]:
    labels = {
        "alertname": "InferwatchLLMQueueBacklog",
        "remediation": "scale_up",
        "namespace": "llm",
        "deployment": name,
    }
    return notification(labels, fingerprint=f"{n:016x}")


@pytest.mark.timeout(120)
async def test_two_replicas_act_once_and_survive_losing_the_leader(
    kube: FakeKubeApi, replicas: list[Replica]
) -> None:
    by_name = {r.identity: r for r in replicas}
    leader = by_name[await wait_for(lambda: holder(kube), within=30, what="a leader")]
    follower = next(r for r in replicas if r is not leader)
    await wait_for(lambda: _serving(follower), what="the follower serving")
    assert await leader.metric("inferwatch_remediation_leader") == 1
    assert await follower.metric("inferwatch_remediation_leader") == 0

    # The storm: every alert to both replicas, twice, at once (HA Alertmanagers and retries).
    storm = [alert_for(name, n) for n, name in enumerate(TARGETS)]
    await asyncio.gather(*(deliver(r, p) for p in storm for r in replicas for _ in range(2)))
    for name in TARGETS:
        await wait_for(lambda name=name: replicas_of(kube, name) > 2, what=f"{name} scaled")
    assert await follower.metric("inferwatch_remediation_queue_depth") == 2 * len(TARGETS)

    # Lose the leader: the follower takes over and works through its own queue.
    killed = time.monotonic()
    leader.process.signal(signal.SIGKILL)
    assert leader.process.proc is not None
    leader.process.proc.wait(10)
    await wait_for(lambda: holder(kube) == follower.identity, within=30, what="takeover")
    takeover = time.monotonic() - killed
    print(f"takeover after SIGKILL: {takeover:.2f}s (lease duration 3s, retry period 0.5s)")
    # Its queue holds every delivery (2 x 6); each finds its alert claimed on its Deployment.
    await wait_for(
        lambda: _claims_lost(follower, 2 * len(TARGETS)), within=30, what="its queue worked off"
    )
    assert {name: replicas_of(kube, name) for name in TARGETS} == dict.fromkeys(TARGETS, 3)
    assert await follower.metric("inferwatch_remediation_leader") == 1
    assert kube.leases[LEASE]["spec"]["leaseTransitions"] >= 1

    # ... and a new alert is acted on by the new leader.
    await deliver(follower, alert_for("after", 99))
    await wait_for(lambda: replicas_of(kube, "after") == 3, what="the new leader acts")


async def _serving(replica: Replica) -> bool:
    return await replica.metric("inferwatch_remediation_leader") is not None


async def _claims_lost(replica: Replica, count: int) -> bool:
    return await replica.metric("inferwatch_remediation_claims_lost_total") == count


async def started_backend(kube: FakeKubeApi, tmp_path: Path) -> KubernetesBackend:
    backend = KubernetesBackend(
        KubernetesSettings(
            kubeconfig=kube.write_kubeconfig(tmp_path / "kubeconfig"), retry_backoff_seconds=0.01
        ),
        ["llm"],
    )
    await backend.start()
    return backend


def parse_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def test_a_partitioned_leader_stops_before_its_lease_expires(
    kube: FakeKubeApi, tmp_path: Path
) -> None:
    backend = await started_backend(kube, tmp_path)
    settings = LeaderElectionSettings(**{**ELECTION, "identity": "alone"})
    elector = LeaderElector(settings, backend.api_client)
    ha = HighAvailability(elector, backend)
    elector.start()
    try:
        await wait_for(lambda: elector.leading, what="leading")
        lease = kube.leases[LEASE]["spec"]
        assert lease["holderIdentity"] == "alone"
        assert lease["leaseDurationSeconds"] == 3
        # The partition: every Lease request from now on fails.
        for method in ("GET", "PUT"):
            kube.fail(method, "/leases/", 503, times=10**6)
        await wait_for(lambda: not elector.leading, within=10, what="stopped leading")
        stopped = time.time()
        lease = kube.leases[LEASE]["spec"]
        expires = parse_time(lease["renewTime"]) + lease["leaseDurationSeconds"]
        assert stopped < expires, "it stopped leading only after others could take the lease"
        # Fencing: at the commit point it no longer claims, so it cannot act.
        ref = TargetRef(namespace="llm", deployment="web-0")
        with pytest.raises(NotLeader):
            await ha.claim(ref, "deployment", "alert-1", 60)
        assert not kube.calls("PATCH", "/deployments/web-0$")
    finally:
        await elector.stop()
        await backend.close()


async def test_claims_need_the_current_resource_version(kube: FakeKubeApi, tmp_path: Path) -> None:
    """Two replicas claiming one alert at once: one wins, the other sees the winner."""
    backend = await started_backend(kube, tmp_path)
    ref = TargetRef(namespace="llm", deployment="web-0")
    try:
        # Another replica claims between this one's read and its write.
        rival = {"alert-1": {"holder": "replica-b", "at": time.time()}}
        kube.before(
            "PATCH",
            "/deployments/web-0$",
            lambda: kube.annotate("llm", "web-0", {CLAIM_ANNOTATION: json.dumps(rival)}),
        )
        assert await backend.claim(ref, "deployment", "alert-1", "replica-a", 60) == "replica-b"
        assert kube.calls("PATCH", "/deployments/web-0$")[0].body["metadata"]["resourceVersion"]
        # A different alert on the same Deployment is claimed alongside.
        assert await backend.claim(ref, "deployment", "alert-2", "replica-a", 60) is None
        claims = json.loads(
            kube.deployments[("llm", "web-0")]["metadata"]["annotations"][CLAIM_ANNOTATION]
        )
        assert {k: v["holder"] for k, v in claims.items()} == {
            "alert-1": "replica-b",
            "alert-2": "replica-a",
        }
    finally:
        await backend.close()
