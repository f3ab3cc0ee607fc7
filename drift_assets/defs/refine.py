"""The refined dataset: every pool example with its score and whether it is selected."""

import math
import subprocess
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import polars as pl
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetIn,
    MetadataValue,
    asset,
    asset_check,
)

from drift_assets.core.attribution.guards import likelihood_agreement_guard
from drift_assets.core.attribution.selection import (
    best_selection,
    candidate_selections,
    likeliest_ranks,
    refined_table,
    select,
    selection_warning,
)
from drift_assets.core.data.publish import CARD_NAME, CardFacts, export_dataset, exported_files
from drift_assets.core.data.stored import one_row_per_example
from drift_assets.core.runtime.cost import CHOICE, StageCost, total
from drift_assets.core.study.stats import roc_auc
from drift_assets.core.training.evaluation import evaluate_models
from drift_assets.defs.checks import selection_result
from drift_assets.defs.cost import CostPlan, cost_metadata, recorded_pipeline_cost
from drift_assets.defs.evaluate import FineTuning, evaluation_run, fine_tune_job
from drift_assets.defs.gradients import PROJECTION_KEYS
from drift_assets.defs.metadata import rounded, score_picture, table_metadata
from drift_assets.defs.placement import GPU_STEP
from drift_assets.resources import ModelResource, RolloutEngineResource, Warehouse
from drift_assets.settings import REPO_ROOT, setting, setting_values, unhashed, versioned

REFINE_VERSION = "2"
# 3: a Hugging Face dataset: prompt/completion, rank, the unselected rows with their reason, a card
EXPORT_VERSION = "3"


@dataclass(frozen=True)
class Selection:
    method: str = setting("selection.method")
    fraction: float = setting("selection.fraction")
    k: int | None = setting("selection.k")
    choose_among: list[str] = setting("selection.choose_among")


@dataclass(frozen=True)
class Export:
    export_dir: str = setting("selection.export_dir")
    evaluation_columns: list[str] = setting("selection.evaluation_columns")
    # The settings that shaped the selection (given to the assets it comes from), key → value: the
    # dataset card names them, so the export is given them (and is versioned by them).
    shaping: dict[str, Any] = setting_values(
        *("data.max_example_tokens", "rollout", "grading", *PROJECTION_KEYS, "projection.validation_span"),
        *("warmup_schedule", "warmup.lora", "influence"),
        *("selection.method", "selection.fraction", "selection.k", "selection.choose_among"),
    )


@dataclass(frozen=True)
class RefineGiven:
    """Hashed by refined_dataset: the selection, and how choosing among selections fine-tunes (None: it
    does not choose); by refined_dataset_export: ``export``. Not hashed: where the export goes and what
    it may never write over, the model and checkpoints the card names, the cost plan."""

    selection: Selection
    choosing: FineTuning | None
    export: Export
    export_dir: str = unhashed("export_dir")
    inputs: dict[str, str | None] = unhashed("inputs")
    model_path: str = unhashed("model_path")
    checkpoints: list[str] = unhashed("checkpoints")
    cost: CostPlan


def build_refine_assets(given: RefineGiven) -> list:
    # Each asset's code version and metadata: the export's card names both versions.
    specs = {
        "refined_dataset": versioned(REFINE_VERSION, given.selection, given.choosing),
        "refined_dataset_export": versioned(EXPORT_VERSION, given.export),
    }
    refined_dataset = _refined_dataset_asset(given, specs["refined_dataset"])
    return [refined_dataset, *_selection_checks(given.selection, refined_dataset), _export_asset(given, specs)]


def _refined_dataset_asset(given: RefineGiven, spec: dict[str, Any]):
    """The pool with its scores and the selection (hashed: the selection, and how choosing fine-tunes)."""
    selection, chooses = given.selection, given.choosing is not None

    @asset(
        group_name="refinement",
        **spec,
        kinds={"polars", "delta"},
        # Where it chooses, the validation queries and what fine-tunes and decodes: the default graph is unchanged.
        ins={"validation_queries": AssetIn(dagster_type=pl.DataFrame)} if chooses else None,
        required_resource_keys={"model", "rollout_engine"} if chooses else None,
        **(GPU_STEP if chooses else {}),
        description="The pool with score, weight and selected flag; the selection is exported as chat JSONL and Parquet. "
        "With selection.choose_among, the selection (DRIFT's or another) whose fine-tuned model answers the most "
        "validation queries.",
    )
    def refined_dataset(
        context: AssetExecutionContext, training_pool: pl.DataFrame, influence_scores: pl.DataFrame, **chooser
    ) -> pl.DataFrame:
        problem = one_row_per_example(influence_scores, training_pool["example_id"], "influence_scores")
        if problem:  # a table an earlier release committed: nothing is selected from it
            raise ValueError(problem)
        selected = select(influence_scores, selection.method, selection.fraction, selection.k)
        candidates = candidate_selections(influence_scores, selected, selection.choose_among)
        choice = _choose(context, given.choosing, candidates, influence_scores, training_pool, chooser.get("validation_queries"))
        kept, ranked = (choice.chosen, choice.ranked(influence_scores)) if choice else ("drift", influence_scores)
        table = refined_table(training_pool, ranked, candidates[kept])
        chosen = table.filter("selected")
        metadata = _selection_metadata(table, chosen) | (choice.metadata() if choice else {})
        context.log.info(f"selected {chosen.height} of {table.height} examples ({selection.method})")
        warning = selection_warning(selection.method, selection.k, table.height, chosen.height, selection.fraction)
        if warning:
            context.log.warning(warning)
            metadata["warning"] = warning
        # What the refinement cost, as its steps recorded it (the evaluation, downstream, is not yet run),
        # with this step's own fine-tunes where it chose among selections (and their cost apart).
        cost = recorded_pipeline_cost(context.instance, given.cost, training_pool, before="refined_dataset")
        if choice is not None:
            cost = cost.with_part(choice.cost)
            metadata.update(choice.cost.metadata(cost.reference))
        context.log.info("cost: " + "; ".join(cost.lines()))
        context.add_output_metadata(metadata | cost_metadata(cost))
        return table

    return refined_dataset


