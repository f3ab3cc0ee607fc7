"""A job-written external asset (the method benchmark's kind) shows in the UI when it is stale: its
``<asset>_current`` check, kept current by a sensor, fails as a warning naming the changed setting
with its old and new values (or the input with new data) and linking the job, and passes once the
job ran again; on a small graph and a real instance, read back through the UI's GraphQL API."""

from dagster import AssetCheckKey, AssetKey, DefaultSensorStatus, Definitions, instance_for_test, materialize

from drift_assets.code_location import job_path
from drift_assets.definitions import build_definitions
from drift_assets.defs.automation import CURRENT_SENSOR, current_checks
from drift_assets.settings import parse_settings
from drift_assets_tests.helpers.current_check import shown_check, tick
from drift_assets_tests.helpers.study_graph import study_graph


def judged(fraction: float, upstream_version: str = "1") -> Definitions:
    """The study graph (an upstream asset, an external asset ``study`` its job writes) with its check and sensor."""
    checks, judge = current_checks(["study"], lambda: defs.resolve_asset_graph())
    defs = Definitions.merge(study_graph(fraction, upstream_version), Definitions(asset_checks=checks, sensors=[judge]))
    return defs


def execute_check(defs, key, instance) -> bool:
    """A run of the check alone, as the UI's Execute button launches it."""
    run = defs.resolve_implicit_global_asset_job_def().get_subset(asset_check_selection={key})
    return run.execute_in_process(instance=instance).success


def shown(defs, instance) -> dict | None:
    return shown_check(defs, instance, "study", "study_current")["latest"]


def test_a_stale_job_written_asset_fails_its_current_check_naming_the_cause_and_passes_once_its_job_ran():
    with instance_for_test() as instance:
        defs = judged(0.5)
        materialize([defs.assets[0]], instance=instance)
        # Never written: nothing to judge, the UI says "never materialized" itself.
        events, cursor = tick(defs, instance)
        assert events == []
        check = shown_check(defs, instance, "study", "study_current")
        assert check == {"blocking": False, "executable": "CAN_EXECUTE", "latest": None}
        # Executed from the UI (the check's Execute button) before the job ever ran: it says to launch it.
        key = AssetCheckKey(AssetKey("study"), "study_current")
        assert execute_check(defs, key, instance)
        never = shown(defs, instance)
        assert (never["status"], never["metadata"]["message"]) == ("FAILED", "study was never written: launch the study job")

        defs.resolve_job_def("study").execute_in_process(instance=instance)
        events, cursor = tick(defs, instance, cursor)
        assert [event.passed for event in events] == [True]
        fresh = shown(defs, instance)
        assert (fresh["status"], fresh["severity"], fresh["metadata"]["message"]) == ("SUCCEEDED", "WARN", "ok")
        # Nothing changed: nothing reported again.
        assert tick(defs, instance, cursor)[0] == []

        # A setting it reads changed (the code location reloaded with it).
        changed = judged(0.3)
        events, cursor = tick(changed, instance, cursor)
        assert [event.passed for event in events] == [False]
        stale = shown(changed, instance)
        assert (stale["status"], stale["severity"]) == ("FAILED", "WARN")
        assert stale["description"] == (
            "study is stale: settings changed: selection.fraction: 0.5 → 0.3. Launch the study job to bring it up to date."
        )
        assert stale["metadata"]["causes"] == "- settings changed: selection.fraction: 0.5 → 0.3"
        assert stale["metadata"]["job"] == job_path("study")
        assert stale["metadata"]["status"] == "STALE"
        # Executed from the UI: the same verdict, from a run.
        assert execute_check(changed, key, instance)
        assert shown(changed, instance)["description"] == stale["description"]

        # The job ran with the new setting: the failed verdict is not of the new table, and the next tick passes it.
        changed.resolve_job_def("study").execute_in_process(instance=instance)
        assert shown(changed, instance) is None
        events, cursor = tick(changed, instance, cursor)
        assert [event.passed for event in events] == [True]
        assert shown(changed, instance)["status"] == "SUCCEEDED"

        # An input with new data.
        newer = judged(0.3, upstream_version="2")
        materialize([newer.assets[0]], instance=instance)
        events, cursor = tick(newer, instance, cursor)
        assert [event.passed for event in events] == [False]
        assert shown(newer, instance)["metadata"]["causes"] == "- has a new dependency data version (upstream)"


def test_the_method_benchmark_page_offers_its_current_check_and_a_running_sensor_keeps_it(tmp_path):
    """The real definitions (test queries set, so the benchmark exists): its page lists the check, not
    blocking and executable on its own; the sensor runs without being turned on; the description no
    longer says the UI cannot show it stale."""
    settings = parse_settings({"data": {"test_queries": "demo/test_queries.jsonl"}}, "settings.yaml", tmp_path)
    defs = build_definitions(settings)
    with instance_for_test() as instance:
        check = shown_check(defs, instance, "method_benchmark", "method_benchmark_current")
    assert check == {"blocking": False, "executable": "CAN_EXECUTE", "latest": None}
    assert defs.resolve_sensor_def(CURRENT_SENSOR).default_status == DefaultSensorStatus.RUNNING
    description = defs.resolve_asset_graph().get(AssetKey("method_benchmark")).description
    assert "method_benchmark_current" in description and "Unsynced" not in description
