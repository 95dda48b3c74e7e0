"""One client for the Prometheus HTTP API (https://prometheus.io/docs/prometheus/latest/querying/api/).

Synchronous (urllib), so tests, bench and the previews call it directly and the demo's event
loop calls it through `asyncio.to_thread`. A query Prometheus rejects raises `QueryError` with
Prometheus' own message; a server that cannot be reached raises OSError.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

Labels = dict[str, str]


class QueryError(ValueError):
    """Prometheus answered `"status": "error"` (bad PromQL, a timeout, ...)."""


class Prometheus:
    def __init__(self, base_url: str, timeout: float = 20.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def api(self, path: str, params: dict[str, str] | None = None) -> Any:
        """GET /api/v1/<path> and return its `data` (error bodies come with 4xx/5xx)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        url = f"{self.base_url}/api/v1/{path}{query}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            try:
                body = json.load(exc)
            except ValueError:
                raise QueryError(f"HTTP {exc.code} from {url}") from exc
        if body.get("status") != "success":
            raise QueryError(body.get("error", "query failed"))
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[tuple[Labels, float]]:
        """An instant query: (labels, value) per series; a scalar comes back as one ({}, v)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", params)
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]

    def value(self, expr: str) -> float | None:
        """The first series' value of an instant query, None when it returns nothing."""
        result = self.query(expr)
        return result[0][1] if result else None

    def query_range(
        self, expr: str, start: float, end: float, step: float
    ) -> list[tuple[Labels, list[tuple[float, float]]]]:
        data = self.api(
            "query_range",
            {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"},
        )
        return [
            (r["metric"], [(float(t), float(v)) for t, v in r["values"]]) for r in data["result"]
        ]

    def alerts(self, state: str | None = "firing") -> list[dict[str, Any]]:
        """Alerts from /api/v1/alerts, only those in `state` unless it is None."""
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return [a for a in alerts if state is None or a.get("state") == state]

    def has(self, expr: str) -> bool:
        """True once `expr` returns at least one series (for `eventually`)."""
        return bool(self.query(expr))
