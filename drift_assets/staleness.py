"""Which assets (and shards) are stale or missing, as Dagster itself decides it.

The statuses are the UI's own: Dagster's GraphQL API (``staleStatus``, the "Unsynced" badge)
answering about the definitions and instance given, served in this process. Dagster calls an
external asset always up to date; the method benchmark, external so that "Materialize all" leaves
its fine-tunes out, is judged here by the same rules from what its job records
(:func:`job_written_staleness`).
"""

from __future__ import annotations

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, Definitions

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


# What an external asset's job records (the method benchmark's, kept out of "Materialize all"):
# Dagster calls an external asset always up to date, so its staleness is read from these here.
JOB_KEY = "job"  # the definition's link to the job that writes it (the UI's page, where it is launched)
INPUTS_KEY = "inputs"  # a materialization's data version of each input partition read, "name[partition]" → version
CODE_VERSION_KEY = "code_version"  # a materialization's code version (the definition's then)
DATA_VERSION_TAG = "dagster/data_version"  # where Dagster keeps a materialization's or an observation's data version


def job_written(graph) -> list[AssetKey]:
    """External assets that a job of this location writes (their definition links the job). ``graph``:
    the resolved one, where the method benchmark's external ``AssetSpec`` is a node."""
    return sorted(
        (key for key in graph.get_all_asset_keys() if not graph.get(key).is_executable and JOB_KEY in graph.get(key).metadata),
        key=AssetKey.to_user_string,
    )


def latest_record(instance: DagsterInstance, key: AssetKey, partition: str | None = None, observed: bool = False):
    """The latest materialization (``observed``: observation) record of ``key`` (``partition``); None: none."""
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
        record = latest_record(instance, parent, partition, observed=graph.get(parent).is_observable)
        version = (record.asset_event.tags or {}).get(DATA_VERSION_TAG) if record is not None else None
        if version is not None:
            versions[name] = version
    return versions


def job_written_staleness(graph, instance: DagsterInstance, key: AssetKey) -> tuple[str, list[str]]:
    """("MISSING" | "FRESH" | "STALE", causes) of an external asset a job writes, as Dagster decides it
    for the assets it materializes: a new code version (told as the settings that changed, with
    their old and new values), or an input partition with another data version than the one read."""
    record = latest_record(instance, key)
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
                latest = latest_record(instance, parent, partition)
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
    record = latest_record(instance, key)
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
    graph = defs.resolve_asset_graph()
    statuses = _per_partition(defs, instance, graph, STATUSES, "staleStatus")
    for key in job_written(graph):
        statuses[key.to_user_string()] = job_written_staleness(graph, instance, key)[0]
    return dict(sorted(statuses.items()))


def _per_partition(defs: Definitions, instance: DagsterInstance, graph, query: str, field: str) -> dict:
    """The UI's ``field`` of every materializable asset, and its ``field``ByPartition of each partition of a
    partitioned one, by "name" and "name[partition]"."""
    keys = {"plain": [], "partitioned": []}
    for key in graph.materializable_asset_keys:
        keys["plain" if graph.get(key).partitions_def is None else "partitioned"].append({"path": key.path})
    answer = graphql(defs, instance, query, keys)
    found = {AssetKey(node["assetKey"]["path"]).to_user_string(): node[field] for node in answer["plain"]}
    for node in answer["partitioned"]:
        name = AssetKey(node["assetKey"]["path"]).to_user_string()
        found.update(
            (f"{name}[{partition}]", value)
            for partition, value in zip(node["partitionKeys"], node[f"{field}ByPartition"], strict=True)
        )
    return found


def _value(entry):
    return entry.value if hasattr(entry, "value") else entry


def settings_cause(graph, instance: DagsterInstance, key: AssetKey, partition: str | None = None) -> str | None:
    """The settings that changed since ``key`` (``partition``) was last materialized, with their old and
    new values: ``"settings changed: selection.fraction: 0.5 → 0.3"``; None where none did (or its
    materialization, from before the settings were recorded, does not say)."""
    from drift_assets.settings import SETTINGS_READ_KEY, SETTINGS_USED_KEY, settings_changes

    now = graph.get(key).metadata.get(SETTINGS_READ_KEY)
    if now is None:
        return None
    record = latest_record(instance, key, partition)
    before = record.asset_materialization.metadata.get(SETTINGS_USED_KEY) if record is not None else None
    if before is None:
        return None
    changes = settings_changes(_value(before), _value(now))
    return "settings changed: " + "; ".join(changes) if changes else None


