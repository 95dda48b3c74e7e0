"""Prometheus queries the remediator relies on: re-checking an alert and reading in-flight work.

The alert's generatorURL only supplies the expression; the query always goes to the configured
Prometheus (an alert must not make us fetch an arbitrary URL). Unreachable, an error or an empty
result all mean "not confirmed": the caller does nothing.

That expression is as untrusted as the rest of the payload: `vector(1)` or `time()` return a
series with no labels, which would "confirm" any alert. So a series confirms an alert from its
generatorURL only if it carries the labels that pick the alert's target (namespace, deployment,
pod, ...: the playbook's label map), each with the alert's value. A playbook's `recheck_query`
is configuration, trusted as written.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import astuple, dataclass
from urllib.parse import parse_qs, urlsplit

import aiohttp

from remediations.alertmanager import Alert
from remediations.targets import LabelMap


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


def identifying_labels(label_map: LabelMap) -> frozenset[str]:
    """The alert labels that pick a target: what a re-check result must carry too."""
    names: set[str] = set()
    for field in astuple(label_map):
        names.update((field,) if isinstance(field, str) else field)
    return frozenset(names)


def carries_identity(
    series: Mapping[str, str], alert: Mapping[str, str], names: Collection[str]
) -> bool:
    """Does the series carry every target-picking label the alert has, with the same value?"""
    present = [n for n in names if n in alert]
    return bool(present) and all(series.get(n) == alert[n] for n in present)


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

    async def confirms(
        self, alert: Alert, query: str | None, label_map: LabelMap | None = None
    ) -> tuple[bool, str]:
        """Does the alert's condition still hold for this alert's series right now?"""
        expr = query or expr_from_generator_url(alert.generatorURL)
        if not expr:
            return False, "no expression: the alert has no generatorURL and no recheck query is set"
        names = None if query else identifying_labels(label_map or LabelMap())
        try:
            samples = await self.query(expr)
        except PrometheusError as exc:
            return False, str(exc)
        for sample in samples:
            if math.isnan(sample.value) or not is_alert_series(sample.labels, alert.labels):
                continue
            if names is None or carries_identity(sample.labels, alert.labels, names):
                return True, f"confirmed by {len(samples)} series"
        if not samples:
            return False, "no data: the expression returns nothing now"
        if names is not None and any(
            is_alert_series(s.labels, alert.labels) and not math.isnan(s.value) for s in samples
        ):
            shown = ", ".join(sorted(n for n in names if n in alert.labels)) or "none"
            return False, (
                "the alert's expression returns no series with the labels that pick its target "
                f"({shown}); only a playbook's recheck_query is trusted without them"
            )
        return False, "the expression no longer returns this alert's series"

    async def value(self, expr: str) -> float | None:
        """A single number (summed), or None when there is no data or Prometheus is down."""
        try:
            samples = await self.query(expr)
        except PrometheusError:
            return None
        values = [s.value for s in samples if not math.isnan(s.value)]
        return sum(values) if values else None
