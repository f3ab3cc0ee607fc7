"""What each stage of the pipeline is given, built from the settings: :func:`~drift_assets.settings.given`
fills the fields that hold a setting (an asset's code version hashes those it is given), and the rest
(locations, layout, what checks and cost metadata read) is named here, not hashed.
"""

from __future__ import annotations

from drift_assets.defs.benchmark import BenchmarkGiven, OnPolicySpan
from drift_assets.defs.cost import CostPlan
from drift_assets.defs.demo import DemoGiven, DemoTask
from drift_assets.defs.evaluate import Decoding, FineTuning
from drift_assets.defs.grades import GradesGiven
from drift_assets.defs.gradients import PROJECTION_KEYS, GradientLayout, GradientsGiven, Projection, ValidationSpan
from drift_assets.defs.influence import InfluenceGiven
from drift_assets.defs.refine import Export, RefineGiven, Selection
from drift_assets.defs.rollouts import RolloutsGiven
from drift_assets.defs.sources import PoolLimit, QueryGraders, SourcesGiven
from drift_assets.defs.warmup import ListedCheckpoints, WarmupGiven, WarmupRun
from drift_assets.settings import Settings, export_inputs, given, picked

# The settings that shape the selection (given to the assets it comes from): the dataset card names
# their values, so the export is given them (and is versioned by them).
SHAPING_SETTINGS = (
    "data.max_example_tokens",
    "rollout",
    "grading",
    *PROJECTION_KEYS,
    "projection.validation_span",
    "warmup_schedule",
    "warmup.lora",
    "influence",
    "selection.method",
    "selection.fraction",
    "selection.k",
    "selection.choose_among",
)


def cost_plan(settings: Settings) -> CostPlan:
    return CostPlan(
        sft=settings.benchmark.sft,
        checkpoints=settings.checkpoints,
        shards=settings.projection.shards,
        chooses=bool(settings.selection.choose_among),
        evaluates=bool(settings.data.test_queries),
    )


def sources(settings: Settings) -> SourcesGiven:
    data = settings.data
    written = {
        "data.training_pool": data.training_pool,
        "data.validation_queries": data.validation_queries,
        "data.test_queries": data.test_queries,
        "model.path": settings.model.path,
    }
    return SourcesGiven(
        limit=given(PoolLimit, settings),
        graders=given(QueryGraders, settings),
        allowed_graders=settings.grading.allowed_graders(),  # of the two settings QueryGraders holds
        grading=settings.grading.options(),
        written=written,
        resolved={key: settings.resolve(path) if path else None for key, path in written.items()},
    )


def rollouts(settings: Settings) -> RolloutsGiven:
    return given(
        RolloutsGiven,
        settings,
        checkpoints=settings.checkpoints,
        max_empty_or_truncated_fraction=settings.grading.max_empty_or_truncated_fraction,
        cost=cost_plan(settings),
    )


def grades(settings: Settings) -> GradesGiven:
    influence = settings.influence
    return given(
        GradesGiven,
        settings,
        checkpoints=settings.checkpoints,
        targets=influence.targets,
        weighting=influence.weighting,
        unsolved=influence.unsolved,
    )


def gradients(settings: Settings) -> GradientsGiven:
    return GradientsGiven(
        projection=given(Projection, settings),
        span=given(ValidationSpan, settings),
        layout=given(GradientLayout, settings),
        gradient_checkpointing=settings.projection.gradient_checkpointing,
        checkpoints=settings.checkpoints,
        cost=cost_plan(settings),
    )


def influence(settings: Settings) -> InfluenceGiven:
    return given(InfluenceGiven, settings, shards=settings.projection.shards)


def fine_tuning(settings: Settings) -> FineTuning:
    return given(FineTuning, settings, decoding=given(Decoding, settings))


def refine(settings: Settings) -> RefineGiven:
    return RefineGiven(
        selection=given(Selection, settings),
        choosing=fine_tuning(settings) if settings.selection.choose_among else None,
        export=given(Export, settings),
        shaping=picked(settings, *SHAPING_SETTINGS),
        export_dir=settings.resolve(settings.selection.export_dir),
        inputs=export_inputs(settings),
        model_path=settings.model_path,
        checkpoints=settings.checkpoints,
        cost=cost_plan(settings),
    )


def warmup(settings: Settings) -> WarmupGiven:
    listed = bool(settings.warmup.checkpoints)
    return WarmupGiven(
        run=None if listed else given(WarmupRun, settings),
        listed=given(ListedCheckpoints, settings) if listed else None,
        directory=settings.resolve(settings.warmup.checkpoint_dir),
        resolved=settings.given_checkpoints,
        gradient_checkpointing=settings.benchmark.sft.gradient_checkpointing,
        checkpoints=settings.checkpoints,
        cost=cost_plan(settings),
    )


def benchmark(settings: Settings) -> BenchmarkGiven:
    return given(
        BenchmarkGiven,
        settings,
        onpolicy=given(OnPolicySpan, settings) if "less_onpolicy" in settings.benchmark.methods else None,
        decoding=given(Decoding, settings),
        shards=settings.projection.shards,
        cost=cost_plan(settings),
    )


def demo(settings: Settings) -> DemoGiven:
    data = settings.data
    files = {
        "training_pool": data.training_pool,
        "validation_queries": data.validation_queries,
        "test_queries": data.test_queries,
    }
    return given(
        DemoGiven,
        settings,
        task=given(DemoTask, settings),
        files={split: settings.resolve(path) if path else None for split, path in files.items()},
        model_path=settings.model_path,
    )
