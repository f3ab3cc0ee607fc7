"""Which assets (and shards) are stale or missing, as Dagster itself decides it.

The statuses are the UI's own: Dagster's GraphQL API (``staleStatus``, the "Unsynced" badge)
answering about the definitions and instance given, served in this process. Dagster calls an
external asset always up to date; the method benchmark, external so that "Materialize all" leaves
its fine-tunes out, is judged here by the same rules from what its job records
(:func:`job_written_staleness`).
"""

from __future__ import annotations

from dagster import AssetKey, DagsterInstance, Definitions

from drift_assets.code_location import graphql

STATUSES = """
query Staleness($plain: [AssetKeyInput!], $partitioned: [AssetKeyInput!]) {
  plain: assetNodes(assetKeys: $plain) { assetKey { path } staleStatus }
  partitioned: assetNodes(assetKeys: $partitioned) { assetKey { path } partitionKeys staleStatusByPartition }
}
"""
CAUSES = """
query Causes($plain: [AssetKeyInput!], $partitioned: [AssetKeyInput!]) {
  plain: assetNodes(assetKeys: $plain) { assetKey { path } staleCauses { category reason dependency { path } } }
  partitioned: assetNodes(assetKeys: $partitioned) {
    assetKey { path } partitionKeys staleCausesByPartition { category reason dependency { path } }
  }
}
"""


def _graph(defs: Definitions):
    # The resolved graph, not one built from ``defs.assets``: that list also holds the external
    # ``AssetSpec`` of the method benchmark, which only the resolver turns into a node.
    return defs.resolve_asset_graph()


# What an external asset's job records (the method benchmark's, kept out of "Materialize all"):
# Dagster calls an external asset always up to date, so its staleness is read from these here.
JOB_KEY = "job"  # the definition's link to the job that writes it (the UI's page, where it is launched)
INPUTS_KEY = "inputs"  # a materialization's data version of each input partition read, "name[partition]" → version
CODE_VERSION_KEY = "code_version"  # a materialization's code version (the definition's then)
DATA_VERSION_TAG = "dagster/data_version"  # where Dagster keeps a materialization's or an observation's data version


def job_written(graph) -> list[AssetKey]:
    """External assets that a job of this location writes (their definition links the job)."""
    return sorted(
        (key for key in graph.get_all_asset_keys() if not graph.get(key).is_executable and JOB_KEY in graph.get(key).metadata),
        key=AssetKey.to_user_string,
    )


def _latest_record(instance: DagsterInstance, key: AssetKey, partition: str | None = None, observed: bool = False):
    from dagster import AssetRecordsFilter

    fetch = instance.fetch_observations if observed else instance.fetch_materializations
    records = fetch(AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None), limit=1).records
    return records[0] if records else None


def _input_partitions(graph, key: AssetKey) -> list[tuple[str, AssetKey, str | None]]:
    """("name[partition]", parent, partition) for every configured partition of ``key``'s parents
    (an external asset reads all of them)."""
    found = []
    for parent in sorted(graph.get(key).parent_keys, key=AssetKey.to_user_string):
        partitions = graph.get(parent).partitions_def
        name = parent.to_user_string()
        if partitions is None:
            found.append((name, parent, None))
        else:
            found.extend((f"{name}[{p}]", parent, str(p)) for p in partitions.get_partition_keys())
    return found


def input_versions(graph, instance: DagsterInstance, key: AssetKey) -> dict[str, str]:
    """The data version of each input partition of ``key`` now, "name[partition]" → version (an
    observed source's from its latest observation); what was never materialized is left out. A job
    writing an external asset records these (:data:`INPUTS_KEY`) before it reads its inputs."""
    versions = {}
    for name, parent, partition in _input_partitions(graph, key):
        record = _latest_record(instance, parent, partition, observed=graph.get(parent).is_observable)
        version = (record.asset_event.tags or {}).get(DATA_VERSION_TAG) if record is not None else None
        if version is not None:
            versions[name] = version
    return versions


def job_written_staleness(graph, instance: DagsterInstance, key: AssetKey) -> tuple[str, list[str]]:
    """("MISSING" | "FRESH" | "STALE", causes) of an external asset a job writes, as Dagster decides it
    for the assets it materializes: a new code version (told as the settings that changed, with
    their old and new values), or an input partition with another data version than the one read."""
    record = _latest_record(instance, key)
    if record is None:
        return "MISSING", []
    metadata = record.asset_materialization.metadata
    causes = []
    if _value(metadata.get(CODE_VERSION_KEY)) != graph.get(key).code_version:
        causes.append(settings_cause(graph, instance, key) or "has a new code version (the implementation's)")
    read = metadata.get(INPUTS_KEY)
    if read is not None:
        before, now = _value(read), input_versions(graph, instance, key)
        for name in sorted(now):
            if name not in before:  # a partition added since (a checkpoint, a shard)
                causes.append(f"has a new dependency ({name})")
            elif before[name] != now[name]:
                causes.append(f"has a new dependency data version ({name})")
    else:  # recorded before the inputs' versions were: a table materialized since is newer than what was read
        for name, parent, partition in _input_partitions(graph, key):
            if graph.get(parent).is_materializable:
                latest = _latest_record(instance, parent, partition)
                if latest is not None and latest.timestamp > record.timestamp:
                    causes.append(f"has a new dependency materialization ({name})")
    return ("STALE" if causes else "FRESH"), causes


def current_check_name(key: AssetKey) -> str:
    """The check on a job-written asset that tells, in the UI, whether it is stale: ``method_benchmark_current``."""
    return f"{'_'.join(key.path)}_current"


def job_name(graph, key: AssetKey) -> str:
    """The job that writes the external asset ``key`` (the last part of its definition's job link)."""
    return _value(graph.get(key).metadata[JOB_KEY]).rsplit("/", 1)[-1]


def current_evaluation(graph, instance: DagsterInstance, key: AssetKey):
    """The verdict of ``key``'s :func:`current_check_name` check, as an ``AssetCheckEvaluation`` of its
    latest materialization: passed where :func:`job_written_staleness` calls it fresh, else a warning
    whose description and metadata name the causes (settings with their old and new values, inputs
    with new data) and link the job that writes it. None while it was never written."""
    from dagster import AssetCheckEvaluation, AssetCheckSeverity, MetadataValue

    # The public evaluation's field for the materialization judged (its class is not exported): without
    # it the UI judges by timestamps, which its SQLite storage keeps to the second.
    from dagster._core.definitions.asset_checks.asset_check_evaluation import (
        AssetCheckEvaluationTargetMaterializationData,
    )

    # Read before the judgement: a materialization written meanwhile is judged again (by its storage id).
    record = _latest_record(instance, key)
    if record is None:
        return None
    status, causes = job_written_staleness(graph, instance, key)
    job = job_name(graph, key)
    if causes:
        description = f"{key.to_user_string()} is stale: {'; '.join(causes)}. Launch the {job} job to bring it up to date."
    else:
        description = f"{key.to_user_string()} is up to date: its {job} job read the settings and input data there are now."
    return AssetCheckEvaluation(
        asset_key=key,
        check_name=current_check_name(key),
        passed=not causes,
        severity=AssetCheckSeverity.WARN,
        blocking=False,
        description=description,
        metadata={
            "status": status,
            "causes": MetadataValue.md("\n".join(f"- {cause}" for cause in causes) or "none"),
            JOB_KEY: graph.get(key).metadata[JOB_KEY],
            "message": description if causes else "ok",
        },
        target_materialization_data=AssetCheckEvaluationTargetMaterializationData(
            storage_id=record.storage_id, run_id=record.run_id, timestamp=record.timestamp
        ),
    )


def asset_statuses(defs: Definitions, instance: DagsterInstance) -> dict[str, str]:
    """``{"rollouts": "FRESH", "training_gradient_projections[001]": "STALE", …}`` for every materializable
    asset, and every external asset a job writes (:func:`job_written_staleness`)."""
    graph = _graph(defs)
    statuses = _materializable_statuses(defs, instance, graph)
    for key in job_written(graph):
        statuses[key.to_user_string()] = job_written_staleness(graph, instance, key)[0]
    return dict(sorted(statuses.items()))


def _materializable_statuses(defs: Definitions, instance: DagsterInstance, graph) -> dict[str, str]:
    """The UI's stale status of every materializable asset (and partition)."""
    keys = {"plain": [], "partitioned": []}
    for key in graph.materializable_asset_keys:
        keys["plain" if graph.get(key).partitions_def is None else "partitioned"].append({"path": key.path})
    answer = graphql(defs, instance, STATUSES, keys)
    statuses = {AssetKey(node["assetKey"]["path"]).to_user_string(): node["staleStatus"] for node in answer["plain"]}
    for node in answer["partitioned"]:
        name = AssetKey(node["assetKey"]["path"]).to_user_string()
        statuses.update(
            (f"{name}[{partition}]", status)
            for partition, status in zip(node["partitionKeys"], node["staleStatusByPartition"], strict=True)
        )
    return statuses


