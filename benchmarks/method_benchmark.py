"""Run the method benchmark (SFT on each method's selection, several seeds) and print the table.

    DAGSTER_HOME=$PWD/data/dagster_home .venv/bin/python -m benchmarks.method_benchmark   # settings from $DRIFT_ASSETS_SETTINGS or data/settings.yaml

It first brings the pipeline up to date (only what is stale or missing), then runs the
``method_benchmark`` job, which writes the table that the UI shows on the method_benchmark asset.
"""

import argparse
import time

from drift_assets.core.study.benchmark import summary_markdown
from drift_assets.definitions import build_definitions
from drift_assets.resources import Warehouse
from drift_assets.runner import instance_for_runs, materialize_pipeline, run_method_benchmark
from drift_assets.settings import load_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", help="settings file")
    args = parser.parse_args()
    settings = load_settings(args.settings)
    defs = build_definitions(settings)
    started = time.perf_counter()
    with instance_for_runs() as instance:
        materialize_pipeline(defs, instance, only_stale=True)
        run_method_benchmark(defs, instance)
    table = Warehouse.from_settings(settings).scan("method_benchmark").collect()
    print(
        f"\nmethod benchmark ({len(settings.benchmark.seeds)} seeds, {settings.benchmark.sft.steps} SFT steps each), "
        f"{time.perf_counter() - started:.0f} s in all\n"
    )
    print(summary_markdown(table))


if __name__ == "__main__":
    main()
