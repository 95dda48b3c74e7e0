"""Grafana 11 JSON model helpers: panels, variables, annotations and a row-by-row grid layout.

Plain dicts keep the output obvious to anyone who has read a dashboard JSON; the helpers only
fix the project's defaults (Prometheus datasource variable, units everywhere, legends as tables,
alert thresholds drawn on the graph) so the dashboard modules read as layout.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dashboards.thresholds import AlertThreshold

Json = dict[str, Any]

SCHEMA_VERSION = 39  # Grafana 10.4/11.x both load it without a migration
GRID_COLUMNS = 24
DATASOURCE: Json = {"type": "prometheus", "uid": "${datasource}"}
SEVERITY_COLORS = {"info": "blue", "warning": "orange", "critical": "red"}
TAGS = ["inferwatch", "generated"]


# ---------------------------------------------------------------- queries


def target(expr: str, legend: str = "", *, instant: bool = False, table: bool = False) -> Json:
    """One Prometheus query of a panel; refIds are assigned by the panel helper."""
    return {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "format": "table" if table else "time_series",
        "instant": instant or table,
        "legendFormat": legend or "__auto",
        "range": not (instant or table),
    }


def _with_ref_ids(targets: Sequence[Json]) -> list[Json]:
    return [{**t, "refId": chr(ord("A") + i)} for i, t in enumerate(targets)]


# ---------------------------------------------------------------- thresholds


def steps(base: str = "green", *levels: tuple[float, str]) -> Json:
    """Absolute threshold steps: `base` colour below the first level."""
    return {
        "mode": "absolute",
        "steps": [{"color": base, "value": None}]
        + [{"color": color, "value": value} for value, color in sorted(levels)],
    }


def alert_steps(*alerts: AlertThreshold, scale: float = 1.0) -> Json:
    """Threshold steps at the values where these alerts fire, coloured by severity.

    `scale` converts the alert's unit to the panel's (e.g. 100 when an alert compares a ratio
    and the panel shows percent); alerts on one panel must compare in the same direction.
    """
    directions = {a.above for a in alerts}
    if len(directions) != 1:
        raise ValueError(f"alerts {[a.alert for a in alerts]} compare in opposite directions")
    if directions == {True}:
        levels = [(a.value * scale, SEVERITY_COLORS[a.severity]) for a in alerts]
        return steps("green", *levels)
    # Fires below the threshold: bad colour at the bottom, green from the highest threshold up.
    ordered = sorted(alerts, key=lambda a: a.value)
    base = SEVERITY_COLORS[ordered[0].severity]
    levels = [
        (a.value * scale, SEVERITY_COLORS[b.severity]) for a, b in itertools.pairwise(ordered)
    ]
    levels.append((ordered[-1].value * scale, "green"))
    return steps(base, *levels)


def _alert_text(alerts: Sequence[AlertThreshold]) -> str:
    return " ".join(
        f"Alert {a.alert} ({a.severity}) fires {'above' if a.above else 'below'} {a.literal}"
        + (f" for {a.for_}" if a.for_ else "")
        + "."
        for a in alerts
    )


# ---------------------------------------------------------------- panels


@dataclass
class Panel:
    """A panel before layout: its JSON without id/gridPos, plus its size in grid units."""

    json: Json
    w: int = 12
    h: int = 8


def _panel(
    kind: str,
    title: str,
    description: str,
    targets: Sequence[Json],
    *,
    unit: str,
    w: int,
    h: int,
    thresholds: Json | None,
    alerts: Sequence[AlertThreshold],
    min_: float | None,
    max_: float | None,
    custom: Json,
    options: Json,
    overrides: Sequence[Json] = (),
    mappings: Sequence[Json] = (),
    transformations: Sequence[Json] = (),
    decimals: int | None = None,
) -> Panel:
    if not targets:
        raise ValueError(f"panel {title!r} has no query")
    if alerts and thresholds is None:
        thresholds = alert_steps(*alerts)
    defaults: Json = {
        "color": {
            "mode": "thresholds" if kind in {"stat", "gauge", "bargauge"} else "palette-classic"
        },
        "custom": custom,
        "mappings": list(mappings),
        "thresholds": thresholds or steps("green"),
        "unit": unit,
    }
    if min_ is not None:
        defaults["min"] = min_
    if max_ is not None:
        defaults["max"] = max_
    if decimals is not None:
        defaults["decimals"] = decimals
    text = description.strip()
    if alerts:
        text = f"{text} {_alert_text(alerts)}"
    json: Json = {
        "datasource": DATASOURCE,
        "description": text,
        "fieldConfig": {"defaults": defaults, "overrides": list(overrides)},
        "options": options,
        "targets": _with_ref_ids(targets),
        "title": title,
        "type": kind,
    }
    links = sorted({(a.alert, a.runbook_url) for a in alerts if a.runbook_url})
    if links:
        json["links"] = [
            {"targetBlank": True, "title": f"Runbook: {name}", "url": url} for name, url in links
        ]
    if transformations:
        json["transformations"] = list(transformations)
    return Panel(json, w, h)


def timeseries(
    title: str,
    description: str,
    *targets: Json,
    unit: str,
    w: int = 12,
    h: int = 8,
    alerts: Sequence[AlertThreshold] = (),
    thresholds: Json | None = None,
    min_: float | None = 0,
    max_: float | None = None,
    stack: bool = False,
    bars: bool = False,
    legend: str = "table",
    overrides: Sequence[Json] = (),
) -> Panel:
    """A graph over time; alert thresholds are drawn as dashed lines."""
    custom: Json = {
        "drawStyle": "bars" if bars else "line",
        "fillOpacity": 60 if bars else (25 if stack else 8),
        "lineWidth": 1,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "normal" if stack else "none"},
        "thresholdsStyle": {"mode": "dashed" if (alerts or thresholds) else "off"},
    }
    options: Json = {
        "legend": {
            "calcs": ["lastNotNull", "max"] if legend == "table" else [],
            "displayMode": legend,
            "placement": "bottom",
            "showLegend": True,
        },
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return _panel(
        "timeseries",
        title,
        description,
        targets,
        unit=unit,
        w=w,
        h=h,
        thresholds=thresholds,
        alerts=alerts,
        min_=min_,
        max_=max_,
        custom=custom,
        options=options,
        overrides=overrides,
    )


def stat(
    title: str,
    description: str,
    *targets: Json,
    unit: str,
    w: int = 4,
    h: int = 4,
    alerts: Sequence[AlertThreshold] = (),
    thresholds: Json | None = None,
    mappings: Sequence[Json] = (),
    reducer: str = "lastNotNull",
    decimals: int | None = None,
    graph: bool = True,
) -> Panel:
    """One big number (the last value), coloured by thresholds."""
    options: Json = {
        "colorMode": "background",
        "graphMode": "area" if graph else "none",
        "justifyMode": "auto",
        "orientation": "auto",
        "reduceOptions": {"calcs": [reducer], "fields": "", "values": False},
        "textMode": "auto",
    }
    return _panel(
        "stat",
        title,
        description,
        targets,
        unit=unit,
        w=w,
        h=h,
        thresholds=thresholds,
        alerts=alerts,
        min_=None,
        max_=None,
        custom={},
        options=options,
        mappings=mappings,
        decimals=decimals,
    )


def gauge(
    title: str,
    description: str,
    *targets: Json,
    unit: str,
    w: int = 4,
    h: int = 6,
    alerts: Sequence[AlertThreshold] = (),
    thresholds: Json | None = None,
    min_: float = 0,
    max_: float = 1,
) -> Panel:
    """A dial per series; used for bounded ratios (KV cache, utilization)."""
    options: Json = {
        "orientation": "auto",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "showThresholdLabels": False,
        "showThresholdMarkers": True,
    }
    return _panel(
        "gauge",
        title,
        description,
        targets,
        unit=unit,
        w=w,
        h=h,
        thresholds=thresholds,
        alerts=alerts,
        min_=min_,
        max_=max_,
        custom={},
        options=options,
    )


def bargauge(
    title: str,
    description: str,
    *targets: Json,
    unit: str,
    w: int = 8,
    h: int = 8,
    alerts: Sequence[AlertThreshold] = (),
    thresholds: Json | None = None,
    min_: float | None = 0,
    max_: float | None = None,
) -> Panel:
    """Horizontal bars, one per series: compares many replicas or GPUs at once."""
    options: Json = {
        "displayMode": "gradient",
        "minVizHeight": 10,
        "orientation": "horizontal",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "showUnfilled": True,
        "valueMode": "color",
    }
    return _panel(
        "bargauge",
        title,
        description,
        targets,
        unit=unit,
        w=w,
        h=h,
        thresholds=thresholds,
        alerts=alerts,
        min_=min_,
        max_=max_,
        custom={},
        options=options,
    )


def state_timeline(
    title: str,
    description: str,
    *targets: Json,
    mappings: Sequence[Json],
    thresholds: Json,
    unit: str = "none",
    w: int = 12,
    h: int = 8,
) -> Panel:
    """Coloured bands per series over time: on/off states (throttling, circuit breaker)."""
    custom = {
        "fillOpacity": 75,
        "hideFrom": {"legend": False, "tooltip": False, "viz": False},
        "lineWidth": 0,
    }
    options: Json = {
        "alignValue": "left",
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False},
        "mergeValues": True,
        "rowHeight": 0.9,
        "showValue": "never",
        "tooltip": {"mode": "single", "sort": "none"},
    }
    return _panel(
        "state-timeline",
        title,
        description,
        targets,
        unit=unit,
        w=w,
        h=h,
        thresholds=thresholds,
        alerts=(),
        min_=None,
        max_=None,
        custom=custom,
        options=options,
        mappings=mappings,
    )


def table(
    title: str,
    description: str,
    *targets: Json,
    unit: str,
    columns: dict[str, str],
    w: int = 12,
    h: int = 8,
    thresholds: Json | None = None,
    sort_by: str | None = None,
) -> Panel:
    """An instant table; `columns` maps label/field names to headers and fixes their order."""
    names = dict(columns)
    organize = {
        "id": "organize",
        "options": {
            "excludeByName": {"Time": True, "__name__": True},
            "indexByName": {name: i for i, name in enumerate(names)},
            "renameByName": names,
        },
    }
    transformations: list[Json] = []
    if len(targets) > 1:
        transformations.append({"id": "merge", "options": {}})
    transformations.append(organize)
    options: Json = {
        "cellHeight": "sm",
        "footer": {"countRows": False, "fields": "", "reducer": ["sum"], "show": False},
        "showHeader": True,
        "sortBy": [{"desc": True, "displayName": names[sort_by]}] if sort_by else [],
    }
    return _panel(
        "table",
        title,
        description,
        targets,
        unit=unit,
        w=w,
        h=h,
        thresholds=thresholds,
        alerts=(),
        min_=None,
        max_=None,
        custom={"align": "auto", "cellOptions": {"type": "auto"}},
        options=options,
        transformations=transformations,
    )


def value_text(mapping: dict[int, tuple[str, str]]) -> list[Json]:
    """Value mappings for small integer states: {value: (text, colour)}."""
    return [
        {
            "options": {
                str(value): {"color": color, "index": i, "text": text}
                for i, (value, (text, color)) in enumerate(sorted(mapping.items()))
            },
            "type": "value",
        }
    ]


def override_dashed(regex: str, color: str = "red") -> Json:
    """Draw matching series as a dashed reference line (limits, baselines)."""
    return {
        "matcher": {"id": "byRegexp", "options": regex},
        "properties": [
            {"id": "custom.lineStyle", "value": {"dash": [10, 10], "fill": "dash"}},
            {"id": "color", "value": {"fixedColor": color, "mode": "fixed"}},
            {"id": "custom.fillOpacity", "value": 0},
        ],
    }


# ---------------------------------------------------------------- variables and annotations


def datasource_variable() -> Json:
    return {
        "current": {},
        "hide": 0,
        "includeAll": False,
        "label": "Data source",
        "multi": False,
        "name": "datasource",
        "options": [],
        "query": "prometheus",
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
        "type": "datasource",
    }


def query_variable(name: str, label: str, metric_selector: str, *, hide: bool = False) -> Json:
    """A multi-select label filter; "All" is `.*`, which also matches series without the label
    (a single box has no `namespace`), so the default never hides data."""
    definition = f"label_values({metric_selector}, {name})"
    return {
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "datasource": DATASOURCE,
        "definition": definition,
        "hide": 2 if hide else 0,
        "includeAll": True,
        "label": label,
        "multi": True,
        "name": name,
        "options": [],
        "query": {"qryType": 1, "query": definition, "refId": "PrometheusVariableQueryEditor"},
        "refresh": 2,
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
        "type": "query",
    }


def annotation(
    name: str, expr: str, *, title: str, text: str, tags: Iterable[str], color: str
) -> Json:
    """Events drawn on every time-series panel: each non-empty step of `expr` marks a point."""
    return {
        "datasource": DATASOURCE,
        "enable": True,
        "expr": expr,
        "hide": False,
        "iconColor": color,
        "name": name,
        "step": "1m",
        "tagKeys": ",".join(tags),
        "textFormat": text,
        "titleFormat": title,
        "useValueForTime": False,
    }


def _builtin_annotation() -> Json:
    return {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }


# ---------------------------------------------------------------- layout and dashboard


@dataclass
class Row:
    """A titled band of panels, laid out left to right and wrapped at 24 columns."""

    title: str
    panels: list[Panel] = field(default_factory=list)


def layout(rows: Sequence[Row]) -> list[Json]:
    """Assign ids and gridPos: rows stack vertically; panels flow left to right within a row."""
    out: list[Json] = []
    y = 0
    for row in rows:
        out.append(
            {
                "collapsed": False,
                "gridPos": {"h": 1, "w": GRID_COLUMNS, "x": 0, "y": y},
                "panels": [],
                "title": row.title,
                "type": "row",
            }
        )
        y += 1
        x, line_h = 0, 0
        for panel in row.panels:
            if not 0 < panel.w <= GRID_COLUMNS:
                raise ValueError(f"panel {panel.json['title']!r} is {panel.w} columns wide")
            if x + panel.w > GRID_COLUMNS:
                y, x, line_h = y + line_h, 0, 0
            out.append({**panel.json, "gridPos": {"h": panel.h, "w": panel.w, "x": x, "y": y}})
            x += panel.w
            line_h = max(line_h, panel.h)
        y += line_h
    for panel_id, panel_json in enumerate(out, start=1):
        panel_json["id"] = panel_id
    return out


def dashboard(
    *,
    uid: str,
    title: str,
    description: str,
    variables: Sequence[Json],
    rows: Sequence[Row],
    annotations: Sequence[Json] = (),
    time_from: str = "now-6h",
    refresh: str = "30s",
) -> Json:
    """The whole dashboard; links to the other Inferwatch dashboards keep time and variables."""
    return {
        "annotations": {"list": [_builtin_annotation(), *annotations]},
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,  # shared crosshair: line up a latency spike with the GPU that caused it
        "links": [
            {
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
                "tags": ["inferwatch"],
                "targetBlank": False,
                "title": "Inferwatch",
                "type": "dashboards",
            }
        ],
        "panels": layout(rows),
        "refresh": refresh,
        "schemaVersion": SCHEMA_VERSION,
        "tags": TAGS,
        "templating": {"list": [datasource_variable(), *variables]},
        "time": {"from": time_from, "to": "now"},
        "timepicker": {"refresh_intervals": ["10s", "30s", "1m", "5m", "15m", "30m", "1h"]},
        "timezone": "browser",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }
