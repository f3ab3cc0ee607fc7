"""What the warehouse's type handler reads from the objects Dagster's DbIOManager hands it.

The handler is registered through dagster-deltalake's public extension point (an IO manager's
``type_handlers()``), but the table slice and connection it receives are defined in modules neither
package exports (``dagster._core.storage.db_io_manager``, ``dagster_deltalake.io_manager``).
Everything taken from them is read here, and nowhere else; drift_assets_tests/core/test_delta_internals.py
fails where an upgrade changes it.
"""

from __future__ import annotations

from dagster import TimeWindow


def table_location(connection) -> tuple[str, dict[str, str]]:
    """(table URI, storage options) of a dagster-deltalake ``TableConnection``."""
    return connection.table_uri, dict(connection.storage_options)


def partition_values(table_slice) -> dict[str, list[str]]:
    """Partition column → the partition keys a write or read covers (several for a run over a range
    of partitions; one entry per dimension of a multi-partitioned asset). Static partitions only:
    the warehouse's assets have no time partitions."""
    values = {}
    for dimension in table_slice.partition_dimensions or []:
        if isinstance(dimension.partitions, TimeWindow):
            raise NotImplementedError(
                f"table {table_slice.table}: time-window partitions ({dimension.partition_expr}) are not supported "
                "by the warehouse's IO manager"
            )
        values[dimension.partition_expr] = list(dimension.partitions)
    return values


def selected_columns(table_slice) -> list[str] | None:
    """The columns an input asks for (its ``columns`` metadata), or None: all."""
    return None if table_slice.columns is None else list(table_slice.columns)