def stale_or_missing(defs: Definitions, instance: DagsterInstance, include_missing: bool = True) -> set[str]:
    wanted = {"STALE", "MISSING"} if include_missing else {"STALE"}
    return {name for name, status in asset_statuses(defs, instance).items() if status in wanted}


def _value(entry):
    return entry.value if hasattr(entry, "value") else entry


def settings_cause(graph, instance: DagsterInstance, key: AssetKey, partition: str | None = None) -> str | None:
    """The settings that changed since ``key`` (``partition``) was last materialized, with their old and
    new values: ``"settings changed: selection.fraction: 0.5 → 0.3"``; None where none did (or its
    materialization, from before the settings were recorded, does not say)."""
    from dagster import AssetRecordsFilter

    from drift_assets.settings import SETTINGS_READ_KEY, SETTINGS_USED_KEY, settings_changes

    now = graph.get(key).metadata.get(SETTINGS_READ_KEY)
    if now is None:
        return None
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None), limit=1
    ).records
    before = records[0].asset_materialization.metadata.get(SETTINGS_USED_KEY) if records else None
    if before is None:
        return None
    changes = settings_changes(_value(before), _value(now))
    return "settings changed: " + "; ".join(changes) if changes else None


def stale_causes(defs: Definitions, instance: DagsterInstance) -> dict[str, list[str]]:
    """Why each stale asset (and partition) is stale, as the UI's "Unsynced" popover says it, a new code
    version told as the settings that changed (:func:`settings_cause`)."""
    graph = _graph(defs)
    stale = {name for name, status in _materializable_statuses(defs, instance, graph).items() if status == "STALE"}
    keys = {"plain": [], "partitioned": []}
    for key in graph.materializable_asset_keys:
        keys["plain" if graph.get(key).partitions_def is None else "partitioned"].append({"path": key.path})
    answer = graphql(defs, instance, CAUSES, keys)
    found: dict[str, list] = {}
    for node in answer["plain"]:
        found[AssetKey(node["assetKey"]["path"]).to_user_string()] = node["staleCauses"]
    for node in answer["partitioned"]:
        name = AssetKey(node["assetKey"]["path"]).to_user_string()
        for partition, causes in zip(node["partitionKeys"], node["staleCausesByPartition"], strict=True):
            found[f"{name}[{partition}]"] = causes
    told = {}
    for key in job_written(graph):  # judged here once each, not by the UI's API
        status, causes = job_written_staleness(graph, instance, key)
        if status == "STALE":
            told[key.to_user_string()] = causes
    for name in sorted(stale):
        key, partition = split_partition(name)
        lines = []
        for cause in found.get(name) or []:
            if cause["category"] == "CODE":
                lines.append(settings_cause(graph, instance, key, partition) or "has a new code version (the implementation's)")
            else:
                dependency = cause["dependency"]
                lines.append(cause["reason"] + (f" ({AssetKey(dependency['path']).to_user_string()})" if dependency else ""))
        told[name] = list(dict.fromkeys(lines))
    return dict(sorted(told.items()))


def split_partition(name: str) -> tuple[AssetKey, str | None]:
    """``"training_gradient_projections[001]"`` → (AssetKey, "001"); plain names → (AssetKey, None)."""
    if name.endswith("]") and "[" in name:
        asset, partition = name[:-1].split("[", 1)
        return AssetKey(asset), partition
    return AssetKey(name), None


def damaged_tables(defs: Definitions, instance: DagsterInstance, warehouse) -> dict[str, str]:
    """Assets recorded as materialized whose Delta table is gone or unreadable, and what is wrong.

    Dagster's event log would still call them up to date: its staleness is about versions, not storage.
    """
    graph = _graph(defs)
    damaged = {}
    for key in sorted(graph.materializable_asset_keys, key=lambda k: k.to_user_string()):
        if "dagster/kind/delta" not in graph.get(key).tags or instance.get_latest_materialization_event(key) is None:
            continue
        problem = warehouse.table_problem(key.to_user_string())
        if problem:
            damaged[key.to_user_string()] = problem
    return damaged


def _partition_columns(partition_expr) -> set[str]:
    if partition_expr is None:
        return set()
    return set(partition_expr.values()) if isinstance(partition_expr, dict) else {partition_expr}


