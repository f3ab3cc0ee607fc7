"""The bad-input corpus: every kind of bad input the reliability probe of 2026-11-30 tried (its case
numbers in each entry), with what must happen: the row quarantined with its reason, or one clear
error naming the file, row, query or setting, and nothing else changed.

Pipeline-level faults (deleted and damaged tables, a second materialization, a killed run) are in
``drift_assets_tests/assets/test_operations.py``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from drift_assets.core.attribution.selection import selection_warning
from drift_assets.core.data.fingerprint import check_model_directory
from drift_assets.core.data.pool import (
    InputFileError,
    example_id_for,
    load_queries,
    normalize_pool,
    read_rows,
    require_examples,
)
from drift_assets.core.generation.engines import resolve_max_model_len
from drift_assets.core.gradients.projection import LinearGradientProjector, ProjectionOptions
from drift_assets.core.gradients.tables import empty_gradient_frame, gradient_frame, reference_basis
from drift_assets.core.grading.graders import GraderError, GradingOptions, grade_answer, grade_rollouts, validate_grader
from drift_assets.core.grading.weighting import usable_queries
from drift_assets.core.runtime.progress import Progress
from drift_assets.defs.grades import GradesGiven
from drift_assets.settings import SettingsError, code_version, given, load_settings, parse_settings
from drift_assets.tasks.tiny_model import TinyLlamaShape, build_char_tokenizer, build_tiny_llama
from drift_assets_tests.helpers.graders import SLOW_GRADERS, grading_inputs

MAX_TOKENS = 64
GOOD = b'{"prompt": "What is 1 + 1?", "response": "Answer: 2"}'
KEPT = None  # the expected outcome of a row that is kept


def row(record) -> bytes:
    return json.dumps(record).encode()


def chat(*turns: tuple[str, object]) -> bytes:
    return row({"messages": [{"role": role, "content": content} for role, content in turns]})


# (probe case, what, the file's lines before a last good row, the outcome of each of those lines:
# KEPT or a regex its quarantine reason must match). The last good row must always be kept.
POOL_ROWS = [
    (1, "truncated JSON", [b'{"prompt": "a", "response": '], [r"^unparseable JSON \(.* at column \d+\)$"]),
    (2, "a line that is not JSON", [b"hello there"], [r"^unparseable JSON"]),
    (3, "a JSON array, not an object", [b"[1, 2, 3]"], [r"^expected a JSON object, got list$"]),
    (4, "no response", [row({"prompt": "p"})], [r"^no 'messages' field and no 'prompt' \+ 'response' fields$"]),
    (5, "no prompt", [row({"response": "r"})], [r"^no 'messages' field and no 'prompt' \+ 'response' fields$"]),
    (6, "a null response", [row({"prompt": "p", "response": None})], [r"^'response' is null$"]),
    (7, "an int prompt", [row({"prompt": 5, "response": "r"})], [r"^'prompt' and 'response' must be strings$"]),
    (8, "a list response", [row({"prompt": "p", "response": ["r"]})], [r"must be strings"]),
    (9, "a bool response", [row({"prompt": "p", "response": True})], [r"must be strings"]),
    (10, "a whitespace-only response", [row({"prompt": "p", "response": " \t "})], [r"^empty response$"]),
    (
        11,
        "longer than data.max_example_tokens",
        [row({"prompt": "p", "response": "x" * 500})],
        [rf"^over the maximum length \(\d+ tokens > data\.max_example_tokens={MAX_TOKENS}\)$"],
    ),
    (12, "messages ending with the user", [chat(("assistant", "a"), ("user", "u"))], [r"last message must be the assistant's"]),
    (13, "a non-string content", [chat(("user", 5), ("assistant", "a"))], [r"every message needs string 'role' and 'content'"]),
    (14, "only an assistant turn", [chat(("assistant", "alone"))], [r"needs at least one turn before"]),
    (15, "empty messages", [row({"messages": []})], [r"'messages' must be a non-empty list"]),
    (16, "messages as a string that is not JSON", [row({"messages": "not json"})], [r"'messages' is a string but not JSON"]),
    (
        17,
        "roles human and bot",
        [chat(("human", "u"), ("bot", "a"))],
        [r"^role 'human' is not one of system, user, assistant, tool$"],
    ),
    (
        17,
        "duplicates",
        [row({"prompt": "p", "response": "r"}), row({"prompt": "p", "response": "r"}), chat(("user", "p"), ("assistant", "r"))],
        [KEPT, r"^duplicate of row 1$", r"^duplicate of row 1$"],
    ),
    (18, "an upper-case role", [chat(("USER", "u"), ("ASSISTANT", "a"))], [r"role 'USER' is not one of"]),
    (18, "an empty role", [chat(("", "u"), ("assistant", "a"))], [r"role '' is not one of"]),
    (
        18,
        "the assistant speaking first",
        [chat(("assistant", "hi"), ("user", "u"), ("assistant", "a"))],
        [r"^the first turn \(after any system message\) must be the user's$"],
    ),
    (18, "a system message first", [chat(("system", "be brief"), ("user", "u"), ("assistant", "a"))], [KEPT]),
    (
        19,
        "emoji, CJK, RTL, zero-width and an escaped NUL",
        [row({"prompt": "🙂 你好 שלום a\u200bb", "response": "x\u0000y"})],
        [KEPT],
    ),
    (20, "a raw NUL byte", [b'{"prompt": "a\x00b", "response": "r"}'], [r"^unparseable JSON \(Invalid control character"]),
    (
        21,
        "a lone surrogate",
        [b'{"prompt": "\\ud800x", "response": "r"}'],
        [r"^a lone surrogate \('\\ud800'\) that is not text$"],
    ),
    (22, "an invalid UTF-8 byte", [b'{"prompt": "caf\xe9", "response": "r"}'], [r"^not UTF-8 \(byte 0xe9 at column 16\)$"]),
    (23, "a byte-order mark on the first line", [b"\xef\xbb\xbf" + row({"prompt": "p", "response": "r"})], [KEPT]),
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


@pytest.mark.parametrize(("case", "what", "lines", "outcomes"), POOL_ROWS, ids=[f"{c[0]}-{c[1]}" for c in POOL_ROWS])
def test_a_bad_pool_row_is_quarantined_with_its_reason_and_costs_nothing_else(tmp_path, tokenizer, case, what, lines, outcomes):
    path = tmp_path / "pool.jsonl"
    path.write_bytes(b"\n".join([*lines, GOOD]) + b"\n")
    pool = normalize_pool(read_rows(path), tokenizer, MAX_TOKENS, source="pool.jsonl")
    reasons = dict(zip(pool.rejects["row_number"], pool.rejects["reason"], strict=True))
    last = len(lines) + 1
    assert last in pool.examples["row_number"].to_list() and last not in reasons
    for number, outcome in enumerate(outcomes, start=1):
        if outcome is KEPT:
            assert number in pool.examples["row_number"].to_list(), (what, reasons.get(number))
        else:
            assert pl.Series([reasons.get(number, "(kept)")]).str.contains(outcome).item(), (what, reasons.get(number))
    assert pool.examples.height + pool.rejects.height == last
    # Whatever was read must be storable: a lone surrogate or a stray byte may not reach a table.
    pool.rejects.write_parquet(tmp_path / "rejects.parquet")
    pool.examples.write_parquet(tmp_path / "examples.parquet")


def test_24_25_an_empty_or_all_rejected_pool_fails_at_once_with_the_reasons(tmp_path, tokenizer):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    pool = normalize_pool(read_rows(empty), tokenizer, MAX_TOKENS, source="empty.jsonl")
    with pytest.raises(InputFileError, match=r"empty\.jsonl: no usable examples \(0 rows quarantined\)"):
        require_examples(pool.examples, pool.rejects, empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([json.dumps({"prompt": "p"})] * 2 + ["oops"]) + "\n")
    pool = normalize_pool(read_rows(bad), tokenizer, MAX_TOKENS, source="bad.jsonl")
    with pytest.raises(
        InputFileError,
        match=r"bad\.jsonl: no usable examples \(3 rows quarantined: 2× no 'messages' field"
        r".*; 1× unparseable JSON.*\); see the training_pool_rejects table",
    ):
        require_examples(pool.examples, pool.rejects, bad)
    one = normalize_pool(read_rows(_one_row(tmp_path)), tokenizer, MAX_TOKENS, source="one.jsonl")
    require_examples(one.examples, one.rejects, "one.jsonl")  # 26: one usable row is enough to go on


def _one_row(tmp_path: Path) -> Path:
    path = tmp_path / "one.jsonl"
    path.write_bytes(GOOD + b"\n")
    return path


def test_26_a_shard_without_examples_has_the_gradient_table_schema(tokenizer):
    """A one-row pool leaves shards empty: their table must have the columns of a computed one."""
    model = build_tiny_llama(tokenizer, TinyLlamaShape(hidden_size=32, num_layers=1, num_heads=1, intermediate_size=48), seed=0)
    projector = LinearGradientProjector(model, ProjectionOptions(rank=2, basis="random"))
    prompt, response = [tokenizer("What?")["input_ids"]], [tokenizer("Answer: 2", add_special_tokens=False)["input_ids"]]
    computed = gradient_frame({"example_id": ["e1"]}, projector, tokenizer, prompt, response, 4, "model")
    assert empty_gradient_frame({"example_id": pl.String}).schema == computed.schema


def test_27_a_json_file_holding_an_array_reads_its_rows(tmp_path, tokenizer):
    path = tmp_path / "pool.json"
    path.write_text(json.dumps([{"prompt": "p1", "response": "r1"}, 7, {"prompt": "p3", "response": "r3"}], indent=1))
    pool = normalize_pool(read_rows(path), tokenizer, MAX_TOKENS, source="pool.json")
    assert pool.examples["row_number"].to_list() == [1, 3]
    assert pool.rejects.rows() == [(2, "7", "expected a JSON object, got int")]


def test_28_30_unreadable_files_are_named(tmp_path):
    (tmp_path / "pool.csv").write_text("prompt,response\na,b\n")
    with pytest.raises(InputFileError, match=r"pool\.csv: unsupported format"):
        list(read_rows(tmp_path / "pool.csv"))
    with pytest.raises(InputFileError, match=r"nonexistent\.jsonl: input not found"):
        list(read_rows(tmp_path / "nonexistent.jsonl"))


def test_29_parquet_rows_of_the_wrong_types_are_quarantined(tmp_path, tokenizer):
    path = tmp_path / "pool.parquet"
    pl.DataFrame({"prompt": [1, 2], "response": [0.5, 1.5]}).vstack(
        pl.DataFrame({"prompt": [3], "response": [2.5]})
    ).write_parquet(path)
    pool = normalize_pool(read_rows(path), tokenizer, MAX_TOKENS, source="pool.parquet")
    assert pool.examples.is_empty() and pool.rejects["reason"].unique().to_list() == ["'prompt' and 'response' must be strings"]


@pytest.mark.parametrize(
    ("case", "values", "stored"),
    [
        (32, [1, "two"], ["1", "two"]),  # mixed types: carried as text
        (35, [{}, {"a": 1}], ["{}", '{"a": 1}']),  # objects (an empty one too): carried as JSON text
        (36, [None, None], [None, None]),
        (36, [[], ["x"]], [[], ["x"]]),
    ],
)
def test_32_35_36_extra_columns_are_carried_and_storable(tmp_path, tokenizer, case, values, stored):
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "response": "r", "extra": v}) + "\n" for i, v in enumerate(values)))
    pool = normalize_pool(read_rows(path), tokenizer, MAX_TOKENS, source="pool.jsonl")
    assert pool.examples["extra"].to_list() == stored
    pool.examples.write_delta(str(tmp_path / "table"))  # Parquet cannot store an empty struct: this used to fail
    assert pl.read_delta(str(tmp_path / "table"))["extra"].to_list() == stored


def write_queries(tmp_path: Path, records: list[dict]) -> Path:
    path = tmp_path / "queries.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_37_38_39_query_rows_without_a_reference_or_with_a_duplicate_id_are_quarantined(tmp_path):
    records = [{"query_id": f"q{i}", "prompt": f"What is {i}?", "reference": str(i)} for i in range(5)]
    records[1].pop("reference")
    records[3]["reference"] = " "
    records.append({"query_id": "q0", "prompt": "again", "reference": "0"})
    queries, rejects = load_queries(write_queries(tmp_path, records), "numeric")
    assert queries["query_id"].to_list() == ["q0", "q2", "q4"]
    assert rejects.select("row_number", "reason").rows() == [
        (2, "needs a non-empty 'prompt' and 'reference'"),
        (4, "needs a non-empty 'prompt' and 'reference'"),
        (6, "duplicate query_id of row 1"),
    ]
    none, rejected = load_queries(write_queries(tmp_path, [{"prompt": "p"}] * 3), "numeric")
    assert none.is_empty() and rejected.height == 3  # 38: the queries asset then fails naming the file


def test_40_e1_a_query_row_cannot_make_the_pipeline_import_a_module(tmp_path):
    """A downloaded query file naming ``this:s`` used to import (and run) any module on sys.path."""
    settings = parse_settings({"grading": {"custom_graders": ["json:loads"]}}, "s.yaml", tmp_path)
    records = [
        {"prompt": "a", "reference": "1", "grader": "this:s"},
        {"prompt": "b", "reference": "2", "grader": "json:loads"},
        {"prompt": "c", "reference": "3", "grader": "numerik"},
        {"prompt": "d", "reference": "4", "grader": "exact"},
    ]
    had_this = "this" in sys.modules
    queries, rejects = load_queries(
        write_queries(tmp_path, records), settings.grading.default_grader, settings.grading.allowed_graders()
    )
    assert queries["grader"].to_list() == ["json:loads", "exact"]
    assert rejects["reason"].to_list() == [
        "grader 'this:s' is not allowed (list it in grading.custom_graders)",
        "grader 'numerik' is not allowed (list it in grading.custom_graders)",
    ]
    assert ("this" in sys.modules) == had_this


@pytest.mark.parametrize(
    ("case", "grading", "message"),
    [
        (40, {"default_grader": "numerik"}, r"grading\.default_grader: grader 'numerik': expected one of"),
        (40, {"custom_graders": ["module_only"]}, r"grading\.custom_graders: grader 'module_only': expected one of"),
        (45, {"default_grader": "regex"}, r"grading: the regex grader needs grading\.regex"),
        (46, {"default_grader": "regex", "regex": "Answer: ("}, r"grading\.regex: not a valid regular expression: missing \)"),
    ],
)
def test_40_45_46_grader_settings_fail_when_loaded(tmp_path, case, grading, message):
    with pytest.raises(SettingsError, match=rf"^s\.yaml: {message}"):
        parse_settings({"grading": grading}, "s.yaml", tmp_path)


def test_41_an_unimportable_custom_grader_is_named_before_rollouts():
    with pytest.raises(GraderError, match=r"grader 'no_such_module_xyz:grade': cannot import module 'no_such_module_xyz'"):
        validate_grader("no_such_module_xyz:grade")


GRADERS = """
import math
def raises(completion, reference):
    return {}[completion]
