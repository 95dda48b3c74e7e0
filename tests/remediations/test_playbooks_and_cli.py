"""Playbooks cover every alert that asks for a remediation; the CLI fails clearly on bad input
and drains its queue on SIGTERM."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from exporter.settings import ConfigError
from harness.services import LOOPBACK, ManagedProcess, free_port
from remediations.config import DEFAULT_PLAYBOOKS
from remediations.playbook import load_playbooks
from tests.remediations.conftest import gated_engine, http_engine

ROOT = Path(__file__).resolve().parents[2]
# design.md's alert table: the alerts whose remediation label a playbook must act on
DESIGN_REMEDIATIONS = {
    "InferwatchGPULost": "drain_node",
    "InferwatchGPUXidCritical": "drain_node",
    "InferwatchGPUUncorrectableECC": "drain_node",
    "InferwatchCUDAFragmentationHigh": "restart",
    "InferwatchCUDAAllocRetries": "restart",
    "InferwatchCUDAMemoryLeak": "restart",
    "InferwatchLLMQueueBacklog": "scale_up",
    "InferwatchLLMKVCacheSaturated": "scale_up",
    "InferwatchLLMReplicaStalled": "restart",
    "InferwatchLLMLatencyDrift": "restart",
    "InferwatchLLMTTFTBudgetBurn": "scale_up",
    "InferwatchLLMCapacityExhausted": "swap_model",
    "InferwatchLLMOverProvisioned": "scale_down",
    "InferwatchLLMEngineDown": "restart",
    "InferwatchLLMPreemptionStorm": "scale_up",
}
EXPECTED_ACTION = {
    "drain_node": ("drain_node", None),
    "restart": ("restart", None),
    "scale_up": ("scale", "up"),
    "scale_down": ("scale", "down"),
    "swap_model": ("swap_model", None),
    "drain": ("drain", None),
}


def rule_file_alerts() -> dict[str, str]:
    """alertname -> remediation label, from the shipped rule files."""
    found = {}
    for path in sorted((ROOT / "rules").glob("*.rules.yaml")):
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", []):
            for rule in group.get("rules", []):
                remediation = (rule.get("labels") or {}).get("remediation")
                if "alert" in rule and remediation:
                    found[rule["alert"]] = remediation
    return found


@pytest.mark.parametrize(
    ("alertname", "remediation"), sorted({**DESIGN_REMEDIATIONS, **rule_file_alerts()}.items())
)
def test_default_playbooks_handle_every_remediation_alert(alertname: str, remediation: str) -> None:
    playbooks = load_playbooks(DEFAULT_PLAYBOOKS)
    playbook = playbooks.first_match({"alertname": alertname, "remediation": remediation})
    assert playbook is not None
    action, direction = EXPECTED_ACTION[remediation]
    assert playbook.action == action
    if direction is not None:
        assert playbook.params.direction == direction  # type: ignore[union-attr]


def test_alerts_without_a_remediation_label_match_nothing() -> None:
    playbooks = load_playbooks(DEFAULT_PLAYBOOKS)
    assert playbooks.first_match({"alertname": "InferwatchGPUThermalThrottling"}) is None


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"playbooks": []}, "p.yaml: playbooks: List should have at least 1 item"),
        (
            {"playbooks": [{"name": "a", "action": "scale", "params": {"step": 0}}]},
            "p.yaml: playbooks.0.scale.params.step: Input should be greater than or equal to 1"
            " (got 0)",
        ),
        (
            {"playbooks": [{"name": "a", "action": "reboot"}]},
            "p.yaml: playbooks.0: Input tag 'reboot'",
        ),
        (
            {"playbooks": [{"name": "a", "action": "drain", "match_re": {"pod": "("}}]},
            "p.yaml: playbooks.0.drain.match_re: Value error, pod: '(' is not a valid regex",
        ),
        (
            {"playbooks": [{"name": "a", "action": "drain", "extra": 1}]},
            "p.yaml: playbooks.0.drain.extra: unknown key (got 1)",
        ),
        (
            {"playbooks": [{"name": "a", "action": "drain"}, {"name": "a", "action": "restart"}]},
            "playbook names must be unique: a",
        ),
    ],
)
def test_playbook_errors_name_file_path_and_value(
    tmp_path: Path, doc: object, message: str
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as err:
        load_playbooks(path)
    assert message in str(err.value).replace(str(tmp_path) + "/", "")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "remediations", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_cli_help_and_usage_errors() -> None:
    helped = cli("--help")
    assert helped.returncode == 0
    for word in ("--dry-run", "--token-file", "POST /alerts", "INFERWATCH_REMEDIATOR_TOKEN"):
        assert word in helped.stdout
    assert cli("--bogus").returncode == 2


def test_cli_bad_config_exits_2_with_a_path_qualified_message(tmp_path: Path) -> None:
    config = tmp_path / "r.yaml"
    config.write_text("guards:\n  cooldown_seconds: -1\n  recheck: false\n")
    result = cli("--config", str(config), env={"INFERWATCH_REMEDIATOR_TOKEN": "t"})
    assert result.returncode == 2
    assert (
        f"{config}: guards.cooldown_seconds: Input should be greater than or equal to 0"
        in result.stderr
    )

    config.write_text("guards: {recheck: false}\n")
    result = cli("--config", str(config))
    assert result.returncode == 2
    assert "token: no bearer token" in result.stderr

    bad = tmp_path / "p.yaml"
    bad.write_text("playbooks: [{name: x, action: scale, params: {direction: sideways}}]\n")
    result = cli(
        "--config", str(config), "--playbooks", str(bad), env={"INFERWATCH_REMEDIATOR_TOKEN": "t"}
    )
    assert result.returncode == 2
    assert f"{bad}: playbooks.0.scale.params.direction" in result.stderr


@pytest.mark.integration
def test_sigterm_drains_the_queue_before_exiting(tmp_path: Path) -> None:
    port = free_port()
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    gate = tmp_path / "gate"
    gate.touch()  # the initial replica serves at once; the scale-up's waits for the test
    engine = gated_engine(gate)
    config = tmp_path / "r.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "guards": {"recheck": False},
                "backend": "local",
                "local": {
                    "endpoint_file": str(tmp_path / "ep.json"),
                    "port_range": [port + 1, port + 20],
                    "deployments": [
                        {
                            "name": "web",
                            "command": engine,
                            "model": "m",
                            "ready_path": "/",
                            "replicas": 1,
                            "max_replicas": 3,
                        }
                    ],
                },
            }
        )
    )
    proc = ManagedProcess(
        "remediator",
        [
            sys.executable,
            "-m",
            "remediations",
            "--config",
            str(config),
            "--listen",
            f"{LOOPBACK}:{port}",
            "--state",
            str(tmp_path / "state.db"),
            "--token-file",
            str(token),
        ],
        tmp_path / "remediator.log",
        ready_url=f"http://{LOOPBACK}:{port}/healthz",
    )
    with proc:
        payload = json.dumps(
            {
                "version": "4",
                "status": "firing",
                "alerts": [
                    {
                        "status": "firing",
                        "labels": {
                            "alertname": "A",
                            "remediation": "scale_up",
                            "deployment": "web",
                        },
                        "startsAt": "2026-11-21T05:29:57.774Z",
                        "fingerprint": "abc",
                    }
                ],
            }
        ).encode()
        req = urllib.request.Request(
            f"http://{LOOPBACK}:{port}/alerts",
            data=payload,
            method="POST",
            headers={"Authorization": "Bearer s3cret"},
        )
        gate.unlink()
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 202
        actions = urllib.request.Request(
            f"http://{LOOPBACK}:{port}/actions", headers={"Authorization": "Bearer s3cret"}
        )
        for _ in range(300):  # bounded: until the scale-up is in progress, waiting on its replica
            with urllib.request.urlopen(actions, timeout=5) as resp:
                if json.load(resp)["in_progress"]:
                    break
            time.sleep(0.1)
        else:
            pytest.fail(f"the scale-up never started:\n{proc.tail()}")
        proc.signal(signal.SIGTERM)
        assert proc.proc is not None
        # It keeps draining (the action cannot finish while the gate is shut) ...
        with pytest.raises(subprocess.TimeoutExpired):
            proc.proc.wait(1)
        gate.touch()  # ... and exits once the queued work is done.
        assert proc.proc.wait(30) == 0
    rows = (
        sqlite3.connect(tmp_path / "state.db")
        .execute("SELECT action, result FROM audit")
        .fetchall()
    )
    assert rows == [("scale", "succeeded")]  # the queued alert finished before exit
    assert json.loads((tmp_path / "ep.json").read_text()) == []  # replicas stopped on exit


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_tls_serves_https_only(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    port = free_port()
    config = tmp_path / "r.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": f"{LOOPBACK}:{port}",
                "token": "t",
                "state": str(tmp_path / "s.db"),
                "guards": {"recheck": False},
                "tls": {"cert_file": str(cert), "key_file": str(key)},
                "backend": "local",
                "local": {
                    "endpoint_file": str(tmp_path / "ep.json"),
                    "deployments": [
                        {
                            "name": "web",
                            "command": http_engine(),
                            "model": "m",
                            "replicas": 0,
                            "min_replicas": 0,
                        }
                    ],
                },
            }
        )
    )
    proc = ManagedProcess(
        "remediator",
        [sys.executable, "-m", "remediations", "--config", str(config)],
        tmp_path / "remediator.log",
    )
    with proc:
        context = ssl.create_default_context(cafile=str(cert))
        for _ in range(100):  # bounded wait for the listener
            try:
                with urllib.request.urlopen(
                    f"https://{LOOPBACK}:{port}/healthz", context=context, timeout=2
                ) as resp:
                    assert resp.status == 200
                    break
            except urllib.error.URLError:
                time.sleep(0.1)
        else:
            pytest.fail(f"no HTTPS listener:\n{proc.tail()}")
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"http://{LOOPBACK}:{port}/healthz", timeout=2)

    bad = tmp_path / "bad.yaml"
    bad.write_text(config.read_text().replace(str(key), str(tmp_path / "missing.key")))
    result = cli("--config", str(bad))
    assert result.returncode == 2
    assert "tls: cannot load" in result.stderr
