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
# scale looks for an HPA, then a KEDA ScaledObject, owning the Deployment, and patches the
# minimum of the one it finds: only clusters with an autoscaler use the patches.
AUTOSCALER_WRITES: set[Rule] = {
    ("autoscaling", "horizontalpodautoscalers", "patch"),
    ("keda.sh", "scaledobjects", "patch"),
}
NAMESPACED: dict[str, set[Rule]] = {
    "scale": RESOLVE
    | AUTOSCALER_WRITES
    | {
        ("apps", "deployments/scale", "patch"),
        ("autoscaling", "horizontalpodautoscalers", "list"),
        ("keda.sh", "scaledobjects", "list"),
    },
    "swapModel": RESOLVE | {("apps", "deployments", "patch"), ("", "pods", "list")},
    "restart": RESOLVE | {("", "pods", v) for v in ("list", "patch", "delete")},
    "drain": RESOLVE | {("", "pods", v) for v in ("list", "patch")},
    "drainNode": {("", "pods/eviction", "create")},
}
CLUSTER: dict[str, set[Rule]] = {
    "drainNode": {("", "nodes", v) for v in ("get", "list", "patch")}
    | {("", "pods", "list"), ("", "events", "create")},
}
ACTIONS = list(NAMESPACED)
# With leader election (the default: two replicas) each action keeps its claim, cooldown,
# attempts and in-progress record in annotations on the target: patches of the Deployment
# (namespaced actions) or of the Node (drain_node, which patches nodes anyway); a new leader
# lists the Deployments (or Nodes) to adopt them.
CLAIM: set[Rule] = {("apps", "deployments", "patch"), ("apps", "deployments", "list")}
# ... and the replicas elect a leader on a Lease in the release namespace, beside which a
# ConfigMap holds the kill switch and circuit breaker they share.
LEADER_ELECTION: set[Rule] = {
    (group, resource, verb)
    for group, resource in (("coordination.k8s.io", "leases"), ("", "configmaps"))
    for verb in ("get", "create", "update")
}
RELEASE_NAMESPACE = "monitoring"


def namespaced_with_claims(action: str) -> set[Rule]:
    return NAMESPACED[action] | (CLAIM if action != "drainNode" else set())


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


def render(
    helm: Helm, enabled: set[str], namespaces: list[str], replicas: int = 2
) -> list[dict[str, Any]]:
    actions = {a: a in enabled for a in ACTIONS}
    return helm.template(
        {"remediator": {"actions": actions, "namespaces": namespaces, "replicas": replicas}}
    )


def action_roles(by_kind: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [r for r in by_kind["Role"] if not r["metadata"]["name"].endswith("-leader-election")]


def leader_role(by_kind: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    found = [r for r in by_kind["Role"] if r["metadata"]["name"].endswith("-leader-election")]
    return found[0] if found else None


def grants(
    helm: Helm, enabled: set[str], replicas: int = 2
) -> tuple[set[Rule], set[Rule], set[Rule]]:
    """(namespaced, cluster, leader election) grants rendered for these actions, in llm."""
    by_kind = kinds(render(helm, enabled, ["llm"], replicas))
    (role,) = action_roles(by_kind)
    assert role["metadata"]["namespace"] == "llm"
    cluster = [flatten(r["rules"]) for r in by_kind.get("ClusterRole", [])]
    leader = leader_role(by_kind)
    if leader is not None:
        assert leader["metadata"]["namespace"] == RELEASE_NAMESPACE
        (binding,) = [
            b for b in by_kind["RoleBinding"] if b["roleRef"]["name"] == leader["metadata"]["name"]
        ]
        assert binding["metadata"]["namespace"] == RELEASE_NAMESPACE
    leases = flatten(leader["rules"]) if leader is not None else set()
    return flatten(role["rules"] or []), set().union(*cluster), leases


@pytest.mark.parametrize("action", ACTIONS)
def test_each_action_alone_grants_exactly_what_it_uses(helm: Helm, action: str) -> None:
    namespaced, cluster, leases = grants(helm, {action})
    assert namespaced == namespaced_with_claims(action)
    assert leases == LEADER_ELECTION
    assert cluster == CLUSTER.get(action, set())
    by_kind = kinds(render(helm, {action}, ["llm"]))
    if action in CLUSTER:
        (binding,) = by_kind["ClusterRoleBinding"]
        assert binding["roleRef"]["name"] == by_kind["ClusterRole"][0]["metadata"]["name"]
    else:
        assert "ClusterRole" not in by_kind and "ClusterRoleBinding" not in by_kind


@pytest.mark.parametrize("action", ACTIONS)
def test_one_replica_claims_nothing_and_needs_no_lease(helm: Helm, action: str) -> None:
    namespaced, _, leases = grants(helm, {action}, replicas=1)
    assert namespaced == NAMESPACED[action]
    assert leases == set()


def test_default_actions_grant_the_union_per_namespace_and_bind_the_service_account(
    helm: Helm,
) -> None:
    default = {"scale", "restart", "drain", "swapModel"}
    docs = render(helm, default, ["llm", "llm-canary"])
    by_kind = kinds(docs)
    want = set().union(*(namespaced_with_claims(a) for a in default))
    assert sorted(r["metadata"]["namespace"] for r in action_roles(by_kind)) == [
        "llm",
        "llm-canary",
    ]
    for role in action_roles(by_kind):
        assert flatten(role["rules"]) == want
    (sa,) = by_kind["ServiceAccount"]
    for binding in by_kind["RoleBinding"]:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "monitoring"}
        ]
    deployment = by_kind["StatefulSet"][0]["spec"]["template"]["spec"]
    assert deployment["serviceAccountName"] == sa["metadata"]["name"]
    assert "ClusterRole" not in by_kind


