"""Engine pods on this exporter's node, by label selector: a kubernetes_asyncio list + watch.

The watch runs in the background and keeps a pod map; the collector reads `targets()` without
any API call. A broken watch (API restart, 410 Gone) relists after a short back-off.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from kubernetes_asyncio import client, config, watch

from exporter.engines.registry import ENGINES
from exporter.engines.settings import KubernetesSettings
from exporter.engines.targets import Target

log = logging.getLogger(__name__)

PORT_ANNOTATION = "inferwatch.io/port"
ENGINE_ANNOTATION = "inferwatch.io/engine"
WATCH_TIMEOUT_SECONDS = 300
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)


def _container_port(pod: Any, settings: KubernetesSettings) -> int | None:
    annotations = pod.metadata.annotations or {}
    if str(annotations.get(PORT_ANNOTATION, "")).isdigit():
        return int(annotations[PORT_ANNOTATION])
    if settings.port is not None:
        return settings.port
    ports = [p for c in (pod.spec.containers or []) for p in (c.ports or [])]
    for port in ports:
        if port.name == settings.port_name:
            return int(port.container_port)
    return int(ports[0].container_port) if ports else None


def pod_target(pod: Any, settings: KubernetesSettings) -> Target | None:
    """A Running pod with an IP and a port becomes a target labelled namespace/pod."""
    meta, status = pod.metadata, pod.status
    if meta.deletion_timestamp is not None or status is None:
        return None
    if status.phase != "Running" or not status.pod_ip:
        return None
    port = _container_port(pod, settings)
    if port is None:
        return None
    labels = meta.labels or {}
    annotations = meta.annotations or {}
    engine = labels.get(settings.engine_label) or annotations.get(ENGINE_ANNOTATION) or "auto"
    if engine != "auto" and engine not in ENGINES:
        engine = "auto"
    host = f"[{status.pod_ip}]" if ":" in status.pod_ip else status.pod_ip
    address = f"{host}:{port}"
    base = f"{settings.scheme}://{address}"
    return Target(
        name=address,
        base_url=base,
        metrics_url=base + settings.metrics_path,
        engine=engine,
        labels={"namespace": meta.namespace or "", "pod": meta.name or ""},
    )


class PodWatcher:
    def __init__(self, settings: KubernetesSettings) -> None:
        self.settings = settings
        self.node_name = settings.node_name or os.environ.get("NODE_NAME")
        self._pods: dict[str, Target] = {}
        self._task: asyncio.Task[None] | None = None
        self.synced = asyncio.Event()
        """Set after the first successful list (tests and readiness wait on it)."""

    def start(self) -> None:
        """Start the list + watch; called once by the collector's start()."""
        if self._task is not None:
            return
        if not self.node_name:
            log.error(
                "kubernetes discovery: node name unknown; set collectors.llm.kubernetes.node_name "
                "or NODE_NAME (downward API spec.nodeName). Discovery is off."
            )
            return
        self._task = asyncio.create_task(self._run(), name="llm pod watch")

    def targets(self) -> list[Target]:
        return list(self._pods.values())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _api_client(self) -> client.ApiClient:
        configuration = client.Configuration()
        if self.settings.kubeconfig:
            await config.load_kube_config(
                config_file=self.settings.kubeconfig, client_configuration=configuration
            )
        else:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return client.ApiClient(configuration=configuration)

    def _list_kwargs(self) -> dict[str, Any]:
        return {
            "label_selector": self.settings.label_selector,
            "field_selector": f"spec.nodeName={self.node_name}",
        }

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                async with await self._api_client() as api:
                    await self._list_and_watch(client.CoreV1Api(api))
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                failures += 1
                log.warning("kubernetes discovery: %s; retrying in %ss", exc, delay)
                await asyncio.sleep(delay)

    async def _list_and_watch(self, v1: client.CoreV1Api) -> None:
        namespace = self.settings.namespace
        kwargs = self._list_kwargs()
        list_fn: Any = v1.list_namespaced_pod if namespace else v1.list_pod_for_all_namespaces
        args: tuple[str, ...] = (namespace,) if namespace else ()
        listing = await list_fn(*args, **kwargs)
        pods: dict[str, Target] = {}
        for pod in listing.items:
            target = pod_target(pod, self.settings)
            if target is not None:
                pods[pod.metadata.uid or pod.metadata.name] = target
        self._pods = pods
        self.synced.set()
        log.info("kubernetes discovery: %d engine pods on node %s", len(pods), self.node_name)
        async with watch.Watch() as stream:
            async for event in stream.stream(
                list_fn,
                *args,
                resource_version=listing.metadata.resource_version,
                timeout_seconds=WATCH_TIMEOUT_SECONDS,
                **kwargs,
            ):
                self._apply(event)

    def _apply(self, event: dict[str, Any]) -> None:
        pod = event.get("object")
        kind = event.get("type")
        if kind == "BOOKMARK":
            return
        if kind == "ERROR" or pod is None or not hasattr(pod, "metadata"):
            raise RuntimeError(f"watch error event: {pod}")
        key = pod.metadata.uid or pod.metadata.name
        target = None if kind == "DELETED" else pod_target(pod, self.settings)
        if target is None:
            self._pods.pop(key, None)
        else:
            self._pods[key] = target
