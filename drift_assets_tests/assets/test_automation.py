"""The refresh condition, evaluated by Dagster on a two-asset graph with a real instance."""

from dagster import (
    AssetCheckResult,
    AssetKey,
    DataVersion,
    Definitions,
    Output,
    asset,
    asset_check,
    evaluate_automation_conditions,
    instance_for_test,
    materialize,
)

from drift_assets.defs.automation import refresh_condition


def graph(upstream_is_good: bool) -> Definitions:
    @asset(automation_condition=refresh_condition(), code_version="1")
    def upstream() -> Output:
        value = 1 if upstream_is_good else -1
        return Output(value, data_version=DataVersion(str(value)))  # as the pipeline's content-hashed inputs

    @asset_check(asset=upstream, blocking=True)
    def upstream_is_positive(upstream: int) -> AssetCheckResult:
        return AssetCheckResult(passed=upstream > 0)

    @asset(automation_condition=refresh_condition(), code_version="1")
    def downstream(upstream: int) -> int:
        return upstream + 1

    return Definitions(assets=[upstream, downstream], asset_checks=[upstream_is_positive])


def requested(defs: Definitions, instance, cursor=None):
    result = evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    keys = {key for key in (AssetKey("upstream"), AssetKey("downstream")) if result.get_requested_partitions(key)}
    return keys, result.cursor


def test_a_table_that_failed_a_blocking_check_is_not_refreshed_downstream():
    with instance_for_test() as instance:
        good = graph(upstream_is_good=True)
        materialize([*good.assets, *good.asset_checks], instance=instance, selection=["upstream", "downstream"])
        keys, cursor = requested(good, instance)
        assert keys == set()
        # New upstream data that fails its blocking check (materialized alone, as a refresh tick would).
        bad = graph(upstream_is_good=False)
        result = materialize([*bad.assets, *bad.asset_checks], instance=instance, selection=["upstream"], raise_on_error=False)
        assert [evaluation.passed for evaluation in result.get_asset_check_evaluations()] == [False]
        keys, cursor = requested(bad, instance, cursor)
        assert AssetKey("downstream") not in keys
        # Fixed upstream data passes the check: now downstream is refreshed.
        materialize([*good.assets, *good.asset_checks], instance=instance, selection=["upstream"])
        keys, _ = requested(good, instance, cursor)
        assert keys == {AssetKey("downstream")}
