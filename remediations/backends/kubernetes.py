"""Kubernetes backend (kubernetes_asyncio): Deployments, Pods, Nodes; an Event for every action.

Least privilege: it reads and patches Deployments (and their scale subresource), reads
ReplicaSets to find a pod's Deployment, lists/patches/deletes Pods, creates pod evictions,
lists/patches Nodes and creates Events — and, under leader election, lists Deployments and
keeps the remediator's per-target facts in their (or the Node's) annotations (read_facts,
patch_facts: remediations.cluster_state) — nothing else. Throttling (429) and server errors (5xx)
are retried a few times with backoff; a conflict (409) means the object changed since it was
read, so the caller re-reads and decides again; anything else fails the action.

A change counts once it rolled out the way `kubectl rollout status` sees it: the controller
observed the new generation, every replica is updated, ready and available, and the rollout did
not exceed its progress deadline; a model swap also needs every ready pod to run the new model.
A model change that does not roll out within its time is rolled back to what ran before.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from exporter.settings import ConfigError
from remediations.backends import (
    Autoscaler,
    BackendError,
    Conflict,
    DeploymentInfo,
    ReplicaInfo,
    Rollout,
    TargetKind,
)
from remediations.config import KubernetesSettings
from remediations.guards import Blocked, Guard
from remediations.prom import escape_label_value
from remediations.targets import TargetError, TargetRef

log = logging.getLogger("remediations.kubernetes")
T = TypeVar("T")
RETRIED = {429}  # and 5xx; a 409 goes back to the caller to re-read and decide again
CONFLICT_RETRIES = 5
EVENT_KIND = {"deployment": "Deployment", "replica": "Pod", "node": "Node"}
# On an HPA or ScaledObject whose minimum the scale action raised: the minimum it had before.
ORIGINAL_MIN_ANNOTATION = "inferwatch.io/original-min-replicas"
KEDA = ("keda.sh", "v1alpha1", "scaledobjects")
# On a node the remediator cordoned; only those count against drain_node's max_nodes.
CORDONED_BY_ANNOTATION = "inferwatch.io/cordoned-by"
CORDONED_BY = "inferwatch-remediator"


class KubernetesBackend:
    name = "kubernetes"

    def __init__(
        self,
        settings: KubernetesSettings,
        namespaces: Sequence[str] = ("default",),
        *,
        configuration: client.Configuration | None = None,
    ) -> None:
        self.settings = settings
        self.namespaces = list(namespaces)
        self._configuration = configuration
        self._api: client.ApiClient | None = None

    async def start(self) -> None:
        cfg = self._configuration or await self._load_config()
        self._api = client.ApiClient(configuration=cfg)
        self.apps = client.AppsV1Api(self._api)
        self.core = client.CoreV1Api(self._api)
        self.autoscaling = client.AutoscalingV2Api(self._api)
        self.custom = client.CustomObjectsApi(self._api)

    async def _load_config(self) -> client.Configuration:
        cfg = client.Configuration()
        try:
            if self.settings.kubeconfig is not None:
                await config.load_kube_config(
                    config_file=str(self.settings.kubeconfig), client_configuration=cfg
                )
            else:
                try:
                    config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
                except config.ConfigException:
                    await config.load_kube_config(client_configuration=cfg)
        except (config.ConfigException, OSError) as exc:
            raise ConfigError(f"kubernetes: cannot load cluster credentials: {exc}") from None
        return cfg

    async def close(self) -> None:
        if self._api is not None:
            await self._api.close()
            self._api = None

    # -- calls with retries -------------------------------------------------------------------

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        delay = self.settings.retry_backoff_seconds
        for attempt in range(self.settings.request_retries + 1):
            try:
                return await fn()
            except ApiException as exc:
                if exc.status == 409:
                    raise Conflict(f"{what}: {_describe(exc)}", 409) from None
                retry = exc.status in RETRIED or (exc.status or 0) >= 500
                if not retry or attempt == self.settings.request_retries:
                    raise BackendError(f"{what}: {_describe(exc)}", exc.status) from None
                log.warning("%s: HTTP %s, retrying in %gs", what, exc.status, delay)
            await asyncio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    async def _read(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """A read whose 404 means the alert names something that does not exist."""
        try:
            return await self._call(what, fn)
        except BackendError as exc:
            if exc.status == 404:
                raise TargetError(f"{what} not found") from None
            raise

    def _opted_out(self, what: str, meta: Any) -> None:
        key = self.settings.opt_out_key
        for source in (meta.labels or {}, meta.annotations or {}):
            if source.get(key) == "disabled":
                raise Blocked(Guard.OPT_OUT, f"{what} has {key}=disabled")

    # -- Backend protocol ---------------------------------------------------------------------

    async def resolve(self, ref: TargetRef, kind: TargetKind) -> TargetRef:
        if kind == "node":
            if ref.node is None:
                raise TargetError("the alert has no node label")
            node = await self._read(
                f"node {ref.node}", functools.partial(self.core.read_node, ref.node)
            )
            self._opted_out(f"node {ref.node}", node.metadata)
            return ref
        if ref.namespace is None:
            raise TargetError("the alert has no namespace label and the playbook sets none")
        ns = ref.namespace
        if ref.replica is not None:
            pod = await self._read(
                f"pod {ns}/{ref.replica}",
                functools.partial(self.core.read_namespaced_pod, ref.replica, ns),
            )
            self._opted_out(f"pod {ns}/{ref.replica}", pod.metadata)
            owner = await self._owner_deployment(ns, pod)
            if ref.deployment is not None and ref.deployment != owner:
                raise TargetError(f"pod {ref.replica} belongs to {owner}, not {ref.deployment}")
            ref = ref.with_(deployment=owner)
        elif kind == "replica":
            raise TargetError("the alert names no pod")
        if ref.deployment is None:
            raise TargetError("the alert names no deployment (deployment or pod label)")
        dep = await self._deployment(ref)
        self._opted_out(f"deployment {ns}/{ref.deployment}", dep.metadata)
        return ref

    async def _owner_deployment(self, namespace: str, pod: Any) -> str:
        for owner in pod.metadata.owner_references or []:
            if owner.kind == "ReplicaSet":
                rs = await self._read(
                    f"replicaset {namespace}/{owner.name}",
                    functools.partial(self.apps.read_namespaced_replica_set, owner.name, namespace),
                )
                for rs_owner in rs.metadata.owner_references or []:
                    if rs_owner.kind == "Deployment":
                        return str(rs_owner.name)
        raise TargetError(f"pod {pod.metadata.name} is not managed by a Deployment")

    async def _deployment(self, ref: TargetRef) -> Any:
        ns, name = ref.namespace or "", ref.deployment or ""
        return await self._read(
            f"deployment {ns}/{name}", lambda: self.apps.read_namespaced_deployment(name, ns)
        )

    def _container(self, dep: Any) -> Any:
        containers = dep.spec.template.spec.containers
        want = self.settings.model_container
        found = next((c for c in containers if want is None or c.name == want), None)
        if found is None:
            raise TargetError(f"deployment {dep.metadata.name} has no container {want!r}")
        return found

    async def deployment(self, ref: TargetRef) -> DeploymentInfo:
        dep = await self._deployment(ref)
        env = {e.name: e.value for e in self._container(dep).env or []}
        return DeploymentInfo(
            name=dep.metadata.name,
            namespace=ref.namespace,
            desired=dep.spec.replicas or 0,
            ready=dep.status.ready_replicas or 0,
            model=env.get(self.settings.model_env),
            lighter_model=(dep.metadata.annotations or {}).get(
                self.settings.lighter_model_annotation
            ),
            resource_version=dep.metadata.resource_version,
        )

    async def _pods(self, ref: TargetRef) -> list[Any]:
        dep = await self._deployment(ref)
        selector = label_selector(dep.spec.selector)
        pods = await self._call(
            "list pods",
            functools.partial(self.core.list_namespaced_pod, _ns(ref), label_selector=selector),
        )
        return list(pods.items)

    async def replicas(self, ref: TargetRef) -> list[ReplicaInfo]:
        serving_label = self.settings.serving_label
        out = []
        for pod in await self._pods(ref):
            if pod.metadata.deletion_timestamp is not None:
                continue  # Terminating: already leaving
            ready = _pod_ready(pod)
            serving = (pod.metadata.labels or {}).get(serving_label) != "false"
            out.append(ReplicaInfo(pod.metadata.name, ready, serving))
        return out

    async def set_replicas(
        self, ref: TargetRef, count: int, resource_version: str | None = None
    ) -> None:
        body: dict[str, Any] = {"spec": {"replicas": count}}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        await self._call(
            "scale",
            functools.partial(
                self.apps.patch_namespaced_deployment_scale, _dep(ref), _ns(ref), body
            ),
        )

    async def autoscaler(self, ref: TargetRef) -> Autoscaler | None:
        """An autoscaling/v2 HPA or a KEDA ScaledObject targeting the Deployment. KEDA's own HPA
        (owned by its ScaledObject) is reported as the ScaledObject, which is what to change."""
        ns, name = _ns(ref), _dep(ref)
        hpas = await self._call(
            "list horizontalpodautoscalers",
            functools.partial(self.autoscaling.list_namespaced_horizontal_pod_autoscaler, ns),
        )
        for hpa in hpas.items:
            target = hpa.spec.scale_target_ref
            owners = hpa.metadata.owner_references or []
            if (
                target.kind == "Deployment"
                and target.name == name
                and not any(o.kind == "ScaledObject" for o in owners)
            ):
                return Autoscaler(
                    "HorizontalPodAutoscaler",
                    hpa.metadata.name,
                    hpa.spec.min_replicas if hpa.spec.min_replicas is not None else 1,
                    hpa.spec.max_replicas,
                    hpa.metadata.resource_version,
                    _original_min(hpa.metadata.annotations),
                )
        try:
            objects = await self._call(
                "list scaledobjects",
                functools.partial(
                    self.custom.list_namespaced_custom_object, *KEDA[:2], ns, KEDA[2]
                ),
            )
        except BackendError as exc:
            if exc.status == 404:
                return None  # KEDA is not installed
            raise
        for obj in objects.get("items", []):
            spec, meta = obj.get("spec") or {}, obj.get("metadata") or {}
            ref_to = spec.get("scaleTargetRef") or {}
            if ref_to.get("name") == name and ref_to.get("kind", "Deployment") == "Deployment":
                return Autoscaler(
                    "ScaledObject",
                    meta["name"],
                    int(spec.get("minReplicaCount", 0)),
                    int(spec.get("maxReplicaCount", 100)),
                    meta.get("resourceVersion"),
                    _original_min(meta.get("annotations")),
                )
        return None

    async def set_autoscaler_min(
        self, ref: TargetRef, owner: Autoscaler, minimum: int, original: int | None
    ) -> None:
        ns = _ns(ref)
        meta = {
            "resourceVersion": owner.resource_version,
            "annotations": {ORIGINAL_MIN_ANNOTATION: None if original is None else str(original)},
        }
        if owner.kind == "ScaledObject":
            body: dict[str, Any] = {"metadata": meta, "spec": {"minReplicaCount": minimum}}
            await self._call(
                f"patch scaledobject {owner.name}",
                functools.partial(  # type: ignore[call-arg]  # the stub omits _content_type
                    self.custom.patch_namespaced_custom_object,
                    *KEDA[:2],
                    ns,
                    KEDA[2],
                    owner.name,
                    body,
                    _content_type="application/merge-patch+json",  # CRDs take no strategic merge
                ),
            )
            return
        body = {"metadata": meta, "spec": {"minReplicas": minimum}}
        await self._call(
            f"patch horizontalpodautoscaler {owner.name}",
            functools.partial(
                self.autoscaling.patch_namespaced_horizontal_pod_autoscaler, owner.name, ns, body
            ),
        )

    async def wait_rollout(
        self, ref: TargetRef, limit_s: float, model: str | None = None
    ) -> Rollout:
        deadline = time.monotonic() + limit_s
        while True:
            dep = await self._deployment(ref)
            done, detail, stuck = _rollout_status(dep)
            if done and model is not None:
                done, detail = await self._serving_model(dep, ref, model)
            if done:
                return Rollout(True, detail)
            if stuck or time.monotonic() >= deadline:
                return Rollout(False, detail)
            await asyncio.sleep(self.settings.poll_interval_seconds)

    async def _serving_model(self, dep: Any, ref: TargetRef, model: str) -> tuple[bool, str]:
        """Every ready pod (not terminating) runs `model`, and there are spec.replicas of them."""
        want = _replicas(dep)
        ready = [
            p
            for p in await self._pods(ref)
            if p.metadata.deletion_timestamp is None and _pod_ready(p)
        ]
        other = [p.metadata.name for p in ready if self._pod_model(p) != model]
        if other:
            return False, f"{len(other)} ready pod(s) still serve another model: {other[:3]}"
        if len(ready) < want:
            return False, f"{len(ready)} of {want} pods ready on {model}"
        return True, f"{len(ready)}/{want} ready pods serve {model}"

    def _pod_model(self, pod: Any) -> str | None:
        want = self.settings.model_container
        for container in pod.spec.containers or []:
            if want is None or container.name == want:
                env = {e.name: e.value for e in container.env or []}
                return env.get(self.settings.model_env)
        return None

    async def set_serving(self, ref: TargetRef, serving: bool) -> None:
        body = {"metadata": {"labels": {self.settings.serving_label: str(serving).lower()}}}
        await self._call(
            "label pod",
            functools.partial(self.core.patch_namespaced_pod, _pod(ref), _ns(ref), body),
        )

    def inflight_selector(self, ref: TargetRef) -> str:
        ns = escape_label_value(ref.namespace or "")
        pod = escape_label_value(ref.replica or "")
        return f'inferwatch_llm_requests_running{{namespace="{ns}",pod="{pod}"}}'

    async def restart_replica(self, ref: TargetRef, limit_s: float) -> tuple[bool, str]:
        await self._call(
            "delete pod", functools.partial(self.core.delete_namespaced_pod, _pod(ref), _ns(ref))
        )
        deadline = time.monotonic() + limit_s
        while True:
            dep = await self._deployment(ref)
            pods = {p.name: p for p in await self.replicas(ref)}
            ready = sum(1 for p in pods.values() if p.healthy)
            want = dep.spec.replicas or 0
            if ref.replica not in pods and ready >= want:
                return True, f"pod deleted; {ready}/{want} ready"
            if time.monotonic() >= deadline:
                return False, f"pod deleted; only {ready}/{want} ready after {limit_s:g}s"
            await asyncio.sleep(self.settings.poll_interval_seconds)

    async def cordoned_nodes(self) -> list[str]:
        """Nodes the remediator cordoned (its annotation); a node a human cordoned is theirs."""
        nodes = await self._call("list nodes", self.core.list_node)
        return sorted(
            n.metadata.name
            for n in nodes.items
            if n.spec.unschedulable
            and (n.metadata.annotations or {}).get(CORDONED_BY_ANNOTATION) == CORDONED_BY
        )

    async def drain_node(self, ref: TargetRef, limit_s: float) -> tuple[bool, str]:
        """Cordon (annotated as ours), then evict the inference pods through the Eviction API,
        so PodDisruptionBudgets hold: a 429 is retried with backoff until `limit_s`. The node
        stays cordoned: a GPU fault needs a human before it takes work again."""
        node = ref.node or ""
        cordon = await self._cordon(node)
        pods = await self._call(
            "list pods on node",
            lambda: self.core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={node}",
                label_selector=self.settings.inference_pod_selector,
            ),
        )
        targets = [p for p in pods.items if p.metadata.namespace in self.namespaces]
        evicted, leaving = 0, 0
        errors: list[str] = []
        budgets: dict[str, list[str]] = {}  # PDB -> pods it kept
        deadline = time.monotonic() + limit_s
        for pod in targets:
            if pod.metadata.deletion_timestamp is not None:
                leaving += 1  # Terminating already: it is on its way out
                continue
            result = await self._evict(pod, deadline)
            if result == "evicted":
                evicted += 1
            elif result == "gone":
                leaving += 1
            elif result.startswith("pdb:"):
                budgets.setdefault(result[4:], []).append(pod.metadata.name)
            else:
                errors.append(f"{pod.metadata.namespace}/{pod.metadata.name}: {result}")
        detail = f"{cordon}; evicted {evicted} pod(s)"
        if leaving:
            detail += f", {leaving} already leaving"
        for budget, kept in sorted(budgets.items()):
            detail += (
                f"; PodDisruptionBudget {budget} blocked {len(kept)} pod(s) for {limit_s:g}s: "
                f"{', '.join(kept)}"
            )
        if errors:
            detail += f"; could not evict {'; '.join(errors)}"
        return not budgets and not errors, detail + "; the node stays cordoned"

    async def _cordon(self, node: str) -> str:
        for _ in range(CONFLICT_RETRIES):
            current = await self._call(f"read node {node}", lambda: self.core.read_node(node))
            if current.spec.unschedulable:
                owner = (current.metadata.annotations or {}).get(CORDONED_BY_ANNOTATION)
                return f"{node} was cordoned already (by {owner or 'someone else'})"
            body = {
                "metadata": {
                    "resourceVersion": current.metadata.resource_version,
                    "annotations": {CORDONED_BY_ANNOTATION: CORDONED_BY},
                },
                "spec": {"unschedulable": True},
            }
            try:
                await self._call("cordon", functools.partial(self.core.patch_node, node, body))
                return f"cordoned {node}"
            except Conflict:
                continue
        raise BackendError(f"cordon: node {node} kept changing ({CONFLICT_RETRIES} conflicts)", 409)

    async def _evict(self, pod: Any, deadline: float) -> str:
        """'evicted', 'gone', 'pdb:<name>' (still blocked at the deadline) or an error."""
        name, ns = pod.metadata.name, pod.metadata.namespace
        body = client.V1Eviction(
            api_version="policy/v1",
            kind="Eviction",
            metadata=client.V1ObjectMeta(name=name, namespace=ns),
        )
        delay = self.settings.poll_interval_seconds
        while True:
            try:
                await self.core.create_namespaced_pod_eviction(name, ns, body)
                return "evicted"
            except ApiException as exc:
                if exc.status == 404:
                    return "gone"
                if exc.status != 429 and (exc.status or 0) < 500:
                    return _describe(exc)
                if time.monotonic() >= deadline:
                    return f"pdb:{_budget(exc)}" if exc.status == 429 else _describe(exc)
                log.info("evict %s/%s: HTTP %s; retrying in %gs", ns, name, exc.status, delay)
            await asyncio.sleep(max(0.0, min(delay, deadline - time.monotonic())))
            delay = min(delay * 2, 10.0)

    async def set_model(self, ref: TargetRef, model: str, limit_s: float) -> Rollout:
        previous = await self._patch_model(ref, model)
        rollout = await self.wait_rollout(ref, limit_s, model)
        if rollout.ok or previous is None or previous == model:
            return rollout
        log.warning("%s did not roll out (%s); rolling back to %s", model, rollout.detail, previous)
        await self._patch_model(ref, previous)
        back = await self.wait_rollout(ref, limit_s, previous)
        detail = f"{model} did not roll out in {limit_s:g}s ({rollout.detail}); "
        detail += f"rolled back to {previous}"
        if not back.ok:
            detail += f", but that has not rolled out either ({back.detail})"
        return Rollout(False, detail, restored=back.ok)

    async def _patch_model(self, ref: TargetRef, model: str) -> str | None:
        """Set the model env var (a strategic merge patch conditional on the resourceVersion
        read; re-read on 409); return the model it replaced."""
        for _ in range(CONFLICT_RETRIES):
            dep = await self._deployment(ref)
            container = self._container(dep)
            previous = {e.name: e.value for e in container.env or []}.get(self.settings.model_env)
            env = [{"name": self.settings.model_env, "value": model}]
            body = {
                "metadata": {"resourceVersion": dep.metadata.resource_version},
                "spec": {
                    "template": {"spec": {"containers": [{"name": container.name, "env": env}]}}
                },
            }
            try:
                await self._call(
                    "patch model",
                    functools.partial(
                        self.apps.patch_namespaced_deployment, _dep(ref), _ns(ref), body
                    ),
                )
                return previous  # type: ignore[no-any-return]
            except Conflict:
                log.info("patch model: %s changed since read; reading again", _dep(ref))
        raise BackendError(
            f"patch model: {_dep(ref)} kept changing ({CONFLICT_RETRIES} conflicts)", 409
        )

    @property
    def api_client(self) -> client.ApiClient:
        """The started client (leader election shares it)."""
        if self._api is None:
            raise RuntimeError("the backend is not started")
        return self._api

    async def read_facts(self, ref: TargetRef, kind: TargetKind) -> tuple[dict[str, str], str]:
        """The target object's annotations and the resourceVersion they were read at (the
        precondition of a later patch_facts)."""
        if kind == "node":
            node = ref.node or ""
            obj = await self._read(f"node {node}", functools.partial(self.core.read_node, node))
        else:
            obj = await self._deployment(ref)
        return dict(obj.metadata.annotations or {}), str(obj.metadata.resource_version)

    async def patch_facts(
        self,
        ref: TargetRef,
        kind: TargetKind,
        changes: dict[str, str | None],
        resource_version: str,
    ) -> None:
        """Set (None: remove) annotations on the target object, only if it is still at
        `resource_version` (Conflict otherwise: read again and decide again)."""
        body = {"metadata": {"resourceVersion": resource_version, "annotations": changes}}
        if kind == "node":
            node = ref.node or ""
            await self._call(
                f"annotate node {node}", functools.partial(self.core.patch_node, node, body)
            )
        else:
            await self._call(
                f"annotate deployment {_ns(ref)}/{_dep(ref)}",
                functools.partial(self.apps.patch_namespaced_deployment, _dep(ref), _ns(ref), body),
            )

    async def annotated(
        self, kind: TargetKind, prefix: str
    ) -> list[tuple[TargetRef, dict[str, str]]]:
        """Deployments in the configured namespaces (kind "deployment") or Nodes (kind "node")
        carrying an annotation whose key starts with `prefix`, with their annotations."""
        found: list[tuple[TargetRef, dict[str, str]]] = []
        if kind == "node":
            nodes = await self._call("list nodes", self.core.list_node)
            for n in nodes.items:
                notes = dict(n.metadata.annotations or {})
                if any(k.startswith(prefix) for k in notes):
                    found.append((TargetRef(node=n.metadata.name), notes))
            return found
        for ns in self.namespaces:
            deps = await self._call(
                f"list deployments in {ns}",
                functools.partial(self.apps.list_namespaced_deployment, ns),
            )
            for d in deps.items:
                notes = dict(d.metadata.annotations or {})
                if any(k.startswith(prefix) for k in notes):
                    found.append((TargetRef(namespace=ns, deployment=d.metadata.name), notes))
        return found

    async def record_event(
        self, ref: TargetRef, kind: TargetKind, reason: str, message: str, ok: bool
    ) -> None:
        if not self.settings.events:
            return
        name = {"node": ref.node, "replica": ref.replica}.get(kind, ref.deployment) or ""
        namespace = "default" if kind == "node" else ref.namespace or "default"
        now = datetime.now(UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name="inferwatch-", namespace=namespace),
            involved_object=client.V1ObjectReference(
                kind=EVENT_KIND[kind],
                name=name,
                namespace=None if kind == "node" else namespace,
                api_version="v1" if kind != "deployment" else "apps/v1",
            ),
            reason=reason,
            message=message[:1024],
            type="Normal" if ok else "Warning",
            source=client.V1EventSource(component="inferwatch-remediator"),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        await self._call("event", lambda: self.core.create_namespaced_event(namespace, event))


def label_selector(selector: Any) -> str:
    """A LabelSelector (matchLabels and matchExpressions) as a `labelSelector` query value."""
    terms = [f"{k}={v}" for k, v in sorted((selector.match_labels or {}).items())]
    for expr in selector.match_expressions or []:
        values = ",".join(expr.values or [])
        terms.append(
            {
                "In": f"{expr.key} in ({values})",
                "NotIn": f"{expr.key} notin ({values})",
                "Exists": expr.key,
                "DoesNotExist": f"!{expr.key}",
            }[expr.operator]
        )
    return ",".join(terms)


def _budget(exc: ApiException) -> str:
    """The PodDisruptionBudget named in a 429's DisruptionBudget cause."""
    try:
        causes = json.loads(exc.body or "{}").get("details", {}).get("causes", [])
    except (ValueError, AttributeError):
        causes = []
    for cause in causes:
        if cause.get("reason") == "DisruptionBudget":
            m = re.search(r"disruption budget (\S+)", cause.get("message", ""))
            if m:
                return m.group(1)
    return "(unnamed: the API gave no DisruptionBudget cause)"


