"""The demo's base model: a tiny Llama with a character-level tokenizer, trained from scratch.

Sizes are chosen for vLLM on CPU (it accepts attention head_dim 64, not 16) and for 2 CPU cores.
Pre-training stops at the first checkpoint whose greedy accuracy on a *calibration* set (its own
split, never the validation or test queries) lands in the target band, so the model answers only
part of the time and on-policy rollouts get mixed grades.
"""

from __future__ import annotations

import logging
import random
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from drift_assets.core.data.sequences import collate_pairs, encode_prompt, encode_response, render_prompt, training_step
from drift_assets.core.generation.engines import TransformersEngine
from drift_assets.core.grading.graders import GradingOptions
from drift_assets.core.runtime.progress import BandProgress
from drift_assets.core.training.sft import evaluate

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

# Pre-training is long and its lines say little each: fewer of them than other progress.
PRETRAIN_PROGRESS_EVERY_S = 40.0

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
# Every turn opens with its role token; the assistant's closes with EOS, as the training encoding has it.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


# The text a tokenizer without a template gets (``sequences.render_messages_prompt``: a lone user
# turn as it is, several as ``role: content`` lines), written as a chat template: a model trained
# without roles renders the same tokens through it, and tools that need a template (TRL's
# SFTTrainer) train it on the format it knows.
PLAIN_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[-1]['role'] == 'assistant' %}{% set turns = messages[:-1] %}{% else %}{% set turns = messages %}{% endif %}"
    "{% if turns | length == 1 %}{{ turns[0]['content'] }}"
    "{% else %}{% for message in turns %}{{ message['role'] + ': ' + message['content'] + '\n' }}{% endfor %}"
    "{{ 'assistant: ' }}{% endif %}"
    "{% if messages[-1]['role'] == 'assistant' %}{{ messages[-1]['content'] + eos_token }}{% endif %}"
)
ChatTemplate = Literal["none", "plain", "roles"]


def build_char_tokenizer(chat_template: ChatTemplate = "none") -> PreTrainedTokenizerFast:
    """Every printable ASCII character is one token; BOS is prepended, EOS closes responses.

    ``roles``: the role tokens join the vocabulary (after every other token, so the characters keep
    their ids) and prompts are rendered with :data:`CHAT_TEMPLATE`; ``plain``: prompts render as
    without a template, through :data:`PLAIN_CHAT_TEMPLATE`; ``none``: no template.
    """
    # Imported here, as in build_tiny_llama: the code location imports this module (the demo's
    # assets), and transformers would add seconds to every UI-launched run's start.
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    characters = sorted(set(string.printable) - set("\x0b\x0c\r"))
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for character in characters:
        vocab[character] = len(vocab)
    roles = ROLE_TOKENS if chat_template == "roles" else []
    for role in roles:
        vocab[role] = len(vocab)
    # BPE without merges is a character-level model that round-trips text exactly.
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.decoder = decoders.Fuse()
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="right",
        **({"additional_special_tokens": roles} if roles else {}),
    )
    if chat_template != "none":
        fast.chat_template = CHAT_TEMPLATE if chat_template == "roles" else PLAIN_CHAT_TEMPLATE
    return fast


@dataclass(frozen=True)
class TinyLlamaShape:
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2  # head_dim = 64, the smallest vLLM's CPU attention accepts
    intermediate_size: int = 384
    max_positions: int = 256
    vocab_size: int | None = None  # None: the tokenizer's (a larger one sizes the embeddings like a real model's)


def build_tiny_llama(tokenizer, shape: TinyLlamaShape = TinyLlamaShape(), seed: int = 0) -> LlamaForCausalLM:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=max(len(tokenizer), shape.vocab_size or 0),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_heads,
        head_dim=shape.hidden_size // shape.num_heads,
        max_position_embeddings=shape.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    return LlamaForCausalLM(config)


def greedy_accuracy(
    model, tokenizer, queries: Sequence[dict], max_tokens: int = 64, options: GradingOptions = GradingOptions()
) -> float:
    """Share of queries whose greedy completion passes each query's grader.

    64 tokens: the longest demo response style ("We compute a + b and get c. Answer: c") is ~45
    characters, and a shorter limit would grade it wrong for being cut off.
    """
    engine = TransformersEngine(model, tokenizer, device=next(model.parameters()).device)
    return evaluate(engine, tokenizer, queries, max_tokens, options).accuracy


@dataclass
class PretrainResult:
    steps: int
    calibration_accuracy: float
    accuracy_curve: list[tuple[int, float]]
    loss_curve: list[float]  # the mean training loss between consecutive evaluations
    wall_seconds: float
    reached_target: bool


def pretrain(
    model,
    tokenizer,
    corpus: Sequence[tuple[str, str]],
    calibration: Sequence[dict],
    seed: int,
    grading: GradingOptions = GradingOptions(),
    target_accuracy: tuple[float, float] = (0.3, 0.7),
    max_steps: int = 3000,
    eval_every: int = 100,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    log: Callable[[str], None] = logger.info,
) -> PretrainResult:
    """Train on (prompt, response) pairs until greedy accuracy on the ``calibration`` queries (their
    own split, never validation or test) reaches the target band.

    The stopping rule looks at the lower half of the band's midpoint so that the model is neither
    hopeless nor already good: it stops at the first evaluation whose accuracy is in
    [max(low, midpoint - 0.1), high].
    """
    started = time.perf_counter()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    low, high = target_accuracy
    stop_low = max(low, (low + high) / 2 - 0.1)
    encoded = [(encode_prompt(tokenizer, render_prompt(tokenizer, p)), encode_response(tokenizer, r)) for p, r in corpus]
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    curve: list[tuple[int, float]] = []
    loss_curve: list[float] = []
    window: list[float] = []
    accuracy, step = 0.0, 0
    order: list[int] = []
    # The step limit bounds the run; it stops once calibrated, usually long before: the ETA follows
    # calibration accuracy's trend toward the band.
    progress = BandProgress(
        "pre-training", max_steps, (stop_low, high), log, "steps", "calibration accuracy", every_s=PRETRAIN_PROGRESS_EVERY_S
    )
    model.train()
    for step in range(1, max_steps + 1):
        if len(order) < batch_size:
            order = list(range(len(encoded)))
            rng.shuffle(order)
        batch_ids = [order.pop() for _ in range(batch_size)]
        # Train on the whole text (prompt too): this is pre-training, not SFT.
        batch = collate_pairs(
            tokenizer, [encoded[i][0][:1] for i in batch_ids], [encoded[i][0][1:] + encoded[i][1] for i in batch_ids]
        )
        window.append(training_step(model, optimizer, batch))
        if step % eval_every == 0:
            model.eval()
            accuracy = greedy_accuracy(model, tokenizer, calibration, options=grading)
            model.train()
            curve.append((step, accuracy))
            loss_curve.append(sum(window) / len(window))
            window = []
            if progress.measured(step, accuracy, f"(loss {loss_curve[-1]:.3f})"):
                break
    model.eval()
    return PretrainResult(
        steps=step,
        calibration_accuracy=accuracy,
        accuracy_curve=curve,
        loss_curve=loss_curve,
        wall_seconds=time.perf_counter() - started,
        reached_target=low <= accuracy <= high,
    )


def save_model(model, tokenizer, directory: str | Path) -> None:
    """``save_pretrained`` for both, so that AutoModelForCausalLM/AutoTokenizer and vLLM load it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
