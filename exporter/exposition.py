"""Exposition encoders, byte-for-byte the same as prometheus-client's, several times faster.

prometheus-client re-validates and re-escapes every sample name rune by rune (about 10 µs a
sample for text, 26 µs for OpenMetrics). Our families have legacy-valid names we chose, so this
checks names once per family and label name and formats samples directly. A family it does not
handle (exemplars, native histograms, a name needing UTF-8 escaping) goes to prometheus-client's
own encoder, so the output is always what prometheus-client would produce.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.utils import floatToGoString as _go_float

_LEGACY_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LEGACY_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_TEXT_TYPES = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram"}
_TEXT_OM_SUFFIXES = ("_created", "_gsum", "_gcount")
OM_EOF = b"# EOF\n"


class _One:
    def __init__(self, family: Metric) -> None:
        self.family = family

    def collect(self) -> Iterator[Metric]:
        yield self.family


def _reference(family: Metric, openmetrics: bool) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_One(family))  # type: ignore[arg-type]
    if openmetrics:
        om: bytes = generate_openmetrics(registry)  # type: ignore[no-untyped-call]
        return om.removesuffix(OM_EOF).decode()
    text: bytes = generate_latest(registry)  # type: ignore[no-untyped-call]
    return text.decode()


class _LabelNames:
    """Label names seen valid so far: checked once each, not once per sample."""

    def __init__(self) -> None:
        self.valid: set[str] = set()

    def ok(self, names: Sequence[str]) -> bool:
        for name in names:
            if name not in self.valid:
                if not _LEGACY_LABEL.match(name):
                    return False
                self.valid.add(name)
        return True


_LABELS = _LabelNames()


def _simple(family: Metric, openmetrics: bool) -> bool:
    # prometheus-client writes OpenMetrics sample names with label-name runes (':' becomes '_'):
    # names with a colon go to its own encoder so the output stays identical.
    sample_name = _LEGACY_LABEL if openmetrics else _LEGACY_NAME
    if not _LEGACY_NAME.match(family.name):
        return False
    for s in family.samples:
        if s.exemplar is not None or s.native_histogram is not None:
            return False
        if not s.name.startswith(family.name) or not sample_name.match(s.name):
            return False
        if s.labels and not _LABELS.ok(list(s.labels)):
            return False
    return True


def _float(value: float) -> str:
    text: str = _go_float(value)  # type: ignore[no-untyped-call]
    return text


def _escape(value: str) -> str:
    if "\\" not in value and "\n" not in value and '"' not in value:
        return value
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _sample(name: str, labels: dict[str, str], value: float, timestamp: str) -> str:
    if labels:
        pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
        return f"{name}{{{pairs}}} {_float(value)}{timestamp}\n"
    return f"{name} {_float(value)}{timestamp}\n"


def _text_family(family: Metric, out: list[str]) -> None:
    mname, mtype = family.name, family.type
    if mtype == "counter":
        mname += "_total"
    elif mtype == "info":
        mname += "_info"
    mtype = _TEXT_TYPES.get(mtype, "untyped" if mtype == "unknown" else mtype)
    doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
    out.append(f"# HELP {mname} {doc}\n# TYPE {mname} {mtype}\n")
    extra: dict[str, list[str]] = {}
    for s in family.samples:
        ts = "" if s.timestamp is None else f" {int(float(s.timestamp) * 1000):d}"
        line = _sample(s.name, s.labels, s.value, ts)
        suffix = s.name[len(family.name) :]
        if suffix in _TEXT_OM_SUFFIXES:
            extra.setdefault(suffix, []).append(line)
        else:
            out.append(line)
    for suffix, lines in sorted(extra.items()):
        out.append(f"# HELP {family.name}{suffix} {doc}\n# TYPE {family.name}{suffix} gauge\n")
        out.extend(lines)


def _openmetrics_family(family: Metric, out: list[str]) -> None:
    doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    out.append(f"# HELP {family.name} {doc}\n# TYPE {family.name} {family.type}\n")
    if family.unit:
        out.append(f"# UNIT {family.name} {family.unit}\n")
    for s in family.samples:
        ts = "" if s.timestamp is None else f" {s.timestamp}"
        out.append(_sample(s.name, s.labels, s.value, ts))


def encode(families: Sequence[Metric], openmetrics: bool) -> bytes:
    """Families as Prometheus text (0.0.4) or OpenMetrics without its `# EOF` line."""
    out: list[str] = []
    for family in families:
        if not _simple(family, openmetrics):
            out.append(_reference(family, openmetrics))
        elif openmetrics:
            _openmetrics_family(family, out)
        else:
            _text_family(family, out)
    return "".join(out).encode()
