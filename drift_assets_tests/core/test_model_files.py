"""Model directories, fingerprints and where exports may be written (the 2026-12-05 probe's cases
N3, N4, N9, N10, N12, N17, N20-N23, N28-N30, N46, N48, N49), at the library level."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml

from drift_assets.core.attribution.selection import refined_table, select, selection_warning
from drift_assets.core.data import fingerprint
from drift_assets.core.data.fingerprint import (
    CACHED_HASH_MIN_BYTES,
    HASH_CACHE_ENV_VAR,
    check_model_directory,
    content_hash,
    file_sha256,
    hash_cache_dir,
    model_fingerprint,
)
from drift_assets.core.data.outputs import MANIFEST_NAME, ExportPathError, write_export
from drift_assets.core.data.pool import normalize_pool, read_rows
from drift_assets.core.data.publish import export_dataset
from drift_assets.core.data.sequences import ChatTemplateError, render_messages_prompt, render_prompt, untemplated_turns_warning
from drift_assets.core.generation.engines import resolve_max_model_len
from drift_assets.settings import SettingsError, load_settings
from drift_assets.tasks.demo_outputs import replace_model_directory
from drift_assets.tasks.tiny_model import build_char_tokenizer
from drift_assets_tests.helpers.model_files import tiny_model_dir, write_padded_safetensors

REPO = Path(__file__).resolve().parents[2]


def perturb_in_place(path: Path, at: int, count: int = 16) -> None:
    """Change ``count`` bytes at ``at`` without changing the file's size (nor its header, before ``at``)."""
    with path.open("r+b") as handle:
        handle.seek(at)
        old = handle.read(count)
        handle.seek(at)
        handle.write(bytes(b ^ 0x5A for b in old))


def read_bytes_so_far() -> int:
    """Bytes this process has read through read() and similar calls (Linux's /proc/self/io rchar)."""
    return int(next(line for line in Path("/proc/self/io").read_text().splitlines() if line.startswith("rchar")).split()[1])


def wait_until_settled(path: Path) -> None:
    """Wait until ``path`` last changed over 2 s ago: a younger file's hash is not cached (see
    fingerprint._RACY_NANOSECONDS)."""
    age = time.time_ns() - path.stat().st_ctime_ns
    time.sleep(max(0.0, (2_100_000_000 - age) / 1e9))


@pytest.fixture
def hash_cache(tmp_path, monkeypatch) -> Path:
    """A cache folder of the test's own, and this process's entries forgotten (as in a new process)."""
    monkeypatch.setenv(HASH_CACHE_ENV_VAR, str(tmp_path / "hash-cache"))
    monkeypatch.setattr(fingerprint, "_IN_MEMORY", {})
    return tmp_path / "hash-cache"


# --- N20: fingerprints that cannot miss an in-place change -----------------------------------------


def test_n20_an_in_place_change_inside_a_weight_file_over_512_mib_changes_the_fingerprint(tmp_path, hash_cache):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (model / "tokenizer.json").write_text("{}")
    weights = model / "model.safetensors"
    ranges = write_padded_safetensors(weights, {"layer.weight": torch.randn(64, 64)}, pad_bytes=280 * 2**20)
    size, header = weights.stat().st_size, weights.read_bytes()[:4096]
    assert size > 512 * 2**20
    before = model_fingerprint(model)
    perturb_in_place(weights, ranges["layer.weight"][0] + 1000)
    assert (weights.stat().st_size, weights.read_bytes()[:4096]) == (size, header)
    assert model_fingerprint(model) != before


