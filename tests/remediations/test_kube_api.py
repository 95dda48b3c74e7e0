"""The Kubernetes API stand-in is as strict as the real API server where our code depends on it.

A stand-in that accepts what kube-apiserver rejects hides bugs, so each behaviour the backends and
the exporter's pod discovery rely on is pinned here with plain HTTP requests: patch semantics by
content type, optimistic concurrency, the Deployment rollout, evictions under a
PodDisruptionBudget, selectors, and watches that end with 410 Gone. The last test drives the real
exporter pod discovery through a compaction and an API restart.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness.kube_api import JSON_PATCH, MERGE, STRATEGIC, TOKEN, FakeKubeApi, engine_pod

DEP = "/apis/apps/v1/namespaces/llm/deployments/web"


@pytest.fixture
async def kube() -> AsyncIterator[FakeKubeApi]:
    async with FakeKubeApi() as api:
        api.add_node("node-a")
        api.add_deployment("llm", "web", 2, progress_deadline_seconds=1)
        yield api


async def call(
    kube: FakeKubeApi,
    method: str,
    path: str,
    body: Any = None,
    content_type: str = "application/json",
    **query: str,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": content_type}
    data = None if body is None else json.dumps(body)
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, kube.url + path, data=data, headers=headers, params=query) as resp,
    ):
        text = await resp.text()
        return resp.status, (json.loads(text) if text.startswith("{") else text)


def env_patch(model: str) -> dict[str, Any]:
    container = {"name": "engine", "env": [{"name": "MODEL", "value": model}]}
    return {"spec": {"template": {"spec": {"containers": [container]}}}}


async def test_patch_semantics_follow_the_content_type(kube: FakeKubeApi) -> None:
    # strategic merge: containers merge by name, the image stays
    status, dep = await call(kube, "PATCH", DEP, env_patch("small"), STRATEGIC)
    assert status == 200
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "vllm/vllm-openai:v0.11.0"
    assert container["env"] == [{"name": "MODEL", "value": "small"}]
    # JSON merge patch (RFC 7386) replaces the list: a container without an image is invalid
    status, body = await call(kube, "PATCH", DEP, env_patch("other"), MERGE)
    assert (status, body["reason"]) == (422, "Invalid")
    assert "containers[0].image: Required value" in body["message"]
    # JSON patch (RFC 6902)
    ops = [
        {"op": "test", "path": "/spec/replicas", "value": 2},
        {"op": "replace", "path": "/spec/template/spec/containers/0/env/0/value", "value": "x"},
    ]
    status, dep = await call(kube, "PATCH", DEP, ops, JSON_PATCH)
    assert status == 200
    assert dep["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] == "x"
    status, body = await call(kube, "PATCH", DEP, env_patch("y"), "application/json")
    assert status == 415 and body["reason"] == "UnsupportedMediaType"


async def test_custom_resources_take_merge_patches_only(kube: FakeKubeApi) -> None:
    kube.add_scaled_object("llm", "web", "web", min_count=1, max_count=4)
    path = "/apis/keda.sh/v1alpha1/namespaces/llm/scaledobjects/web"
    patch = {"spec": {"minReplicaCount": 2}}
    status, body = await call(kube, "PATCH", path, patch, STRATEGIC)
    assert (status, body["reason"]) == (415, "UnsupportedMediaType")
    status, body = await call(kube, "PATCH", path, patch, MERGE)
    assert status == 200 and body["spec"]["minReplicaCount"] == 2


async def test_writes_bump_the_resource_version_and_a_stale_one_is_a_conflict(
    kube: FakeKubeApi,
) -> None:
    _, before = await call(kube, "GET", DEP)
    version = before["metadata"]["resourceVersion"]
    patch = {"metadata": {"resourceVersion": version}, "spec": {"replicas": 3}}
    status, after = await call(kube, "PATCH", f"{DEP}/scale", patch, STRATEGIC)
    assert status == 200
    assert int(after["metadata"]["resourceVersion"]) > int(version)
    status, body = await call(kube, "PATCH", f"{DEP}/scale", patch, STRATEGIC)  # same, now stale
    assert (status, body["reason"]) == (409, "Conflict")
    assert "the object has been modified" in body["message"]
    assert kube.deployments[("llm", "web")]["spec"]["replicas"] == 3
    status, _ = await call(kube, "PATCH", f"{DEP}/scale", {"spec": {"replicas": -1}}, STRATEGIC)
    assert status == 422


async def test_a_rollout_goes_through_replica_sets_and_reports_progress(kube: FakeKubeApi) -> None:
    _, dep = await call(kube, "PATCH", DEP, env_patch("small"), STRATEGIC)
    generation = dep["metadata"]["generation"]
    assert generation == 2
    _, dep = await call(kube, "GET", DEP)
    status = dep["status"]
    assert status["observedGeneration"] == generation
    assert (status["updatedReplicas"], status["readyReplicas"], status["replicas"]) == (2, 2, 2)
    # one ReplicaSet per pod template: the old one scaled to 0, every pod owned by the new one
    sizes = {name: rs["spec"]["replicas"] for (_, name), rs in kube.replicasets.items()}
    assert sorted(sizes.values()) == [0, 2]
    owners = {p["metadata"]["ownerReferences"][0]["name"] for p in kube.pods_of("llm", "web")}
    assert owners == {name for name, size in sizes.items() if size == 2}
    # new pods that never get ready: the rollout stalls with maxUnavailable 0 of 2 ...
    kube.unready_models.add("broken")
    await call(kube, "PATCH", DEP, env_patch("broken"), STRATEGIC)
    _, dep = await call(kube, "GET", DEP)
    status = dep["status"]
    assert (status["updatedReplicas"], status["readyReplicas"], status["replicas"]) == (1, 2, 3)
    # ... until its progress deadline passes
    for _ in range(100):
        _, dep = await call(kube, "GET", DEP)
        progressing = next(c for c in dep["status"]["conditions"] if c["type"] == "Progressing")
        if progressing["reason"] == "ProgressDeadlineExceeded":
            break
        await asyncio.sleep(0.05)
    assert progressing["status"] == "False"


async def test_evictions_respect_pod_disruption_budgets(kube: FakeKubeApi) -> None:
    kube.add_pdb("llm", "web-pdb", {"app": "web"}, min_available=2)
    first, second = (p["metadata"]["name"] for p in kube.pods_of("llm", "web"))
    path = f"/api/v1/namespaces/llm/pods/{first}/eviction"
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": first}}
    status, body = await call(kube, "POST", path, eviction)
    assert (status, body["reason"]) == (429, "TooManyRequests")
    assert body["details"]["causes"] == [
        {
            "reason": "DisruptionBudget",
            "message": "The disruption budget web-pdb needs 2 healthy pods and has 2 currently",
        }
    ]
    status, _ = await call(kube, "POST", path, {**eviction, "metadata": {"name": second}})
    assert status == 400  # not this pod
    status, _ = await call(kube, "POST", path, {"kind": "Pod", "metadata": {"name": first}})
    assert status == 400
    kube.pdbs.clear()
    status, _ = await call(kube, "POST", path, eviction)
    assert status == 201
    pod = kube.pods[("llm", first)]
    assert "deletionTimestamp" in pod["metadata"]  # Terminating, then gone
    await _until(lambda: ("llm", first) not in kube.pods, 5)


async def test_set_based_selectors(kube: FakeKubeApi) -> None:
    kube.add_deployment("llm", "chat", 1)
    path = "/api/v1/namespaces/llm/pods"
    for selector, apps in [
        ("app in (web,chat)", {"web", "chat"}),
        ("app notin (web)", {"chat"}),
        ("app!=chat,inferwatch.io/inference", {"web"}),
        ("!app", set()),
    ]:
        _, pods = await call(kube, "GET", path, labelSelector=selector)
        assert {p["metadata"]["labels"]["app"] for p in pods["items"]} == apps, selector
    status, _ = await call(kube, "GET", path, labelSelector="app in web")
    assert status == 400
    status, _ = await call(kube, "GET", path, fieldSelector="spec.schedulerName=x")
    assert status == 400


async def test_watches_send_bookmarks_and_410_gone_for_a_compacted_version(
    kube: FakeKubeApi,
) -> None:
    kube.bookmark_seconds = 0.05
    _, listing = await call(kube, "GET", "/api/v1/pods")
    version = listing["metadata"]["resourceVersion"]
    headers = {"Authorization": f"Bearer {TOKEN}"}
    query = {"watch": "true", "resourceVersion": version, "allowWatchBookmarks": "true"}
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{kube.url}/api/v1/pods", params=query, headers=headers) as resp,
    ):
        line = await asyncio.wait_for(resp.content.readline(), 5)
        assert json.loads(line)["type"] == "BOOKMARK"
    kube.put_pod(engine_pod("late", namespace="llm"))
    kube.compact()
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{kube.url}/api/v1/pods", params=query, headers=headers) as resp,
    ):
        assert resp.status == 200
        event = json.loads(await asyncio.wait_for(resp.content.readline(), 5))
        assert event["type"] == "ERROR"
        assert (event["object"]["code"], event["object"]["reason"]) == (410, "Expired")
        assert await asyncio.wait_for(resp.content.read(), 5) == b""  # the stream ended


async def test_the_exporter_pod_watch_recovers_after_410_and_an_api_restart(
    tmp_path: Path,
) -> None:
    from exporter.collectors.llm import LlmSettings
    from exporter.engines.kubernetes import PodWatcher

    select = {"inferwatch.io/scrape": "true"}
    async with FakeKubeApi() as api:
        api.put_pod(engine_pod("a", ip="127.0.0.1", labels=select, ports={"http": 8000}))
        settings = LlmSettings.model_validate(
            {
                "kubernetes": {
                    "enabled": True,
                    "node_name": "node-a",
                    "kubeconfig": str(api.write_kubeconfig(tmp_path / "kubeconfig")),
                }
            }
        )
        assert settings.kubernetes is not None
        discovery = PodWatcher(settings.kubernetes)
        discovery.start()
        try:
            await _until(lambda: _names(discovery) == {"a"})
            # history compacted and every watch cut: the re-watch gets 410, then a relist
            api.put_pod(engine_pod("b", ip="127.0.0.1", labels=select, ports={"http": 8001}))
            await _until(lambda: _names(discovery) == {"a", "b"})
            api.compact()
            api.end_watches()
            api.put_pod(engine_pod("c", ip="127.0.0.1", labels=select, ports={"http": 8002}))
            await _until(lambda: _names(discovery) == {"a", "b", "c"})
            # the API server restarts on the same address
            await api.restart()
            api.remove_pod("default", "a")
            await _until(lambda: _names(discovery) == {"b", "c"})
        finally:
            await discovery.stop()
    lists = [r for r in api.requests if r.path == "/api/v1/pods" and "watch" not in r.query]
    assert len(lists) >= 2  # the first list, and a relist after the 410 (a cut watch resumes)


def _names(discovery: Any) -> set[str]:
    return {t.labels.get("pod") for t in discovery.targets()}


async def _until(predicate: Any, limit_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def test_an_hpa_undoes_a_replica_patch_like_the_real_controller(kube: FakeKubeApi) -> None:
    kube.add_hpa("llm", "web", "web", min_replicas=1, max_replicas=6)  # its metric wants 2
    status, _ = await call(kube, "PATCH", f"{DEP}/scale", {"spec": {"replicas": 4}}, STRATEGIC)
    assert status == 200
    kube.tick()
    assert kube.deployments[("llm", "web")]["spec"]["replicas"] == 2
    assert kube.autoscaler_writes == [("HorizontalPodAutoscaler", "llm/web", 2)]


LEASES = "/apis/coordination.k8s.io/v1/namespaces/monitoring/leases"


async def test_leases_are_created_once_and_updated_only_from_the_current_version(
    kube: FakeKubeApi,
) -> None:
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "remediator"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
    }
    status, body = await call(kube, "GET", f"{LEASES}/remediator")
    assert (status, body["reason"]) == (404, "NotFound")
    status, body = await call(kube, "PUT", f"{LEASES}/remediator", lease)
    assert (status, body["reason"]) == (404, "NotFound")  # an update does not create
    status, created = await call(kube, "POST", LEASES, lease)
    assert status == 201
    assert created["metadata"]["namespace"] == "monitoring"
    status, body = await call(kube, "POST", LEASES, lease)  # a second candidate, too late
    assert (status, body["reason"]) == (409, "AlreadyExists")

    # An update must say which version it replaces (Leases allow no unconditional update) ...
    taken = {**lease, "spec": {"holderIdentity": "b", "leaseDurationSeconds": 15}}
    status, body = await call(kube, "PUT", f"{LEASES}/remediator", taken)
    assert (status, body["reason"]) == (422, "Invalid")
    # ... and only the current one: of two candidates that read the same version, one wins.
    current = created["metadata"]["resourceVersion"]
    taken["metadata"] = {"name": "remediator", "resourceVersion": current}
    status, updated = await call(kube, "PUT", f"{LEASES}/remediator", taken)
    assert status == 200 and updated["spec"]["holderIdentity"] == "b"
    assert updated["metadata"]["resourceVersion"] != current
    rival = {**taken, "spec": {"holderIdentity": "c", "leaseDurationSeconds": 15}}
    status, body = await call(kube, "PUT", f"{LEASES}/remediator", rival)
    assert (status, body["reason"]) == (409, "Conflict")
    status, body = await call(kube, "GET", f"{LEASES}/remediator")
    assert body["spec"]["holderIdentity"] == "b"


CONFIG_MAPS = "/api/v1/namespaces/monitoring/configmaps"


async def test_config_maps_are_created_once_and_updated_only_from_the_current_version(
    kube: FakeKubeApi,
) -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "state"}}
    cm["data"] = {"kill_switch": "1"}
    status, body = await call(kube, "GET", f"{CONFIG_MAPS}/state")
    assert (status, body["reason"]) == (404, "NotFound")
    status, body = await call(kube, "PUT", f"{CONFIG_MAPS}/state", cm)
    assert (status, body["reason"]) == (404, "NotFound")
    status, created = await call(kube, "POST", CONFIG_MAPS, cm)
    assert status == 201
    status, body = await call(kube, "POST", CONFIG_MAPS, cm)  # another replica, too late
    assert (status, body["reason"]) == (409, "AlreadyExists")

    version = created["metadata"]["resourceVersion"]
    update = {**created, "data": {"kill_switch": "0"}}
    status, updated = await call(kube, "PUT", f"{CONFIG_MAPS}/state", update)
    assert status == 200 and updated["metadata"]["resourceVersion"] != version
    stale = {**created, "data": {"kill_switch": "1"}}  # still carries the first version
    status, body = await call(kube, "PUT", f"{CONFIG_MAPS}/state", stale)
    assert (status, body["reason"]) == (409, "Conflict")
    assert kube.config_maps[("monitoring", "state")]["data"] == {"kill_switch": "0"}

    for data, code in (({"bad key": "1"}, 422), ({"n": 1}, 400), ({"x": "y" * (1 << 20)}, 422)):
        status, body = await call(kube, "PUT", f"{CONFIG_MAPS}/state", {**updated, "data": data})
        assert status == code, (data.keys(), body)


async def test_annotation_keys_and_sizes_are_validated_like_apimachinery(
    kube: FakeKubeApi,
) -> None:
    def annotate(notes: dict[str, Any]) -> dict[str, Any]:
        return {"metadata": {"annotations": notes}}

    ok = {"inferwatch.io/cooldown-until": "{}", "Example.COM/Mixed_Case.name-1": "x"}
    status, dep = await call(kube, "PATCH", DEP, annotate(ok), STRATEGIC)
    assert status == 200, dep
    for bad in (
        {"inferwatch.io/": "x"},  # empty name
        {"/name": "x"},  # empty prefix
        {"a/b/c": "x"},  # two slashes
        {"under_score.io/name": "x"},  # the prefix is a DNS subdomain
        {"inferwatch.io/-leading": "x"},
        {"inferwatch.io/" + "n" * 64: "x"},  # a name of more than 63 characters
        {"big": "v" * (256 * 1024)},  # all annotations together over 256 KiB
    ):
        status, body = await call(kube, "PATCH", DEP, annotate(bad), STRATEGIC)
        assert (status, body["reason"]) == (422, "Invalid"), bad
    status, body = await call(kube, "PATCH", DEP, annotate({"n": 1}), MERGE)
    assert status == 400, body
    # Removing one (null) is fine, and nothing invalid was ever stored.
    gone = annotate({"Example.COM/Mixed_Case.name-1": None})
    status, dep = await call(kube, "PATCH", DEP, gone, STRATEGIC)
    assert status == 200
    assert dep["metadata"]["annotations"] == {"inferwatch.io/cooldown-until": "{}"}