def nan(completion, reference):
    return math.nan
def text(completion, reference):
    return "yes"
"""


@pytest.mark.parametrize(
    ("case", "function", "message"),
    [
        (42, "raises", r"query q1, rollout q1-0: grader '\w+:raises' raised KeyError: 'Answer: 2' \(reference '2'"),
        (43, "text", r"query q1, rollout q1-0: grader '\w+:text' returned str; expected bool, float or Grade"),
        (44, "nan", r"query q1, rollout q1-0: grader '\w+:nan' returned a reward of nan .*a reward must be finite"),
    ],
)
def test_42_43_44_a_custom_grader_that_fails_is_named_with_the_query(tmp_path, monkeypatch, case, function, message):
    module = f"drift_bad_grader_{case}"
    (tmp_path / f"{module}.py").write_text(GRADERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    rollouts = pl.DataFrame({"rollout_id": ["q1-0"], "query_id": ["q1"], "completion": ["Answer: 2"], "model_fingerprint": ["m"]})
    queries = pl.DataFrame({"query_id": ["q1"], "reference": ["2"], "grader": [f"{module}:{function}"]})
    with pytest.raises(GraderError, match=message):
        grade_rollouts(rollouts, queries, GradingOptions())


def test_45_the_regex_grader_named_by_a_query_needs_a_pattern_before_rollouts():
    with pytest.raises(GraderError, match=r"grader 'regex' needs grading\.regex"):
        validate_grader("regex", GradingOptions())
    validate_grader("regex", GradingOptions(regex=r"FINAL=(\w+)"))


def test_48_all_wrong_rollouts_leave_queries_to_use_where_unsolved_queries_use_their_reference():
    summary = {"queries": 8, "queries_mixed": 0, "queries_all_correct": 0, "queries_all_wrong": 8}
    assert usable_queries(summary, "signed", "reference") == 8
    assert usable_queries(summary, "signed", "skip") == 0


def test_50_an_example_limit_beyond_the_models_context_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 256}))
    with pytest.raises(ValueError, match=r"data\.max_example_tokens = 2000 exceeds the model's context of 256 tokens"):
        resolve_max_model_len(2000, str(tmp_path), "data.max_example_tokens")
    assert resolve_max_model_len(None, str(tmp_path), "data.max_example_tokens") == 256


@pytest.mark.parametrize(
    ("case", "text", "message"),
    [
        (51, "rollout:\n  sample_per_query: 4\n", r"unknown key 'rollout\.sample_per_query'"),
        (52, "rollout:\n  samples_per_query: four\n", r"rollout\.samples_per_query: .*\(got 'four'\)"),
        (53, "projection:\n  rank: -1\n", r"projection\.rank: .*greater than or equal to 1 \(got -1\)"),
        (54, "selection:\n  fraction: 0\n", r"selection\.fraction: .*greater than 0 \(got 0\)"),
        (55, "selection:\n  method: top_k\n", r"selection: selection\.k is required when selection\.method is top_k"),
        (56, "rollout: [unclosed\n", r"not valid YAML"),
        (59, "projection:\n  rank: 8\nprojection:\n  shards: 2\n", r"not valid YAML: .*key 'projection' appears twice"),
        (59, "projection:\n  rank: 8\n  rank: 4\n", r"not valid YAML: .*key 'rank' appears twice"),
    ],
)
def test_51_59_settings_errors_are_one_line_naming_the_file_and_key(tmp_path, case, text, message):
    path = tmp_path / "settings.yaml"
    path.write_text(text)
    with pytest.raises(SettingsError, match=message) as raised:
        load_settings(path)
    assert str(path) in str(raised.value)


def test_58_top_k_that_keeps_the_whole_pool_warns():
    assert selection_warning("top_k", 100_000, 120) == (
        "selection.k = 100000 is not below the pool's 120 examples: every example is selected and nothing is refined"
    )
    assert selection_warning("top_k", 119, 120) is None and selection_warning("top_fraction", None, 120) is None


def test_57_60_a_missing_settings_file_is_named_and_test_queries_are_optional(tmp_path):
    with pytest.raises(SettingsError, match=r"missing\.yaml: settings file not found"):
        load_settings(tmp_path / "missing.yaml")
    assert parse_settings({"data": {"training_pool": "p.jsonl"}}, "s.yaml", tmp_path).data.test_queries is None


@pytest.mark.parametrize(
    ("case", "files", "message"),
    [
        (65, None, r"model\.path: .*my_model does not exist or is not a directory"),
        (66, {}, r"model\.path: .*my_model has no config\.json"),
        (
            67,
            {"config.json": '{"model_type": "llama"}', "model.safetensors": ""},
            r"model\.path: .*my_model has no tokenizer files",
        ),
        (68, {"config.json": "{}", "tokenizer.json": "{}"}, r"model\.path: .*config\.json has no 'model_type'"),
        (68, {"config.json": "{oops", "tokenizer.json": "{}"}, r"model\.path: .*config\.json is not valid JSON"),
    ],
)
def test_65_68_a_model_directory_that_cannot_work_is_named(tmp_path, case, files, message):
    model = tmp_path / "my_model"
    if files is not None:
        model.mkdir()
        for name, content in files.items():
            (model / name).write_text(content)
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        check_model_directory(model)


# ---------- The reliability probe of 2026-12-05 (its case ids, "N…", in each entry) ----------

NFC_TEXT, NFD_TEXT = "Qu\u2019est-ce qu\u2019un caf\u00e9 ?", "Qu\u2019est-ce qu\u2019un cafe\u0301 ?"
LONG_CHAT = [("user" if turn % 2 == 0 else "assistant", "What is 12 + 13? " * 2) for turn in range(10_000)]

# As POOL_ROWS: (case, what, the lines before a last good row, the outcome of each).
POOL_ROWS_2026_12_05 = [
    (
        "N15",
        "the same text with other extra columns",
        [
            row({"prompt": "p1", "response": "r1", "category": "a", "is_corrupted": False}),
            row({"prompt": "p2", "response": "r2", "category": "a", "is_corrupted": False}),
            row({"prompt": "p2", "response": "r2", "category": "b", "is_corrupted": True, "annotator": "x"}),
        ],
        [KEPT, KEPT, r"^duplicate of row 2$"],
    ),
    (
        "N16",
        "the same prompt and response in NFC and in NFD",
        [row({"prompt": NFC_TEXT, "response": "caf\u00e9"}), row({"prompt": NFD_TEXT, "response": "cafe\u0301"})],
        [KEPT, r"^duplicate of row 1$"],
    ),
    (
        "N16",
        "a chat row in NFD after its NFC twin",
        [chat(("user", NFC_TEXT), ("assistant", "\u00e9t\u00e9")), chat(("user", NFD_TEXT), ("assistant", "e\u0301te\u0301"))],
        [KEPT, r"^duplicate of row 1$"],
    ),
    (
        "N27",
        "10,000 messages in one row",
        [chat(*LONG_CHAT)],
        [rf"^over the maximum length \(\d+ tokens > data\.max_example_tokens={MAX_TOKENS}\)$"],
    ),
]


@pytest.mark.parametrize(
    ("case", "what", "lines", "outcomes"), POOL_ROWS_2026_12_05, ids=[f"{c[0]}-{c[1]}" for c in POOL_ROWS_2026_12_05]
)
def test_2026_12_05_a_bad_pool_row_is_quarantined_with_its_reason(tmp_path, tokenizer, case, what, lines, outcomes):
    test_a_bad_pool_row_is_quarantined_with_its_reason_and_costs_nothing_else(tmp_path, tokenizer, case, what, lines, outcomes)


def test_N16_ids_and_text_are_nfc_and_an_nfc_examples_id_is_the_one_earlier_releases_gave(tmp_path, tokenizer):
    """The id hashes the NFC text the table stores, so one id never stands for two tokenizations.
    Text already in NFC (all ASCII text is) keeps its id: stored gradients stay reusable."""
    path = tmp_path / "pool.jsonl"
    path.write_bytes(row({"prompt": NFD_TEXT, "response": "cafe\u0301"}) + b"\n" + GOOD + b"\n")
    pool = normalize_pool(read_rows(path), tokenizer, MAX_TOKENS, source="pool.jsonl")
    first = pool.examples.row(0, named=True)
    assert (first["prompt"], first["response"]) == (NFC_TEXT, "caf\u00e9")
    assert json.loads(first["messages"]) == [{"role": "user", "content": NFC_TEXT}, {"role": "assistant", "content": "caf\u00e9"}]
    assert first["example_id"] == example_id_for(json.loads(first["messages"]))
    # Computed at 7fedcc0, before ids were NFC: the same ids for text that already was.
    assert pool.examples["example_id"][1] == "47f420eba98351388635"
    nfc_chat = [
        {"role": "user", "content": NFC_TEXT},
        {"role": "assistant", "content": "Answer: \u00e9t\u00e9 \u2014 \u4f60\u597d"},
    ]
    assert example_id_for(nfc_chat) == "af551bb26ca92c3a9ed1"


def test_N16_the_pool_tables_code_version_changed_with_its_ids():
    """Old pool tables (NFD rows under their old ids, and their duplicates) are recomputed, not mixed
    with the new ones: the pool's implementation version is what its code version starts with."""
    from drift_assets.defs.sources import POOL_VERSION

    assert POOL_VERSION == "2"


