"""GPU health: are the GPUs there, cool, fed with power, and free of hardware errors."""

from __future__ import annotations

from dashboards import queries as q
from dashboards.common import node_variable, remediation_annotation, xid_annotation
from dashboards.panels import (
    Json,
    Row,
    dashboard,
    override_dashed,
    query_variable,
    stat,
    state_timeline,
    steps,
    table,
    target,
    timeseries,
    value_text,
)
from dashboards.thresholds import alert

UID = "inferwatch-gpu"
TITLE = "Inferwatch / GPU health"

PRESENCE = value_text({0: ("lost", "red"), 1: ("up", "green")})


def variables() -> list[Json]:
    return [
        node_variable(),
        query_variable("gpu", "GPU", 'uuid:inferwatch_gpu_up:max{node=~"$node"}'),
        query_variable(
            "namespace", "Namespace", 'inferwatch_gpu_process_memory_bytes{node=~"$node"}'
        ),
    ]


def build() -> Json:
    overview = Row(
        "Right now",
        [
            stat(
                "GPUs",
                "GPUs reported on the selected nodes (by Inferwatch or, through the "
                "compatibility rules, dcgm-exporter).",
                target(q.gpus_total),
                unit="short",
                thresholds=steps("blue"),
                graph=False,
            ),
            stat(
                "GPUs up",
                "GPUs NVML answers for. Fewer than GPUs: a GPU is lost, see the next panel and "
                "GPU presence below.",
                target(q.gpus_up),
                unit="short",
                thresholds=steps("blue"),
                graph=False,
            ),
            stat(
                "GPUs lost",
                "GPUs NVML lost (fell off the bus, Xid 79). InferwatchGPULost fires and the "
                "drain_node playbook moves work away; the GPU needs a reset or replacement.",
                target(q.gpus_lost),
                unit="short",
                thresholds=steps("green", (1, "red")),
                graph=False,
            ),
            stat(
                "Xid errors in range",
                "Xid events the driver logged in the selected time range. Critical Xids (48, "
                "62, 63, 64, 74, 79, 94, 95, 119, 120) fire InferwatchGPUXidCritical.",
                target(q.xid_errors_in_range),
                unit="short",
                thresholds=steps("green", (1, "orange")),
                graph=False,
                decimals=0,
            ),
            stat(
                "Uncorrectable ECC in range",
                "Uncorrectable memory errors in the time range: data was lost. "
                "InferwatchGPUUncorrectableECC drains the node.",
                target(q.ecc_uncorrected_in_range),
                unit="short",
                thresholds=steps("green", (1, "red")),
                graph=False,
                decimals=0,
            ),
            stat(
                "GPUs throttled",
                "GPUs whose clocks are held down now by thermal or power slowdown. Check "
                "cooling and power capping; InferwatchGPUThermalThrottling fires when it lasts.",
                target(q.gpus_throttled),
                unit="short",
                thresholds=steps("green", (1, "orange")),
                graph=False,
            ),
        ],
    )
    for panel in overview.panels:
        panel.w = 4
    use = Row(
        "Utilization and memory",
        [
            timeseries(
                "GPU utilization",
                "Share of time a kernel was running, per GPU. High utilization with low "
                "tokens/s points at small batches or a slow GPU.",
                target(q.utilization, "{{node}} GPU {{gpu}}"),
                unit="percentunit",
                max_=1,
                w=8,
            ),
            timeseries(
                "Memory copy utilization",
                "Share of time the memory controller was busy, per GPU. Decode is memory-bound: "
                "this, not SM utilization, is usually the ceiling.",
                target(q.memory_copy_utilization, "{{node}} GPU {{gpu}}"),
                unit="percentunit",
                max_=1,
                w=8,
            ),
            timeseries(
                "Memory used / total",
                "Share of each GPU's memory in use. vLLM and SGLang reserve ~90% at start by "
                "design, so high alone is not a problem: InferwatchGPUMemoryPressure fires only "
                "when the CUDA allocator on that GPU also retries or runs out (see CUDA memory).",
                target(q.memory_used_ratio, "{{node}} GPU {{gpu}}"),
                unit="percentunit",
                max_=1,
                w=8,
                alerts=[alert("InferwatchGPUMemoryPressure")],
            ),
            timeseries(
                "Memory used and reserved",
                "Bytes used by processes and reserved by the driver, with the total as a "
                "dashed line, per GPU.",
                target(q.memory_used, "used {{node}} GPU {{gpu}}"),
                target(q.memory_reserved, "reserved {{node}} GPU {{gpu}}"),
                target(q.memory_total, "total {{node}} GPU {{gpu}}"),
                unit="bytes",
                overrides=[override_dashed("^total .*")],
            ),
            timeseries(
                "GPU memory per pod",
                "Device memory held by each pod's processes (attributed through their cgroup). "
                "A pod that keeps growing is leaking: compare with CUDA memory.",
                target(q.process_memory_by_pod, "{{namespace}}/{{pod}} GPU {{gpu}}"),
                unit="bytes",
                stack=True,
            ),
        ],
    )
    thermal = Row(
        "Thermals, power and clocks",
        [
            timeseries(
                "Temperature",
                "Temperature per GPU and sensor. Past the slowdown temperature the GPU cuts "
                "clocks; check airflow and the fan or coolant loop.",
                target(q.temperature, "{{node}} GPU {{gpu}} {{sensor}}"),
                unit="celsius",
                min_=None,
                w=8,
            ),
            timeseries(
                "Power vs limit",
                "Power draw per GPU, with its enforced limit dashed. Drawing at the limit "
                "while throttled (sw_power_cap) means the power cap, not the load, sets speed.",
                target(q.power, "draw {{node}} GPU {{gpu}}"),
                target(q.power_limit, "limit {{node}} GPU {{gpu}}"),
                unit="watt",
                w=8,
                overrides=[override_dashed("^limit .*")],
            ),
            timeseries(
                "Clocks",
                "Graphics, SM and memory clocks per GPU. A drop without idle means throttling; "
                "see the reasons next to it.",
                target(q.clocks, "{{node}} GPU {{gpu}} {{clock}}"),
                unit="hertz",
                w=8,
            ),
            timeseries(
                "Slowed down, share of the last 10 minutes",
                "Share of the last 10 minutes each GPU spent in a thermal or power slowdown, by "
                "reason: what InferwatchGPUThermalThrottling evaluates. Check cooling, power "
                "capping and the power supply.",
                target(q.throttled_share_10m, "{{node}} GPU {{gpu}} {{reason}}"),
                unit="percentunit",
                max_=1,
                w=12,
                alerts=[alert("InferwatchGPUThermalThrottling")],
            ),
            state_timeline(
                "Throttle reasons",
                "When and why each GPU's clocks were held down (idle excluded). Thermal or "
                "hardware slowdown for minutes fires InferwatchGPUThermalThrottling.",
                target(q.throttle_reasons, "{{node}} GPU {{gpu}} {{reason}}"),
                mappings=value_text({0: ("off", "transparent"), 1: ("active", "orange")}),
                thresholds=steps("transparent", (1, "orange")),
                w=12,
            ),
        ],
    )
    errors = Row(
        "Hardware errors",
        [
            timeseries(
                "Xid errors in the last 10 minutes",
                "Xid events per GPU and code (also drawn as red annotations). 79: fell off the "
                "bus; 48/94/95: uncorrectable memory errors; 63/64: row remapping; 119/120: GSP "
                "firmware. Critical codes fire InferwatchGPUXidCritical and drain the node.",
                target(q.xid_errors_10m, "{{node}} GPU {{gpu}} Xid {{xid}}"),
                unit="short",
                bars=True,
                w=8,
            ),
            timeseries(
                "ECC errors",
                "Corrected (harmless, but a rising trend predicts failure) and uncorrected "
                "(data lost: InferwatchGPUUncorrectableECC drains the node) memory errors.",
                target(q.ecc_errors, "{{node}} GPU {{gpu}} {{type}}"),
                unit="short",
                bars=True,
                w=8,
            ),
            state_timeline(
                "GPU presence",
                "Whether NVML answered for each GPU. A red band is a lost GPU (Xid 79, fell "
                "off the bus): the node is drained by the drain_node playbook.",
                target(q.gpu_up_by_gpu, "{{node}} GPU {{gpu}}"),
                mappings=PRESENCE,
                thresholds=steps("red", (1, "green")),
                w=8,
            ),
            table(
                "GPU inventory",
                "Model, driver and CUDA version and MIG mode of each GPU, from "
                "inferwatch_gpu_info.",
                target(q.gpu_info, table=True),
                unit="none",
                columns={
                    "node": "Node",
                    "gpu": "GPU",
                    "name": "Model",
                    "driver_version": "Driver",
                    "cuda_version": "CUDA",
                    "mig_mode": "MIG",
                },
                w=24,
                h=6,
            ),
        ],
    )
    return dashboard(
        uid=UID,
        title=TITLE,
        description="NVML view of every GPU: presence, utilization, memory, thermals, power, "
        "clocks, throttling, ECC and Xid errors.",
        variables=variables(),
        rows=[overview, use, thermal, errors],
        annotations=[xid_annotation(by_node=True), remediation_annotation()],
        time_from="now-6h",
    )
