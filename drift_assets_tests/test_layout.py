"""The layering the code keeps: a Dagster-free library by stage, tasks beside it, the Dagster layer on top."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (imports inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def offenders(folder: str, allowed) -> list[str]:
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, f"{folder} holds no module"
    return [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files
        for name in sorted(imported(path))
        if (name == "dagster" or name.startswith(("dagster.", "dagster_", "drift_assets"))) and not allowed(name)
    ]


def test_the_library_imports_neither_dagster_nor_the_layers_above_it():
    assert offenders("drift_assets/core", lambda name: name.startswith("drift_assets.core")) == []


def test_the_embedded_tasks_import_only_the_library():
    assert offenders("drift_assets/tasks", lambda name: name.startswith(("drift_assets.core", "drift_assets.tasks"))) == []


def test_no_test_module_imports_another():
    """Shared test code lives in drift_assets_tests/helpers (and the conftest files pytest loads)."""
    found = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / "drift_assets_tests").rglob("*.py"))
        for name in imported(path)
        if name.startswith("drift_assets_tests.") and name.rsplit(".", 1)[-1].startswith("test_")
    ]
    assert found == []
