"""The optional KEDA ScaledObjects: valid against KEDA's schema, driven by a recorded series that
Inferwatch's rules really produce, and absent unless asked for."""

from __future__ import annotations

import jsonschema
import pytest

from tests.helm.conftest import Helm, HelmError, crd_schema, kinds
from tests.support.catalog import known_names, metric_names

KEDA = {
    "enabled": True,
    "scaledObjects": [
        {"name": "vllm", "namespace": "llm", "model": "llama-3-8b", "maxReplicas": 6},
        {"name": "small", "model": "smollm2", "minReplicas": 0, "waitingPerReplica": 2.5},
    ],
}


def test_off_by_default(helm: Helm) -> None:
    assert "ScaledObject" not in kinds(helm.template({}))
    assert "ScaledObject" not in kinds(helm.template({"remediator": {"keda": {"enabled": False}}}))


def test_one_scaled_object_per_deployment_on_the_waiting_requests_per_replica(
    helm: Helm,
) -> None:
    objects = kinds(helm.template({"remediator": {"keda": KEDA}}))["ScaledObject"]
    schema = crd_schema("scaledobject_v1alpha1")
    for obj in objects:
        jsonschema.validate(obj, schema)
    vllm, small = sorted(objects, key=lambda o: o["metadata"]["name"], reverse=True)
    assert vllm["metadata"]["namespace"] == "llm"
    assert small["metadata"]["namespace"] == "monitoring"  # the release namespace
    assert vllm["spec"]["scaleTargetRef"] == {"name": "vllm"}
    assert (vllm["spec"]["minReplicaCount"], vllm["spec"]["maxReplicaCount"]) == (1, 6)
    assert (small["spec"]["minReplicaCount"], small["spec"]["maxReplicaCount"]) == (0, 8)
    (trigger,) = vllm["spec"]["triggers"]
    assert (trigger["type"], trigger["metricType"]) == ("prometheus", "AverageValue")
    meta = trigger["metadata"]
    assert meta["query"] == (
        'sum(model:inferwatch_llm_requests_waiting:sum{namespace="llm", model="llama-3-8b"})'
    )
    assert meta["threshold"] == "4"
    assert small["spec"]["triggers"][0]["metadata"]["threshold"] == "2.5"
    assert meta["serverAddress"] == "http://kube-prometheus-stack-prometheus.monitoring.svc:9090"
    # the series exists: a recording rule of rules/ produces it
    assert metric_names(meta["query"]) <= known_names()


def test_a_scaled_object_without_a_model_is_refused(helm: Helm) -> None:
    bad = {"enabled": True, "scaledObjects": [{"name": "vllm"}]}
    with pytest.raises(HelmError, match="model"):
        helm.template({"remediator": {"keda": bad}})