def _original_min(annotations: dict[str, str] | None) -> int | None:
    value = (annotations or {}).get(ORIGINAL_MIN_ANNOTATION)
    try:
        return None if value is None else int(value)
    except ValueError:
        log.error("ignoring %s=%r: not a number", ORIGINAL_MIN_ANNOTATION, value)
        return None


def _replicas(dep: Any) -> int:
    return 1 if dep.spec.replicas is None else int(dep.spec.replicas)


def _pod_ready(pod: Any) -> bool:
    return pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
    )


def _rollout_status(dep: Any) -> tuple[bool, str, bool]:
    """(done, why, stuck) the way `kubectl rollout status` reads a Deployment."""
    name, want, status = dep.metadata.name, _replicas(dep), dep.status
    if (status.observed_generation or 0) < (dep.metadata.generation or 0):
        return False, f"waiting for the controller to observe {name}'s change", False
    for cond in status.conditions or []:
        if cond.type == "Progressing" and cond.reason == "ProgressDeadlineExceeded":
            return False, f"{name} exceeded its progress deadline", True
    updated = status.updated_replicas or 0
    total = status.replicas or 0
    ready = status.ready_replicas or 0
    available = status.available_replicas or 0
    if updated < want:
        return False, f"{updated} of {want} new replicas updated", False
    if total > updated:
        return False, f"{total - updated} old replica(s) pending termination", False
    if ready < want or available < want:
        return False, f"{available} of {want} updated replicas available", False
    return True, f"{want}/{want} replicas updated, ready and available", False


def _ns(ref: TargetRef) -> str:
    if ref.namespace is None:
        raise TargetError("no namespace")
    return ref.namespace


def _dep(ref: TargetRef) -> str:
    if ref.deployment is None:
        raise TargetError("no deployment")
    return ref.deployment


def _pod(ref: TargetRef) -> str:
    if ref.replica is None:
        raise TargetError("no pod")
    return ref.replica


def _describe(exc: ApiException) -> str:
    """`HTTP 409 Conflict: <message from the Status body>` rather than the client's dump."""
    message = ""
    with contextlib.suppress(ValueError, AttributeError):
        message = json.loads(exc.body or "{}").get("message", "")
    return f"HTTP {exc.status} {exc.reason or ''}{': ' + message if message else ''}".strip()
