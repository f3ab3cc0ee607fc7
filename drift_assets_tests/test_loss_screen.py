"""benchmarks.loss_screen on a workspace written here: its noise AUCs against scipy's Mann-Whitney U."""

import numpy as np
import polars as pl
from scipy.stats import mannwhitneyu

from benchmarks.demo_warehouse import ground_truth_pool
from benchmarks.loss_screen import draw_aucs
from drift_assets.core.data.stored import ConfiguredTables
from drift_assets.resources import Warehouse


def test_the_screen_gives_each_losss_noise_auc_per_kind_of_noise(tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    category = ["correct"] * 40 + ["corrupted"] * 12 + ["format"] * 8
    corrupted = np.array([c != "correct" for c in category])
    ids = [f"row{i:03d}" for i in range(n)]
    base = rng.normal(1.0, 0.3, n) + 0.2 * corrupted  # nats per token
    warm = rng.normal(0.5, 0.3, n) + 0.6 * corrupted
    tokens = rng.integers(3, 9, n)
    warehouse = Warehouse(root=str(tmp_path / "warehouse"), storage_options={})
    warehouse.write("training_pool", pl.DataFrame({"example_id": ids, "is_corrupted": corrupted, "category": category}))
    losses = pl.DataFrame(
        {
            # 000150: a warm-up step no longer configured, whose partition Dagster left in the table
            "checkpoint": ["base"] * n + ["000050"] * n + ["000100"] * n + ["000150"] * n,
            "example_id": ids * 4,
            "loss": np.concatenate([base * tokens, (base + warm) / 2 * tokens, warm * tokens, -warm * tokens]),
            "n_tokens": np.concatenate([tokens] * 4),
        }
    )
    warehouse.write("training_gradient_projections", losses)

    tables = ConfiguredTables(warehouse, ("base", "000050", "000100"), n_shards=1)
    aucs = draw_aucs(tables, ground_truth_pool(warehouse))

    def oracle(loss: np.ndarray, noisy: np.ndarray) -> float:  # P(a clean row's loss < a noisy row's)
        clean = ~corrupted
        return mannwhitneyu(-loss[clean], -loss[noisy]).statistic / (clean.sum() * noisy.sum())

    assert set(aucs) == {(kind, at) for kind in ("all", "corrupted", "format") for at in ("base", "warm-up")}
    for kind, noisy in (
        ("all", corrupted),
        ("corrupted", np.array([c == "corrupted" for c in category])),
        ("format", np.array([c == "format" for c in category])),
    ):
        assert np.isclose(aucs[(kind, "base")], oracle(base, noisy))
        assert np.isclose(
            aucs[(kind, "warm-up")], oracle(warm, noisy)
        )  # the last configured checkpoint, not the middle one or the stale one
    assert aucs[("all", "warm-up")] > aucs[("all", "base")]  # the wider gap at the warm-up
