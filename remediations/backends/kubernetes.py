"""Kubernetes backend (kubernetes_asyncio): Deployments, Pods, Nodes; an Event for every action.

Least privilege: it reads and patches Deployments (and their scale subresource), reads
ReplicaSets to find a pod's Deployment, lists/patches/deletes Pods, creates pod evictions,
lists/patches Nodes and creates Events — nothing else. Conflicts (409), throttling (429) and
server errors (5xx) are retried a few times with backoff; anything else fails the action.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from exporter.settings import ConfigError
from remediations.backends import BackendError, DeploymentInfo, ReplicaInfo, TargetKind
from remediations.config import KubernetesSettings
from remediations.guards import Blocked, Guard
from remediations.prom import escape_label_value
from remediations.targets import TargetError, TargetRef

log = logging.getLogger("remediations.kubernetes")
T = TypeVar("T")
RETRIED = {409, 429}
EVENT_KIND = {"deployment": "Deployment", "replica": "Pod", "node": "Node"}


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
        )

    async def _pods(self, ref: TargetRef) -> list[Any]:
        dep = await self._deployment(ref)
        selector = ",".join(f"{k}={v}" for k, v in sorted(dep.spec.selector.match_labels.items()))
        pods = await self._call(
            "list pods",
            functools.partial(self.core.list_namespaced_pod, _ns(ref), label_selector=selector),
        )
        return list(pods.items)

    async def replicas(self, ref: TargetRef) -> list[ReplicaInfo]:
        serving_label = self.settings.serving_label
        out = []
        for pod in await self._pods(ref):
            ready = pod.status.phase == "Running" and any(
                c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
            )
            serving = (pod.metadata.labels or {}).get(serving_label) != "false"
            out.append(ReplicaInfo(pod.metadata.name, ready, serving))
        return out

    async def set_replicas(self, ref: TargetRef, count: int) -> None:
        body = {"spec": {"replicas": count}}
        await self._call(
            "scale",
            functools.partial(
                self.apps.patch_namespaced_deployment_scale, _dep(ref), _ns(ref), body
            ),
        )

    async def wait_ready(self, ref: TargetRef, count: int, limit_s: float) -> int:
        deadline = time.monotonic() + limit_s
        while True:
            dep = await self._deployment(ref)
            ready = int(dep.status.ready_replicas or 0)
            if ready >= count or time.monotonic() >= deadline:
                return ready
            await asyncio.sleep(self.settings.poll_interval_seconds)

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
        nodes = await self._call("list nodes", self.core.list_node)
        return sorted(n.metadata.name for n in nodes.items if n.spec.unschedulable)

    async def drain_node(self, ref: TargetRef, limit_s: float) -> tuple[bool, str]:
        """Cordon, then evict (respecting PodDisruptionBudgets: 429 is retried) until done."""
        node = ref.node or ""
        await self._call(
            "cordon", lambda: self.core.patch_node(node, {"spec": {"unschedulable": True}})
        )
        pods = await self._call(
            "list pods on node",
            lambda: self.core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={node}",
                label_selector=self.settings.inference_pod_selector,
            ),
        )
        targets = [p for p in pods.items if p.metadata.namespace in self.namespaces]
        evicted, stuck = [], []
        deadline = time.monotonic() + limit_s
        for pod in targets:
            name, ns = pod.metadata.name, pod.metadata.namespace
            body = client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=ns))
            while True:
                try:
                    await self._call(
                        "evict",
                        functools.partial(self.core.create_namespaced_pod_eviction, name, ns, body),
                    )
                    evicted.append(f"{ns}/{name}")
                    break
                except BackendError as exc:
                    if exc.status == 404:
                        break  # gone already
                    if exc.status != 429 or time.monotonic() >= deadline:
                        stuck.append(f"{ns}/{name} ({exc})")
                        break
                    await asyncio.sleep(self.settings.poll_interval_seconds)
        detail = f"cordoned; evicted {len(evicted)} pod(s)"
        if stuck:
            detail += f"; could not evict {', '.join(stuck)}"
        return not stuck, detail

    async def set_model(self, ref: TargetRef, model: str) -> None:
        dep = await self._deployment(ref)
        container = self._container(dep).name
        env = [{"name": self.settings.model_env, "value": model}]
        body = {"spec": {"template": {"spec": {"containers": [{"name": container, "env": env}]}}}}
        await self._call(
            "patch model",
            functools.partial(self.apps.patch_namespaced_deployment, _dep(ref), _ns(ref), body),
        )

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
