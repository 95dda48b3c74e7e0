"""Variables and annotations shared by several dashboards."""

from __future__ import annotations

from dashboards import queries as q
from dashboards.panels import Json, annotation, query_variable


def serving_variables(*, replica: bool = False) -> list[Json]:
    """namespace -> model -> engine (-> target), each filtered by the ones before."""
    variables = [
        query_variable("namespace", "Namespace", "inferwatch_llm_up"),
        query_variable("model", "Model", 'inferwatch_llm_up{namespace=~"$namespace"}'),
        query_variable(
            "engine", "Engine", 'inferwatch_llm_up{namespace=~"$namespace", model=~"$model"}'
        ),
    ]
    if replica:
        variables.append(query_variable("target", "Replica", f"inferwatch_llm_up{{{q.LLM}}}"))
    return variables


def node_variable() -> Json:
    """Nodes with GPUs, from the recorded GPU series (so dcgm-exporter nodes are listed too)."""
    return query_variable("node", "Node", "uuid:inferwatch_gpu_up:max")


def xid_annotation(*, by_node: bool) -> Json:
    return annotation(
        "Xid errors",
        q.xid_events if by_node else q.xid_events_all,
        title="Xid {{xid}}",
        text="GPU {{gpu}} on {{node}} reported Xid {{xid}} (events in the last 10 minutes)",
        tags=["node", "gpu", "xid"],
        color="red",
    )


def remediation_annotation() -> Json:
    return annotation(
        "Remediation actions",
        q.remediation_events,
        title="{{action}}: {{result}}",
        text="The remediator ran {{action}} ({{result}}); see its GET /actions audit log",
        tags=["action", "result"],
        color="purple",
    )
