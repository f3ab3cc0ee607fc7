"""How well the pool's loss per response token separates its noise, at the base model and at the
warm-up's last checkpoint, per task and kind of noise: the noise AUC (clean rows ranked first by the
lower loss) over the draws of the suite's workspaces (after ``benchmarks.suite`` ran them).

    .venv/bin/python -m benchmarks.loss_screen --tasks choice,sort --draws 18,19,20
"""

from __future__ import annotations

import argparse
import statistics

import polars as pl

from benchmarks.demo_warehouse import ground_truth_pool
from benchmarks.suite import workspace
from drift_assets.core.attribution.trajectory import BASE
from drift_assets.core.data.stored import ConfiguredTables, losses_along
from drift_assets.core.study.stats import roc_auc
from drift_assets.resources import Warehouse
from drift_assets.settings import load_settings


def draw_aucs(tables: ConfiguredTables, pool: pl.DataFrame) -> dict[tuple[str, str], float]:
    """(kind of noise or ``all``, ``base`` or ``warm-up``) -> the noise AUC of that loss on one draw:
    the stored losses of ``pool`` (with its hidden ``is_corrupted`` and ``category``) at the base model
    and at the last configured checkpoint."""
    losses = losses_along(tables, pool)
    rows = pool.select("example_id", "is_corrupted", "category")
    for name, checkpoint in (("base", BASE), ("warm-up", tables.checkpoints[-1])):
        at = losses.filter(pl.col("checkpoint") == checkpoint).select("example_id", pl.col("loss_per_token").alias(name))
        rows = rows.join(at, on="example_id")
    aucs = {}
    kinds = ["all", *sorted(set(rows.filter(pl.col("is_corrupted"))["category"]))]
    for kind in kinds:
        part = rows if kind == "all" else rows.filter(~pl.col("is_corrupted") | (pl.col("category") == kind))
        for name in ("base", "warm-up"):
            aucs[(kind, name)] = roc_auc(-part[name].to_numpy(), (~part["is_corrupted"]).to_numpy())
    return aucs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", required=True, help="comma-separated task names")
    parser.add_argument("--draws", default="0,1,2,3", help="comma-separated draws the suite ran")
    args = parser.parse_args()
    for task in args.tasks.split(","):
        per_draw = []
        for draw in map(int, args.draws.split(",")):
            settings = load_settings(workspace(task, draw) / "settings.yaml")
            warehouse = Warehouse.from_settings(settings)
            per_draw.append(draw_aucs(ConfiguredTables.configured_by(settings, warehouse), ground_truth_pool(warehouse)))
        cells = [
            f"{kind} {statistics.mean(d[(kind, 'base')] for d in per_draw):.2f}→{statistics.mean(d[(kind, 'warm-up')] for d in per_draw):.2f}"
            for kind in dict.fromkeys(kind for kind, _ in per_draw[0])
        ]
        print(f"{task}: noise AUC of the loss per token, base → warm-up's last checkpoint: " + ", ".join(cells))


if __name__ == "__main__":
    main()
