"""What an action acts on, built from untrusted alert labels.

Every value taken from an alert is checked here before a backend sees it: Kubernetes names must
be DNS-1123, namespaces must be allow-listed, names must match the configured patterns. Nothing
here is ever passed to a shell; backends use argv lists and API calls only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

# Used with fullmatch() and ending in \Z: `$` also matches before a trailing newline.
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
DNS1123_SUBDOMAIN = re.compile(
    r"(?=.{1,253}\Z)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z"
)
HOST_PORT = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?:[0-9]{1,5}\Z")
GPU_ID = re.compile(r"([0-9]{1,3}|GPU-[0-9a-fA-F-]{8,64}|MIG-[0-9a-fA-F-]{8,64})\Z")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,252}\Z")
# Objects that name no namespace live in Kubernetes' "default" one; so do alerts without one.
IMPLICIT_NAMESPACE = "default"


class TargetError(ValueError):
    """An alert names a target we must not act on; the message says which label and why."""


@dataclass(frozen=True)
class TargetRef:
    """The objects an alert points at; backends fill in what they can derive (e.g. deployment)."""

    namespace: str | None = None
    deployment: str | None = None
    replica: str | None = None
    node: str | None = None
    model: str | None = None
    gpu: str | None = None

    def with_(self, **changes: str | None) -> TargetRef:
        return replace(self, **changes)

    def key(self, kind: str) -> str:
        """Stable text for cooldowns, locks and the audit log."""
        ns = f"{self.namespace}/" if self.namespace else ""
        if kind == "node":
            return f"node/{self.node}" if self.node else f"gpu/{self.gpu}"
        if kind == "replica":
            return f"replica/{ns}{self.replica}"
        return f"deployment/{ns}{self.deployment or self.model}"


def check_k8s_name(label: str, value: str) -> str:
    if not DNS1123_SUBDOMAIN.fullmatch(value):
        raise TargetError(f"label {label}={value[:80]!r} is not a valid Kubernetes name")
    return value


def check_namespace(label: str, value: str, allowed: Sequence[str]) -> str:
    if not DNS1123_LABEL.fullmatch(value):
        raise TargetError(f"label {label}={value[:80]!r} is not a valid Kubernetes namespace")
    if value not in allowed:
        raise TargetError(f"namespace {value!r} is not in the allow-list")
    return value


def check_replica(label: str, value: str) -> str:
    """A replica is a pod name (Kubernetes) or a host:port endpoint (local backend)."""
    if DNS1123_SUBDOMAIN.fullmatch(value) or HOST_PORT.fullmatch(value):
        return value
    raise TargetError(f"label {label}={value[:80]!r} is neither a Kubernetes name nor host:port")


def check_model(label: str, value: str) -> str:
    if ".." in value or not MODEL_NAME.fullmatch(value):
        raise TargetError(f"label {label}={value[:80]!r} is not a valid model name")
    return value


@dataclass(frozen=True)
class LabelMap:
    """Which alert labels name which part of the target (playbooks may override each)."""

    namespace: str = "namespace"
    deployment: str = "deployment"
    replica: tuple[str, ...] = ("pod", "target")
    node: tuple[str, ...] = ("node",)
    model: str = "model"
    gpu: str = "gpu"


def target_from_labels(
    labels: Mapping[str, str],
    label_map: LabelMap,
    *,
    namespaces: Sequence[str],
    default_namespace: str | None,
    kind: str = "deployment",
) -> TargetRef:
    """Validate every label we use; absent labels stay None (actions say what they need).

    An alert with no namespace (and no playbook default) passes the allow-list only if
    IMPLICIT_NAMESPACE is on it; node actions are exempt (nodes have no namespace: the
    allow-list picks which of their pods are evicted).
    """
    namespace = default_namespace
    if (ns := labels.get(label_map.namespace)) is not None:
        namespace = check_namespace(label_map.namespace, ns, namespaces)
    elif namespace is not None and namespace not in namespaces:
        raise TargetError(f"default namespace {namespace!r} is not in the allow-list")
    elif namespace is None and kind != "node" and IMPLICIT_NAMESPACE not in namespaces:
        raise TargetError(
            f"the alert has no {label_map.namespace} label (so it is in namespace "
            f"{IMPLICIT_NAMESPACE!r}), and {IMPLICIT_NAMESPACE!r} is not in the allow-list"
        )
    deployment = labels.get(label_map.deployment)
    if deployment is not None:
        check_k8s_name(label_map.deployment, deployment)
    replica = next((labels[n] for n in label_map.replica if n in labels), None)
    if replica is not None:
        check_replica("replica", replica)
    node = next((labels[n] for n in label_map.node if n in labels), None)
    if node is not None:
        check_k8s_name("node", node)
    model = labels.get(label_map.model)
    if model is not None:
        check_model(label_map.model, model)
    gpu = labels.get(label_map.gpu)
    if gpu is not None and not GPU_ID.fullmatch(gpu):
        raise TargetError(f"label {label_map.gpu}={gpu[:80]!r} is not a GPU index or UUID")
    return TargetRef(namespace, deployment, replica, node, model, gpu)
