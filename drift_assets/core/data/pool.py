"""Reading and normalizing a training pool; quarantining the rows that cannot be used.

Accepted inputs: JSONL, Parquet, or a ``datasets`` dataset saved with ``save_to_disk``. A row is
either chat ``messages`` (a list of ``{"role", "content"}`` ending with the assistant's turn) or
``prompt`` + ``response`` strings. Every other column is carried through unchanged.

Each kept example gets a stable ``example_id``: a content hash of its messages, so the same example
keeps its id (and its cached gradient) wherever it sits in the file. Text is stored and hashed in
Unicode NFC: an "é" typed as one code point or as "e" plus an accent is the same example, and one id
never stands for two tokenizations. Bad rows are never dropped
silently: they go to the rejects table with their row number and a reason.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from drift_assets.core.data.sequences import encode_prompt, encode_response, render_messages_prompt, render_prompt

POOL_SCHEMA = {
    "example_id": pl.String,
    "row_number": pl.Int64,
    "prompt": pl.String,
    "response": pl.String,
    "messages": pl.String,
    "n_prompt_tokens": pl.Int64,
    "n_response_tokens": pl.Int64,
    "source": pl.String,
}
CORE_COLUMNS = tuple(POOL_SCHEMA)
INPUT_TEXT_COLUMNS = ("prompt", "response", "messages")
# Columns the refined dataset adds to the pool's: an input column of one of these names would be
# confused with the pipeline's own (a 1-5 rating named "score" exported as the influence score).
OUTPUT_COLUMNS = ("score", "rank", "selected", "weight")
# An extra input column under a name the pipeline uses is kept, renamed with this prefix.
RENAMED_PREFIX = "pool_"
# The roles chat templates know; another ("human", "bot") would pass here and fail in the user's trainer.
ROLES = ("system", "user", "assistant", "tool")
REJECT_SCHEMA = {"row_number": pl.Int64, "raw": pl.String, "reason": pl.String}


class InputFileError(ValueError):
    """An input file that cannot be read at all (missing, unknown format)."""


@dataclass
class RawRow:
    row_number: int  # 1-based line number for JSONL, 0-based row index otherwise
    record: dict[str, Any] | None
    raw_text: str
    parse_error: str | None = None

    def rejected(self, reason: str) -> dict[str, Any]:
        """This row as a row of the rejects table."""
        return {"row_number": self.row_number, "raw": self.raw_text[:2000], "reason": reason}


def _read_jsonl(path: Path) -> Iterator[RawRow]:
    # Lines are decoded one by one, so that one bad byte or lone surrogate costs its row, not the file.
    with path.open("rb") as handle:
        for line_number, data in enumerate(handle, start=1):
            if line_number == 1:
                data = data.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark, as some editors write
            try:
                line = data.decode("utf-8")
            except UnicodeDecodeError as error:
                yield RawRow(
                    line_number,
                    None,
                    data.decode("utf-8", "replace").rstrip("\n"),
                    f"not UTF-8 (byte 0x{data[error.start]:02x} at column {error.start + 1})",
                )
                continue
            if not line.strip():
                continue
            if line_number == 1 and line.lstrip().startswith("[") and path.suffix == ".json":
                yield from _read_json_array(path)
                return
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                yield RawRow(line_number, None, line.rstrip("\n"), f"unparseable JSON ({error.msg} at column {error.colno})")
                continue
            yield _checked_record(line_number, record, line.rstrip("\n"))


def _read_json_array(path: Path) -> Iterator[RawRow]:
    """A ``.json`` file holding one array of row objects (rows numbered from 1)."""
    try:
        records = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputFileError(f"{path}: starts like a JSON array but does not parse as one ({error})") from None
    for index, record in enumerate(records, start=1):
        yield _checked_record(index, record, json.dumps(record, ensure_ascii=False, default=str)[:2000])


def _checked_record(row_number: int, record: Any, raw_text: str) -> RawRow:
    if not isinstance(record, dict):
        return RawRow(row_number, None, raw_text, f"expected a JSON object, got {type(record).__name__}")
    try:  # JSON may escape a lone surrogate (\ud800), which no table or file can store
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as error:
        return RawRow(
            row_number,
            None,
            raw_text.encode("utf-8", "replace").decode("utf-8"),
            f"a lone surrogate ({error.object[error.start]!a}) that is not text",
        )
    return RawRow(row_number, record, raw_text)


def _read_table(frame: pl.DataFrame) -> Iterator[RawRow]:
    for index, record in enumerate(frame.iter_rows(named=True)):
        yield RawRow(index, record, json.dumps(record, default=str)[:2000])


def read_rows(path: str | Path) -> Iterator[RawRow]:
    """Rows of a JSONL file, a Parquet file, or a saved ``datasets`` dataset directory."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: input not found")
    if path.is_dir():
        if not (path / "dataset_info.json").exists() and not (path / "dataset_dict.json").exists():
            raise InputFileError(f"{path}: a directory, but not a dataset saved with datasets' save_to_disk")
        from datasets import load_from_disk

        dataset = load_from_disk(str(path))
        if hasattr(dataset, "keys"):  # a DatasetDict: use its train split (or its only split)
            split = "train" if "train" in dataset else next(iter(dataset.keys()))
            dataset = dataset[split]
        yield from _read_table(pl.from_arrow(dataset.data.table))
    elif path.suffix in {".jsonl", ".json", ".ndjson"}:
        yield from _read_jsonl(path)
    elif path.suffix == ".parquet":
        yield from _read_table(pl.read_parquet(path))
    else:
        raise InputFileError(f"{path}: unsupported format (use .jsonl, .parquet, or a datasets directory)")


