"""The one stand-in for a Kubernetes API server: a loopback aiohttp app that records requests.

No kube-apiserver runs in the tests, so the real kubernetes_asyncio client talks to this instead.
It serves only the endpoints the remediator and the exporter's pod discovery use, with real
Kubernetes shapes and `Status` errors, and models the behaviour they rely on, each citing the
documentation (or kube-apiserver / kube-controller-manager source) it follows:

- PATCH by `Content-Type`: strategic merge (lists merge by their patch merge key), JSON merge
  patch (RFC 7386: lists are replaced) and JSON patch (RFC 6902); any other type is 415.
  https://kubernetes.io/docs/reference/using-api/api-concepts/#patch-and-apply
  https://kubernetes.io/docs/tasks/manage-kubernetes-objects/update-api-object-kubectl-patch/
- `metadata.resourceVersion` bumped on every write; a write whose body carries another
  resourceVersion is 409 Conflict (optimistic concurrency).
  https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions and
  https://github.com/kubernetes/community/blob/master/contributors/devel/sig-architecture/api-conventions.md#concurrency-control-and-consistency
- Validation the real API applies to what we write: a container without `image`, negative
  replicas, a changed selector are 422 Invalid.
- A Deployment controller (pkg/controller/deployment/rolling.go): one ReplicaSet per pod-template
  hash, rolling updates bounded by maxSurge/maxUnavailable, `observedGeneration`,
  `replicas`/`updatedReplicas`/`readyReplicas`/`availableReplicas`, and the `Progressing`
  condition turning `False/ProgressDeadlineExceeded` after `progressDeadlineSeconds`.
  https://kubernetes.io/docs/concepts/workloads/controllers/deployment/#deployment-status
  New pods stay unready when their MODEL is in `unready_models` (an image that never starts).
- Pods pass through Terminating (`deletionTimestamp` set) before they go; a terminating pod no
  longer counts in a ReplicaSet's replicas.
- HorizontalPodAutoscaler (autoscaling/v2) and KEDA ScaledObject (keda.sh/v1alpha1) objects whose
  controllers set the target's replicas to their metric's wish clamped to min/max on every tick,
  like the real ones do. https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/
  https://keda.sh/docs/2.16/reference/scaledobject-spec/
- The Eviction API: 201 when allowed, 429 with the `DisruptionBudget` cause when a
  PodDisruptionBudget would be violated, 400 for a body that is not an Eviction for this pod;
  terminating pods ignore budgets. https://kubernetes.io/docs/concepts/scheduling-eviction/api-eviction/
- Equality- and set-based label selectors; unsupported field selectors are 400.
  https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors
- Leases (coordination.k8s.io/v1), what leader election uses: create is 409 `AlreadyExists`
  for a taken name; get and update of a missing Lease are 404 `NotFound`; an update must carry
  `metadata.resourceVersion` (the Lease strategy allows no unconditional update: 422 `Invalid`)
  and a stale one is 409 `Conflict`. https://kubernetes.io/docs/reference/kubernetes-api/cluster-resources/lease-v1/
  https://kubernetes.io/docs/concepts/architecture/leases/ and kube-apiserver
  pkg/registry/coordination/lease/strategy.go (AllowUnconditionalUpdate: false).
- ConfigMaps (v1), where the remediator keeps its circuit breaker and kill switch: create is 409
  `AlreadyExists`, get/update of a missing one 404, a stale resourceVersion 409 `Conflict`; data
  keys must be config-map keys and all data at most 1 MiB (422), values strings (400).
  kube-apiserver pkg/apis/core/validation (ValidateConfigMap, MaxSecretSize) and apimachinery
  pkg/util/validation (IsConfigMapKey).
- Annotations on every object written: each key a qualified name (case-insensitive), all of them
  together at most 256 KiB (422 `Invalid`), values strings (400 `BadRequest`, the decoder's).
  apimachinery pkg/api/validation/objectmeta.go (ValidateAnnotations) and
  pkg/util/validation/validation.go (IsQualifiedName).
- Pod watches: replay since `resourceVersion`, BOOKMARK events when asked for, and an ERROR event
  with a 410 `Expired` Status (then the stream ends) for a resourceVersion older than the
  compacted history. https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes

Tests assert on `requests`, inject failures with `fail()`, race another writer with `before()`,
and cut every watch (`end_watches()`) or restart the server on the same port (`restart()`).
Not modelled: admission webhooks, server-side apply, scheduling beyond "the first schedulable
node", and the HPA's metric arithmetic (`metric_replicas` says what its metric asks for).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import itertools
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

TOKEN = "fake-kube-token"
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
# Patch merge keys of the lists the remediator patches (from the Go types' struct tags).
MERGE_KEYS = {"containers": "name", "env": "name", "volumes": "name", "ports": "containerPort"}
MODEL_ENV = "MODEL"


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def response(self) -> web.Response:
        body = status_body(self.code, self.reason, self.message)
        if self.details:
            body["details"] = self.details
        return web.json_response(body, status=self.code)


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


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- patch semantics -----------------------------------------------------------------------------


def strategic_merge(base: Any, patch: Any, key: str | None = None) -> Any:
    """Strategic merge patch: maps merge (null deletes); lists with a patch merge key merge by
    it, other lists are replaced."""
    if isinstance(patch, dict) and isinstance(base, dict):
        out = dict(base)
        for k, value in patch.items():
            if value is None:
                out.pop(k, None)
            else:
                out[k] = strategic_merge(base.get(k), value, k)
        return out
    merge_key = MERGE_KEYS.get(key or "")
    if merge_key and isinstance(base, list) and isinstance(patch, list):
        out_list = [copy.deepcopy(i) for i in base]
        for item in patch:
            if not isinstance(item, dict) or merge_key not in item:
                raise ApiError(
                    422, "Invalid", f"{key}: each item needs its merge key {merge_key!r}"
                )
            match = next((i for i in out_list if i.get(merge_key) == item[merge_key]), None)
            if match is None:
                out_list.append(copy.deepcopy(item))
            else:
                out_list[out_list.index(match)] = strategic_merge(match, item)
        return out_list
    return copy.deepcopy(patch)


def json_merge(base: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge, null deletes, all else (lists too) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(base) if isinstance(base, dict) else {}
    for k, value in patch.items():
        if value is None:
            out.pop(k, None)
        else:
            out[k] = json_merge(out.get(k), value)
    return out


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test)."""
    if not isinstance(ops, list):
        raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
    doc = copy.deepcopy(doc)

    def split(path: str) -> list[str]:
        if not path.startswith("/"):
            raise ApiError(422, "Invalid", f"invalid JSON pointer {path!r}")
        return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]

    def parent(path: str) -> tuple[Any, str]:
        parts = split(path)
        node = doc
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node, parts[-1]

    def get(path: str) -> Any:
        node, last = parent(path)
        return node[int(last)] if isinstance(node, list) else node[last]

    def put(path: str, value: Any, replace: bool) -> None:
        node, last = parent(path)
        if isinstance(node, list):
            if last == "-":
                node.append(value)
            elif replace:
                node[int(last)] = value
            else:
                node.insert(int(last), value)
        else:
            if replace and last not in node:
                raise KeyError(last)
            node[last] = value

    def remove(path: str) -> Any:
        node, last = parent(path)
        return node.pop(int(last)) if isinstance(node, list) else node.pop(last)

    for op in ops:
        try:
            kind, path = op["op"], op["path"]
            if kind == "add":
                put(path, copy.deepcopy(op["value"]), replace=False)
            elif kind == "remove":
                remove(path)
            elif kind == "replace":
                put(path, copy.deepcopy(op["value"]), replace=True)
            elif kind in ("move", "copy"):
                value = remove(op["from"]) if kind == "move" else copy.deepcopy(get(op["from"]))
                put(path, value, replace=False)
            elif kind == "test":
                if get(path) != op["value"]:
                    raise ApiError(422, "Invalid", f"the test at {path} failed")
            else:
                raise ApiError(422, "Invalid", f"unknown JSON patch op {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError(422, "Invalid", f"JSON patch {op!r}: {exc!r}") from None
    return doc


def apply_patch(obj: dict[str, Any], content_type: str, body: Any) -> dict[str, Any]:
    media = content_type.split(";")[0].strip().lower()
    if media == STRATEGIC:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "a strategic merge patch must be an object")
        out = strategic_merge(obj, body)
    elif media == MERGE:
        out = json_merge(obj, body)
    elif media == JSON_PATCH:
        out = json_patch(obj, body)
    else:
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted media types include: "
            f"{JSON_PATCH}, {MERGE}, {STRATEGIC}",
        )
    if not isinstance(out, dict):
        raise ApiError(422, "Invalid", "the patched object is not an object")
    return out


