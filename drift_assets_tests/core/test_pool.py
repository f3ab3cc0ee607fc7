"""Reading and normalizing the training pool (JSONL, chat messages, Parquet, saved datasets) and queries."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pytest

from drift_assets.core.data.pool import InputFileError, load_queries, normalize_pool, read_rows
from drift_assets.tasks.tiny_model import build_char_tokenizer

MAX_TOKENS = 64


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


def write_jsonl(path: Path, records: list) -> Path:
    lines = [record if isinstance(record, str) else json.dumps(record) for record in records]
    path.write_text("\n".join(lines) + "\n")
    return path


def normalize(path, tokenizer, max_tokens: int = MAX_TOKENS):
    return normalize_pool(read_rows(path), tokenizer, max_tokens, source="test-source")


def expected_prompt_tokens(tokenizer, rendered_prompt: str) -> int:
    # The char tokenizer has no chat template: BOS + one token per character.
    assert tokenizer.chat_template is None
    return len(tokenizer(rendered_prompt)["input_ids"])


def expected_response_tokens(tokenizer, response: str) -> int:
    return len(tokenizer(response, add_special_tokens=False)["input_ids"]) + 1  # + EOS


def chat(prompt: str, response: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def test_jsonl_prompt_response_rows(tmp_path, tokenizer):
    records = [
        {"prompt": "What is 2 + 3?\n", "response": "Answer: 5", "category": "correct", "difficulty": 1},
        {"prompt": "What is 9 - 4?\n", "response": "9 - 4 = 6. Answer: 6", "category": "corrupted", "difficulty": 2},
    ]
    pool = normalize(write_jsonl(tmp_path / "pool.jsonl", records), tokenizer)
    assert pool.rejects.height == 0
    examples = pool.examples
    assert examples.height == 2
    assert examples["row_number"].to_list() == [1, 2]  # JSONL rows are 1-based line numbers
    assert examples["prompt"].to_list() == [r["prompt"] for r in records]
    assert examples["response"].to_list() == [r["response"] for r in records]
    assert [json.loads(m) for m in examples["messages"]] == [chat(r["prompt"], r["response"]) for r in records]
    assert examples["source"].to_list() == ["test-source"] * 2
    # Extra columns ride along unchanged.
    assert examples["category"].to_list() == ["correct", "corrupted"]
    assert examples["difficulty"].to_list() == [1, 2]
    # Token counts from the tokenizer itself, and (char-level) from the text lengths.
    for row, record in zip(examples.iter_rows(named=True), records):
        assert row["n_prompt_tokens"] == expected_prompt_tokens(tokenizer, record["prompt"]) == len(record["prompt"]) + 1
        assert row["n_response_tokens"] == expected_response_tokens(tokenizer, record["response"]) == len(record["response"]) + 1
    assert examples.schema["n_prompt_tokens"] == pl.Int64
    assert examples.schema["n_response_tokens"] == pl.Int64


def test_chat_messages_rows(tmp_path, tokenizer):
    multi_turn = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "name": "bot"},  # extra keys on a turn are dropped
    ]
    single_turn = chat("Spell: cat", "c a t")
    records = [{"messages": multi_turn, "tag": "a"}, {"messages": json.dumps(single_turn), "tag": "b"}]
    pool = normalize(write_jsonl(tmp_path / "chat.jsonl", records), tokenizer, max_tokens=256)
    assert pool.rejects.height == 0
    first, second = pool.examples.iter_rows(named=True)

    cleaned = [{"role": t["role"], "content": t["content"]} for t in multi_turn]
    assert json.loads(first["messages"]) == cleaned
    assert first["response"] == "4"
    assert json.loads(first["prompt"]) == cleaned[:-1]
    rendered = "system: Be brief.\nuser: Hi\nassistant: Hello\nuser: 2+2?\nassistant: "
    assert first["n_prompt_tokens"] == expected_prompt_tokens(tokenizer, rendered) == len(rendered) + 1
    assert first["n_response_tokens"] == 2

    # A messages column given as a JSON string, with one user turn, reads like prompt + response.
    assert second["prompt"] == "Spell: cat"
    assert second["response"] == "c a t"
    assert json.loads(second["messages"]) == single_turn
    assert [first["tag"], second["tag"]] == ["a", "b"]


def test_parquet_rows(tmp_path, tokenizer):
    frame = pl.DataFrame(
        {
            "prompt": ["What is 1 + 1?\n", "What is 2 + 2?\n", "What is 2 + 2?\n"],
            "response": ["Answer: 2", "Answer: 4", "Answer: 4"],
            "weight_hint": [0.5, 1.5, 2.5],
        }
    )
    path = tmp_path / "pool.parquet"
    frame.write_parquet(path)
    pool = normalize(path, tokenizer)
    assert pool.examples["row_number"].to_list() == [0, 1]  # tables are 0-based row indices
    assert pool.examples["weight_hint"].to_list() == [0.5, 1.5]
    assert pool.rejects.to_dicts() == [{"row_number": 2, "raw": pool.rejects["raw"][0], "reason": "duplicate of row 1"}]
    assert json.loads(pool.rejects["raw"][0]) == {"prompt": "What is 2 + 2?\n", "response": "Answer: 4", "weight_hint": 2.5}


def test_parquet_with_a_messages_column(tmp_path, tokenizer):
    conversations = [chat("Join: a b", "a-b"), chat("Repeat: x", "x x")]
    path = tmp_path / "chat.parquet"
    pl.DataFrame({"messages": conversations, "origin": ["s1", "s2"]}).write_parquet(path)
    pool = normalize(path, tokenizer)
    assert pool.rejects.height == 0
    assert [json.loads(m) for m in pool.examples["messages"]] == conversations
    assert pool.examples["origin"].to_list() == ["s1", "s2"]


def test_saved_dataset_and_dataset_dict(tmp_path, tokenizer):
    from datasets import Dataset, DatasetDict

    records = [
        {"prompt": "What is 3 + 3?\n", "response": "Answer: 6", "level": 1},
        {"prompt": "What is 7 - 2?\n", "response": "Answer: 5", "level": 3},
    ]
    Dataset.from_list(records).save_to_disk(str(tmp_path / "dataset"))
    pool = normalize(tmp_path / "dataset", tokenizer)
    assert pool.rejects.height == 0
    assert pool.examples["prompt"].to_list() == [r["prompt"] for r in records]
    assert pool.examples["level"].to_list() == [1, 3]
    assert pool.examples["row_number"].to_list() == [0, 1]

    DatasetDict({"test": Dataset.from_list(records[:1]), "train": Dataset.from_list(records[1:])}).save_to_disk(
        str(tmp_path / "dict")
    )
    from_dict = normalize(tmp_path / "dict", tokenizer)
    assert from_dict.examples["prompt"].to_list() == [records[1]["prompt"]]  # the train split


def test_every_reject_reason(tmp_path, tokenizer):
    long_response = "x" * (MAX_TOKENS + 5)
    records = [
        {"prompt": "p1", "response": "r1"},  # line 1: kept
        '{"prompt": "broken", "response": ',  # line 2
        {"prompt": "p3"},  # line 3: missing response
        {"prompt": "p4", "response": "   "},  # line 4: empty response
        {"prompt": "p5", "response": long_response},  # line 5: too long
        {"prompt": "p1", "response": "r1", "extra": "ignored"},  # line 6: duplicate of line 1
        {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "u"}]},  # line 7
        "[1, 2, 3]",  # line 8: not an object
        {"messages": "not json at all"},  # line 9
        {"messages": []},  # line 10
        {"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]},  # line 11
        {"messages": [{"role": "assistant", "content": "alone"}]},  # line 12
        {"prompt": 5, "response": "r"},  # line 13
        {"messages": chat("p1", "r1")},  # line 14: same content as line 1 in chat form
        {"prompt": "p15", "response": ""},  # line 15: empty response
    ]
    path = write_jsonl(tmp_path / "pool.jsonl", records)
    pool = normalize(path, tokenizer)
    assert pool.examples["row_number"].to_list() == [1]
    reasons = dict(zip(pool.rejects["row_number"], pool.rejects["reason"]))
    assert sorted(reasons) == list(range(2, 16))
    assert reasons[2].startswith("unparseable JSON")
    assert reasons[3] == "no 'messages' field and no 'prompt' + 'response' fields"
    assert reasons[4] == "empty response"
    n_long = expected_prompt_tokens(tokenizer, "p5") + expected_response_tokens(tokenizer, long_response)
    assert reasons[5] == f"over the maximum length ({n_long} tokens > data.max_example_tokens={MAX_TOKENS})"
    assert reasons[6] == "duplicate of row 1"
    assert reasons[7] == "the last message must be the assistant's response"
    assert reasons[8] == "expected a JSON object, got list"
    assert reasons[9] == "'messages' is a string but not JSON"
    assert reasons[10] == "'messages' must be a non-empty list"
    assert reasons[11] == "every message needs string 'role' and 'content'"
    assert reasons[12] == "'messages' needs at least one turn before the assistant's response"
    assert reasons[13] == "'prompt' and 'response' must be strings"
    assert reasons[14] == "duplicate of row 1"
    assert reasons[15] == "empty response"
    # The raw line is kept for the user to inspect.
    raw = dict(zip(pool.rejects["row_number"], pool.rejects["raw"]))
    assert raw[2] == '{"prompt": "broken", "response": '
    assert pool.rejects.schema == {"row_number": pl.Int64, "raw": pl.String, "reason": pl.String}


def test_blank_lines_keep_line_numbers(tmp_path, tokenizer):
    path = tmp_path / "pool.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n\n   \n{"prompt": "c", "response": ')
    pool = normalize(path, tokenizer)
    assert pool.examples["row_number"].to_list() == [1]
    assert pool.rejects["row_number"].to_list() == [4]


def test_length_limit_is_inclusive(tmp_path, tokenizer):
    prompt = "p" * 10
    fits = "r" * (MAX_TOKENS - (len(prompt) + 1) - 1)  # BOS + prompt + response + EOS == MAX_TOKENS
    too_long = fits + "r"
    pool = normalize(
        write_jsonl(tmp_path / "pool.jsonl", [{"prompt": prompt, "response": fits}, {"prompt": prompt, "response": too_long}]),
        tokenizer,
    )
    assert pool.examples["response"].to_list() == [fits]
    assert pool.examples["n_prompt_tokens"][0] + pool.examples["n_response_tokens"][0] == MAX_TOKENS
    assert pool.rejects["reason"][0].startswith(f"over the maximum length ({MAX_TOKENS + 1} tokens")


def test_an_overlong_first_copy_does_not_make_its_twin_a_duplicate(tmp_path, tokenizer):
    record = {"prompt": "p", "response": "r" * 200}
    pool = normalize(write_jsonl(tmp_path / "pool.jsonl", [record, record]), tokenizer)
    assert pool.examples.height == 0
    assert all(reason.startswith("over the maximum length") for reason in pool.rejects["reason"])
    # An empty pool still has the core columns with their types.
    assert pool.examples.schema["n_prompt_tokens"] == pl.Int64
    assert pool.examples.schema["example_id"] == pl.String


def test_example_id_is_a_content_hash_stable_across_order_and_format(tmp_path, tokenizer):
    records = [{"prompt": f"q{i}", "response": f"a{i}", "position": i} for i in range(5)]
    forward = normalize(write_jsonl(tmp_path / "forward.jsonl", records), tokenizer).examples
    backward = normalize(write_jsonl(tmp_path / "backward.jsonl", records[::-1]), tokenizer).examples
    ids_forward = dict(zip(forward["position"], forward["example_id"]))
    ids_backward = dict(zip(backward["position"], backward["example_id"]))
    assert ids_forward == ids_backward
    assert len(set(ids_forward.values())) == 5
    # The id is a hash of the content only: the same messages in chat form get the same id.
    chat_form = normalize(write_jsonl(tmp_path / "chat.jsonl", [{"messages": chat("q3", "a3")}]), tokenizer).examples
    assert chat_form["example_id"][0] == ids_forward[3]
    canonical = json.dumps(chat("q3", "a3"), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert ids_forward[3] == hashlib.sha256(canonical.encode()).hexdigest()[:20]
    # Extra columns do not change the id; content does.
    with_extra = normalize(write_jsonl(tmp_path / "extra.jsonl", [{"prompt": "q3", "response": "a3", "position": 99}]), tokenizer)
    assert with_extra.examples["example_id"][0] == ids_forward[3]
    changed = normalize(write_jsonl(tmp_path / "changed.jsonl", [{"prompt": "q3", "response": "a3 "}]), tokenizer)
    assert changed.examples["example_id"][0] != ids_forward[3]


def test_source_column_overrides_the_default_source(tmp_path, tokenizer):
    records = [{"prompt": "a", "response": "b", "source": "gsm8k"}, {"prompt": "c", "response": "d"}]
    pool = normalize(write_jsonl(tmp_path / "pool.jsonl", records), tokenizer)
    assert pool.examples["source"].to_list() == ["gsm8k", "test-source"]


def test_unreadable_inputs_raise(tmp_path):
    with pytest.raises(InputFileError, match="input not found"):
        list(read_rows(tmp_path / "missing.jsonl"))
    (tmp_path / "pool.csv").write_text("prompt,response\n")
    with pytest.raises(InputFileError, match="unsupported format"):
        list(read_rows(tmp_path / "pool.csv"))
    (tmp_path / "plain_dir").mkdir()
    with pytest.raises(InputFileError, match="save_to_disk"):
        list(read_rows(tmp_path / "plain_dir"))


# ---------- queries ----------


def test_load_queries_defaults_and_rejects(tmp_path):
    records = [
        {"query_id": "q-a", "prompt": "What is 2 + 2?\n", "reference": "4", "reference_response": "Answer: 4", "grader": "exact"},
        {"prompt": "What is 1 + 1?\n", "reference": 2},  # defaults
        {"query_id": "q-a", "prompt": "other", "reference": "1"},  # duplicate id
        {"query_id": "q-d", "prompt": "   ", "reference": "1"},  # blank prompt
        {"query_id": "q-e", "prompt": "ok?", "reference": ""},  # empty reference
        {"query_id": "q-f", "prompt": "ok?"},  # no reference
        "{not json",
    ]
    queries, rejects = load_queries(write_jsonl(tmp_path / "queries.jsonl", records), default_grader="numeric")
    assert queries.columns == ["query_id", "prompt", "reference", "reference_response", "grader"]
    assert queries.row(0) == ("q-a", "What is 2 + 2?\n", "4", "Answer: 4", "exact")
    expected_id = hashlib.sha256(b"What is 1 + 1?\n").hexdigest()[:16]
    assert queries.row(1) == (expected_id, "What is 1 + 1?\n", "2", "2", "numeric")
    reasons = dict(zip(rejects["row_number"], rejects["reason"]))
    assert reasons[3] == "duplicate query_id of row 1"
    for line in (4, 5, 6):
        assert reasons[line] == "needs a non-empty 'prompt' and 'reference'"
    assert reasons[7].startswith("unparseable JSON")
    assert sorted(reasons) == [3, 4, 5, 6, 7]


def test_load_queries_from_parquet(tmp_path):
    path = tmp_path / "queries.parquet"
    pl.DataFrame({"prompt": ["a?", "b?"], "reference": ["1", "2"], "grader": ["math", None]}).write_parquet(path)
    queries, rejects = load_queries(path, default_grader="numeric")
    assert rejects.height == 0
    assert queries["grader"].to_list() == ["math", "numeric"]
    assert queries["reference_response"].to_list() == ["1", "2"]


def test_input_columns_under_names_the_pipeline_writes_are_kept_renamed(tmp_path, tokenizer):
    """A reward rating named ``score`` must not pass for the influence score, nor ``example_id`` vanish."""
    from drift_assets.core.attribution.selection import refined_table, select

    records = [
        {
            "prompt": f"q{i}",
            "response": f"a{i}",
            "score": 5 - i,
            "rank": i,
            "selected": True,
            "weight": 0.5,
            "example_id": f"mine-{i}",
            "row_number": 100 + i,
            "pool_score": "already taken",
        }
        for i in range(4)
    ]
    pool = normalize(write_jsonl(tmp_path / "pool.jsonl", records), tokenizer)
    examples = pool.examples
    assert pool.renamed_columns == {
        "score": "pool_pool_score",
        "rank": "pool_rank",
        "selected": "pool_selected",
        "weight": "pool_weight",
        "example_id": "pool_example_id",
        "row_number": "pool_row_number",
    }
    assert examples["pool_pool_score"].to_list() == [5, 4, 3, 2]
    assert examples["pool_score"].to_list() == ["already taken"] * 4
    assert examples["pool_example_id"].to_list() == [f"mine-{i}" for i in range(4)]
    assert examples["row_number"].to_list() == [1, 2, 3, 4]
    scores = pl.DataFrame({"example_id": examples["example_id"], "score": [0.1, 0.4, 0.3, 0.2]})
    scores = scores.sort("score", descending=True).with_row_index("rank", offset=1).with_columns(pl.col("rank").cast(pl.Int64))
    refined = refined_table(examples, scores, select(scores, "top_k", k=2))
    assert refined["score"].to_list() == [0.4, 0.3, 0.2, 0.1]  # the influence score, not the input's rating
    assert refined["selected"].to_list() == [True, True, False, False]
    assert refined["pool_selected"].to_list() == [True] * 4


def test_no_renaming_where_nothing_collides(tmp_path, tokenizer):
    pool = normalize(write_jsonl(tmp_path / "pool.jsonl", [{"prompt": "q", "response": "a", "rating": 3}]), tokenizer)
    assert pool.renamed_columns == {}
    assert pool.examples["rating"].to_list() == [3]
