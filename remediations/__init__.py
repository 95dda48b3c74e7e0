"""Inferwatch remediator: an Alertmanager webhook receiver that runs guarded playbooks."""

__version__ = "0.1.0"
