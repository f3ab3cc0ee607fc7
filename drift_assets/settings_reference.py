"""docs/settings.md, generated: every setting with its default, its meaning, and the assets it makes
stale, read from the asset graph itself (each asset records the settings its code version hashes).

``python -m drift_assets.settings_reference`` rewrites the page; a test fails when it is stale.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from drift_assets.settings import REPO_ROOT, SETTINGS_READ_KEY, WHERE, Settings, _Group, derived

REFERENCE_PATH = REPO_ROOT / "docs" / "settings.md"

# Locations are observed, not hashed: what changing one does.
_OBSERVED = {
    "model.path": "observed: a new model makes everything that uses it stale",
    "data.training_pool": "observed: new content makes `training_pool` stale",
    "data.validation_queries": "observed: new content makes `validation_queries` stale",
    "data.test_queries": "observed: new content makes `test_queries` stale",
}


def _fields(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, FieldInfo]]:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _fields(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


def settings_read_by_asset(graph=None) -> dict[str, tuple[str, ...]]:
    """What each asset's code version hashes, as its definition records it, in a resolved asset
    ``graph`` (default: the whole graph, the demo, a warm-up run and test queries included, so that
    every asset exists, together with the graph whose warm-up checkpoints ``warmup.checkpoints``
    gives)."""
    if graph is None:
        from drift_assets.definitions import build_definitions

        # warm-up checkpoints trained, then given (warmup.checkpoints): one asset, two definitions
        graphs = [
            build_definitions(
                Settings.model_validate(
                    {"demo": {"enabled": True}, "warmup": warmup, "data": {"test_queries": "demo/test_queries.jsonl"}}
                )
            ).resolve_asset_graph()
            for warmup in ({"steps": [1]}, {"checkpoints": ["given"]})
        ]
    else:
        graphs = [graph]
    reads: dict[str, tuple[str, ...]] = {}
    for each in graphs:
        for key in each.get_all_asset_keys():
            metadata = each.get(key).metadata
            if SETTINGS_READ_KEY in metadata:
                recorded = metadata[SETTINGS_READ_KEY]
                # key -> value (a JSON metadata value): its keys
                keys = recorded.value if hasattr(recorded, "value") else recorded
                name = key.to_user_string()
                reads[name] = tuple(dict.fromkeys((*reads.get(name, ()), *keys)))
    return reads


def _sources(key: str) -> tuple[str, ...]:
    """The plain settings a key stands for (a derived name, its sources' sources)."""
    computed = getattr(Settings, key, None)
    if not isinstance(computed, derived):
        return (key,)
    return tuple(leaf for source in computed.sources for leaf in _sources(source))


# The settings that say where, not what (drift_assets.settings.WHERE): hashed only where an asset is given them by name.
_WHERE = {key for key, field in _fields(Settings, "") if WHERE in field.metadata}


def assets_reading(key: str, reads: dict[str, tuple[str, ...]]) -> list[str]:
    """The assets whose code version hashes ``key`` (a "group.field" or "group.sub.field")."""

    def covers(read: str) -> bool:
        if key in _WHERE:
            return key in _sources(read)
        return any(key == source or key.startswith(source + ".") or source.startswith(key + ".") for source in _sources(read))

    return sorted(asset for asset, keys in reads.items() if any(covers(read) for read in keys))


def settings_reference() -> str:
    reads = settings_read_by_asset()
    lines = [
        "# Settings reference",
        "",
        "Generated from the settings model (`drift_assets/settings.py`) and the asset graph by",
        "`python -m drift_assets.settings_reference`; a test fails when this page and the code disagree.",
        "One YAML file holds the settings: an unknown key or a wrong type fails naming the key and the file,",
        "and relative paths resolve against the file's directory. Each asset's code version hashes exactly",
        "the settings it reads (an asset cannot read any other), so changing one makes exactly the assets",
        "in its last column stale (and what lies downstream of them).",
    ]
    for group, group_field in Settings.model_fields.items():
        annotation = group_field.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            continue
        lines += ["", f"## `{group}`", ""]
        if annotation.__doc__ and annotation.__doc__ is not _Group.__doc__:
            lines += [" ".join(annotation.__doc__.split()), ""]
        lines += ["| key | default | meaning | makes stale |", "|---|---|---|---|"]
        for key, field in _fields(annotation, f"{group}."):
            default = field.default_factory() if field.default_factory is not None else field.default
            shown = json.dumps(default.model_dump(mode="json") if isinstance(default, BaseModel) else default, ensure_ascii=False)
            meaning = (field.description or "").replace("|", "\\|")
            readers = ", ".join(f"`{asset}`" for asset in assets_reading(key, reads))
            stale = _OBSERVED.get(key) or readers or ("– (where, not what)" if key in _WHERE else "–")
            lines.append(f"| `{key}` | `{shown}` | {meaning} | {stale} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    REFERENCE_PATH.write_text(settings_reference())