def relaid_tables(defs: Definitions, warehouse) -> dict[str, str]:
    """Tables partitioned by other columns than their asset now is (written by a release that laid
    the asset out otherwise): Delta cannot write such a table in place, so it has to be rebuilt."""
    graph = _graph(defs)
    relaid = {}
    for key in sorted(graph.materializable_asset_keys, key=lambda k: k.to_user_string()):
        node = graph.get(key)
        if "dagster/kind/delta" not in node.tags:
            continue
        actual = warehouse.partition_columns(key.to_user_string())
        expected = _partition_columns(node.metadata.get("partition_expr"))
        if actual is not None and set(actual) != expected:
            relaid[key.to_user_string()] = f"its table is partitioned by {sorted(actual)}, the asset now by {sorted(expected)}"
    return relaid


def configured_partitions(defs: Definitions) -> dict[str, dict[str, list[str]]]:
    """For each partitioned Delta asset: its table's partition columns → the values configured now
    (a multi-partitioned asset's dimensions each name a column of their own)."""
    graph = _graph(defs)
    configured = {}
    for key in sorted(graph.materializable_asset_keys, key=lambda k: k.to_user_string()):
        node = graph.get(key)
        expression = node.metadata.get("partition_expr")
        if "dagster/kind/delta" not in node.tags or node.partitions_def is None or expression is None:
            continue
        if isinstance(expression, dict):
            dimensions = {dimension.name: dimension.partitions_def for dimension in node.partitions_def.partitions_defs}
            configured[key.to_user_string()] = {
                column: list(dimensions[dimension].get_partition_keys()) for dimension, column in expression.items()
            }
        else:
            configured[key.to_user_string()] = {expression: list(node.partitions_def.get_partition_keys())}
    return configured


def _column_values(partition_key, expression: str | dict[str, str]) -> dict[str, str]:
    """The table's partition column values of a partition key (``partition_expr``: its column, or one per dimension)."""
    if isinstance(expression, dict):
        return {column: partition_key.keys_by_dimension[dimension] for dimension, column in expression.items()}
    return {expression: str(partition_key)}


def vanished_partitions(defs: Definitions, instance: DagsterInstance, warehouse) -> dict[str, str]:
    """Configured partitions that Dagster records as materialized with rows but whose table holds none
    of them now, and what is wrong: their rows were deleted while the partition was not configured (a
    warm-up step removed, then added again), or by hand. Dagster would call them up to date."""
    from dagster import AssetRecordsFilter

    graph = _graph(defs)
    vanished = {}
    for name, partitions in configured_partitions(defs).items():
        columns = warehouse.partition_columns(name)
        if columns is None or set(columns) != set(partitions):
            continue  # missing, damaged or laid out otherwise: damaged_tables and relaid_tables say so
        held = warehouse.partitions_held(name)
        key = AssetKey(name)
        node = graph.get(key)
        recorded = instance.get_materialized_partitions(key)
        for partition_key in node.partitions_def.get_partition_keys():
            if str(partition_key) not in recorded:
                continue
            values = _column_values(partition_key, node.metadata["partition_expr"])
            if tuple(values[column] for column in columns) in held:
                continue
            records = instance.fetch_materializations(
                AssetRecordsFilter(asset_key=key, asset_partitions=[str(partition_key)]), limit=1
            ).records
            if not records:
                continue
            metadata = records[0].asset_materialization.metadata
            rows = metadata.get("num_rows", metadata.get("dagster/row_count"))
            if rows is None or rows.value:
                vanished[f"{name}[{partition_key}]"] = (
                    f"its table {warehouse.table_uri(name)} holds no rows of partition {partition_key}"
                )
    return vanished


def needs_materialization(defs: Definitions, instance: DagsterInstance, also: set[str] = frozenset()) -> set[str]:
    """Stale or missing assets (and partitions), ``also`` (asset names, or "name[partition]"), plus everything downstream of them.

    Dagster marks only the direct children of a change stale until they are re-materialized;
    this closes the set over the graph, which is what "refresh what is stale" has to run. The walk
    follows the partition mappings: a new warm-up checkpoint reaches its own chain, not ``base``'s.
    """
    graph = _graph(defs)
    roots = stale_or_missing(defs, instance)
    for name in also:
        key, partition = split_partition(name)
        node = graph.get(key)
        if partition is not None or node.partitions_def is None:
            roots.add(name)
        else:
            roots |= {f"{name}[{p}]" for p in node.partitions_def.get_partition_keys()}
    frontier = [split_partition(name) for name in roots]
    seen: set[tuple[AssetKey, str | None]] = set()
    while frontier:
        item = frontier.pop()
        if item in seen:
            continue
        seen.add(item)
        frontier.extend((child.asset_key, child.partition_key) for child in graph.get_children_partitions(*item))
    return {
        key.to_user_string() if partition is None else f"{key.to_user_string()}[{partition}]"
        for key, partition in seen
        if graph.get(key).is_materializable
    }
