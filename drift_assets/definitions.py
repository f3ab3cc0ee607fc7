"""The code location: assembles assets, checks, resources, jobs and automation from the settings."""

from __future__ import annotations

from dagster import Definitions

from drift_assets.assets.demo import build_demo_assets
from drift_assets.assets.sources import build_source_assets
from drift_assets.resources import Warehouse, model_resource, rollout_engine_resource
from drift_assets.settings import Settings, load_settings


def build_definitions(settings: Settings) -> Definitions:
    assets = build_source_assets(settings)
    if settings.demo.enabled:
        assets += build_demo_assets(settings)
    return Definitions(
        assets=assets,
        resources={
            "io_manager": Warehouse(settings).io_manager(),
            "model": model_resource(settings),
            "rollout_engine": rollout_engine_resource(settings),
        },
    )


defs = build_definitions(load_settings())
