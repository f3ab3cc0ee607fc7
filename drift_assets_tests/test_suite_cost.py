"""benchmarks/suite.py's report carries each method's cost beside its accuracy (results files from
before the cost was recorded still print)."""

import importlib.util
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "suite.py"


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("suite_under_test", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def result(draw: int, costs: dict[str, float] | None) -> dict:
    rows = []
    for method, accuracy in (("full", 0.50), ("drift", 0.52), ("loss", 0.55)):
        for seed in (0, 1):
            row = {"method": method, "seed": seed, "n_selected": 300, "accuracy": accuracy + 0.01 * seed, "noise_auc": None}
            if costs is not None:
                row["cost_vs_full_sft"] = costs[method]
            rows.append(row)
    return {
        "task": "arithmetic",
        "draw": draw,
        "table": rows,
        "guards": {},
        "pass_at_1": 0.4,
        "mixed_share": 0.5,
        "queries": 48,
        "drift_diagnostics": {"spearman_score_vs_grad_norm": 0.1, "spearman_score_vs_loss": -0.1},
    }


def test_each_task_and_the_overall_report_show_the_cost(suite):
    first = result(0, {"full": 0.0, "drift": 1.9, "loss": 0.1})
    second = result(1, {"full": 0.0, "drift": 2.1, "loss": 0.1})
    report = suite.task_report(first).splitlines()
    assert report[report.index(next(line for line in report if line.startswith("| method |")))].endswith("| cost × full SFT |")
    assert next(line for line in report if line.startswith("| drift |")).endswith("| – | 1.90 |")
    overall = suite.overall_report([first, second]).splitlines()
    assert next(line for line in overall if line.startswith("| method |")).endswith("| cost × full SFT |")
    assert next(line for line in overall if line.startswith("| drift |")).endswith("| 2.00 |")  # the draws' mean
    assert next(line for line in overall if line.startswith("| loss |")).endswith("| 0.10 |")


def test_results_from_before_the_cost_still_print(suite):
    old = result(0, None)
    assert next(line for line in suite.task_report(old).splitlines() if line.startswith("| drift |")).endswith("| – | – |")
    assert next(line for line in suite.overall_report([old]).splitlines() if line.startswith("| drift |")).endswith("| – |")


def test_runs_of_the_same_draw_are_joined_and_a_later_runs_rows_replace_an_earlier_ones(suite):
    earlier = result(0, None)
    later = result(0, None)
    later["table"] = [{**row, "method": "candidate", "accuracy": 0.60} for row in later["table"] if row["method"] == "drift"] + [
        {**row, "accuracy": 0.99} for row in later["table"] if row["method"] == "loss"
    ]
    other_draw = result(1, None)
    joined = suite.merged([earlier, other_draw, later])
    assert [(r["task"], r["draw"]) for r in joined] == [("arithmetic", 0), ("arithmetic", 1)]
    table = {(row["method"], row["seed"]): row["accuracy"] for row in joined[0]["table"]}
    assert table == {
        ("full", 0): 0.50,
        ("full", 1): 0.51,
        ("drift", 0): 0.52,
        ("drift", 1): 0.53,
        ("loss", 0): 0.99,  # the later run's
        ("loss", 1): 0.99,
        ("candidate", 0): 0.60,
        ("candidate", 1): 0.60,
    }
    assert len(earlier["table"]) == 6  # the inputs are not changed


def test_a_tagged_run_joins_the_default_run_of_its_draws_and_is_compared_with_the_default(suite):
    default = [result(0, None), result(1, None)]
    changed = []
    for draw, accuracy in ((0, 0.56), (1, 0.58)):
        run = result(draw, None)
        run["table"] = [{**row, "accuracy": accuracy} for row in run["table"] if row["method"] == "drift"]
        changed.append(suite.tagged(run, "completion"))
    assert {row["method"] for row in changed[0]["table"]} == {"drift+completion"}
    assert suite.tagged(default[0], None) is default[0]
    joined = suite.merged([*default, *changed])
    line = next(line for line in suite.versus_default_report(joined).splitlines() if line.startswith("| drift+completion |"))
    # per draw: 0.56 - mean(0.52, 0.53) and 0.58 - mean(0.52, 0.53) -> +3.5 and +5.5 points
    assert line == "| drift+completion | 2 | +4.5 ± 1.0 | leads |"