def test_a_large_files_hash_is_read_once_cached_by_inode_and_ctime_and_a_corrupt_entry_is_rebuilt(tmp_path, hash_cache):
    big = tmp_path / "weights.bin"
    with big.open("wb") as handle:  # sparse: 1 MiB of data past CACHED_HASH_MIN_BYTES of holes
        handle.seek(CACHED_HASH_MIN_BYTES)
        handle.write(os.urandom(2**20))
    size = big.stat().st_size

    def hashed() -> tuple[str, int]:
        read = read_bytes_so_far()
        digest = file_sha256(big)
        return digest, read_bytes_so_far() - read

    def truth() -> str:
        return hashlib.sha256(big.read_bytes()).hexdigest()

    wait_until_settled(big)
    digest, read = hashed()
    assert digest == truth() and read >= size
    digest, read = hashed()
    assert digest == truth() and read < 2**16  # this process's entry answered: the file was not read again
    fingerprint._IN_MEMORY.clear()  # as in another process: the folder answers
    digest, read = hashed()
    assert digest == truth() and read < 2**16
    [entry] = [p for p in hash_cache.iterdir()]
    entry.write_text('{"key": "sha256-v1:torn')  # a torn or foreign entry is ignored and rebuilt
    fingerprint._IN_MEMORY.clear()
    digest, read = hashed()
    assert digest == truth() and read >= size
    assert json.loads(entry.read_text())["sha256"] == digest

    # Changed in place with its size and modification time put back (what os.utime allows): the
    # ctime still moves, so the change is seen and the file read once more.
    mtime = big.stat().st_mtime_ns
    perturb_in_place(big, CACHED_HASH_MIN_BYTES + 10)
    os.utime(big, ns=(mtime, mtime))
    assert big.stat().st_size == size and big.stat().st_mtime_ns == mtime
    wait_until_settled(big)
    changed, read = hashed()
    assert changed != digest and changed == truth() and read >= size
    assert hashed() == (changed, pytest.approx(0, abs=2**16))


def test_a_file_changed_moments_ago_is_hashed_again_until_its_timestamps_settle(tmp_path, hash_cache):
    """File systems stamp times at a coarse tick: a change within the same tick as the hash would keep
    the key, so a young file's hash is not cached."""
    big = tmp_path / "young.bin"
    with big.open("wb") as handle:
        handle.truncate(CACHED_HASH_MIN_BYTES)
    file_sha256(big)
    assert not hash_cache.exists() or not any(hash_cache.iterdir())


def test_processes_side_by_side_share_the_cache_without_a_torn_entry(tmp_path, hash_cache):
    big = tmp_path / "shared.bin"
    with big.open("wb") as handle:
        handle.seek(CACHED_HASH_MIN_BYTES)
        handle.write(b"tail")
    wait_until_settled(big)
    code = f"from drift_assets.core.data.fingerprint import file_sha256; print(file_sha256({str(big)!r}))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    processes = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    answers = {process.communicate(timeout=120)[0].strip() for process in processes}
    assert answers == {hashlib.sha256(big.read_bytes()).hexdigest()}
    [entry] = list(hash_cache.iterdir())  # one whole entry, no temporary file left
    assert json.loads(entry.read_text())["sha256"] in answers
    assert hash_cache_dir() == hash_cache


def test_small_files_hash_as_before_the_cache(tmp_path, hash_cache):
    """Files under CACHED_HASH_MIN_BYTES (the demo's model, most inputs) keep the data versions they had."""
    (tmp_path / "pool.jsonl").write_text('{"prompt": "p", "response": "r"}\n')
    legacy = hashlib.sha256()
    legacy.update(b"pool.jsonl")
    legacy.update(b"pool.jsonl:33:")
    legacy.update((tmp_path / "pool.jsonl").read_bytes())
    assert content_hash(tmp_path / "pool.jsonl") == legacy.hexdigest()
    assert not hash_cache.exists()


# --- N9, N10, N12, N23: model directories that cannot work are named -------------------------------


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("model") / "my_model")


@pytest.fixture
def model_copy(saved_model, tmp_path) -> Path:
    return Path(shutil.copytree(saved_model, tmp_path / "my_model"))


def test_the_saved_tiny_model_passes_the_checks(saved_model):
    check_model_directory(saved_model)


@pytest.mark.parametrize(
    ("case", "damage", "message"),
    [
        ("N9", lambda w: os.truncate(w, w.stat().st_size // 2), r"is truncated \(\d+ bytes; its header describes \d+\)"),
        ("N9", lambda w: os.truncate(w, 5), r"is truncated \(5 bytes, shorter than a safetensors header\)"),
        ("N9", lambda w: w.write_bytes(b"\xff" * 64), r"is not a safetensors file"),
        (
            "N9",
            lambda w: w.write_bytes((20).to_bytes(8, "little") + b"{not json at all!!!}"),
            r"has a corrupt safetensors header",
        ),
        ("N9", lambda w: w.open("ab").write(b"\0" * 8), r"is corrupt \(\d+ bytes; its header describes \d+\)"),
    ],
)
def test_n9_a_truncated_or_corrupt_safetensors_file_is_named_with_model_path(model_copy, case, damage, message):
    weights = model_copy / "model.safetensors"
    damage(weights)
    with pytest.raises(ValueError, match=rf"^model\.path: {weights} {message}.*; save the model again"):
        check_model_directory(model_copy)


def test_n12_a_model_directory_without_weights_is_named(model_copy):
    (model_copy / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=rf"^model\.path: {model_copy} has no weight file"):
        check_model_directory(model_copy)
    (model_copy / "model-00001-of-00002.safetensors").write_bytes(b"")
    (model_copy / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})
    )
    with pytest.raises(FileNotFoundError, match=r"index\.json names weight files that are missing: model-00002-of-00002"):
        check_model_directory(model_copy)


