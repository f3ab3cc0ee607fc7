"""Fine-tuning on a selection: determinism (by seed, whatever the input order), the schedule, and that it learns."""

import pytest
import torch

from drift_assets.core.data.sequences import collate_pairs, sequence_logprobs
from drift_assets.core.gradients.tables import pool_token_pairs
from drift_assets.core.training.sft import SftOptions, batch_plan, fine_tune, length_grouped
from drift_assets.tasks.tiny_model import build_char_tokenizer, build_tiny_llama
from drift_assets_tests.helpers.sft import SHAPE


def tuned(examples, **options):
    tokenizer = build_char_tokenizer()
    model = build_tiny_llama(tokenizer, SHAPE, seed=1)
    fine_tune(model, tokenizer, examples, SftOptions(**{"steps": 12, "batch_size": 8, **options}), log=lambda _: None)
    return model, tokenizer


def mean_logprob(model, tokenizer, examples) -> float:
    batch = collate_pairs(tokenizer, *pool_token_pairs(tokenizer, examples))
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return float(sequence_logprobs(logits, batch, "mean").mean())


def test_fine_tuning_is_deterministic_by_seed_and_learns(examples):
    first, tokenizer = tuned(examples, seed=3)
    again, _ = tuned(examples, seed=3)
    other, _ = tuned(examples, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), other.state_dict().values(), strict=True))
    untrained = build_tiny_llama(tokenizer, SHAPE, seed=1)
    assert mean_logprob(first, tokenizer, examples) > mean_logprob(untrained, tokenizer, examples) + 0.5


def test_fine_tuning_does_not_depend_on_the_order_the_examples_come_in(examples):
    first, _ = tuned(examples, seed=3)
    reversed_order, _ = tuned(list(reversed(examples)), seed=3)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), reversed_order.state_dict().values(), strict=True))


def test_linear_schedule_decays_the_learning_rate_to_zero(examples, monkeypatch):
    """The rate used at step t of T is lr·(1 − (t−1)/T) with ``linear`` and lr throughout with ``constant``."""
    rates = []
    original = torch.optim.AdamW.step

    def record(optimizer, *args, **kwargs):
        rates.append(optimizer.param_groups[0]["lr"])
        return original(optimizer, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", record)
    # One run at a time: keying by id(optimizer) merged the runs when the second optimizer reused
    # the freed first one's address.
    tuned(examples, steps=4, learning_rate=0.01, schedule="linear")
    linear = list(rates)
    rates.clear()
    tuned(examples, steps=4, learning_rate=0.01, schedule="constant")
    constant = list(rates)
    assert linear == pytest.approx([0.01, 0.0075, 0.005, 0.0025])
    assert constant == pytest.approx([0.01] * 4)


def test_bad_sft_input_is_a_clear_error(examples):
    with pytest.raises(ValueError, match="empty selection"):
        tuned([])
    with pytest.raises(ValueError, match="benchmark.sft.schedule"):
        SftOptions(schedule="cosine")


def test_evaluate_grades_the_greedy_answers_it_returns(examples):
    """An evaluation keeps the engine's greedy completions, in query order, and counts the ones its grader accepts."""
    from drift_assets.core.generation.engines import SamplingSettings, TransformersEngine
    from drift_assets.core.gradients.tables import query_token_pairs
    from drift_assets.core.grading.graders import grade_answer
    from drift_assets.core.training.sft import evaluate
    from drift_assets.tasks.demo_task import query_rows

    model, tokenizer = tuned(examples, seed=3)
    engine = TransformersEngine(model, tokenizer, device=torch.device("cpu"))
    queries = query_rows(6, seed=0, split="test")
    answers = evaluate(engine, tokenizer, queries, max_tokens=12).answers
    prompt_ids, _ = query_token_pairs(tokenizer, [q["prompt"] for q in queries], ["" for _ in queries])
    greedy = engine.generate(prompt_ids, SamplingSettings(n=1, temperature=0.0, max_tokens=12))
    assert answers == [group[0].text for group in greedy.completions]
    # References that the first three answers match exactly and the last three cannot: the count must be 3.
    regraded = [
        {
            **query,
            "grader": "exact",
            "reference": grade_answer(answer, "", "exact").extracted_answer if i < 3 else f"not {answer!r}",
        }
        for i, (query, answer) in enumerate(zip(queries, answers, strict=True))
    ]
    result = evaluate(engine, tokenizer, regraded, max_tokens=12)
    assert (result.correct, result.total, result.answers) == (3, 6, answers)


def test_a_bfloat16_model_fine_tunes_like_float32_at_a_small_learning_rate(examples):
    """Updates below bfloat16's resolution (most of them at lr 1e-5) accumulate in float32 master
    weights instead of rounding away: the bf16 model moves the way the float32 one does."""
    tokenizer = build_char_tokenizer()
    start = build_tiny_llama(tokenizer, SHAPE, seed=1)
    options = SftOptions(steps=100, batch_size=8, learning_rate=1e-5, seed=0)
    full, half = build_tiny_llama(tokenizer, SHAPE, seed=1), build_tiny_llama(tokenizer, SHAPE, seed=1).to(torch.bfloat16)
    for model in (full, half):
        fine_tune(model, tokenizer, examples, options, log=lambda _: None)
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())

    def update(model) -> torch.Tensor:
        return torch.cat(
            [(p.detach().float() - q.detach()).flatten() for p, q in zip(model.parameters(), start.parameters(), strict=True)]
        )

    assert torch.nn.functional.cosine_similarity(update(full), update(half), dim=0) > 0.8


