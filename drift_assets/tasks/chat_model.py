"""A model shaped like the ones users bring: a byte-level BPE tokenizer with merges and a chat
template (ChatML, as Qwen's), on a tiny random Llama. Built locally in a second, no download.

The demo's character tokenizer round-trips any text token for token; this one does not, which is
what the tests of "the tokens the model sampled" need.
"""

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from drift_assets.tasks.demo_task import training_pool_rows
from drift_assets.tasks.tiny_model import build_tiny_llama, save_model

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_chat_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on demo problems and answers (so "Answer", " 16" and the like are merged)."""
    texts = [row["prompt"] + row["response"] for row in training_pool_rows(400, 0.0, 0.0, seed=1)]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<|im_start|>", "<|im_end|>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    wrapped.chat_template = CHATML
    return wrapped


def save_chat_model(directory: Path, seed: int = 0) -> Path:
    """A random tiny Llama (head_dim 64, as vLLM's CPU attention needs) with :func:`build_chat_tokenizer`."""
    tokenizer = build_chat_tokenizer()
    save_model(build_tiny_llama(tokenizer, seed=seed), tokenizer, directory)
    return directory
