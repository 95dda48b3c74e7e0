"""Kubernetes: a success is a verified rollout, and the remediator never fights another controller.

The real remediator and kubernetes_asyncio client against harness/kube_api.py, whose
Deployment controller rolls pods out with maxSurge/maxUnavailable and can leave new pods unready,
and whose HPA and ScaledObject controllers set replicas back on every tick like the real ones.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from harness.kube_api import FakeKubeApi, pod_model
from remediations.backends.kubernetes import ORIGINAL_MIN_ANNOTATION
from tests.remediations.conftest import results, running, wait_for
from tests.remediations.test_kubernetes import k8s_config, notification, playbook, send

SWAP = {
    "alertname": "InferwatchLLMCapacityExhausted",
    "remediation": "swap_model",
    "namespace": "llm",
    "deployment": "web",
}
SCALE = {
    "alertname": "InferwatchLLMQueueBacklog",
    "remediation": "scale_up",
    "namespace": "llm",
    "deployment": "web",
}


@pytest.fixture
async def kube() -> AsyncIterator[FakeKubeApi]:
    async with FakeKubeApi() as api:
        api.add_node("node-a")
        api.add_node("node-b")
        api.add_deployment(
            "llm",
            "web",
            2,
            annotations={"inferwatch.io/lighter-model": "llama-3-1b"},
            progress_deadline_seconds=1,
        )
        yield api


def model(kube: FakeKubeApi) -> str:
    env = kube.deployments[("llm", "web")]["spec"]["template"]["spec"]["containers"][0]["env"]
    return str(env[0]["value"])


def serving_models(kube: FakeKubeApi) -> set[str | None]:
    """What the ready pods of web run."""
    return {
        pod_model(p)
        for p in kube.pods_of("llm", "web")
        if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"]["conditions"])
    }


def swap_playbook(tmp_path: Path) -> str:
    return playbook(
        tmp_path, "swap_model", "swap_model", quiet_period_seconds=0.2, ready_timeout_seconds=10
    )


async def test_a_swap_whose_pods_never_get_ready_fails_and_is_rolled_back(
    tmp_path: Path, kube: FakeKubeApi
) -> None:
    kube.unready_models.add("llama-3-1b")
    cfg = k8s_config(tmp_path, kube, playbooks=swap_playbook(tmp_path))
    async with running(cfg) as (url, remediator):
        await send(url, notification(SWAP))
        (failed,) = await wait_for(lambda: results(remediator, "failed"), what="the failure")
        assert "(web exceeded its progress deadline)" in failed.reason
        assert "rolled back to llama-3-8b" in failed.reason
        # nothing to swap back: the rollback already put the original model back
        assert remediator.state.swap("deployment/llm/web") is None
    assert model(kube) == "llama-3-8b"
    assert serving_models(kube) == {"llama-3-8b"}
    assert len(kube.pods_of("llm", "web")) == 2
    # the patch that went out, then the one that undid it
    patched = [
        r.body["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"]
        for r in kube.calls("PATCH", "/deployments/web$")
    ]
    assert patched == ["llama-3-1b", "llama-3-8b"]
    (event,) = kube.events
    assert event["type"] == "Warning" and "rolled back" in event["message"]


async def test_a_swap_back_that_does_not_roll_out_keeps_the_lighter_model_and_retries_later(
    tmp_path: Path, kube: FakeKubeApi
) -> None:
    cfg = k8s_config(tmp_path, kube, playbooks=swap_playbook(tmp_path))
    async with running(cfg) as (url, remediator):
        await send(url, notification(SWAP))
        (done,) = await wait_for(lambda: results(remediator, "succeeded"), what="the swap")
        assert "2/2 ready pods serve llama-3-1b" in done.reason
        assert serving_models(kube) == {"llama-3-1b"}
        kube.unready_models.add("llama-3-8b")  # the big model no longer starts (e.g. no memory)
        await send(url, notification(SWAP, status="resolved"))
        (failed,) = await wait_for(lambda: results(remediator, "failed"), what="the swap back")
        assert failed.reason.startswith("swap web back to llama-3-8b: llama-3-8b did not roll out")
        assert "rolled back to llama-3-1b" in failed.reason
        swap = remediator.state.swap("deployment/llm/web")
        assert swap is not None and swap.back_at is not None  # tried again later
    assert model(kube) == "llama-3-1b"
    assert serving_models(kube) == {"llama-3-1b"}


async def test_scale_with_an_hpa_raises_its_minimum_and_restores_it(
    tmp_path: Path, kube: FakeKubeApi
) -> None:
    kube.add_hpa("llm", "web", "web", min_replicas=1, max_replicas=6)
    cfg = k8s_config(tmp_path, kube, guards={"recheck": False, "cooldown_seconds": 600})
    async with running(cfg) as (url, remediator):
        await send(url, notification(SCALE))
        (done,) = await wait_for(lambda: results(remediator, "succeeded"), what="the scale")
        assert done.reason.startswith(
            "raise HorizontalPodAutoscaler web's minimum from 1 to 3: 3/3 replicas"
        )
        hpa = kube.hpas[("llm", "web")]
        assert hpa["spec"]["minReplicas"] == 3
        assert hpa["metadata"]["annotations"][ORIGINAL_MIN_ANNOTATION] == "1"
        # The replicas were never patched: the HPA did the scaling, and does not undo it.
        assert kube.calls("PATCH", "/scale$") == []
        writes = len(kube.autoscaler_writes)
        for _ in range(10):
            kube.tick()
        assert kube.deployments[("llm", "web")]["spec"]["replicas"] == 3
        assert len(kube.autoscaler_writes) == writes  # no flapping
        await send(url, notification(SCALE, status="resolved"))
        await wait_for(
            lambda: kube.hpas[("llm", "web")]["spec"]["minReplicas"] == 1, what="the restore"
        )
    assert ORIGINAL_MIN_ANNOTATION not in kube.hpas[("llm", "web")]["metadata"]["annotations"]
    # the metric still wants 2, so the HPA goes back there on its own
    assert [w[2] for w in kube.autoscaler_writes] == [3, 2]


async def test_scale_can_be_told_to_leave_autoscaled_deployments_alone(
    tmp_path: Path, kube: FakeKubeApi
) -> None:
    kube.add_scaled_object("llm", "web", "web", min_count=1, max_count=6)
    cfg = k8s_config(
        tmp_path, kube, playbooks=playbook(tmp_path, "scale", "scale_up", autoscaler="block")
    )
    async with running(cfg) as (url, remediator):
        await send(url, notification(SCALE))
        (blocked,) = await wait_for(lambda: results(remediator, "blocked"), what="the block")
    assert blocked.reason == "owned_by_autoscaler: ScaledObject web owns web's replicas"
    assert [r for r in kube.requests if r.method != "GET"] == []


async def test_scale_through_a_keda_scaled_object(tmp_path: Path, kube: FakeKubeApi) -> None:
    kube.add_scaled_object("llm", "web", "web", min_count=0, max_count=6)
    async with running(k8s_config(tmp_path, kube)) as (url, remediator):
        await send(url, notification(SCALE))
        (done,) = await wait_for(lambda: results(remediator, "succeeded"), what="the scale")
    assert done.reason.startswith("raise ScaledObject web's minimum from 0 to 3")
    (patch,) = kube.calls("PATCH", "/scaledobjects/web$")
    assert patch.content_type.startswith("application/merge-patch+json")
    assert kube.scaled_objects[("llm", "web")]["spec"]["minReplicaCount"] == 3
    assert kube.deployments[("llm", "web")]["spec"]["replicas"] == 3


async def test_scale_racing_another_writer_re_reads_and_steps_once(
    tmp_path: Path, kube: FakeKubeApi
) -> None:
    # kubectl scale lands between our read and our write: our write is conditional, gets 409,
    # and the step is applied to what the other writer left (2 -> 3 by them, 3 -> 4 by us).
    kube.before("PATCH", "/deployments/web/scale$", lambda: kube.set_replicas("llm", "web", 3))
    async with running(k8s_config(tmp_path, kube)) as (url, remediator):
        await send(url, notification(SCALE))
        (done,) = await wait_for(lambda: results(remediator, "succeeded"), what="the scale")
    statuses = [r.body["spec"]["replicas"] for r in kube.calls("PATCH", "/scale$")]
    assert statuses == [3, 4]  # the first was refused (409), the second applied
    assert kube.deployments[("llm", "web")]["spec"]["replicas"] == 4
    assert "(set 4 after 1 concurrent change(s))" in done.reason


async def test_a_failed_scale_starts_the_cooldown(tmp_path: Path, kube: FakeKubeApi) -> None:
    kube.unready_models.add("llama-3-8b")  # new pods never get ready
    cfg = k8s_config(
        tmp_path,
        kube,
        playbooks=playbook(tmp_path, "scale", "scale_up", ready_timeout_seconds=0.5),
        guards={"recheck": False, "cooldown_seconds": 600},
    )
    async with running(cfg) as (url, remediator):
        await send(url, notification(SCALE))
        (failed,) = await wait_for(lambda: results(remediator, "failed"), what="the failure")
        assert "2 of 3 updated replicas available" in failed.reason
        await send(url, notification(SCALE, fingerprint="00000000000000bb"))
        (blocked,) = await wait_for(lambda: results(remediator, "blocked"), what="the cooldown")
    assert blocked.reason.startswith("cooldown: deployment/llm/web was acted on recently")
    assert len(kube.calls("PATCH", "/scale$")) == 1


async def test_drain_node_names_the_pdb_that_blocked_and_keeps_the_node_cordoned(
    tmp_path: Path, kube: FakeKubeApi
) -> None:
    kube.add_pdb("llm", "web-pdb", {"app": "web"}, min_available=2)
    cfg = k8s_config(
        tmp_path,
        kube,
        playbooks=playbook(tmp_path, "drain_node", "drain_node", eviction_timeout_seconds=0.5),
    )
    labels = {"alertname": "InferwatchGPUXidCritical", "remediation": "drain_node"}
    async with running(cfg) as (url, remediator):
        await send(url, notification({**labels, "node": "node-a"}))
        (failed,) = await wait_for(lambda: results(remediator, "failed"), what="the drain")
        assert "cordoned node-a; evicted 0 pod(s)" in failed.reason
        assert "PodDisruptionBudget web-pdb blocked 2 pod(s) for 0.5s" in failed.reason
        assert failed.reason.endswith("the node stays cordoned")
        # counted against max_nodes: a second node is not drained
        await send(url, notification({**labels, "node": "node-b"}, fingerprint="00000000000000bb"))
        (blocked,) = await wait_for(lambda: results(remediator, "blocked"), what="the cap")
    assert blocked.reason == "bounds: 1 already cordoned (max 1): ['node-a']"
    assert kube.nodes["node-a"]["spec"]["unschedulable"] is True
    evictions = kube.calls("POST", "/eviction$")
    assert len(evictions) > 2  # the 429s were retried until the timeout
    (event,) = [e for e in kube.events if e["involvedObject"]["kind"] == "Node"]
    assert "stays cordoned" in event["message"] and event["type"] == "Warning"


async def test_a_node_a_human_cordoned_does_not_count(tmp_path: Path, kube: FakeKubeApi) -> None:
    kube.nodes["node-b"]["spec"]["unschedulable"] = True  # kubectl cordon node-b
    kube.add_node("node-c")
    labels = {"alertname": "InferwatchGPUXidCritical", "remediation": "drain_node"}
    async with running(k8s_config(tmp_path, kube)) as (url, remediator):
        await send(url, notification({**labels, "node": "node-a"}))
        (done,) = await wait_for(lambda: results(remediator, "succeeded"), what="the drain")
    assert "cordoned node-a; evicted 2 pod(s)" in done.reason
    assert kube.nodes["node-a"]["metadata"]["annotations"] == {
        "inferwatch.io/cordoned-by": "inferwatch-remediator"
    }
    assert "inferwatch.io/cordoned-by" not in kube.nodes["node-b"]["metadata"]["annotations"]
    # the evicted pods came back on the one schedulable node
    await wait_for(lambda: len(kube.pods_of("llm", "web")) == 2, what="replacements")
    assert {p["spec"]["nodeName"] for p in kube.pods_of("llm", "web")} == {"node-c"}


async def test_an_autoscaler_minimum_is_restored_after_the_cooldown(
    tmp_path: Path, kube: FakeKubeApi
) -> None:
    kube.add_hpa("llm", "web", "web", min_replicas=2, max_replicas=6)
    cfg = k8s_config(tmp_path, kube, guards={"recheck": False, "cooldown_seconds": 1})
    async with running(cfg) as (url, remediator):
        await send(url, notification(SCALE))
        await wait_for(lambda: results(remediator, "succeeded"), what="the scale")
        assert kube.hpas[("llm", "web")]["spec"]["minReplicas"] == 3
        # the alert never resolves: the cooldown's end restores the minimum
        (restored,) = await wait_for(
            lambda: [
                e for e in results(remediator, "succeeded") if e.reason.startswith("restored")
            ],
            what="the restore",
        )
    assert restored.reason == "restored HorizontalPodAutoscaler web's minimum to 2"
    assert kube.hpas[("llm", "web")]["spec"]["minReplicas"] == 2


async def test_terminating_pods_count_as_leaving_and_event_failures_are_counted(
    tmp_path: Path, kube: FakeKubeApi
) -> None:
    kube.termination_seconds = 60  # the first pod stays Terminating through the drain
    first = kube.pods_of("llm", "web")[0]["metadata"]["name"]
    kube._terminate(("llm", first))
    kube.fail("POST", "/events$", 403, times=10, reason="Forbidden")
    labels = {"alertname": "InferwatchGPUXidCritical", "remediation": "drain_node"}
    async with running(k8s_config(tmp_path, kube)) as (url, remediator):
        await send(url, notification({**labels, "node": "node-a"}))
        (done,) = await wait_for(lambda: results(remediator, "succeeded"), what="the drain")
        errors = remediator.metrics.errors.labels("record_event")._value.get()
    # the Deployment had already replaced it: two running pods evicted, the Terminating one not
    assert "evicted 2 pod(s), 1 already leaving" in done.reason
    assert first not in [r.path.split("/")[-2] for r in kube.calls("POST", "/eviction$")]
    assert errors == 1  # the Event could not be written: logged and counted, not swallowed