# -- validation of metadata and data (apimachinery, kube-apiserver) --------------------------------

_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_CONFIG_MAP_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
TOTAL_ANNOTATION_SIZE_LIMIT = 256 * 1024  # objectmeta.go TotalAnnotationSizeLimitB
MAX_CONFIG_MAP_SIZE = 1024 * 1024  # core validation: MaxSecretSize, used for ConfigMaps too


def qualified_name_errors(key: str) -> list[str]:
    """apimachinery's IsQualifiedName: an optional DNS-1123 subdomain prefix and "/", then a
    name of at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric."""
    parts = key.split("/")
    if len(parts) > 2:
        return ["a qualified name must consist of an optional prefix, '/' and a name"]
    name, errors = parts[-1], []
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            errors.append("prefix part must be non-empty")
        elif len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix):
            errors.append("prefix part must be a lowercase RFC 1123 subdomain")
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > 63:
        errors.append("name part must be no more than 63 characters")
    elif not _QUALIFIED_NAME.match(name):
        errors.append(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start "
            "and end with an alphanumeric character"
        )
    return errors


def validate_annotations(annotations: Any) -> None:
    """ValidateAnnotations: keys are qualified names once lowercased (422), the total size of
    keys and values at most 256 KiB (422); a value that is not a string never decodes (400)."""
    if annotations is None:
        return
    if not isinstance(annotations, dict):
        raise ApiError(400, "BadRequest", "metadata.annotations must be a map of strings")
    size = 0
    for key, value in annotations.items():
        if not isinstance(value, str):
            raise ApiError(
                400, "BadRequest", f"metadata.annotations[{key!r}]: a value must be a string"
            )
        for message in qualified_name_errors(key.lower()):
            raise ApiError(
                422, "Invalid", f"metadata.annotations: Invalid value: {key!r}: {message}"
            )
        size += len(key) + len(value)
    if size > TOTAL_ANNOTATION_SIZE_LIMIT:
        raise ApiError(
            422,
            "Invalid",
            "metadata.annotations: Too long: "
            f"must have at most {TOTAL_ANNOTATION_SIZE_LIMIT} bytes",
        )


def validate_config_map_data(data: Any) -> None:
    """ValidateConfigMap: keys are config-map keys (IsConfigMapKey), all of it at most 1 MiB."""
    if data is None:
        return
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ApiError(400, "BadRequest", "data must be a map of strings")
    for key in data:
        if len(key) > 253 or key in (".", "..") or not _CONFIG_MAP_KEY.match(key):
            raise ApiError(
                422,
                "Invalid",
                f"data[{key}]: Invalid value: a valid config key must consist of alphanumeric "
                "characters, '-', '_' or '.'",
            )
    if sum(len(k) + len(v) for k, v in data.items()) > MAX_CONFIG_MAP_SIZE:
        raise ApiError(
            422, "Invalid", f"[]: Too long: must have at most {MAX_CONFIG_MAP_SIZE} bytes"
        )


# -- selectors -----------------------------------------------------------------------------------

_REQUIREMENT = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9._/-]+)\s*"
    r"(?:(?P<op>==|=|!=|\s+in\s+|\s+notin\s+)\s*(?P<value>\([^)]*\)|[A-Za-z0-9._-]*))?\s*$"
)


