"""CUDA memory: what the caching allocator inside each inference process holds, and how well."""

from __future__ import annotations

from dashboards import queries as q
from dashboards.common import remediation_annotation
from dashboards.panels import (
    Json,
    Row,
    dashboard,
    override_dashed,
    query_variable,
    stat,
    steps,
    target,
    timeseries,
)
from dashboards.thresholds import alert

UID = "inferwatch-cuda-memory"
TITLE = "Inferwatch / CUDA memory"


def variables() -> list[Json]:
    return [
        query_variable("namespace", "Namespace", "inferwatch_cuda_allocator_reserved_bytes"),
        query_variable(
            "pod", "Pod", 'inferwatch_cuda_allocator_reserved_bytes{namespace=~"$namespace"}'
        ),
        query_variable(
            "node",
            "Node",
            'inferwatch_cuda_allocator_reserved_bytes{namespace=~"$namespace", pod=~"$pod"}',
        ),
    ]


def build() -> Json:
    fragmentation = alert("InferwatchCUDAFragmentationHigh")
    overview = Row(
        "Right now",
        [
            stat(
                "OOMs in range",
                "Out-of-memory errors the allocator raised in the time range: requests failed. "
                "Check fragmentation below before adding memory.",
                target(q.ooms_in_range),
                unit="short",
                thresholds=steps("green", (1, "red")),
                graph=False,
                decimals=0,
            ),
            stat(
                "Alloc retries in range",
                "Times the allocator freed its cache and retried a failed cudaMalloc: each is a "
                "stall of the whole process. After warm-up this should stay at zero.",
                target(q.retries_in_range),
                unit="short",
                thresholds=steps("green", (1, "orange")),
                graph=False,
                decimals=0,
            ),
            stat(
                "Worst external fragmentation",
                "The highest external fragmentation among the selected pods (1 - largest free "
                "block / free): free memory too scattered to serve a large allocation.",
                target(f"max({q.external_fragmentation})"),
                unit="percentunit",
                alerts=[fragmentation],
                decimals=1,
            ),
            stat(
                "Oldest probe report",
                "Age of the stalest allocator probe report. Old reports mean the probe in that "
                "process stopped writing (process hung, or the probe was not loaded); allocator "
                "alerts for it cannot fire.",
                target(f"max({q.probe_age})"),
                unit="s",
                alerts=[alert("InferwatchCUDAAllocatorProbeStale")],
                graph=False,
            ),
        ],
    )
    for panel in overview.panels:
        panel.w = 6
    memory = Row(
        "Allocator memory per pod",
        [
            timeseries(
                "Reserved vs allocated vs active",
                "Reserved: what the allocator holds from CUDA. Allocated: what live tensors "
                "use. Active: allocated blocks plus ones in flight on a stream. A widening gap "
                "between reserved and allocated is cache the process cannot reuse.",
                target(q.allocator("reserved"), "reserved {{namespace}}/{{pod}}"),
                target(q.allocator("allocated"), "allocated {{namespace}}/{{pod}}"),
                target(q.allocator("active"), "active {{namespace}}/{{pod}}"),
                unit="bytes",
            ),
            timeseries(
                "Largest free block vs free",
                "Free bytes inside the allocator's cache and the largest contiguous free block. "
                "A large allocation fails (retry, then OOM) when it exceeds the largest block "
                "even though enough is free in total.",
                target(q.allocator("free"), "free {{namespace}}/{{pod}}"),
                target(q.allocator("largest_free_block"), "largest block {{namespace}}/{{pod}}"),
                unit="bytes",
                overrides=[override_dashed("^largest block .*", "orange")],
            ),
            timeseries(
                "Memory outside the allocator",
                "Device memory the process holds that the allocator does not account for: CUDA "
                "context, cuBLAS/NCCL workspaces, other libraries. Growth here is a leak the "
                "allocator stats cannot show.",
                target(q.outside_allocator, "{{namespace}}/{{pod}}"),
                unit="bytes",
            ),
            timeseries(
                "CUDA-graph private pools",
                "Memory reserved by CUDA-graph private pools, kept apart from the general pools "
                "so it does not count as fragmentation.",
                target(q.private_pool_reserved, "{{namespace}}/{{pod}}"),
                unit="bytes",
            ),
        ],
    )
    for panel in memory.panels:
        panel.w = 12
    health = Row(
        "Fragmentation and failures",
        [
            timeseries(
                "External fragmentation",
                "1 - largest free block / free, worst process per pod. High while the live set "
                "is stable and "
                "the GPU nearly full fires InferwatchCUDAFragmentationHigh and the restart "
                "playbook restarts the replica (setting "
                "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True avoids most of it).",
                target(q.external_fragmentation, "{{namespace}}/{{pod}}"),
                unit="percentunit",
                max_=1,
                w=8,
                alerts=[fragmentation],
            ),
            timeseries(
                "Split and reserved-unallocated ratios",
                "Split: inactive bytes inside split blocks / reserved (small holes). "
                "Reserved-unallocated: (reserved - allocated) / reserved (cache not in use).",
                target(q.split_fragmentation, "split {{namespace}}/{{pod}}"),
                target(q.reserved_unallocated, "unallocated {{namespace}}/{{pod}}"),
                unit="percentunit",
                max_=1,
                w=8,
            ),
            timeseries(
                "Alloc retries per hour",
                "Allocator retries (cache flushed and cudaMalloc retried, stalling the GPU) per "
                "hour over 15 minutes. Sustained after warm-up fires InferwatchCUDAAllocRetries "
                "and the restart playbook restarts the replica.",
                target(q.alloc_retries_per_hour, "{{namespace}}/{{pod}}"),
                unit="count:/h",
                w=8,
                alerts=[alert("InferwatchCUDAAllocRetries")],
            ),
            timeseries(
                "OOMs/s",
                "Out-of-memory errors the allocator raised per second: requests failed.",
                target(q.ooms, "{{namespace}}/{{pod}}"),
                unit="ops",
                w=12,
            ),
            timeseries(
                "Reserved growth projected over 4 hours",
                "How much reserved memory will grow in 4 hours at the last hour's trend, per pod. "
                "More than the GPU has free while the live set keeps growing is a leak: "
                "InferwatchCUDAMemoryLeak restarts the replica.",
                target(q.reserved_growth_4h, "{{namespace}}/{{pod}}"),
                unit="bytes",
                min_=None,
                w=12,
            ),
        ],
    )
    return dashboard(
        uid=UID,
        title=TITLE,
        description="PyTorch caching allocator inside each inference process: reserved vs used "
        "memory, fragmentation, retries and OOMs, memory outside the allocator.",
        variables=variables(),
        rows=[overview, memory, health],
        annotations=[remediation_annotation()],
        time_from="now-24h",
        refresh="1m",
    )