@pytest.mark.parametrize("setting", ["data.max_example_tokens", "rollout.max_model_len"])
def test_n10_a_config_without_a_context_length_names_the_file_and_the_setting(model_copy, setting):
    config = json.loads((model_copy / "config.json").read_text())
    del config["max_position_embeddings"]
    (model_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"{model_copy}/config\.json names no context length: set {setting}"):
        resolve_max_model_len(None, str(model_copy), setting)
    assert resolve_max_model_len(64, str(model_copy), setting) == 64


@pytest.mark.parametrize("config_file", ["config.json", "tokenizer_config.json"])
def test_n23_remote_code_named_by_the_model_directory_is_refused_and_never_imported(model_copy, tmp_path, config_file):
    marker = tmp_path / "imported"
    (model_copy / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((model_copy / config_file).read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (model_copy / config_file).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"^model\.path: {model_copy / config_file} names custom code \(auto_map: "):
        check_model_directory(model_copy)
    assert not marker.exists()


# --- N21, N22: chat templates -----------------------------------------------------------------------


def test_n22_a_chat_template_reaching_for_python_executes_nothing_and_names_its_file(model_copy, tmp_path):
    from transformers import AutoTokenizer

    marker = tmp_path / "pwned"
    template = model_copy / "chat_template.jinja"
    template.write_text(f"{{{{ cycler.__init__.__globals__.os.popen('touch {marker}; id').read() }}}}")
    tokenizer = AutoTokenizer.from_pretrained(model_copy)
    with pytest.raises(ChatTemplateError, match=rf"^{template}: the chat template fails to render \(SecurityError: "):
        render_prompt(tokenizer, "What is 1 + 1?")
    assert not marker.exists()


def test_n21_without_a_chat_template_multi_turn_rows_are_rendered_as_role_lines_with_a_warning(model_copy):
    from transformers import AutoTokenizer

    (model_copy / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer_config = json.loads((model_copy / "tokenizer_config.json").read_text())
    tokenizer_config.pop("pad_token", None)
    (model_copy / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    tokenizer = AutoTokenizer.from_pretrained(model_copy)
    assert tokenizer.chat_template is None and tokenizer.pad_token_id is None
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": "1+1?"},
                {"role": "assistant", "content": "2"},
            ]
        },
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
    ]
    pool = model_copy.parent / "pool.jsonl"
    pool.write_text("".join(json.dumps(row) + "\n" for row in rows))
    examples = normalize_pool(read_rows(pool), tokenizer, 128, source="pool.jsonl").examples
    assert examples.height == 2
    assert render_messages_prompt(tokenizer, rows[0]["messages"][:-1]) == "system: Be terse.\nuser: 1+1?\nassistant: "
    warning = untemplated_turns_warning(tokenizer, examples["messages"].to_list())
    assert warning.startswith("the tokenizer has no chat template: 1 rows with more than one turn before the response")
    assert "'role: content' lines" in warning
    tokenizer.chat_template = "{{ messages[0]['content'] }}"
    assert untemplated_turns_warning(tokenizer, examples["messages"].to_list()) is None


# --- N48, N30: exports never land on an input or on a file the export did not write ---------------


