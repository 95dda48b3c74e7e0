"""Issue 14, items 1-3: the probe directory is writable by every inference pod, so each attack
that worked against it is replayed here against the real collector (real FIFOs, symlinks to
devices, sparse files, crafted documents): the bad file is skipped with a log line and a counter,
the good files next to it stay published, and the refresh never blocks, grows or fails."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.core import Metric

from exporter.collectors.cuda_allocator import CudaAllocatorCollector
from exporter.exposition import encode
from exporter.nvml import Nvml
from exporter.probe import files
from tests.cuda.conftest import UUID_A, FakeHost, make_collector, probe_document
from tests.cuda.pytorch_shapes import MiB

POD = ("llm", "vllm-0", "vllm")
RESERVED = "inferwatch_cuda_allocator_reserved_bytes"
RETRIES = "inferwatch_cuda_allocator_alloc_retries_total"
SKIPPED = "inferwatch_cuda_allocator_probe_files_skipped_total"


async def refresh(collector: CudaAllocatorCollector) -> list[Metric]:
    """One refresh, bounded like the scheduler's (a blocked read fails here, not hangs)."""
    async with asyncio.timeout(10):
        return list(await collector.update())


def series(families: Sequence[Metric], name: str) -> dict[tuple[str, str, str], float]:
    """(uuid, namespace, pod) -> value of the pool="all" samples named `name`."""
    return {
        (s.labels["uuid"], s.labels["namespace"], s.labels["pod"]): s.value
        for f in families
        for s in f.samples
        if s.name == name and s.labels.get("pool") == "all"
    }


def skipped(families: Sequence[Metric]) -> dict[str, float]:
    return {s.labels["reason"]: s.value for f in families for s in f.samples if s.name == SKIPPED}


def good_host(host: FakeHost) -> None:
    """One well-behaved process in a pod, whose series must survive every attack."""
    host.add_process(100, pod=POD)
    host.write_probe(100, retries=3)


def assert_good_published(families: Sequence[Metric]) -> None:
    assert series(families, RESERVED)[(UUID_A, "llm", "vllm-0")] == 40 * MiB
    encode(families, openmetrics=False)  # what /metrics does with them: must not raise


def crafted(host: FakeHost, name: str, document: Any) -> Path:
    path = host.probe_dir / name
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


async def test_a_fifo_named_like_a_probe_file_is_skipped_without_blocking(
    host: FakeHost, nvml: Nvml, caplog: pytest.LogCaptureFixture
) -> None:
    good_host(host)
    fifo = host.probe_dir / files.file_name("node", 300)
    os.mkfifo(fifo)  # no writer: a blocking open() or read() would never return
    collector = make_collector(host, nvml, nvml_join=False)
    try:
        with caplog.at_level(logging.WARNING):
            first = await refresh(collector)
            second = await refresh(collector)
    finally:  # should a reader be blocked on the FIFO (the bug), release it so the run can end
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert_good_published(first)
    assert_good_published(second)
    assert skipped(second)["not_regular"] == 1  # counted once, not once per refresh
    lines = [r.getMessage() for r in caplog.records if fifo.name in r.getMessage()]
    assert len(lines) == 1 and "not a regular file" in lines[0]


async def test_device_symlinks_and_huge_sparse_files_are_never_read(
    host: FakeHost, nvml: Nvml, caplog: pytest.LogCaptureFixture
) -> None:
    good_host(host)
    zero = host.probe_dir / files.file_name("node", 301)
    zero.symlink_to("/dev/zero")  # yields zeros forever
    elsewhere = host.root / "secret.json"
    elsewhere.write_text(json.dumps(probe_document(302)))
    (host.probe_dir / files.file_name("node", 302)).symlink_to(elsewhere)  # a readable file
    sparse = host.probe_dir / files.file_name("node", 303)
    with sparse.open("wb") as handle:
        handle.truncate(1 << 30)  # 1 GiB, no disk used
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with caplog.at_level(logging.WARNING):
        families = await refresh(make_collector(host, nvml, nvml_join=False))
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert grown_kib < 64 * 1024, f"peak RSS grew {grown_kib} KiB reading the probe directory"
    assert_good_published(families)
    assert skipped(families) == {
        "not_regular": 2,
        "too_large": 1,
        "unreadable": 0,
        "invalid": 0,
        "duplicate": 0,
    }
    assert len(series(families, RESERVED)) == 1  # the symlinked document was not followed
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "symlink" in messages and f"over {files.MAX_FILE_BYTES}" in messages


