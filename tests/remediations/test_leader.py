"""High availability: leader election on a Lease, and the state the cluster keeps.

Against the Kubernetes API stand-in (harness/kube_api.py, which does Leases, ConfigMaps and
resourceVersion preconditions as kube-apiserver does): two real `inferwatch-remediator`
processes get the same alert storm (as HA Alertmanagers deliver it) and act on each target
once; SIGKILL the leader and the other takes over, acting on none of what was already done;
SIGKILL it in the middle of a model swap and the other records the interrupted action, does not
swap again, and swaps back from the record on the Deployment once the alert resolved; a
cooldown and a kill switch hold across replicas; a real Alertmanager 0.25 notifying both
replicas gets one action; a leader that cannot reach the API stops leading before its Lease can
expire for others. The takeover times are printed (figures, not assertions).
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
from types import SimpleNamespace
from typing import Any
from unittest import mock

import aiohttp
import pytest
import yaml

from harness.kube_api import FakeKubeApi
from harness.services import LOOPBACK, ManagedProcess, alertmanager, free_port
from remediations.alertmanager import Alert
from remediations.backends.kubernetes import KubernetesBackend
from remediations.cluster_state import CLAIM_ANNOTATION, ClusterState
from remediations.config import KubernetesSettings, LeaderElectionSettings, load_config
from remediations.engine import Remediator
from remediations.guards import Blocked, Guard
from remediations.leader import HighAvailability, LeaderElector, NotLeader
from remediations.metrics import Metrics
from remediations.playbook import load_playbooks
from remediations.state import State
from remediations.targets import TargetRef
from tests.remediations.conftest import TOKEN, am_alert, post_alerts, running, wait_for
from tests.remediations.test_kubernetes import k8s_config, notification

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

    def __init__(
        self, tmp_path: Path, kube: FakeKubeApi, identity: str, playbooks: Path | None = None
    ) -> None:
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
        if playbooks is not None:
            config["playbooks"] = str(playbooks)
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
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(found.group(1)) if found else None

    async def actions(self) -> list[dict[str, Any]]:
        """Its audit log of finished actions (GET /actions)."""
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"{self.url}/actions", headers=AUTH) as resp,
        ):
            assert resp.status == 200, await resp.text()
            return list((await resp.json())["actions"])

    def kill(self) -> None:
        """SIGKILL: no drain, no Lease release; what it kept in memory is gone."""
        self.process.signal(signal.SIGKILL)
        assert self.process.proc is not None
        self.process.proc.wait(10)

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
    await deliver_to(replica.url, payload)


async def deliver_to(url: str, payload: dict[str, Any]) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{url}/alerts", json=payload, headers=AUTH) as resp,
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
    leader, follower = await leader_and_follower(kube, replicas)
    assert await leader.metric("inferwatch_remediation_leader") == 1
    assert await follower.metric("inferwatch_remediation_leader") == 0

    # The storm: every alert to both replicas, twice, at once (HA Alertmanagers and retries).
    storm = [alert_for(name, n) for n, name in enumerate(TARGETS)]
    await asyncio.gather(*(deliver(r, p) for p in storm for r in replicas for _ in range(2)))
    for name in TARGETS:
        await wait_for(lambda name=name: replicas_of(kube, name) > 2, what=f"{name} scaled")
    # The follower holds the newest notification of each alert (not every delivery).
    assert await follower.metric("inferwatch_remediation_follower_held_alerts") == len(TARGETS)
    assert await follower.metric("inferwatch_remediation_queue_depth") == 0

    # Lose the leader: the follower takes over and works through its own queue.
    killed = time.monotonic()
    leader.process.signal(signal.SIGKILL)
    assert leader.process.proc is not None
    leader.process.proc.wait(10)
    await wait_for(lambda: holder(kube) == follower.identity, within=30, what="takeover")
    takeover = time.monotonic() - killed
    print(f"takeover after SIGKILL: {takeover:.2f}s (lease duration 3s, retry period 0.5s)")
    # It queues what it held (one per alert); it adopted the claims kept on each Deployment,
    # so each is blocked as handled already, and none repeated.
    await wait_for(
        lambda: _handled_already(follower, len(TARGETS)), within=30, what="its queue worked off"
    )
    assert {name: replicas_of(kube, name) for name in TARGETS} == dict.fromkeys(TARGETS, 3)
    assert await follower.metric("inferwatch_remediation_leader") == 1
    assert kube.leases[LEASE]["spec"]["leaseTransitions"] >= 1

    # ... and a new alert is acted on by the new leader.
    await deliver(follower, alert_for("after", 99))
    await wait_for(lambda: replicas_of(kube, "after") == 3, what="the new leader acts")


async def _serving(replica: Replica) -> bool:
    return await replica.metric("inferwatch_remediation_leader") is not None


async def leader_and_follower(
    kube: FakeKubeApi, replicas: list[Replica]
) -> tuple[Replica, Replica]:
    """The replica holding the Lease, and the other once it serves."""
    by_name = {r.identity: r for r in replicas}
    leader = by_name[await wait_for(lambda: holder(kube), within=30, what="a leader")]
    follower = next(r for r in replicas if r is not leader)
    await wait_for(lambda: _serving(follower), what="the follower serving")
    return leader, follower


async def _handled_already(replica: Replica, count: int) -> bool:
    blocked = 'inferwatch_remediation_guard_blocks_total{guard="idempotency"}'
    return await replica.metric(blocked) == count


async def started_backend(kube: FakeKubeApi, tmp_path: Path) -> KubernetesBackend:
    backend = KubernetesBackend(
        KubernetesSettings(
            kubeconfig=kube.write_kubeconfig(tmp_path / "kubeconfig"), retry_backoff_seconds=0.01
        ),
        ["llm"],
    )
    await backend.start()
    return backend


def cluster_state(tmp_path: Path, backend: KubernetesBackend, identity: str) -> ClusterState:
    """The state a replica keeps on the cluster, bound as the app binds it (always leading)."""
    state = ClusterState(
        tmp_path / f"{identity}.db", namespace="llm", config_map="inferwatch-remediator-state"
    )
    state.bind(backend, identity, lambda: True, lambda where, what: None)
    return state


def parse_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def test_a_partitioned_leader_stops_before_its_lease_expires(
    kube: FakeKubeApi, tmp_path: Path
) -> None:
    backend = await started_backend(kube, tmp_path)
    settings = LeaderElectionSettings(**{**ELECTION, "identity": "alone"})
    elector = LeaderElector(settings, backend.api_client)
    ha = HighAvailability(elector, cluster_state(tmp_path, backend, "alone"))
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
        await ha.state.unbind(1)
        ha.state.close()
        await backend.close()


async def test_claims_need_the_current_resource_version(kube: FakeKubeApi, tmp_path: Path) -> None:
    """Two replicas claiming one alert at once: one wins, the other sees the winner."""
    backend = await started_backend(kube, tmp_path)
    state = cluster_state(tmp_path, backend, "replica-a")
    ref = TargetRef(namespace="llm", deployment="web-0")

    async def claim(alert: str) -> str | None:
        return await state.claim_target(
            ref,
            "deployment",
            "deployment/llm/web-0",
            alert,
            ttl_s=60,
            cooldown_s=0,
            max_attempts=3,
            attempts_window_s=60,
            record={"action": "scale"},
        )

    try:
        # Another replica claims between this one's read and its write.
        rival = {"alert-1": {"holder": "replica-b", "at": time.time()}}
        kube.before(
            "PATCH",
            "/deployments/web-0$",
            lambda: kube.annotate("llm", "web-0", {CLAIM_ANNOTATION: json.dumps(rival)}),
        )
        assert await claim("alert-1") == "replica-b"
        assert kube.calls("PATCH", "/deployments/web-0$")[0].body["metadata"]["resourceVersion"]
        # A different alert on the same Deployment is claimed alongside.
        assert await claim("alert-2") is None
        claims = json.loads(
            kube.deployments[("llm", "web-0")]["metadata"]["annotations"][CLAIM_ANNOTATION]
        )
        assert {k: v["holder"] for k, v in claims.items()} == {
            "alert-1": "replica-b",
            "alert-2": "replica-a",
        }
    finally:
        await state.unbind(1)
        state.close()
        await backend.close()


# -- failover with state the cluster keeps --------------------------------------------------------

LIGHTER = "inferwatch.io/lighter-model"
SWAP_RESTORE = "inferwatch.io/swap-restore"
IN_PROGRESS = "inferwatch.io/in-progress"
CHAT = "deployment/llm/chat"  # the target's key in the per-target annotations


def swap_playbooks(tmp_path: Path) -> Path:
    """swap_model with no quiet period (swap back as soon as the alert resolved), and a rollout
    that may take a minute; scale as by default."""
    path = tmp_path / "playbooks.yaml"
    playbooks = [
        {"name": "swap", "match": {"remediation": "swap_model"}, "action": "swap_model"},
        {"name": "scale-up", "match": {"remediation": "scale_up"}, "action": "scale"},
    ]
    playbooks[0]["params"] = {"quiet_period_seconds": 0, "ready_timeout_seconds": 60}
    playbooks[1]["params"] = {"direction": "up", "step": 1, "max_replicas": 8}
    path.write_text(yaml.safe_dump({"playbooks": playbooks}))
    return path


def model_of(kube: FakeKubeApi, name: str) -> str:
    container = kube.deployments[("llm", name)]["spec"]["template"]["spec"]["containers"][0]
    return str(next(e["value"] for e in container["env"] if e["name"] == "MODEL"))


def annotation(kube: FakeKubeApi, name: str, key: str) -> Any:
    value = kube.deployments[("llm", name)]["metadata"]["annotations"].get(key)
    return None if value is None else json.loads(value)


def model_patches(kube: FakeKubeApi, name: str, model: str) -> int:
    """PATCHes of the Deployment that set its MODEL to `model`."""
    return sum(
        1
        for r in kube.calls("PATCH", f"/deployments/{name}$")
        if model in json.dumps(((r.body or {}).get("spec") or {}).get("template", {}))
    )


def swap_alert(status: str = "firing") -> dict[str, Any]:
    labels = {
        "alertname": "InferwatchCapacityExhausted",
        "remediation": "swap_model",
        "namespace": "llm",
        "deployment": "chat",
    }
    return notification(labels, fingerprint="00000000000000c1", status=status)


@pytest.mark.timeout(120)
async def test_the_leader_killed_mid_swap_the_new_one_records_it_and_swaps_back(
    kube: FakeKubeApi, tmp_path: Path
) -> None:
    kube.add_deployment("llm", "chat", 2, model="llama-3-70b", annotations={LIGHTER: "llama-3-8b"})
    kube.unready_models.add("llama-3-8b")  # the swap's rollout hangs: the leader waits on it
    playbooks = swap_playbooks(tmp_path)
    replicas = [Replica(tmp_path, kube, name, playbooks) for name in ("replica-a", "replica-b")]
    try:
        leader, follower = await leader_and_follower(kube, replicas)
        await asyncio.gather(*(deliver(r, swap_alert()) for r in replicas))

        # Mid-action: the lighter model is rolling out, what to restore is on the Deployment.
        await wait_for(lambda: model_of(kube, "chat") == "llama-3-8b", what="the swap started")
        record = annotation(kube, "chat", SWAP_RESTORE)
        assert record["original"] == "llama-3-70b" and record["inFlight"] is True
        assert annotation(kube, "chat", IN_PROGRESS)[CHAT]["holder"] == leader.identity
        killed = time.monotonic()
        leader.kill()
        await wait_for(lambda: holder(kube) == follower.identity, within=30, what="takeover")
        takeover = time.monotonic() - killed
        print(f"takeover after SIGKILL mid-swap: {takeover:.2f}s (lease duration 3s)")

        # The new leader records the interrupted action and ends the swap it cannot resume.
        await wait_for(lambda: annotation(kube, "chat", IN_PROGRESS) is None, what="recorded")
        (entry,) = [e for e in await follower.actions() if e["result"] != "blocked"]
        assert entry["result"] == "failed" and "interrupted" in entry["reason"], entry
        assert leader.identity in entry["reason"]
        assert annotation(kube, "chat", SWAP_RESTORE)["inFlight"] is False
        assert annotation(kube, "chat", "inferwatch.io/attempts")[CHAT]["failures"] == 1
        # ... and does not swap again: its queued copy of the alert was handled already.
        await wait_for(lambda: _handled_already(follower, 1), what="the queued alert found handled")
        assert model_patches(kube, "chat", "llama-3-8b") == 1

        # The alert resolves: the new leader swaps back to what the dead one recorded.
        kube.unready_models.clear()
        await deliver(follower, swap_alert("resolved"))
        await wait_for(lambda: model_of(kube, "chat") == "llama-3-70b", what="swapped back")
        await wait_for(lambda: annotation(kube, "chat", SWAP_RESTORE) is None, what="dropped")
        back = [e for e in await follower.actions() if e["result"] == "succeeded"]
        assert [e["action"] for e in back] == ["swap_model"], back
    finally:
        for replica in replicas:
            replica.stop()


@pytest.mark.timeout(120)
async def test_a_cooldown_set_by_one_replica_holds_on_the_next_leader(
    kube: FakeKubeApi, replicas: list[Replica]
) -> None:
    leader, follower = await leader_and_follower(kube, replicas)
    await deliver(leader, alert_for("web-0", 1))
    await wait_for(lambda: replicas_of(kube, "web-0") == 3, what="web-0 scaled")
    until = json.loads(
        kube.deployments[("llm", "web-0")]["metadata"]["annotations"][
            "inferwatch.io/cooldown-until"
        ]
    )
    assert parse_time(until["deployment/llm/web-0"]) > time.time() + 500  # default: 600 s

    leader.kill()
    await wait_for(lambda: holder(kube) == follower.identity, within=30, what="takeover")
    # A new episode of the alert (another start) on the same target, to the new leader only.
    again = alert_for("web-0", 2)
    again["alerts"][0]["startsAt"] = "2026-01-01T00:00:00Z"
    await deliver(follower, again)
    blocked = 'inferwatch_remediation_guard_blocks_total{guard="cooldown"}'
    await wait_for(lambda: _metric_is(follower, blocked, 1), what="blocked by the cooldown")
    assert replicas_of(kube, "web-0") == 3


@pytest.mark.timeout(60)
async def test_the_kill_switch_set_through_a_follower_stops_the_leader(
    kube: FakeKubeApi, replicas: list[Replica]
) -> None:
    leader, follower = await leader_and_follower(kube, replicas)
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{follower.url}/killswitch", json={"enabled": True}, headers=AUTH) as resp,
    ):
        assert resp.status == 200 and (await resp.json()) == {"kill_switch": True}
    (state,) = [cm for key, cm in kube.config_maps.items() if key[0] == "llm"]
    assert state["data"]["kill_switch"] == "1"
    await deliver(leader, alert_for("web-1", 1))
    blocked = 'inferwatch_remediation_guard_blocks_total{guard="kill_switch"}'
    await wait_for(lambda: _metric_is(leader, blocked, 1), what="blocked by the kill switch")
    assert replicas_of(kube, "web-1") == 2
    # ... and shows it (read from the ConfigMap every retry period).
    await wait_for(lambda: _metric_is(leader, "inferwatch_remediation_kill_switch", 1), within=5)


async def _metric_is(replica: Replica, name: str, value: float) -> bool:
    return await replica.metric(name) == value


@pytest.mark.timeout(120)
async def test_a_real_alertmanager_routing_to_both_replicas_gets_one_action(
    kube: FakeKubeApi, replicas: list[Replica], tmp_path: Path
) -> None:
    """Alertmanager 0.25 with one receiver naming both replicas' addresses (what it does with a
    headless Service's pod addresses): both get the notification, the leader acts once."""
    leader, follower = await leader_and_follower(kube, replicas)
    auth = {"authorization": {"type": "Bearer", "credentials": TOKEN}}
    config = {
        "route": {
            "receiver": "remediators",
            "group_by": ["..."],
            "group_wait": "0s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {
                "name": "remediators",
                "webhook_configs": [
                    {"url": f"{r.url}/alerts", "send_resolved": True, "http_config": auth}
                    for r in replicas
                ],
            }
        ],
    }
    workdir = tmp_path / "alertmanager"
    workdir.mkdir()
    (workdir / "am.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    manager = await alertmanager(workdir / "am.yml", workdir, port).start_async()
    try:
        labels = {
            "alertname": "InferwatchLLMQueueBacklog",
            "remediation": "scale_up",
            "namespace": "llm",
            "deployment": "web-3",
        }
        post_alerts(f"http://{LOOPBACK}:{port}", [am_alert(labels)])
        delivered = 'inferwatch_remediation_webhook_requests_total{code="202"}'
        for replica in replicas:
            await wait_for(
                lambda replica=replica: _metric_is(replica, delivered, 1),
                what=f"{replica.identity} notified",
            )
        await wait_for(lambda: replicas_of(kube, "web-3") == 3, what="web-3 scaled")
        succeeded = 'inferwatch_remediation_actions_total{action="scale",result="succeeded"}'
        assert await leader.metric(succeeded) == 1
        assert await follower.metric(succeeded) == 0
        # The follower's copy waits for leadership; it can never act on it again (the claim).
        assert await follower.metric("inferwatch_remediation_follower_held_alerts") == 1
    finally:
        manager.stop()


async def test_pods_of_one_deployment_keep_their_own_facts_on_it(
    kube: FakeKubeApi, tmp_path: Path
) -> None:
    """Replica actions keep cooldowns per pod, in maps on the pod's Deployment (a restarted pod
    is replaced; its Deployment stays): one pod cooling down does not block its sibling."""
    backend = await started_backend(kube, tmp_path)
    state = cluster_state(tmp_path, backend, "replica-a")

    async def claim(pod: str, alert: str) -> str | None:
        ref = TargetRef(namespace="llm", deployment="web-0", replica=pod)
        return await state.claim_target(
            ref,
            "replica",
            ref.key("replica"),
            alert,
            ttl_s=60,
            cooldown_s=600,
            max_attempts=3,
            attempts_window_s=60,
            record={"action": "restart"},
        )

    try:
        assert await claim("web-0-a", "alert-1") is None
        assert await claim("web-0-b", "alert-2") is None
        with pytest.raises(Blocked) as blocked:
            await claim("web-0-a", "alert-3")
        assert blocked.value.guard is Guard.COOLDOWN
        notes = kube.deployments[("llm", "web-0")]["metadata"]["annotations"]
        cooling = json.loads(notes["inferwatch.io/cooldown-until"])
        assert set(cooling) == {"replica/llm/web-0-a", "replica/llm/web-0-b"}
        running = json.loads(notes["inferwatch.io/in-progress"])
        assert {t: r["holder"] for t, r in running.items()} == dict.fromkeys(cooling, "replica-a")
    finally:
        await state.unbind(1)
        state.close()
        await backend.close()


async def test_a_new_leader_acts_only_once_it_adopted_the_cluster_state(
    kube: FakeKubeApi, tmp_path: Path
) -> None:
    """While the cluster's state cannot be read at takeover (listing the Deployments fails),
    the leader acts on nothing; the failure is logged and counted, and it acts once it could."""
    kube.fail("GET", "/namespaces/llm/deployments$", 503, times=1 + 3)  # one adoption's tries
    cfg = k8s_config(tmp_path, kube, leader_election={**ELECTION, "identity": "alone"})
    async with running(cfg) as (url, remediator):
        await deliver_to(url, alert_for("web-2", 1))

        def failed_adoptions() -> float:
            sample = remediator.metrics.registry.get_sample_value(
                "inferwatch_remediation_errors_total", {"where": "take_over"}
            )
            return sample or 0.0

        await wait_for(lambda: failed_adoptions() >= 1, what="a failed adoption counted")
        assert replicas_of(kube, "web-2") == 2  # nothing acted on before the adoption
        await wait_for(lambda: replicas_of(kube, "web-2") == 3, within=30, what="acted")
        assert failed_adoptions() == 1


@pytest.mark.timeout(120)
async def test_an_autoscaler_minimum_raised_by_the_old_leader_is_restored_by_the_new_one(
    kube: FakeKubeApi, replicas: list[Replica]
) -> None:
    kube.add_hpa("llm", "web-5", "web-5", min_replicas=2, max_replicas=6)
    leader, follower = await leader_and_follower(kube, replicas)
    await deliver(leader, alert_for("web-5", 5))
    await wait_for(lambda: replicas_of(kube, "web-5") == 3, what="web-5 scaled by its HPA")
    assert kube.hpas[("llm", "web-5")]["spec"]["minReplicas"] == 3

    leader.kill()
    await wait_for(lambda: holder(kube) == follower.identity, within=30, what="takeover")
    resolved = alert_for("web-5", 5)
    resolved["status"] = resolved["alerts"][0]["status"] = "resolved"
    await deliver(follower, resolved)
    await wait_for(
        lambda: kube.hpas[("llm", "web-5")]["spec"]["minReplicas"] == 2, what="the restore"
    )
    annotations = kube.hpas[("llm", "web-5")]["metadata"]["annotations"]
    assert "inferwatch.io/original-min-replicas" not in annotations


async def test_a_follower_holds_the_newest_copy_of_each_alert_and_expires_them(
    kube: FakeKubeApi, tmp_path: Path
) -> None:
    """Weeks of following must not fill its queue (which would answer Alertmanager 503s): one
    copy per alert (a later episode replaces an earlier one, an older delivery never does), for
    at most the idempotency TTL, at most queue_size of them."""
    guards = {"recheck": False, "idempotency_ttl_seconds": 60}
    config = k8s_config(tmp_path, kube, queue_size=3, guards=guards)
    metrics = Metrics()
    elector = SimpleNamespace(leading=False, term=0)
    remediator = Remediator(
        config,
        load_playbooks(config.playbooks),
        State(tmp_path / "state.db"),
        None,  # type: ignore[arg-type] # never reached: a follower acts on nothing
        None,
        metrics,
        ha=SimpleNamespace(elector=elector),  # type: ignore[arg-type]
    )

    def alert(fingerprint: str, minute: int) -> Alert:
        payload = notification({"deployment": "web-0"}, fingerprint=fingerprint)["alerts"][0]
        payload["startsAt"] = f"2026-12-07T06:{minute:02d}:00Z"
        return Alert.model_validate(payload)

    clock = [1000.0]
    with mock.patch("remediations.engine.time.monotonic", lambda: clock[0]):
        assert remediator.submit([alert("a", 1), alert("a", 1), alert("b", 1)])
        assert remediator.submit([alert("a", 5), alert("a", 3)])  # newest episode wins
        held = {a.fingerprint: a.startsAt.minute for a in remediator.held_alerts()}
        assert held == {"a": 5, "b": 1}
        assert remediator.queue.qsize() == 0

        clock[0] += 61  # past the TTL: the leader's claims are gone, so are the copies
        assert remediator.submit([alert("c", 7)])
        assert [a.fingerprint for a in remediator.held_alerts()] == ["c"]
        assert remediator.submit([alert(f, 8) for f in "defg"])  # over queue_size: oldest out
        assert [a.fingerprint for a in remediator.held_alerts()] == ["e", "f", "g"]
    assert metrics.held_dropped._value.get() == 4  # a, b expired; c, d over the cap
