"""The harness' own contracts: the replayed engine advances like a live one without inventing
series, `eventually` returns what held or says what never happened, and a managed process
group is ready when it answers and gone, children included, when stopped."""

from __future__ import annotations

import math
import signal
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.engine_stub import EngineStub
from harness.services import (
    LOOPBACK,
    ManagedProcess,
    descendants,
    free_port,
    http_ok,
    pid_alive,
)
from harness.wait import NotYet, eventually

Key = tuple[str, tuple[tuple[str, str], ...]]


def samples(text: str) -> dict[Key, float]:
    """Every sample as prometheus-client's reference parser reads it."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def kinds(text: str) -> dict[str, str]:
    return {family.name: family.type for family in text_string_to_metric_families(text)}


@pytest.mark.parametrize("fixture", ["vllm-1", "vllm-3"])
def test_replayed_engine_advances_cumulative_samples_and_keeps_gauges(fixture: str) -> None:
    now = [100.0]
    stub = EngineStub(fixture, requests_per_second=2.0, clock=lambda: now[0])
    before = samples(stub.exposition())
    assert before.keys() == samples(stub.text).keys()
    now[0] += 30
    after = samples(stub.exposition())
    assert after.keys() == before.keys()  # same series: nothing invented, nothing lost
    type_of = kinds(stub.text)
    advanced = 0
    for key, value in before.items():
        name = key[0]
        family = next(
            (
                f
                for f in (
                    name,
                    *(name.removesuffix(s) for s in ("_bucket", "_count", "_sum", "_total")),
                )
                if f in type_of
            ),
            name,
        )
        cumulative = type_of.get(family) == "counter" or (
            type_of.get(family) in ("histogram", "summary")
            and name.endswith(("_bucket", "_count", "_sum"))
        )
        if math.isnan(value):
            assert math.isnan(after[key])
        elif cumulative and value > 0:
            assert after[key] > value, key
            advanced += 1
        elif not cumulative:
            assert after[key] == value, key  # gauges (and _created timestamps) as captured
    assert advanced > 10
    # Finished requests grow at the requested pace (the swell averages out over its period).
    e2e = [k for k in before if k[0] == "vllm:e2e_request_latency_seconds_count"]
    grown = sum(after[k] - before[k] for k in e2e)
    assert 30 * 2.0 * 0.4 <= grown <= 30 * 2.0 * 1.6


def test_replayed_histograms_stay_cumulative() -> None:
    now = [0.0]
    stub = EngineStub("vllm-1", requests_per_second=5.0, clock=lambda: now[0])
    now[0] = 17.3
    for family in text_string_to_metric_families(stub.exposition()):
        if family.type != "histogram":
            continue
        buckets = [s.value for s in family.samples if s.name.endswith("_bucket")]
        count = next(s.value for s in family.samples if s.name.endswith("_count"))
        assert buckets == sorted(buckets), family.name
        assert buckets[-1] == count, family.name


def test_without_a_pace_the_capture_is_served_byte_for_byte() -> None:
    stub = EngineStub("vllm-3")
    assert stub.exposition() == stub.text


def test_eventually_returns_the_first_truthy_value() -> None:
    calls = iter([0, [], {"ready": True}])
    assert eventually(lambda: next(calls), within=5, interval=0) == {"ready": True}


def test_eventually_says_what_never_happened() -> None:
    queue = [1, 2, 3]
    with pytest.raises(NotYet, match=r"not within 0\.05 s: the queue drains; last value: False"):
        eventually(lambda: not queue, within=0.05, what="the queue drains", interval=0.01)


def test_eventually_treats_only_the_listed_errors_as_not_yet() -> None:
    attempts = iter([OSError("refused"), OSError("refused"), "up"])

    def probe() -> str:
        outcome = next(attempts)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert eventually(probe, within=5, interval=0, ignore=(OSError,)) == "up"
    with pytest.raises(KeyError):
        eventually(lambda: {}["missing"], within=5, interval=0, ignore=(OSError,))


SLEEPER_WITH_CHILD = (
    "import subprocess, sys, time;"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']);"
    "time.sleep(120)"
)


def test_stop_ends_the_whole_process_group(tmp_path: Path) -> None:
    proc = ManagedProcess("sleeper", [sys.executable, "-c", SLEEPER_WITH_CHILD], tmp_path / "s.log")
    with proc:
        child = eventually(lambda: descendants(proc.pid), 10, "the grandchild to start")
        proc.signal(signal.SIGSTOP)  # a stopped group must still end (SIGCONT first)
    assert not proc.alive()
    eventually(lambda: not any(pid_alive(pid) for pid in child), 10, "the grandchild to end")


async def test_async_start_waits_for_readiness_and_stop_ends_the_group(tmp_path: Path) -> None:
    port = free_port()
    server = ManagedProcess(
        "http",
        [sys.executable, "-m", "http.server", str(port), "--bind", LOOPBACK],
        tmp_path / "http.log",
        ready_url=f"http://{LOOPBACK}:{port}/",
        cwd=tmp_path,
    )
    await server.start_async(ready_timeout=30)
    try:
        assert http_ok(f"http://{LOOPBACK}:{port}/")  # ready means it answers
    finally:
        await server.stop_async()
    assert not server.alive()
    assert not http_ok(f"http://{LOOPBACK}:{port}/")


async def test_async_start_reports_a_process_that_exits(tmp_path: Path) -> None:
    crash = ManagedProcess(
        "crash",
        [sys.executable, "-c", "print('bad config'); raise SystemExit(3)"],
        tmp_path / "crash.log",
        ready_url=f"http://{LOOPBACK}:{free_port()}/",
    )
    with pytest.raises(RuntimeError, match=r"crash exited with 3:\nbad config"):
        await crash.start_async(ready_timeout=30)
