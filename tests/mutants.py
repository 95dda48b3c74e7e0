"""A quick mutation check: hand-made mutants of the code whose mistakes would hurt users most
quietly, each run against the tests that should notice.

    .venv/bin/python -m tests.mutants            # every mutant (a few minutes)
    .venv/bin/python -m tests.mutants parser     # the mutants whose name starts with "parser"
    .venv/bin/python -m tests.mutants --list

Areas: the exposition parser, the normalizer's unit conversions, the remediator's guard pipeline
and the chart's rule overrides. Each mutant is one small edit (a dropped conversion, an
off-by-one, a disabled check) applied to a private copy of the repository, never to the work
tree; the mutant is *killed* when its tests fail. A mutant that survives is either a gap in the
tests or an equivalent change; the ones known to survive carry the reason (docs/testing.md), and
any other survivor makes the exit status 1. Not part of `./run test`: it reruns test files once
per mutant.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SKIPPED_DIRS = {".git", ".venv", "__pycache__", ".hypothesis", ".pytest_cache", ".mypy_cache"}
SKIPPED_PATHS = {"demo/out", "bench/out", "dashboards/out"}

PARSER = "exporter/engines/parser.py"
NORMALIZE = "exporter/engines/normalize.py"
TRITON = "exporter/engines/triton.py"
ENGINE = "remediations/engine.py"
CHART_RULES = "helm/inferwatch/templates/rules/prometheusrule.yaml"

PARSER_TESTS = ("tests/engines/test_parser.py",)
NORMALIZE_TESTS = ("tests/engines/test_normalize.py",)
GUARD_TESTS = ("tests/remediations/test_guards.py",)
OVERRIDE_TESTS = (
    "tests/helm/test_rules.py",
    "tests/rules/test_promtool.py::test_chart_overrides_keep_every_rule_valid",
)


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]
    survives: str | None = None  # why it is known to survive (equivalent, or not worth a test)


MUTANTS = [
    # -- the exposition parser --------------------------------------------------------------
    Mutant(
        "parser-drops-every-sample",
        PARSER,
        "bucket.append(Sample(name, labels, value))",
        "pass",
        PARSER_TESTS,
    ),
    Mutant(
        "parser-no-unescape",
        PARSER,
        'labels[name] = _ESCAPE.sub(_unescape, raw) if "\\\\" in raw else raw',
        "labels[name] = raw",
        PARSER_TESTS,
    ),
    Mutant(
        "parser-newline-escape-kept",
        PARSER,
        '_UNESCAPED = {"n": "\\n",',
        '_UNESCAPED = {"n": "n",',
        PARSER_TESTS,
    ),
    Mutant(
        "parser-underscore-values-accepted",
        PARSER,
        'if "_" in text:',
        "if False:",
        PARSER_TESTS,
    ),
    Mutant(
        "parser-duplicates-kept",
        PARSER,
        "if key in seen:",
        "if False:",
        PARSER_TESTS,
    ),
    Mutant(
        "parser-truncated-line-not-counted",
        PARSER,
        "if stop < len(text):",
        "if False:",
        PARSER_TESTS,
    ),
    Mutant(
        "parser-label-limit-off-by-one",
        PARSER,
        "if len(raw) > MAX_LABEL_VALUE_CHARS:",
        "if len(raw) >= MAX_LABEL_VALUE_CHARS:",
        PARSER_TESTS,
        survives="a label value of exactly 2048 characters is as implausible as one of 2049: "
        "the limit is a sanity bound, not a contract worth a boundary test",
    ),
    # -- the normalizer's unit conversions ----------------------------------------------------
    Mutant(
        "normalize-values-not-converted",
        NORMALIZE,
        "value = sample.value / source.divisor",
        "value = sample.value",
        NORMALIZE_TESTS,
        survives="equivalent today: no engine maps a gauge or counter with a unit divisor (the "
        "only divisors are on Triton's latency histogram and sums)",
    ),
    Mutant(
        "normalize-bucket-bounds-not-converted",
        NORMALIZE,
        "bound = bound / source.divisor",
        "bound = bound",
        NORMALIZE_TESTS,
    ),
    Mutant(
        "normalize-histogram-sum-not-converted",
        NORMALIZE,
        'sums = self._summed(source, source.name + "_sum", source.divisor)',
        'sums = self._summed(source, source.name + "_sum", 1.0)',
        NORMALIZE_TESTS,
    ),
    Mutant(
        "normalize-sum-count-sum-not-converted",
        NORMALIZE,
        "sums = self._summed(source, source.name, source.divisor)",
        "sums = self._summed(source, source.name, 1.0)",
        NORMALIZE_TESTS,
    ),
    Mutant(
        "normalize-derived-terms-not-converted",
        NORMALIZE,
        "acc[key] += sign * sample.value / source.divisor",
        "acc[key] += sign * sample.value",
        NORMALIZE_TESTS,
        survives="equivalent today: no engine mapping has plus/minus terms on a source with a "
        "unit divisor",
    ),
    Mutant(
        "normalize-triton-microseconds-as-milliseconds",
        TRITON,
        "MICROSECONDS = 1e6",
        "MICROSECONDS = 1e3",
        NORMALIZE_TESTS,
    ),
    # -- the remediator's guard pipeline --------------------------------------------------------
    Mutant(
        "guards-kill-switch-ignored",
        ENGINE,
        "if self.kill_switch:",
        "if False:",
        GUARD_TESTS,
    ),
    Mutant(
        "guards-cooldown-ignored",
        ENGINE,
        "if (left := self.state.cooldown_left(key)) > 0:",
        "if (left := self.state.cooldown_left(key)) > 1e9:",
        GUARD_TESTS,
    ),
    Mutant(
        "guards-retry-cap-off-by-one",
        ENGINE,
        "if failures >= guards.max_attempts:",
        "if failures > guards.max_attempts:",
        GUARD_TESTS,
    ),
    Mutant(
        "guards-action-rate-limit-off-by-one",
        ENGINE,
        ">= per_action.max_actions",
        "> per_action.max_actions",
        GUARD_TESTS,
    ),
    Mutant(
        "guards-global-rate-limit-off-by-one",
        ENGINE,
        "if self.state.actions_since(now - overall.window_seconds) >= overall.max_actions:",
        "if self.state.actions_since(now - overall.window_seconds) > overall.max_actions:",
        GUARD_TESTS,
    ),
    Mutant(
        "guards-recheck-ignored",
        ENGINE,
        "raise Blocked(Guard.RECHECK, why)",
        "pass",
        GUARD_TESTS,
    ),
    Mutant(
        "guards-early-idempotency-skipped",
        ENGINE,
        "        if self.state.seen(alert.dedupe_key):\n"
        '            raise Blocked(Guard.IDEMPOTENCY, f"already handled {alert.dedupe_key}")',
        "        if False:\n"
        '            raise Blocked(Guard.IDEMPOTENCY, f"already handled {alert.dedupe_key}")',
        GUARD_TESTS,
    ),
    # -- the chart's rule overrides -------------------------------------------------------------
    Mutant(
        "overrides-threshold-boundary-without-dot",
        CHART_RULES,
        '"(^|[^A-Za-z0-9_.])%s([^A-Za-z0-9_.]|$)"',
        '"(^|[^A-Za-z0-9_])%s([^A-Za-z0-9_]|$)"',
        OVERRIDE_TESTS,
    ),
    Mutant(
        "overrides-threshold-may-be-missing",
        CHART_RULES,
        "{{- if ne $count 1 }}",
        "{{- if gt $count 1 }}",
        OVERRIDE_TESTS,
    ),
    Mutant(
        "overrides-disabled-ignored",
        CHART_RULES,
        "(get $r.disabled $rule.alert)",
        '(get $r.disabled "-")',
        OVERRIDE_TESTS,
    ),
    Mutant(
        "overrides-additional-labels-win",
        CHART_RULES,
        "merge (dict) ($o.labels | default dict) ($rule.labels | default dict) "
        "$r.additionalAlertLabels",
        "merge (dict) $r.additionalAlertLabels ($o.labels | default dict) "
        "($rule.labels | default dict)",
        OVERRIDE_TESTS,
    ),
    Mutant(
        "overrides-group-interval-ignored",
        CHART_RULES,
        '{{- $_ := set $g "interval" $r.groupInterval }}',
        "",
        OVERRIDE_TESTS,
    ),
    Mutant(
        "overrides-unknown-alert-accepted",
        CHART_RULES,
        '{{- fail (printf "rules.alerts.%s: no alert of that name in the rule files" $name) }}',
        "",
        OVERRIDE_TESTS,
    ),
]


def copy_repo(dest: Path) -> None:
    def ignore(directory: str, names: list[str]) -> set[str]:
        rel = Path(directory).resolve().relative_to(REPO)
        return {n for n in names if n in SKIPPED_DIRS or (rel / n).as_posix() in SKIPPED_PATHS}

    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)


def run_tests(root: Path, tests: tuple[str, ...]) -> tuple[int, float, str]:
    """pytest on the copy: (exit status, seconds, last lines of its output)."""
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-x",
            "-q",
            "-p",
            "no:cacheprovider",
            "--allow-skips",
            "--hypothesis-seed=0",
            *tests,
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
    return proc.returncode, time.monotonic() - started, tail


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prefix", nargs="*", help="run only mutants whose name starts with one")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.prefix or m.name.startswith(tuple(args.prefix))]
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.path}: {m.old!r} -> {m.new!r}")
        return 0
    unexpected: list[str] = []
    with tempfile.TemporaryDirectory(prefix="inferwatch-mutants-") as tmp:
        root = Path(tmp) / "repo"
        copy_repo(root)
        # Each test selection must pass unmutated, or its mutants say nothing.
        healthy: dict[tuple[str, ...], bool] = {}
        for tests in dict.fromkeys(m.tests for m in chosen):
            code, took, tail = run_tests(root, tests)
            healthy[tests] = code == 0
            state = "passes" if code == 0 else f"FAILS unmutated (exit {code}):\n{tail}"
            print(f"baseline {' '.join(tests)}: {state} ({took:.0f} s)", flush=True)
        killed = survived = 0
        for m in chosen:
            path = root / m.path
            original = path.read_text()
            if original.count(m.old) != 1:
                print(f"{m.name}: NOT APPLIED (the code it mutates changed)", flush=True)
                unexpected.append(m.name)
                continue
            if not healthy[m.tests]:
                print(f"{m.name}: not judged (its tests fail unmutated)", flush=True)
                unexpected.append(m.name)
                continue
            path.write_text(original.replace(m.old, m.new))
            try:
                code, took, tail = run_tests(root, m.tests)
            finally:
                path.write_text(original)
            if code != 0:
                killed += 1
                print(f"{m.name}: killed ({took:.0f} s)", flush=True)
            elif m.survives:
                survived += 1
                print(f"{m.name}: survived, as known: {m.survives}", flush=True)
            else:
                survived += 1
                unexpected.append(m.name)
                print(f"{m.name}: SURVIVED ({took:.0f} s): no test noticed", flush=True)
    print(f"mutants: {killed} killed, {survived} survived, of {len(chosen)}")
    if unexpected:
        print("unexpected: " + ", ".join(unexpected))
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
