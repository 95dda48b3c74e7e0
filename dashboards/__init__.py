"""Grafana dashboards generated from code: `python -m dashboards.build` writes dashboards/generated.

One module per dashboard holds its layout; PromQL lives in `queries.py`; alert thresholds are read
from the rule files (`thresholds.py`) so a panel turns red exactly where the alert fires.
"""
