"""Soak: does the exporter's memory stay flat when everything it tracks keeps changing?

The simulated exporter (`--simulate churn`: 8 GPUs, 64 processes that all exit every second and
come back with new PIDs in new pods) plus 16 engine targets, every collector refreshing every
second, for 10 minutes (`--seconds` or SOAK_SECONDS for a quick check). RSS is sampled every
second; after a warm-up (the first fifth of the run, at least 90 s) the growth ratio
RSS(end) / RSS(end of warm-up) must stay under 1.05. A bench, not a test: it prints one line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import Ratio, Summary  # noqa: E402 - after the path fix, for the script form
from bench.scrape import (  # noqa: E402
    ENGINES,
    LOOPBACK,
    _child,
    _free_port,
    _rss_mb,
    _scrape_times,
    _stop,
)
from harness import services  # noqa: E402

DEFAULT_SECONDS = 600.0
REFRESH_SECONDS = 1.0
TARGET_GROWTH = 1.05


def _config(path: Path, port: int, engines_port: int) -> None:
    targets = [
        {"url": f"http://{LOOPBACK}:{engines_port}/e{i}/metrics", "name": f"engine-{i}"}
        for i in range(ENGINES)
    ]
    every = {"interval_seconds": REFRESH_SECONDS, "timeout_seconds": REFRESH_SECONDS}
    cfg = {
        "listen": f"{LOOPBACK}:{port}",
        "simulate": "churn",
        "log_level": "warning",
        "collectors": {
            "gpu": every,
            "cuda_allocator": every,
            "llm": {**every, "targets": targets, "target_timeout_seconds": 0.9},
        },
    }
    path.write_text(json.dumps(cfg))  # JSON is YAML


def run(seconds: float) -> Summary:
    warm_up = max(90.0, seconds / 5)  # past the pod resolver's 60 s horizon
    with tempfile.TemporaryDirectory(prefix="inferwatch-soak-") as tmp:
        work = Path(tmp)
        log = work / "children.log"
        engines_port, port = _free_port(), _free_port()
        config = work / "exporter.yaml"
        _config(config, port, engines_port)
        engines = _child(["--serve", "engines", "--port", str(engines_port)], log)
        exporter = services.exporter(work, port, simulate=None, config=config).spawn()
        try:
            exporter.wait_ready(60)
            started = time.monotonic()
            samples: list[tuple[float, float]] = []
            while (elapsed := time.monotonic() - started) < seconds:
                _scrape_times(port, 1)  # a scraper, as in production
                samples.append((elapsed, _rss_mb(exporter.pid)))
                time.sleep(max(0.0, 1.0 - (time.monotonic() - started - elapsed)))
            if not exporter.alive():
                raise RuntimeError(f"the exporter exited:\n{exporter.tail()}")
        except Exception:
            sys.stderr.write(log.read_text(errors="replace")[-4000:])
            raise
        finally:
            _stop(exporter, engines)
    after_warm_up = [rss for t, rss in samples if t >= warm_up]
    base = after_warm_up[0]
    growth = after_warm_up[-1] / base
    peak = max(after_warm_up) / base
    ok = growth < TARGET_GROWTH
    line = (
        f"RSS growth after warm-up {growth:.3f}x (target <{TARGET_GROWTH}x; peak {peak:.3f}x): "
        f"{base:.1f} -> {after_warm_up[-1]:.1f} MB over {seconds - warm_up:.0f} s after a "
        f"{warm_up:.0f} s warm-up; 8 GPUs, 64 processes replaced by new PIDs in new pods every "
        f"second, {ENGINES} engine targets, every collector refreshing every "
        f"{REFRESH_SECONDS:g} s; {'target met' if ok else 'TARGET MISSED'}"
    )
    return Summary(line, (Ratio("soak RSS end / after warm-up", growth, at_most=TARGET_GROWTH),))


def main(argv: Sequence[str] | None = None) -> Summary:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    env = os.environ.get("SOAK_SECONDS")
    p.add_argument("--seconds", type=float, default=float(env) if env else DEFAULT_SECONDS)
    args = p.parse_args([] if argv is None else argv)
    return run(args.seconds)


if __name__ == "__main__":
    print(main(sys.argv[1:]).line)
