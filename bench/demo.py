"""The demo's detection and recovery times per scenario, as one summary line.

Running every scenario takes minutes, so this reads the last `./run demo` report
(demo/out/report.json) when there is one and says so; without one it runs the two shortest
scenarios (hung-replica, surge) through the demo code into bench/out/demo/ and reports those.
Times are seconds from fault injection: detection (the intended alert fired) and recovery.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LAST_REPORT = REPO / "demo" / "out" / "report.json"
OUT = REPO / "bench" / "out" / "demo"


def _summary(scenarios: list[dict[str, Any]], source: str) -> str:
    parts = []
    for s in scenarios:
        inj = s.get("injected_at")
        if inj is None:
            parts.append(f"{s['name']}: {'quiet' if s.get('recovered') else 'NOT quiet'}")
            continue
        det = s.get("detected_at")
        rec = s.get("recovered_at")
        detect = f"detect {det - inj:.0f}s" if det is not None else "not detected"
        recover = f"recover {rec - inj:.0f}s" if rec is not None else "not recovered"
        parts.append(f"{s['name']}: {detect}, {recover}")
    return f"demo ({source}): " + "; ".join(parts)


def _run_short() -> list[dict[str, Any]]:
    from demo.observe import Timeline
    from demo.scenarios import SCENARIOS, run_scenario

    async def run() -> list[dict[str, Any]]:
        timeline = Timeline()
        results = []
        for name in ("hung-replica", "surge"):
            result = await run_scenario(SCENARIOS[name], OUT, timeline, say=lambda _: None)
            results.append(result.report())
        return results

    return asyncio.run(run())


def main() -> str:
    if LAST_REPORT.is_file():
        scenarios = json.loads(LAST_REPORT.read_text())["scenarios"]
        return _summary(scenarios, "last ./run demo report")
    return _summary(_run_short(), "hung-replica + surge run now")


if __name__ == "__main__":
    print(main())
