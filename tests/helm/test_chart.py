"""The chart lints, renders valid Kubernetes objects for every CI values file, and its toggles
and values do what values.yaml says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.helm.conftest import CHART, CI_VALUES, Helm, HelmError, crd_schema, kinds, one

K8S_VERSION = "1.30.0"
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor_v1",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule_v1",
    ("monitoring.coreos.com/v1alpha1", "AlertmanagerConfig"): "alertmanagerconfig_v1alpha1",
}


def validate(doc: dict[str, Any]) -> None:
    """Strict schema validation: core kinds by kubernetes-validate, CRDs by vendored schemas."""
    crd = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
    if crd is None:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    else:
        jsonschema.validate(doc, crd_schema(crd))


def test_lint_strict_passes_for_every_ci_values_file(helm: Helm) -> None:
    for values in [None, *CI_VALUES]:
        args = ["lint", "--strict", str(CHART)] + (["-f", str(values)] if values else [])
        proc = helm.run(*args)
        assert proc.returncode == 0, f"{values}: {proc.stdout}{proc.stderr}"


def test_lint_fails_on_a_broken_template(helm: Helm, chart_copy: Path) -> None:
    (chart_copy / "templates" / "broken.yaml").write_text("kind: {{ .Values.nope.deeper }}\n")
    assert helm.run("lint", "--strict", str(chart_copy)).returncode != 0


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_every_rendered_manifest_is_valid(helm: Helm, values: Path) -> None:
    docs = helm.template(values_files=(values,))
    assert docs
    for doc in docs:
        try:
            validate(doc)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            pytest.fail(f"{values.name}: {doc['kind']} {doc['metadata']['name']}: {exc}")


def test_validation_catches_a_misspelt_field() -> None:
    """The validators are strict: the checks above would catch a typo in a template."""
    sm = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "x"},
        "spec": {"selector": {}, "endpoints": [{"port": "metrics", "intervall": "15s"}]},
    }
    with pytest.raises(jsonschema.ValidationError, match="intervall"):
        validate(sm)
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 1, "targetport": 2}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(svc)


def test_defaults_install_every_component_with_dry_run_remediator(helm: Helm) -> None:
    docs = helm.template()
    by_kind = kinds(docs)
    assert {
        "DaemonSet",
        "StatefulSet",
        "PrometheusRule",
        "ServiceMonitor",
        "Secret",
        "Role",
    } <= set(by_kind)
    assert "ClusterRole" not in by_kind, "drain_node is off by default, so no ClusterRole"
    assert "AlertmanagerConfig" not in by_kind
    config = yaml.safe_load(remediator_config(docs))
    assert config["dry_run"] is True


def remediator_config(docs: list[dict[str, Any]]) -> str:
    for doc in kinds(docs)["ConfigMap"]:
        if "remediator.yaml" in doc.get("data", {}):
            return str(doc["data"]["remediator.yaml"])
    raise AssertionError("no remediator ConfigMap")


def exporter_config(docs: list[dict[str, Any]]) -> str:
    for doc in kinds(docs)["ConfigMap"]:
        if "exporter.yaml" in doc.get("data", {}):
            return str(doc["data"]["exporter.yaml"])
    raise AssertionError("no exporter ConfigMap")


@pytest.mark.parametrize("component", ["exporter", "rules", "dashboards", "remediator"])
def test_each_component_can_be_turned_off(helm: Helm, component: str) -> None:
    docs = helm.template({component: {"enabled": False}})
    components = {
        doc["metadata"].get("labels", {}).get("app.kubernetes.io/component") for doc in docs
    }
    expected = {"exporter", "rules", "dashboards", "remediator"} - {component}
    assert components == expected


def test_remediator_off_leaves_no_remediator_objects(helm: Helm) -> None:
    docs = helm.template({"remediator": {"enabled": False}})
    names = [f"{d['kind']}/{d['metadata']['name']}" for d in docs]
    assert not [n for n in names if "remediator" in n], names


def test_exporter_runs_on_gpu_nodes_without_privileges(helm: Helm) -> None:
    ds = one(helm.template(), "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert "hostPID" not in pod
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    sc = container["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"]["drop"] == ["ALL"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert "nvidia.com/gpu" not in str(container.get("resources")), "must not take a GPU"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["host-proc"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["probe"]["hostPath"]["path"] == "/run/inferwatch/probe"


def test_exporter_config_follows_attribution_mode(helm: Helm) -> None:
    default = yaml.safe_load(exporter_config(helm.template()))
    assert default["proc_root"] == "/host/proc"
    assert default["collectors"]["cuda_allocator"]["probe_dir"] == "/run/inferwatch/probe"
    docs = helm.template({"exporter": {"hostPID": True, "runtimeClassName": "nvidia"}})
    pod = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["hostPID"] is True and pod["runtimeClassName"] == "nvidia"
    assert "host-proc" not in {v["name"] for v in pod["volumes"]}
    assert yaml.safe_load(exporter_config(docs))["proc_root"] == "/proc"


def test_rendered_exporter_config_loads_with_the_exporters_loader(
    helm: Helm, tmp_path: Path
) -> None:
    from exporter.config import load_config

    for values in CI_VALUES:
        path = tmp_path / f"{values.stem}.yaml"
        path.write_text(exporter_config(helm.template(values_files=(values,))))
        cfg = load_config(path, environ={})
        assert cfg.port == 9835


def test_rendered_remediator_config_loads_with_the_remediators_loader(
    helm: Helm, tmp_path: Path
) -> None:
    from remediations.config import load_config

    for values in CI_VALUES:
        docs = helm.template(values_files=(values,))
        if not any("remediator" in d["metadata"]["name"] for d in docs):
            continue
        path = tmp_path / f"{values.stem}.yaml"
        path.write_text(remediator_config(docs))
        cfg = load_config(path, environ={})
        assert cfg.backend == "kubernetes"
        assert str(cfg.token_file) == "/var/run/secrets/inferwatch/token"


def test_remediator_config_carries_namespaces_dry_run_and_extra_settings(helm: Helm) -> None:
    docs = helm.template(
        {
            "remediator": {
                "dryRun": False,
                "namespaces": ["llm"],
                "config": {"guards": {"cooldown_seconds": 60}},
            }
        }
    )
    config = yaml.safe_load(remediator_config(docs))
    assert config["dry_run"] is False
    assert config["namespaces"] == ["llm"]
    assert config["guards"] == {"cooldown_seconds": 60}
    assert config["prometheus"]["url"].startswith("http://")


def test_remediator_runs_two_replicas_that_elect_a_leader_off_gpu_nodes(helm: Helm) -> None:
    docs = helm.template()
    dep = one(docs, "StatefulSet")
    pod = dep["spec"]["template"]["spec"]
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["updateStrategy"] == {"type": "RollingUpdate"}
    assert dep["spec"]["podManagementPolicy"] == "Parallel"
    headless = next(s for s in kinds(docs)["Service"] if s["spec"].get("clusterIP") == "None")
    assert dep["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    selector = dep["spec"]["selector"]["matchLabels"]
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": selector}}
    (spread,) = pod["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert spread["podAffinityTerm"] == {
        "topologyKey": "kubernetes.io/hostname",
        "labelSelector": {"matchLabels": selector},
    }
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert term == {
        "matchExpressions": [
            {"key": "nvidia.com/gpu.present", "operator": "NotIn", "values": ["true"]}
        ]
    }
    assert "PersistentVolumeClaim" not in kinds(docs)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["state"] == {"name": "state", "emptyDir": {}}
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    config = yaml.safe_load(remediator_config(docs))
    assert config["leader_election"] == {
        "enabled": True,
        "lease_name": dep["metadata"]["name"],
        "lease_namespace": "monitoring",
        "lease_duration_seconds": 15,
        "renew_deadline_seconds": 10,
        "retry_period_seconds": 2,
    }


def test_remediator_is_one_replica_recreated_on_a_rwo_volume(helm: Helm) -> None:
    docs = helm.template({"remediator": {"replicas": 1, "persistence": {"enabled": True}}})
    dep = one(docs, "StatefulSet")
    assert dep["spec"]["replicas"] == 1
    # A StatefulSet replaces its one pod (never two of one ordinal): what Recreate would do.
    assert dep["spec"]["updateStrategy"] == {"type": "RollingUpdate"}
    pvc = one(docs, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["state"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert "PodDisruptionBudget" not in kinds(docs)
    assert "leader_election" not in yaml.safe_load(remediator_config(docs))
    assert "podAntiAffinity" not in dep["spec"]["template"]["spec"]["affinity"]

    # With leader election on one replica, the old pod hands the Lease over to the new one.
    docs = helm.template({"remediator": {"replicas": 1, "leaderElection": {"enabled": True}}})
    assert yaml.safe_load(remediator_config(docs))["leader_election"]["enabled"] is True

    # Two replicas cannot share one ReadWriteOnce volume: refused, not rendered.
    with pytest.raises(HelmError, match="ReadWriteOnce"):
        helm.template({"remediator": {"persistence": {"enabled": True}}})


def test_user_affinity_is_merged_over_the_defaults(helm: Helm) -> None:
    zone = {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}
    node = {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [zone]}]
        }
    }
    docs = helm.template({"remediator": {"affinity": {"nodeAffinity": node}}})
    affinity = one(docs, "StatefulSet")["spec"]["template"]["spec"]["affinity"]
    assert affinity["nodeAffinity"] == node
    assert "podAntiAffinity" in affinity
    docs = helm.template({"remediator": {"avoidGpuNodes": False, "replicas": 1}})
    assert "affinity" not in one(docs, "StatefulSet")["spec"]["template"]["spec"]


def test_token_secret_is_generated_or_taken_from_an_existing_secret(helm: Helm) -> None:
    secret = one(helm.template(), "Secret")
    assert len(secret["data"]["token"]) >= 40
    fixed = one(helm.template({"remediator": {"auth": {"token": "s3cret"}}}), "Secret")
    assert fixed["data"]["token"] == "czNjcmV0"
    docs = helm.template({"remediator": {"auth": {"existingSecret": "mine", "secretKey": "t"}}})
    assert "Secret" not in kinds(docs)
    volumes = one(docs, "StatefulSet")["spec"]["template"]["spec"]["volumes"]
    token = next(v for v in volumes if v["name"] == "token")
    assert token["secret"] == {"secretName": "mine", "items": [{"key": "t", "path": "token"}]}


def test_service_monitor_sets_node_and_keeps_the_exporters_pod_labels(helm: Helm) -> None:
    values = {"exporter": {"serviceMonitor": {"additionalLabels": {"release": "kps"}}}}
    monitors = kinds(helm.template(values))["ServiceMonitor"]
    sm = next(m for m in monitors if "exporter" in m["metadata"]["name"])
    assert sm["metadata"]["labels"]["release"] == "kps"
    endpoint = sm["spec"]["endpoints"][0]
    assert endpoint["honorLabels"] is True
    assert endpoint["relabelings"][0] == {
        "sourceLabels": ["__meta_kubernetes_pod_node_name"],
        "targetLabel": "node",
        "action": "replace",
    }
    assert endpoint["interval"] == "15s" and endpoint["scrapeTimeout"] == "10s"


def test_dashboards_carry_the_sidecar_label_and_folder(helm: Helm) -> None:
    dashboards = sorted((CHART / "files" / "dashboards").glob("*.json"))
    assert dashboards, "no dashboards synced into the chart (python helm/sync.py)"
    docs = helm.template({"dashboards": {"folder": "GPU"}})
    maps = [d for d in kinds(docs)["ConfigMap"] if d["metadata"]["labels"].get("grafana_dashboard")]
    assert len(maps) == len(dashboards)
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"]["grafana_folder"] == "GPU"
        ((key, text),) = cm["data"].items()
        assert text == (CHART / "files" / "dashboards" / key).read_text().rstrip("\n")


def test_alertmanager_config_routes_remediation_alerts_and_continues(helm: Helm) -> None:
    docs = helm.template({"remediator": {"alertmanagerConfig": {"enabled": True}}})
    amc = one(docs, "AlertmanagerConfig")
    route = amc["spec"]["route"]
    assert route["continue"] is True
    assert {"name": "remediation", "value": ".+", "matchType": "=~"} in route["matchers"]
    (receiver,) = amc["spec"]["receivers"]
    assert route["receiver"] == receiver["name"]
    # Every replica gets every notification, at its own stable address (the StatefulSet's pods
    # under the headless Service), so the one that takes over holds its own copy.
    pods = one(docs, "StatefulSet")
    name, service = pods["metadata"]["name"], pods["spec"]["serviceName"]
    assert [hook["url"] for hook in receiver["webhookConfigs"]] == [
        f"http://{name}-{i}.{service}.monitoring.svc:9836/alerts" for i in range(2)
    ]
    secret = one(docs, "Secret")
    for hook in receiver["webhookConfigs"]:
        assert hook["httpConfig"]["authorization"]["credentials"] == {
            "name": secret["metadata"]["name"],
            "key": "token",
        }
    # One replica: the Service.
    values = {"remediator": {"replicas": 1, "alertmanagerConfig": {"enabled": True}}}
    docs = helm.template(values)
    (hook,) = one(docs, "AlertmanagerConfig")["spec"]["receivers"][0]["webhookConfigs"]
    svc = next(
        s
        for s in kinds(docs)["Service"]
        if s["spec"].get("clusterIP") != "None" and "remediator" in s["metadata"]["name"]
    )
    assert hook["url"] == f"http://{svc['metadata']['name']}.monitoring.svc:9836/alerts"


def test_image_is_one_reference_for_both_components(helm: Helm) -> None:
    docs = helm.template({"image": {"repository": "registry.local/iw", "tag": "1.2.3"}})
    ds, dep = one(docs, "DaemonSet"), one(docs, "StatefulSet")
    images = {
        ds["spec"]["template"]["spec"]["containers"][0]["image"],
        dep["spec"]["template"]["spec"]["containers"][0]["image"],
    }
    assert images == {"registry.local/iw:1.2.3"}
    assert ds["spec"]["template"]["spec"]["containers"][0]["command"] == ["inferwatch-exporter"]
    assert dep["spec"]["template"]["spec"]["containers"][0]["command"] == ["inferwatch-remediator"]
    digest = "sha256:" + "a" * 64
    docs = helm.template({"image": {"digest": digest}})
    image = one(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"ghcr.io/inferwatch/inferwatch@{digest}"


def test_common_labels_reach_every_object(helm: Helm) -> None:
    for doc in helm.template({"commonLabels": {"team": "ml"}}):
        assert doc["metadata"]["labels"]["team"] == "ml", doc["metadata"]["name"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"exporter": {"prot": 1}}, "Additional property prot is not allowed"),
        ({"remediator": {"port": "9836"}}, "remediator.port: Invalid type. Expected: integer"),
        ({"remediator": {"dryRun": "yes"}}, "remediator.dryRun: Invalid type. Expected: boolean"),
        ({"rules": {"alerts": {"InferwatchGPULost": {"severity": "page"}}}}, "must be one of"),
        ({"rules": {"alerts": {"InferwatchGPULost": {"for": "5 minutes"}}}}, "for: Does not match"),
        ({"rules": {"groupInterval": "fast"}}, "rules.groupInterval: Does not match"),
        ({"image": {"pullPolicy": "Sometimes"}}, "image.pullPolicy must be one of"),
        ({"surprise": True}, "Additional property surprise is not allowed"),
    ],
)
def test_schema_rejects_bad_values_with_a_readable_message(
    helm: Helm, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(HelmError) as err:
        helm.template(values)
    assert "values don't meet the specifications of the schema" in str(err.value)
    assert message in str(err.value)


def test_notes_tell_the_webhook_url_and_how_to_verify() -> None:
    """NOTES.txt through helm's own install (client-side dry run: no cluster needed)."""
    import helm_python

    cfg = helm_python.Config(
        namespace="monitoring", storage_driver="memory", kube_apiserver="https://127.0.0.1:1"
    )
    try:
        release = cfg.install(str(CHART), "inferwatch", {}, dry_run="client")
    finally:
        cfg.close()
    notes = release["notes"]
    assert "http://inferwatch-remediator.monitoring.svc:9836/alerts" in notes
    assert "DRY RUN" in notes
    assert "rules.additionalLabels.release" in notes
    assert "port-forward svc/inferwatch-exporter 9835" in notes


