"""Issue 14's attacks on the remediator, replayed against the real service; none may work.

Each test drives the service the way the attack did (raw sockets against the real CLI process,
a damaged state file given to `inferwatch-remediator`, a 100k-deep body, 10,001 alerts, a late
"firing") and asserts the safe behaviour: a clear message or log line, a counter, no action.
The attack catalogue with what defends each is docs/threat-model.md.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import yaml

from harness.services import LOOPBACK, ManagedProcess, free_port
from remediations.state import SCHEMA_VERSION, State
from tests.remediations import state_previous_release
from tests.remediations.conftest import (
    TOKEN,
    audit,
    deployment,
    http_engine,
    make_config,
    results,
    running,
    wait_for,
)

AUTH = {"Authorization": f"Bearer {TOKEN}"}
BACKLOG = {"alertname": "InferwatchLLMQueueBacklog", "remediation": "scale_up"}
STARTS = "2026-11-21T05:29:57.774Z"


def alert(labels: dict[str, str], **fields: Any) -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": {"severity": "warning", **labels},
        "annotations": {"summary": "test"},
        "startsAt": STARTS,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=vector%281%29&g0.tab=1",
        "fingerprint": "0123456789abcdef",
        **fields,
    }


def notification(*alerts: dict[str, Any]) -> dict[str, Any]:
    status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    return {"version": "4", "status": status, "receiver": "r", "alerts": list(alerts)}


async def post(url: str, payload: Any, *, raw: bytes | None = None) -> tuple[int, Any]:
    body = raw if raw is not None else json.dumps(payload).encode()
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{url}/alerts", data=body, headers=AUTH) as resp,
    ):
        return resp.status, await resp.json()


def metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


# -- the real CLI process ---------------------------------------------------------------------


def cli_config(tmp_path: Path, **overrides: Any) -> Path:
    data: dict[str, Any] = {
        "token": TOKEN,
        "guards": {"recheck": False},
        "backend": "local",
        "local": {
            "endpoint_file": str(tmp_path / "local" / "endpoints.json"),
            "deployments": [deployment("web", replicas=1, command=http_engine())],
        },
        **overrides,
    }
    low = free_port()
    data["local"]["port_range"] = [low, low + 20]
    path = tmp_path / "remediator.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def cli(config: Path, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "remediations", "--config", str(config), "--state", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "INFERWATCH_REMEDIATOR_LOG_LEVEL": "warning"},
    )


@pytest.fixture(scope="module")
def slow_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The CLI with 256 file descriptors (as in the attack) and a 2 s client timeout."""
    tmp_path = tmp_path_factory.mktemp("slow")
    port = free_port()
    config = cli_config(
        tmp_path,
        listen=f"{LOOPBACK}:{port}",
        client_timeout_seconds=2,
        local={
            "endpoint_file": str(tmp_path / "local" / "endpoints.json"),
            "deployments": [deployment("web", replicas=0, min_replicas=0)],
        },
    )
    argv = [sys.executable, "-m", "remediations", "--config", str(config)]
    argv += ["--state", str(tmp_path / "state.db")]
    proc = ManagedProcess(
        "remediator",
        ["sh", "-c", 'ulimit -n 256 && exec "$@"', "sh", *argv],
        tmp_path / "remediator.log",
        ready_url=f"http://{LOOPBACK}:{port}/healthz",
    )
    with proc:
        yield f"http://{LOOPBACK}:{port}", tmp_path / "remediator.log"


def open_slow(url: str, n: int, first_bytes: bytes) -> list[socket.socket]:
    host, port = url.removeprefix("http://").split(":")
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(first_bytes)
        socks.append(s)
    return socks