def _messages_from_record(record: dict[str, Any]) -> tuple[list[dict[str, str]] | None, str | None]:
    """(messages, None) or (None, reason)."""
    if record.get("messages") is not None:
        messages = record["messages"]
        if isinstance(messages, str):
            try:
                messages = json.loads(messages)
            except json.JSONDecodeError:
                return None, "'messages' is a string but not JSON"
        if not isinstance(messages, list) or not messages:
            return None, "'messages' must be a non-empty list"
        for turn in messages:
            if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or not isinstance(turn.get("content"), str):
                return None, "every message needs string 'role' and 'content'"
            if turn["role"] not in ROLES:
                return None, f"role {turn['role']!r} is not one of {', '.join(ROLES)}"
        if messages[-1]["role"] != "assistant":
            return None, "the last message must be the assistant's response"
        if len(messages) < 2:
            return None, "'messages' needs at least one turn before the assistant's response"
        turns = [turn["role"] for turn in messages if turn["role"] != "system"]
        if turns and turns[0] != "user":
            return None, "the first turn (after any system message) must be the user's"
        return [{"role": t["role"], "content": nfc(t["content"])} for t in messages], None
    prompt, response = record.get("prompt"), record.get("response")
    if prompt is None or response is None:
        nulls = [key for key in ("prompt", "response") if key in record and record[key] is None]
        if nulls:
            return None, f"{' and '.join(repr(key) for key in nulls)} is null"
        return None, "no 'messages' field and no 'prompt' + 'response' fields"
    if not isinstance(prompt, str) or not isinstance(response, str):
        return None, "'prompt' and 'response' must be strings"
    return [{"role": "user", "content": nfc(prompt)}, {"role": "assistant", "content": nfc(response)}], None


def nfc(text: str) -> str:
    """``text`` in Unicode NFC (what most text already is: then unchanged, and so is its id)."""
    return unicodedata.normalize("NFC", text)


def example_id_for(messages: list[dict[str, str]]) -> str:
    """A content hash of the messages' NFC text (identical to the hash of the text as given where
    that is NFC already, as ids were before they were normalized)."""
    messages = [{**turn, "content": nfc(turn["content"])} for turn in messages]
    canonical = json.dumps(messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:20]


@dataclass
class NormalizedPool:
    examples: pl.DataFrame
    rejects: pl.DataFrame
    renamed_columns: dict[str, str]  # input column -> the name it is carried under