def write_settings(directory: Path, **groups) -> Path:
    raw = {
        "model": {"path": "model"},
        "data": {"training_pool": "pool.jsonl", "validation_queries": "val.jsonl", "test_queries": None},
        **groups,
    }
    path = directory / "settings.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("layout", "setting", "relation"),
    [
        ("pool in the export folder", "data.training_pool", "is"),
        ("pool symlinked to the export", "data.training_pool", "is"),
        ("pool hard-linked to the export", "data.training_pool", "is the same file as"),
        ("export folder inside the model", "model.path", "is inside"),
        ("validation queries in the export folder", "data.validation_queries", "is"),
    ],
)
def test_n48_settings_whose_export_would_overwrite_an_input_are_refused_naming_both(tmp_path, layout, setting, relation):
    (tmp_path / "exports").mkdir()
    (tmp_path / "model").mkdir()
    export = tmp_path / "exports" / "refined_dataset.jsonl"
    data = {"training_pool": "pool.jsonl", "validation_queries": "val.jsonl", "test_queries": None}
    selection = {}
    if layout == "pool in the export folder":
        data["training_pool"] = "exports/refined_dataset.jsonl"
    elif layout == "pool symlinked to the export":
        (tmp_path / "pool.jsonl").symlink_to(export)
    elif layout == "pool hard-linked to the export":
        export.write_text("{}\n")
        os.link(export, tmp_path / "pool.jsonl")
    elif layout == "export folder inside the model":
        selection["export_dir"] = "model/exports"
    else:
        data["validation_queries"] = "exports/refined_dataset.parquet"
    settings = write_settings(tmp_path, data=data, selection=selection)
    with pytest.raises(SettingsError) as raised:
        load_settings(settings)
    message = str(raised.value)
    assert message.startswith(f"{settings}: selection.export_dir: the export would write ")
    assert f", which {relation} {setting} (" in message and "would overwrite that input" in message


def test_n30_an_export_folder_that_is_a_file_is_named_and_kept(tmp_path):
    (tmp_path / "exports").write_text("my notes\n")
    with pytest.raises(SettingsError, match=rf"selection\.export_dir: {tmp_path / 'exports'} exists and is not a folder"):
        load_settings(write_settings(tmp_path))
    with pytest.raises(ExportPathError, match=rf"^selection\.export_dir: {tmp_path / 'exports'} exists and is not a folder"):
        write_export(tmp_path / "exports" / "deeper", {"a.jsonl": lambda path: path.write_text("")})
    assert (tmp_path / "exports").read_text() == "my notes\n"


def writers(text: str) -> dict:
    return {
        "refined_dataset.jsonl": lambda path: path.write_text(text),
        "refined_dataset.parquet": lambda path: path.write_text(text),
    }


def listing(directory: Path) -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(directory.iterdir())}


def test_n48_the_export_replaces_only_files_it_wrote_and_that_are_unchanged(tmp_path):
    exports = tmp_path / "exports"
    write_export(exports, writers("first\n"))
    manifest = json.loads((exports / MANIFEST_NAME).read_text())
    assert manifest["files"]["refined_dataset.jsonl"] == [hashlib.sha256(b"first\n").hexdigest()]
    write_export(exports, writers("second\n"))  # its own, unchanged: replaced
    assert listing(exports)["refined_dataset.jsonl"] == "second\n"
    umask = os.umask(0o022)
    os.umask(umask)
    assert (exports / "refined_dataset.jsonl").stat().st_mode & 0o777 == 0o666 & ~umask  # as any file the user writes

    (exports / "refined_dataset.parquet").write_text("edited by hand\n")  # changed since: kept
    before = listing(exports)
    with pytest.raises(
        ExportPathError, match=rf"^selection\.export_dir: {exports / 'refined_dataset.parquet'} exists and was not written"
    ):
        write_export(exports, writers("third\n"))
    assert listing(exports) == before  # nothing replaced, not even the file that was the export's

    (exports / "refined_dataset.parquet").unlink()
    (exports / MANIFEST_NAME).write_text("{}")  # a manifest that is not the export's
    with pytest.raises(ExportPathError, match=rf"{exports / MANIFEST_NAME} is not the manifest the export writes"):
        write_export(exports, writers("third\n"))


def test_n48_a_users_file_at_an_export_path_is_never_replaced(tmp_path):
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "refined_dataset.jsonl").write_text("my own dataset\n")
    (exports / "elsewhere.jsonl").write_text("x\n")
    (exports / "refined_dataset.parquet").symlink_to(exports / "elsewhere.jsonl")
    for name in ("refined_dataset.jsonl", "refined_dataset.parquet"):
        with pytest.raises(ExportPathError, match=rf"{exports / name} exists and was not written by the export"):
            write_export(exports, {name: lambda path: path.write_text("new\n")})
    assert (exports / "refined_dataset.jsonl").read_text() == "my own dataset\n"
    assert (exports / "refined_dataset.parquet").is_symlink() and (exports / "elsewhere.jsonl").read_text() == "x\n"
    assert sorted(p.name for p in exports.iterdir()) == ["elsewhere.jsonl", "refined_dataset.jsonl", "refined_dataset.parquet"]


