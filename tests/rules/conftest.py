"""Fixtures for the rules tests: the real promtool (Debian package `prometheus`)."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (./run setup installs the Debian package prometheus)")
    return path
