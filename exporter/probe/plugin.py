"""Plugin entry point for vLLM (`vllm.general_plugins`) and SGLang (`sglang.srt.plugins`).

Both engines call every registered plugin function in each process they start (vLLM: API server,
engine core, workers; SGLang: engine, scheduler, detokenizer). Only the processes that go on to
initialize CUDA ever write a file; the others keep an idle thread that checks a flag once a second.
"""

from __future__ import annotations

from exporter.probe.runtime import start_from_env


def register() -> None:
    """Start the probe if INFERWATCH_PROBE_DIR is set (or the default directory is mounted)."""
    start_from_env()