def test_n48_an_input_that_became_an_export_path_after_the_settings_loaded_is_refused(tmp_path):
    exports = tmp_path / "exports"
    exports.mkdir()
    pool = tmp_path / "pool.jsonl"
    pool.symlink_to(exports / "refined_dataset.jsonl")
    (exports / "refined_dataset.jsonl").write_text("120 rows\n")
    with pytest.raises(ExportPathError, match=r"which is data\.training_pool"):
        write_export(exports, writers("60 rows\n"), inputs={"data.training_pool": str(pool)})
    assert pool.read_text() == "120 rows\n"


def test_exports_made_before_the_manifest_are_recognised_by_the_exports_table(tmp_path):
    exports = tmp_path / "exports"
    exports.mkdir()
    old = exports / "refined_dataset.jsonl"
    old.write_text("exported by an earlier release\n")
    recorded = {str(old): content_hash(old)}
    write_export(exports, {"refined_dataset.jsonl": lambda path: path.write_text("new\n")}, previously_exported=recorded)
    assert old.read_text() == "new\n"


# --- N17, N28, N29: what is selected and what reaches a file name ----------------------------------


def test_n17_hostile_ids_and_sources_never_reach_a_file_name_and_reserved_columns_are_carried_under_a_prefix(tmp_path):
    tokenizer = build_char_tokenizer()
    rows = [
        {
            "prompt": f"What is {i} + 1?",
            "response": f"Answer: {i + 1}",
            "example_id": f"../../../../tmp/x_{i}",
            "row_number": 99,
            "score": 1.5,
            "pool_score": 2.5,
            "source": "../../etc/passwd",
            "meta": {"nested": {"a": i}},
        }
        for i in range(4)
    ]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(row) + "\n" for row in rows))
    normalized = normalize_pool(read_rows(pool), tokenizer, 128, source="pool.jsonl")
    assert normalized.renamed_columns == {
        "example_id": "pool_example_id",
        "row_number": "pool_row_number",
        "score": "pool_pool_score",
    }
    examples = normalized.examples
    assert all(len(i) == 20 and set(i) <= set("0123456789abcdef") for i in examples["example_id"])
    assert examples["pool_example_id"].to_list() == [f"../../../../tmp/x_{i}" for i in range(4)]
    assert examples["pool_score"].to_list() == [2.5] * 4 and examples["pool_pool_score"].to_list() == [1.5] * 4
    scores = pl.DataFrame({"example_id": examples["example_id"], "score": [0.4, 0.3, 0.2, 0.1], "rank": [1, 2, 3, 4]})
    table = refined_table(examples, scores, select(scores, "top_k", k=2))
    before = {p for p in Path("/tmp").iterdir() if p.name.startswith("x_")}
    from drift_assets_tests.helpers.card_facts import FACTS

    export_dataset(table, tmp_path / "out" / "exports", FACTS)
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert files == ["out", "out/exports", f"out/exports/{MANIFEST_NAME}", "out/exports/README.md",
                     "out/exports/refined_dataset.jsonl", "out/exports/refined_dataset.parquet",
                     "out/exports/unselected.jsonl", "out/exports/unselected.parquet", "pool.jsonl"]  # fmt: skip
    assert {p for p in Path("/tmp").iterdir() if p.name.startswith("x_")} == before
    exported = [json.loads(line) for line in (tmp_path / "out" / "exports" / "refined_dataset.jsonl").read_text().splitlines()]
    assert [row["source"] for row in exported] == ["../../etc/passwd"] * 2  # carried as data, nothing more


def test_n28_keeping_everything_selects_and_exports_the_whole_pool_and_says_nothing_is_refined(tmp_path):
    scores = pl.DataFrame(
        {"example_id": [f"e{i}" for i in range(120)], "score": [float(-i) for i in range(120)], "rank": list(range(1, 121))}
    )
    selected = select(scores, "top_fraction", fraction=1.0)
    assert selected.sum() == 120
    assert selection_warning("top_fraction", None, 120, 120, 1.0) == (
        "selection.fraction = 1 selects all 120 examples of the pool: nothing is refined"
    )


def test_n29_a_tiny_selection_is_warned_about():
    scores = pl.DataFrame(
        {"example_id": [f"e{i}" for i in range(120)], "score": [float(-i) for i in range(120)], "rank": list(range(1, 121))}
    )
    selected = int(select(scores, "top_fraction", fraction=0.001).sum())
    assert selected == 1
    assert selection_warning("top_fraction", None, 120, selected, 0.001) == (
        "selection.fraction = 0.001 selects only 1 of the pool's 120 examples: a fine-tune on so few learns little; "
        "select more (selection.fraction, selection.k)"
    )
    assert selection_warning("positive", None, 120, 0).startswith("selection.method positive selects only 0 of")
    assert selection_warning("top_fraction", None, 120, 60, 0.5) is None
    assert selection_warning("top_k", 12, 120, 12) is None


