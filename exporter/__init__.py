"""Inferwatch exporter: GPU health, CUDA allocator state and LLM engine metrics for Prometheus."""

__version__ = "0.1.0"
NAMESPACE = "inferwatch"