def carried_column_names(columns: set[str]) -> dict[str, str]:
    """Every extra input column's name in the pool table: its own, or ``pool_<name>`` where the
    pipeline uses that name (``source`` is the one core column an input may set)."""
    reserved = (set(CORE_COLUMNS) - {"source"}) | set(OUTPUT_COLUMNS)
    names = {}
    for column in sorted(columns - set(INPUT_TEXT_COLUMNS) - {"source"}):
        name = column
        while name in reserved or (name != column and name in columns):
            name = RENAMED_PREFIX + name
        names[column] = name
    return names


def normalize_pool(rows: Iterator[RawRow], tokenizer, max_example_tokens: int, source: str) -> NormalizedPool:
    """Keep usable rows with ids and token counts; quarantine the rest with a reason."""
    kept: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    first_row_of: dict[str, int] = {}
    extras_of_kept: list[dict[str, Any]] = []
    for row in rows:
        if row.parse_error:
            rejects.append(row.rejected(row.parse_error))
            continue
        messages, problem = _messages_from_record(row.record)
        if problem:
            rejects.append(row.rejected(problem))
            continue
        response = messages[-1]["content"]
        if not response.strip():
            rejects.append(row.rejected("empty response"))
            continue
        example_id = example_id_for(messages)
        if example_id in first_row_of:
            rejects.append(row.rejected(f"duplicate of row {first_row_of[example_id]}"))
            continue
        n_prompt = len(encode_prompt(tokenizer, render_messages_prompt(tokenizer, messages[:-1])))
        n_response = len(encode_response(tokenizer, response))
        if n_prompt + n_response > max_example_tokens:
            rejects.append(
                row.rejected(
                    f"over the maximum length ({n_prompt + n_response} tokens > data.max_example_tokens={max_example_tokens})"
                )
            )
            continue
        first_row_of[example_id] = row.row_number
        extras_of_kept.append({k: v for k, v in row.record.items() if k not in INPUT_TEXT_COLUMNS and k != "source"})
        kept.append(
            {
                "example_id": example_id,
                "row_number": row.row_number,
                "prompt": messages[-2]["content"] if len(messages) == 2 else json.dumps(messages[:-1], ensure_ascii=False),
                "response": response,
                "messages": json.dumps(messages, ensure_ascii=False),
                "n_prompt_tokens": n_prompt,
                "n_response_tokens": n_response,
                "source": str(row.record.get("source") or source),
            }
        )
    names = carried_column_names({column for extras in extras_of_kept for column in extras})
    # Objects are carried as JSON text: their fields vary by row, and Parquet cannot store an empty one.
    as_json = {column for extras in extras_of_kept for column, value in extras.items() if isinstance(value, dict)}
    for example, extras in zip(kept, extras_of_kept, strict=True):
        example.update(
            {
                names[column]: json.dumps(value, ensure_ascii=False, default=str)
                if column in as_json and value is not None
                else value
                for column, value in extras.items()
            }
        )
    examples = pl.DataFrame(kept, infer_schema_length=None) if kept else pl.DataFrame(schema=POOL_SCHEMA)
    examples = examples.with_columns(
        pl.col("n_prompt_tokens").cast(pl.Int64),
        pl.col("n_response_tokens").cast(pl.Int64),
        # a column that is null in every row has no type a Delta table can store
        *(pl.col(name).cast(pl.String) for name, dtype in examples.schema.items() if dtype == pl.Null),
    )
    renamed = {column: name for column, name in names.items() if column != name}
    return NormalizedPool(examples=examples, rejects=pl.DataFrame(rejects, schema=REJECT_SCHEMA), renamed_columns=renamed)


def reject_reasons(rejects: pl.DataFrame) -> dict[str, int]:
    """How many rows were quarantined for each kind of reason: the reason without its particulars (a
    length in parentheses, the row a duplicate repeats)."""
    reasons = rejects.with_columns(pl.col("reason").str.replace(r" \(.*| of row \d+", "")).group_by("reason").len()
    return {reason: int(n) for reason, n in reasons.iter_rows()}


