"""`./run bench`: run every bench script and print one table of their summary lines.

Each bench/<name>.py exposes `main() -> str` returning its one summary line (ratios against a
baseline measured in the same run). `python -m bench scrape normalize` runs a subset.
"""

from __future__ import annotations

import importlib
import platform
import sys
import time
from pathlib import Path

ORDER = ["scrape", "normalize", "webhook", "demo"]


def discover() -> list[str]:
    here = Path(__file__).parent
    found = {p.stem for p in here.glob("*.py") if not p.stem.startswith("_")}
    return [n for n in ORDER if n in found] + sorted(found - set(ORDER))


def main(argv: list[str]) -> int:
    names = argv or discover()
    rows: list[tuple[str, str, float]] = []
    failed = False
    for name in names:
        started = time.monotonic()
        try:
            line = importlib.import_module(f"bench.{name}").main()
        except Exception as exc:
            line, failed = f"FAILED: {type(exc).__name__}: {exc}", True
        rows.append((name, line, time.monotonic() - started))
        print(f"[bench] {name}: {line}", file=sys.stderr, flush=True)
    width = max(len(n) for n, _, _ in rows)
    print(
        f"\nInferwatch benchmarks, {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"{platform.processor() or platform.platform()}"
    )
    print(f"| {'bench'.ljust(width)} | result | took |")
    print(f"| {'-' * width} | --- | --- |")
    for name, line, took in rows:
        print(f"| {name.ljust(width)} | {line} | {took:.0f} s |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
