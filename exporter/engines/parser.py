"""A fast, tolerant parser for the Prometheus text exposition format (0.0.4 and 1.0.0).

Engines expose hundreds of families (Python GC, HTTP middleware, every histogram bucket of every
stage) and a normalizer needs a few dozen of them. So the parser looks at each line's metric name
first and only parses labels and values of samples whose name is wanted; everything else costs one
regex match. Bad input never raises anything but `ParseError` (the text is not an exposition at
all: HTML, binary) — a malformed, duplicate or oversized sample is dropped and counted instead.

Costs are bounded by the input's size, never worse: a line longer than `MAX_LINE_CHARS` is dropped
before any regex looks at it, and once `max_samples` wanted samples are kept the parse stops
and the lines left are only counted (`Exposition.capped`). A series is identified by its
name and label pairs, not by how they were written, so `{a ="x"}` duplicates `{a="x"}`.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field

MAX_LABEL_VALUE_CHARS = 2048
"""Longer label values are dropped with their sample: they are no model name or bucket bound."""

MAX_LINE_CHARS = 16 * 1024
"""Real sample lines are under 1 KiB; a longer one is dropped unparsed (a 1 MB label value would
otherwise cost a regex pass over the whole line)."""

MAX_ERRORS_KEPT = 5

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\\n]|\\.)*)"')
_ONE = r'[a-zA-Z_][a-zA-Z0-9_]*[ \t]*=[ \t]*"(?:[^"\\\n]|\\.)*"'
_BLOCK = re.compile(r"\{[ \t]*((?:" + _ONE + r"(?:[ \t]*,[ \t]*" + _ONE + r")*[ \t]*,?)?)[ \t]*\}")
_ESCAPE = re.compile(r"\\(.)")
_UNESCAPED = {"n": "\n", "\\": "\\", '"': '"'}

Labels = dict[str, str]


class ParseError(ValueError):
    """The text is not a Prometheus exposition (HTML, binary, nothing but garbage)."""


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: Labels
    value: float


@dataclass
class Exposition:
    """The wanted samples by sample name, in input order, and what had to be dropped."""

    samples: dict[str, list[Sample]] = field(default_factory=dict)
    dropped: int = 0
    capped: int = 0
    """Sample lines (of any name) left unparsed because `max_samples` were already kept."""
    errors: list[str] = field(default_factory=list)

    def get(self, name: str) -> list[Sample]:
        return self.samples.get(name, [])

    def _drop(self, lineno: int, reason: str) -> None:
        self.dropped += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(f"line {lineno}: {reason}")


def _unescape(match: re.Match[str]) -> str:
    char = match.group(1)
    return _UNESCAPED.get(char, "\\" + char)


def _parse_labels(line: str, pos: int) -> tuple[Labels, int] | str:
    """The label block starting at `{`; returns (labels, position after `}`) or an error."""
    block = _BLOCK.match(line, pos)
    if block is None:
        return "malformed labels"
    labels: Labels = {}
    pairs = _PAIR.findall(block.group(1))
    for name, raw in pairs:
        if len(raw) > MAX_LABEL_VALUE_CHARS:
            return f"label {name!r} value longer than {MAX_LABEL_VALUE_CHARS} characters"
        labels[name] = _ESCAPE.sub(_unescape, raw) if "\\" in raw else raw
    if len(labels) != len(pairs):
        return "a label is given twice"
    return labels, block.end()


def _parse_value(rest: str) -> float | str:
    parts = rest.split()
    if not parts or len(parts) > 2:
        return "expected a value and an optional timestamp"
    text = parts[0]
    if "_" in text:
        return f"invalid value {text!r}"
    try:
        value = float(text)
    except ValueError:
        return f"invalid value {text!r}"
    if len(parts) == 2:
        stamp = parts[1]
        if not stamp.lstrip("-").isdigit():
            return f"invalid timestamp {stamp!r}"
    return value


def reject_non_exposition(text: str | bytes | bytearray) -> None:
    """Raise ParseError for what is plainly no exposition: an HTML page (login proxy, error
    page of a gateway) or binary data. Bytes too: a big body is checked before it is decoded."""
    if text[:4096].lstrip()[:1] in ("<", b"<"):  # a prefix: never a copy of the whole body
        raise ParseError("response is HTML/XML, not a Prometheus exposition")
    if "\x00" in text if isinstance(text, str) else b"\x00" in text:
        raise ParseError("response contains NUL bytes, not a Prometheus exposition")


def parse(
    text: str, wanted: Collection[str] | None = None, max_samples: int | None = None
) -> Exposition:
    """Parse the samples whose name is in `wanted` (all when None), at most `max_samples`.

    A last line without its line feed was cut off in transfer (the format ends every line with
    one) and is dropped, so a truncated value is never read as a smaller number.
    """
    reject_non_exposition(text)
    result = Exposition()
    # Lines are walked in place (no split of the whole text): what is skipped is never copied.
    stop = text.rfind("\n") + 1
    if stop < len(text):
        result._drop(text.count("\n") + 1, "last line has no line feed (truncated response)")
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    name_match = _NAME.match
    samples = result.samples
    named_lines = lineno = 0
    room = -1 if max_samples is None else max_samples
    start = 0
    while start < stop:
        end = text.index("\n", start)
        line_start, start = start, end + 1
        lineno += 1
        if end == line_start or text[line_start] == "#":
            continue
        match = name_match(text, line_start, end)
        if match is None:
            if end - line_start > MAX_LINE_CHARS or text[line_start:end].strip():
                result._drop(lineno, "line does not start with a metric name")
            continue
        named_lines += 1
        name = match.group()
        if wanted is not None and name not in wanted:
            continue
        if end - line_start > MAX_LINE_CHARS:
            result._drop(lineno, f"{name}: line longer than {MAX_LINE_CHARS} characters")
            continue
        line = text[line_start:end]
        pos = match.end() - line_start
        labels: Labels = {}
        if pos < len(line) and line[pos] == "{":
            parsed = _parse_labels(line, pos)
            if isinstance(parsed, str):
                result._drop(lineno, f"{name}: {parsed}")
                continue
            labels, pos = parsed
        elif pos < len(line) and line[pos] not in " \t":
            result._drop(lineno, f"{name}: unexpected character {line[pos]!r} after the name")
            continue
        value = _parse_value(line[pos:])
        if isinstance(value, str):
            result._drop(lineno, f"{name}: {value}")
            continue
        key = (name, tuple(sorted(labels.items())))  # not the text: spacing must not matter
        if key in seen:
            result._drop(lineno, f"{name}: duplicate series")
            continue
        seen.add(key)
        bucket = samples.get(name)
        if bucket is None:
            samples[name] = bucket = []
        bucket.append(Sample(name, labels, value))
        room -= 1
        if room == 0:  # the lines left are counted at C speed, never parsed
            lines_left = text.count("\n", start, stop)
            comments = text.count("\n#", end, stop) + text.count("\n\n", end, stop)
            result.capped = lines_left - comments
            break
    if named_lines == 0 and result.dropped > 0:
        raise ParseError(f"no metric lines found; first problem: {result.errors[0]}")
    return result
