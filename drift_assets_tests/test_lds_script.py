"""benchmarks/lds.py end to end on the materialized demo workspace: fine-tunes cached, a rerun fine-tunes nothing."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_lds(suite: Path, output: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "benchmarks/lds.py", "--suite", str(suite), "--tasks", "demo", "--subsets", "3", "--workers", "1"]
        + ["--references", "none", "--output", str(output)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_lds_script_caches_its_fine_tunes_and_prints_a_row_per_setting(materialized, tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "demo").symlink_to(materialized)  # the workspace stays read-only: the cache goes under suite/lds
    first = run_lds(suite, tmp_path / "first.json")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "3 to fine-tune (0 cached)" in first.stdout
    assert len(list((suite / "lds" / "cache" / "demo").glob("*.json"))) == 3
    result = json.loads((tmp_path / "first.json").read_text())["results"][0]
    # The demo workspace scores at the base model only: 2 targets × 2 Hessians × 2 debias settings.
    assert [row["row"] for row in result["rows"]] == [
        f"ours {targets} {hessian} base {debias}"
        for targets in ("onpolicy", "offpolicy")
        for hessian in ("identity", "fisher")
        for debias in ("raw", "unit")
    ]
    for row in result["rows"]:
        for measurement in ("onpolicy", "offpolicy"):
            entry = row[measurement]
            assert entry["queries"] + entry["constant"] == len(entry["per_query"]) > 0
            assert all(math.isnan(v) or -1.0 <= v <= 1.0 for v in entry["per_query"].values())
    assert "| ours onpolicy fisher base unit |" in first.stdout
    assert set(result["seconds"]) >= {"load", "fine-tunes", "our scores", "total"}
    second = run_lds(suite, tmp_path / "second.json")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "0 to fine-tune (3 cached)" in second.stdout
    again = json.loads((tmp_path / "second.json").read_text())["results"][0]
    assert [row["onpolicy"]["mean"] for row in again["rows"]] == pytest.approx(
        [row["onpolicy"]["mean"] for row in result["rows"]], nan_ok=True
    )
