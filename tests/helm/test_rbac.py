"""The remediator's RBAC grants what the enabled actions use and nothing else.

Two checks: the rendered rules equal the table below for every action on its own, and the
table is what the real kubernetes backend uses: each action runs against the recording
Kubernetes API stand-in, and every request it makes maps to a granted (group, resource, verb).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm.conftest import Helm, kinds

Rule = tuple[str, str, str]  # (apiGroup, resource, verb)

# Every namespaced action resolves its target (the alert's pod, that pod's ReplicaSet, the
# Deployment) and records an Event.
RESOLVE: set[Rule] = {
    ("", "events", "create"),
    ("", "pods", "get"),
    ("apps", "replicasets", "get"),
    ("apps", "deployments", "get"),
}
NAMESPACED: dict[str, set[Rule]] = {
    "scale": RESOLVE | {("apps", "deployments/scale", "patch")},
    "swapModel": RESOLVE | {("apps", "deployments", "patch")},
    "restart": RESOLVE | {("", "pods", v) for v in ("list", "patch", "delete")},
    "drain": RESOLVE | {("", "pods", v) for v in ("list", "patch")},
    "drainNode": {("", "pods/eviction", "create")},
}
CLUSTER: dict[str, set[Rule]] = {
    "drainNode": {("", "nodes", v) for v in ("get", "list", "patch")}
    | {("", "pods", "list"), ("", "events", "create")},
}
ACTIONS = list(NAMESPACED)


def flatten(rules: list[dict[str, Any]]) -> set[Rule]:
    out: set[Rule] = set()
    for rule in rules:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), rule
                    out.add((group, resource, verb))
    return out


def render(helm: Helm, enabled: set[str], namespaces: list[str]) -> list[dict[str, Any]]:
    actions = {a: a in enabled for a in ACTIONS}
    return helm.template({"remediator": {"actions": actions, "namespaces": namespaces}})


def grants(helm: Helm, enabled: set[str]) -> tuple[set[Rule], set[Rule]]:
    """(namespaced, cluster) grants rendered for these actions, in namespace llm."""
    by_kind = kinds(render(helm, enabled, ["llm"]))
    (role,) = by_kind["Role"]
    assert role["metadata"]["namespace"] == "llm"
    cluster = [flatten(r["rules"]) for r in by_kind.get("ClusterRole", [])]
    return flatten(role["rules"] or []), set().union(*cluster)


@pytest.mark.parametrize("action", ACTIONS)
def test_each_action_alone_grants_exactly_what_it_uses(helm: Helm, action: str) -> None:
    namespaced, cluster = grants(helm, {action})
    assert namespaced == NAMESPACED[action]
    assert cluster == CLUSTER.get(action, set())
    by_kind = kinds(render(helm, {action}, ["llm"]))
    if action in CLUSTER:
        (binding,) = by_kind["ClusterRoleBinding"]
        assert binding["roleRef"]["name"] == by_kind["ClusterRole"][0]["metadata"]["name"]
    else:
        assert "ClusterRole" not in by_kind and "ClusterRoleBinding" not in by_kind


def test_default_actions_grant_the_union_per_namespace_and_bind_the_service_account(
    helm: Helm,
) -> None:
    default = {"scale", "restart", "drain", "swapModel"}
    docs = render(helm, default, ["llm", "llm-canary"])
    by_kind = kinds(docs)
    want = set().union(*(NAMESPACED[a] for a in default))
    assert sorted(r["metadata"]["namespace"] for r in by_kind["Role"]) == ["llm", "llm-canary"]
    for role in by_kind["Role"]:
        assert flatten(role["rules"]) == want
    (sa,) = by_kind["ServiceAccount"]
    for binding in by_kind["RoleBinding"]:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "monitoring"}
        ]
    deployment = by_kind["Deployment"][0]["spec"]["template"]["spec"]
    assert deployment["serviceAccountName"] == sa["metadata"]["name"]
    assert "ClusterRole" not in by_kind


def test_rbac_can_be_left_to_the_cluster_admin(helm: Helm) -> None:
    docs = helm.template(
        {"remediator": {"rbac": {"create": False}, "actions": {"drainNode": True}}}
    )
    assert not {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"} & set(kinds(docs))


def test_remediator_config_namespaces_match_the_roles(helm: Helm) -> None:
    docs = render(helm, {"restart"}, ["llm", "llm-canary"])
    roles = sorted(r["metadata"]["namespace"] for r in kinds(docs)["Role"])
    config = next(
        yaml.safe_load(d["data"]["remediator.yaml"])
        for d in kinds(docs)["ConfigMap"]
        if "remediator.yaml" in d.get("data", {})
    )
    assert sorted(config["namespaces"]) == roles


def test_exporter_gets_pod_list_watch_only_with_pod_discovery(helm: Helm) -> None:
    assert "ServiceAccount" not in {
        d["kind"] for d in helm.template({"remediator": {"enabled": False}})
    }
    discovery = {"collectors": {"llm": {"kubernetes": {"enabled": True}}}}
    docs = helm.template({"remediator": {"enabled": False}, "exporter": discovery})
    by_kind = kinds(docs)
    (cluster_role,) = by_kind["ClusterRole"]
    assert flatten(cluster_role["rules"]) == {("", "pods", "list"), ("", "pods", "watch")}
    pod = by_kind["DaemonSet"][0]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == by_kind["ServiceAccount"][0]["metadata"]["name"]

    discovery["collectors"]["llm"]["kubernetes"]["namespace"] = "llm"
    by_kind = kinds(helm.template({"remediator": {"enabled": False}, "exporter": discovery}))
    assert "ClusterRole" not in by_kind
    (role,) = by_kind["Role"]
    assert role["metadata"]["namespace"] == "llm"
    assert flatten(role["rules"]) == {("", "pods", "list"), ("", "pods", "watch")}


# -- what the real backend does -----------------------------------------------------------------

_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)(?:/namespaces/(?P<ns>[^/]+))?"
    r"/(?P<resource>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?$"
)
_VERB = {"POST": "create", "PATCH": "patch", "DELETE": "delete", "PUT": "update"}


def as_rule(method: str, path: str, query: dict[str, str]) -> tuple[bool, Rule]:
    """(namespaced?, rule) that authorizes one API request."""
    m = _PATH.match(path)
    assert m, path
    resource = m["resource"] + (f"/{m['sub']}" if m["sub"] else "")
    if method == "GET":
        verb = "get" if m["name"] else ("watch" if query.get("watch") else "list")
    else:
        verb = _VERB[method]
    return m["ns"] is not None, (m["group"] or "", resource, verb)


async def used_by(action: str, tmp_path: Path) -> tuple[set[Rule], set[Rule]]:
    """Run one action for real against the recording API; the (namespaced, cluster) rules used."""
    from remediations.actions import ActionContext, drain, drain_node, restart, scale, swap_model
    from remediations.backends.kubernetes import KubernetesBackend
    from remediations.config import KubernetesSettings
    from remediations.targets import TargetRef
    from tests.support.kube_api import FakeKubeApi

    async def commit(plan: str) -> None:
        return None

    async with FakeKubeApi() as api:
        api.add_node("gpu-node-1")
        api.add_deployment(
            "llm",
            "vllm",
            3,
            node="gpu-node-1",
            annotations={"inferwatch.io/lighter-model": "llama-3-1b"},
        )
        pod = api.pods_of("llm", "vllm")[0]["metadata"]["name"]
        settings = KubernetesSettings(
            kubeconfig=api.write_kubeconfig(tmp_path / "kubeconfig"), poll_interval_seconds=0.01
        )
        backend = KubernetesBackend(settings, ["llm"])
        await backend.start()
        try:
            ctx = ActionContext(backend, None, False, 0.5, commit)
            kind = {"drainNode": "node", "restart": "replica", "drain": "replica"}.get(
                action, "deployment"
            )
            ref = TargetRef(namespace="llm", replica=pod, node="gpu-node-1")
            ref = await backend.resolve(ref, kind)  # type: ignore[arg-type]
            run = {
                "scale": lambda: scale.run(ctx, ref, scale.ScaleParams(ready_timeout_seconds=5)),
                "swapModel": lambda: swap_model.run(
                    ctx, ref, swap_model.SwapModelParams(ready_timeout_seconds=5)
                ),
                "restart": lambda: restart.run(
                    ctx,
                    ref,
                    restart.RestartParams(
                        drain_timeout_seconds=0, ready_timeout_seconds=5, poll_seconds=0.01
                    ),
                ),
                "drain": lambda: drain.run(
                    ctx, ref, drain.DrainParams(inflight_timeout_seconds=0, poll_seconds=0.01)
                ),
                "drainNode": lambda: drain_node.run(
                    ctx, ref, drain_node.DrainNodeParams(eviction_timeout_seconds=5)
                ),
            }[action]
            outcome = await run()
            assert outcome.result == "succeeded", outcome
            await backend.record_event(ref, kind, "Inferwatch", "done", True)  # type: ignore[arg-type]
        finally:
            await backend.close()
        namespaced: set[Rule] = set()
        cluster: set[Rule] = set()
        for request in api.requests:
            is_namespaced, rule = as_rule(request.method, request.path, request.query)
            (namespaced if is_namespaced else cluster).add(rule)
        return namespaced, cluster


@pytest.mark.parametrize("action", ACTIONS)
async def test_the_backend_uses_only_what_the_chart_grants(
    helm: Helm, action: str, tmp_path: Path
) -> None:
    namespaced, cluster = await used_by(action, tmp_path)
    granted_ns, granted_cluster = grants(helm, {action})
    # A cluster-wide grant also covers namespaced requests (node events go to "default").
    assert namespaced <= granted_ns | granted_cluster, namespaced - granted_ns
    assert cluster <= granted_cluster, cluster - granted_cluster
    # ... and the grant is not wider than what the action needs in this run, except reading the
    # alert's pod and its ReplicaSet, which only alerts with a pod label trigger.
    assert granted_ns | granted_cluster <= namespaced | cluster | RESOLVE, (
        granted_ns | granted_cluster
    ) - (namespaced | cluster)
