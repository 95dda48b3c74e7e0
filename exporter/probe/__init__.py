"""The in-process CUDA allocator probe (imported inside inference servers; stdlib only).

Three ways in, no server code changes: the vLLM general plugin and the SGLang plugin
(`exporter.probe.plugin:register`), and a `.pth` hook that runs at interpreter start when
INFERWATCH_PROBE_DIR is set (`python -m exporter.probe install-pth`). All of them call
`exporter.probe.runtime.start_from_env()`, which is idempotent: servers load plugins several
times per process. This __init__ stays empty so the exporter imports the pure modules cheaply.
"""
