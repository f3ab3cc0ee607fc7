"""The asset graph as built from the settings: what each asset reads, what a change of settings makes
stale (read from the built graph's code versions, not from a list kept beside it), and a snapshot
of every asset's spec so that a change of the graph shows in review. No model, no run."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest

from drift_assets.definitions import build_definitions
from drift_assets.defs.benchmark import BenchmarkGiven
from drift_assets.defs.cost import CostPlan
from drift_assets.defs.demo import DemoGiven
from drift_assets.defs.evaluate import FineTuning
from drift_assets.defs.grades import GradesGiven
from drift_assets.defs.gradients import GradientsGiven
from drift_assets.defs.influence import InfluenceGiven
from drift_assets.defs.refine import RefineGiven
from drift_assets.defs.rollouts import RolloutsGiven
from drift_assets.defs.sources import SourcesGiven
from drift_assets.defs.warmup import WarmupGiven
from drift_assets.settings import Settings, code_version, given, parse_settings, settings_read
from drift_assets.settings_reference import REFERENCE_PATH, assets_reading, settings_read_by_asset, settings_reference

ASSETS_DIR = Path(__file__).resolve().parents[2] / "drift_assets" / "defs"
SNAPSHOT = Path(__file__).with_name("asset_graph.json")
# Every asset exists: the demo, test queries, and (by default) a warm-up run.
WHOLE_GRAPH = {"demo": {"enabled": True}, "data": {"test_queries": "demo/test_queries.jsonl"}}

# One change per settings group (and per key that an asset reads on its own), each valid on WHOLE_GRAPH.
CHANGES = {
    "model.dtype": {"model": {"dtype": "bfloat16"}},
    "data.max_example_tokens": {"data": {"max_example_tokens": 100}},
    "demo.seed": {"demo": {"seed": 1}},
    "rollout.temperature": {"rollout": {"temperature": 0.7}},
    "rollout.max_tokens": {"rollout": {"max_tokens": 32}},
    "rollout.backend": {"rollout": {"backend": "transformers"}},
    "rollout.engine_process": {"rollout": {"engine_process": "separate"}},
    "grading.numeric_tolerance": {"grading": {"numeric_tolerance": 0.5}},
    "grading.default_grader": {"grading": {"default_grader": "exact"}},
    "projection.rank": {"projection": {"rank": 8}},
    "projection.validation_span": {"projection": {"validation_span": "completion"}},
    "projection.shards": {"projection": {"shards": 2}},
    "projection.batch_size": {"projection": {"batch_size": 8}},
    "influence.weighting": {"influence": {"weighting": "signed"}},
    "warmup.steps": {"warmup": {"steps": [5, 10]}},
    "selection.fraction": {"selection": {"fraction": 0.3}},
    "selection.export_dir": {"selection": {"export_dir": "elsewhere"}},
    "benchmark.sft.steps": {"benchmark": {"sft": {"steps": 10}}},
    "benchmark.sft.gradient_checkpointing": {"benchmark": {"sft": {"gradient_checkpointing": True}}},
    "benchmark.seeds": {"benchmark": {"seeds": [7]}},
    "benchmark.methods": {"benchmark": {"methods": ["full", "drift"]}},
}


def whole_graph(tmp_path: Path, **groups) -> Settings:
    raw = {group: dict(values) for group, values in WHOLE_GRAPH.items()}
    for group, values in groups.items():
        raw[group] = {**raw.get(group, {}), **values}
    return parse_settings(raw, "settings.yaml", tmp_path)


def code_versions(settings: Settings) -> dict[str, str]:
    """Every materializable asset's code version, and the method benchmark's (an external asset's,
    which its job records beside the table it writes)."""
    graph = build_definitions(settings).resolve_asset_graph()
    return {
        key.to_user_string(): graph.get(key).code_version
        for key in graph.get_all_asset_keys()
        if graph.get(key).is_materializable or key.to_user_string() == "method_benchmark"
    }


def made_stale(base: Settings, changed: Settings) -> set[str]:
    before, after = code_versions(base), code_versions(changed)
    return {asset for asset, version in before.items() if after.get(asset) != version}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Settings:
    return whole_graph(tmp_path_factory.mktemp("graph"))


@pytest.fixture(scope="module")
def reads(base) -> dict[str, tuple[str, ...]]:
    return settings_read_by_asset(build_definitions(base).resolve_asset_graph())


@pytest.mark.parametrize("key", sorted(CHANGES))
def test_a_change_of_settings_makes_exactly_the_assets_that_read_it_stale(base, reads, key):
    """The expected set is what the built graph records each asset as reading; the measured one is
    which code versions changed."""
    changed = whole_graph(Path(base.base_dir), **CHANGES[key])
    assert changed != base
    assert made_stale(base, changed) == set(assets_reading(key, reads))


def test_what_users_rely_on_about_staleness(base):
    def stale(**groups) -> set[str]:
        return made_stale(base, whole_graph(Path(base.base_dir), **groups))

    # The export's dataset card names the settings that shaped the selection: they make it stale too.
    card = {"refined_dataset_export"}
    assert stale(selection={"fraction": 0.3}) == {"refined_dataset", "method_benchmark", *card}
    assert stale(influence={"weighting": "signed"}) == {"influence_scores", "method_benchmark", *card}
    gradients = {"projection_basis", "validation_gradients", "training_gradient_projections", *card}
    assert stale(projection={"rank": 8}) == gradients and stale(projection={"basis": "random"}) == gradients
    # Shards lay the training gradients out; the basis and the validation gradients stay.
    assert stale(projection={"shards": 2}) == {"training_gradient_projections"}
    # The projection basis is fitted on the references: new rollouts leave the training gradients valid.
    assert "training_gradient_projections" not in stale(rollout={"temperature": 0.7})
    assert stale(warmup={"steps": [5, 10]}) == {"warmup_checkpoints", "influence_scores", "method_benchmark", *card}
    assert stale(projection={"validation_span": "completion"}) == {"validation_gradients", *card}


def test_code_versions_are_the_implementation_version_and_a_hash_of_what_is_given(base, tmp_path):
    rollouts = given(RolloutsGiven, base)
    version = code_version("7", rollouts)
    prefix, _, digest = version.partition("-")
    assert prefix == "7" and len(digest) == 12 and all(c in "0123456789abcdef" for c in digest)
    # The hash of what the asset is given, key -> JSON value, a group given whole less the fields that
    # say where (rollout.engine_process).
    values = {"model.dtype": base.model.dtype, "rollout": base.rollout.model_dump(mode="json", exclude={"engine_process"})}
    assert settings_read(rollouts) == {"rollout": values["rollout"], "model.dtype": values["model.dtype"]}
    assert digest == hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]
    # The same settings loaded from another directory: the same versions (base_dir is not hashed).
    assert code_versions(whole_graph(tmp_path)) == code_versions(base)


STAGES = (SourcesGiven, RolloutsGiven, GradesGiven, GradientsGiven, InfluenceGiven, RefineGiven, WarmupGiven)
STAGES += (BenchmarkGiven, DemoGiven, FineTuning, CostPlan)


def test_an_asset_is_given_only_what_its_code_version_hashes_and_what_is_named_unhashed(base):
    """What a stage is given is a frozen object with no way back to the settings: its setting fields
    (hashed where an asset's code version names them), the given objects it holds, and the settings
    filled in unhashed (locations, layout, what the checks and the cost metadata read), listed here so
    that a new one shows in review."""
    refine = given(RefineGiven, base, choosing=None)
    assert (refine.selection.method, refine.selection.fraction) == (base.selection.method, base.selection.fraction)
    with pytest.raises(AttributeError):
        _ = given(InfluenceGiven, base).selection
    with pytest.raises(dataclasses.FrozenInstanceError):
        refine.selection.k = 3
    assert all(stage.__dataclass_params__.frozen for stage in STAGES)
    unhashed = {
        stage.__name__: [field.metadata.get("drift_assets/unhashed") for field in dataclasses.fields(stage)] for stage in STAGES
    }
    assert {name: [key for key in keys if key] for name, keys in unhashed.items()} == {
        "SourcesGiven": ["grading", "inputs", "data.training_pool", "data.validation_queries", "data.test_queries", "model.path"],
        "RolloutsGiven": ["checkpoints", "grading.max_empty_or_truncated_fraction"],
        "GradesGiven": ["checkpoints", "influence.targets", "influence.weighting", "influence.unsolved"],
        "GradientsGiven": ["projection.gradient_checkpointing", "checkpoints"],
        "InfluenceGiven": ["projection.shards"],
        "RefineGiven": ["export_dir", "inputs", "model_path", "checkpoints"],
        "WarmupGiven": ["checkpoint_dir", "given_checkpoints", "benchmark.sft.gradient_checkpointing", "checkpoints"],
        "BenchmarkGiven": ["projection.shards"],
        "DemoGiven": ["inputs"],
        "FineTuning": [],
        "CostPlan": ["benchmark.sft", "checkpoints", "projection.shards", "selection.choose_among", "data.test_queries"],
    }
    # The export is given the values of the settings that shaped the selection, and hashes them.
    export_reads = settings_read_by_asset(build_definitions(base).resolve_asset_graph())["refined_dataset_export"]
    assert set(refine.export.shaping) <= set(export_reads)
    # A group given in part gives its fields: the answer marker, where the span starts.
    assert given(GradientsGiven, base).span.marker == "Answer:"


def test_the_stages_never_see_the_whole_settings():
    """drift_assets/defs holds the stages: none imports the Settings or takes them, so an asset body
    has only what its stage was given (and its code version hashes, or names as unhashed)."""
    offenders, checked = [], 0
    for path in sorted(ASSETS_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "drift_assets.settings":
                offenders += [
                    f"{path.name}:{node.lineno} imports {a.name}" for a in node.names if a.name in {"Settings", "load_settings"}
                ]
            if isinstance(node, ast.arg) and node.arg == "settings":
                offenders.append(f"{path.name}:{node.lineno} takes settings")
            if not isinstance(node, ast.FunctionDef):
                continue
            decorators = {ast.unparse(d.func if isinstance(d, ast.Call) else d) for d in node.decorator_list}
            if not decorators & {"asset", "multi_asset", "op"}:
                continue
            names = {n.id for statement in node.body for n in ast.walk(statement) if isinstance(n, ast.Name)}
            if "settings" in names:
                offenders.append(f"{path.name}:{node.lineno} {node.name}")
            checked += 1
    assert offenders == [] and checked > 10


def test_editing_a_custom_graders_code_makes_what_grades_stale(tmp_path, monkeypatch):
    module = tmp_path / "drift_edited_grader.py"
    module.write_text("def grade(completion, reference):\n    return completion == reference\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    settings = whole_graph(tmp_path, grading={"default_grader": "drift_edited_grader:grade"})
    before = code_versions(settings)
    module.write_text("def grade(completion, reference):\n    return completion.strip() == reference\n")
    after = code_versions(settings)
    changed = {asset for asset in before if before[asset] != after[asset]}
    # The export's card names the grading settings, so it is stale too; the refined dataset grades the
    # models it chooses between (selection.choose_among).
    assert changed == {"grades", "refined_dataset", "refined_model_evaluation", "method_benchmark", "refined_dataset_export"}


def asset_specs(settings: Settings) -> dict[str, dict]:
    """Every asset's deps, partitions, checks, code version and the settings it reads, as plain data."""
    graph = build_definitions(settings).resolve_asset_graph()
    reads = settings_read_by_asset(graph)
    specs = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        partitions = node.partitions_def
        specs[key.to_user_string()] = {
            "kind": "materializable" if node.is_materializable else "observable" if node.is_observable else "external",
            "deps": sorted(parent.to_user_string() for parent in node.parent_keys),
            "partitions": partitions.get_partition_keys() if partitions is not None else None,
            "checks": sorted(check.name for check in node.check_keys),
            "blocking_checks": sorted(check.name for check in node.check_keys if graph.get_check_spec(check).blocking),
            "code_version": node.code_version,
            "settings_read": reads.get(key.to_user_string()),
            "pools": sorted(node.pools or []),
        }
    return specs


def test_the_asset_graph_matches_its_snapshot(base):
    """A change of the graph (an edge, a check, a partition, a code version) shows in review as a diff of
    asset_graph.json. After an intended change: DRIFT_UPDATE_SNAPSHOT=1 pytest -k snapshot."""
    specs = json.loads(json.dumps(asset_specs(base)))
    if os.environ.get("DRIFT_UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(json.dumps(specs, indent=1, sort_keys=True) + "\n")
    assert SNAPSHOT.exists(), "no snapshot yet: run DRIFT_UPDATE_SNAPSHOT=1 pytest -k snapshot"
    assert json.loads(SNAPSHOT.read_text()) == specs, "the asset graph changed: review, then DRIFT_UPDATE_SNAPSHOT=1"


def test_the_settings_reference_page_is_generated_from_the_code():
    assert REFERENCE_PATH.read_text() == settings_reference(), (
        "docs/settings.md is stale: run .venv/bin/python -m drift_assets.settings_reference"
    )


def test_the_dg_project_that_make_ui_serves_loads_the_code_location():
    """`make ui` is `dg dev` over pyproject.toml's [tool.dg] project: `dg check defs` loads the same."""
    import subprocess
    import sys

    venv = Path(sys.executable).parent.parent
    result = subprocess.run(
        [str(venv / "bin" / "dg"), "check", "defs"],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "VIRTUAL_ENV": str(venv)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "All definitions loaded successfully" in result.stdout + result.stderr


def test_what_dg_scaffolds_into_defs_joins_the_code_location(tmp_path):
    """`dg scaffold defs` writes into drift_assets/defs/; the definitions load it beside the pipeline's."""
    import shutil
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    for name in ("pyproject.toml", "drift_assets", "data/settings.yaml"):
        copy = shutil.copytree if (root / name).is_dir() else shutil.copy
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        copy(
            root / name, tmp_path / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {})
        )
    venv = Path(sys.executable).parent.parent
    env = {**os.environ, "VIRTUAL_ENV": str(venv), "PYTHONPATH": str(tmp_path)}
    scaffold = [str(venv / "bin" / "dg"), "scaffold", "defs", "dagster.asset", "user_asset.py"]
    result = subprocess.run(scaffold, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (tmp_path / "drift_assets" / "defs" / "user_asset.py").exists()
    listing = "import drift_assets.definitions as d; print(sorted(k.to_user_string() for k in d.defs.resolve_all_asset_keys()))"
    result = subprocess.run([sys.executable, "-c", listing], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    keys = result.stdout.strip().splitlines()[-1]
    assert "'user_asset'" in keys and "'refined_dataset'" in keys, keys
