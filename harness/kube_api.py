"""The one stand-in for a Kubernetes API server: a loopback aiohttp app that records requests.

No kube-apiserver can run here, so the real kubernetes_asyncio client talks to this instead. It
implements only the endpoints the remediator uses (deployments get/patch/scale, replicasets get,
pods list/get/patch/delete, evictions, nodes list/get/patch, events) with real Kubernetes
shapes and `Status` errors, plus a tiny "controller" (scaling creates or removes ready pods; a
deleted pod is replaced). Tests assert on `requests` and inject failures with `fail()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

TOKEN = "fake-kube-token"


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any


@dataclass
class Failure:
    method: str
    path: re.Pattern[str]
    status: int
    times: int
    reason: str


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def merge(base: Any, patch: Any) -> Any:
    """Strategic-merge for what we patch: maps merge; lists of named items merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = merge(base.get(key), value)
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(i, dict) and "name" in i for i in base + patch)
    ):
        out_list = [dict(i) for i in base]
        for item in patch:
            match = next((i for i in out_list if i["name"] == item["name"]), None)
            if match is None:
                out_list.append(item)
            else:
                out_list[out_list.index(match)] = merge(match, item)
        return out_list
    return copy.deepcopy(patch)


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


@dataclass
class FakeKubeApi:
    token: str = TOKEN
    requests: list[Recorded] = field(default_factory=list)
    deployments: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    replicasets: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    pods_become_ready: bool = True  # the "controller" makes new pods Ready at once
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _server: TestServer | None = None
    # Pod watches (llm collector's discovery): changes made with put_pod/remove_pod are streamed.
    resource_version: int = 1
    _watches: list[tuple[asyncio.Queue[dict[str, Any] | None], str | None, str, str]] = field(
        default_factory=list
    )
    _pod_events: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    # -- test set-up --------------------------------------------------------------------------

    def add_node(self, name: str, labels: dict[str, str] | None = None) -> None:
        self.nodes[name] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": labels or {}, "annotations": {}},
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }

    def add_deployment(
        self,
        namespace: str,
        name: str,
        replicas: int,
        *,
        node: str = "node-a",
        model: str = "llama-3-8b",
        annotations: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
    ) -> None:
        match = {"app": name}
        rs_name = f"{name}-5d4f8b7c9"
        self.deployments[(namespace, name)] = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": f"uid-{name}",
                "labels": labels or {},
                "annotations": annotations or {},
                "generation": 1,
                "resourceVersion": "1",
            },
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": match},
                "template": {
                    "metadata": {
                        "labels": {
                            **match,
                            "inferwatch.io/serving": "true",
                            "inferwatch.io/inference": "true",
                        }
                    },
                    "spec": {
                        "containers": [
                            {
                                "name": "engine",
                                "image": "vllm/vllm-openai:v0.11.0",
                                "env": [{"name": "MODEL", "value": model}],
                            }
                        ]
                    },
                },
            },
            "status": {"replicas": replicas, "readyReplicas": replicas, "observedGeneration": 1},
        }
        self.replicasets[(namespace, rs_name)] = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": rs_name,
                "namespace": namespace,
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": name,
                        "uid": f"uid-{name}",
                        "controller": True,
                    }
                ],
            },
            "spec": {"replicas": replicas, "selector": {"matchLabels": match}},
        }
        for _ in range(replicas):
            self._new_pod(namespace, name, node)

    def pods_of(self, namespace: str, deployment: str) -> list[dict[str, Any]]:
        return [
            p
            for (ns, _), p in sorted(self.pods.items())
            if ns == namespace and p["metadata"]["labels"].get("app") == deployment
        ]

    def fail(self, method: str, path: str, status: int, times: int = 1, reason: str = "") -> None:
        """The next `times` requests matching method and path (regex) get `status`."""
        self.failures.append(Failure(method, re.compile(path), status, times, reason))

    def calls(self, method: str | None = None, path: str | None = None) -> list[Recorded]:
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and (path is None or re.search(path, r.path))
        ]

    # -- server -------------------------------------------------------------------------------

    async def __aenter__(self) -> FakeKubeApi:
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        ns = "/namespaces/{ns}"
        r.add_get(f"/apis/apps/v1{ns}/deployments/{{name}}", self._get_deployment)
        r.add_patch(f"/apis/apps/v1{ns}/deployments/{{name}}", self._patch_deployment)
        r.add_get(f"/apis/apps/v1{ns}/deployments/{{name}}/scale", self._get_scale)
        r.add_patch(f"/apis/apps/v1{ns}/deployments/{{name}}/scale", self._patch_scale)
        r.add_get(f"/apis/apps/v1{ns}/replicasets/{{name}}", self._get_replicaset)
        r.add_get("/api/v1/pods", self._list_pods)
        r.add_get(f"/api/v1{ns}/pods", self._list_pods)
        r.add_get(f"/api/v1{ns}/pods/{{name}}", self._get_pod)
        r.add_patch(f"/api/v1{ns}/pods/{{name}}", self._patch_pod)
        r.add_delete(f"/api/v1{ns}/pods/{{name}}", self._delete_pod)
        r.add_post(f"/api/v1{ns}/pods/{{name}}/eviction", self._evict)
        r.add_get("/api/v1/nodes", self._list_nodes)
        r.add_get("/api/v1/nodes/{name}", self._get_node)
        r.add_patch("/api/v1/nodes/{name}", self._patch_node)
        r.add_post(f"/api/v1{ns}/events", self._create_event)
        app.on_shutdown.append(self._end_watches)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            await self._server.close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.port}"

    def write_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig pointing at this server with a bearer token (what users have)."""
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "remediator", "user": {"token": self.token}}],
                    "contexts": [
                        {"name": "fake", "context": {"cluster": "fake", "user": "remediator"}}
                    ],
                    "current-context": "fake",
                }
            )
        )
        return path

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        self.requests.append(
            Recorded(
                request.method,
                request.path,
                dict(request.query),
                request.headers.get("Content-Type", ""),
                body,
            )
        )
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response(status_body(401, "Unauthorized", "Unauthorized"), status=401)
        for failure in self.failures:
            if (
                failure.times > 0
                and failure.method == request.method
                and failure.path.search(request.path)
            ):
                failure.times -= 1
                reason = failure.reason or {409: "Conflict", 429: "TooManyRequests"}.get(
                    failure.status, "InternalError"
                )
                return web.json_response(
                    status_body(failure.status, reason, f"injected {failure.status}"),
                    status=failure.status,
                )
        result: web.StreamResponse = await handler(request)
        return result

    # -- handlers -----------------------------------------------------------------------------

    def _not_found(self, kind: str, name: str) -> web.Response:
        return web.json_response(
            status_body(404, "NotFound", f'{kind} "{name}" not found'), status=404
        )

    async def _get_deployment(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.deployments:
            return self._not_found("deployments.apps", key[1])
        return web.json_response(self.deployments[key])

    async def _patch_deployment(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.deployments:
            return self._not_found("deployments.apps", key[1])
        dep = merge(self.deployments[key], self.requests[-1].body)
        dep["metadata"]["generation"] += 1
        dep["status"]["observedGeneration"] = dep["metadata"]["generation"]
        self.deployments[key] = dep
        return web.json_response(dep)

    def _scale(self, dep: dict[str, Any]) -> dict[str, Any]:
        meta = dep["metadata"]
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "spec": {"replicas": dep["spec"]["replicas"]},
            "status": {"replicas": dep["status"]["replicas"]},
        }

    async def _get_scale(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.deployments:
            return self._not_found("deployments.apps", key[1])
        return web.json_response(self._scale(self.deployments[key]))

    async def _patch_scale(self, request: web.Request) -> web.Response:
        ns, name = key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.deployments:
            return self._not_found("deployments.apps", name)
        dep = self.deployments[key]
        want = int(self.requests[-1].body["spec"]["replicas"])
        dep["spec"]["replicas"] = want
        pods = self.pods_of(ns, name)
        for pod in pods[want:]:
            del self.pods[(ns, pod["metadata"]["name"])]
        for _ in range(want - len(pods)):
            self._new_pod(ns, name, "node-a")
        self._refresh_status(ns, name)
        return web.json_response(self._scale(dep))

    async def _get_replicaset(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.replicasets:
            return self._not_found("replicasets.apps", key[1])
        return web.json_response(self.replicasets[key])

    async def _list_pods(self, request: web.Request) -> web.StreamResponse:
        ns = request.match_info.get("ns")
        selector = request.query.get("labelSelector", "")
        fields = request.query.get("fieldSelector", "")
        node = fields.partition("spec.nodeName=")[2] if "spec.nodeName=" in fields else None
        if request.query.get("watch", "").lower() in ("1", "t", "true"):
            return await self._watch_pods(request, ns, selector, node)
        items = [
            p
            for (pns, _), p in sorted(self.pods.items())
            if (ns is None or pns == ns)
            and selector_matches(selector, p["metadata"]["labels"])
            and (node is None or p["spec"].get("nodeName") == node)
        ]
        return web.json_response(
            {
                "apiVersion": "v1",
                "kind": "PodList",
                "metadata": {"resourceVersion": str(self.resource_version)},
                "items": items,
            }
        )

    async def _get_pod(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.pods:
            return self._not_found("pods", key[1])
        return web.json_response(self.pods[key])

    async def _patch_pod(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.pods:
            return self._not_found("pods", key[1])
        self.pods[key] = merge(self.pods[key], self.requests[-1].body)
        return web.json_response(self.pods[key])

    async def _delete_pod(self, request: web.Request) -> web.Response:
        ns, name = key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.pods:
            return self._not_found("pods", name)
        pod = self.pods.pop(key)
        self._replace(ns, pod)
        return web.json_response(pod)

    async def _evict(self, request: web.Request) -> web.Response:
        ns, name = key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.pods:
            return self._not_found("pods", name)
        pod = self.pods.pop(key)
        self._replace(ns, pod, avoid=pod["spec"].get("nodeName"))
        return web.json_response(
            {"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201}, status=201
        )

    async def _list_nodes(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "apiVersion": "v1",
                "kind": "NodeList",
                "metadata": {},
                "items": [self.nodes[n] for n in sorted(self.nodes)],
            }
        )

    async def _get_node(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.nodes:
            return self._not_found("nodes", name)
        return web.json_response(self.nodes[name])

    async def _patch_node(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.nodes:
            return self._not_found("nodes", name)
        self.nodes[name] = merge(self.nodes[name], self.requests[-1].body)
        return web.json_response(self.nodes[name])

    async def _create_event(self, request: web.Request) -> web.Response:
        event = dict(self.requests[-1].body)
        event.setdefault("metadata", {})["name"] = f"event-{next(self._ids)}"
        self.events.append(event)
        return web.json_response(event, status=201)

    # -- the "controller" ---------------------------------------------------------------------

    def _new_pod(self, namespace: str, deployment: str, node: str) -> dict[str, Any]:
        dep = self.deployments[(namespace, deployment)]
        rs_name = f"{deployment}-5d4f8b7c9"
        name = f"{rs_name}-{next(self._ids):05d}"
        ready = "True" if self.pods_become_ready else "False"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": dict(dep["spec"]["template"]["metadata"]["labels"]),
                "annotations": {},
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "ReplicaSet",
                        "name": rs_name,
                        "uid": f"uid-rs-{deployment}",
                        "controller": True,
                    }
                ],
            },
            "spec": {"nodeName": node, "containers": dep["spec"]["template"]["spec"]["containers"]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": ready}]},
        }
        self.pods[(namespace, name)] = pod
        self._refresh_status(namespace, deployment)
        return pod

    def _replace(self, namespace: str, pod: dict[str, Any], avoid: str | None = None) -> None:
        owner = pod["metadata"]["labels"].get("app")
        if (namespace, owner) not in self.deployments:
            return
        candidates = [
            n
            for n, node in sorted(self.nodes.items())
            if n != avoid and not node["spec"].get("unschedulable")
        ]
        self._new_pod(namespace, owner, candidates[0] if candidates else pod["spec"]["nodeName"])

    def _refresh_status(self, namespace: str, deployment: str) -> None:
        dep = self.deployments[(namespace, deployment)]
        pods = self.pods_of(namespace, deployment)
        ready = sum(
            1
            for p in pods
            if any(
                c["type"] == "Ready" and c["status"] == "True" for c in p["status"]["conditions"]
            )
        )
        dep["status"].update(replicas=len(pods), readyReplicas=ready)

    # -- pod watch (llm collector's Kubernetes discovery) -------------------------------------

    def put_pod(self, pod: dict[str, Any]) -> None:
        """Add or replace a pod and tell open watches (ADDED / MODIFIED)."""
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        kind = "MODIFIED" if key in self.pods else "ADDED"
        self.pods[key] = pod
        self._notify(kind, pod)

    def remove_pod(self, namespace: str, name: str) -> None:
        """Delete a pod (no replacement) and tell open watches (DELETED)."""
        self._notify("DELETED", self.pods.pop((namespace, name)))

    def _notify(self, kind: str, pod: dict[str, Any]) -> None:
        self.resource_version += 1
        pod["metadata"]["resourceVersion"] = str(self.resource_version)
        event = {"type": kind, "object": copy.deepcopy(pod)}
        self._pod_events.append((self.resource_version, event))
        for queue, ns, selector, node in self._watches:
            if self._watched(pod, ns, selector, node):
                queue.put_nowait(event)

    @staticmethod
    def _watched(pod: dict[str, Any], ns: str | None, selector: str, node: str | None) -> bool:
        return (
            (ns is None or pod["metadata"]["namespace"] == ns)
            and selector_matches(selector, pod["metadata"]["labels"])
            and (node is None or pod["spec"].get("nodeName") == node)
        )

    async def _watch_pods(
        self, request: web.Request, ns: str | None, selector: str, node: str | None
    ) -> web.StreamResponse:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        since = int(request.query.get("resourceVersion") or 0)
        for version, event in self._pod_events:  # like the API: replay what the client missed
            if version > since and self._watched(event["object"], ns, selector, node):
                queue.put_nowait(event)
        entry = (queue, ns, selector, node)
        self._watches.append(entry)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        try:
            async with asyncio.timeout(float(request.query.get("timeoutSeconds", "300"))):
                while (event := await queue.get()) is not None:
                    await response.write(json.dumps(event).encode() + b"\n")
        except TimeoutError:
            pass
        finally:
            self._watches.remove(entry)
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response

    async def _end_watches(self, app: web.Application) -> None:
        for queue, *_ in self._watches:
            queue.put_nowait(None)


def engine_pod(
    name: str,
    *,
    namespace: str = "default",
    node: str = "node-a",
    ip: str | None = "10.0.0.1",
    phase: str = "Running",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    ports: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A standalone inference-engine Pod with an IP and named container ports."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{namespace}-{name}",
            "labels": dict(labels or {}),
            "annotations": dict(annotations or {}),
        },
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "engine",
                    "image": "engine:latest",
                    "ports": [
                        {"name": port_name, "containerPort": port, "protocol": "TCP"}
                        for port_name, port in (ports or {}).items()
                    ],
                }
            ],
        },
        "status": {"phase": phase, "conditions": [], **({"podIP": ip} if ip else {})},
    }
