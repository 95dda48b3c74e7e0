"""The whole loop through the demo code: real llama-server replicas (run by the remediator's
local backend), the exporter, Prometheus with the chart-rendered rules, Alertmanager and the
remediator, with a real fault injected. Each scenario starts and stops its own stack.
"""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from demo.observe import Timeline
from demo.replica import LIGHT_MODEL, MAIN_MODEL, model_path
from demo.scenarios import SCENARIOS, Result, Scenario, run_scenario
from harness import services
from harness.services import pid_alive

# A scenario's own waits are bounded (data, detection, action and recovery: 30 + 3 x 90 s at
# most, plus the stack's start and stop), well past the suite's default per-test timeout.
pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(600)]


def _missing() -> list[str]:
    missing = [b for b in ("prometheus", "prometheus-alertmanager") if shutil.which(b) is None]
    if services.llama_server_binary() is None:
        missing.append("llama-server")
    for choice in (MAIN_MODEL, LIGHT_MODEL):
        try:
            model_path(choice.name)
        except SystemExit:
            missing.append(choice.name)
    return missing


requires_stack = pytest.mark.skipif(
    bool(_missing()), reason=f"set-up missing (./run setup): {', '.join(_missing())}"
)

# The shortest safe timings: long enough for Prometheus' first scrape, the rules' shortened
# windows and one remediation. How fast it detects and recovers is measured by bench/demo.py,
# not asserted here: the scenario's own bounded waits decide only whether it healed.
E2E: dict[str, Scenario] = {
    "baseline": dataclasses.replace(SCENARIOS["baseline"], warmup=10.0, duration=25.0),
    "surge": dataclasses.replace(SCENARIOS["surge"], warmup=12.0, settle=4.0),
    "hung-replica": dataclasses.replace(SCENARIOS["hung-replica"], warmup=10.0, settle=4.0),
    "gpu-failure": dataclasses.replace(SCENARIOS["gpu-failure"], warmup=8.0, settle=4.0),
}


async def _run(name: str, tmp_path: object) -> tuple[Scenario, Result, Timeline]:
    scenario = E2E[name]
    timeline = Timeline()
    result = await run_scenario(scenario, tmp_path, timeline, say=print)  # type: ignore[arg-type]
    return scenario, result, timeline


def _assert_all_stopped(result: Result) -> None:
    # The stack, the remediator and at least two engine replicas.
    assert len(result.pids) >= 6, result.pids
    assert [p for p in result.pids if pid_alive(p)] == []


@requires_stack
async def test_healthy_baseline_fires_nothing_and_takes_no_action(tmp_path):
    _, result, timeline = await _run("baseline", tmp_path)
    assert [a.name for a in timeline.alerts] == []
    assert [(a.action, a.result) for a in timeline.actions] == []
    assert result.recovered
    # Prometheus did evaluate data all along: the p95 and queue were observed.
    assert any(p.queue is not None for p in timeline.points)
    assert any(p.p95 is not None for p in timeline.points)
    _assert_all_stopped(result)


@requires_stack
@pytest.mark.parametrize("name", ["surge", "hung-replica", "gpu-failure"])
async def test_fault_is_detected_remediated_once_and_recovers(name, tmp_path, record_property):
    scenario, result, timeline = await _run(name, tmp_path)
    assert result.injected_at is not None
    assert result.alert in {scenario.alert, *scenario.also_detects}, result.note
    assert result.detected_at is not None and result.detected_at > result.injected_at
    taken = [a for a in timeline.actions if a.result not in ("blocked", "dry_run")]
    # Nothing acted during the healthy warm-up.
    assert all(a.t >= result.injected_at for a in timeline.actions), taken
    intended = [a for a in taken if a.action == scenario.action]
    assert [(a.action, a.result) for a in intended] == [(scenario.action, "succeeded")]
    assert result.recovered, result.note
    assert result.recovered_at is not None
    # Durations are recorded (JUnit XML properties), never asserted.
    record_property("detect_s", round(result.detected_at - result.injected_at, 1))
    record_property("recover_s", round(result.recovered_at - result.injected_at, 1))
    assert result.unexpected_actions == []
    _assert_all_stopped(result)