def test_rbac_can_be_left_to_the_cluster_admin(helm: Helm) -> None:
    docs = helm.template(
        {"remediator": {"rbac": {"create": False}, "actions": {"drainNode": True}}}
    )
    assert not {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"} & set(kinds(docs))


def test_remediator_config_namespaces_match_the_roles(helm: Helm) -> None:
    docs = render(helm, {"restart"}, ["llm", "llm-canary"])
    roles = sorted(r["metadata"]["namespace"] for r in action_roles(kinds(docs)))
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


async def used_by(action: str, tmp_path: Path) -> tuple[set[Rule], set[Rule], set[Rule]]:
    """Run one action for real against the recording API, as a leader does: elect on the Lease,
    adopt the state the cluster keeps, claim the alert at the commit point, act, record the
    outcome and a flag on the cluster, release the Lease. The (namespaced, cluster, leader
    election) rules used."""
    from harness.kube_api import FakeKubeApi
    from remediations.actions import ActionContext, drain, drain_node, restart, scale, swap_model
    from remediations.backends.kubernetes import KubernetesBackend
    from remediations.cluster_state import ClusterState
    from remediations.config import KubernetesSettings, LeaderElectionSettings
    from remediations.leader import LeaderElector
    from remediations.targets import TargetRef
    from tests.remediations.conftest import wait_for

    async def commit(plan: str) -> None:
        claimed = await state.claim_target(
            ref,
            kind,  # type: ignore[arg-type]
            ref.key(kind),
            "alert-1",
            ttl_s=60,
            cooldown_s=60,
            max_attempts=3,
            attempts_window_s=60,
            record={"action": action, "plan": plan},
        )
        assert claimed is None

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
        election = LeaderElectionSettings(
            enabled=True,
            lease_namespace=RELEASE_NAMESPACE,
            lease_duration_seconds=3,
            renew_deadline_seconds=2,
            retry_period_seconds=0.5,
        )
        elector = LeaderElector(election, backend.api_client)
        state = ClusterState(
            tmp_path / "state.db", namespace=RELEASE_NAMESPACE, config_map="remediator-state"
        )
        state.bind(backend, "replica-a", lambda: elector.leading, lambda where, what: None)
        elector.start()
        try:
            await wait_for(lambda: elector.leading, what="leading")
            node_action = action == "drainNode"
            await state.adopt(
                deployments=not node_action,
                nodes=node_action,
                autoscalers=action == "scale",
                ttl_s=60,
            )
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
            state.record_attempt(ref.key(kind), ok=True, cooldown=60)
            state.set_flag("consecutive_failures", 0)  # creates the ConfigMap ...
            await state.written()
            state.set_flag("kill_switch", 1)  # ... and updates it
            await state.written()
        finally:
            await state.unbind(5)
            state.close()
            await elector.stop()  # releases the Lease: a read and an update
            await backend.close()
        namespaced: set[Rule] = set()
        cluster: set[Rule] = set()
        leases: set[Rule] = set()
        for request in api.requests:
            is_namespaced, rule = as_rule(request.method, request.path, request.query)
            if rule[1] in ("leases", "configmaps"):
                assert f"/namespaces/{RELEASE_NAMESPACE}/" in request.path, request.path
                leases.add(rule)
            else:
                (namespaced if is_namespaced else cluster).add(rule)
        return namespaced, cluster, leases


@pytest.mark.parametrize("action", ACTIONS)
async def test_the_backend_uses_only_what_the_chart_grants(
    helm: Helm, action: str, tmp_path: Path
) -> None:
    namespaced, cluster, leases = await used_by(action, tmp_path)
    granted_ns, granted_cluster, granted_leases = grants(helm, {action})
    assert leases == granted_leases
    # A cluster-wide grant also covers namespaced requests (node events go to "default").
    assert namespaced <= granted_ns | granted_cluster, namespaced - granted_ns
    assert cluster <= granted_cluster, cluster - granted_cluster
    # ... and the grant is not wider than what the action needs in this run, except reading the
    # alert's pod and its ReplicaSet, which only alerts with a pod label trigger.
    assert granted_ns | granted_cluster <= namespaced | cluster | RESOLVE | AUTOSCALER_WRITES, (
        granted_ns | granted_cluster
    ) - (namespaced | cluster)