def _split_terms(selector: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += ch
    terms.append(current)
    return [t for t in terms if t.strip()]


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Equality- and set-based label selectors (`a=b`, `a!=b`, `a in (x,y)`, `a notin (x)`,
    `a`, `!a`); a malformed one raises a 400 like the API."""
    for term in _split_terms(selector):
        m = _REQUIREMENT.match(term)
        if m is None or (m["neg"] and m["op"]):
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {term!r}")
        key, op, value = m["key"], (m["op"] or "").strip(), m["value"]
        if not op:
            if (key in labels) == bool(m["neg"]):
                return False
            continue
        if op in ("in", "notin"):
            if not value or not value.startswith("("):
                raise ApiError(400, "BadRequest", f"unable to parse requirement: {term!r}")
            values = {v.strip() for v in value[1:-1].split(",") if v.strip()}
            if (labels.get(key) in values) != (op == "in"):
                return False
        elif (labels.get(key) == (value or "")) != (op in ("=", "==")):
            return False
    return True


def match_label_selector(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector object (matchLabels + matchExpressions)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], set(expr.get("values") or [])
        ok = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


FIELDS = {
    "spec.nodeName": lambda p: p["spec"].get("nodeName", ""),
    "metadata.name": lambda p: p["metadata"]["name"],
    "metadata.namespace": lambda p: p["metadata"]["namespace"],
    "status.phase": lambda p: p["status"].get("phase", ""),
}


def field_matches(selector: str, pod: dict[str, Any]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        negate = "!=" in term
        key, _, value = term.partition("!=" if negate else "=")
        key, value = key.strip(), value.lstrip("=").strip()
        if key not in FIELDS:
            raise ApiError(400, "BadRequest", f'field label not supported: "{key}"')
        if (FIELDS[key](pod) == value) == negate:
            return False
    return True


def _int_or_percent(value: Any, total: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        share = total * int(value[:-1]) / 100
        return math.ceil(share) if round_up else math.floor(share)
    return int(value)


def _ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", [])
    )


def _terminating(pod: dict[str, Any]) -> bool:
    return "deletionTimestamp" in pod["metadata"]


def pod_model(pod: dict[str, Any]) -> str | None:
    for container in pod["spec"].get("containers", []):
        for env in container.get("env") or []:
            if env.get("name") == MODEL_ENV:
                return str(env.get("value"))
    return None


@dataclass
class FakeKubeApi:
    token: str = TOKEN
    requests: list[Recorded] = field(default_factory=list)
    deployments: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    replicasets: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    hpas: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    scaled_objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    pdbs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    leases: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    config_maps: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    # One-shot actions run just before a matching request is served (another writer racing).
    hooks: list[tuple[str, re.Pattern[str], Callable[[], None]]] = field(default_factory=list)
    pods_become_ready: bool = True  # new pods turn Ready at once (unless their model is unready)
    unready_models: set[str] = field(default_factory=set)  # a model whose pods never get Ready
    # The replica count an autoscaler's metric asks for, by (namespace, object name).
    metric_replicas: dict[tuple[str, str], int] = field(default_factory=dict)
    # (kind, namespace/name, replicas) for every replica write an autoscaler made.
    autoscaler_writes: list[tuple[str, str, int]] = field(default_factory=list)
    termination_seconds: float = 0.05  # how long a deleted pod stays Terminating
    tick_seconds: float = 0.02
    bookmark_seconds: float = 0.2
    resource_version: int = 1
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _server: TestServer | None = None
    _controller: asyncio.Task[None] | None = None
    _placement: dict[tuple[str, str], str] = field(default_factory=dict)
    _progress: dict[tuple[str, str], tuple[tuple[int, ...], float]] = field(default_factory=dict)
    _watches: list[tuple[asyncio.Queue[dict[str, Any] | None], str | None, str, str]] = field(
        default_factory=list
    )
    _pod_events: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    _compacted: int = 0

    # -- test set-up --------------------------------------------------------------------------

    def add_node(self, name: str, labels: dict[str, str] | None = None) -> None:
        self.nodes[name] = self._stamp(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": labels or {}, "annotations": {}},
                "spec": {},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]},
            }
        )

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
        progress_deadline_seconds: int = 600,
        max_surge: int | str = "25%",
        max_unavailable: int | str = "25%",
    ) -> None:
        match = {"app": name}
        self._placement[(namespace, name)] = node
        self.deployments[(namespace, name)] = self._stamp(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "uid": f"uid-{name}",
                    "labels": labels or {},
                    "annotations": annotations or {},
                    "generation": 1,
                },
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": match},
                    "progressDeadlineSeconds": progress_deadline_seconds,
                    "strategy": {
                        "type": "RollingUpdate",
                        "rollingUpdate": {
                            "maxSurge": max_surge,
                            "maxUnavailable": max_unavailable,
                        },
                    },
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
                                    "env": [{"name": MODEL_ENV, "value": model}],
                                }
                            ]
                        },
                    },
                },
                "status": {},
            }
        )
        self.reconcile()

    def add_hpa(
        self, namespace: str, name: str, deployment: str, min_replicas: int, max_replicas: int
    ) -> None:
        """An autoscaling/v2 HPA on the deployment; its metric asks for the current count."""
        self.hpas[(namespace, name)] = self._stamp(
            {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": name, "namespace": namespace, "annotations": {}},
                "spec": {
                    "scaleTargetRef": {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": deployment,
                    },
                    "minReplicas": min_replicas,
                    "maxReplicas": max_replicas,
                    "metrics": [],
                },
                "status": {},
            }
        )
        replicas = self.deployments[(namespace, deployment)]["spec"]["replicas"]
        self.hpas[(namespace, name)]["status"] = {
            "currentReplicas": replicas,
            "desiredReplicas": replicas,
        }
        self.metric_replicas[(namespace, name)] = self.deployments[(namespace, deployment)]["spec"][
            "replicas"
        ]

    def add_scaled_object(
        self, namespace: str, name: str, deployment: str, min_count: int, max_count: int
    ) -> None:
        """A KEDA ScaledObject on the deployment; its trigger asks for the current count."""
        self.scaled_objects[(namespace, name)] = self._stamp(
            {
                "apiVersion": "keda.sh/v1alpha1",
                "kind": "ScaledObject",
                "metadata": {"name": name, "namespace": namespace, "annotations": {}},
                "spec": {
                    "scaleTargetRef": {"name": deployment},
                    "minReplicaCount": min_count,
                    "maxReplicaCount": max_count,
                    "triggers": [],
                },
            }
        )
        self.metric_replicas[(namespace, name)] = self.deployments[(namespace, deployment)]["spec"][
            "replicas"
        ]

    def add_pdb(
        self,
        namespace: str,
        name: str,
        selector: dict[str, str],
        *,
        min_available: int | str | None = None,
        max_unavailable: int | str | None = None,
    ) -> None:
        spec: dict[str, Any] = {"selector": {"matchLabels": selector}}
        if min_available is not None:
            spec["minAvailable"] = min_available
        if max_unavailable is not None:
            spec["maxUnavailable"] = max_unavailable
        self.pdbs[(namespace, name)] = self._stamp(
            {
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": {"name": name, "namespace": namespace},
                "spec": spec,
            }
        )

    def pods_of(self, namespace: str, deployment: str) -> list[dict[str, Any]]:
        """The deployment's pods that are not terminating."""
        return [
            p
            for (ns, _), p in sorted(self.pods.items())
            if ns == namespace
            and p["metadata"]["labels"].get("app") == deployment
            and not _terminating(p)
        ]

    def fail(self, method: str, path: str, status: int, times: int = 1, reason: str = "") -> None:
        """The next `times` requests matching method and path (regex) get `status`."""
        self.failures.append(Failure(method, re.compile(path), status, times, reason))

    def before(self, method: str, path: str, action: Callable[[], None]) -> None:
        """Run `action` once, just before the next request matching method and path."""
        self.hooks.append((method, re.compile(path), action))

    def set_replicas(self, namespace: str, name: str, replicas: int) -> None:
        """Another writer (kubectl scale) changes the replica count."""
        new = copy.deepcopy(self.deployments[(namespace, name)])
        new["spec"]["replicas"] = replicas
        self._write(self.deployments, (namespace, name), new, "deployments.apps")
        self.reconcile()

    def annotate(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        """Another writer (kubectl annotate, another replica) annotates a Deployment."""
        new = copy.deepcopy(self.deployments[(namespace, name)])
        new["metadata"]["annotations"] = {**new["metadata"].get("annotations", {}), **annotations}
        new["metadata"].pop("resourceVersion")
        self._write(self.deployments, (namespace, name), new, "deployments.apps")

    def calls(self, method: str | None = None, path: str | None = None) -> list[Recorded]:
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and (path is None or re.search(path, r.path))
        ]

    def compact(self) -> None:
        """Drop the watch history (etcd compaction): older resourceVersions get 410 Gone."""
        self._compacted = self.resource_version
        self._pod_events.clear()

    def end_watches(self) -> None:
        """End every open watch stream (what an API server restart does to its clients)."""
        for queue, *_ in self._watches:
            queue.put_nowait(None)

    # -- server -------------------------------------------------------------------------------

    async def __aenter__(self) -> FakeKubeApi:
        await self._serve(0)
        self._controller = asyncio.create_task(self._control_loop())
        return self

    async def restart(self) -> None:
        """Stop serving (open watches end, connections drop) and serve again on the same port
        with the same objects, like an API server restart behind a stable address."""
        assert self._server is not None
        port = self._server.port
        await self._server.close()
        await self._serve(port or 0)

    async def _serve(self, port: int) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=3 * 1024 * 1024)
        r = app.router
        ns = "/namespaces/{ns}"
        r.add_get(
            f"/apis/apps/v1{ns}/deployments",
            self._lister(self.deployments, "DeploymentList", "apps/v1"),
        )
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
        hpa = f"/apis/autoscaling/v2{ns}/horizontalpodautoscalers"
        r.add_get(hpa, self._lister(self.hpas, "HorizontalPodAutoscalerList", "autoscaling/v2"))
        r.add_get(
            f"{hpa}/{{name}}", self._getter(self.hpas, "horizontalpodautoscalers.autoscaling")
        )
        r.add_patch(
            f"{hpa}/{{name}}", self._patcher(self.hpas, "horizontalpodautoscalers.autoscaling")
        )
        so = f"/apis/keda.sh/v1alpha1{ns}/scaledobjects"
        r.add_get(so, self._lister(self.scaled_objects, "ScaledObjectList", "keda.sh/v1alpha1"))
        r.add_get(f"{so}/{{name}}", self._getter(self.scaled_objects, "scaledobjects.keda.sh"))
        r.add_patch(
            f"{so}/{{name}}",
            self._patcher(self.scaled_objects, "scaledobjects.keda.sh", custom=True),
        )
        pdb = f"/apis/policy/v1{ns}/poddisruptionbudgets"
        r.add_get(pdb, self._lister(self.pdbs, "PodDisruptionBudgetList", "policy/v1"))
        lease = f"/apis/coordination.k8s.io/v1{ns}/leases"
        r.add_post(lease, self._create_lease)
        r.add_get(f"{lease}/{{name}}", self._getter(self.leases, "leases.coordination.k8s.io"))
        r.add_put(f"{lease}/{{name}}", self._replace_lease)
        cm = f"/api/v1{ns}/configmaps"
        r.add_post(cm, self._create_config_map)
        r.add_get(f"{cm}/{{name}}", self._getter(self.config_maps, "configmaps"))
        r.add_put(f"{cm}/{{name}}", self._replace_config_map)
        app.on_shutdown.append(self._on_shutdown)
        self._server = TestServer(app, host="127.0.0.1", port=port)
        await self._server.start_server()

    async def __aexit__(self, *exc: object) -> None:
        if self._controller is not None:
            self._controller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._controller
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
            malformed = False
        except ValueError:
            body, malformed = raw.decode(errors="replace"), True
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
        for hook in list(self.hooks):
            if hook[0] == request.method and hook[1].search(request.path):
                self.hooks.remove(hook)
                hook[2]()
        if malformed:
            return ApiError(400, "BadRequest", "the request body is not valid JSON").response()
        try:
            result: web.StreamResponse = await handler(request)
        except ApiError as exc:
            return exc.response()
        self.reconcile()
        return result

    def _body(self) -> Any:
        return self.requests[-1].body

    # -- generic object plumbing --------------------------------------------------------------

    def _stamp(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Every write gets a new resourceVersion."""
        self.resource_version += 1
        obj["metadata"]["resourceVersion"] = str(self.resource_version)
        return obj

    def _write(
        self, store: dict[Any, dict[str, Any]], key: Any, new: dict[str, Any], what: str
    ) -> dict[str, Any]:
        """Optimistic concurrency: a resourceVersion in the written object must be current."""
        old = store[key]
        sent = new["metadata"].get("resourceVersion")
        if sent is not None and sent != old["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {what} "{old["metadata"]["name"]}": the object '
                "has been modified; please apply your changes to the latest version and try again",
            )
        if new["metadata"].get("name") != old["metadata"]["name"]:
            raise ApiError(400, "BadRequest", "the name of the object does not match")
        validate_annotations(new["metadata"].get("annotations"))
        if new.get("spec") != old.get("spec") and "generation" in old["metadata"]:
            new["metadata"]["generation"] = old["metadata"]["generation"] + 1
        store[key] = self._stamp(new)
        return store[key]

    def _lister(
        self, store: dict[tuple[str, str], dict[str, Any]], kind: str, api_version: str
    ) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            ns = request.match_info["ns"]
            items = [o for (ons, _), o in sorted(store.items()) if ons == ns]
            return web.json_response(
                {
                    "apiVersion": api_version,
                    "kind": kind,
                    "metadata": {"resourceVersion": str(self.resource_version)},
                    "items": items,
                }
            )

        return handler

    def _getter(
        self, store: dict[tuple[str, str], dict[str, Any]], what: str
    ) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            key = (request.match_info["ns"], request.match_info["name"])
            if key not in store:
                raise ApiError(404, "NotFound", f'{what} "{key[1]}" not found')
            return web.json_response(store[key])

        return handler

    def _patcher(
        self, store: dict[tuple[str, str], dict[str, Any]], what: str, *, custom: bool = False
    ) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            key = (request.match_info["ns"], request.match_info["name"])
            if key not in store:
                raise ApiError(404, "NotFound", f'{what} "{key[1]}" not found')
            if custom and request.content_type == STRATEGIC:
                # Custom resources have no patch merge keys: the API refuses this patch type.
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types "
                    f"include: {JSON_PATCH}, {MERGE}, application/apply-patch+yaml",
                )
            new = apply_patch(store[key], request.content_type, self._body())
            spec = new.get("spec", {})
            low = spec.get("minReplicas", spec.get("minReplicaCount", 1))
            high = spec.get("maxReplicas", spec.get("maxReplicaCount", 100))
            if not isinstance(low, int) or not isinstance(high, int) or low < 0 or low > high:
                raise ApiError(422, "Invalid", f"{what}: the minimum must be 0..maximum")
            return web.json_response(self._write(store, key, new, what))

        return handler

    # -- deployments --------------------------------------------------------------------------

    def _deployment_of(self, request: web.Request) -> tuple[tuple[str, str], dict[str, Any]]:
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.deployments:
            raise ApiError(404, "NotFound", f'deployments.apps "{key[1]}" not found')
        return key, self.deployments[key]

    async def _get_deployment(self, request: web.Request) -> web.Response:
        return web.json_response(self._deployment_of(request)[1])

    async def _patch_deployment(self, request: web.Request) -> web.Response:
        key, dep = self._deployment_of(request)
        new = apply_patch(dep, request.content_type, self._body())
        self._validate_deployment(dep, new)
        return web.json_response(self._write(self.deployments, key, new, "deployments.apps"))

    @staticmethod
    def _validate_deployment(old: dict[str, Any], new: dict[str, Any]) -> None:
        """What apps/v1 validation rejects among what a patch can break."""
        spec = new.get("spec") or {}
        if spec.get("selector") != old["spec"]["selector"]:
            raise ApiError(422, "Invalid", "spec.selector: Invalid value: field is immutable")
        replicas = spec.get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise ApiError(422, "Invalid", "spec.replicas: must be greater than or equal to 0")
        containers = (((spec.get("template") or {}).get("spec")) or {}).get("containers")
        if not isinstance(containers, list) or not containers:
            raise ApiError(422, "Invalid", "spec.template.spec.containers: Required value")
        for i, container in enumerate(containers):
            for required in ("name", "image"):
                if not isinstance(container, dict) or not container.get(required):
                    raise ApiError(
                        422,
                        "Invalid",
                        f"spec.template.spec.containers[{i}].{required}: Required value",
                    )

    def _scale(self, dep: dict[str, Any]) -> dict[str, Any]:
        meta = dep["metadata"]
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {
                "name": meta["name"],
                "namespace": meta["namespace"],
                "resourceVersion": meta["resourceVersion"],
            },
            "spec": {"replicas": dep["spec"]["replicas"]},
            "status": {
                "replicas": dep["status"].get("replicas", 0),
                "selector": ",".join(
                    f"{k}={v}" for k, v in sorted(dep["spec"]["selector"]["matchLabels"].items())
                ),
            },
        }

    async def _get_scale(self, request: web.Request) -> web.Response:
        return web.json_response(self._scale(self._deployment_of(request)[1]))

    async def _patch_scale(self, request: web.Request) -> web.Response:
        """The scale subresource shares the Deployment's resourceVersion (a stale one is 409)."""
        key, dep = self._deployment_of(request)
        scale = apply_patch(self._scale(dep), request.content_type, self._body())
        replicas = (scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise ApiError(422, "Invalid", "spec.replicas: must be greater than or equal to 0")
        new = copy.deepcopy(dep)
        new["spec"]["replicas"] = replicas
        new["metadata"]["resourceVersion"] = scale["metadata"].get("resourceVersion")
        self._write(self.deployments, key, new, "deployments.apps")
        self.reconcile()
        return web.json_response(self._scale(self.deployments[key]))

    async def _get_replicaset(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.replicasets:
            raise ApiError(404, "NotFound", f'replicasets.apps "{key[1]}" not found')
        return web.json_response(self.replicasets[key])

    # -- pods ---------------------------------------------------------------------------------

    async def _list_pods(self, request: web.Request) -> web.StreamResponse:
        ns = request.match_info.get("ns")
        selector = request.query.get("labelSelector", "")
        fields = request.query.get("fieldSelector", "")
        selector_matches(selector, {})  # a malformed selector is 400 before anything else
        field_matches(fields, {"metadata": {"name": "", "namespace": ""}, "spec": {}, "status": {}})
        if request.query.get("watch", "").lower() in ("1", "t", "true"):
            return await self._watch_pods(request, ns, selector, fields)
        items = [p for p in sorted_pods(self.pods) if self._watched(p, ns, selector, fields)]
        return web.json_response(
            {
                "apiVersion": "v1",
                "kind": "PodList",
                "metadata": {"resourceVersion": str(self.resource_version)},
                "items": items,
            }
        )

    def _pod_of(self, request: web.Request) -> tuple[tuple[str, str], dict[str, Any]]:
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.pods:
            raise ApiError(404, "NotFound", f'pods "{key[1]}" not found')
        return key, self.pods[key]

    async def _get_pod(self, request: web.Request) -> web.Response:
        return web.json_response(self._pod_of(request)[1])

    async def _patch_pod(self, request: web.Request) -> web.Response:
        key, pod = self._pod_of(request)
        new = apply_patch(pod, request.content_type, self._body())
        if new.get("spec") != pod.get("spec"):
            raise ApiError(422, "Invalid", "spec: Forbidden: pod updates may not change fields")
        self._write(self.pods, key, new, "pods")
        self._notify("MODIFIED", self.pods[key])
        return web.json_response(self.pods[key])

    async def _delete_pod(self, request: web.Request) -> web.Response:
        key, pod = self._pod_of(request)
        self._terminate(key)
        return web.json_response(self.pods.get(key, pod))

    def _terminate(self, key: tuple[str, str]) -> None:
        """Graceful deletion: the pod turns Terminating, and goes after its grace period."""
        pod = self.pods[key]
        if _terminating(pod):
            return
        pod["metadata"]["deletionTimestamp"] = _now()
        pod["metadata"]["deletionGracePeriodSeconds"] = 30
        pod["metadata"]["_gone_at"] = time.monotonic() + self.termination_seconds
        self._stamp(pod)
        self._notify("MODIFIED", pod)

    async def _evict(self, request: web.Request) -> web.Response:
        key, pod = self._pod_of(request)
        body = self._body()
        # A missing apiVersion/kind is defaulted from the URL (the API's decoder does that);
        # another kind, or an object that is not one, is 400.
        if (
            not isinstance(body, dict)
            or body.get("kind", "Eviction") != "Eviction"
            or body.get("apiVersion", "policy/v1") not in ("policy/v1", "policy/v1beta1")
        ):
            raise ApiError(400, "BadRequest", "the body is not a policy/v1 Eviction")
        if (body.get("metadata") or {}).get("name") != key[1]:
            raise ApiError(400, "BadRequest", "name in URL does not match name in Eviction object")
        if not _terminating(pod) and pod["status"].get("phase") == "Running":
            budgets = [
                b
                for (ns, _), b in sorted(self.pdbs.items())
                if ns == key[0]
                and match_label_selector(b["spec"]["selector"], pod["metadata"]["labels"])
            ]
            if len(budgets) > 1:
                raise ApiError(
                    500, "InternalError", "This pod has more than one PodDisruptionBudget"
                )
            for budget in budgets:
                self._check_budget(budget, pod)
        self._terminate(key)
        return web.json_response(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "code": 201,
            },
            status=201,
        )

    def _check_budget(self, budget: dict[str, Any], pod: dict[str, Any]) -> None:
        ns = budget["metadata"]["namespace"]
        covered = [
            p
            for (pns, _), p in self.pods.items()
            if pns == ns
            and not _terminating(p)
            and match_label_selector(budget["spec"]["selector"], p["metadata"]["labels"])
        ]
        healthy = sum(1 for p in covered if _ready(p))
        spec = budget["spec"]
        if "minAvailable" in spec:
            desired = _int_or_percent(spec["minAvailable"], len(covered), round_up=True)
        else:
            desired = len(covered) - _int_or_percent(
                spec.get("maxUnavailable", 0), len(covered), round_up=True
            )
        # Unhealthy pods may go while the budget holds (unhealthyPodEvictionPolicy IfHealthyBudget).
        allowed = healthy - desired if _ready(pod) else (1 if healthy >= desired else 0)
        if allowed <= 0:
            raise ApiError(
                429,
                "TooManyRequests",
                "Cannot evict pod as it would violate the pod's disruption budget.",
                causes=[
                    {
                        "reason": "DisruptionBudget",
                        "message": f"The disruption budget {budget['metadata']['name']} needs "
                        f"{desired} healthy pods and has {healthy} currently",
                    }
                ],
            )

    # -- nodes and events ---------------------------------------------------------------------

    async def _list_nodes(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "apiVersion": "v1",
                "kind": "NodeList",
                "metadata": {"resourceVersion": str(self.resource_version)},
                "items": [self.nodes[n] for n in sorted(self.nodes)],
            }
        )

    async def _get_node(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.nodes:
            raise ApiError(404, "NotFound", f'nodes "{name}" not found')
        return web.json_response(self.nodes[name])

    async def _patch_node(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.nodes:
            raise ApiError(404, "NotFound", f'nodes "{name}" not found')
        new = apply_patch(self.nodes[name], request.content_type, self._body())
        return web.json_response(self._write(self.nodes, name, new, "nodes"))

    async def _create_event(self, request: web.Request) -> web.Response:
        event = self._body()
        if not isinstance(event, dict) or not event.get("involvedObject"):
            raise ApiError(422, "Invalid", "involvedObject: Required value")
        event.setdefault("metadata", {})["name"] = f"event-{next(self._ids)}"
        self.events.append(event)
        return web.json_response(event, status=201)

    # -- leases -------------------------------------------------------------------------------

    async def _create_lease(self, request: web.Request) -> web.Response:
        return self._create_namespaced(
            request, self.leases, "Lease", "coordination.k8s.io/v1", "leases.coordination.k8s.io"
        )

    async def _replace_lease(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        lease = self._body()
        if key not in self.leases:
            raise ApiError(404, "NotFound", f'leases.coordination.k8s.io "{key[1]}" not found')
        if not isinstance(lease, dict) or not isinstance(lease.get("metadata"), dict):
            raise ApiError(400, "BadRequest", "the body is not a Lease")
        if not lease["metadata"].get("resourceVersion"):
            raise ApiError(
                422,
                "Invalid",
                "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
            )
        lease.update(apiVersion="coordination.k8s.io/v1", kind="Lease")
        lease["metadata"]["namespace"] = key[0]
        return web.json_response(self._write(self.leases, key, lease, "leases.coordination.k8s.io"))

    # -- config maps --------------------------------------------------------------------------

    async def _create_config_map(self, request: web.Request) -> web.Response:
        return self._create_namespaced(
            request,
            self.config_maps,
            "ConfigMap",
            "v1",
            "configmaps",
            validate=lambda cm: validate_config_map_data(cm.get("data")),
        )

    def _create_namespaced(
        self,
        request: web.Request,
        store: dict[tuple[str, str], dict[str, Any]],
        kind: str,
        api_version: str,
        resource: str,
        validate: Callable[[dict[str, Any]], None] | None = None,
    ) -> web.Response:
        """POST of a namespaced object, with the checks the API server makes on every create."""
        ns, obj = request.match_info["ns"], self._body()
        if not isinstance(obj, dict) or obj.get("kind", kind) != kind:
            raise ApiError(400, "BadRequest", f"the body is not a {kind}")
        meta = obj.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            raise ApiError(422, "Invalid", "metadata.name: Required value: name is required")
        if meta.get("namespace", ns) != ns:
            raise ApiError(400, "BadRequest", "the namespace of the object does not match")
        if (ns, name) in store:
            raise ApiError(409, "AlreadyExists", f'{resource} "{name}" already exists')
        if meta.get("resourceVersion"):
            raise ApiError(
                422, "Invalid", "metadata.resourceVersion: resourceVersion should not be set"
            )
        validate_annotations(meta.get("annotations"))
        if validate is not None:
            validate(obj)
        meta["namespace"] = ns
        obj.update(apiVersion=api_version, kind=kind)
        store[(ns, name)] = self._stamp(obj)
        return web.json_response(obj, status=201)

    async def _replace_config_map(self, request: web.Request) -> web.Response:
        """PUT: the ConfigMap strategy allows an unconditional update (no resourceVersion), but a
        resourceVersion that is sent must be current (409)."""
        key = (request.match_info["ns"], request.match_info["name"])
        cm = self._body()
        if key not in self.config_maps:
            raise ApiError(404, "NotFound", f'configmaps "{key[1]}" not found')
        if not isinstance(cm, dict) or not isinstance(cm.get("metadata"), dict):
            raise ApiError(400, "BadRequest", "the body is not a ConfigMap")
        validate_config_map_data(cm.get("data"))
        cm.update(apiVersion="v1", kind="ConfigMap")
        cm["metadata"]["namespace"] = key[0]
        return web.json_response(self._write(self.config_maps, key, cm, "configmaps"))

    # -- controllers --------------------------------------------------------------------------

    async def _control_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_seconds)
            self.tick()

    def tick(self) -> None:
        """One round of every controller: terminating pods go, autoscalers and rollouts act."""
        now = time.monotonic()
        for key, pod in list(self.pods.items()):
            if _terminating(pod) and pod["metadata"].get("_gone_at", 0) <= now:
                del self.pods[key]
                self.resource_version += 1
                self._notify("DELETED", pod)
        self._autoscale()
        self.reconcile()

    def _autoscale(self) -> None:
        for store, kind, low_key, high_key, default_low in (
            (self.hpas, "HorizontalPodAutoscaler", "minReplicas", "maxReplicas", 1),
            (self.scaled_objects, "ScaledObject", "minReplicaCount", "maxReplicaCount", 0),
        ):
            for (ns, name), obj in store.items():
                target = (ns, obj["spec"]["scaleTargetRef"]["name"])
                if target not in self.deployments:
                    continue
                low = obj["spec"].get(low_key, default_low)
                high = obj["spec"].get(high_key, 100)
                want = max(low, min(high, self.metric_replicas.get((ns, name), low)))
                dep = self.deployments[target]
                if kind == "HorizontalPodAutoscaler":
                    obj["status"] = {
                        "currentReplicas": dep["spec"]["replicas"],
                        "desiredReplicas": want,
                    }
                if dep["spec"]["replicas"] != want:
                    new = copy.deepcopy(dep)
                    new["spec"]["replicas"] = want
                    self._write(self.deployments, target, new, "deployments.apps")
                    self.autoscaler_writes.append((kind, f"{ns}/{name}", want))

    def reconcile(self) -> None:
        for key in list(self.deployments):
            for _ in range(50):  # bounded: each round either changes something or stops
                if not self._rollout_step(*key):
                    break
            self._deployment_status(*key)

    def _replica_sets(self, ns: str, name: str) -> list[tuple[str, dict[str, Any]]]:
        return [
            (rs_name, rs)
            for (rns, rs_name), rs in sorted(self.replicasets.items())
            if rns == ns
            and any(o["name"] == name for o in rs["metadata"].get("ownerReferences", []))
        ]

    def _rs_pods(self, ns: str, rs_name: str) -> list[dict[str, Any]]:
        return [
            p
            for (pns, _), p in sorted(self.pods.items())
            if pns == ns
            and not _terminating(p)
            and any(o["name"] == rs_name for o in p["metadata"].get("ownerReferences", []))
        ]

    def _rollout_step(self, ns: str, name: str) -> bool:
        """One step of the rolling update (rolling.go: reconcileNewReplicaSet, then
        reconcileOldReplicaSets), then the ReplicaSet controller makes pods match."""
        dep = self.deployments[(ns, name)]
        template = dep["spec"]["template"]
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        new_name = f"{name}-{digest}"
        if (ns, new_name) not in self.replicasets:
            labels = {**template["metadata"]["labels"], "pod-template-hash": digest}
            self.replicasets[(ns, new_name)] = self._stamp(
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "metadata": {
                        "name": new_name,
                        "namespace": ns,
                        "labels": labels,
                        "ownerReferences": [
                            {
                                "apiVersion": "apps/v1",
                                "kind": "Deployment",
                                "name": name,
                                "uid": dep["metadata"]["uid"],
                                "controller": True,
                            }
                        ],
                    },
                    "spec": {
                        "replicas": 0,
                        "selector": {"matchLabels": {**dep["spec"]["selector"]["matchLabels"]}},
                        "template": {
                            "metadata": {"labels": labels},
                            "spec": copy.deepcopy(template["spec"]),
                        },
                    },
                }
            )
        changed = False
        want = dep["spec"]["replicas"]
        rolling = dep["spec"].get("strategy", {}).get("rollingUpdate", {})
        surge = _int_or_percent(rolling.get("maxSurge", "25%"), want, round_up=True)
        unavailable = _int_or_percent(rolling.get("maxUnavailable", "25%"), want, round_up=False)
        if surge == 0 and unavailable == 0:
            unavailable = 1
        sets = self._replica_sets(ns, name)
        new_rs = self.replicasets[(ns, new_name)]
        old = [(n, rs) for n, rs in sets if n != new_name]
        total = sum(rs["spec"]["replicas"] for _, rs in sets)
        if not any(rs["spec"]["replicas"] for _, rs in old):
            target = want  # nothing to roll: plain scaling
        elif new_rs["spec"]["replicas"] < want:
            target = min(want, new_rs["spec"]["replicas"] + max(0, want + surge - total))
        else:
            target = want
        if new_rs["spec"]["replicas"] != target:
            new_rs["spec"]["replicas"] = target
            changed = True
        # Old ReplicaSets (reconcileOldReplicaSets): first drop their unhealthy pods, then scale
        # down while availability stays at or above replicas - maxUnavailable.
        min_available = want - unavailable
        all_pods = sum(rs["spec"]["replicas"] for _, rs in sets)
        new_ready = sum(1 for p in self._rs_pods(ns, new_name) if _ready(p))
        max_down = all_pods - min_available - (new_rs["spec"]["replicas"] - new_ready)
        for rs_name, rs in old:
            unhealthy = sum(1 for p in self._rs_pods(ns, rs_name) if not _ready(p))
            drop = min(rs["spec"]["replicas"], unhealthy, max(max_down, 0))
            if drop:
                rs["spec"]["replicas"] -= drop
                max_down -= drop
                changed = True
        available = sum(1 for n, _ in sets for p in self._rs_pods(ns, n) if _ready(p))
        budget = available - min_available
        for _, rs in old:
            down = min(rs["spec"]["replicas"], max(budget, 0))
            if down:
                rs["spec"]["replicas"] -= down
                budget -= down
                changed = True
        for rs_name, rs in self._replica_sets(ns, name):
            changed |= self._sync_replica_set(ns, name, rs_name, rs)
        return changed

    def _sync_replica_set(self, ns: str, dep_name: str, rs_name: str, rs: dict[str, Any]) -> bool:
        pods = self._rs_pods(ns, rs_name)
        want = rs["spec"]["replicas"]
        if len(pods) > want:
            victims = sorted(pods, key=lambda p: (_ready(p), p["metadata"]["name"]), reverse=False)
            for pod in victims[: len(pods) - want]:
                self._terminate((ns, pod["metadata"]["name"]))
            return True
        for _ in range(want - len(pods)):
            self._new_pod(ns, dep_name, rs_name, rs)
        rs.setdefault("status", {})["replicas"] = want
        return len(pods) < want

    def _deployment_status(self, ns: str, name: str) -> None:
        dep = self.deployments[(ns, name)]
        template = dep["spec"]["template"]
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        pods = [p for n, _ in self._replica_sets(ns, name) for p in self._rs_pods(ns, n)]
        updated = self._rs_pods(ns, f"{name}-{digest}")
        want = dep["spec"]["replicas"]
        ready = sum(1 for p in pods if _ready(p))
        status: dict[str, Any] = {
            "observedGeneration": dep["metadata"]["generation"],
            "replicas": len(pods),
            "updatedReplicas": len(updated),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": max(0, want - ready),
        }
        counts = (dep["metadata"]["generation"], len(pods), len(updated), ready)
        now = time.monotonic()
        last = self._progress.get((ns, name))
        if last is None or last[0] != counts:
            self._progress[(ns, name)] = last = (counts, now)
        complete = len(updated) == want and len(pods) == want and ready == want
        if complete:
            progressing = (
                "True",
                "NewReplicaSetAvailable",
                f'ReplicaSet "{name}-{digest}" has successfully progressed.',
            )
        elif now - last[1] > dep["spec"].get("progressDeadlineSeconds", 600):
            progressing = (
                "False",
                "ProgressDeadlineExceeded",
                f'ReplicaSet "{name}-{digest}" has timed out progressing.',
            )
        else:
            progressing = (
                "True",
                "ReplicaSetUpdated",
                f'ReplicaSet "{name}-{digest}" is progressing.',
            )
        rolling = dep["spec"].get("strategy", {}).get("rollingUpdate", {})
        min_ready = want - _int_or_percent(rolling.get("maxUnavailable", "25%"), want, False)
        status["conditions"] = [
            {
                "type": "Available",
                "status": "True" if ready >= min_ready else "False",
                "reason": "MinimumReplicasAvailable"
                if ready >= min_ready
                else "MinimumReplicasUnavailable",
            },
            dict(
                zip(("status", "reason", "message"), progressing, strict=True), type="Progressing"
            ),
        ]
        if dep["status"] != status:
            dep["status"] = status
            self._stamp(dep)

    def _new_pod(self, ns: str, deployment: str, rs_name: str, rs: dict[str, Any]) -> None:
        template = rs["spec"]["template"]
        preferred = self._placement.get((ns, deployment))
        schedulable = [
            n for n, node in sorted(self.nodes.items()) if not node["spec"].get("unschedulable")
        ]
        node = preferred if preferred in schedulable else (schedulable[0] if schedulable else None)
        pod: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{rs_name}-{next(self._ids):05d}",
                "namespace": ns,
                "uid": f"uid-pod-{next(self._ids)}",
                "labels": dict(template["metadata"]["labels"]),
                "annotations": {},
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "ReplicaSet",
                        "name": rs_name,
                        "uid": f"uid-rs-{rs_name}",
                        "controller": True,
                    }
                ],
            },
            "spec": {**copy.deepcopy(template["spec"]), **({"nodeName": node} if node else {})},
            "status": {"phase": "Pending", "conditions": []},
        }
        ready = (
            node is not None
            and self.pods_become_ready
            and pod_model(pod) not in self.unready_models
        )
        if node is not None:
            pod["status"] = {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            }
        self.pods[(ns, pod["metadata"]["name"])] = self._stamp(pod)
        self._notify("ADDED", pod)

    # -- pod watch ----------------------------------------------------------------------------

    def put_pod(self, pod: dict[str, Any]) -> None:
        """Add or replace a standalone pod and tell open watches (ADDED / MODIFIED)."""
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        kind = "MODIFIED" if key in self.pods else "ADDED"
        self.pods[key] = self._stamp(pod)
        self._notify(kind, pod)

    def remove_pod(self, namespace: str, name: str) -> None:
        """Delete a pod at once (no replacement) and tell open watches (DELETED)."""
        pod = self.pods.pop((namespace, name))
        self.resource_version += 1
        self._notify("DELETED", pod)

    def _notify(self, kind: str, pod: dict[str, Any]) -> None:
        shown = copy.deepcopy(pod)
        shown["metadata"].pop("_gone_at", None)
        shown["metadata"]["resourceVersion"] = str(self.resource_version)
        event = {"type": kind, "object": shown}
        self._pod_events.append((self.resource_version, event))
        for queue, ns, selector, fields in self._watches:
            if self._watched(shown, ns, selector, fields):
                queue.put_nowait(event)

    @staticmethod
    def _watched(pod: dict[str, Any], ns: str | None, selector: str, fields: str) -> bool:
        return (
            (ns is None or pod["metadata"]["namespace"] == ns)
            and selector_matches(selector, pod["metadata"]["labels"])
            and field_matches(fields, pod)
        )

    async def _watch_pods(
        self, request: web.Request, ns: str | None, selector: str, fields: str
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        since = int(request.query.get("resourceVersion") or 0)
        if since and since < self._compacted:
            # The API answers 200 and sends one ERROR event with a 410 Status, then ends.
            gone = status_body(
                410, "Expired", f"too old resource version: {since} ({self._compacted})"
            )
            await response.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            await response.write_eof()
            return response
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        for version, event in self._pod_events:  # replay what the client missed
            if version > since and self._watched(event["object"], ns, selector, fields):
                queue.put_nowait(event)
        entry = (queue, ns, selector, fields)
        self._watches.append(entry)
        bookmarks = request.query.get("allowWatchBookmarks", "").lower() in ("1", "t", "true")
        try:
            async with asyncio.timeout(float(request.query.get("timeoutSeconds", "300"))):
                while True:
                    try:
                        event = await asyncio.wait_for(queue.get(), self.bookmark_seconds)
                    except TimeoutError:
                        if bookmarks:
                            mark = {
                                "type": "BOOKMARK",
                                "object": {
                                    "kind": "Pod",
                                    "apiVersion": "v1",
                                    "metadata": {"resourceVersion": str(self.resource_version)},
                                },
                            }
                            await response.write(json.dumps(mark).encode() + b"\n")
                        continue
                    if event is None:
                        break
                    await response.write(json.dumps(event).encode() + b"\n")
        except TimeoutError:
            pass
        finally:
            self._watches.remove(entry)
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response

    async def _on_shutdown(self, app: web.Application) -> None:
        self.end_watches()


def sorted_pods(pods: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for _, p in sorted(pods.items())]


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
