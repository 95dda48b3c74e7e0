"""Artifacts generated from the registrations: `python -m exporter.generate [--check]`.

Registration is the source of truth: each collector declares its settings model and its metric
catalog (`Collector.settings_model`, `Collector.metrics`), each engine its mapping. From those,
this writes the metric tables in docs/*.md (between `<!-- generated: ... -->` markers), the
exporter's config JSON schema, and the collectors section of the Helm chart's
values.schema.json. `--check` writes nothing and exits 1 when a committed file is stale
(tests/core/test_registration.py runs it, like the dashboards' drift check).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from exporter.catalog import MetricSpec
from exporter.collectors import COLLECTORS
from exporter.config import ExporterConfig
from exporter.snapshot import EXPORTER_METRICS, PROCESS_METRICS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CONFIG_SCHEMA = DOCS / "exporter-config.schema.json"
HELM_SCHEMA = ROOT / "helm" / "inferwatch" / "values.schema.json"
COMMON_LABELS = {
    "gpu": ("gpu", "uuid"),
    "cuda_allocator": ("uuid", "namespace", "pod", "container", "pool"),
    "llm": ("engine", "model", "target"),
}
DOC_OF = {"gpu": "gpu.md", "cuda_allocator": "cuda-allocator.md", "llm": "engines.md"}


def metric_table(specs: Iterable[MetricSpec], common: tuple[str, ...] = ()) -> str:
    """A Markdown table of metric declarations (labels beyond `common` listed)."""
    rows = ["| metric | type | labels | help |", "|---|---|---|---|"]
    for spec in specs:
        extra = [f"`{label}`" for label in spec.labels if label not in common]
        help_text = spec.help + (f" *Only when {spec.when}.*" if spec.when else "")
        rows.append(
            f"| `{spec.exposed_name}` | {spec.type} | {', '.join(extra)} | "
            f"{help_text.replace('|', '/')} |"
        )
    return "\n".join(rows) + "\n"


def _marker(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- generated: {re.escape(name)} .*?-->\n)(.*?)(<!-- end generated -->)", re.S
    )


def replace_block(text: str, name: str, body: str) -> str:
    """Replace the generated block `name` in a Markdown text (which must have the markers)."""
    pattern = _marker(name)
    if not pattern.search(text):
        raise ValueError(f"no '<!-- generated: {name} ... -->' block")
    return pattern.sub(lambda m: m.group(1) + body + m.group(3), text, count=1)


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """Pydantic's JSON schema with $refs inlined and titles dropped (Helm's draft-07 reader)."""
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].split("/")[-1]])
            return {k: walk(v) for k, v in node.items() if k not in ("title", "$defs")}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    out: dict[str, Any] = walk(schema)
    return out


def collector_schema(name: str) -> dict[str, Any]:
    model = COLLECTORS[name].settings_model
    schema = _inline(model.model_json_schema())
    schema["description"] = (
        f"collectors.{name} of the exporter config (generated from its settings model)."
    )
    return schema


def docs_outputs() -> dict[Path, Callable[[str], str]]:
    outputs: dict[Path, Callable[[str], str]] = {}
    for name, cls in COLLECTORS.items():
        table = metric_table(cls.metrics, COMMON_LABELS.get(name, ()))

        def edit(text: str, name: str = name, table: str = table) -> str:
            return replace_block(text, f"metrics {name}", table)

        outputs[DOCS / DOC_OF[name]] = edit
    own = metric_table((*EXPORTER_METRICS, *PROCESS_METRICS))
    outputs[DOCS / "exporter.md"] = lambda text: replace_block(text, "metrics exporter", own)
    return outputs


def helm_schema(text: str) -> str:
    doc = json.loads(text)
    collectors = doc["properties"]["exporter"]["properties"]["collectors"]
    collectors["properties"] = {name: collector_schema(name) for name in COLLECTORS}
    return json.dumps(doc, indent=2) + "\n"


def config_schema() -> str:
    schema = _inline(ExporterConfig.model_json_schema())
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    schema["description"] = "Inferwatch exporter config (generated: python -m exporter.generate)."
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def render() -> dict[Path, str]:
    """Every generated file's wanted content."""
    wanted = {path: edit(path.read_text()) for path, edit in docs_outputs().items()}
    wanted[HELM_SCHEMA] = helm_schema(HELM_SCHEMA.read_text())
    wanted[CONFIG_SCHEMA] = config_schema()
    return wanted


def stale() -> list[Path]:
    return [p for p, text in render().items() if not p.exists() or p.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m exporter.generate", description=__doc__)
    p.add_argument("--check", action="store_true", help="exit 1 if a generated file is stale")
    args = p.parse_args(argv)
    if args.check:
        paths = stale()
        for path in paths:
            print(f"stale: {path.relative_to(ROOT)} (run python -m exporter.generate)")
        return 1 if paths else 0
    for path, text in render().items():
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
