"""The export folder as a Hugging Face dataset: the selection and the rows left out, and their card.

The folder (``selection.export_dir``) holds, each written through
:func:`drift_assets.core.data.outputs.write_export` (never over an input or a file it did not write):

- ``refined_dataset.parquet`` / ``.jsonl``: the **train** split, the selected rows best first;
- ``unselected.parquet`` / ``.jsonl``: the **unselected** split, every other pool row with the
  ``reason`` it was left out (null in the train split: one config has one schema);
- ``README.md``: the dataset card, its YAML header naming the configs and splits
  (``datasets.load_dataset(folder)`` reads them), its text what a reader asks first: which model,
  which settings, which code and run, how the scores and the selection came out, and the command
  that makes it again.

Rows are in TRL's conversational prompt/completion format: ``prompt`` holds the turns before the
response, ``completion`` the assistant's response. SFTTrainer's default loss then covers the
completion only, the tokens the pipeline's own fine-tune trains on (the response and the EOS its
chat template closes it with). Both splits carry ``example_id``, ``rank`` (the selection's order:
the first k rows by rank are the selection of k) and ``score``; the pool's own extra columns follow,
less the evaluation-only ones (a hidden noise label), which never leave the warehouse.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import yaml

from drift_assets.core.data.fingerprint import content_hash, file_sha256
from drift_assets.core.data.outputs import MANIFEST_NAME, write_export
from drift_assets.core.data.pool import CORE_COLUMNS, OUTPUT_COLUMNS
from drift_assets.core.study.stats import roc_auc

EXPORT_NAME = "refined_dataset"
UNSELECTED_NAME = "unselected"
CARD_NAME = "README.md"
# Pool columns that only evaluate the selection (the demo's hidden noise label and its kind): they are
# never exported, whatever the settings add to them.
EVALUATION_ONLY_COLUMNS = ("is_corrupted", "category", "reference_answer")
SPLITS = {"train": EXPORT_NAME, "unselected": UNSELECTED_NAME}

# Why a pool row is not in the selection (the ``reason`` column of the unselected split).
REASONS = {
    "below_cutoff": "ranked after the selection's last row (the order: influence.ranking blended with the base model's "
    "likelihood by influence.likelihood_blend, or the likelihood alone where selection.choose_among kept the loss "
    "filter's selection; the size: selection.fraction / selection.k)",
    "score_not_positive": "a score not above 0 (selection.method positive)",
}
# What the pipeline adds to the pool that an export carries, first.
EXPORTED_FIRST = ("example_id", "rank", "score", "source")
_TURNS = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))


def export_file_names() -> tuple[str, ...]:
    """Every file an export writes into its folder (the manifest aside)."""
    return (f"{EXPORT_NAME}.jsonl", f"{EXPORT_NAME}.parquet", f"{UNSELECTED_NAME}.jsonl", f"{UNSELECTED_NAME}.parquet", CARD_NAME)


def export_columns(table: pl.DataFrame, evaluation_only: Sequence[str] = EVALUATION_ONLY_COLUMNS) -> list[str]:
    """What an export carries besides prompt and completion: id, rank, score, source, then the pool's
    own extra columns (not the text split, token counts or weight the pipeline derives, and none of
    ``evaluation_only``)."""
    derived = (set(CORE_COLUMNS) | set(OUTPUT_COLUMNS) | {"messages"}) - set(EXPORTED_FIRST)
    hidden = set(evaluation_only) | set(EVALUATION_ONLY_COLUMNS)
    first = [c for c in EXPORTED_FIRST if c in table.columns]
    return first + [c for c in table.columns if c not in derived and c not in first and c not in hidden]


def unselected_reasons(table: pl.DataFrame, method: str) -> pl.Series:
    """The ``reason`` (a key of :data:`REASONS`) of each row of ``table`` (the refined table), null
    where the row is selected."""
    reason = pl.lit("score_not_positive" if method == "positive" else "below_cutoff")
    return table.select(pl.when(pl.col("selected")).then(None).otherwise(reason).alias("reason"))["reason"]


def conversational_rows(table: pl.DataFrame, evaluation_only: Sequence[str] = EVALUATION_ONLY_COLUMNS) -> pl.DataFrame:
    """``table``'s rows in rank order as prompt (the turns before the response) and completion (the
    response) in chat format, then :func:`export_columns`."""
    ordered = table.sort("rank")
    messages = [json.loads(text) for text in ordered["messages"]]
    prompts = pl.Series("prompt", [turns[:-1] for turns in messages], dtype=_TURNS)
    completions = pl.Series("completion", [turns[-1:] for turns in messages], dtype=_TURNS)
    return pl.DataFrame([prompts, completions]).hstack(ordered.select(export_columns(ordered, evaluation_only)))


def _write_jsonl(frame: pl.DataFrame) -> Callable[[Path], None]:
    return lambda path: path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in frame.to_dicts()))


@dataclass
class CardFacts:
    """What the card says beyond the tables: where the selection came from."""

    model_path: str
    model_fingerprint: str | None
    settings: Mapping[str, object]  # the settings that shaped the selection: key → value
    code_versions: Mapping[str, str]  # asset → code version
    package_version: str
    git_commit: str | None
    run_id: str
    selection_method: str
    checkpoints: Sequence[str] = field(default_factory=lambda: ["base"])


def _figure(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _score_line(scores: pl.Series) -> str:
    if scores.is_empty():
        return "none"
    values = scores.to_numpy().astype(float)
    return f"min {_figure(values.min())}, median {_figure(float(np.median(values)))}, max {_figure(values.max())}"


def dataset_card(table: pl.DataFrame, reasons: pl.Series, facts: CardFacts) -> str:
    """The README.md of the export folder (the refined ``table``, each row's ``reason``)."""
    chosen, left = table.filter(pl.col("selected")), table.filter(~pl.col("selected"))
    counts = reasons.drop_nulls().value_counts(sort=True)
    # The card's metadata: one config whose splits are the export's Parquet files.
    splits = [{"split": split, "path": f"{stem}.parquet"} for split, stem in SPLITS.items()]
    metadata = {
        "configs": [{"config_name": "default", "data_files": splits}],
        "task_categories": ["text-generation"],
        "tags": ["sft", "data-selection", "drift", "influence-functions"],
    }
    header = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
    settings_yaml = yaml.safe_dump(_nested(facts.settings), sort_keys=True, allow_unicode=True).rstrip()
    lines = [
        f"---\n{header}---",
        "",
        "# A DRIFT selection of an SFT pool",
        "",
        f"The {chosen.height} examples of a pool of {table.height} that most help `{Path(facts.model_path).name}` "
        "answer its validation queries correctly, as DRIFT (data refinement via on-policy influence functions) "
        "ranks them, and the other "
        f"{left.height} with the reason each was left out. Made by drift_assets {facts.package_version}.",
        "",
        "```python",
        "from datasets import load_dataset",
        'dataset = load_dataset("<this folder or repository>")  # splits: train (the selection), unselected',
        "```",
        "",
        "Each row is in the conversational prompt/completion format: TRL's `SFTTrainer` trains on the "
        "completion only, as the pipeline's own fine-tune does.",
        "",
        "## Splits",
        "",
        "| split | rows | file | what |",
        "|---|---|---|---|",
        f"| train | {chosen.height} | {EXPORT_NAME}.parquet ({EXPORT_NAME}.jsonl) | the selection, best first |",
        f"| unselected | {left.height} | {UNSELECTED_NAME}.parquet ({UNSELECTED_NAME}.jsonl) | the rest, with `reason` |",
        "",
        "Columns: `prompt` (the turns before the response), `completion` (the response), `example_id` (a hash of "
        "the text), `rank` (the selection's order: the first k rows by rank are the selection of k), `score` (the "
        "example's influence on the model's correct answers; higher helps more), `source` (the input file), "
        "the pool's own columns, and `reason` (why an unselected row was left out; null in train).",
        "",
        "## Why rows were left out",
        "",
        "| reason | rows | meaning |",
        "|---|---|---|",
        *[f"| {reason} | {n} | {REASONS[reason]} |" for reason, n in counts.iter_rows()],
        "",
        "## How the scores and the selection came out",
        "",
        f"- selection: {chosen.height} of {table.height} ({facts.selection_method}); "
        f"scored at checkpoints {', '.join(facts.checkpoints)}",
        f"- scores of the selection: {_score_line(chosen['score'])}",
        f"- scores of the rest: {_score_line(left['score'])}",
    ]
    if "is_corrupted" in table.columns and table.height:
        noisy = table["is_corrupted"].fill_null(False).cast(pl.Boolean)
        auc = roc_auc(table["score"].to_numpy(), ~noisy.to_numpy())
        share_selected = float(chosen["is_corrupted"].fill_null(False).cast(pl.Float64).mean()) if chosen.height else None
        lines.append(
            f"- known noise (the pool's evaluation-only `is_corrupted`, not exported): {_figure(float(noisy.mean()))} of "
            f"the pool, {_figure(share_selected)} of the selection; ROC-AUC of the score for clean rows {_figure(auc)}"
        )
    lines += [
        "",
        "## Where it comes from",
        "",
        f"- base model: `{facts.model_path}`, fingerprint `{facts.model_fingerprint or 'unknown'}` (sha256 of its "
        "config, tokenizer and weight files)",
        f"- code: drift_assets {facts.package_version}" + (f", commit `{facts.git_commit}`" if facts.git_commit else ""),
        *[f"- code version of `{asset}`: `{version}`" for asset, version in facts.code_versions.items()],
        f"- Dagster run: `{facts.run_id}`",
        "",
        "The settings that shaped the selection:",
        "",
        "```yaml",
        settings_yaml,
        "```",
        "",
        "To make it again, with the same model and data files: put these settings in a settings file beside your "
        "`model.path` and `data.*` paths, then run",
        "",
        "```bash",
        "DRIFT_ASSETS_SETTINGS=settings.yaml python -m drift_assets materialize",
        "```",
        "",
    ]
    return "\n".join(lines)


def _nested(flat: Mapping[str, object]) -> dict:
    """``{"selection.fraction": 0.5}`` → ``{"selection": {"fraction": 0.5}}`` (derived names stay flat)."""
    nested: dict = {}
    for key, value in flat.items():
        *groups, last = key.split(".")
        node = nested
        for group in groups:
            node = node.setdefault(group, {})
        node[last] = value
    return nested


def export_dataset(
    table: pl.DataFrame,
    directory: str | Path,
    facts: CardFacts,
    evaluation_only: Sequence[str] = EVALUATION_ONLY_COLUMNS,
    inputs: Mapping[str, str | None] | None = None,
    previously_exported: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Write the refined ``table`` into ``directory`` as a Hugging Face dataset (the module's
    docstring says what); returns file name → path. Every file is staged and renamed into place
    together; none replaces an input or a file the export did not write (:func:`write_export`)."""
    reasons = unselected_reasons(table, facts.selection_method)
    # One config, one schema: the train split's reason is null (its rows were not left out).
    ordered = table.with_columns(reasons).sort("rank")
    rows = conversational_rows(table, evaluation_only).with_columns(ordered["reason"])
    train, unselected = rows.filter(ordered["selected"]), rows.filter(~ordered["selected"])
    card = dataset_card(table, reasons, facts)
    jsonl, parquet, left_jsonl, left_parquet, readme = export_file_names()
    writers = {
        jsonl: _write_jsonl(train),
        parquet: train.write_parquet,
        left_jsonl: _write_jsonl(unselected),
        left_parquet: unselected.write_parquet,
        readme: lambda path: path.write_text(card),
    }
    return write_export(directory, writers, inputs, previously_exported=previously_exported)


class PushError(Exception):
    """The export folder cannot be pushed as it is (the message names the folder, file or setting)."""


TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def check_pushable(directory: str | Path) -> list[str]:
    """The files of a complete export in ``directory`` that a push uploads (the manifest aside), after
    checking that each is there as the export wrote it: a missing file, one edited since, or an export
    stopped half-way (the manifest then accepts two contents) is refused (:class:`PushError`)."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_NAME
    try:
        files = json.loads(manifest_path.read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        raise PushError(
            f"{directory} holds no export (no readable {MANIFEST_NAME}): materialize refined_dataset_export first"
        ) from None
    names = list(export_file_names())
    for file_name in names:
        path = directory / file_name
        recorded = files.get(file_name) if isinstance(files, dict) else None
        if not path.is_file() or not recorded:
            raise PushError(f"{path} is missing from the export: materialize refined_dataset_export again")
        if len(recorded) != 1 or file_sha256(path) != recorded[0]:
            raise PushError(
                f"{path} is not the file the last export wrote (edited since, or the export stopped half-way): "
                "materialize refined_dataset_export again before pushing"
            )
    return names


def hub_token(environ: Mapping[str, str]) -> str:
    """The Hugging Face token from the environment (:data:`TOKEN_VARIABLES`)."""
    for variable in TOKEN_VARIABLES:
        if environ.get(variable):
            return environ[variable]
    raise PushError("no Hugging Face token: set HF_TOKEN to a token with write access (https://huggingface.co/settings/tokens)")


def push_dataset(directory: str | Path, repo_id: str, token: str, private: bool = False, api=None) -> str:
    """Upload the export in ``directory`` (:func:`check_pushable`) to the Hub dataset ``repo_id``
    (created where missing, ``private`` then), the card as its README.md; returns the commit's URL.
    ``api``: a ``huggingface_hub.HfApi`` (default: one with ``token``)."""
    names = check_pushable(directory)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True, token=token)
    commit = api.upload_folder(
        repo_id=repo_id,
        repo_type="dataset",
        folder_path=str(directory),
        allow_patterns=names,  # the export's own files: not the manifest, nor anything else in the folder
        commit_message="DRIFT selection: the refined dataset, the rows left out and the card",
        token=token,
    )
    return str(getattr(commit, "commit_url", commit))


def exported_files(paths: dict[str, str], refined_dataset: pl.DataFrame) -> pl.DataFrame:
    """One row per file :func:`export_dataset` wrote (its name → path): split (train, unselected; none
    for the card), format, path, rows, sha256."""
    n_selected = int(refined_dataset["selected"].sum())
    rows = {EXPORT_NAME: n_selected, UNSELECTED_NAME: refined_dataset.height - n_selected}
    return pl.DataFrame(
        {
            "split": ["train" if name.startswith(EXPORT_NAME) else "unselected" if name != CARD_NAME else None for name in paths],
            "format": [name.rsplit(".", 1)[1] for name in paths],
            "path": list(paths.values()),
            "rows": [rows.get(name.rsplit(".", 1)[0]) for name in paths],
            "sha256": [content_hash(path) for path in paths.values()],
        },
        schema_overrides={"split": pl.String, "rows": pl.Int64},
    )
