"""Prometheus queries the remediator relies on: re-checking an alert and reading in-flight work.

The alert's generatorURL only supplies the expression; the query always goes to the configured
Prometheus (an alert must not make us fetch an arbitrary URL). Unreachable, an error or an empty
result all mean "not confirmed": the caller does nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import aiohttp

from remediations.alertmanager import Alert


class PrometheusError(Exception):
    """Prometheus could not answer; the message says why."""


@dataclass(frozen=True)
class Sample:
    labels: Mapping[str, str]
    value: float


def expr_from_generator_url(url: str) -> str | None:
    """The alert rule's expression: the `g0.expr` parameter Prometheus puts in generatorURL."""
    if not url:
        return None
    exprs = parse_qs(urlsplit(url).query).get("g0.expr")
    return exprs[0] if exprs else None


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def selector(labels: Mapping[str, str]) -> str:
    return ",".join(f'{k}="{escape_label_value(v)}"' for k, v in sorted(labels.items()))


# Labels a rule result may carry that its alert never does: Prometheus drops the metric name
# (a comparison like `up == 0` keeps it) and sets `alertname` itself.
NOT_ON_ALERTS = frozenset({"__name__", "alertname"})


def is_alert_series(series: Mapping[str, str], alert: Mapping[str, str]) -> bool:
    """Did the alert come from this series of its rule's result?

    The alert's labels are the series' labels without `__name__`, plus what Prometheus and the
    rule add (alertname, the rule's labels such as severity or remediation, external labels),
    so every remaining series label must be on the alert with the same value.
    """
    return all(alert.get(k) == v for k, v in series.items() if k not in NOT_ON_ALERTS)


class Prometheus:
    def __init__(self, session: aiohttp.ClientSession, url: str, timeout: float) -> None:
        self.session = session
        self.url = url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def query(self, expr: str) -> list[Sample]:
        try:
            async with self.session.post(
                f"{self.url}/api/v1/query", data={"query": expr}, timeout=self.timeout
            ) as resp:
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise PrometheusError(f"cannot query {self.url}: {exc or type(exc).__name__}") from exc
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else body
            raise PrometheusError(f"query failed: {str(error)[:200]}")
        data = body.get("data") or {}
        kind, result = data.get("resultType"), data.get("result")
        if kind == "scalar" and isinstance(result, list):
            return [Sample({}, float(result[1]))]
        if kind != "vector" or not isinstance(result, list):
            raise PrometheusError(f"expected an instant vector, got {kind}")
        return [Sample(item.get("metric", {}), float(item["value"][1])) for item in result]

    async def confirms(self, alert: Alert, query: str | None) -> tuple[bool, str]:
        """Does the alert's condition still hold for this alert's series right now?"""
        expr = query or expr_from_generator_url(alert.generatorURL)
        if not expr:
            return False, "no expression: the alert has no generatorURL and no recheck query is set"
        try:
            samples = await self.query(expr)
        except PrometheusError as exc:
            return False, str(exc)
        for sample in samples:
            if not math.isnan(sample.value) and is_alert_series(sample.labels, alert.labels):
                return True, f"confirmed by {len(samples)} series"
        if not samples:
            return False, "no data: the expression returns nothing now"
        return False, "the expression no longer returns this alert's series"

    async def value(self, expr: str) -> float | None:
        """A single number (summed), or None when there is no data or Prometheus is down."""
        try:
            samples = await self.query(expr)
        except PrometheusError:
            return None
        values = [s.value for s in samples if not math.isnan(s.value)]
        return sum(values) if values else None
