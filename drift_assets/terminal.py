"""How runs started from the command line print: one short line per event, ``HH:MM:SS step:
message`` (warnings and errors with their level), each error cut to its message (the stack traces
Dagster logs for a failed step and run bury the cause). The CLI's ``--verbose`` restores Dagster's
own format, its DEBUG events and the traces. Runs launched from the UI keep Dagster's console
logger: the UI shows each event with its run, step and trace.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator

from dagster import Field, logger

# Dagster's own console logger (internal API, pinned with Dagster 1.13.27), so the format stays Dagster's.
from dagster._utils.log import create_console_logger

_TRACE = "\nStack Trace:"

# What the libraries print that a user of the CLI does not need to read; ``--verbose`` keeps it all.
# Set before they are imported, and inherited by vLLM's engine processes.
QUIET_LIBRARIES = {
    "VLLM_LOGGING_LEVEL": "ERROR",  # the engine's start-up and shutdown chatter
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" and "Writing model shards" bars
    "TQDM_DISABLE": "1",  # any other progress bar left at its default
    "TORCH_CPP_LOG_LEVEL": "ERROR",  # torch's NUMA-binding notice where vLLM's engine runs (cli.py sets it first)
    "TORCH_LOGS": "-all",  # torch's Python-side notices there ("Triton not available", without triton)
    "PYTHONWARNINGS": "ignore::FutureWarning",  # deprecations inside vLLM, in its own processes
}


def quiet_libraries() -> None:
    """Silence the libraries' chatter (what the user set in the environment wins)."""
    for name, value in QUIET_LIBRARIES.items():
        os.environ.setdefault(name, value)
    # vLLM's modules that log while they import, before vLLM reads its own level.
    logging.getLogger("vllm").setLevel(os.environ["VLLM_LOGGING_LEVEL"].upper())
    # torch's "Triton not available" (triton is not installed on CPU), which TORCH_LOGS does not cover.
    logging.getLogger("torch._library.triton").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)


def hide_beta_warnings() -> None:
    """Dagster warns, at every definitions build, that the observable sources this graph uses are beta."""
    warnings.filterwarnings("ignore", message=r".* is currently in beta", module=r"dagster\.|drift_assets\.")


TIME_FORMAT = "%H:%M:%S"


class _Compact(logging.Formatter):
    """``12:00:01 rollouts: message``: the run id, job name and logger name that Dagster's format
    repeats on every line say nothing to someone watching one command."""

    def format(self, record: logging.LogRecord) -> str:
        meta = getattr(record, "dagster_meta", None) or {}
        message = meta.get("orig_message") or record.getMessage()
        message = message.split(_TRACE, 1)[0].rstrip()
        where = meta.get("step_key") or meta.get("job_name") or ""
        level = "" if record.levelno == logging.INFO else f"{record.levelname} "
        return f"{self.formatTime(record, self.datefmt)} {level}{where + ': ' if where else ''}{message}"


@logger(
    {"log_level": Field(str, default_value="INFO"), "tracebacks": Field(bool, default_value=False)},
    description="One short line per event; with tracebacks, Dagster's own colored console format.",
)
def terminal_logger(init_context) -> logging.Logger:
    console = create_console_logger("dagster", init_context.logger_config["log_level"])
    if not init_context.logger_config["tracebacks"]:
        for handler in console.handlers:
            handler.setFormatter(_Compact(datefmt=TIME_FORMAT))
    return console


def terminal_run_config(verbose: bool) -> dict:
    """The run config that selects :func:`terminal_logger` for a run started from Python."""
    return {"loggers": {"console": {"config": {"log_level": "DEBUG" if verbose else "INFO", "tracebacks": verbose}}}}


# A Rust panic as its default hook prints it: "thread '<name>' (<id>) panicked at <file>:<line>:<col>:",
# the message, then a backtrace or a "note:" line.
_PANIC = re.compile(rb"^thread '[^']*' (\(\d+\) )?panicked at ")
_PANIC_END = re.compile(rb"^note: ")
_LOG_LINE = re.compile(rb"^(\d\d:\d\d:\d\d |error: |\S+: )")


def _forward_without_panics(source: int, target: int) -> None:
    skipping = False
    with os.fdopen(source, "rb", buffering=0) as pipe:
        for line in iter(pipe.readline, b""):
            if _PANIC.match(line):
                skipping = True
                continue
            if skipping:
                if _PANIC_END.match(line):
                    skipping = False
                    continue
                if not _LOG_LINE.match(line):
                    continue
                skipping = False  # a line of ours: the panic's lines ended without their note
            try:
                os.write(target, line)
            except OSError:  # the terminal went away: keep draining, or the writers would block
                pass


@contextlib.contextmanager
def without_rust_panics() -> Iterator[None]:
    """Keep the panics of deltalake's Rust threads out of the terminal. A write that fails (a full
    disk) raises in Python, naming the cause; the object store's background thread then panics
    ("Already shut down") and Rust's hook prints that, with a backtrace, to file descriptor 2. While
    this is open, that descriptor is a pipe whose lines are copied to the terminal less those of a
    panic (``--verbose`` keeps them)."""
    sys.stderr.flush()
    terminal = os.dup(2)
    source, sink = os.pipe()
    os.dup2(sink, 2)
    os.close(sink)
    copier = threading.Thread(target=_forward_without_panics, args=(source, terminal), daemon=True)
    copier.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)  # the pipe's last writer here: the copier reads to its end (children may hold it)
        copier.join(timeout=5)
        os.close(terminal)