def remediator_playbooks(docs: list[dict[str, Any]]) -> str:
    for doc in kinds(docs)["ConfigMap"]:
        if "playbooks.yaml" in doc.get("data", {}):
            return str(doc["data"]["playbooks.yaml"])
    raise AssertionError("no playbooks in the remediator ConfigMap")


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_rendered_playbooks_load_and_use_only_enabled_actions(
    helm: Helm, values: Path, tmp_path: Path
) -> None:
    from remediations.playbook import load_playbooks

    docs = helm.template(values_files=(values,))
    if not any("remediator" in d["metadata"]["name"] for d in docs):
        return
    merged = yaml.safe_load(values.read_text()) or {}
    actions = {
        "scale": True,
        "restart": True,
        "drain": True,
        "swapModel": True,
        "drainNode": False,
        **merged.get("remediator", {}).get("actions", {}),
    }
    names = {"swapModel": "swap_model", "drainNode": "drain_node"}
    enabled = {names.get(k, k) for k, on in actions.items() if on}
    path = tmp_path / "playbooks.yaml"
    path.write_text(remediator_playbooks(docs))
    found = {p.action for p in load_playbooks(path).playbooks}
    assert found == enabled


def test_own_playbooks_are_used_as_given(helm: Helm) -> None:
    mine = "playbooks:\n  - name: only\n    match: {remediation: restart}\n    action: restart\n"
    docs = helm.template({"remediator": {"playbooks": mine}})
    assert remediator_playbooks(docs) == mine


def test_no_enabled_action_is_a_clear_error(helm: Helm) -> None:
    off = dict.fromkeys(["scale", "restart", "drain", "swapModel", "drainNode"], False)
    with pytest.raises(HelmError, match=r"remediator\.actions: no enabled action has a playbook"):
        helm.template({"remediator": {"actions": off}})


def test_remediator_config_cannot_override_what_rbac_depends_on(helm: Helm) -> None:
    with pytest.raises(
        HelmError, match=r"remediator\.config\.namespaces: .*remediator\.namespaces"
    ):
        helm.template({"remediator": {"config": {"namespaces": ["everything"]}}})
