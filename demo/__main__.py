"""`./run demo [--scenario NAME]`: the whole Inferwatch loop on one machine, live.

Every scenario gets a fresh stack on 127.0.0.1: llama-server replicas run by the remediator's
local backend, the exporter (simulated GPUs + the real engines), Prometheus with the project's
rules rendered through the Helm chart, Alertmanager routing to the remediator, and a load
generator. Results go to demo/out/ (report.json, timeline.png, results.md, logs under work/).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.live import Live

from demo import report
from demo.observe import Timeline
from demo.replica import LIGHT_MODEL, MAIN_MODEL, model_path
from demo.scenarios import SCENARIOS, Result, run_scenario
from demo.ui import LiveView
from harness import services
from harness.stack import stop_all

OUT = Path(__file__).resolve().parent / "out"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="./run demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="scenarios:\n" + "\n".join(f"  {s.name:14} {s.title}" for s in SCENARIOS.values()),
    )
    p.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        metavar="NAME",
        help="run only this scenario (repeatable); default: all, in order",
    )
    p.add_argument("--out", type=Path, default=OUT, help="output directory (default demo/out)")
    p.add_argument(
        "--no-live", action="store_true", help="plain log lines instead of the live view"
    )
    return p.parse_args(argv)


def preflight(console: Console) -> None:
    """Fail early, with the fix, if set-up is missing."""
    missing = []
    for binary in ("prometheus", "prometheus-alertmanager"):
        if shutil.which(binary) is None:
            missing.append(f"{binary} (Debian package; ./run setup installs it)")
    if services.llama_server_binary() is None:
        missing.append("llama-server (./run setup builds it)")
    for choice in (MAIN_MODEL, LIGHT_MODEL):
        try:
            path = model_path(choice.name)
            console.print(f"[dim]model {choice.name}: {path}[/dim]")
        except SystemExit as exc:
            missing.append(str(exc))
    if missing:
        raise SystemExit("demo: missing set-up:\n  " + "\n  ".join(missing))


async def run_all(args: argparse.Namespace, console: Console) -> list[Result]:
    names = args.scenario or list(SCENARIOS)
    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    timeline = Timeline()
    view = LiveView()
    results: list[Result] = []
    live = not args.no_live and console.is_terminal

    def say(line: str) -> None:
        stamped = f"[{timeline.now():6.1f}s] {line}"
        if live:
            view.say(stamped)
        else:
            console.print(stamped, highlight=False)

    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    live_ctx = Live(view, console=console, refresh_per_second=4) if live else None
    try:
        with live_ctx or contextlib.nullcontext():
            for name in names:
                scenario = SCENARIOS[name]
                say(f"== {scenario.title} ==")
                results.append(
                    await run_scenario(scenario, work, timeline, say=say, on_run=view.attach)
                )
    finally:
        if results:
            args.out.mkdir(parents=True, exist_ok=True)
            report.write_report(results, args.out / "report.json")
            (args.out / "results.md").write_text(report.markdown_table(results) + "\n")
            report.write_timeline_json(timeline, args.out / "timeline.json")
            report.write_timeline_png(timeline, results, args.out / "timeline.png")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # Piped output (CI logs) gets a wide table instead of rich's 80-column default.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    preflight(console)
    try:
        results = asyncio.run(run_all(args, console))
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("[yellow]interrupted; every process was stopped[/yellow]")
        return 130
    finally:
        stop_all()
    console.print(report.results_table(results))
    console.print(f"report: {args.out / 'report.json'}   timeline: {args.out / 'timeline.png'}")
    ok = all(r.recovered and not r.unexpected_alerts and not r.unexpected_actions for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