def stale_causes(defs: Definitions, instance: DagsterInstance) -> dict[str, list[str]]:
    """Why each stale asset (and partition) is stale, as the UI's "Unsynced" popover says it, a new code
    version told as the settings that changed (:func:`settings_cause`)."""
    graph = defs.resolve_asset_graph()
    statuses = _per_partition(defs, instance, graph, STATUSES, "staleStatus")
    stale = {name for name, status in statuses.items() if status == "STALE"}
    found = _per_partition(defs, instance, graph, CAUSES, "staleCauses")
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


def _delta_nodes(defs: Definitions) -> dict:
    """The materializable assets stored as Delta tables, by name, in order."""
    graph = defs.resolve_asset_graph()
    nodes = (graph.get(key) for key in graph.materializable_asset_keys)
    return dict(sorted((node.key.to_user_string(), node) for node in nodes if "dagster/kind/delta" in node.tags))


def damaged_tables(defs: Definitions, instance: DagsterInstance, warehouse) -> dict[str, str]:
    """Assets recorded as materialized whose Delta table is gone or unreadable, and what is wrong.

    Dagster's event log would still call them up to date: its staleness is about versions, not storage.
    """
    damaged = {}
    for name, node in _delta_nodes(defs).items():
        if instance.get_latest_materialization_event(node.key) is None:
            continue
        problem = warehouse.table_problem(name)
        if problem:
            damaged[name] = problem
    return damaged


def _partition_columns(partition_expr) -> set[str]:
    if partition_expr is None:
        return set()
    return set(partition_expr.values()) if isinstance(partition_expr, dict) else {partition_expr}


def relaid_tables(defs: Definitions, warehouse) -> dict[str, str]:
    """Tables partitioned by other columns than their asset now is (written by a release that laid
    the asset out otherwise): Delta cannot write such a table in place, so it has to be rebuilt."""
    relaid = {}
    for name, node in _delta_nodes(defs).items():
        actual = warehouse.partition_columns(name)
        expected = _partition_columns(node.metadata.get("partition_expr"))
        if actual is not None and set(actual) != expected:
            relaid[name] = f"its table is partitioned by {sorted(actual)}, the asset now by {sorted(expected)}"
    return relaid


def configured_partitions(defs: Definitions, warehouse) -> dict[str, dict[str, list[str]]]:
    """For each partitioned Delta table laid out as its asset now is: its partition columns, in the
    table's order → the values configured now (a multi-partitioned asset's dimensions each name a
    column of their own). A table missing, damaged or laid out otherwise is left out: damaged_tables
    and relaid_tables tell those."""
    configured = {}
    for name, node in _delta_nodes(defs).items():
        expression = node.metadata.get("partition_expr")
        if node.partitions_def is None or expression is None:
            continue
        if isinstance(expression, dict):
            values = {
                column: list(node.partitions_def.get_partitions_def_for_dimension(dimension).get_partition_keys())
                for dimension, column in expression.items()
            }
        else:
            values = {expression: list(node.partitions_def.get_partition_keys())}
        columns = warehouse.partition_columns(name)
        if columns is not None and set(columns) == set(values):
            configured[name] = {column: values[column] for column in columns}
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
    graph = defs.resolve_asset_graph()
    vanished = {}
    for name, partitions in configured_partitions(defs, warehouse).items():
        held = warehouse.partitions_held(name)
        key = AssetKey(name)
        node = graph.get(key)
        recorded = instance.get_materialized_partitions(key)
        for partition_key in node.partitions_def.get_partition_keys():
            if str(partition_key) not in recorded:
                continue
            values = _column_values(partition_key, node.metadata["partition_expr"])
            if tuple(values[column] for column in partitions) in held:
                continue
            record = latest_record(instance, key, str(partition_key))
            if record is None:
                continue
            metadata = record.asset_materialization.metadata
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
    graph = defs.resolve_asset_graph()
    roots = {name for name, status in asset_statuses(defs, instance).items() if status in ("STALE", "MISSING")}
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
