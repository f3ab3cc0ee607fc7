"""Automation that catches up: what is unsynced when the sensor is turned on is requested on its first
tick (evaluated by Dagster's automation tester over a real instance), once; a stale cause names the
settings that changed, with their old and new values."""

from dagster import (
    AssetKey,
    Definitions,
    Failure,
    asset,
    evaluate_automation_conditions,
    instance_for_test,
    materialize,
)

from drift_assets.defs.automation import refresh_condition
from drift_assets.settings import settings_changes


def graph(version: str, fails: bool = False) -> Definitions:
    @asset(automation_condition=refresh_condition(), code_version="1")
    def upstream() -> int:
        return 1

    @asset(automation_condition=refresh_condition(), code_version=version)
    def downstream(upstream: int) -> int:
        if fails:
            raise Failure("broken")
        return upstream + 1

    return Definitions(assets=[upstream, downstream])


def requested(defs: Definitions, instance, cursor=None):
    result = evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    keys = {key for key in (AssetKey("upstream"), AssetKey("downstream")) if result.get_requested_partitions(key)}
    return keys, result.cursor


def test_what_was_unsynced_before_the_sensor_was_turned_on_is_requested_on_its_first_tick():
    with instance_for_test() as instance:
        old = graph("1")
        materialize(old.assets, instance=instance)
        # The code (or a setting) changed while the sensor was off: its first tick has no cursor.
        new = graph("2")
        keys, cursor = requested(new, instance)
        assert keys == {AssetKey("downstream")}
        # Requested once: while it stays unsynced (its run failed, say), the next ticks wait for a change.
        failing = graph("2", fails=True)
        assert not materialize(failing.assets, instance=instance, selection=["downstream"], raise_on_error=False).success
        keys, cursor = requested(failing, instance, cursor)
        assert keys == set()
        keys, cursor = requested(failing, instance, cursor)
        assert keys == set()
        # A new change (the fix) is requested again.
        keys, _ = requested(graph("3"), instance, cursor)
        assert keys == {AssetKey("downstream")}


def test_nothing_is_requested_where_everything_is_up_to_date():
    with instance_for_test() as instance:
        defs = graph("1")
        materialize(defs.assets, instance=instance)
        assert requested(defs, instance)[0] == set()


def test_a_settings_change_is_told_with_its_old_and_new_values():
    before = {"selection.fraction": 0.5, "influence": {"ranking": "round_robin", "likelihood_blend": 0.5}}
    now = {"selection.fraction": 0.3, "influence": {"ranking": "score", "likelihood_blend": 0.5}, "selection.k": None}
    assert settings_changes(before, now) == [
        'influence.ranking: "round_robin" → "score"',
        "selection.fraction: 0.5 → 0.3",
        "selection.k: (not read) → null",
    ]
    assert settings_changes(now, now) == []


def test_a_stale_asset_names_the_setting_that_changed_with_its_old_and_new_values(tmp_path):
    """Each Delta write records the settings its asset read (``settings``); the stale cause compares them
    with the definition's now, over a real instance and warehouse."""
    import polars as pl
    from dagster import DagsterInstance, MetadataValue

    from drift_assets.resources import Warehouse
    from drift_assets.settings import SETTINGS_READ_KEY, SETTINGS_USED_KEY, parse_settings
    from drift_assets.staleness import stale_causes

    warehouse = Warehouse.from_settings(parse_settings({"warehouse": {"root": "wh"}}, "settings.yaml", tmp_path))

    def defs(fraction: float) -> Definitions:
        @asset(code_version=f"2-{fraction}", metadata={SETTINGS_READ_KEY: MetadataValue.json({"selection.fraction": fraction})})
        def picked() -> pl.DataFrame:
            return pl.DataFrame({"value": [1, 2]})

        return Definitions(assets=[picked], resources={"io_manager": warehouse.io_manager()})

    (tmp_path / "home").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "home")) as instance:
        result = materialize(defs(0.5).assets, instance=instance, resources={"io_manager": warehouse.io_manager()})
        recorded = result.asset_materializations_for_node("picked")[0].metadata[SETTINGS_USED_KEY]
        assert recorded.value == {"selection.fraction": 0.5}
        assert stale_causes(defs(0.5), instance) == {}
        assert stale_causes(defs(0.3), instance) == {"picked": ["settings changed: selection.fraction: 0.5 → 0.3"]}