def _selection_checks(selection: Selection, refined_dataset) -> list:
    """The selection's blocking check (its size and rows) and its warning check (its agreement with a loss filter)."""

    @asset_check(
        asset=refined_dataset,
        blocking=True,
        additional_ins={"training_pool": AssetIn("training_pool")},
        description="The selection is a subset of the pool, every example appears once, and the size matches the settings.",
    )
    def refined_dataset_selection(
        context: AssetCheckExecutionContext, refined_dataset: pl.DataFrame, training_pool: pl.DataFrame
    ) -> AssetCheckResult:
        if selection.method == "top_fraction":
            expected = math.ceil(selection.fraction * training_pool.height)
        elif selection.method == "top_k":
            expected = min(selection.k, training_pool.height)
        else:
            expected = int((refined_dataset["score"] > 0).sum())
        if "full" in selection.choose_among and refined_dataset["selected"].all():  # the whole pool, chosen
            expected = training_pool.height
        return selection_result(refined_dataset, training_pool, expected)

    @asset_check(
        asset=refined_dataset,
        additional_ins={"influence_scores": AssetIn("influence_scores")},
        description="The selection shares more rows with a loss filter of the same size than a random one would "
        "(a warning, with the advice to run method_benchmark, where it does not).",
    )
    def refined_dataset_agrees_with_likelihood(
        context: AssetCheckExecutionContext, refined_dataset: pl.DataFrame, influence_scores: pl.DataFrame
    ) -> AssetCheckResult:
        losses = dict(zip(influence_scores["example_id"], influence_scores["loss_per_token"], strict=True))
        passed, message = likelihood_agreement_guard(refined_dataset.filter("selected")["example_id"], losses)
        if not passed:
            context.log.warning(message)
        return AssetCheckResult(passed=passed, severity=AssetCheckSeverity.WARN, metadata={"message": message})

    return [refined_dataset_selection, refined_dataset_agrees_with_likelihood]


def _export_asset(given: RefineGiven, specs: dict[str, dict[str, Any]]):
    """The selection written out as a Hugging Face dataset with its card (hashed: the export's settings)."""

    @asset(
        group_name="refinement",
        **specs["refined_dataset_export"],
        kinds={"polars", "delta"},
        description="The export folder as a Hugging Face dataset (selection.export_dir): the selection (train split) and "
        "the rows left out with their reason (unselected split), in TRL's prompt/completion format, and a README.md "
        "dataset card; `python -m drift_assets push --repo user/name` uploads it. Written only after refined_dataset "
        "is committed and its selection check passed.",
    )
    def refined_dataset_export(
        context: AssetExecutionContext, refined_dataset: pl.DataFrame, warehouse: Warehouse
    ) -> pl.DataFrame:
        facts = card_facts(given, {name: spec["code_version"] for name, spec in specs.items()}, warehouse, context.run_id)
        paths = export_dataset(
            refined_dataset,
            given.export_dir,
            facts,
            evaluation_only=given.export.evaluation_columns,
            inputs=given.inputs,
            previously_exported=_previous_export(warehouse),
        )
        table = exported_files(paths, refined_dataset)
        n_selected = int(refined_dataset["selected"].sum())
        context.log.info(
            f"exported {n_selected} selected and {refined_dataset.height - n_selected} unselected examples with a dataset card to {given.export_dir}"
        )
        context.add_output_metadata(
            {
                **table_metadata(table),
                "export_dir": MetadataValue.path(given.export_dir),
                "dataset_card": MetadataValue.md(Path(paths[CARD_NAME]).read_text().split("---\n", 2)[-1]),
            }
        )
        return table

    return refined_dataset_export