def test_N27_a_huge_chat_row_costs_no_slowdown_and_keeps_a_bounded_raw_text(tmp_path, tokenizer):
    path = tmp_path / "pool.jsonl"
    path.write_bytes(chat(*LONG_CHAT) + b"\n" + GOOD + b"\n")
    assert path.stat().st_size > 500_000
    started = time.perf_counter()
    pool = normalize_pool(read_rows(path), tokenizer, MAX_TOKENS, source="pool.jsonl")
    assert time.perf_counter() - started < 5.0  # a quarter of a second here; quadratic work would take minutes
    assert pool.rejects["row_number"].to_list() == [1] and len(pool.rejects["raw"][0]) <= 2000


def write_lines(tmp_path: Path, lines: list[bytes]) -> Path:
    path = tmp_path / "queries.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def query(query_id: str, prompt: str = "What is 1 + 1?", **fields) -> bytes:
    return row({"query_id": query_id, "prompt": prompt, "reference": "2", **fields})


# (case, what, the lines of a query file, the outcome of each: KEPT or a regex its quarantine reason must match)
QUERY_ROWS_2026_12_05 = [
    (
        "N25",
        "ids shaped like paths and partition keys",
        [query("../../../../tmp/x"), query("/etc/passwd"), query("checkpoint=base/x")],
        [KEPT, KEPT, KEPT],
    ),
    (
        "N25",
        "an id holding a newline and a terminal escape",
        [query("a\nb\x1b[31m"), query("tab\there")],
        [r"^query_id has control characters \('\\n', '\\x1b'\)", r"^query_id has control characters \('\\t'\)"],
    ),
    ("N25", "byte 0xFF", [b'{"query_id": "b", "prompt": "What is 9\xff?", "reference": "9"}'], [r"^not UTF-8 \(byte 0xff"]),
    ("N25", "a lone surrogate", [b'{"query_id": "s", "prompt": "What is \\udc00?", "reference": "9"}'], [r"^a lone surrogate"]),
    (
        "N24",
        "a reference_response beyond the length limit",
        [query("long", reference_response="Answer: " + "9" * 4060), query("short", reference_response="Answer: 2")],
        [
            r"^query 'long': reference_response over the maximum length \(\d{4} tokens with its prompt > "
            rf"data\.max_example_tokens={MAX_TOKENS}\)$",
            KEPT,
        ],
    ),
    (
        "N24",
        "a 3,000-digit reference (the reference_response it stands for)",
        [row({"query_id": "digits", "prompt": "What is 1 + 1?", "reference": "7" * 3000})],
        [r"^query 'digits': reference \(its reference_response\) over the maximum length \(\d{4} tokens with its prompt"],
    ),
]