@pytest.mark.parametrize(
    ("what", "document"),
    [
        ("an integer above float range", {"stats": {"num_alloc_retries": 10**400}}),
        ("a negative byte count", {"stats": {"reserved_bytes.all.current": -(1 << 40)}}),
        ("a negative counter", {"stats": {"num_alloc_retries": -1_000_000}}),
        ("an infinite start time", "start_time_seconds=1e999"),
        ("an Infinity literal", "written_at=Infinity"),
        ("nesting 100k deep", "deep"),
    ],
)
async def test_crafted_probe_documents_are_skipped_and_counted(
    host: FakeHost, nvml: Nvml, caplog: pytest.LogCaptureFixture, what: str, document: Any
) -> None:
    good_host(host)
    host.add_process(200, pod=("other", "other-0", "c"))
    doc = probe_document(200)
    if document == "deep":
        text = json.dumps(doc)[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    elif isinstance(document, str):
        key, raw = document.split("=")
        doc[key] = 12345.5
        text = json.dumps(doc).replace("12345.5", raw)
    else:
        doc["devices"][0]["stats"].update(document["stats"])
        text = json.dumps(doc)
    bad = crafted(host, files.file_name("node", 200), text)
    collector = make_collector(host, nvml, nvml_join=False)
    with caplog.at_level(logging.WARNING):
        families = await refresh(collector)
        again = await refresh(collector)
    assert_good_published(families)
    assert_good_published(again)
    assert (UUID_A, "other", "other-0") not in series(families, RESERVED), what
    assert skipped(again)["invalid"] == 1
    assert [r.levelname for r in caplog.records if bad.name in r.getMessage()] == ["WARNING"]


async def test_a_claimed_pod_is_not_published_for_a_pid_the_exporter_cannot_resolve(
    host: FakeHost, nvml: Nvml
) -> None:
    good_host(host)
    # pid 7 in some other pid namespace, not in NVML's list: the exporter cannot resolve it.
    spoof = probe_document(
        7, pid_namespace="pid:[4026533000]", kubernetes={"namespace": "llm", "pod": "vllm-0"}
    )
    crafted(host, files.file_name("attacker", 7), spoof)
    families = await refresh(make_collector(host, nvml, nvml_join=False))
    reserved = series(families, RESERVED)
    assert reserved[(UUID_A, "llm", "vllm-0")] == 40 * MiB  # the real pod, not the sum of both
    assert reserved[(UUID_A, "", "")] == 40 * MiB  # the unresolved file, unattributed


async def test_a_second_file_for_the_same_process_is_not_summed(
    host: FakeHost, nvml: Nvml, caplog: pytest.LogCaptureFixture
) -> None:
    good_host(host)
    copy = probe_document(100, retries=1000)  # same pid and start time as the real file
    copy["written_at"] -= 5
    crafted(host, files.file_name("copy", 100), copy)
    with caplog.at_level(logging.WARNING):
        families = await refresh(make_collector(host, nvml, nvml_join=False))
    assert series(families, RETRIES)[(UUID_A, "llm", "vllm-0")] == 3
    assert series(families, RESERVED)[(UUID_A, "llm", "vllm-0")] == 40 * MiB
    assert skipped(families)["duplicate"] == 1
    assert any("copy-100.json" in r.getMessage() for r in caplog.records)