@dataclass(frozen=True)
class ValidatedChoice:
    """Each candidate selection's fine-tuned model's accuracy on the validation queries, and what
    their fine-tunes and decoding cost."""

    accuracies: dict[str, float]
    cost: StageCost

    @property
    def chosen(self) -> str:
        return best_selection(self.accuracies)

    def ranked(self, scores: pl.DataFrame) -> pl.DataFrame:
        """``scores`` with ``rank`` the order the kept selection takes: the loss filter's, where it was kept."""
        return scores.with_columns(likeliest_ranks(scores)) if self.chosen == "loss" else scores

    def metadata(self) -> dict:
        return {"selection_chosen": self.chosen} | {
            f"validation_accuracy_{name}": rounded(value) for name, value in self.accuracies.items()
        }


def _choose(
    context: AssetExecutionContext,
    choosing: FineTuning | None,
    candidates: dict[str, pl.Series],
    scores: pl.DataFrame,
    training_pool: pl.DataFrame,
    validation_queries: pl.DataFrame | None,
) -> ValidatedChoice | None:
    """Each candidate selection fine-tuned (the model resource's base model) and decoded on the
    validation queries (the rollout-engine resource's evaluation engine); None where DRIFT's is the
    only candidate. Each fine-tune takes its rows in example_id order, as the method benchmark's do."""
    if len(candidates) == 1:
        return None
    model: ModelResource = context.resources.model
    rollout_engine: RolloutEngineResource = context.resources.rollout_engine
    log = context.log.info
    messages = dict(zip(training_pool["example_id"], training_pool["messages"], strict=True))
    queries = validation_queries.select("query_id", "prompt", "reference", "grader").to_dicts()
    seed, sft, decoding = choosing.seeds[0], choosing.sft, choosing.decoding
    jobs = [
        fine_tune_job(sft, decoding, model, queries, name, [messages[i] for i in sorted(scores.filter(mask)["example_id"])], seed)
        for name, mask in candidates.items()
    ]
    evaluated = evaluate_models(jobs, evaluation_run(decoding, model, rollout_engine, log), log)
    choice = ValidatedChoice({name: evaluated.accuracy(name) for name in candidates}, total(evaluated.costs, CHOICE))
    log(f"selection: {choice.chosen}'s kept, of " + ", ".join(f"{n} {a:.3f}" for n, a in choice.accuracies.items()))
    return choice


def _selection_metadata(table: pl.DataFrame, chosen: pl.DataFrame) -> dict:
    """The selection's preview (the row count is the whole pool's), its size and score distribution;
    where the pool marks its corrupted rows, how well the score tells them apart and how many are selected."""
    metadata = {
        **table_metadata(chosen, preview_columns=["rank", "score", "prompt", "response"]),
        "dagster/row_count": table.height,
        "selected": chosen.height,
        "selected_share": rounded(chosen.height / table.height if table.height else 0.0),
        "score_distribution": score_picture(table),
    }
    if "is_corrupted" in table.columns:
        metadata["noise_auc"] = rounded(roc_auc(table["score"].to_numpy(), ~table["is_corrupted"].to_numpy().astype(bool)))
        metadata["corrupted_share_pool"] = rounded(table["is_corrupted"].mean())
        metadata["corrupted_share_selected"] = rounded(chosen["is_corrupted"].mean()) if chosen.height else None
    return metadata


def card_facts(given: RefineGiven, code_versions: dict[str, str], warehouse: Warehouse, run_id: str) -> CardFacts:
    """What the dataset card says of how the selection was made: the model, the shaping settings, the
    code versions, the package and commit, the run."""
    return CardFacts(
        model_path=given.model_path,
        model_fingerprint=_scored_model_fingerprint(warehouse),
        settings=given.export.shaping,
        code_versions=code_versions,
        package_version=_package_version(),
        git_commit=_git_commit(),
        run_id=run_id,
        selection_method=given.selection.method,
        checkpoints=given.checkpoints,
    )


def _previous_export(warehouse: Warehouse) -> dict[str, str] | None:
    """path → content hash of the files this asset's previous table records: exports made before the
    export folder had a manifest, which the export may replace (None: no readable table)."""
    if not warehouse.exists("refined_dataset_export"):
        return None
    try:
        previous = warehouse.scan("refined_dataset_export").select("path", "sha256").collect()
    except Exception:  # a damaged table only loses this fallback: the manifest is the record
        return None
    return dict(zip(previous["path"], previous["sha256"], strict=True))


def _scored_model_fingerprint(warehouse: Warehouse) -> str | None:
    """The fingerprint of the model the base checkpoint's rollouts were sampled from (None: no rollouts table)."""
    if not warehouse.exists("rollouts"):
        return None
    first = warehouse.scan("rollouts").filter(pl.col("checkpoint") == "base").select("model_fingerprint").head(1).collect()
    return first["model_fingerprint"][0] if first.height else None


def _package_version() -> str:
    try:
        return version("drift_assets")
    except PackageNotFoundError:
        return "(not installed)"


def _git_commit() -> str | None:
    """The commit of the checkout the code runs from (with -dirty for uncommitted changes), or None."""
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None
