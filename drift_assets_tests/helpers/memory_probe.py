"""Measure one step's peak memory on the CPU, in a process of its own, and print it with the plan.

    MALLOC_MMAP_THRESHOLD_=65536 python -m drift_assets_tests.helpers.memory_probe sft 512 1376 8 32000 4 256 [lora] [checkpointing]
    MALLOC_MMAP_THRESHOLD_=65536 python -m drift_assets_tests.helpers.memory_probe --serve   # probes read from stdin, a line each

The peak is the process's peak resident memory during the step (``VmHWM``, reset just before it)
minus its resident memory then, with the model built and the batch made. glibc's malloc is told to map every
allocation above 64 KiB on its own (``MALLOC_MMAP_THRESHOLD_``), so that freed tensors leave the
resident set at once and it follows the tensors alive; without that it keeps freed memory
around and the figure depends on the order of allocations.
"""

from __future__ import annotations

import gc
import json
import os
import sys

import torch


def resident() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_resident() -> int:
    """This process's peak resident memory since :func:`reset_peak` (``VmHWM``). Not ``ru_maxrss``:
    that one survives exec, so a process started from a large one (pytest) reports its parent's."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current resident size


def main(argv: list[str]) -> None:
    from drift_assets.core.data.sequences import ResponseBatch, training_step
    from drift_assets.core.gradients.memory import ModelShape, gradient_pass_plan, training_plan
    from drift_assets.core.gradients.projection import LinearGradientProjector, ProjectionOptions
    from drift_assets.core.training.adapters import LoraOptions, add_adapter
    from drift_assets.tasks.tiny_model import TinyLlamaShape, build_char_tokenizer, build_tiny_llama

    step, hidden, intermediate, layers, vocab, batch_size, length = argv[:7]
    hidden, intermediate, layers, vocab, batch_size, length = map(int, (hidden, intermediate, layers, vocab, batch_size, length))
    lora, checkpointing = "lora" in argv[7:], "checkpointing" in argv[7:]
    heads = max(1, hidden // 64)
    shape = TinyLlamaShape(hidden, layers, heads, intermediate, max(length, 64), vocab)
    model = build_tiny_llama(build_char_tokenizer(), shape, seed=0)
    if lora:
        model = add_adapter(model, LoraOptions(rank=8), seed=0)
    if checkpointing and step == "sft":  # as fine_tune sets it
        model.train()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids = torch.randint(0, vocab, (batch_size, length))
    response = torch.zeros(batch_size, length)
    response[:, length // 4 : -1] = 1
    batch = ResponseBatch(ids, torch.ones(batch_size, length, dtype=torch.long), response)
    shape = ModelShape.of(model)
    if step == "sft":
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        plan = training_plan(shape, batch_size, length, checkpointing=checkpointing)
        run = lambda: training_step(model, optimizer, batch)  # noqa: E731
    else:
        projector = LinearGradientProjector(
            model, ProjectionOptions(rank=16, basis="random", gradient_checkpointing=checkpointing)
        )
        plan = gradient_pass_plan(shape, batch_size, length, projector.hooked_values, projector.dimension, checkpointing)
        run = lambda: projector.project(batch)  # noqa: E731
    gc.collect()
    reset_peak()
    before = resident()
    run()
    peak = peak_resident() - before
    # The weights were resident before the step: the measured peak is what the step added.
    planned = plan.total - plan.parts["weights"]
    print(json.dumps({"measured": peak, "planned": planned, "plan": plan.describe()}))


def serve() -> None:
    """Probe after probe, each in a child forked from this process, so that torch, transformers and
    the library are imported once while every probe still has a process, and a peak, of its own.
    Reads one probe's arguments per line on stdin; for each writes the child's JSON line (or
    ``{"error": ...}``), then ``exit <status>``."""
    import traceback

    from transformers import LlamaForCausalLM  # noqa: F401  (what build_tiny_llama imports)

    import drift_assets.core.gradients.memory
    import drift_assets.core.gradients.projection
    import drift_assets.core.training.adapters
    import drift_assets.tasks.tiny_model  # noqa: F401

    for line in sys.stdin:
        sys.stdout.flush()  # nothing buffered here may be written twice by the child
        child = os.fork()
        if child == 0:
            status = 0
            try:
                main(line.split())
            except BaseException:
                print(json.dumps({"error": traceback.format_exc()}))
                status = 1
            sys.stdout.flush()
            os._exit(status)
        _, status = os.waitpid(child, 0)
        print(f"exit {os.waitstatus_to_exitcode(status)}", flush=True)


if __name__ == "__main__":
    serve() if sys.argv[1:] == ["--serve"] else main(sys.argv[1:])
