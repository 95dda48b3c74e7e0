"""`python -m exporter.probe install-pth|uninstall-pth [--target DIR]`.

A .pth file only runs from a site-packages directory itself, not from inside a package, so this
copies the packaged hook there (default: this interpreter's purelib). The hook does nothing unless
INFERWATCH_PROBE_DIR is set.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import sysconfig
from pathlib import Path

PTH_NAME = "inferwatch-probe.pth"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporter.probe")
    parser.add_argument("action", choices=["install-pth", "uninstall-pth"])
    parser.add_argument("--target", help="site-packages directory (default: this interpreter's)")
    args = parser.parse_args(argv)
    target = Path(args.target or sysconfig.get_paths()["purelib"])
    destination = target / PTH_NAME
    try:
        if args.action == "install-pth":
            shutil.copyfile(Path(__file__).with_name(PTH_NAME), destination)
            print(f"installed {destination}")
        else:
            destination.unlink(missing_ok=True)
            print(f"removed {destination}")
    except OSError as exc:
        print(f"error: {destination}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
