"""The export folder as a Hugging Face dataset: its splits, its card, what never leaves the warehouse,
and the manifest's guarantee for every file it writes."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from huggingface_hub import HfApi

from drift_assets.core.attribution.selection import refined_table, select
from drift_assets.core.data.outputs import MANIFEST_NAME, ExportPathError
from drift_assets.core.data.publish import REASONS, PushError, check_pushable, export_dataset, unselected_reasons
from drift_assets_tests.helpers.card_facts import FACTS

SCORES = [0.9, -0.3, 0.0, 2.5, 0.1, -1.0, 0.4]
FILES = ["README.md", "refined_dataset.jsonl", "refined_dataset.parquet", "unselected.jsonl", "unselected.parquet"]


def conversation(i: int) -> list[dict]:
    turns = [{"role": "user", "content": f"What is {i} + 1?"}, {"role": "assistant", "content": f"Answer: {i + 1}"}]
    return ([{"role": "system", "content": "Be terse."}] if i == 3 else []) + turns


def refined(method: str = "top_k") -> pl.DataFrame:
    ids = [f"ex{i}" for i in range(len(SCORES))]
    order = sorted(range(len(SCORES)), key=lambda i: -SCORES[i])
    scores = pl.DataFrame({"example_id": ids, "score": SCORES, "rank": [order.index(i) + 1 for i in range(len(SCORES))]})
    pool = pl.DataFrame(
        {
            "example_id": ids,
            "messages": [json.dumps(conversation(i)) for i in range(len(SCORES))],
            "prompt": [f"What is {i} + 1?" for i in range(len(SCORES))],
            "response": [f"Answer: {i + 1}" for i in range(len(SCORES))],
            "n_response_tokens": [3] * len(SCORES),
            "source": ["pool.jsonl"] * len(SCORES),
            "difficulty": [i % 3 for i in range(len(SCORES))],  # the user's own column: exported
            "is_corrupted": [i % 2 == 1 for i in range(len(SCORES))],  # evaluation only: never exported
            "category": ["correct" if i % 2 == 0 else "corrupted" for i in range(len(SCORES))],
            "reference_answer": [str(i + 1) for i in range(len(SCORES))],
            "hidden_label": ["x"] * len(SCORES),  # marked evaluation-only in the settings
        }
    )
    return refined_table(pool, scores, select(scores, method, k=3))


def test_the_export_folder_loads_as_a_dataset_with_both_splits_and_its_card(tmp_path):
    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    folder = tmp_path / "exports"
    table = refined()
    paths = export_dataset(table, folder, FACTS, evaluation_only=["hidden_label"])
    assert sorted(paths) == FILES
    assert sorted(p.name for p in folder.iterdir()) == sorted([*FILES, MANIFEST_NAME])
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert sorted(manifest["files"]) == FILES  # the card too

    dataset = load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))
    assert sorted(dataset) == ["train", "unselected"]
    train, left = dataset["train"], dataset["unselected"]
    # The selection, best first, in TRL's conversational prompt/completion format.
    assert train["example_id"] == ["ex3", "ex0", "ex6"] and train["rank"] == [1, 2, 3]
    assert train["prompt"] == [conversation(i)[:-1] for i in (3, 0, 6)]
    assert train["completion"] == [conversation(i)[-1:] for i in (3, 0, 6)]
    assert train["score"] == pytest.approx([2.5, 0.9, 0.4])
    columns = ["prompt", "completion", "example_id", "rank", "score", "source", "difficulty", "reason"]
    assert train.column_names == left.column_names == columns
    assert train["reason"] == [None] * 3
    assert left["example_id"] == ["ex4", "ex2", "ex1", "ex5"] and left["rank"] == [4, 5, 6, 7]
    assert set(left["reason"]) == {"below_cutoff"}
    # JSONL and Parquet hold the same rows.
    for split, stem in (("train", "refined_dataset"), ("unselected", "unselected")):
        rows = [json.loads(line) for line in (folder / f"{stem}.jsonl").read_text().splitlines()]
        assert rows == pl.read_parquet(folder / f"{stem}.parquet").to_dicts() == dataset[split].to_list()

    card = DatasetCard.load(folder / "README.md")
    assert card.data.configs == [
        {
            "config_name": "default",
            "data_files": [
                {"split": "train", "path": "refined_dataset.parquet"},
                {"split": "unselected", "path": "unselected.parquet"},
            ],
        }
    ]
    for fact in ("/models/tiny", "f" * 64, "run-42", "0123456789ab", "3-def", "k: 3", "ranking: score", "python -m drift_assets"):
        assert fact in card.text, fact
    assert f"| below_cutoff | 4 | {REASONS['below_cutoff']} |" in card.text
    assert "0.429 of the pool, 0.333 of the selection" in card.text  # is_corrupted: summarized, not exported


def test_evaluation_only_columns_never_reach_an_exported_file(tmp_path):
    export_dataset(refined(), tmp_path, FACTS, evaluation_only=["hidden_label"])
    for name in ("refined_dataset.parquet", "unselected.parquet"):
        columns = set(pl.read_parquet(tmp_path / name).columns)
        assert not columns & {"is_corrupted", "category", "reference_answer", "hidden_label"}, name
    for name in ("refined_dataset.jsonl", "unselected.jsonl"):
        text = (tmp_path / name).read_text()
        assert "is_corrupted" not in text and "hidden_label" not in text and "corrupted" not in text, name


def test_each_unselected_row_says_why_it_was_left_out():
    table = refined().with_columns(unselected_reasons(refined(), "top_k"))
    reasons = dict(zip(table["example_id"], table["reason"]))
    assert reasons == {
        "ex3": None,
        "ex0": None,
        "ex6": None,
        "ex4": "below_cutoff",
        "ex1": "below_cutoff",
        "ex2": "below_cutoff",
        "ex5": "below_cutoff",
    }
    positive = refined("positive")
    assert set(unselected_reasons(positive, "positive").drop_nulls()) == {"score_not_positive"}
    assert unselected_reasons(positive, "positive").null_count() == int((pl.Series(SCORES) > 0).sum())


def test_a_users_readme_in_the_export_folder_is_never_replaced(tmp_path):
    (tmp_path / "README.md").write_text("my notes\n")
    with pytest.raises(ExportPathError, match=rf"{tmp_path / 'README.md'} exists and was not written by the export"):
        export_dataset(refined(), tmp_path, FACTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"] and (tmp_path / "README.md").read_text() == "my notes\n"

    # The export's own card, edited since: kept, and the export refused.
    (tmp_path / "README.md").unlink()
    export_dataset(refined(), tmp_path, FACTS)
    (tmp_path / "README.md").write_text((tmp_path / "README.md").read_text() + "\nmy edit\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ExportPathError, match="README.md exists and was not written by the export"):
        export_dataset(refined(), tmp_path, FACTS)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_an_empty_selection_exports_empty_files_with_the_chat_schema_and_a_new_one_replaces_them(tmp_path):
    nothing = refined().with_columns(selected=pl.lit(False))
    export_dataset(nothing, tmp_path, FACTS)
    assert (tmp_path / "refined_dataset.jsonl").read_text() == ""
    frame = pl.read_parquet(tmp_path / "refined_dataset.parquet")
    turns = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
    assert frame.height == 0 and frame.schema["prompt"] == turns and frame.schema["completion"] == turns
    assert pl.read_parquet(tmp_path / "unselected.parquet").height == len(SCORES)

    export_dataset(refined(), tmp_path, FACTS)  # its own files, unchanged: replaced
    assert pl.read_parquet(tmp_path / "refined_dataset.parquet")["example_id"].to_list() == ["ex3", "ex0", "ex6"]


class RecordingHub(HfApi):
    """The real client, its two calls that reach the Hub recorded instead: the upload's files are the
    folder's files that its ``allow_patterns`` select, as ``upload_folder`` selects them, and the card
    is parsed as the client parses it."""

    calls: list = []

    def create_repo(self, repo_id, **kwargs):
        RecordingHub.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/datasets/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, repo_type=None, allow_patterns=None, token=None, **_):
        from huggingface_hub import DatasetCard
        from huggingface_hub.utils import filter_repo_objects

        present = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        uploaded = sorted(filter_repo_objects(present, allow_patterns=allow_patterns))
        card = DatasetCard.load(Path(folder_path) / "README.md")
        RecordingHub.calls.append(("upload_folder", repo_id, uploaded, repo_type, token, card.data.configs[0]["config_name"]))
        return type("Commit", (), {"commit_url": f"https://huggingface.co/datasets/{repo_id}/commit/0"})()


def test_push_uploads_the_export_folder_as_the_hub_dataset_with_the_token_from_the_environment(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    from drift_assets.cli import main

    root = tmp_path / "project"
    export_dataset(refined(), root / "exports", FACTS)
    (root / "exports" / "notes.txt").write_text("mine, not the export's")  # never uploaded
    (root / "settings.yaml").write_text(
        "data: {training_pool: pool.jsonl, validation_queries: val.jsonl}\nmodel: {path: model}\n"
    )
    RecordingHub.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHub)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    settings = str(root / "settings.yaml")

    assert main(["push", "--settings", settings, "--repo", "me/picked"]) == 2
    assert "no Hugging Face token: set HF_TOKEN" in capsys.readouterr().err and RecordingHub.calls == []
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert main(["push", "--settings", settings]) == 2
    assert "push needs --repo" in capsys.readouterr().err

    assert main(["push", "--settings", settings, "--repo", "me/picked", "--private"]) == 0
    assert "pushed" in capsys.readouterr().out
    assert RecordingHub.calls == [
        ("create_repo", "me/picked", {"repo_type": "dataset", "private": True, "exist_ok": True, "token": "hf_secret"}),
        ("upload_folder", "me/picked", FILES, "dataset", "hf_secret", "default"),
    ]

    # An export edited since it was written is refused before anything reaches the Hub.
    RecordingHub.calls = []
    with open(root / "exports" / "refined_dataset.jsonl", "a") as file:
        file.write('{"prompt": [], "completion": []}\n')
    assert main(["push", "--settings", settings, "--repo", "me/picked"]) == 2
    err = capsys.readouterr().err
    assert "refined_dataset.jsonl is not the file the last export wrote" in err and RecordingHub.calls == []


def test_push_refuses_a_folder_without_an_export(tmp_path):
    with pytest.raises(PushError, match=rf"{tmp_path} holds no export .* materialize refined_dataset_export first"):
        check_pushable(tmp_path)
    export_dataset(refined(), tmp_path, FACTS)
    (tmp_path / "unselected.parquet").unlink()
    with pytest.raises(PushError, match="unselected.parquet is missing from the export"):
        check_pushable(tmp_path)
