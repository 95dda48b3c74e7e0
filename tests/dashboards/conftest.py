"""Fixtures for the dashboard tests: one fresh build shared by the whole session."""

from __future__ import annotations

import pytest

from dashboards.build import build_all
from dashboards.panels import Json


@pytest.fixture(scope="session")
def dashboards() -> dict[str, Json]:
    return build_all()
