"""Rollout gradients are of the tokens the engine sampled, also under a BPE tokenizer with a chat template."""

import polars as pl
import pytest
import torch

from drift_assets.core.data.sequences import (
    bos_warning,
    encode_prompt,
    encode_response,
    render_prompt,
    teacher_forced_logprobs,
)
from drift_assets.core.generation.engines import SamplingSettings, TransformersEngine
from drift_assets.core.generation.rollouts import rollout_rows
from drift_assets.core.gradients.tables import answer_split, query_token_pairs, response_token_pairs, validation_gradient_frame
from drift_assets.tasks.chat_model import build_chat_tokenizer
from drift_assets.tasks.tiny_model import build_char_tokenizer, build_tiny_llama

QUERIES = pl.DataFrame({"query_id": [f"q{i}" for i in range(6)], "prompt": [f"What is {i} + {2 * i + 3}?\n" for i in range(6)]})


@pytest.fixture(scope="module")
def chat():
    tokenizer = build_chat_tokenizer()
    return tokenizer, build_tiny_llama(tokenizer, seed=0).eval()


def test_the_chat_template_renders_the_prompt(chat):
    tokenizer, _ = chat
    rendered = render_prompt(tokenizer, "What is 1 + 2?\n")
    assert rendered == "<|im_start|>user\nWhat is 1 + 2?\n<|im_end|>\n<|im_start|>assistant\n"
    assert encode_prompt(tokenizer, rendered).count(tokenizer.bos_token_id) == 2  # no extra BOS on top of the template's


def test_sampled_ids_give_the_engine_logprob_back_where_re_encoded_text_does_not(chat):
    tokenizer, model = chat
    prompt_ids = [encode_prompt(tokenizer, render_prompt(tokenizer, p)) for p in QUERIES["prompt"]]
    report = TransformersEngine(model, tokenizer, device="cpu").generate(prompt_ids, SamplingSettings(n=4, max_tokens=24, seed=0))
    table = rollout_rows(QUERIES, report, "random-chat-model", seed=0)
    assert table["token_ids"].list.len().to_list() == table["n_tokens"].to_list()
    engine = torch.tensor(table["logprob_sum"].to_list(), dtype=torch.float64)

    sampled = teacher_forced_logprobs(
        model, tokenizer, *response_token_pairs(tokenizer, table["prompt"], table["completion"], table["token_ids"])
    )
    assert torch.allclose(sampled, engine, atol=1e-3)

    # The text a merging tokenizer decodes does not encode back to the same tokens: a gradient of the
    # re-encoded text would be of sequences the model did not sample, some far less likely.
    re_encoded = response_token_pairs(
        tokenizer,
        table["prompt"],
        table["completion"],
        [encode_response(tokenizer, text, append_eos=eos) for text, eos in zip(table["completion"], table["ended_with_eos"])],
    )
    differ = [row for row, ids in enumerate(re_encoded[1]) if ids != table["token_ids"][row].to_list()]
    assert len(differ) > table.height // 2
    assert (teacher_forced_logprobs(model, tokenizer, *re_encoded) - engine).abs().max() > 1.0


def test_the_answer_span_starts_at_the_token_that_holds_the_marker(chat):
    tokenizer, _ = chat
    completion = "We compute 10 + 6 and get 16. Answer: 16"
    sampled = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    (context,), (response,) = response_token_pairs(
        tokenizer, ["What is 10 + 6?\n"], [completion], [sampled], answer_marker="Answer:"
    )
    prompt = encode_prompt(tokenizer, render_prompt(tokenizer, "What is 10 + 6?\n"))
    assert context + response == prompt + sampled  # the same tokens: only the split moves
    split = len(context) - len(prompt)
    # The byte-level pre-tokenizer keeps the space with the word: the span's first token is " Answer".
    assert tokenizer.decode(response, skip_special_tokens=True) == " Answer: 16"
    assert len(tokenizer.decode(sampled[:split])) <= completion.rfind("Answer:") < len(tokenizer.decode(sampled[: split + 1]))
    # Text (a reference answer) is encoded whole and split the same way; encoding the span's text on
    # its own would give other tokens ("Answer" without its space) than the whole text has.
    assert query_token_pairs(tokenizer, ["What is 10 + 6?\n"], [completion], answer_marker="Answer:") == ([context], [response])
    assert tokenizer("Answer: 16", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] != response


