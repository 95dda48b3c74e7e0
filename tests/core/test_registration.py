"""Registration is the source of truth: the config sections, the generated docs/schemas, the
`--engine` choices and the published families all follow the collectors' and engines'
declarations, and drift between them fails here."""

from __future__ import annotations

import asyncio
import typing
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.core import Metric

from exporter import generate
from exporter.app import create_app, store_key
from exporter.catalog import MetricSpec
from exporter.collectors import COLLECTORS
from exporter.config import CollectorsConfig, ExporterConfig
from exporter.engines.registry import ENGINE_NAMES

AiohttpClient = Callable[[web.Application], Any]


def test_generated_files_are_fresh() -> None:
    assert generate.stale() == [], "run: python -m exporter.generate (and commit the result)"


def test_every_registered_collector_has_its_config_section_and_no_other() -> None:
    hints = typing.get_type_hints(CollectorsConfig)
    assert set(CollectorsConfig.model_fields) == set(COLLECTORS)
    for name, cls in COLLECTORS.items():
        assert hints[name] is cls.settings_model, name
        assert cls.metrics, f"collector {name} declares no metrics"


def test_engine_choices_are_the_registered_engines() -> None:
    from exporter.engines.cli import _parser

    engine = next(a for a in _parser()._actions if "--engine" in a.option_strings)
    assert list(engine.choices or []) == ["auto", *ENGINE_NAMES]


def test_a_generated_block_is_replaced_and_a_missing_one_is_an_error() -> None:
    text = "a\n<!-- generated: metrics x -->\nold\n<!-- end generated -->\nb\n"
    assert generate.replace_block(text, "metrics x", "new\n") == text.replace("old", "new")
    with pytest.raises(ValueError, match="metrics y"):
        generate.replace_block(text, "metrics y", "")


def _check(family: Metric, spec: MetricSpec) -> None:
    assert family.type == spec.type, family.name
    assert family.documentation == spec.help, family.name
    for sample in family.samples:
        assert set(sample.labels) - {"le"} == set(spec.labels), sample


@pytest.mark.parametrize("scenario", ["default", "mig"])
async def test_published_families_are_exactly_the_declared_ones(
    aiohttp_client: AiohttpClient, scenario: str
) -> None:
    cfg = ExporterConfig.model_validate(
        {"simulate": scenario, "collectors": {"gpu": {"interval_seconds": 0.1}}}
    )
    app = create_app(cfg)
    await aiohttp_client(app)
    store = app[store_key]
    for _ in range(200):  # bounded: until every collector published once
        if store.ready:
            break
        await asyncio.sleep(0.05)
    for name in ("gpu", "cuda_allocator"):
        declared = {spec.name: spec for spec in COLLECTORS[name].metrics}
        families = store.status[name].snapshot.families
        assert families, name
        for family in families:
            assert family.name in declared, f"{name} publishes undeclared {family.name}"
            _check(family, declared[family.name])
