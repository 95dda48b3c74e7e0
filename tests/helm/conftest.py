"""Render the chart with a real helm binary (installed by `./run setup`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "inferwatch"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
CRDS = Path(__file__).parent / "crds"
# The rendered dashboards are large; libyaml parses them many times faster.
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def helm_binary() -> str:
    for candidate in (Path(sys.executable).parent / "helm", shutil.which("helm")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail("helm not found: run ./run setup (it installs .venv/bin/helm)")


class HelmError(Exception):
    """helm exited non-zero; the message is its stderr."""


@dataclass(frozen=True)
class Helm:
    binary: str
    env: dict[str, str]
    workdir: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.binary, *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
            check=False,
        )

    def template(
        self,
        values: dict[str, Any] | None = None,
        *,
        values_files: tuple[Path, ...] = (),
        chart: Path = CHART,
        namespace: str = "monitoring",
        release: str = "inferwatch",
    ) -> list[dict[str, Any]]:
        """Rendered manifests, parsed; raises HelmError with helm's message on failure."""
        args = ["template", release, str(chart), "--namespace", namespace]
        for path in values_files:
            args += ["-f", str(path)]
        if values is not None:
            path = self.workdir / f"values-{os.urandom(4).hex()}.yaml"
            path.write_text(yaml.safe_dump(values))
            args += ["-f", str(path)]
        proc = self.run(*args)
        if proc.returncode != 0:
            raise HelmError(proc.stderr.strip())
        return [doc for doc in yaml.load_all(proc.stdout, Loader=LOADER) if doc]


def make_helm(home: Path) -> Helm:
    """The real helm binary with its home, cache, config and data under `home`."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    return Helm(helm_binary(), env, home)


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return make_helm(tmp_path_factory.mktemp("helm-home"))


@pytest.fixture
def chart_copy(tmp_path: Path) -> Iterator[Path]:
    """A private copy of the chart whose files/ a test may change."""
    dest = tmp_path / "inferwatch"
    shutil.copytree(CHART, dest)
    yield dest


def kinds(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = kinds(docs).get(kind, [])
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def crd_schema(name: str) -> dict[str, Any]:
    return json.loads((CRDS / f"{name}.json").read_text())
