"""Observable sources (input files, the model directory) and the tables normalized from them.

A source's data version is a content hash: new data marks exactly its downstream stale, and an
unchanged file observed again changes nothing.
"""

from dataclasses import dataclass
from pathlib import Path

import polars as pl
from dagster import AssetExecutionContext, AssetOut, DataVersion, Output, multi_asset, observable_source_asset

from drift_assets.core.data.fingerprint import check_model_directory, content_hash, model_fingerprint
from drift_assets.core.data.pool import NormalizedPool, load_queries, normalize_pool, read_rows, reject_reasons, require_examples
from drift_assets.core.data.sequences import bos_warning, untemplated_turns_warning
from drift_assets.core.generation.engines import model_config, resolve_max_model_len
from drift_assets.core.grading.graders import allowed_graders, validate_grader
from drift_assets.defs.automation import observe_condition
from drift_assets.defs.metadata import table_metadata
from drift_assets.resources import ModelResource
from drift_assets.settings import GradingSettings, setting, unhashed, versioned

POOL_VERSION = "2"  # 2: text in NFC, ids from it (an NFD twin is a duplicate)
QUERIES_VERSION = "2"  # 2: ids with control characters and references beyond data.max_example_tokens quarantined
# An observation is recorded in the instance: the warehouse's check that the instance keeps its history
# (drift_assets.resources.Warehouse) holds for observations launched from the UI too.
OBSERVER_RESOURCES = {"warehouse"}


@dataclass(frozen=True)
class PoolLimit:
    max_example_tokens: int | None = setting("data.max_example_tokens")


@dataclass(frozen=True)
class QueryGraders:
    default_grader: str = setting("grading.default_grader")
    custom_graders: list[str] = setting("grading.custom_graders")


@dataclass(frozen=True)
class SourcesGiven:
    """``limit`` and ``graders``, hashed where used; not hashed: the inputs as written and resolved
    (observed), and the grading settings of each grader's pre-flight check, which changes no row."""

    limit: PoolLimit
    graders: QueryGraders
    grading: GradingSettings = unhashed("grading")
    inputs: dict[str, str | None] = unhashed("inputs")
    pool_input: str = unhashed("data.training_pool")
    validation_input: str = unhashed("data.validation_queries")
    test_input: str | None = unhashed("data.test_queries")
    model_input: str = unhashed("model.path")


def _source(description: str):
    """An observable source of the ``sources`` group, observed as ``observe_condition`` says."""
    return observable_source_asset(
        group_name="sources",
        automation_condition=observe_condition(),
        required_resource_keys=OBSERVER_RESOURCES,
        description=description,
    )


def _observe(path: str, what: str) -> DataVersion:
    if not Path(path).exists():
        raise FileNotFoundError(f"{what}: {path} does not exist (check the settings file, or materialize the demo group first)")
    return DataVersion(content_hash(path))


def build_source_assets(given: SourcesGiven) -> list:
    resolved = given.inputs
    pool_path, validation_path, model_path = (
        resolved[key] for key in ("data.training_pool", "data.validation_queries", "model.path")
    )

    @_source(f"The training pool input: {given.pool_input}")
    def training_pool_source() -> DataVersion:
        return _observe(pool_path, "data.training_pool")

    @_source(f"The validation queries input: {given.validation_input}")
    def validation_queries_source() -> DataVersion:
        return _observe(validation_path, "data.validation_queries")

    @_source(f"The base model directory: {given.model_input}")
    def base_model() -> DataVersion:
        if not Path(model_path).exists():
            raise FileNotFoundError(f"model.path: {model_path} does not exist")
        check_model_directory(model_path)
        return DataVersion(model_fingerprint(model_path))

    training_pool = _training_pool_asset(given, training_pool_source, base_model)
    validation_queries = _queries_asset(
        given,
        "validation_queries",
        validation_queries_source,
        base_model,
        "Validation queries: query_id, prompt, reference (answer), reference_response, grader.",
        references=True,
    )
    assets = [training_pool_source, validation_queries_source, base_model, training_pool, validation_queries]
    if given.test_input:
        test_path = resolved["data.test_queries"]

        @_source(f"Held-out test queries input: {given.test_input}")
        def test_queries_source() -> DataVersion:
            return _observe(test_path, "data.test_queries")

        description = "Held-out test queries for evaluating fine-tuned models."
        assets += [
            test_queries_source,
            _queries_asset(given, "test_queries", test_queries_source, base_model, description, False),
        ]
    return assets


