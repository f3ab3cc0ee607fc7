"""Turning (prompt, response) pairs into padded token batches with a response-only mask.

One encoding is shared by rollout log-probs, gradients and SFT so that "the log-prob of a response"
means the same thing everywhere: the prompt is rendered with the tokenizer's chat template when it
has one, the response follows it, and an EOS token closes the response when it ended naturally.
Only response tokens (and that EOS) count; prompt and padding tokens are masked.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

LossReduction = Literal["sum", "mean"]


class ChatTemplateError(ValueError):
    """The tokenizer's chat template fails to render (it names the file that holds it)."""


def chat_template_file(model_dir: str | Path) -> Path:
    """The file of a model directory that holds its chat template (transformers reads the first there is)."""
    model_dir = Path(model_dir)
    names = ("chat_template.jinja", "chat_template.json", "tokenizer_config.json")
    return next((model_dir / name for name in names if (model_dir / name).exists()), model_dir)


def render_messages_prompt(tokenizer, messages: Sequence[dict[str, str]]) -> str:
    """The text the model sees before its answer: the chat template when the tokenizer has one;
    otherwise a single user turn as it is, or several turns as ``role: content`` lines."""
    if getattr(tokenizer, "chat_template", None):
        from jinja2 import TemplateError

        try:
            return tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        except TemplateError as error:
            # transformers renders templates in Jinja's sandbox: a template reaching for Python
            # internals fails here, having executed nothing.
            where = chat_template_file(getattr(tokenizer, "name_or_path", "") or ".")
            raise ChatTemplateError(
                f"{where}: the chat template fails to render ({type(error).__name__}: {error}); fix or remove the template"
            ) from None
    if len(messages) == 1:
        return messages[0]["content"]
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


def render_prompt(tokenizer, prompt: str) -> str:
    return render_messages_prompt(tokenizer, [{"role": "user", "content": prompt}])


def untemplated_turns_warning(tokenizer, messages: Sequence[str]) -> str | None:
    """Why rows of several prompt turns (``messages``: each row's JSON) reach the model as plain
    ``role: content`` lines (the tokenizer has no chat template), or None."""
    if getattr(tokenizer, "chat_template", None):
        return None
    turns = sum(1 for text in messages if len(json.loads(text)) > 2)
    if not turns:
        return None
    return (
        f"the tokenizer has no chat template: {turns} rows with more than one turn before the response (a system "
        "turn, or several user and assistant turns) are rendered as 'role: content' lines, a format the model may "
        "never have seen; save a chat template with the tokenizer (chat_template.jinja) if it was trained with one"
    )


def encode_prompt(tokenizer, rendered_prompt: str) -> list[int]:
    # A chat template already writes the BOS token into the text; do not add a second one.
    add_special = not getattr(tokenizer, "chat_template", None)
    return tokenizer(rendered_prompt, add_special_tokens=add_special)["input_ids"]


def bos_warning(tokenizer, bos_token_id: int | None) -> str | None:
    """Why prompts may reach the model without the BOS token its config names (None: they start with it)."""
    if bos_token_id is None:
        return None
    ids = encode_prompt(tokenizer, render_prompt(tokenizer, "What is 1 + 1?"))
    if ids[:1] == [bos_token_id]:
        return None
    return (
        f"the model's config.json names BOS token id {bos_token_id}, but the tokenizer encodes a prompt starting with "
        f"{ids[:1] or 'nothing'}: if the model was trained with BOS first, its rollouts, gradients and fine-tuning all see "
        "prompts unlike its training (set add_bos_token in tokenizer_config.json, or a chat template that writes "
        "{{ bos_token }}); some models (Qwen2, for one) are trained without it, and there this is expected"
    )


def encode_response(tokenizer, response: str, append_eos: bool = True) -> list[int]:
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if append_eos and tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return ids


@dataclass
class ResponseBatch:
    """``input_ids``/``attention_mask`` (B, T), right-padded; ``response_mask`` (B, T) marks the
    positions whose *next-token* prediction is a response token, i.e. the logits that count."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor

    def to(self, device) -> ResponseBatch:
        return ResponseBatch(self.input_ids.to(device), self.attention_mask.to(device), self.response_mask.to(device))


def collate_pairs(
    tokenizer,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
) -> ResponseBatch:
    """Right-pad token-id pairs into one batch."""
    lengths = [len(p) + len(r) for p, r in zip(prompt_ids, response_ids, strict=True)]
    width = max(lengths)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    input_ids = torch.full((len(lengths), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(lengths), width), dtype=torch.long)
    response_mask = torch.zeros((len(lengths), width), dtype=torch.bool)
    for row, (prompt, response) in enumerate(zip(prompt_ids, response_ids, strict=True)):
        sequence = list(prompt) + list(response)
        input_ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        attention_mask[row, : len(sequence)] = 1
        # logits at position t predict token t+1: response tokens start at len(prompt).
        response_mask[row, len(prompt) - 1 : len(sequence) - 1] = True
    return ResponseBatch(input_ids, attention_mask, response_mask)


def sequence_logprobs(logits: torch.Tensor, batch: ResponseBatch, reduction: LossReduction = "sum") -> torch.Tensor:
    """(B,) log π(response | prompt): summed over response tokens, or their mean (``reduction``)."""
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_log_probs = log_probs.gather(-1, batch.input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    total = (token_log_probs * batch.response_mask[:, :-1]).sum(dim=1)  # zero outside the response
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / batch.response_mask[:, :-1].sum(dim=1).clamp(min=1)
    raise ValueError(f"loss reduction must be 'sum' or 'mean' (got {reduction!r})")


def teacher_forced_logprobs(model, tokenizer, prompt_ids, response_ids) -> torch.Tensor:
    """(B,) float64 log π(response | prompt) of token-id pairs, in one batch, without gradients, on the CPU."""
    batch = collate_pairs(tokenizer, prompt_ids, response_ids).to(next(model.parameters()).device)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        return sequence_logprobs(logits, batch).double().cpu()


def training_step(model, optimizer, batch: ResponseBatch, autocast_dtype: torch.dtype | None = None) -> float:
    """One optimizer step on the mean negative log-likelihood of the masked tokens; returns the loss.

    ``autocast_dtype`` runs the forward pass under autocast (the backward pass follows it, outside).
    """
    return accumulated_training_step(model, optimizer, [batch], autocast_dtype)


def accumulated_training_step(
    model, optimizer, batches: Sequence[ResponseBatch], autocast_dtype: torch.dtype | None = None
) -> float:
    """One optimizer step on the mean negative log-likelihood of the masked tokens of all ``batches``
    together (gradients accumulated batch by batch, so memory holds one); returns that loss."""
    total_tokens = sum(int(batch.response_mask.sum()) for batch in batches)
    optimizer.zero_grad()
    total = 0.0
    for batch in batches:
        device_type = batch.input_ids.device.type
        with torch.autocast(device_type=device_type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            # No KV cache: training never reuses it (and gradient checkpointing refuses it, with a warning).
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        loss = -sequence_logprobs(logits, batch, "sum").sum()
        (loss / total_tokens).backward()
        total += loss.item()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return total / total_tokens