@pytest.mark.parametrize(
    ("case", "what", "lines", "outcomes"), QUERY_ROWS_2026_12_05, ids=[f"{c[0]}-{c[1]}" for c in QUERY_ROWS_2026_12_05]
)
def test_2026_12_05_a_bad_query_row_is_quarantined_with_its_row_number(tmp_path, tokenizer, case, what, lines, outcomes):
    path = write_lines(tmp_path, [*lines, query("last")])
    queries, rejects = load_queries(path, "numeric", tokenizer=tokenizer, max_tokens=MAX_TOKENS)
    reasons = dict(zip(rejects["row_number"], rejects["reason"], strict=True))
    kept = queries["query_id"].to_list()
    assert kept[-1] == "last" and len(lines) + 1 not in reasons
    for number, outcome in enumerate(outcomes, start=1):
        if outcome is KEPT:
            assert number not in reasons, (what, reasons[number])
        else:
            assert pl.Series([reasons.get(number, "(kept)")]).str.contains(outcome).item(), (what, reasons.get(number))
    assert len(kept) + rejects.height == len(lines) + 1
    assert all(query_id.isprintable() for query_id in kept)  # nothing that rewrites the terminal reaches a log line
    rejects.write_parquet(tmp_path / "rejects.parquet")
    queries.write_parquet(tmp_path / "queries.parquet")


