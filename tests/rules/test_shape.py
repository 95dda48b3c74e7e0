"""The conventions every rule follows (names, labels, annotations, runbooks, tests, thresholds)."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from tests.rules import ruleset
from tests.rules.timescale.scenarios import REPLAYS

ALERTS = ruleset.alerts()
RECORDS = ruleset.records()
CASES = ruleset.promtool_cases()
DESIGN_ALERTS = {
    "InferwatchGPULost": "drain_node",
    "InferwatchGPUXidCritical": "drain_node",
    "InferwatchGPUThermalThrottling": None,
    "InferwatchGPUUncorrectableECC": "drain_node",
    "InferwatchCUDAFragmentationHigh": "restart",
    "InferwatchCUDAAllocRetries": "restart",
    "InferwatchCUDAMemoryLeak": "restart",
    "InferwatchLLMQueueBacklog": "scale_up",
    "InferwatchLLMKVCacheSaturated": "scale_up",
    "InferwatchLLMReplicaStalled": "restart",
    "InferwatchLLMLatencyDrift": "restart",
    "InferwatchLLMTTFTBudgetBurn": "scale_up",
    "InferwatchLLMErrorBudgetBurn": None,
    "InferwatchLLMCapacityExhausted": "swap_model",
    "InferwatchLLMOverProvisioned": "scale_down",
    "InferwatchLLMEngineDown": "restart",
    "InferwatchLLMPreemptionStorm": "scale_up",
    "InferwatchExporterCollectorFailing": None,
    "InferwatchRemediationFailing": None,
    "InferwatchGPUXidApplication": "restart",
    "InferwatchGPURecoveryRequired": "drain_node",
    "InferwatchGPUDriverHung": None,
}
REMEDIATIONS = {"scale_up", "scale_down", "drain", "restart", "swap_model", "drain_node"}


def ids(rule: ruleset.Rule) -> str:
    return f"{rule.name}@{rule.file}"


def alert_tests(name: str) -> list[dict]:
    return [t for case in CASES for t in case.get("alert_rule_test", []) if t["alertname"] == name]


# The real-timescale replays (tests/rules/timescale) assert alerts through ALERTS: the (name,
# severity) pairs they expect to fire, and moments at which a watched alert must be silent.
REPLAY_FIRING = {pair for replay in REPLAYS for pair in replay.alerts_checked()}


def replay_checks_silent(name: str) -> bool:
    return any(
        re.fullmatch(replay.watch, name)
        and not any(f'alertname="{name}"' in labels for labels in firing)
        for replay in REPLAYS
        for firing in replay.firing_at.values()
    )


def test_every_design_alert_exists_with_its_remediation() -> None:
    by_name: dict[str, set[str | None]] = {}
    for rule in ALERTS:
        by_name.setdefault(rule.name, set()).add(rule.body.get("labels", {}).get("remediation"))
    for name, remediation in DESIGN_ALERTS.items():
        assert by_name.get(name) == {remediation}, name


@pytest.mark.parametrize("rule", ALERTS, ids=ids)
def test_alert_shape(rule: ruleset.Rule) -> None:
    labels, annotations = rule.body.get("labels", {}), rule.body.get("annotations", {})
    assert re.fullmatch(r"Inferwatch([A-Z0-9]+[a-z0-9]*)+", rule.name)
    assert labels.get("severity") in {"critical", "warning", "info"}
    assert labels.get("remediation", "scale_up") in REMEDIATIONS
    summary = annotations.get("summary", "")
    assert re.fullmatch(r"[A-Z].+\.", summary) and "{{" not in summary, "static sentence"
    assert annotations.get("description")
    if "absent(" not in rule.expr:
        assert "{{" in annotations["description"], "description is templated with the numbers"
    assert annotations.get("runbook_url") == ruleset.RUNBOOK_URL.format(rule.name)
    assert (ruleset.RUNBOOKS_DIR / f"{rule.name}.md").is_file()


@pytest.mark.parametrize("rule", ALERTS, ids=ids)
def test_alert_has_a_firing_and_a_not_firing_promtool_test(rule: ruleset.Rule) -> None:
    tests = alert_tests(rule.name)
    severity = rule.body["labels"]["severity"]
    firing = [
        exp
        for t in tests
        for exp in t.get("exp_alerts") or []
        if exp["exp_labels"].get("severity") == severity
    ]
    assert firing or (rule.name, severity) in REPLAY_FIRING, (
        f"no test fires {rule.name} ({severity})"
    )
    assert any(not t.get("exp_alerts") for t in tests) or replay_checks_silent(rule.name), (
        f"no 'does not fire' test for {rule.name}"
    )


# That every `threshold` annotation is one token of its expr (what the chart's threshold override
# needs) is checked through the chart itself: tests/helm/test_rules.py.


def test_no_two_rules_record_the_same_name() -> None:
    primary = Counter(r.name for r in RECORDS if r.file != ruleset.ALTERNATIVE_SOURCE)
    assert [name for name, n in primary.items() if n > 1] == []
    alternative = [r.name for r in RECORDS if r.file == ruleset.ALTERNATIVE_SOURCE]
    assert len(alternative) == len(set(alternative))
    # dcgm-compat only feeds names gpu.rules.yaml records too, so every GPU alert sees one name.
    gpu = {r.name for r in RECORDS if r.file == "gpu.rules.yaml"}
    assert set(alternative) <= gpu


def test_gpu_alerts_read_no_raw_series_dcgm_compat_stands_in_for() -> None:
    """What dcgm-compat records from DCGM_FI_* (up, memory, utilization, throttling, Xid, ECC), GPU
    alerts read through the recorded name, never from the exporter's own series, so they fire for
    either GPU source. Signals only the exporter has (PCIe, NVLink, row remapping, recovery action,
    per-process memory) may be read raw."""
    mapped = {r.name for r in RECORDS if r.file == ruleset.ALTERNATIVE_SOURCE}
    covered = {
        m
        for r in RECORDS
        if r.file == "gpu.rules.yaml" and r.name in mapped
        for m in ruleset.metrics_read(r.expr)
        if ":" not in m
    }
    assert "inferwatch_gpu_up" in covered and "inferwatch_gpu_throttle_active" in covered
    for rule in ALERTS:
        if rule.file == "gpu.rules.yaml":
            assert not set(ruleset.metrics_read(rule.expr)) & covered, rule.name


def test_record_names_are_level_metric_operations() -> None:
    for rule in RECORDS:
        assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", rule.name), rule.name


@pytest.mark.parametrize("rule", RECORDS, ids=ids)
def test_every_record_has_a_promql_expr_test(rule: ruleset.Rule) -> None:
    exprs = [t["expr"] for case in CASES for t in case.get("promql_expr_test", [])]
    exprs += [t["expr"] for replay in REPLAYS for t in replay.exprs]
    assert any(re.search(rf"(?<![\w:]){re.escape(rule.name)}(?![\w:])", e) for e in exprs)


def test_slo_parameters_are_each_written_once() -> None:
    """One chart exprReplacements entry must change an objective or the TTFT bound everywhere."""
    text = "".join(r.expr for r in ruleset.rules())
    assert text.count("vector(0.95)") == 1
    assert text.count("vector(0.995)") == 1
    # The 5-minute good-request record, the four raw windows (30m-6h) and the guard that the bucket
    # exists; the 1d and 3d windows read the 5-minute record, nothing else.
    assert text.count('le="0.75"') == 6


def test_changelog_lists_the_current_version() -> None:
    version = (ruleset.RULES_DIR / "VERSION").read_text().strip()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    assert f"## {version}" in (ruleset.RULES_DIR / "CHANGELOG.md").read_text()
