"""The real `inferwatch-remediator` process, SIGKILLed in the middle of an action, then started
again on the same state file: nothing is repeated blindly, the interrupted action is recorded,
a cut-off swap is undone once its alert resolved, and the kill switch stays engaged.
"""

from __future__ import annotations

import json
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.services import ManagedProcess
from remediations.process import signal_group, start_time
from tests.remediations.conftest import (
    FIXTURES,
    TOKEN,
    deployment,
    http_engine,
    make_config,
    wait_for,
)

AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
SWAP = {"alertname": "InferwatchLLMCapacityExhausted", "remediation": "swap_model", "model": "big"}


class Remediator:
    """The CLI as a child process on a config file; its replica process groups are tracked."""

    def __init__(self, tmp_path: Path, **config: Any) -> None:
        self.tmp_path = tmp_path
        self.cfg = make_config(tmp_path, prometheus_url=None, **config)
        self.process = ManagedProcess(
            "remediator",
            [sys.executable, "-m", "remediations", "--config", str(tmp_path / "remediator.yaml")],
            tmp_path / "remediator.log",
        )

    def start(self) -> None:
        self.process.spawn()

    def kill(self) -> None:
        """SIGKILL to the remediator alone: its replicas lead process groups of their own."""
        self.process.signal(signal.SIGKILL)
        assert self.process.proc is not None
        self.process.proc.wait(10)

    def stop(self) -> None:
        self.process.stop(30)
        for pgid, started in self.groups():  # never leave a replica behind
            if started is not None and start_time(pgid) == started:
                signal_group(pgid, signal.SIGKILL)

    def groups(self) -> list[tuple[int, str | None]]:
        path = self.tmp_path / "endpoints.json.processes.json"
        data = json.loads(path.read_text()) if path.exists() else []
        return [(g["pgid"], g["started"]) for g in data]

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://{self.cfg.listen}{path}", data=data, method=method, headers=AUTH
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                raw = resp.read()
                is_json = resp.headers.get_content_type() == "application/json"
                return resp.status, json.loads(raw) if is_json else raw.decode()
        except urllib.error.HTTPError as exc:
            return exc.code, None
        except OSError:
            return 0, None

    def healthy(self) -> bool:
        return self.request("GET", "/healthz")[0] == 200

    def alert(self, labels: dict[str, str], fingerprint: str, status: str = "firing") -> None:
        payload: dict[str, Any] = json.loads((FIXTURES / "v0.25-firing.json").read_text())
        payload["status"] = status
        payload["alerts"][0].update(labels=labels, fingerprint=fingerprint, status=status)
        assert self.request("POST", "/alerts", payload)[0] == 202

    def actions(self) -> dict[str, Any]:
        status, body = self.request("GET", "/actions")
        assert status == 200
        return dict(body)


@pytest.fixture
def remediators(tmp_path: Path) -> Iterator[list[Remediator]]:
    started: list[Remediator] = []
    yield started
    for r in started:
        r.stop()


def served_models(tmp_path: Path) -> set[str]:
    entries = json.loads((tmp_path / "endpoints.json").read_text())
    return {e["labels"]["model"] for e in entries}


async def test_sigkill_mid_swap_then_restart(tmp_path: Path, remediators: list[Remediator]) -> None:
    playbooks = tmp_path / "p.yaml"
    playbooks.write_text(
        yaml.safe_dump(
            {
                "playbooks": [
                    {
                        "name": "swap",
                        "match": {"remediation": "swap_model"},
                        "action": "swap_model",
                        "params": {"quiet_period_seconds": 0.2},
                    }
                ]
            }
        )
    )
    dep = deployment(
        "web",
        replicas=2,
        model="big.gguf",
        model_name="big",
        lighter_model="small.gguf",
        command=[*http_engine(delay=2.0), "{model}"],  # each replica takes 2 s: a slow swap
    )
    first = Remediator(
        tmp_path, deployments=[dep], playbooks=str(playbooks), guards={"recheck": False}
    )
    remediators.append(first)
    first.start()
    await wait_for(lambda: first.healthy() and served_models(tmp_path) == {"big"}, 30, "start")
    first.alert(SWAP, "s1")
    await wait_for(lambda: first.actions()["in_progress"], 10, "the swap to start")
    first.kill()

    second = Remediator(
        tmp_path, deployments=[dep], playbooks=str(playbooks), guards={"recheck": False}
    )
    remediators.append(second)
    second.start()
    await wait_for(second.healthy, 30, "the restart")
    (interrupted,) = second.actions()["actions"]
    assert interrupted["result"] == "failed"
    assert interrupted["reason"].startswith("interrupted")
    # the same notification again (Alertmanager re-sends) is not acted on a second time
    second.alert(SWAP, "s1")
    await wait_for(lambda: len(second.actions()["actions"]) == 2, 10, "the redelivery")
    redelivered = second.actions()["actions"][0]
    assert redelivered["result"] == "blocked" and redelivered["reason"].startswith("idempotency")
    # the alert resolves: the cut-off swap is undone (the replicas already run the big model)
    second.alert(SWAP, "s1", status="resolved")
    await wait_for(
        lambda: any(
            a["reason"] == "web already serves big.gguf" for a in second.actions()["actions"]
        ),
        30,
        "the swap back",
    )
    assert served_models(tmp_path) == {"big"}
    assert len(second.groups()) == 2  # no replica left over from the killed run


async def test_sigkill_mid_drain_and_the_kill_switch_persists(
    tmp_path: Path, remediators: list[Remediator]
) -> None:
    playbooks = tmp_path / "p.yaml"
    playbooks.write_text(
        yaml.safe_dump(
            {
                "playbooks": [
                    {
                        "name": "drain",
                        "match": {"remediation": "drain"},
                        "action": "drain",
                        "params": {"inflight_timeout_seconds": 60},  # no Prometheus: waits 60 s
                    }
                ]
            }
        )
    )
    config: dict[str, Any] = {
        "deployments": [deployment("web", replicas=2)],
        "playbooks": str(playbooks),
        "guards": {"recheck": False},
    }
    first = Remediator(tmp_path, **config)
    remediators.append(first)
    first.start()
    await wait_for(lambda: first.healthy() and len(first.groups()) == 2, 30, "start")
    target = json.loads((tmp_path / "endpoints.json").read_text())[1]["targets"][0]
    drain = {"alertname": "X", "remediation": "drain", "target": target}
    first.alert(drain, "d1")
    await wait_for(lambda: first.actions()["in_progress"], 10, "the drain to start")
    assert first.request("POST", "/killswitch", {"enabled": True})[0] == 200
    first.kill()

    second = Remediator(tmp_path, **config)
    remediators.append(second)
    second.start()
    await wait_for(second.healthy, 30, "the restart")
    (interrupted,) = second.actions()["actions"]
    assert (interrupted["result"], interrupted["target"]) == ("failed", f"replica/{target}")
    assert interrupted["reason"].startswith("interrupted")
    assert second.request("POST", "/killswitch")[1] == {"kill_switch": True}
    second.alert(drain, "d2")  # a new episode: the kill switch still blocks it
    await wait_for(lambda: len(second.actions()["actions"]) == 2, 10, "the block")
    assert second.actions()["actions"][0]["reason"].startswith("kill_switch")