def test_gradient_checkpointing_trains_the_same_model(examples):
    plain, _ = tuned(examples, seed=3)
    checkpointed, _ = tuned(examples, seed=3, gradient_checkpointing=True)
    for a, b in zip(plain.state_dict().values(), checkpointed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not checkpointed.is_gradient_checkpointing  # switched off again for whoever uses the model next


def test_each_fine_tune_logs_its_memory_plan_first(examples):
    tokenizer = build_char_tokenizer()
    model = build_tiny_llama(tokenizer, SHAPE, seed=1)
    lines = []
    fine_tune(model, tokenizer, examples, SftOptions(steps=2, batch_size=8), log=lines.append)
    assert lines[0].startswith("SFT step: planned peak memory") and "activations" in lines[0]


def test_length_grouped_batches_hold_similar_lengths_and_keep_every_example():
    lengths = [((index * 37) % 101) + 1 for index in range(400)]
    permutation = list(range(400))[::-1]
    grouped = length_grouped(permutation, lengths, batch_size=4)
    assert sorted(grouped) == list(range(400))
    # 2 runs of 50 batches, each sorted by length; batches are taken from the end in turn.
    for start in (0, 200):
        assert [lengths[i] for i in grouped[start : start + 200]] == sorted(lengths[i] for i in permutation[start : start + 200])
    batches = [grouped[i : i + 4] for i in range(0, 400, 4)]
    spread = max(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    assert spread <= 5


def test_group_by_length_trains_deterministically_on_other_batches(examples):
    plain, tokenizer = tuned(examples, seed=3)
    grouped, _ = tuned(examples, seed=3, group_by_length=True)
    again, _ = tuned(examples, seed=3, group_by_length=True)
    assert all(torch.equal(a, b) for a, b in zip(grouped.state_dict().values(), again.state_dict().values(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), grouped.state_dict().values(), strict=True))


def test_two_selections_differing_by_one_row_train_on_the_same_batches_elsewhere(examples):
    """Common random numbers: a row's batch depends on the seed, the epoch and the row alone."""
    from itertools import islice

    first = examples[:40]
    second = [*examples[:39], examples[40]]  # the last row swapped for another
    plans = [list(islice(batch_plan(selection, 8, seed=5), 15)) for selection in (first, second)]  # 3 epochs of 5
    rows = [[frozenset(selection[i] for i in batch) for batch in plan] for selection, plan in zip((first, second), plans)]
    differing = {examples[39], examples[40]}
    same = [a == b for a, b in zip(*rows, strict=True)]
    touched = [bool((a | b) & differing) for a, b in zip(*rows, strict=True)]
    assert all(same_batch or touches for same_batch, touches in zip(same, touched, strict=True))
    assert sum(same) >= 15 - 2 * 3  # at most the two batches per epoch that hold a differing row
    assert all(len(batch) for plan in plans for batch in plan)
    # Every row once per epoch.
    assert sorted(i for batch in plans[0][:5] for i in batch) == list(range(40))


def test_fine_tunes_of_selections_sharing_the_first_batch_agree_after_it(examples):
    """The batch plan is what fine_tune trains on: where the differing row is not in the first
    batch, both models are identical after the first step."""
    from drift_assets.core.training.sft import batch_plan as plan_of

    first = examples[:40]
    for other in examples[40:]:
        second = [*examples[:39], other]
        batch = [first[i] for i in next(plan_of(first, 8, seed=5))]
        if examples[39] not in batch and batch == [second[i] for i in next(plan_of(second, 8, seed=5))]:
            break
    else:
        pytest.skip("no swap leaves the first batch alone")
    states = []
    for selection in (first, second):
        tokenizer = build_char_tokenizer()
        model = build_tiny_llama(tokenizer, SHAPE, seed=1)
        fine_tune(model, tokenizer, selection, SftOptions(steps=1, batch_size=8, seed=5), log=lambda _: None)
        states.append(model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(states[0].values(), states[1].values(), strict=True))


def test_a_fine_tune_on_the_cpu_runs_with_the_fixed_thread_count_whatever_the_process_has(examples):
    """The result of torch's CPU kernels depends on their thread count: fine-tunes fix it."""
    from drift_assets.core.training.sft import FINE_TUNE_CPU_THREADS

    seen = []
    before = torch.get_num_threads()
    torch.set_num_threads(FINE_TUNE_CPU_THREADS + 1)
    try:
        tokenizer = build_char_tokenizer()
        model = build_tiny_llama(tokenizer, SHAPE, seed=1)
        options = SftOptions(steps=2, batch_size=8)
        fine_tune(
            model, tokenizer, examples, options, log=lambda _: None, after_step=lambda *_: seen.append(torch.get_num_threads())
        )
        assert seen == [FINE_TUNE_CPU_THREADS] * 2
        assert torch.get_num_threads() == FINE_TUNE_CPU_THREADS + 1  # restored
    finally:
        torch.set_num_threads(before)
