"""The webhook contract Alertmanager relies on: 401/400/413/503/202, and the operator endpoints."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from remediations.guards import Guard
from remediations.metrics import ACTIONS
from tests.remediations.conftest import (
    FIXTURES,
    TOKEN,
    deployment,
    http_engine,
    make_config,
    results,
    running,
    wait_for,
)

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def firing_payload() -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((FIXTURES / "v0.25-firing.json").read_text())
    return payload


def idle_config(tmp_path: Path, **overrides: Any) -> Any:
    return make_config(
        tmp_path,
        prometheus_url=None,
        deployments=[deployment("web", replicas=0, min_replicas=0)],
        **overrides,
    )


async def test_real_payload_is_accepted_and_unmatched_alert_does_nothing(tmp_path: Path) -> None:
    async with running(idle_config(tmp_path)) as (url, remediator), aiohttp.ClientSession() as s:
        async with s.post(f"{url}/alerts", json=firing_payload(), headers=AUTH) as resp:
            assert resp.status == 202
            assert await resp.json() == {"accepted": 1}
        await wait_for(
            lambda: remediator.queue.qsize() == 0 and remediator.queue._unfinished_tasks == 0
        )
        assert results(remediator, "succeeded") == []


async def test_token_is_required_and_checked(tmp_path: Path) -> None:
    async with running(idle_config(tmp_path)) as (url, remediator), aiohttp.ClientSession() as s:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            async with s.post(f"{url}/alerts", json=firing_payload(), headers=headers) as resp:
                assert resp.status == 401
                assert "WWW-Authenticate" in resp.headers
        for path in ("/circuit/reset", "/killswitch"):
            async with s.post(f"{url}{path}", headers={"Authorization": "Bearer nope"}) as resp:
                assert resp.status == 401
        assert remediator.queue.qsize() == 0


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "not JSON"),
        (json.dumps({"version": "3", "status": "firing", "alerts": []}).encode(), "version"),
        (json.dumps({"version": "4", "status": "firing"}).encode(), "alerts"),
        (
            json.dumps(
                {"version": "4", "status": "firing", "alerts": [{"status": "firing"}]}
            ).encode(),
            "alerts.0.labels",
        ),
        (json.dumps([1, 2]).encode(), "not an Alertmanager"),
    ],
)
async def test_malformed_bodies_get_400_with_a_clear_message(
    tmp_path: Path, body: bytes, needle: str
) -> None:
    async with running(idle_config(tmp_path)) as (url, remediator), aiohttp.ClientSession() as s:
        async with s.post(f"{url}/alerts", data=body, headers=AUTH) as resp:
            assert resp.status == 400
            assert needle in (await resp.json())["error"]
        assert remediator.queue.qsize() == 0


async def test_newer_alertmanager_fields_are_ignored(tmp_path: Path) -> None:
    payload = firing_payload()
    payload["notification_reason"] = "first notification"  # Alertmanager 0.32
    payload["routeLabels"] = {"team": "ml"}  # Alertmanager 0.34
    payload["alerts"][0]["somethingNew"] = {"x": 1}
    async with (
        running(idle_config(tmp_path)) as (url, _),
        aiohttp.ClientSession() as s,
        s.post(f"{url}/alerts", json=payload, headers=AUTH) as resp,
    ):
        assert resp.status == 202


async def test_body_over_the_limit_gets_413(tmp_path: Path) -> None:
    cfg = idle_config(tmp_path, max_body_bytes=4096)
    async with running(cfg) as (url, _), aiohttp.ClientSession() as s:
        big = b'{"version": "4", "pad": "' + b"x" * 10_000 + b'"}'
        async with s.post(f"{url}/alerts", data=big, headers=AUTH) as resp:
            assert resp.status == 413

        async def chunks() -> Any:  # no Content-Length: the limit still holds
            for _ in range(10):
                yield b"x" * 1000

        async with s.post(f"{url}/alerts", data=chunks(), headers=AUTH) as resp:
            assert resp.status == 413


async def test_queue_full_gets_503_and_nothing_is_half_queued(tmp_path: Path) -> None:
    cfg = idle_config(tmp_path, queue_size=2, workers=1, shutdown_timeout_seconds=0)
    async with running(cfg) as (url, remediator), aiohttp.ClientSession() as s:
        for task in remediator._workers:  # park the workers so the queue stays full
            task.cancel()
        await asyncio.gather(*remediator._workers, return_exceptions=True)
        one = firing_payload()
        two = firing_payload()
        two["alerts"] = two["alerts"] * 2
        async with s.post(f"{url}/alerts", json=one, headers=AUTH) as resp:
            assert resp.status == 202
        async with s.post(f"{url}/alerts", json=two, headers=AUTH) as resp:
            assert resp.status == 503  # 1 + 2 > 2: none of the two is queued
        assert remediator.queue.qsize() == 1
        async with s.post(f"{url}/alerts", json=one, headers=AUTH) as resp:
            assert resp.status == 202
        async with s.get(f"{url}/metrics") as resp:
            text = await resp.text()
        assert 'inferwatch_remediation_webhook_requests_total{code="503"} 1.0' in text
        assert 'inferwatch_remediation_webhook_requests_total{code="202"} 2.0' in text
        assert "inferwatch_remediation_queue_depth 2.0" in text
        remediator._workers = []


async def test_metrics_expose_the_catalog_names(tmp_path: Path) -> None:
    async with (
        running(idle_config(tmp_path)) as (url, _),
        aiohttp.ClientSession() as s,
        s.get(f"{url}/metrics") as resp,
    ):
        text = await resp.text()
    for name in (
        'inferwatch_remediation_actions_total{action="scale",result="blocked"}',
        'inferwatch_remediation_guard_blocks_total{guard="circuit_breaker"}',
        "inferwatch_remediation_circuit_open 0.0",
        "inferwatch_remediation_queue_depth",
        "# TYPE inferwatch_remediation_action_duration_seconds histogram",
    ):
        assert name in text
    for guard in Guard:
        assert f'guard="{guard.value}"' in text
    # Every action's duration series exists at zero from the start, so the first real action is
    # an increase that rate() sees (a series born on its first observation is not).
    for action in ACTIONS:
        count = "inferwatch_remediation_action_duration_seconds_count"
        assert f'{count}{{action="{action}"}} 0.0' in text


async def test_killswitch_and_circuit_reset_endpoints(tmp_path: Path) -> None:
    async with running(idle_config(tmp_path)) as (url, remediator), aiohttp.ClientSession() as s:
        async with s.post(f"{url}/killswitch", json={"enabled": True}, headers=AUTH) as resp:
            assert resp.status == 200
            assert await resp.json() == {"kill_switch": True}
        assert remediator.kill_switch
        async with s.post(f"{url}/killswitch", json={"enabled": "yes"}, headers=AUTH) as resp:
            assert resp.status == 400
        async with s.post(f"{url}/killswitch", json={"enabled": False}, headers=AUTH) as resp:
            assert await resp.json() == {"kill_switch": False}
        remediator.state.set_flag("circuit_open", 1)
        async with s.post(f"{url}/circuit/reset", headers=AUTH) as resp:
            assert await resp.json() == {"circuit_open": False}
        assert not remediator.circuit_open
        async with s.get(f"{url}/healthz") as resp:
            assert resp.status == 200


async def test_actions_endpoint_shape_newest_first(tmp_path: Path) -> None:
    async with running(idle_config(tmp_path)) as (url, remediator), aiohttp.ClientSession() as s:
        for n in range(3):
            remediator.state.audit(
                alertname=f"A{n}",
                fingerprint=f"f{n}",
                action="scale",
                target="deployment/web",
                result="blocked",
                reason="cooldown: test",
                now=1_700_000_000 + n,
            )
        async with s.get(f"{url}/actions?limit=2") as resp:
            assert resp.status == 401  # the audit log names targets: token only
        async with s.get(f"{url}/actions?limit=2", headers=AUTH) as resp:
            body = await resp.json()
        async with s.get(f"{url}/actions?limit=x", headers=AUTH) as resp:
            assert resp.status == 400
    assert [a["alertname"] for a in body["actions"]] == ["A2", "A1"]
    assert body["actions"][0] == {
        "time": "2023-11-14T22:13:22.000Z",
        "alertname": "A2",
        "fingerprint": "f2",
        "action": "scale",
        "target": "deployment/web",
        "result": "blocked",
        "reason": "cooldown: test",
    }


async def test_running_actions_are_listed_apart_and_results_keep_the_four_values(
    tmp_path: Path,
) -> None:
    """`result` is succeeded, failed, dry_run or blocked; a running action has none yet."""
    cfg = make_config(
        tmp_path,
        prometheus_url=None,
        deployments=[deployment("web", command=http_engine(delay=2.0))],
        guards={"recheck": False},
    )
    payload = firing_payload()
    payload["alerts"][0]["labels"] = {
        "alertname": "InferwatchLLMQueueBacklog",
        "remediation": "scale_up",
        "deployment": "web",
    }

    async def listing(s: aiohttp.ClientSession) -> dict[str, Any]:
        async with s.get(f"{url}/actions", headers=AUTH) as resp:
            body: dict[str, Any] = await resp.json()
        assert {a["result"] for a in body["actions"]} <= {
            "succeeded",
            "failed",
            "dry_run",
            "blocked",
        }
        return body

    async with running(cfg) as (url, remediator), aiohttp.ClientSession() as s:
        async with s.post(f"{url}/alerts", json=payload, headers=AUTH) as resp:
            assert resp.status == 202
        await wait_for(lambda: remediator.state.in_progress(), what="the scale-up to start")
        body = await listing(s)
        assert body["actions"] == []
        (running_now,) = body["in_progress"]
        assert running_now["action"] == "scale"
        assert running_now["plan"] == "scale web from 1 to 2 replicas"
        assert "result" not in running_now
        await wait_for(lambda: results(remediator, "succeeded"), what="the scale-up")
        body = await listing(s)
        assert body["in_progress"] == []
        assert [a["result"] for a in body["actions"]] == ["succeeded"]
