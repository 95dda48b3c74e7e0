"""A real Alertmanager (Debian package) routes to the remediator on 127.0.0.1.

Alerts are fired and resolved through Alertmanager's own API, exactly as Prometheus sends them;
the assertions are on what the remediator did (audit log, replicas, endpoint file).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from remediations.playbook import load_playbooks
from tests.remediations.conftest import (
    TOKEN,
    am_alert,
    audit,
    deployment,
    gated_engine,
    make_config,
    never_ready_engine,
    post_alerts,
    results,
    running,
    wait_for,
)

pytestmark = pytest.mark.integration

BACKLOG = {"alertname": "InferwatchLLMQueueBacklog", "remediation": "scale_up"}


def serving(tmp_path: Path) -> list[str]:
    entries = json.loads((tmp_path / "endpoints.json").read_text())
    return [t for e in entries for t in e["targets"]]


async def test_firing_scales_once_and_the_resolved_notification_does_nothing(
    tmp_path: Path, prometheus_url: str, start_alertmanager: Any
) -> None:
    cfg = make_config(tmp_path, prometheus_url=prometheus_url, deployments=[deployment("web")])
    async with running(cfg) as (url, remediator):
        am = start_alertmanager(url)
        assert len(serving(tmp_path)) == 1
        alert = am_alert({**BACKLOG, "deployment": "web"}, prometheus_url=prometheus_url)
        post_alerts(am, [alert])
        done = await wait_for(lambda: results(remediator, "succeeded"), what="the scale-up")
        assert done[0].action == "scale"
        assert done[0].target == "deployment/web"
        assert "from 1 to 2" in done[0].reason
        assert len(serving(tmp_path)) == 2

        post_alerts(am, [{**alert, "endsAt": alert["startsAt"]}])
        blocked = await wait_for(lambda: results(remediator, "blocked"), what="the resolution")
        assert blocked[0].reason.startswith("firing_only")
        assert len(results(remediator, "succeeded")) == 1
        assert len(serving(tmp_path)) == 2


async def test_two_alertmanagers_deliver_twice_and_we_act_once(
    tmp_path: Path, prometheus_url: str, start_alertmanager: Any
) -> None:
    cfg = make_config(tmp_path, prometheus_url=prometheus_url, deployments=[deployment("web")])
    async with running(cfg) as (url, remediator):
        first, second = start_alertmanager(url), start_alertmanager(url)
        alert = am_alert({**BACKLOG, "deployment": "web"}, prometheus_url=prometheus_url)
        post_alerts(first, [alert])
        post_alerts(second, [alert])
        await wait_for(lambda: len(audit(remediator)) >= 2, what="both deliveries")
        # A replay of the same notification (a retry whose first attempt did arrive): built
        # from the alert we sent and the fingerprint Alertmanager computed for it.
        async with aiohttp.ClientSession() as s, s.get(f"{first}/api/v2/alerts") as resp:
            (stored,) = await resp.json()
        replay = {
            "version": "4",
            "status": "firing",
            "receiver": "remediator",
            "alerts": [
                {
                    **{
                        k: stored[k]
                        for k in (
                            "labels",
                            "annotations",
                            "startsAt",
                            "endsAt",
                            "generatorURL",
                            "fingerprint",
                        )
                    },
                    "startsAt": alert["startsAt"],
                    "status": "firing",
                }
            ],
        }
        async with aiohttp.ClientSession() as s:
            for _ in range(2):
                async with s.post(
                    f"{url}/alerts", json=replay, headers={"Authorization": f"Bearer {TOKEN}"}
                ) as resp:
                    assert resp.status == 202
        await wait_for(lambda: len(audit(remediator)) >= 4, what="the replays")
        assert len(results(remediator, "succeeded")) == 1
        reasons = [e.reason for e in results(remediator, "blocked")]
        assert reasons and all(r.startswith("idempotency") for r in reasons)
        assert len(serving(tmp_path)) == 2


async def test_503_when_the_queue_is_full_is_retried_by_alertmanager(
    tmp_path: Path, prometheus_url: str, start_alertmanager: Any
) -> None:
    gate = tmp_path / "gate"
    gate.touch()  # the initial replicas start at once
    cfg = make_config(
        tmp_path,
        prometheus_url=prometheus_url,
        deployments=[
            deployment(n, command=gated_engine(gate), ready_timeout_seconds=60) for n in "abcd"
        ],
        queue_size=1,
        workers=1,
    )
    async with running(cfg) as (url, remediator), aiohttp.ClientSession() as s:
        gate.unlink()  # from now on a scale-up holds the single worker until the gate opens
        am = start_alertmanager(url)
        post_alerts(
            am,
            [am_alert({**BACKLOG, "deployment": n}, prometheus_url=prometheus_url) for n in "abcd"],
        )

        async def answered_503() -> bool:
            async with s.get(f"{url}/metrics") as resp:
                text = await resp.text()
            return any(
                sample.labels == {"code": "503"} and sample.value > 0
                for family in text_string_to_metric_families(text)
                if family.name == "inferwatch_remediation_webhook_requests"
                for sample in family.samples
                if sample.name.endswith("_total")
            )

        # One alert in the worker, one queued: a third notification must get 503.
        for _ in range(300):
            if await answered_503():
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("no 503 within 30 s while the worker was busy and the queue full")
        gate.touch()
        await wait_for(
            lambda: len(results(remediator, "succeeded")) == 4, within=40, what="four scale-ups"
        )
        assert sorted(e.target for e in results(remediator, "succeeded")) == [
            f"deployment/{n}" for n in "abcd"
        ]
        assert len(audit(remediator)) == 4  # every alert once: no duplicate from the retries


async def test_alert_storm_one_action_per_target(
    tmp_path: Path, prometheus_url: str, start_alertmanager: Any
) -> None:
    cfg = make_config(
        tmp_path,
        prometheus_url=prometheus_url,
        deployments=[deployment("web"), deployment("api")],
    )
    async with running(cfg) as (url, remediator):
        am = start_alertmanager(url)
        storm = [
            am_alert(
                {**BACKLOG, "deployment": ("web", "api")[i % 2], "instance": f"10.0.0.{i}:8000"},
                prometheus_url=prometheus_url,
            )
            for i in range(300)
        ]
        post_alerts(am, storm)
        await wait_for(lambda: len(audit(remediator)) >= 300, within=60, what="300 alerts")
        entries = audit(remediator)
        assert len(entries) == 300
        assert sorted(e.target for e in results(remediator, "succeeded")) == [
            "deployment/api",
            "deployment/web",
        ]
        guards = {e.reason.split(":")[0] for e in results(remediator, "blocked")}
        assert guards <= {"cooldown", "idempotency", "rate_limit_action", "rate_limit_global"}
        assert len(serving(tmp_path)) == 4


async def test_circuit_breaker_opens_after_failures_and_stays_open_until_reset(
    tmp_path: Path, prometheus_url: str, start_alertmanager: Any
) -> None:
    playbooks = tmp_path / "playbooks.yaml"
    playbooks.write_text(
        yaml.safe_dump(
            {
                "playbooks": [
                    {
                        "name": "scale-up",
                        "match": {"remediation": "scale_up"},
                        "action": "scale",
                        "params": {"ready_timeout_seconds": 0.5},
                    }
                ]
            }
        )
    )
    broken = [
        deployment(n, command=never_ready_engine(), replicas=0, min_replicas=0)
        for n in ("b1", "b2", "b3", "b4")
    ]
    cfg = make_config(
        tmp_path,
        prometheus_url=prometheus_url,
        deployments=[*broken, deployment("good")],
        playbooks=str(playbooks),
    )
    async with running(cfg, playbooks=load_playbooks(playbooks)) as (url, remediator):
        am = start_alertmanager(url)

        def fire(name: str, instance: str = "x") -> None:
            labels = {**BACKLOG, "deployment": name, "instance": instance}
            post_alerts(am, [am_alert(labels, prometheus_url=prometheus_url)])

        for name in ("b1", "b2", "b3"):
            fire(name)
        await wait_for(lambda: len(results(remediator, "failed")) == 3, what="three failures")
        assert remediator.circuit_open
        fire("b4")
        fire("good")
        blocked = await wait_for(
            lambda: (
                [e for e in results(remediator, "blocked") if "circuit" in e.reason]
                if len(results(remediator, "blocked")) >= 2
                else None
            ),
            what="circuit blocks",
        )
        assert {e.target for e in blocked} == {"deployment/b4", "deployment/good"}
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{url}/metrics") as resp:
                assert "inferwatch_remediation_circuit_open 1.0" in await resp.text()
            async with s.post(
                f"{url}/circuit/reset", headers={"Authorization": f"Bearer {TOKEN}"}
            ) as resp:
                assert resp.status == 200
        assert not remediator.circuit_open
        fire("good", instance="after-reset")  # a new alert: the circuit no longer blocks it
        await wait_for(lambda: results(remediator, "succeeded"), what="action after reset")
        assert results(remediator, "succeeded")[0].target == "deployment/good"
