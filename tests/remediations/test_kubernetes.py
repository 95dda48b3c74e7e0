"""Kubernetes backend: the real kubernetes_asyncio client against harness/kube_api.py.

No kube-apiserver can run here; the loopback fake implements the endpoints we call with real
Kubernetes shapes and records every request, so the assertions are on the exact requests.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from harness.kube_api import FakeKubeApi
from harness.services import LOOPBACK, free_port
from remediations.config import RemediatorConfig, load_config
from tests.remediations.conftest import FIXTURES, TOKEN, audit, results, running, wait_for

AUTH = {"Authorization": f"Bearer {TOKEN}"}


class _AnyVersion(str):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and other.isdigit()

    __hash__ = str.__hash__


ANY_VERSION = _AnyVersion("<a resourceVersion>")


@pytest.fixture
async def kube() -> AsyncIterator[FakeKubeApi]:
    async with FakeKubeApi() as api:
        api.add_node("node-a")
        api.add_node("node-b")
        api.add_deployment(
            "llm", "web", 2, annotations={"inferwatch.io/lighter-model": "llama-3-1b"}
        )
        yield api


def k8s_config(tmp_path: Path, kube: FakeKubeApi, **overrides: Any) -> RemediatorConfig:
    data: dict[str, Any] = {
        "listen": f"{LOOPBACK}:{free_port()}",
        "token": TOKEN,
        "state": str(tmp_path / "state.db"),
        "backend": "kubernetes",
        "namespaces": ["llm"],
        "guards": {"recheck": False},
        "kubernetes": {
            "kubeconfig": str(kube.write_kubeconfig(tmp_path / "kubeconfig")),
            "retry_backoff_seconds": 0.01,
            "poll_interval_seconds": 0.05,
        },
    }
    data.update(overrides)
    path = tmp_path / "remediator.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path, environ={})


def playbook(tmp_path: Path, action: str, match: str, **params: Any) -> str:
    """A playbook file with one playbook: alerts with remediation=`match` run `action`."""
    path = tmp_path / f"{action}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "playbooks": [
                    {
                        "name": action,
                        "match": {"remediation": match},
                        "action": action,
                        "params": params,
                    }
                ]
            }
        )
    )
    return str(path)


def notification(
    labels: dict[str, str], fingerprint: str = "00000000000000aa", status: str = "firing"
) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((FIXTURES / "v0.25-firing.json").read_text())
    payload["status"] = status
    payload["alerts"][0].update(
        labels={"severity": "warning", **labels}, fingerprint=fingerprint, status=status
    )
    return payload


async def send(url: str, payload: dict[str, Any]) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{url}/alerts", json=payload, headers=AUTH) as resp,
    ):
        assert resp.status == 202


def mutations(kube: FakeKubeApi) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in kube.requests if r.method != "GET"]


async def test_scale_up_from_a_pod_label(tmp_path: Path, kube: FakeKubeApi) -> None:
    pod = kube.pods_of("llm", "web")[0]["metadata"]["name"]
    async with running(k8s_config(tmp_path, kube)) as (url, remediator):
        await send(
            url,
            notification(
                {
                    "alertname": "InferwatchLLMQueueBacklog",
                    "remediation": "scale_up",
                    "namespace": "llm",
                    "pod": pod,
                }
            ),
        )
        (done,) = await wait_for(lambda: results(remediator, "succeeded"), what="scale")
    assert done.target == "deployment/llm/web"
    assert mutations(kube) == [
        ("PATCH", "/apis/apps/v1/namespaces/llm/deployments/web/scale"),
        ("POST", "/api/v1/namespaces/llm/events"),
    ]
    patch = kube.calls("PATCH")[0]
    # conditional on the resourceVersion the decision was made from
    read = next(r for r in reversed(kube.calls("GET", "/deployments/web$")) if r is not patch)
    assert patch.body == {"spec": {"replicas": 3}, "metadata": {"resourceVersion": ANY_VERSION}}
    assert patch.content_type.startswith("application/strategic-merge-patch+json")
    assert read.path.endswith("/deployments/web")
    # the pod's owner chain was followed: pod -> replicaset -> deployment
    reads = [r.path for r in kube.calls("GET")]
    assert f"/api/v1/namespaces/llm/pods/{pod}" in reads
    rs = pod.rsplit("-", 1)[0]
    assert f"/apis/apps/v1/namespaces/llm/replicasets/{rs}" in reads
    # no autoscaler owns it (both kinds were looked for)
    assert "/apis/autoscaling/v2/namespaces/llm/horizontalpodautoscalers" in reads
    assert "/apis/keda.sh/v1alpha1/namespaces/llm/scaledobjects" in reads
    (event,) = kube.events
    assert event["involvedObject"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "web",
        "namespace": "llm",
    }
    assert event["reason"] == "InferwatchScale"
    assert event["type"] == "Normal"
    assert event["source"] == {"component": "inferwatch-remediator"}
    assert len(kube.pods_of("llm", "web")) == 3


async def test_restart_drains_by_label_then_deletes_the_pod(
    tmp_path: Path, kube: FakeKubeApi
) -> None:
    pod = kube.pods_of("llm", "web")[0]["metadata"]["name"]
    # No Prometheus: the drain waits its whole timeout (short here) before the restart.
    playbooks = playbook(tmp_path, "restart", "restart", drain_timeout_seconds=0.5)
    async with running(k8s_config(tmp_path, kube, playbooks=playbooks)) as (url, remediator):
        await send(
            url,
            notification(
                {
                    "alertname": "InferwatchLLMReplicaStalled",
                    "remediation": "restart",
                    "namespace": "llm",
                    "pod": pod,
                }
            ),
        )
        (done,) = await wait_for(lambda: results(remediator, "succeeded"), what="restart")
    assert mutations(kube) == [
        ("PATCH", f"/api/v1/namespaces/llm/pods/{pod}"),
        ("DELETE", f"/api/v1/namespaces/llm/pods/{pod}"),
        ("POST", "/api/v1/namespaces/llm/events"),
    ]
    assert kube.calls("PATCH")[0].body == {
        "metadata": {"labels": {"inferwatch.io/serving": "false"}}
    }
    assert "2/2 ready" in done.reason
    assert pod not in {p["metadata"]["name"] for p in kube.pods_of("llm", "web")}


async def test_drain_node_cordons_and_evicts_only_allowed_inference_pods(
    tmp_path: Path, kube: FakeKubeApi
) -> None:
    kube.add_deployment("other-team", "db", 1)  # on node-a too, but not an allowed namespace
    kube.fail("POST", r"/eviction$", 429, times=1, reason="TooManyRequests")  # a PDB says wait
    async with running(k8s_config(tmp_path, kube)) as (url, remediator):
        labels = {
            "alertname": "InferwatchGPUXidCritical",
            "remediation": "drain_node",
            "node": "node-a",
        }
        await send(url, notification(labels))
        (done,) = await wait_for(lambda: results(remediator, "succeeded"), what="drain_node")
        await send(url, notification({**labels, "node": "node-b"}, fingerprint="00000000000000bb"))
        (blocked,) = await wait_for(lambda: results(remediator, "blocked"), what="node cap")
    assert kube.nodes["node-a"]["spec"]["unschedulable"] is True
    assert "unschedulable" not in kube.nodes["node-b"]["spec"]
    assert kube.calls("PATCH", "/nodes/node-a")[0].body == {
        "metadata": {
            "resourceVersion": ANY_VERSION,
            "annotations": {"inferwatch.io/cordoned-by": "inferwatch-remediator"},
        },
        "spec": {"unschedulable": True},
    }
    evictions = kube.calls("POST", "/eviction$")
    assert {r.path.split("/")[4] for r in evictions} == {"llm"}
    assert len(evictions) == 3  # two pods, one retried after the 429
    assert evictions[0].body["metadata"]["namespace"] == "llm"
    listing = kube.calls("GET", r"^/api/v1/pods$")[0]
    assert listing.query == {
        "fieldSelector": "spec.nodeName=node-a",
        "labelSelector": "inferwatch.io/inference=true",
    }
    assert "evicted 2 pod(s)" in done.reason
    assert blocked.reason == "bounds: 1 already cordoned (max 1): ['node-a']"


async def test_swap_model_and_back_after_resolve_and_quiet_period(
    tmp_path: Path, kube: FakeKubeApi
) -> None:
    playbooks = tmp_path / "p.yaml"
    playbooks.write_text(
        yaml.safe_dump(
            {
                "playbooks": [
                    {
                        "name": "swap",
                        "match": {"remediation": "swap_model"},
                        "action": "swap_model",
                        "params": {"quiet_period_seconds": 0.2},
                    }
                ]
            }
        )
    )
    labels = {
        "alertname": "InferwatchLLMCapacityExhausted",
        "remediation": "swap_model",
        "namespace": "llm",
        "deployment": "web",
    }

    def model() -> str:
        env = kube.deployments[("llm", "web")]["spec"]["template"]["spec"]["containers"][0]["env"]
        return str(env[0]["value"])

    async with running(k8s_config(tmp_path, kube, playbooks=str(playbooks))) as (url, remediator):
        await send(url, notification(labels))
        await wait_for(lambda: results(remediator, "succeeded"), what="swap")
        assert model() == "llama-3-1b"
        patch = kube.calls("PATCH", "/deployments/web$")[0]
        assert patch.body == {
            "metadata": {"resourceVersion": ANY_VERSION},
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {"name": "engine", "env": [{"name": "MODEL", "value": "llama-3-1b"}]}
                        ]
                    }
                }
            },
        }
        await send(url, notification(labels, status="resolved"))
        await wait_for(lambda: len(results(remediator, "succeeded")) == 2, what="swap back")
        assert model() == "llama-3-8b"
        assert results(remediator, "succeeded")[0].reason == "swap web back to llama-3-8b"


async def test_conflicts_and_server_errors_are_retried(tmp_path: Path, kube: FakeKubeApi) -> None:
    kube.fail("PATCH", "/scale$", 409, times=1)
    kube.fail("PATCH", "/scale$", 503, times=2)
    async with running(k8s_config(tmp_path, kube)) as (url, remediator):
        await send(
            url,
            notification(
                {
                    "alertname": "A",
                    "remediation": "scale_up",
                    "namespace": "llm",
                    "deployment": "web",
                }
            ),
        )
        await wait_for(lambda: results(remediator, "succeeded"), what="scale")
    assert len(kube.calls("PATCH", "/scale$")) == 4
    assert kube.deployments[("llm", "web")]["spec"]["replicas"] == 3


async def test_persistent_errors_fail_the_action_without_retrying_4xx(
    tmp_path: Path, kube: FakeKubeApi
) -> None:
    kube.fail("PATCH", "/scale$", 500, times=100)
    kube.fail("PATCH", "/pods/", 403, times=100, reason="Forbidden")
    pod = kube.pods_of("llm", "web")[0]["metadata"]["name"]
    async with running(k8s_config(tmp_path, kube)) as (url, remediator):
        await send(
            url,
            notification(
                {
                    "alertname": "A",
                    "remediation": "scale_up",
                    "namespace": "llm",
                    "deployment": "web",
                }
            ),
        )
        await send(
            url,
            notification(
                {"alertname": "B", "remediation": "drain", "namespace": "llm", "pod": pod},
                fingerprint="00000000000000bb",
            ),
        )
        failed = await wait_for(
            lambda: len(results(remediator, "failed")) == 2 and results(remediator, "failed"),
            what="two failures",
        )
    assert len(kube.calls("PATCH", "/scale$")) == 4  # 1 + 3 retries
    assert len(kube.calls("PATCH", "/pods/")) == 1  # 403 is final
    reasons = {e.target.split("/")[0]: e.reason for e in failed}
    assert reasons["replica"] == "label pod: HTTP 403 Forbidden: injected 403"
    assert reasons["deployment"] == "scale: HTTP 500 Internal Server Error: injected 500"
    assert kube.deployments[("llm", "web")]["spec"]["replicas"] == 2
    warnings = [e for e in kube.events if e["type"] == "Warning"]
    assert len(warnings) == 2


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        (
            {"namespace": "kube-system", "deployment": "web"},
            "target: namespace 'kube-system' is not in the allow-list",
        ),
        ({"namespace": "llm", "deployment": "gone"}, "target: deployment llm/gone not found"),
        ({"namespace": "llm", "pod": "Web_0"}, "target: label replica='Web_0' is neither"),
        ({"deployment": "web"}, "target: the alert has no namespace label"),
        (
            {"namespace": "llm", "deployment": "pinned"},
            "opt_out: deployment llm/pinned has inferwatch.io/remediation=disabled",
        ),
    ],
)
async def test_targets_are_validated_and_opt_out_is_honoured(
    tmp_path: Path, kube: FakeKubeApi, labels: dict[str, str], reason: str
) -> None:
    kube.add_deployment("llm", "pinned", 1, annotations={"inferwatch.io/remediation": "disabled"})
    async with running(k8s_config(tmp_path, kube)) as (url, remediator):
        await send(url, notification({"alertname": "A", "remediation": "scale_up", **labels}))
        (entry,) = await wait_for(lambda: audit(remediator), what="the block")
    assert entry.result == "blocked"
    assert entry.reason.startswith(reason)
    assert mutations(kube) == []


async def test_wrong_credentials_fail_and_nothing_changes(
    tmp_path: Path, kube: FakeKubeApi
) -> None:
    cfg = k8s_config(tmp_path, kube)
    kube.token = "rotated"
    async with running(cfg) as (url, remediator):
        await send(
            url,
            notification(
                {
                    "alertname": "A",
                    "remediation": "scale_up",
                    "namespace": "llm",
                    "deployment": "web",
                }
            ),
        )
        (entry,) = await wait_for(lambda: audit(remediator), what="the failure")
    assert entry.result == "failed"
    assert entry.reason == "resolve: deployment llm/web: HTTP 401 Unauthorized: Unauthorized"
    assert mutations(kube) == []