@pytest.mark.parametrize("cut", [0, 1, 5, 13, 27, 39])
def test_answer_split_is_the_first_token_past_the_cut(chat, cut):
    tokenizer, _ = chat
    ids = tokenizer("We compute 10 + 6 and get 16. Answer: 16", add_special_tokens=False)["input_ids"]
    split = answer_split(tokenizer, ids, cut)
    lengths = [len(tokenizer.decode(ids[:i])) for i in range(len(ids) + 1)]  # the slow way: every prefix
    assert split == max(i for i, length in enumerate(lengths) if length <= cut)


def test_a_tokenizer_that_round_trips_text_splits_as_encoding_the_halves_apart_did():
    """The demo's character tokenizer: splitting the ids gives what encoding the text before and
    after the marker apart gave (how the demo's tables were computed), so they did not change."""
    tokenizer = build_char_tokenizer()
    prompts = ["What is 1 + 2?\n"] * 4
    completions = ["1 + 2 = 3. Answer: 3", "Answer: 4", "We compute 1 + 2 and get", ""]
    ended = [True, True, False, True]
    sampled = [encode_response(tokenizer, c, append_eos=e) for c, e in zip(completions, ended)]
    prompt = encode_prompt(tokenizer, render_prompt(tokenizer, prompts[0]))
    cuts = [max(c.rfind("Answer:"), 0) for c in completions]

    def halves(eos_flags):
        return (
            [prompt + encode_response(tokenizer, c[:cut], append_eos=False) for c, cut in zip(completions, cuts)],
            [encode_response(tokenizer, c[cut:], append_eos=e) for c, cut, e in zip(completions, cuts, eos_flags)],
        )

    assert response_token_pairs(tokenizer, prompts, completions, sampled, "Answer:") == halves(ended)
    assert query_token_pairs(tokenizer, prompts, completions, "Answer:") == halves([True] * 4)  # text closes with EOS
    assert response_token_pairs(tokenizer, prompts, completions, sampled) == ([prompt] * 4, sampled)


def test_rollouts_without_token_ids_ask_for_a_re_materialization():
    rollouts = pl.DataFrame(
        {"rollout_id": ["r"], "query_id": ["q"], "prompt": ["p"], "completion": ["c"], "ended_with_eos": [True]}
    )
    with pytest.raises(ValueError, match="no token_ids column.*re-materialize rollouts"):
        validation_gradient_frame(None, None, rollouts, pl.DataFrame(), 8, "model")


def test_the_engine_context_defaults_to_the_models_and_a_longer_one_names_the_setting(tmp_path):
    from drift_assets.core.generation.engines import model_context_length, resolve_max_model_len
    from drift_assets.tasks.tiny_model import TinyLlamaShape, save_model

    tokenizer = build_char_tokenizer()
    save_model(build_tiny_llama(tokenizer, TinyLlamaShape(max_positions=64)), tokenizer, tmp_path)
    assert model_context_length(str(tmp_path)) == 64
    assert resolve_max_model_len(None, str(tmp_path)) == 64
    assert resolve_max_model_len(48, str(tmp_path)) == 48
    with pytest.raises(ValueError, match=r"rollout.max_model_len = 256 exceeds the model's context of 64 tokens"):
        resolve_max_model_len(256, str(tmp_path))


@pytest.mark.parametrize(
    "tokenizer", [build_char_tokenizer(), build_char_tokenizer(chat_template="roles"), build_chat_tokenizer()]
)
def test_a_prompt_without_the_bos_token_the_model_config_names_is_flagged(tokenizer):
    prompt = encode_prompt(tokenizer, render_prompt(tokenizer, "What is 2 + 2?"))
    assert prompt[0] == tokenizer.bos_token_id  # each of these tokenizers writes BOS first
    assert bos_warning(tokenizer, tokenizer.bos_token_id) is None
    assert bos_warning(tokenizer, None) is None  # a config without BOS asks for nothing
    other = tokenizer.bos_token_id + 1
    message = bos_warning(tokenizer, other)
    assert f"BOS token id {other}" in message and f"[{tokenizer.bos_token_id}]" in message
