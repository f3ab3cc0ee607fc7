"""A run's cost in the Dagster layer: the reference SFT run, the stage costs the assets recorded in
their metadata read back from the instance, and the picture of the split by stage.

The figures and their sum are :mod:`drift_assets.core.runtime.cost`'s; this reads them where Dagster keeps
them (the latest materialization of each configured partition).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, MetadataValue, MultiPartitionKey

from drift_assets.core.gradients.tables import shard_keys
from drift_assets.core.runtime.cost import (
    EVALUATION,
    STAGE_OF_ASSET,
    PipelineCost,
    Recorded,
    StageCost,
    pipeline_cost,
    training_cost,
)
from drift_assets.defs.figures import pyplot
from drift_assets.defs.metadata import png_markdown
from drift_assets.settings import SftSettings, unhashed


def pool_sequence_tokens(pool: pl.DataFrame) -> list[int]:
    """Each pool example's tokens as the model sees it (prompt + response)."""
    return (pool["n_prompt_tokens"] + pool["n_response_tokens"]).to_list()


@dataclass(frozen=True)
class CostPlan:
    """What the cost metadata reads, not hashed (it changes no table): the reference SFT recipe and
    the configured partitions of the assets that record a cost."""

    sft: SftSettings = unhashed("benchmark.sft")
    checkpoints: list[str] = unhashed("checkpoints")
    shards: int = unhashed("projection.shards")
    choose_among: list[str] = unhashed("selection.choose_among")
    test_queries: str | None = unhashed("data.test_queries")


def full_sft_reference(sft: SftSettings, pool: pl.DataFrame) -> StageCost:
    """One SFT run on the whole pool with the recipe ``sft`` (``benchmark.sft``): what every cost is set against."""
    tokens = pool_sequence_tokens(pool)
    return training_cost("full-pool SFT", tokens, sft.options(0).steps_for(len(tokens)), sft.batch_size)


def stored_reference(sft: SftSettings, warehouse) -> StageCost | None:
    """:func:`full_sft_reference` of the pool in the warehouse (None before it is materialized): for
    the assets that do not read the pool themselves."""
    if not warehouse.exists("training_pool"):
        return None
    return full_sft_reference(sft, warehouse.scan("training_pool").select("n_prompt_tokens", "n_response_tokens").collect())


def costed_partitions(plan: CostPlan, before: str | None = None) -> list[tuple[str, str | None, str | None]]:
    """(asset, partition, checkpoint) of every configured partition of the assets that record a cost,
    in pipeline order (``refined_dataset`` where it chooses among selections, ``refined_model_evaluation``
    where test queries are set); ``before``: only the assets ahead of this one in the pipeline (what
    had run when it runs)."""
    checkpoints, shards = plan.checkpoints, shard_keys(plan.shards)
    wanted: list[tuple[str, str | None, str | None]] = [("warmup_checkpoints", key, key) for key in checkpoints[1:]]
    for checkpoint in checkpoints:
        wanted += [(name, checkpoint, checkpoint) for name in ("rollouts", "projection_basis", "validation_gradients")]
        wanted += [
            ("training_gradient_projections", str(MultiPartitionKey({"checkpoint": checkpoint, "shard": shard})), checkpoint)
            for shard in shards
        ]
    wanted.append(("influence_scores", None, None))
    if plan.choose_among:
        wanted.append(("refined_dataset", None, None))
    if plan.test_queries:
        wanted.append(("refined_model_evaluation", None, None))
    if before is None:
        return wanted
    order = list(STAGE_OF_ASSET)  # the costed assets in pipeline order
    return [part for part in wanted if order.index(part[0]) < order.index(before)]


def recorded_costs(instance: DagsterInstance, plan: CostPlan, before: str | None = None) -> list[Recorded]:
    """What the latest materialization of each partition :func:`costed_partitions` names recorded."""
    recorded = []
    for asset, partition, checkpoint in costed_partitions(plan, before):
        records = instance.fetch_materializations(
            AssetRecordsFilter(AssetKey(asset), asset_partitions=[partition] if partition is not None else None), limit=1
        ).records
        entry = records[0].event_log_entry if records else None
        event = entry.asset_materialization if entry is not None else None
        figures = {key: value.value for key, value in event.metadata.items()} if event is not None else {}
        recorded.append(Recorded(asset, partition, checkpoint, entry.run_id if entry is not None else None, figures))
    return recorded


def recorded_pipeline_cost(
    instance: DagsterInstance, plan: CostPlan, pool: pl.DataFrame, before: str | None = None, whole: bool = False
) -> PipelineCost:
    """The pipeline's cost as its latest materializations recorded it, against one full-pool SFT run
    (``before``: of the assets ahead of this one only; ``whole``: each table's cost from scratch, where
    a materialization reused stored rows)."""
    return pipeline_cost(recorded_costs(instance, plan, before), full_sft_reference(plan.sft, pool), whole)


def cost_plot(cost: PipelineCost) -> MetadataValue:
    """Each stage's token passes as a multiple of one full-pool SFT run (the evaluation apart, in
    grey), with that run marked: a PNG the UI opens from its "[Show Markdown]" button."""
    rows = [row for row in cost.rows() if row["stage"] != "pipeline"]
    labels = [f"{row['stage']} ({row['wall_seconds'] or 0:.0f} s)" for row in rows]
    ratios = [row["vs_full_sft"] or 0.0 for row in rows]
    colours = ["#bdbdbd" if row["stage"] == EVALUATION else "#3182bd" for row in rows]
    figure, axes = pyplot().subplots(figsize=(6.5, 0.45 * len(rows) + 1.4))
    positions = range(len(rows))[::-1]
    axes.barh(list(positions), ratios, color=colours)
    axes.set_yticks(list(positions), labels)
    axes.axvline(1.0, color="grey", linestyle="--", label="one full-pool SFT run")
    ratio = cost.ratio()
    axes.set_title(
        f"the pipeline: {ratio:.2f}× one full-pool SFT run" if ratio is not None else "the pipeline's cost by stage", fontsize=10
    )
    axes.set_xlabel("token passes, × one full-pool SFT run (evaluation apart, grey)")
    axes.legend(loc="lower right", fontsize=8)
    return png_markdown(figure, "the pipeline's cost by stage")  # closes the figure


def cost_metadata(cost: PipelineCost) -> dict[str, object]:
    """The pipeline's cost as an asset's metadata: its total, the split by stage, and its picture."""
    whole = cost.total
    ratio = cost.ratio()
    return {
        "pipeline_token_passes": whole.token_passes,
        "pipeline_cost_vs_full_sft": None if ratio is None else round(ratio, 3),
        "pipeline_wall_seconds": round(whole.wall_seconds or 0.0, 1),
        "cost_by_stage": MetadataValue.md(cost.markdown()),
        "cost_plot": cost_plot(cost),
    }
