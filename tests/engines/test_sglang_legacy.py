"""SGLang before 0.4: running/waiting under their old names and the model in a `name` label.

The 0.3.x production-metrics page documented `sglang:num_requests_running` and
`sglang:num_requests_waiting` (gauges, labelled `name="<served model>"`), which 0.4 renamed to
`num_running_reqs` / `num_queue_reqs` with a `model_name` label. Older deployments must still get
running/waiting and the model, and a new exporter must prefer the new names when both exist.
"""

from __future__ import annotations

from exporter.engines import normalize_text
from exporter.engines.normalize import Families

OLD = """\
# HELP sglang:num_requests_running Number of requests currently running on GPU
# TYPE sglang:num_requests_running gauge
sglang:num_requests_running{name="Qwen/Qwen2-7B"} 3.0
# HELP sglang:num_requests_waiting Number of requests waiting to be processed.
# TYPE sglang:num_requests_waiting gauge
sglang:num_requests_waiting{name="Qwen/Qwen2-7B"} 5.0
# HELP sglang:generation_tokens_total Number of generation tokens processed.
# TYPE sglang:generation_tokens_total counter
sglang:generation_tokens_total{name="Qwen/Qwen2-7B"} 1234.0
"""


def values(text: str) -> dict[tuple[str, str], float]:
    families = Families()
    result = normalize_text(text, target="sg")
    families.add_all(result.groups)
    return {
        (s.name, s.labels.get("model", "")): s.value
        for f in families.metrics()
        for s in f.samples
        if s.name.startswith("inferwatch_llm_requests_")
    }


def test_pre_04_names_and_model_label_are_mapped() -> None:
    result = normalize_text(OLD, target="sg")
    assert result.engine == "sglang"
    assert result.models == ["Qwen/Qwen2-7B"]
    assert values(OLD) == {
        ("inferwatch_llm_requests_running", "Qwen/Qwen2-7B"): 3.0,
        ("inferwatch_llm_requests_waiting", "Qwen/Qwen2-7B"): 5.0,
    }


def test_the_new_names_win_when_both_are_published() -> None:
    both = OLD + (
        "# TYPE sglang:num_running_reqs gauge\n"
        'sglang:num_running_reqs{model_name="Qwen/Qwen2-7B"} 7.0\n'
        "# TYPE sglang:num_queue_reqs gauge\n"
        'sglang:num_queue_reqs{model_name="Qwen/Qwen2-7B"} 1.0\n'
    )
    assert values(both) == {
        ("inferwatch_llm_requests_running", "Qwen/Qwen2-7B"): 7.0,
        ("inferwatch_llm_requests_waiting", "Qwen/Qwen2-7B"): 1.0,
    }
