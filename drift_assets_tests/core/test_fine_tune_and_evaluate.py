"""The one fine-tune-then-evaluate (the evaluation asset's and the method benchmark's, in this process
or in a worker process) and the one choice of the rollout and evaluation engine."""

import contextlib
import dataclasses
import pickle

import pytest
import torch

from drift_assets.core.generation.engines import TransformersEngine
from drift_assets.core.grading.graders import GradingOptions
from drift_assets.core.training.evaluation import FineTuneJob, evaluate_models, fine_tune_and_evaluate, load_base_model
from drift_assets.core.training.sft import SftOptions, evaluate, fine_tune
from drift_assets.resources import RolloutEngineResource, engine_backend, engine_kind
from drift_assets.settings import RolloutSettings
from drift_assets.tasks.demo_task import query_rows
from drift_assets.tasks.tiny_model import build_char_tokenizer, build_tiny_llama, save_model
from drift_assets_tests.helpers.sft import SHAPE


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    tokenizer = build_char_tokenizer()
    directory = tmp_path_factory.mktemp("base")
    save_model(build_tiny_llama(tokenizer, SHAPE, seed=1), tokenizer, directory)
    return str(directory)


def job(base_dir, messages, method="m", seed=3) -> FineTuneJob:
    options = SftOptions(steps=6, batch_size=8, seed=seed)
    return FineTuneJob(
        method, seed, messages, base_dir, "float32", "cpu", options, query_rows(5, seed=0, split="test"), 12, GradingOptions()
    )


def test_a_worker_process_and_this_process_evaluate_alike_and_as_fine_tune_then_evaluate(base_dir, examples):
    """The default (the model from disk, transformers on the job's device: what a spawned worker runs)
    and a loaded model with an engine of the caller's give the numbers of fine_tune then evaluate."""
    tune = job(base_dir, examples[:24])
    model, tokenizer = load_base_model(base_dir, "float32", "cpu")
    run = fine_tune(model, tokenizer, tune.messages, tune.options, log=lambda _: None)
    expected = evaluate(TransformersEngine(model, tokenizer, device=torch.device("cpu")), tokenizer, tune.queries, 12)

    opened = []

    @contextlib.contextmanager
    def engine(network, tokenizer):
        opened.append(network)
        yield TransformersEngine(network, tokenizer, device=torch.device("cpu"))

    lines = []
    loaded = lambda: load_base_model(base_dir, "float32", "cpu")  # noqa: E731
    for result, seconds in (fine_tune_and_evaluate(tune), fine_tune_and_evaluate(tune, loaded, engine, lines.append)):
        assert (result.correct, result.total, result.answers) == (expected.correct, expected.total, expected.answers)
        assert (result.train_losses, result.train_tokens) == (run.losses, run.tokens) and len(run.losses) == 6
        assert seconds > 0
    assert len(opened) == 1 and lines, "the caller's engine decodes and the fine-tune logs to the caller's log"
    # What run_fine_tunes hands a spawned worker process: the function and the job, pickled.
    assert pickle.loads(pickle.dumps((fine_tune_and_evaluate, tune))) == (fine_tune_and_evaluate, tune)


def test_a_job_with_validation_queries_also_decodes_them_with_the_same_model(base_dir, examples):
    """What the benchmark's validated methods choose by: the fine-tuned model's accuracy on the
    validation queries, as evaluating that model on them directly gives."""
    validation = query_rows(6, seed=0, split="validation")
    tune = dataclasses.replace(job(base_dir, examples[:16]), validation_queries=validation)
    model, tokenizer = load_base_model(base_dir, "float32", "cpu")
    fine_tune(model, tokenizer, tune.messages, tune.options, log=lambda _: None)
    engine = TransformersEngine(model, tokenizer, device=torch.device("cpu"))
    expected_test, expected = evaluate(engine, tokenizer, tune.queries, 12), evaluate(engine, tokenizer, validation, 12)
    result, _ = fine_tune_and_evaluate(tune)
    assert result.answers == expected_test.answers and result.validation.answers == expected.answers
    assert (result.validation.correct, result.validation.total) == (expected.correct, 6)
    assert fine_tune_and_evaluate(job(base_dir, []))[0].validation is None  # not asked: not decoded


def test_without_a_selection_the_base_model_itself_is_evaluated(base_dir):
    model, tokenizer = load_base_model(base_dir, "float32", "cpu")
    tune = job(base_dir, [])
    expected = evaluate(TransformersEngine(model, tokenizer, device=torch.device("cpu")), tokenizer, tune.queries, 12)
    result, _ = fine_tune_and_evaluate(tune)
    assert result.answers == expected.answers and (result.train_losses, result.train_tokens) == ([], 0)


def test_the_evaluation_table_has_a_row_per_model_with_its_cost_and_curve(base_dir, examples):
    jobs = [job(base_dir, [], "base"), job(base_dir, examples[:16], "refined")]
    lines = []
    evaluated = evaluate_models(jobs, fine_tune_and_evaluate, lines.append)
    assert evaluated.table["model"].to_list() == ["base", "refined"]
    assert evaluated.table["n_train"].to_list() == [0, 16]
    assert list(evaluated.curves) == ["SFT on refined (16)"] and len(evaluated.curves["SFT on refined (16)"]) == 6
    base, refined = evaluated.costs
    assert base.backward_tokens == 0 and refined.backward_tokens > 0
    assert refined.forward_tokens > refined.backward_tokens  # the decoding's tokens besides the fine-tune's
    assert evaluated.intervals()[1][:2] == ("refined", evaluated.accuracy("refined"))
    assert len(lines) == 2 and lines[-1].startswith("evaluation: 2/2")


def test_the_engine_is_chosen_in_one_place():
    imports, missing = (lambda: (True, "")), (lambda: (False, "ImportError: no vllm"))
    assert engine_backend("transformers", missing)[0] == "transformers"
    assert engine_backend("auto", imports) == ("vllm", "rollout.backend is 'auto' and vLLM imports")
    assert engine_backend("auto", missing) == (
        "transformers",
        "falling back to transformers: vLLM does not import (ImportError: no vllm)",
    )
    with pytest.raises(RuntimeError, match=r"benchmark\.eval_backend is 'vllm' but vLLM does not import here: ImportError"):
        engine_backend("vllm", missing, "benchmark.eval_backend")
    # The UI's kind tag: a 'vllm' that is set is its kind, installed or not; 'transformers' never.
    assert (engine_kind("vllm"), engine_kind("transformers")) == ("vllm", "pytorch")
    transformers = RolloutEngineResource(**RolloutSettings(backend="transformers").model_dump())
    assert transformers.evaluation_backend("auto") == "transformers"  # auto: the rollouts' engine
    assert RolloutEngineResource(**RolloutSettings().model_dump()).evaluation_backend("transformers") == "transformers"