# --- N3, N4, N46: paths in the settings ------------------------------------------------------------


def test_n3_n4_environment_variables_and_home_in_paths_are_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("POOLDIR", str(tmp_path / "pools"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    settings = load_settings(
        write_settings(
            tmp_path,
            model={"path": "~/model"},
            data={"training_pool": "${POOLDIR}/pool.jsonl", "validation_queries": "$POOLDIR/val.jsonl"},
        )
    )
    assert settings.model_path == str(tmp_path / "home" / "model")
    assert settings.resolve(settings.data.training_pool) == str(tmp_path / "pools" / "pool.jsonl")
    assert settings.resolve(settings.data.validation_queries) == str(tmp_path / "pools" / "val.jsonl")


def test_n3_an_unset_environment_variable_in_a_path_is_named_with_its_setting(tmp_path, monkeypatch):
    monkeypatch.delenv("POOLDIR", raising=False)
    path = write_settings(tmp_path, data={"training_pool": "${POOLDIR}/pool.jsonl", "validation_queries": "val.jsonl"})
    with pytest.raises(
        SettingsError,
        match=r"data\.training_pool: '\$\{POOLDIR\}/pool\.jsonl' names the environment variable POOLDIR, which is not set",
    ):
        load_settings(path)


def test_n46_a_relative_settings_path_from_another_directory_resolves_against_the_file(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    write_settings(project)
    monkeypatch.chdir(tmp_path)
    settings = load_settings(Path("project") / "settings.yaml")
    monkeypatch.chdir("/")
    assert settings.base_dir == str(project)
    assert settings.resolve(settings.data.training_pool) == str(project / "pool.jsonl")
    assert settings.model_path == str(project / "model")


# --- N49: the demo deletes only what it created ----------------------------------------------------


def test_n49_replacing_the_demo_model_never_deletes_a_users_sibling_directories(tmp_path):
    models = tmp_path / "models"
    for name in ("current.previous", "current.staging"):
        (models / name).mkdir(parents=True)
        (models / name / "weights.safetensors").write_text(f"the user's {name}")
    before = {p: p.read_text() for p in models.rglob("*") if p.is_file()}

    def save(version: str):
        return lambda directory: (directory / "config.json").write_text(json.dumps({"version": version}))

    replace_model_directory(models / "current", save("1"))
    replace_model_directory(models / "current", save("2"))  # a retrain replaces the demo's own model
    assert json.loads((models / "current" / "config.json").read_text()) == {"version": "2"}
    assert sorted(p.name for p in models.iterdir()) == ["current", "current.previous", "current.staging"]
    assert {p: p.read_text() for p in before} == before


def test_n49_scratch_left_by_a_killed_demo_run_is_cleaned_and_nothing_else(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    marker = ".drift-demo-scratch"
    for name, owner in (
        (".current.drift-demo-staging-abandoned", {"host": socket.gethostname(), "pid": dead.pid}),
        (".current.drift-demo-staging-running", {"host": socket.gethostname(), "pid": os.getpid()}),
        (".current.drift-demo-staging-unmarked", None),
    ):
        (models / name).mkdir()
        if owner:
            (models / name / marker).write_text(json.dumps(owner))
        (models / name / "file").write_text("x")
    replace_model_directory(models / "current", lambda directory: (directory / "config.json").write_text("{}"))
    assert sorted(p.name for p in models.iterdir()) == [
        ".current.drift-demo-staging-running",
        ".current.drift-demo-staging-unmarked",
        "current",
    ]
    assert sorted(p.name for p in (models / "current").iterdir()) == [".drift-demo", "config.json"]


def test_n49_a_failed_save_leaves_the_previous_model_and_no_scratch(tmp_path):
    models = tmp_path / "models"
    replace_model_directory(models / "current", lambda directory: (directory / "config.json").write_text("1"))

    def failing(directory):
        (directory / "config.json").write_text("2")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        replace_model_directory(models / "current", failing)
    assert (models / "current" / "config.json").read_text() == "1"
    assert sorted(p.name for p in models.iterdir()) == ["current"]