def require_examples(examples: pl.DataFrame, rejects: pl.DataFrame, path: str | Path) -> None:
    """Fail before any rollout or gradient when a pool has no usable example, with the commonest reasons."""
    if examples.is_empty():
        reasons = rejects["reason"].value_counts(sort=True).head(3).iter_rows() if rejects.height else []
        why = "; ".join(f"{count}× {reason}" for reason, count in reasons)
        raise InputFileError(
            f"{path}: no usable examples ({rejects.height} rows quarantined{': ' + why if why else ''}); "
            "see the training_pool_rejects table"
        )


def control_characters(text: str) -> list[str]:
    """The control characters in ``text`` (newlines, escapes, line separators): where an id holds
    one, every log line that names it can be rewritten on the terminal."""
    return list(dict.fromkeys(c for c in text if unicodedata.category(c) in ("Cc", "Zl", "Zp")))


def reference_tokens(tokenizer, prompt: str, reference_response: str) -> int:
    """The tokens of a reference answer's gradient pass: the rendered prompt and the response with its EOS."""
    return len(encode_prompt(tokenizer, render_prompt(tokenizer, prompt))) + len(encode_response(tokenizer, reference_response))


def load_queries(
    path: str | Path,
    default_grader: str,
    allowed_graders: tuple[str, ...] | None = None,
    tokenizer=None,
    max_tokens: int | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Validation/test queries: ``query_id``, ``prompt``, ``reference``, ``reference_response``, ``grader``.

    Returns (queries, rejects). ``query_id`` defaults to a content hash; ``reference_response`` (the
    off-policy target) defaults to the reference itself; ``grader`` to the settings' default. A row
    naming a grader outside ``allowed_graders`` is rejected: a query file must not choose which
    module the pipeline imports and calls. So is a ``query_id`` holding control characters (it is
    named in log lines), and, given a ``tokenizer``, a reference longer with its prompt than
    ``max_tokens`` (``data.max_example_tokens``): its gradient, and the projection basis fitted on
    it, would come from positions beyond what the model was trained on.
    """
    kept, rejects, seen = [], [], {}
    for row in read_rows(path):
        if row.parse_error:
            rejects.append(row.rejected(row.parse_error))
            continue
        record = row.record
        prompt, reference = record.get("prompt"), record.get("reference")
        if not isinstance(prompt, str) or not prompt.strip() or reference is None or str(reference).strip() == "":
            rejects.append(row.rejected("needs a non-empty 'prompt' and 'reference'"))
            continue
        query_id = str(record.get("query_id") or hashlib.sha256(prompt.encode()).hexdigest()[:16])
        controls = control_characters(query_id)
        if controls:
            rejects.append(row.rejected(f"query_id has control characters ({', '.join(repr(c) for c in controls)})"))
            continue
        if query_id in seen:
            rejects.append(row.rejected(f"duplicate query_id of row {seen[query_id]}"))
            continue
        grader = str(record.get("grader") or default_grader)
        if allowed_graders is not None and grader not in allowed_graders:
            rejects.append(row.rejected(f"grader {grader!r} is not allowed (list it in grading.custom_graders)"))
            continue
        reference_response = str(record.get("reference_response") or reference)
        if tokenizer is not None and max_tokens is not None:
            n_tokens = reference_tokens(tokenizer, prompt, reference_response)
            if n_tokens > max_tokens:
                what = "reference_response" if record.get("reference_response") else "reference (its reference_response)"
                rejects.append(
                    row.rejected(
                        f"query {query_id!r}: {what} over the maximum length ({n_tokens} tokens with its prompt > "
                        f"data.max_example_tokens={max_tokens})"
                    )
                )
                continue
        seen[query_id] = row.row_number
        kept.append(
            {
                "query_id": query_id,
                "prompt": prompt,
                "reference": str(reference),
                "reference_response": reference_response,
                "grader": grader,
            }
        )
    schema = {c: pl.String for c in ("query_id", "prompt", "reference", "reference_response", "grader")}
    return pl.DataFrame(kept, schema=schema), pl.DataFrame(rejects, schema=REJECT_SCHEMA)
