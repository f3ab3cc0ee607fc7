"""The ``<asset>_current`` check of a job-written asset as the UI shows it, and its sensor's tick."""

from __future__ import annotations

from dagster import DagsterInstance, Definitions, build_sensor_context

from drift_assets.code_location import graphql
from drift_assets.defs.automation import CURRENT_SENSOR

CHECKS = """
query Checks($keys: [AssetKeyInput!]) {
  assetNodes(assetKeys: $keys) {
    assetChecksOrError {
      ... on AssetChecks {
        checks {
          name blocking canExecuteIndividually
          executionForLatestMaterialization {
            status
            evaluation {
              severity description
              metadataEntries {
                label
                ... on TextMetadataEntry { text }
                ... on MarkdownMetadataEntry { mdStr }
                ... on UrlMetadataEntry { url }
              }
            }
          }
        }
      }
    }
  }
}
"""


def tick(defs: Definitions, instance: DagsterInstance, cursor: str | None = None):
    """One tick of the sensor that judges the job-written assets, its events stored as Dagster's sensor
    daemon stores them (``report_runless_asset_event``); returns (the events, the new cursor)."""
    sensor = defs.resolve_sensor_def(CURRENT_SENSOR)
    result = sensor(build_sensor_context(instance=instance, definitions=defs, cursor=cursor))
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    return list(result.asset_events), result.cursor


def shown_check(defs: Definitions, instance: DagsterInstance, asset: str, name: str) -> dict:
    """What the asset page's Checks tab shows of check ``name`` (the UI's GraphQL answer): its
    definition, and its latest evaluation's status, severity, description and metadata (label →
    value), or None where no evaluation is of the asset's latest materialization."""
    [node] = graphql(defs, instance, CHECKS, {"keys": [{"path": [asset]}]})["assetNodes"]
    [check] = [check for check in node["assetChecksOrError"]["checks"] if check["name"] == name]
    execution = check["executionForLatestMaterialization"]
    if execution is not None:
        evaluation = execution["evaluation"]
        evaluation["metadata"] = {
            entry["label"]: entry.get("text", entry.get("mdStr", entry.get("url"))) for entry in evaluation.pop("metadataEntries")
        }
        execution = {"status": execution["status"], **evaluation}
    return {"blocking": check["blocking"], "executable": check["canExecuteIndividually"], "latest": execution}
