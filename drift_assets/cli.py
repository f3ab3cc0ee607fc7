"""``drift-assets`` / ``python -m drift_assets``: materialize the graph and print what it produced.

Runs are recorded in the Dagster instance under $DAGSTER_HOME (the Makefile points it at
data/dagster_home), so ``make ui`` afterwards shows every run, materialization and check.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
import traceback

import polars as pl

# torch reads its C++ log level once, when it is first imported (by the settings, next): a command
# without --verbose sets it first, so that the notices of vLLM's engine, which runs in this process
# on the CPU, stay out of the terminal (quiet_libraries sets the rest, for what is imported later).
if "--verbose" not in sys.argv[1:]:
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

from drift_assets.settings import SettingsError, load_settings  # noqa: E402


def _summary(settings, instance=None) -> str:
    """What the warehouse holds, table by table; with the Dagster ``instance`` the runs were recorded
    in, also what the pipeline cost (the cost its steps recorded in their metadata)."""
    from drift_assets.core.data.stored import ConfiguredTables
    from drift_assets.resources import Warehouse

    warehouse = Warehouse.from_settings(settings)
    tables = ConfiguredTables.configured_by(settings, warehouse)  # not the checkpoints and shards configured before
    lines = []

    def read(name: str, *columns: str) -> pl.DataFrame | None:
        return tables.scan(name).select(columns or pl.all()).collect() if warehouse.exists(name) else None

    pool, rejects = read("training_pool"), read("training_pool_rejects")
    if pool is not None:
        lines.append(
            f"training_pool            {pool.height} examples ({rejects.height if rejects is not None else 0} quarantined)"
        )
    rollouts, grades = read("rollouts", "checkpoint", "engine"), read("grades")
    if rollouts is not None and grades is not None:
        from drift_assets.core.grading.graders import grade_summary

        base = grades.filter(pl.col("checkpoint") == "base")
        summary = grade_summary(base)
        lines.append(
            f"rollouts / grades        {base.height} rollouts of the base model by {rollouts['engine'][0]}, "
            f"pass@1 {base['correct'].mean():.3f}, {summary['queries_mixed']}/{summary['queries']} queries with mixed grades"
        )
        later = (
            grades.filter(pl.col("checkpoint") != "base").group_by("checkpoint").agg(pl.col("correct").mean()).sort("checkpoint")
        )
        if later.height:
            from drift_assets.core.runtime.cost import checkpoint_label

            lines.append(
                "warm-up checkpoints      pass@1 "
                + ", ".join(f"{checkpoint_label(c)} {p:.3f}" for c, p in later.iter_rows())
                + "; scores averaged with the base model's"
            )
    scores = read("influence_scores")
    if scores is not None:
        from drift_assets.core.attribution.scores import diagnostics

        figures = diagnostics(scores, pool)
        text = ", ".join(f"{k} {v:.3f}" for k, v in figures.items())
        lines.append(f"influence_scores         {scores.height} scored; {text}")
    refined = read("refined_dataset")
    if refined is not None:
        chosen = refined.filter("selected")
        line = f"refined_dataset          {chosen.height}/{refined.height} selected"
        if "is_corrupted" in refined.columns:
            line += (
                f"; corrupted share {refined['is_corrupted'].mean():.3f} in pool -> {chosen['is_corrupted'].mean():.3f} selected"
            )
        lines.append(line + _selection_choice(instance))
    export = read("refined_dataset_export")
    if export is not None:
        lines.append(f"exports                  {export['rows'][0]} examples in " + ", ".join(export["path"]))
    evaluation = read("refined_model_evaluation")
    if evaluation is not None:
        for row in evaluation.iter_rows(named=True):
            lines.append(
                f"evaluation               {row['model']:<10} accuracy {row['accuracy']:.3f} "
                f"[{row['accuracy_low']:.3f}, {row['accuracy_high']:.3f}] on {row['n_queries']} test queries"
            )
    if instance is not None and pool is not None and scores is not None:
        from drift_assets.defs.cost import CostPlan, recorded_pipeline_cost
        from drift_assets.settings import given

        cost = recorded_pipeline_cost(instance, given(CostPlan, settings), pool)
        if cost.parts:
            head, split = cost.lines()
            lines += [f"cost                     {head}", f"                         {split}"]
        else:
            lines.append(
                "cost                     not recorded in this Dagster instance (DAGSTER_HOME names the one the runs used)"
            )
    return "\n".join(lines)


def _selection_choice(instance) -> str:
    """Which selection refined_dataset's last materialization kept and each one's validation accuracy
    (selection.choose_among), or nothing where it chose none."""
    from dagster import AssetKey

    event = instance.get_latest_materialization_event(AssetKey("refined_dataset")) if instance is not None else None
    metadata = event.asset_materialization.metadata if event is not None else {}
    if "selection_chosen" not in metadata:
        return ""
    accuracies = {
        key.removeprefix("validation_accuracy_"): entry.value
        for key, entry in metadata.items()
        if key.startswith("validation_accuracy_")
    }
    return (
        f"; {metadata['selection_chosen'].value}'s kept (validation accuracy "
        + ", ".join(f"{name} {value:.3f}" for name, value in accuracies.items())
        + ")"
    )


def _root_cause(error: BaseException) -> BaseException:
    """The user's exception under Dagster's wrappers (``user_exception``, ``__cause__``)."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        inner = getattr(error, "user_exception", None) or error.__cause__
        if inner is None:
            break
        error = inner
    return error


