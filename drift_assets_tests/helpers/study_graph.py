"""A small graph with an external asset its own job writes, recording what the method benchmark's
job records: the staleness rules on a real instance, without a model."""

from __future__ import annotations

from dagster import AssetKey


def study_graph(fraction: float, upstream_version: str = "1", record_inputs: bool = True):
    """An upstream asset and an external asset its own job writes, recording what the method
    benchmark's job records (no model: Dagster's rules on a real instance)."""
    from dagster import AssetMaterialization, AssetSpec, Definitions, MetadataValue, asset, job, op

    from drift_assets.code_location import job_path
    from drift_assets.settings import SETTINGS_READ_KEY, SETTINGS_USED_KEY
    from drift_assets.staleness import CODE_VERSION_KEY, INPUTS_KEY, JOB_KEY, input_versions

    @asset(code_version=upstream_version)
    def upstream() -> int:
        return 1

    read = MetadataValue.json({"selection.fraction": fraction})
    spec = AssetSpec(
        "study",
        deps=["upstream"],
        code_version=f"1-{fraction}",
        metadata={JOB_KEY: MetadataValue.url(job_path("study")), SETTINGS_READ_KEY: read},
    )

    @op
    def write_study(context) -> None:
        inputs = input_versions(defs.resolve_asset_graph(), context.instance, AssetKey("study"))
        metadata = {CODE_VERSION_KEY: spec.code_version, SETTINGS_USED_KEY: read}
        if record_inputs:
            metadata[INPUTS_KEY] = MetadataValue.json(inputs)
        context.log_event(AssetMaterialization("study", metadata=metadata))

    @job(name="study")
    def study_job():
        write_study()

    defs = Definitions(assets=[upstream, spec], jobs=[study_job])
    return defs
