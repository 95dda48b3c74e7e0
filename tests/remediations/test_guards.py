"""Every guard blocks what it must, says so in the audit log and the metric, and changes nothing.

Notifications are POSTed in the shape of the real Alertmanager 0.25 payload; the engines are real
processes managed by the local backend.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import yaml

from harness.services import free_port
from remediations.playbook import load_playbooks
from tests.remediations.conftest import (
    FIXTURES,
    TOKEN,
    audit,
    deployment,
    make_config,
    never_ready_engine,
    quick_drains,
    results,
    running,
    wait_for,
)

AUTH = {"Authorization": f"Bearer {TOKEN}"}
BACKLOG = {"alertname": "InferwatchLLMQueueBacklog", "remediation": "scale_up"}


def notification(
    labels: dict[str, str],
    *,
    fingerprint: str = "0123456789abcdef",
    status: str = "firing",
    starts_at: str = "2026-11-21T05:29:57.774Z",
    expr: str = "vector(1)",
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((FIXTURES / "v0.25-firing.json").read_text())
    alert = payload["alerts"][0]
    alert.update(
        status=status,
        labels={"severity": "warning", **labels},
        fingerprint=fingerprint,
        startsAt=starts_at,
        generatorURL=f"http://prometheus:9090/graph?g0.expr={expr}&g0.tab=1",
    )
    if annotations is not None:
        alert["annotations"] = annotations
    payload["status"] = status
    return payload


async def send(url: str, payload: dict[str, Any]) -> int:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{url}/alerts", json=payload, headers=AUTH) as resp,
    ):
        return resp.status


async def settled(remediator: Any, count: int) -> list[Any]:
    await wait_for(lambda: len(audit(remediator)) >= count, what=f"{count} audit entries")
    return audit(remediator)


async def guard_count(url: str, guard: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/metrics") as resp:
        text = await resp.text()
    line = next(
        row
        for row in text.splitlines()
        if row.startswith(f'inferwatch_remediation_guard_blocks_total{{guard="{guard}"}}')
    )
    return float(line.split()[-1])


def web(tmp_path: Path, **overrides: Any) -> Any:
    deployments = overrides.pop("deployments", [deployment("web")])
    return make_config(
        tmp_path,
        prometheus_url=overrides.pop("prometheus_url", None),
        deployments=deployments,
        **overrides,
    )


# -- re-check against Prometheus --------------------------------------------------------------


@pytest.mark.integration
async def test_recheck_no_data_or_unreachable_prometheus_means_no_action(
    tmp_path: Path, prometheus_url: str
) -> None:
    cfg = web(tmp_path, prometheus_url=prometheus_url)
    async with running(cfg) as (url, remediator):
        assert (
            await send(url, notification({**BACKLOG, "deployment": "web"}, expr="vector(1) == 0"))
            == 202
        )
        (entry,) = await settled(remediator, 1)
        assert entry.result == "blocked"
        assert entry.reason.startswith("recheck: no data")
        # the series the expression returns must be this alert's
        expr = 'label_replace(vector(1), "deployment", "other", "", "")'
        await send(url, notification({**BACKLOG, "deployment": "web"}, expr=expr, fingerprint="f2"))
        entries = await settled(remediator, 2)
        assert entries[0].reason.startswith("recheck: the expression no longer returns")
        assert await guard_count(url, "recheck") == 2
    (tmp_path / "down").mkdir()
    down = web(tmp_path / "down", prometheus_url=f"http://127.0.0.1:{free_port()}")
    async with running(down) as (url, remediator):
        await send(url, notification({**BACKLOG, "deployment": "web"}))
        (entry,) = await settled(remediator, 1)
        assert entry.reason.startswith("recheck: cannot query")
    assert json.loads((tmp_path / "down" / "endpoints.json").read_text()) == []


@pytest.mark.integration
async def test_recheck_confirmed_by_a_matching_series_acts(
    tmp_path: Path, prometheus_url: str
) -> None:
    cfg = web(tmp_path, prometheus_url=prometheus_url)
    expr = 'label_replace(vector(1), "deployment", "web", "", "")'
    async with running(cfg) as (url, remediator):
        await send(url, notification({**BACKLOG, "deployment": "web"}, expr=expr))
        await settled(remediator, 1)
        await wait_for(lambda: results(remediator, "succeeded"), what="the scale-up")


@pytest.mark.integration
async def test_recheck_ignores_the_metric_name_a_comparison_keeps(
    tmp_path: Path, prometheus_url: str
) -> None:
    """`metric == 0` returns series that still carry `__name__`; the alert never does."""
    cfg = web(tmp_path, prometheus_url=prometheus_url)
    series = (
        'label_replace(label_replace(vector(0), "__name__", "uuid:inferwatch_gpu_up:max", "", ""),'
        ' "deployment", "web", "", "")'
    )
    expr = f"{series} == 0"
    async with running(cfg) as (url, remediator):
        # the query really returns the metric name (what the e2e demo's GPULost returned)
        assert remediator.prometheus is not None
        (sample,) = await remediator.prometheus.query(expr)
        assert sample.labels["__name__"] == "uuid:inferwatch_gpu_up:max"
        # still matched on the other labels: another deployment's series does not confirm
        other = quote(expr.replace('"web"', '"other"'))
        await send(url, notification({**BACKLOG, "deployment": "web"}, expr=other))
        (entry,) = await settled(remediator, 1)
        assert entry.reason.startswith("recheck: the expression no longer returns")
        await send(
            url, notification({**BACKLOG, "deployment": "web"}, expr=quote(expr), fingerprint="f2")
        )
        await wait_for(lambda: results(remediator, "succeeded"), what="the scale-up")


# -- dry-run, kill switch, opt-out ------------------------------------------------------------


async def test_global_dry_run_records_and_changes_nothing(tmp_path: Path) -> None:
    async with running(web(tmp_path, dry_run=True)) as (url, remediator):
        await send(url, notification({**BACKLOG, "deployment": "web"}))
        (entry,) = await settled(remediator, 1)
        assert entry.result == "dry_run"
        assert entry.reason == "would scale web from 1 to 2 replicas"
        await send(url, notification({**BACKLOG, "deployment": "web"}, fingerprint="other"))
        entries = await settled(remediator, 2)
        assert entries[0].reason.startswith("cooldown")  # dry-run previews the guards too
        assert len(remediator.backend.replicas_of("web")) == 1


async def test_per_playbook_dry_run(tmp_path: Path) -> None:
    playbooks = tmp_path / "p.yaml"
    playbooks.write_text(
        yaml.safe_dump(
            {
                "playbooks": [
                    {
                        "name": "up",
                        "match": {"remediation": "scale_up"},
                        "action": "scale",
                        "dry_run": True,
                    },
                    {"name": "restart", "match": {"remediation": "restart"}, "action": "restart"},
                ]
            }
        )
    )
    cfg = web(tmp_path, playbooks=str(playbooks))
    async with running(cfg, playbooks=load_playbooks(playbooks)) as (url, remediator):
        await send(url, notification({**BACKLOG, "deployment": "web"}))
        (entry,) = await settled(remediator, 1)
        assert entry.result == "dry_run"
        assert len(remediator.backend.replicas_of("web")) == 1


async def test_kill_switch_blocks_until_released(tmp_path: Path) -> None:
    async with running(web(tmp_path, kill_switch=True)) as (url, remediator):
        await send(url, notification({**BACKLOG, "deployment": "web"}))
        (entry,) = await settled(remediator, 1)
        assert entry.reason.startswith("kill_switch")
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"{url}/killswitch", json={"enabled": False}, headers=AUTH) as resp,
        ):
            assert resp.status == 200
        # Alertmanager re-sends a still-firing alert (repeat_interval): now it may act
        await send(url, notification({**BACKLOG, "deployment": "web"}))
        await wait_for(lambda: results(remediator, "succeeded"), what="the scale-up")


async def test_opt_out_by_alert_label_annotation_or_deployment(tmp_path: Path) -> None:
    cfg = web(tmp_path, deployments=[deployment("web"), deployment("pinned", opt_out=True)])
    async with running(cfg) as (url, remediator):
        await send(
            url,
            notification({**BACKLOG, "deployment": "web", "inferwatch_remediation": "disabled"}),
        )
        await send(
            url,
            notification(
                {**BACKLOG, "deployment": "web"},
                fingerprint="a2",
                annotations={"inferwatch_remediation": "disabled"},
            ),
        )
        await send(url, notification({**BACKLOG, "deployment": "pinned"}, fingerprint="a3"))
        entries = await settled(remediator, 3)
        assert [e.reason.split(":")[0] for e in entries] == ["opt_out"] * 3
        assert await guard_count(url, "opt_out") == 3


# -- untrusted labels -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels",
    [
        {"deployment": "../../etc/passwd"},
        {"deployment": "web; rm -rf /"},
        {"deployment": "$(touch /tmp/pwned)"},
        {"deployment": "nope"},
        {"deployment": "web", "namespace": "kube-system"},
        {"model": "../../model"},
        {"remediation": "restart", "target": "127.0.0.1:1`id`"},
        {"remediation": "restart", "target": "10.9.9.9:80"},
    ],
)
async def test_bad_or_unknown_targets_are_blocked(tmp_path: Path, labels: dict[str, str]) -> None:
    async with running(web(tmp_path)) as (url, remediator):
        assert await send(url, notification({**BACKLOG, **labels})) == 202
        (entry,) = await settled(remediator, 1)
        assert entry.result == "blocked"
        assert entry.reason.startswith("target:")
        assert len(remediator.backend.replicas_of("web")) == 1


async def test_name_patterns_restrict_targets(tmp_path: Path) -> None:
    async with running(web(tmp_path, name_patterns=["llm-.*"])) as (url, remediator):
        await send(url, notification({**BACKLOG, "deployment": "web"}))
        (entry,) = await settled(remediator, 1)
        assert "allowed name patterns" in entry.reason


# -- bounds, rate limits, retry cap -----------------------------------------------------------


async def test_scale_stops_at_max_replicas(tmp_path: Path) -> None:
    cfg = web(tmp_path, deployments=[deployment("web", max_replicas=1)])
    async with running(cfg) as (url, remediator):
        await send(url, notification({**BACKLOG, "deployment": "web"}))
        (entry,) = await settled(remediator, 1)
        assert entry.reason == "bounds: web is at its maximum of 1 replicas"


async def test_restart_never_takes_the_last_healthy_replica(tmp_path: Path) -> None:
    async with running(web(tmp_path)) as (url, remediator):
        (only,) = remediator.backend.replicas_of("web")
        labels = {
            "alertname": "InferwatchLLMReplicaStalled",
            "remediation": "restart",
            "target": only.address,
        }
        await send(url, notification(labels))
        (entry,) = await settled(remediator, 1)
        assert entry.reason == f"bounds: {only.address} is the last healthy serving replica"


async def test_drained_share_is_capped(tmp_path: Path) -> None:
    cfg = web(
        tmp_path,
        deployments=[deployment("web", replicas=3)],
        guards={"recheck": False, "max_drained_ratio": 0.34, "cooldown_seconds": 0},
        playbooks=quick_drains(tmp_path),
    )
    async with running(cfg) as (url, remediator):
        r0, r1, _ = remediator.backend.replicas_of("web")
        for n, replica in enumerate((r0, r1)):
            labels = {"alertname": "X", "remediation": "drain", "target": replica.address}
            await send(url, notification(labels, fingerprint=f"d{n}"))
            await settled(remediator, n + 1)
        first, second = reversed(audit(remediator))
        assert first.result == "succeeded"
        assert second.reason == "bounds: would leave 2 of 3 replicas out of serving (max 34%)"


async def test_rate_limits_per_action_and_global(tmp_path: Path) -> None:
    cfg = web(
        tmp_path,
        deployments=[deployment(n) for n in ("a", "b", "c")],
        guards={
            "recheck": False,
            "action_rate_limit": {"max_actions": 1, "window_seconds": 60},
            "global_rate_limit": {"max_actions": 2, "window_seconds": 60},
            "cooldown_seconds": 0,
        },
        playbooks=quick_drains(tmp_path),
    )
    async with running(cfg) as (url, remediator):
        await send(url, notification({**BACKLOG, "deployment": "a"}, fingerprint="1"))
        await settled(remediator, 1)
        await send(url, notification({**BACKLOG, "deployment": "b"}, fingerprint="2"))
        entries = await settled(remediator, 2)
        assert entries[0].reason.startswith("rate_limit_action: 1 scale actions in 60s")
        a = remediator.backend.replicas_of("a")[0].address
        await send(
            url,
            notification({"alertname": "X", "remediation": "drain", "target": a}, fingerprint="3"),
        )
        await settled(remediator, 3)
        restart = {"alertname": "X", "remediation": "restart", "target": a}
        await send(url, notification(restart, fingerprint="4"))
        entries = await settled(remediator, 4)
        assert entries[0].reason.startswith("rate_limit_global: 2 actions in 60s")


async def test_retry_cap_escalates_after_repeated_failures(tmp_path: Path) -> None:
    playbooks = tmp_path / "p.yaml"
    playbooks.write_text(
        yaml.safe_dump(
            {
                "playbooks": [
                    {
                        "name": "up",
                        "match": {"remediation": "scale_up"},
                        "action": "scale",
                        "params": {"ready_timeout_seconds": 0.3},
                        "cooldown_seconds": 0,
                    }
                ]
            }
        )
    )
    cfg = web(
        tmp_path,
        deployments=[deployment("bad", command=never_ready_engine(), replicas=0, min_replicas=0)],
        playbooks=str(playbooks),
        guards={"recheck": False, "max_attempts": 2, "circuit_failure_threshold": 10},
    )
    async with running(cfg, playbooks=load_playbooks(playbooks)) as (url, remediator):
        for n in range(3):
            await send(url, notification({**BACKLOG, "deployment": "bad"}, fingerprint=f"r{n}"))
            await settled(remediator, n + 1)
        last, *earlier = audit(remediator)
        assert [e.result for e in earlier] == ["failed", "failed"]
        assert last.reason == "retry_cap: deployment/bad failed 2 times; escalated to a human"


# -- state survives a restart ------------------------------------------------------------------


async def test_state_survives_restart_and_interrupted_actions_are_not_repeated(
    tmp_path: Path,
) -> None:
    cfg = web(tmp_path)
    alert = notification({**BACKLOG, "deployment": "web"})
    async with running(cfg) as (url, remediator):
        await send(url, alert)
        await wait_for(lambda: results(remediator, "succeeded"), what="the scale-up")
        remediator.state.set_flag("circuit_open", 1)
    # A previous run died mid-action: its audit row has no result yet.
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute(
        "INSERT INTO audit (time, alertname, fingerprint, action, target, result, reason) "
        "VALUES (1, 'A', 'f', 'restart', 'replica/x', NULL, 'in progress: restart x')"
    )
    db.commit()
    db.close()
    async with running(cfg) as (url, remediator):
        assert remediator.circuit_open  # still open: only an operator closes it
        interrupted = [e for e in audit(remediator) if e.target == "replica/x"]
        assert interrupted[0].result == "failed"
        assert interrupted[0].reason.startswith("interrupted")
        remediator.reset_circuit()
        await send(url, alert)  # redelivered after the restart
        entries = await settled(remediator, 3)
        assert entries[0].reason.startswith("idempotency")
        await send(url, notification({**BACKLOG, "deployment": "web"}, fingerprint="new"))
        entries = await settled(remediator, 4)
        assert entries[0].reason.startswith("cooldown")


async def test_a_target_remediated_too_often_is_left_to_a_human(tmp_path: Path) -> None:
    cfg = web(
        tmp_path,
        deployments=[deployment("web", max_replicas=8)],
        guards={"recheck": False, "cooldown_seconds": 0, "escalate_after": 2},
    )
    async with running(cfg) as (url, remediator):
        for n in range(3):
            await send(url, notification({**BACKLOG, "deployment": "web"}, fingerprint=f"e{n}"))
            await settled(remediator, n + 1)
            await wait_for(lambda: all(e.result for e in audit(remediator)), what="the action")
        escalated, *done = audit(remediator)
        assert [e.result for e in done] == ["succeeded", "succeeded"]
        assert escalated.reason == (
            "escalated: deployment/web was remediated 2 times in 86400s; left to a human"
        )
        assert len(remediator.backend.replicas_of("web")) == 3
        assert await guard_count(url, "escalated") == 1
        async with aiohttp.ClientSession() as s, s.get(f"{url}/metrics") as resp:
            text = await resp.text()
    # from the alert's startsAt (a fixture date in the past) to the commit, and to the effect
    for name in ("time_to_act", "time_to_effect"):
        (count,) = [
            line
            for line in text.splitlines()
            if line.startswith(f'inferwatch_remediation_{name}_seconds_count{{action="scale"}}')
        ]
        assert count.endswith(" 2.0"), count