def check_reason(metadata: dict) -> str:
    """Why a check failed, from its evaluation's metadata: its "message", or else its figures and
    hint (a check written without a message still says why)."""
    if "message" in metadata:
        return str(metadata["message"].value)
    figures = ", ".join(
        f"{key} {value.value:g}" if isinstance(value.value, float) else f"{key} {value.value}"
        for key, value in metadata.items()
        if key != "hint" and isinstance(value.value, bool | int | float | str) and len(str(value.value)) <= 200
    )
    hint = metadata.get("hint")
    return figures + (f"; hint: {hint.value}" if hint is not None else "")


def _failed_check_messages(error: BaseException, instance) -> list[str]:
    """Each failed blocking check named in Dagster's error, with why (:func:`check_reason`)."""
    from dagster import AssetCheckKey, AssetKey

    checks = []
    for line in str(error).splitlines()[1:]:  # "<asset>: <check>,<check>"
        asset, _, names = line.partition(": ")
        checks += [AssetCheckKey(AssetKey.from_user_string(asset), name) for name in names.split(",") if name]
    records = instance.event_log_storage.get_latest_asset_check_execution_by_key(checks) if checks else {}
    messages = []
    for key in checks:
        record = records.get(key)
        evaluation = (
            record.event.dagster_event.event_specific_data if record and record.event and record.event.dagster_event else None
        )
        reason = check_reason(evaluation.metadata) if evaluation is not None else ""
        messages.append(f"check {key.name} on {key.asset_key.to_user_string()} failed" + (f": {reason}" if reason else ""))
    return messages


def interrupted(error: BaseException) -> bool:
    """Whether ``error`` is a signal's (Ctrl-C, SIGTERM), as Python or Dagster raise it."""
    return type(_root_cause(error)).__name__ in ("KeyboardInterrupt", "DagsterExecutionInterruptedError")


def failure_paragraph(error: BaseException, instance, signal_name: str | None = None) -> str:
    """What a failed materialization says first: the cause, naming the file, row or setting, and
    the advice of any failed check (the traceback only with --verbose). A signal (``signal_name``
    where known) ends here too: what was committed stays, and the same command resumes."""
    root = _root_cause(error)
    if interrupted(error):
        return (
            f"error: the materialization was interrupted ({signal_name or 'by a signal'}).\n"
            "  What was committed is kept; run the same command again to resume: what already succeeded is not recomputed."
        )
    if type(root).__name__ == "DagsterAssetCheckFailedError":
        lines = _failed_check_messages(root, instance) or [str(root)]
    else:
        lines = [f"{type(root).__name__}: {root}"]
    return (
        "error: the materialization failed.\n"
        + "\n".join(f"  {line}" for line in lines)
        + "\n  Fix the cause and run the same command again: what already succeeded is not recomputed."
    )


class _Signals:
    """Which signal stopped the command. Dagster swaps the handlers while a run executes (SIGTERM
    raises as SIGINT does), so the signal is read from Python's wakeup file descriptor, to which the
    interpreter writes the number of every signal it handles, whatever the handler."""

    def __enter__(self):
        self._read = None
        if threading.current_thread() is not threading.main_thread():  # handlers are the main thread's
            return self
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        os.set_blocking(self._read, False)
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        # SIGTERM ends the command as Ctrl-C does (before the first run too, where Dagster has not mapped it).
        self._previous_term = signal.signal(signal.SIGTERM, signal.default_int_handler)
        return self

    def received(self) -> str | None:
        """The last SIGINT or SIGTERM received since the previous call (None: neither)."""
        try:
            numbers = os.read(self._read, 64) if self._read is not None else b""
        except BlockingIOError:
            return None
        names = [signal.Signals(n).name for n in numbers if n in (signal.SIGINT, signal.SIGTERM)]
        return names[-1] if names else None

    def __exit__(self, *_):
        if self._read is None:
            return
        signal.set_wakeup_fd(self._previous_fd)
        signal.signal(signal.SIGTERM, self._previous_term)
        os.close(self._read)
        os.close(self._write)


