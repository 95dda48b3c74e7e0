"""The demo's rule file: the project's rules rendered through the Helm chart's PrometheusRule
with values that only shorten windows, `for:` durations and the evaluation interval.

Production windows (hours, days) cannot play out in a few minutes, so every duration found in the
rules is mapped through one monotone table (`compress`): short windows stay a few scrapes long,
long ones shrink the most, and their order is kept so multiwindow alerts still make sense. The
mapping goes through the chart's own override mechanism (`rules.exprReplacements`,
`rules.alerts.<Name>.for`, `rules.groupInterval`), so the demo exercises what users install.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "inferwatch"

_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_DURATION = re.compile(r"(\d+)(ms|[smhdwy])")
# A range selector `[5m]`, a subquery `[1h:1m]`, or an `offset 1d`.
_RANGE = re.compile(r"\[(\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*)(?::(\d+(?:ms|[smhdwy]))?)?\]")
_OFFSET = re.compile(r"\boffset\s+(\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*)")


def parse_duration(text: str) -> float:
    """Prometheus duration ("1h30m", "5m", "250ms") in seconds."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    return f"{max(1, round(seconds))}s"


# (production seconds, demo seconds); linear in between, flat beyond the ends. A day-old
# baseline (`offset 1d`) becomes 35 s: the demo warms up longer than that before it injects
# a fault whose alert compares with the past.
DEFAULT_TABLE: tuple[tuple[float, float], ...] = (
    (0, 0),
    (60, 4),
    (300, 6),
    (900, 10),
    (1800, 15),
    (3600, 17),
    (6 * 3600, 22),
    (86400, 35),
    (3 * 86400, 40),
    (30 * 86400, 45),
)


def compress(seconds: float, table: Sequence[tuple[float, float]] = DEFAULT_TABLE) -> float:
    """Map a production duration onto the demo's short clock (monotone, piecewise linear)."""
    if seconds <= table[0][0]:
        return table[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(table):
        if seconds <= x1:
            return y0 + (y1 - y0) * (seconds - x0) / (x1 - x0)
    return table[-1][1]


def rule_groups(docs: Iterable[Any]) -> list[dict[str, Any]]:
    """spec.groups of every PrometheusRule in rendered manifests."""
    groups: list[dict[str, Any]] = []
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "PrometheusRule":
            groups += doc.get("spec", {}).get("groups", [])
    return groups


def helm_binary() -> str:
    for candidate in (Path(sys.executable).parent / "helm", shutil.which("helm")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    raise RuntimeError("helm not found; run ./run setup")


def chart_with_current_rules(workdir: Path) -> Path:
    """A copy of the chart whose files/rules are the repository's rules/ as they are now.

    The chart normally carries synced copies (helm/sync.py); the demo must show the rules in the
    working tree, so it renders a copy instead of trusting that the sync ran.
    """
    chart = workdir / "chart"
    if chart.exists():
        shutil.rmtree(chart)
    shutil.copytree(CHART, chart)
    rules_dir = chart / "files" / "rules"
    rules_dir.mkdir(parents=True, exist_ok=True)
    for old in rules_dir.glob("*.rules.yaml"):
        old.unlink()
    for source in sorted((REPO / "rules").glob("*.rules.yaml")):
        shutil.copy2(source, rules_dir / source.name)
    return chart


def helm_template(chart: Path, workdir: Path, *args: str) -> list[dict[str, Any]]:
    """`helm template` the chart with `args` (helm's state kept under `workdir`); the rendered
    documents."""
    env = {
        "HELM_CACHE_HOME": str(workdir / "helm-cache"),
        "HELM_CONFIG_HOME": str(workdir / "helm-config"),
        "HELM_DATA_HOME": str(workdir / "helm-data"),
        "PATH": "/usr/bin:/bin",
    }
    proc = subprocess.run(
        [helm_binary(), "template", "inferwatch", str(chart), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"helm template failed:\n{proc.stderr.strip()}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def render_chart_rules(values: Mapping[str, Any], workdir: Path) -> list[dict[str, Any]]:
    """`helm template` the chart with only its rules enabled; return the rule groups."""
    workdir.mkdir(parents=True, exist_ok=True)
    chart = chart_with_current_rules(workdir)
    values_file = workdir / "demo-values.yaml"
    values_file.write_text(yaml.safe_dump(dict(values), sort_keys=False))
    groups = rule_groups(helm_template(chart, workdir, "-f", str(values_file)))
    if not groups:
        raise RuntimeError("the chart rendered no PrometheusRule groups")
    return groups


def _only_rules(extra: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "exporter": {"enabled": False},
        "dashboards": {"enabled": False},
        "remediator": {"enabled": False},
        "rules": {"enabled": True, **extra},
    }


def demo_overrides(
    groups: Sequence[Mapping[str, Any]],
    *,
    eval_interval: str,
    table: Sequence[tuple[float, float]] = DEFAULT_TABLE,
    min_window: float = 4.0,
    for_overrides: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Chart `rules` values that shorten every window, `for:` and `keep_firing_for:` found in the
    default render.

    Replacements are ordered by source duration, shortest first: each replacement yields a shorter
    text than its source, so a later (longer) source can never re-match an earlier output.
    """
    ranges: set[str] = set()
    offsets: set[str] = set()
    alerts: dict[str, dict[str, str]] = {}
    for group in groups:
        for rule in group.get("rules", []):
            expr = str(rule.get("expr", ""))
            ranges.update(m.group(0) for m in _RANGE.finditer(expr))
            offsets.update(m.group(0) for m in _OFFSET.finditer(expr))
            if "alert" not in rule:
                continue
            for key in ("for", "keep_firing_for"):
                if rule.get(key):
                    short = compress(parse_duration(str(rule[key])), table)
                    alerts.setdefault(rule["alert"], {})[key] = format_duration(short)
    for name, value in (for_overrides or {}).items():
        alerts.setdefault(name, {})["for"] = value

    def window(text: str) -> str:
        return format_duration(max(min_window, compress(parse_duration(text), table)))

    replacements: list[tuple[float, str, str]] = []
    for token in ranges:
        m = _RANGE.fullmatch(token)
        assert m is not None
        rng = m.group(1)
        # A subquery keeps its shape with the default step (the evaluation interval).
        new = f"[{window(rng)}" + (":]" if ":" in token else "]")
        replacements.append((parse_duration(rng), token, new))
    for token in offsets:
        m = _OFFSET.fullmatch(token)
        assert m is not None
        replacements.append((parse_duration(m.group(1)), token, f"offset {window(m.group(1))}"))
    replacements.sort()
    return {
        "groupInterval": eval_interval,
        "alerts": alerts,
        "exprReplacements": [{"from": f, "to": t} for _, f, t in replacements if f != t],
    }


def build_rule_file(
    out: Path,
    workdir: Path,
    *,
    eval_interval: str = "1s",
    table: Sequence[tuple[float, float]] = DEFAULT_TABLE,
    for_overrides: Mapping[str, str] | None = None,
    extra_alert_overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Render twice (defaults, then demo overrides) and write a plain Prometheus rule file.

    Returns the `rules` values used, so the demo can print what it changed.
    """
    defaults = render_chart_rules(_only_rules({}), workdir)
    overrides = demo_overrides(
        defaults, eval_interval=eval_interval, table=table, for_overrides=for_overrides
    )
    for name, extra in (extra_alert_overrides or {}).items():
        overrides["alerts"][name] = {**overrides["alerts"].get(name, {}), **extra}
    groups = render_chart_rules(_only_rules(overrides), workdir)
    out.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return overrides
