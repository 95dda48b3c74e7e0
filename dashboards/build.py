"""Build every dashboard: `python -m dashboards.build` (what `./run dashboards` runs).

Writes dashboards/generated/<uid>.json (sorted keys, stable uids and ids, so the committed files
only change when the code or the rules' thresholds do) and a layout preview per dashboard in
dashboards/preview/<uid>.png. `--check` writes nothing and exits 1 if a committed file is stale.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from dashboards import cuda_memory, fleet, gpu, remediation, serving
from dashboards.panels import Json

HERE = Path(__file__).resolve().parent
GENERATED = HERE / "generated"
PREVIEW = HERE / "preview"

DASHBOARDS: dict[str, Callable[[], Json]] = {
    fleet.UID: fleet.build,
    serving.UID: serving.build,
    gpu.UID: gpu.build,
    cuda_memory.UID: cuda_memory.build,
    remediation.UID: remediation.build,
}


def build_all() -> dict[str, Json]:
    return {uid: build() for uid, build in DASHBOARDS.items()}


def render(dashboard: Json) -> str:
    """The committed text of a dashboard: the one serialization the drift check compares."""
    return json.dumps(dashboard, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def stale(out_dir: Path = GENERATED) -> list[str]:
    """Files in out_dir that differ from a fresh build (missing or extra files included)."""
    fresh = {f"{uid}.json": render(d) for uid, d in build_all().items()}
    on_disk = {p.name for p in out_dir.glob("*.json")} if out_dir.is_dir() else set()
    changed = [
        name
        for name, text in fresh.items()
        if name not in on_disk or (out_dir / name).read_text() != text
    ]
    return sorted(changed + [name for name in on_disk if name not in fresh])


def write(out_dir: Path = GENERATED, preview_dir: Path | None = PREVIEW) -> list[Path]:
    dashboards = build_all()
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.json"):
        if old.stem not in dashboards:
            old.unlink()
    written = []
    for uid, dashboard in dashboards.items():
        path = out_dir / f"{uid}.json"
        path.write_text(render(dashboard))
        written.append(path)
    if preview_dir is not None:
        from dashboards.preview import draw_layout  # matplotlib only when previews are wanted

        preview_dir.mkdir(parents=True, exist_ok=True)
        for uid, dashboard in dashboards.items():
            written.append(draw_layout(dashboard, preview_dir / f"{uid}.png"))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.build", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report stale files")
    parser.add_argument("--no-preview", action="store_true", help="skip the PNG previews")
    args = parser.parse_args(argv)
    if args.check:
        changed = stale()
        for name in changed:
            print(f"stale: dashboards/generated/{name} (run ./run dashboards)", file=sys.stderr)
        return 1 if changed else 0
    for path in write(preview_dir=None if args.no_preview else PREVIEW):
        print(path.relative_to(HERE.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