def _training_pool_asset(given: SourcesGiven, source, base_model):
    """The pool normalized from ``source``'s file, and the rows it quarantined."""
    pool_path = given.inputs["data.training_pool"]

    @multi_asset(
        outs={
            "training_pool": AssetOut(
                group_name="inputs",
                kinds={"delta"},
                # Extra input columns are carried through, so the table's schema follows the input's.
                **versioned(POOL_VERSION, given.limit, overwrite_schema=True),
                description="The SFT pool, one row per usable example, with stable example_id and token counts.",
            ),
            "training_pool_rejects": AssetOut(
                group_name="inputs",
                kinds={"delta"},
                **versioned(POOL_VERSION, given.limit),
                description="Quarantined pool rows: row number, raw text, and the reason.",
            ),
        },
        deps=[source, base_model],  # token counts use the model's tokenizer
    )
    def training_pool(context: AssetExecutionContext, model: ModelResource):
        max_tokens = resolve_max_model_len(given.limit.max_example_tokens, model.path, "data.max_example_tokens")
        tokenizer = model.load_tokenizer()
        bos = bos_warning(tokenizer, model_config(model.path).get("bos_token_id"))
        if bos:
            context.log.warning(f"{model.path}: {bos}")
        normalized = normalize_pool(read_rows(pool_path), tokenizer, max_tokens, source=Path(pool_path).name)
        examples, rejects = normalized.examples, normalized.rejects
        turns = untemplated_turns_warning(tokenizer, examples["messages"].to_list())
        if turns:
            context.log.warning(f"{pool_path}: {turns}")
        context.log.info(f"{pool_path}: kept {examples.height} examples, quarantined {rejects.height}")
        for column, name in normalized.renamed_columns.items():
            context.log.warning(f"{pool_path}: column {column!r} is a name the pipeline writes; it is carried as {name!r}")
        metadata = {**table_metadata(rejects), "reasons": reject_reasons(rejects)}
        yield Output(rejects, output_name="training_pool_rejects", metadata=metadata)
        require_examples(examples, rejects, pool_path)
        yield Output(examples, output_name="training_pool", metadata=_pool_metadata(normalized, bos, turns))

    return training_pool


def _queries_asset(given: SourcesGiven, name: str, source, base_model, description: str, references: bool):
    """The table of queries normalized from ``source``'s file. ``references``: the queries' reference
    answers are differentiated (validation), so one longer than data.max_example_tokens is
    quarantined, as a pool example is."""
    path = given.inputs[f"data.{name}"]
    parts = (given.graders, given.limit) if references else (given.graders,)
    default_grader, grading = given.graders.default_grader, given.grading.options()
    allowed = allowed_graders(default_grader, given.graders.custom_graders)  # what a query's 'grader' field may name

    @multi_asset(
        name=name,
        outs={
            name: AssetOut(
                group_name="inputs",
                kinds={"delta"},
                description=description,
                **versioned(QUERIES_VERSION, *parts),
            )
        },
        deps=[source, base_model] if references else [source],  # the references' lengths are in the model's tokens
        required_resource_keys={"model"} if references else set(),
    )
    def _queries(context: AssetExecutionContext) -> pl.DataFrame:
        limit = {}
        if references:
            model = context.resources.model
            max_tokens = resolve_max_model_len(given.limit.max_example_tokens, model.path, "data.max_example_tokens")
            limit = {"tokenizer": model.load_tokenizer(), "max_tokens": max_tokens}
        queries, rejects = load_queries(path, default_grader, allowed, **limit)
        for row in rejects.iter_rows(named=True):
            context.log.warning(f"{path} row {row['row_number']}: {row['reason']}")
        for grader in queries["grader"].unique().to_list():
            # A pre-flight check (it changes no row): fail here, not after an hour of rollouts.
            validate_grader(grader, grading)
        if queries.is_empty():
            raise ValueError(f"{path}: no usable queries ({rejects.height} rejected)")
        context.add_output_metadata({**table_metadata(queries), "rejected_rows": rejects.height})
        return queries

    return _queries


def _pool_metadata(normalized: NormalizedPool, bos: str | None, turns: str | None) -> dict:
    """The pool's preview, the rows quarantined, the tokenizer's warnings and the columns renamed."""
    examples = normalized.examples
    return {
        **table_metadata(examples, preview_columns=["example_id", "prompt", "response", "n_response_tokens"]),
        "rejected_rows": normalized.rejects.height,
        "bos_warning": bos or "none",
        "chat_template_warning": turns or "none",
        "renamed_columns": normalized.renamed_columns,
        "mean_response_tokens": float(examples["n_response_tokens"].mean() or 0.0),
    }
