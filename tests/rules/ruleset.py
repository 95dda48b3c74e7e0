"""The rule set as data: rule files, their alerts and records, the promtool test files, and the
metric names a PromQL expression reads. Shared by the rules tests."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "rules"
RUNBOOKS_DIR = RULES_DIR / "runbooks"
TESTS_DIR = Path(__file__).resolve().parent
RULE_FILES = sorted(RULES_DIR.glob("*.rules.yaml"))
TEST_FILES = sorted(TESTS_DIR.glob("*_test.yaml"))
RUNBOOK_URL = "https://github.com/inferwatch/inferwatch/blob/main/rules/runbooks/{}.md"
# dcgm-compat records the same names as gpu.rules.yaml, for GPUs our exporter does not report.
ALTERNATIVE_SOURCE = "dcgm-compat.rules.yaml"


@dataclass(frozen=True)
class Rule:
    file: str
    group: str
    body: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.body.get("alert") or self.body["record"])

    @property
    def expr(self) -> str:
        return str(self.body["expr"])


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def rules() -> list[Rule]:
    return [
        Rule(path.name, group["name"], rule)
        for path in RULE_FILES
        for group in load(path)["groups"]
        for rule in group["rules"]
    ]


def alerts() -> list[Rule]:
    return [r for r in rules() if "alert" in r.body]


def records() -> list[Rule]:
    return [r for r in rules() if "record" in r.body]


def promtool_cases() -> list[dict[str, Any]]:
    return [case for path in TEST_FILES for case in load(path)["tests"]]


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_LISTS = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan"}


def metrics_read(expr: str) -> set[str]:
    """Metric names an expression selects (functions, keywords and label names excluded)."""
    text = re.sub(r"#[^\n]*", "", expr)
    text = _STRING.sub('""', text)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _LABEL_LISTS.sub("", text)
    names = set()
    for match in _IDENT.finditer(text):
        word = match.group(0)
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or word.lower() in _KEYWORDS:
            continue
        if text[max(0, match.start() - 1)].isdigit():
            continue  # part of a number or a duration (1.5e3, 10m)
        names.add(word)
    return names


def base_name(series: str) -> str:
    """A histogram's _bucket/_sum/_count series belong to the histogram's family name."""
    return re.sub(r"_(bucket|sum|count)$", "", series)