def test_N24_the_basis_is_never_fitted_on_a_reference_beyond_the_models_context(tokenizer):
    """Whatever let it through (a table written before references were limited), the PCA fit refuses
    a reference longer than the model's positions, naming the query and its length."""
    model = build_tiny_llama(
        tokenizer, TinyLlamaShape(hidden_size=32, num_layers=1, num_heads=1, intermediate_size=48, max_positions=64), seed=0
    )
    queries = pl.DataFrame(
        {
            "query_id": ["ok", "long"],
            "prompt": ["What is 1 + 1?"] * 2,
            "reference_response": ["Answer: 2", "Answer: " + "9" * 200],
        }
    )
    with pytest.raises(
        ValueError,
        match=r"validation query 'long': its reference_response is 2\d\d tokens with its prompt, "
        r"beyond the model's context of 64 tokens",
    ):
        reference_basis(model, ProjectionOptions(rank=2, basis="pca"), tokenizer, queries, 4)
    reference_basis(model, ProjectionOptions(rank=2, basis="pca"), tokenizer, queries.head(1), 4)


def test_N26_a_custom_grader_that_never_returns_ends_grading_naming_the_query_the_grader_and_the_setting(tmp_path, monkeypatch):
    module = "drift_slow_grader_n26"
    (tmp_path / f"{module}.py").write_text(SLOW_GRADERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    rollouts, queries = grading_inputs(module)
    lines: list[str] = []
    progress = Progress("grading", 0, lines.append, unit="rollouts", every_s=0.2)
    started = time.perf_counter()
    with pytest.raises(
        GraderError,
        match=rf"^query q1, rollout q1-0: grader '{module}:forever' did not return within grading\.timeout_s = 0\.6 s "
        r"\(reference '2', completion 'Answer: 2'\): fix the grader, or raise grading\.timeout_s$",
    ):
        grade_rollouts(rollouts, queries, GradingOptions(timeout_s=0.6), progress=progress.update)
    assert time.perf_counter() - started < 5
    assert not [p for p in multiprocessing.active_children() if p.name == "drift-custom-grader" and p.is_alive()]
    # While it waits, the progress lines say on what.
    assert any("grading: 1/3" in line and f"waiting on grader '{module}:forever' for query q1" in line for line in lines), lines


def test_N26_a_grader_that_never_returns_does_not_keep_the_process_from_exiting(tmp_path):
    (tmp_path / "drift_slow_grader_exit.py").write_text(SLOW_GRADERS)
    script = (
        "import polars as pl\n"
        "from drift_assets.core.grading.graders import GradingOptions, grade_rollouts\n"
        "from drift_assets_tests.helpers.graders import grading_inputs\n"
        "grade_rollouts(*grading_inputs('drift_slow_grader_exit'), GradingOptions(timeout_s=0.5))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).parents[2])])}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "did not return within grading.timeout_s = 0.5 s" in done.stderr
    assert time.perf_counter() - started < 60


def test_N26_custom_graders_under_a_timeout_stay_fast_and_the_timeout_versions_nothing(tmp_path, monkeypatch):
    module = "drift_quick_grader_n26"
    (tmp_path / f"{module}.py").write_text(SLOW_GRADERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    n = 2000
    rollouts = pl.DataFrame(
        {
            "rollout_id": [f"q-{i}" for i in range(n)],
            "query_id": ["q"] * n,
            "completion": ["Answer: 2"] * n,
            "model_fingerprint": ["m"] * n,
        }
    )
    queries = pl.DataFrame({"query_id": ["q"], "reference": ["2"], "grader": [f"{module}:quick"]})
    started = time.perf_counter()
    grades = grade_rollouts(rollouts, queries, GradingOptions(timeout_s=30))
    assert time.perf_counter() - started < 5  # one process for all calls; one per call would take minutes
    assert grades["correct"].all() and grades.height == n
    assert grade_answer("a", "b", f"{module}:with_alarm").correct  # a grader may use signals, as on the main thread
    # A timeout changes no grade: it is not part of the grades' code version.
    fast, patient = (parse_settings({"grading": {"timeout_s": t}}, "s.yaml", tmp_path) for t in (5, 600))
    assert code_version("2", given(GradesGiven, fast)) == code_version("2", given(GradesGiven, patient))
    assert fast.grading.options().timeout_s == 5
    with pytest.raises(SettingsError, match=r"grading\.timeout_s: .*greater than 0"):
        parse_settings({"grading": {"timeout_s": 0}}, "s.yaml", tmp_path)