INTERRUPTED_EXIT = {"SIGINT": 130, "SIGTERM": 143}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="drift-assets", description=__doc__.splitlines()[0])
    parser.add_argument(
        "command",
        choices=["materialize", "summary", "push"],
        help="materialize the whole graph, print the summary, or push the export folder to the Hugging Face Hub",
    )
    parser.add_argument("--repo", help="push: the Hub dataset to upload to, user/name (the token: $HF_TOKEN)")
    parser.add_argument("--private", action="store_true", help="push: create the Hub dataset private")
    parser.add_argument("--settings", help="settings file (default: $DRIFT_ASSETS_SETTINGS or data/settings.yaml)")
    parser.add_argument("--all", action="store_true", help="materialize everything, not only what is stale or missing")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="Dagster's DEBUG events, the stack traces of a failure, and vLLM's and the other libraries' logs",
    )
    args = parser.parse_args(argv)
    from drift_assets.terminal import TIME_FORMAT, hide_beta_warnings, quiet_libraries, without_rust_panics

    if not args.verbose:
        quiet_libraries()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt=TIME_FORMAT)
    # What a user should not have to read: Dagster's SQLite storage stamps its schema (alembic, at INFO)
    # for every new run database.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    hide_beta_warnings()
    try:
        settings = load_settings(args.settings)
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.command == "materialize":
        with _Signals() as signals, contextlib.nullcontext() if args.verbose else without_rust_panics():
            try:
                return _materialize(settings, args, signals)
            except KeyboardInterrupt as error:  # before or after the runs, outside their handling
                received = signals.received()
                print(f"\n{failure_paragraph(error, None, received)}", file=sys.stderr)
                return INTERRUPTED_EXIT.get(received or "", 130)
    if args.command == "push":
        return _push(settings, args)
    from drift_assets.runner import InstanceError, instance_for_runs

    try:
        with instance_for_runs() as instance:
            print(_summary(settings, instance))
    except InstanceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _push(settings, args) -> int:
    """Upload the export folder (``selection.export_dir``) to the Hub dataset ``--repo``."""
    from drift_assets.core.data.publish import PushError, hub_token, push_dataset

    if not args.repo:
        print("error: push needs --repo user/name (the Hub dataset to upload to)", file=sys.stderr)
        return 2
    export_dir = settings.resolve(settings.selection.export_dir)
    try:
        url = push_dataset(export_dir, args.repo, hub_token(os.environ), private=args.private)
    except PushError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"pushed {export_dir} to https://huggingface.co/datasets/{args.repo} ({url})")
    return 0


def _materialize(settings, args, signals: _Signals) -> int:
    started = time.perf_counter()
    # The first line, before the pipeline's code, the instance and the warehouse load (seconds of silence).
    logging.getLogger("drift_assets").info(
        f"materialize: loading the pipeline, the Dagster instance and the warehouse ({settings.warehouse.root})"
    )
    from drift_assets.definitions import build_definitions
    from drift_assets.resources import Warehouse, WarehouseInstanceError
    from drift_assets.runner import InstanceError, fail_abandoned_runs, instance_for_runs, materialize_pipeline

    warehouse = Warehouse.from_settings(settings)
    try:
        with instance_for_runs() as instance:
            try:
                warehouse.check_reachable()
                # Before anything is recorded: an instance that keeps another warehouse's history is refused.
                warehouse.claim(instance)
                for run_id in fail_abandoned_runs(instance):
                    print(f"run {run_id} had been left STARTED by a killed process: marked failed")
                with warehouse.lock():
                    done = materialize_pipeline(
                        build_definitions(settings), instance, only_stale=not args.all, warehouse=warehouse, verbose=args.verbose
                    )
            except WarehouseInstanceError as error:
                print(f"error: {error}", file=sys.stderr)
                return 2
            except BaseException as error:
                if not isinstance(error, Exception) and not interrupted(error):
                    raise
                received = signals.received()
                if args.verbose:
                    traceback.print_exc()
                print(
                    f"\n{failure_paragraph(error, instance, received)}"
                    + (
                        ""
                        if args.verbose or interrupted(error)
                        else "\n  (--verbose adds the stack traces and Dagster's DEBUG events)"
                    ),
                    file=sys.stderr,
                )
                return INTERRUPTED_EXIT.get(received or "", 130) if interrupted(error) else 1
            what = f"{len(done)} stale or missing assets/shards" if done else "nothing (everything was up to date)"
            print(f"\nmaterialized {what} in {time.perf_counter() - started:.0f} s")
            print(_summary(settings, instance))  # the instance's records hold what each step cost
    except InstanceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