def closed_by_server(socks: list[socket.socket], limit_s: float) -> int:
    """Wait (bounded) until the server closed each socket; return how many it closed."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    closed = 0
    deadline = time.monotonic() + limit_s
    while closed < len(socks) and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            try:
                data = s.recv(65536)
            except ConnectionError:
                data = b""
            if not data or b"408" in data:  # EOF, reset, or a 408 before the close
                sel.unregister(s)
                closed += 1
    sel.close()
    for s in socks:
        s.close()
    return closed


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, resp.read().decode()


def http_post(url: str, body: bytes) -> int:
    req = urllib.request.Request(url, data=body, method="POST", headers=AUTH)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


# -- 11: slow clients -------------------------------------------------------------------------


@pytest.mark.integration
def test_slow_clients_are_cut_off_and_the_service_keeps_answering(
    slow_target: tuple[str, Path],
) -> None:
    """300 slow-head and 100 slow-body connections with 256 file descriptors (item 11)."""
    url, log_path = slow_target
    heads = open_slow(url, 300, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    body_head = (
        b"POST /alerts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b"\r\nContent-Length: 100000\r\n\r\n{"
    )
    bodies = open_slow(url, 100, body_head)
    # While they are held, the service answers: the oldest connection makes room.
    assert http_get(f"{url}/healthz")[0] == 200
    payload = json.dumps(notification(alert({"alertname": "Unmatched"}))).encode()
    assert http_post(f"{url}/alerts", payload) == 202
    # Every slow connection is closed by the server within the client timeout.
    assert closed_by_server(heads + bodies, limit_s=30) == 400
    _, text = http_get(f"{url}/metrics")
    closed = "inferwatch_remediation_connections_closed_total"
    assert metric(text, f'{closed}{{reason="connection_limit"}}') > 0
    assert (
        metric(text, f'{closed}{{reason="header_timeout"}}')
        + metric(text, f'{closed}{{reason="body_timeout"}}')
        > 0
    )
    log_text = log_path.read_text()
    assert "Traceback" not in log_text
    assert "out of system resource" not in log_text
    assert len(log_text.splitlines()) < 30  # a flood of connections is a handful of lines
    assert "closed the oldest one" in log_text


@pytest.mark.integration
def test_client_gone_mid_body_is_counted_not_a_traceback(slow_target: tuple[str, Path]) -> None:
    url, log_path = slow_target
    _, before = http_get(f"{url}/metrics")
    name = 'inferwatch_remediation_connections_closed_total{reason="client_disconnect"}'
    for s in open_slow(
        url,
        20,
        b"POST /alerts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b"\r\nContent-Length: 5000\r\n\r\n{",
    ):
        s.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        _, text = http_get(f"{url}/metrics")
        if metric(text, name) >= metric(before, name) + 20:
            break
        time.sleep(0.1)
    assert metric(text, name) == metric(before, name) + 20
    assert "Traceback" not in log_path.read_text()
    assert "went away while sending its body" in log_path.read_text()


# -- 12: deeply nested JSON -------------------------------------------------------------------


async def test_deeply_nested_json_gets_400_not_500(tmp_path: Path) -> None:
    cfg = make_config(
        tmp_path, prometheus_url=None, deployments=[deployment("web", replicas=0, min_replicas=0)]
    )
    deep = b"[" * 100_000 + b"]" * 100_000
    wrapped = b'{"version": "4", "status": "firing", "alerts": [], "x": ' + deep + b"}"
    async with running(cfg) as (url, remediator), aiohttp.ClientSession() as s:
        for body in (deep, wrapped):
            status, answer = await post(url, None, raw=body)
            assert status == 400
            assert "nested too deeply" in answer["error"]
        async with s.post(f"{url}/killswitch", data=deep, headers=AUTH) as resp:
            assert resp.status == 400
        async with s.get(f"{url}/metrics") as resp:
            text = await resp.text()
        assert not remediator.kill_switch
    assert metric(text, 'inferwatch_remediation_webhook_requests_total{code="400"}') == 2
    assert metric(text, 'inferwatch_remediation_webhook_requests_total{code="500"}') == 0


async def test_exporter_simulate_endpoint_answers_400_to_deep_json(aiohttp_client: Any) -> None:
    from exporter.app import create_app as exporter_app
    from exporter.config import ExporterConfig

    cfg = ExporterConfig.model_validate({"listen": "127.0.0.1:9835", "simulate": "default"})
    client = await aiohttp_client(exporter_app(cfg))
    resp = await client.post("/-/simulate", data=b"[" * 100_000 + b"]" * 100_000)
    assert resp.status == 400
    assert "nested too deeply" in (await resp.json())["error"]


# -- 13: 10,001 alerts and Alertmanager-sized bodies ------------------------------------------


def realistic_alert(n: int) -> dict[str, Any]:
    """An alert as our rules make it: ~0.9 KiB of JSON with its annotations."""
    labels = {
        "alertname": "InferwatchLLMQueueBacklog",
        "severity": "warning",
        "engine": "vllm",
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "namespace": "serving",
        "pod": f"llama-{n:05d}-7d9f8b6c5-x2x9z",
        "target": f"10.0.{n // 250}.{n % 250}:8000",
        "job": "inferwatch-exporter",
        "instance": "inferwatch-exporter.monitoring.svc:9835",
    }
    return alert(
        labels,
        fingerprint=f"{n:016x}",
        annotations={
            "summary": "Requests keep waiting on llama.",
            "description": "On average 12 requests waited over the last 10 minutes on "
            f"serving/llama-{n:05d}; replicas cannot keep up with the load. " * 3,
            "runbook_url": "https://github.com/inferwatch/inferwatch/blob/main/rules/"
            "runbooks/InferwatchLLMQueueBacklog.md",
        },
    )


async def test_ten_thousand_and_one_alerts_are_taken_not_refused_forever(tmp_path: Path) -> None:
    """A notification larger than the queue fits an empty queue; defaults take what a real
    Alertmanager sends (item 13)."""
    cfg = make_config(
        tmp_path,
        prometheus_url=None,
        deployments=[deployment("web", replicas=0, min_replicas=0)],
        namespaces=["other"],  # every alert is refused by a guard: nothing runs
    )
    small = [alert({"alertname": "Unmatched", "i": str(n)}) for n in range(10_001)]
    big = [realistic_alert(n) for n in range(10_000)]
    assert len(json.dumps(notification(*small))) > 2_500_000
    assert len(json.dumps(notification(*big))) > 8_000_000
    async with running(cfg) as (url, remediator):
        for alerts in (small, big):
            status, answer = await post(url, notification(*alerts))
            assert (status, answer) == (202, {"accepted": len(alerts)})
            await wait_for(
                lambda: remediator.queue.qsize() == 0, within=120, what="the queue to drain"
            )
        assert results(remediator, "succeeded") == []


# -- 15: state file damage --------------------------------------------------------------------


def damaged(kind: str, path: Path) -> None:
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(os.urandom(8192))
    elif kind == "half-truncated":
        state_previous_release.write(path, time.time())
        State(path).close()  # checkpointed into the main file
        for side in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            side.unlink(missing_ok=True)
        size = path.stat().st_size
        with path.open("r+b") as f:
            f.truncate(size // 2)
    elif kind == "not ours":
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE photos (id INTEGER)")
        db.commit()
        db.close()
    elif kind == "newer":
        State(path).close()
        db = sqlite3.connect(path)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        db.commit()
        db.close()
    elif kind == "read-only":
        State(path).close()
        path.chmod(0o444)
        path.parent.chmod(0o555)
        if os.geteuid() == 0:  # root writes through permissions, not through immutability
            subprocess.run(["chattr", "+i", str(path), str(path.parent)], check=True)


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("empty", "is empty (0 bytes)"),
        ("garbage", "is not a usable SQLite database"),
        ("half-truncated", "is not a usable SQLite database"),
        ("not ours", "not a remediator state file"),
        ("newer", f"this remediator knows up to {SCHEMA_VERSION}"),
        ("read-only", "is read-only"),
    ],
)
def test_damaged_state_file_exits_2_with_one_message_and_starts_nothing(
    tmp_path: Path, kind: str, needle: str
) -> None:
    (tmp_path / "s").mkdir()
    state = tmp_path / "s" / "state.db"
    damaged(kind, state)
    try:
        result = cli(cli_config(tmp_path), state)
    finally:
        if kind == "read-only" and os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(state), str(state.parent)], check=True)
        state.parent.chmod(0o755)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"inferwatch-remediator: state file {state}")
    assert needle in lines[0]
    assert not (tmp_path / "local").exists()  # no replica was started


def test_locked_state_file_exits_2_and_starts_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    State(state).close()
    holder = sqlite3.connect(state, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        result = cli(cli_config(tmp_path), state)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "is locked by another process" in line
    assert not (tmp_path / "local").exists()


async def test_a_lock_held_while_running_loses_nothing_and_records_no_failure(
    tmp_path: Path,
) -> None:
    """Dry-run, the file locked by another process: the alert waits, then is handled once."""
    cfg = make_config(tmp_path, prometheus_url=None, deployments=[deployment("web")], dry_run=True)
    async with running(cfg) as (url, remediator):
        holder = sqlite3.connect(cfg.state, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            status, _ = await post(url, notification(alert({**BACKLOG, "deployment": "web"})))
            assert status == 202
            registry = remediator.metrics.registry
            await wait_for(
                lambda: registry.get_sample_value("inferwatch_remediation_state_errors_total"),
                what="the alert to wait for the lock",
            )
            assert [e for e in audit(remediator) if e.result != "blocked"] == []
            assert remediator.state.cooldown_left("deployment/web") == 0
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        await wait_for(lambda: results(remediator, "dry_run"), what="the alert, once unlocked")
        assert [e.result for e in audit(remediator)] == ["dry_run"]


# -- 15: migrations from the previous release's state file ------------------------------------


@pytest.mark.parametrize("first_swaps", [False, True])
def test_previous_release_state_file_is_migrated_and_keeps_everything(
    tmp_path: Path, first_swaps: bool
) -> None:
    path = tmp_path / "state.db"
    now = time.time()
    state_previous_release.write(path, now, first_swaps=first_swaps)
    state = State(path)
    try:
        assert state.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert state.flag("kill_switch") == 1 and state.flag("circuit_open") == 1
        assert len(state.recent(10_000)) == state_previous_release.AUDIT_ROWS
        assert state.cooldown_left("deployment/web", now) == pytest.approx(600)
        # the claim made before the upgrade still holds, under the normalized key
        assert state.seen("0123456789abcdef@2026-11-21T05:29:57.774000Z", now)
        swap = state.swap("deployment/web")
        assert swap is not None and (swap.original, swap.lighter) == ("big", "small")
        assert not swap.in_flight and swap.quiet_seconds == 0
    finally:
        state.close()
    State(path).close()  # opening a migrated file again changes nothing


async def test_previous_release_state_keeps_the_kill_switch_through_the_real_service(
    tmp_path: Path,
) -> None:
    cfg = make_config(tmp_path, prometheus_url=None, deployments=[deployment("web")])
    state_previous_release.write(cfg.state, time.time())
    async with running(cfg) as (url, remediator):
        assert remediator.kill_switch
        fresh = alert({**BACKLOG, "deployment": "web"}, fingerprint="fresh")
        assert (await post(url, notification(fresh)))[0] == 202
        await wait_for(lambda: len(audit(remediator)) > state_previous_release.AUDIT_ROWS)
        assert audit(remediator)[0].reason.startswith("kill_switch")


# -- 16: a late "firing" after the episode resolved -------------------------------------------


async def test_late_firing_after_resolution_is_not_acted_on(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, prometheus_url=None, deployments=[deployment("web")])
    labels = {**BACKLOG, "deployment": "web"}
    async with running(cfg) as (url, remediator):
        resolved = alert(labels, status="resolved", endsAt="2026-11-21T05:40:00Z")
        assert (await post(url, notification(resolved)))[0] == 202
        await wait_for(lambda: audit(remediator), what="the resolution")
        # the same episode, firing, delivered late and written with another UTC offset
        late = alert(labels, startsAt="2026-11-21T07:29:57.774+02:00")
        assert (await post(url, notification(late)))[0] == 202
        await wait_for(lambda: len(audit(remediator)) == 2, what="the late firing")
        entry = audit(remediator)[0]
        assert (entry.result, entry.reason.split(":")[0]) == ("blocked", "firing_only")
        assert "resolved already" in entry.reason
        assert len(remediator.backend.replicas_of("web")) == 1


async def test_the_same_start_in_another_offset_is_the_same_episode(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, prometheus_url=None, deployments=[deployment("web")])
    labels = {**BACKLOG, "deployment": "web"}
    async with running(cfg) as (url, remediator):
        await post(url, notification(alert(labels)))
        await wait_for(lambda: results(remediator, "succeeded"), what="the scale-up")
        await post(url, notification(alert(labels, startsAt="2026-11-21T00:29:57.774-05:00")))
        await wait_for(lambda: results(remediator, "blocked"), what="the duplicate")
        (entry,) = results(remediator, "blocked")
        assert entry.reason.startswith("idempotency")
        assert len(results(remediator, "succeeded")) == 1


# -- 18: the audit log's token, the namespace allow-list, trailing newlines -------------------


async def test_actions_need_the_token(tmp_path: Path) -> None:
    cfg = make_config(
        tmp_path, prometheus_url=None, deployments=[deployment("web", replicas=0, min_replicas=0)]
    )
    async with running(cfg) as (url, _), aiohttp.ClientSession() as s:
        async with s.get(f"{url}/actions") as resp:
            assert resp.status == 401
        async with s.get(f"{url}/actions", headers={"Authorization": "Bearer x"}) as resp:
            assert resp.status == 401
        async with s.get(f"{url}/actions", headers=AUTH) as resp:
            assert resp.status == 200


@pytest.mark.parametrize(
    ("labels", "namespaces", "reason"),
    [
        ({"deployment": "web"}, ["serving"], "has no namespace label"),
        ({"deployment": "web\n"}, ["default"], "is not a valid Kubernetes name"),
        ({"target": "127.0.0.1:1\n"}, ["default"], "neither a Kubernetes name nor host:port"),
        ({"model": "web\n"}, ["default"], "is not a valid model name"),
    ],
)
async def test_target_checks_hold_on_the_local_backend(
    tmp_path: Path, labels: dict[str, str], namespaces: list[str], reason: str
) -> None:
    cfg = make_config(
        tmp_path, prometheus_url=None, deployments=[deployment("web")], namespaces=namespaces
    )
    async with running(cfg) as (url, remediator):
        assert (await post(url, notification(alert({**BACKLOG, **labels}))))[0] == 202
        (entry,) = await wait_for(lambda: audit(remediator), what="the blocked alert")
        assert entry.result == "blocked"
        assert entry.reason.startswith("target:") and reason in entry.reason
        assert len(remediator.backend.replicas_of("web")) == 1


# -- 19: the re-check trusts no expression from the payload -----------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(
    "expr", ["vector(1)", "time()", 'label_replace(vector(1), "job", "x", "", "")']
)
async def test_recheck_is_not_confirmed_by_an_expression_the_alert_brings(
    tmp_path: Path, prometheus_url: str, expr: str
) -> None:
    cfg = make_config(tmp_path, prometheus_url=prometheus_url, deployments=[deployment("web")])
    hostile = alert(
        {**BACKLOG, "deployment": "web", "job": "x"},
        generatorURL=f"http://prometheus:9090/graph?g0.expr={quote(expr)}",
    )
    async with running(cfg) as (url, remediator):
        assert remediator.prometheus is not None
        assert await remediator.prometheus.query(expr)  # Prometheus does return data
        assert (await post(url, notification(hostile)))[0] == 202
        (entry,) = await wait_for(lambda: audit(remediator), what="the blocked alert")
        assert entry.result == "blocked"
        assert entry.reason.startswith("recheck:")
        assert len(remediator.backend.replicas_of("web")) == 1
