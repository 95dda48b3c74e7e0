"""`./run bench`: run every bench script and print one table of their ratios and targets.

Each bench/<name>.py exposes `main()` returning a `bench.Summary`: its one summary line and the
ratios it measured against a baseline in the same run, each with its design target (a plain
string is a summary line without ratios). `python -m bench scrape normalize` runs a subset.
"""

from __future__ import annotations

import importlib
import platform
import sys
import time
from pathlib import Path

from bench import Ratio, Summary

ORDER = ["scrape", "normalize", "hostile_engines", "webhook", "gpu_fault", "demo", "soak"]


def discover() -> list[str]:
    here = Path(__file__).parent
    found = {p.stem for p in here.glob("*.py") if not p.stem.startswith("_")}
    return [n for n in ORDER if n in found] + sorted(found - set(ORDER))


def run_one(name: str) -> tuple[Summary, bool]:
    """The bench's summary, and whether it ran at all (an exception is a failed bench)."""
    try:
        result = importlib.import_module(f"bench.{name}").main()
    except Exception as exc:
        return Summary(f"FAILED: {type(exc).__name__}: {exc}"), False
    return (result if isinstance(result, Summary) else Summary(str(result))), True


def verdict(ratio: Ratio) -> str:
    return {True: "met", False: "MISSED", None: ""}[ratio.met]


def main(argv: list[str]) -> int:
    names = argv or discover()
    rows: list[tuple[str, Summary, float]] = []
    failed = False
    for name in names:
        started = time.monotonic()
        summary, ran = run_one(name)
        failed |= not ran
        rows.append((name, summary, time.monotonic() - started))
        print(f"[bench] {name}: {summary.line}", file=sys.stderr, flush=True)
    print(
        f"\nInferwatch benchmarks, {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"{platform.processor() or platform.platform()}\n"
    )
    print("| bench | ratio (same run) | value | target | |")
    print("| --- | --- | --- | --- | --- |")
    for name, summary, _ in rows:
        if not summary.ratios:
            print(f"| {name} | (none: see its summary) | | | |")
        for r in summary.ratios:
            print(f"| {name} | {r.name} | {r.value:.2f}x | {r.target} | {verdict(r)} |")
    print("\n| bench | summary | took |")
    print("| --- | --- | --- |")
    for name, summary, took in rows:
        print(f"| {name} | {summary.line} | {took:.0f} s |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
