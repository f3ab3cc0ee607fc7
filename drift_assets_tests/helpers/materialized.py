"""What a materialization left: an asset's table in the warehouse and its latest metadata."""

import polars as pl
from dagster import AssetKey

from drift_assets.resources import Warehouse


def read(settings, name: str) -> pl.DataFrame:
    return Warehouse.from_settings(settings).scan(name).collect()


def latest_metadata(instance, name: str) -> dict:
    event = instance.get_latest_materialization_event(AssetKey(name))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}
