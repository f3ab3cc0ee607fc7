"""Injected resources: the model, the rollout engine, and the Delta warehouse.

Assets never load a model or open a table through a global: they receive these objects, so a
test or a GPU deployment passes another instance (another model path, ``device="cuda"``,
another warehouse root) without touching asset code.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import importlib.util
import json
import logging
import operator
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import unquote

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import torch
from dagster import ConfigurableResource, InitResourceContext, MetadataValue, TableColumn, TableSchema
from dagster_deltalake import LocalConfig, S3Config
from dagster_deltalake.config import ClientConfig
from dagster_deltalake_polars import DeltaLakePolarsIOManager, DeltaLakePolarsTypeHandler
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError
from pydantic import BaseModel, PrivateAttr, create_model

from drift_assets.core.data.fingerprint import check_model_directory, content_hash, model_fingerprint
from drift_assets.core.data.finite import check_finite_weights
from drift_assets.core.data.ownership import Identity
from drift_assets.core.data.ownership import claim as claim_warehouse
from drift_assets.core.data.sequences import render_prompt
from drift_assets.core.generation.engines import (
    SamplingSettings,
    TransformersEngine,
    VllmEngine,
    resolve_max_model_len,
    vllm_available,
)
from drift_assets.core.runtime.devices import DeviceLease, lease_device
from drift_assets.core.training.adapters import adapter_rank, vllm_max_lora_rank, with_adapter
from drift_assets.delta_internals import partition_values, selected_columns, table_location
from drift_assets.settings import (
    SETTINGS_READ_KEY,
    SETTINGS_USED_KEY,
    ModelSettings,
    RolloutSettings,
    Settings,
    WarehouseSettings,
    s3_option_names,
)

logger = logging.getLogger(__name__)
WAREHOUSE_SCHEMA = "drift"


def _resource_config(name: str, group: type[BaseModel]) -> type[ConfigurableResource]:
    """A resource base class whose config fields are the settings group's own (types, defaults,
    constraints and descriptions): the UI shows them, and nothing is typed twice."""
    fields = {field_name: (field.annotation, field) for field_name, field in group.model_fields.items()}
    return create_model(name, __base__=ConfigurableResource, **fields)


class ModelResource(_resource_config("ModelConfig", ModelSettings)):
    """The base model every on-policy step uses: a Hugging Face directory."""

    path: str  # made absolute against the settings file (model_resource); no default here
    # A warm-up checkpoint saved as a LoRA adapter: the model is ``path`` with this adapter.
    adapter: str | None = None

    _cache: dict = PrivateAttr(default_factory=dict)
    _lease: DeviceLease | None = PrivateAttr(default=None)
    _log: object = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._log = context.log

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._lease is not None:
            self._lease.release()
            (self._log or logger).info(f"device {self._lease.label} released")

    @property
    def device_label(self) -> str:
        """The device as the run's metadata records it: the pool's label when one was leased."""
        device = self.resolved_device
        return self._lease.label if self._lease is not None else device

    @property
    def resolved_device(self) -> str:
        if self.device_pool:
            # A run is one process: it leases a device the first time it places a model (a run that
            # only tokenizes holds none) and keeps it to its end; before then nothing touched CUDA.
            if self._lease is None:
                self._lease = lease_device(self.device_pool, log=(self._log or logger).info)
            return self._lease.device
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def fingerprint(self) -> str:
        if self.adapter is None:
            return model_fingerprint(self.path)
        combined = f"{model_fingerprint(self.path)}+{content_hash(self.adapter)}"
        return hashlib.sha256(combined.encode()).hexdigest()[:16]

    def load_tokenizer(self):
        from transformers import AutoTokenizer

        if "tokenizer" not in self._cache:
            check_model_directory(self.path)
            tokenizer = AutoTokenizer.from_pretrained(self.path)
            render_prompt(tokenizer, "What is 1 + 1?")  # a template that cannot render fails here, naming its file
            self._cache["tokenizer"] = tokenizer
        return self._cache["tokenizer"]

    def load_model(self, target_modules: str | None = None):
        """A fresh copy in eval mode on the resolved device (callers may fine-tune it). With an
        adapter: its LoRA modules kept where ``target_modules`` (a gradient projection's) names
        them, else merged into the weights."""
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(self.path, dtype=getattr(torch, self.dtype)).to(self.resolved_device)
        if self.adapter is not None:
            model = with_adapter(model, self.adapter, target_modules)
        check_finite_weights(model, f"model.path {self.path}" + (f" with adapter {self.adapter}" if self.adapter else ""))
        return model.eval()


class RolloutEngineResource(_resource_config("RolloutEngineConfig", RolloutSettings)):
    """Samples completions with vLLM (default where it imports) or transformers (fallback)."""

    def sampling(self) -> SamplingSettings:
        return SamplingSettings(
            n=self.samples_per_query,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            stop=tuple(self.stop),
            seed=self.seed,
        )

    def evaluation_backend(self, eval_backend: str) -> str:
        """The engine an evaluation decodes with: benchmark.eval_backend, whose 'auto' is the rollouts' engine."""
        if eval_backend == "auto":
            return engine_backend(self.backend)[0]
        return engine_backend(eval_backend, setting="benchmark.eval_backend")[0]

    @contextlib.contextmanager
    def open_evaluation_engine(self, network, tokenizer, eval_backend: str, dtype: str):
        """Greedy decoding of an in-memory model (see :meth:`evaluation_backend`): transformers
        directly, or vLLM from a saved copy."""
        if self.evaluation_backend(eval_backend) == "transformers":
            yield TransformersEngine(network, tokenizer, device=next(network.parameters()).device)
            return
        import tempfile

        from drift_assets.tasks.tiny_model import save_model

        with tempfile.TemporaryDirectory() as directory:
            save_model(network, tokenizer, directory)
            with self._vllm_engine(directory, dtype) as engine:
                yield engine

    @contextlib.contextmanager
    def open_engine(
        self, model: ModelResource, log=logger, what: str = "rollout engine:"
    ) -> Iterator[TransformersEngine | VllmEngine]:
        """The engine the backend setting picks, logged after ``what`` (with why and where it runs)."""
        backend, why = engine_backend(self.backend)
        adapter = f" with the LoRA adapter {model.adapter}" if model.adapter else ""
        log.info(f"{what} {backend} ({why}); model {model.path}{adapter} on {model.resolved_device}")
        if backend == "transformers":
            yield TransformersEngine(model.load_model(), model.load_tokenizer(), device=model.resolved_device)
            return
        lora = (
            {"adapter": model.adapter, "max_lora_rank": vllm_max_lora_rank(adapter_rank(model.adapter))} if model.adapter else {}
        )
        with self._vllm_engine(model.path, model.dtype, seed=self.seed, **lora) as engine:
            yield engine

    @contextlib.contextmanager
    def _vllm_engine(self, path: str, dtype: str, **options) -> Iterator[VllmEngine]:
        """A vLLM engine over the model directory ``path`` with this resource's placement and length settings."""
        engine = VllmEngine(
            path,
            dtype=dtype,
            tensor_parallel_size=self.tensor_parallel_size,
            gpu_memory_utilization=self.gpu_memory_utilization,
            max_model_len=resolve_max_model_len(self.max_model_len, path),
            engine_process=self.engine_process,
            **options,
        )
        try:
            yield engine
        finally:
            engine.close()


def engine_backend(
    requested: str, vllm_imports: Callable[[], tuple[bool, str]] = vllm_available, setting: str = "rollout.backend"
) -> tuple[str, str]:
    """(backend, why): the engine a backend setting ('auto': vLLM wherever it imports) picks, the one
    place this is decided (the rollouts', the evaluation's and the UI's kind tag). ``vllm_imports``
    says whether vLLM imports, and why not; where it does not, a 'vllm' that is set raises."""
    if requested == "transformers":
        return "transformers", f"{setting} is 'transformers'"
    available, reason = vllm_imports()
    if available:
        return "vllm", f"{setting} is '{requested}' and vLLM imports"
    if requested == "vllm":
        raise RuntimeError(f"{setting} is 'vllm' but vLLM does not import here: {reason}")
    return "transformers", f"falling back to transformers: vLLM does not import ({reason})"


def engine_kind(backend: str) -> str:
    """The UI's kind tag of a step whose engine ``backend`` (rollout.backend) picks: 'vllm' or
    'pytorch', judged by whether vLLM is installed (an import check, not an import: definitions load
    without it). A 'vllm' that is set is its kind even where it is not installed: the step fails."""
    installed = backend == "vllm" or importlib.util.find_spec("vllm") is not None
    return "vllm" if engine_backend(backend, lambda: (installed, "not installed"))[0] == "vllm" else "pytorch"


def model_resource(settings: Settings) -> ModelResource:
    return ModelResource(**{**settings.model.model_dump(), "path": settings.model_path})


def rollout_engine_resource(settings: Settings) -> RolloutEngineResource:
    return RolloutEngineResource(**settings.rollout.model_dump())


COMMIT_ATTEMPTS = 5


class WarehouseTypeHandler(DeltaLakePolarsTypeHandler):
    """Writes and reads the warehouse's tables with deltalake's own API (registered by
    :class:`WarehouseIOManager`; what it takes from Dagster's table slice: :mod:`drift_assets.delta_internals`).

    A partitioned write replaces the partitions of its run only (one, or several for a run over a
    range), writes again where another run committed first, and records its own figures
    (``num_rows``, ``size_bytes``) besides the table's schema and URI."""

    @property
    def supported_types(self) -> Sequence[type[object]]:
        return [pl.DataFrame, pl.LazyFrame, pa.Table]

    def handle_output(self, context, table_slice, obj, connection) -> None:
        uri, storage_options = table_location(connection)
        partitions = partition_values(table_slice)
        data = obj if isinstance(obj, pa.Table) else (obj.collect() if isinstance(obj, pl.LazyFrame) else obj).to_arrow()
        config = context.resource_config or {}
        metadata = context.definition_metadata or {}
        mode = metadata.get("mode") or config.get("mode") or "overwrite"
        schema_mode = "overwrite" if metadata.get("overwrite_schema") or config.get("overwrite_schema") else None
        # What the asset was computed with (its definition's settings, now): a stale asset names what changed since.
        if metadata.get(SETTINGS_READ_KEY) is not None:
            context.add_output_metadata({SETTINGS_USED_KEY: metadata[SETTINGS_READ_KEY]})
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                write_deltalake(
                    uri,
                    data,
                    storage_options=storage_options,
                    **_write_mode(uri, storage_options, partitions, mode, schema_mode),
                )
                break
            except CommitFailedError as error:
                # Shard runs side by side write partitions of one table: where both create it, the later
                # commit fails ("Metadata changed since last commit"). A failed commit leaves the table as
                # it was, so the write is done again, looking at the table anew: it now replaces this
                # partition only.
                if attempt == COMMIT_ATTEMPTS:
                    raise
                context.log.info(f"{uri}: {error}; writing again ({attempt + 1} of {COMMIT_ATTEMPTS})")
                time.sleep(0.2 * attempt + random.random() * 0.3)
            except (DeltaError, OSError) as error:  # deltalake's message names the cause, not the table
                raise WarehouseError(_write_failure(uri, error)) from None
        try:
            stats = _written_stats(DeltaTable(uri, storage_options=storage_options), partitions)
        except Exception as error:  # the write landed: only its figures are lost
            context.log.warning(f"{uri}: error while computing table stats: {error}")
            stats = {}
        columns = [TableColumn(name=field.name, type=str(field.type)) for field in data.schema]
        written = {"table_columns": MetadataValue.table_schema(TableSchema(columns=columns)), "table_uri": uri, **stats}
        # Where the asset reported its own schema (with what each column holds) and row count
        # (assets.metadata.table_metadata), the UI shows each once; the repair reads num_rows otherwise.
        own = context.output_metadata
        context.add_output_metadata({k: v for k, v in written.items() if _OWN_VERSION.get(k) not in own})

    def load_input(self, context, table_slice, connection):
        uri, storage_options = table_location(connection)
        dataset = DeltaTable(uri, storage_options=storage_options).to_pyarrow_dataset()
        partitions = partition_values(table_slice)
        if partitions:
            dataset = dataset.filter(
                functools.reduce(operator.and_, (pc.field(column).isin(values) for column, values in partitions.items()))
            )
        columns = selected_columns(table_slice)
        target = context.dagster_type.typing_type
        if target is pa.Table:
            return dataset.to_table(columns=columns)
        frame = pl.scan_pyarrow_dataset(dataset)
        frame = frame if columns is None else frame.select(columns)
        return frame.collect() if target is pl.DataFrame else frame


# dagster-deltalake's name of a figure → the asset's own, which replaces it where reported.
_OWN_VERSION = {"table_columns": "dagster/column_schema", "num_rows": "dagster/row_count"}


def _write_mode(uri: str, storage_options: dict, partitions: dict[str, list[str]], mode: str, schema_mode) -> dict:
    """write_deltalake's mode, schema mode and predicate: a partitioned overwrite replaces the run's
    partitions only. A table that does not exist yet is appended to instead: where another run
    created it meanwhile, an overwrite would replace that run's partition without a word (the commit
    conflicts, and is written again, at worst)."""
    if not partitions or mode != "overwrite":
        return {"mode": mode, "schema_mode": schema_mode, "partition_by": list(partitions) or None}
    if not DeltaTable.is_deltatable(uri, storage_options=storage_options):
        return {"mode": "append", "schema_mode": None, "partition_by": list(partitions)}
    predicate = " AND ".join(
        f"{column} = {_sql_literal(values[0])}" if len(values) == 1 else f"{column} in ({', '.join(map(_sql_literal, values))})"
        for column, values in partitions.items()
    )
    return {"mode": "overwrite", "schema_mode": schema_mode, "partition_by": list(partitions), "predicate": predicate}


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _written_stats(table: DeltaTable, partitions: dict[str, list[str]]) -> dict:
    """Rows and bytes of the table's live files in the written partitions (all files: unpartitioned);
    zero where the write left none (an empty table or partition)."""
    actions = pa.table(table.get_add_actions(flatten=True))
    if actions.num_rows and partitions:
        keep = functools.reduce(
            pc.and_, (pc.is_in(actions[f"partition.{column}"], pa.array(values)) for column, values in partitions.items())
        )
        actions = actions.filter(keep)
    return {  # a sum over no files is null
        "size_bytes": MetadataValue.int(pc.sum(actions["size_bytes"]).as_py() or 0),
        "num_rows": MetadataValue.int(pc.sum(actions["num_records"]).as_py() or 0),
    }


def _write_failure(table_uri: str, error: BaseException) -> str:
    message = " ".join(str(error).split())
    if "No space left on device" in message or getattr(error, "errno", None) == errno.ENOSPC:
        message += " (ENOSPC: the file system is full; free space and run again)"
    return f"{table_uri}: the table could not be written, and is as it was before this write: {message}"


class WarehouseError(RuntimeError):
    """The warehouse cannot be used as configured."""


class WarehouseBusyError(WarehouseError):
    """Another materialization holds the warehouse."""


# The lock files this process holds exclusively (Warehouse.lock): the runs it executes itself take
# no shared lock on them (flock locks belong to an open file, so a second open would wait on the first).
_HELD_EXCLUSIVELY: set[str] = set()
IDENTITY_TABLE = "warehouse_identity"  # beside the assets' tables: a copy of the warehouse takes it along
INSTANCE_KEY = "drift_assets/warehouse"  # where the instance records its warehouse (run storage's key-value pairs)


class WarehouseInstanceError(WarehouseError):
    """The Dagster instance keeps the history of another warehouse."""


class Warehouse(_resource_config("WarehouseConfig", WarehouseSettings)):
    """Where the Delta tables live: the IO manager writes there, and the few reads that bypass it
    (streaming every shard) read there.

    Every run Dagster executes initializes it (the IO manager depends on it): the run is refused where
    the instance keeps another warehouse's history (:meth:`claim`), and holds the warehouse's lock
    shared, so that runs launched from the UI run side by side but never beside a ``drift_assets
    materialize``, which holds it exclusively (:meth:`lock`)."""

    _held: contextlib.ExitStack | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        if context.instance is not None:
            self.check_reachable()
            self.claim(context.instance)
        self._held = contextlib.ExitStack()
        self._held.enter_context(self.shared_lock())

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._held is not None:
            self._held.close()

    @classmethod
    def from_settings(cls, settings: Settings) -> Warehouse:
        return cls(root=settings.warehouse_root.rstrip("/"), storage_options=dict(settings.warehouse.storage_options))

    def table_uri(self, asset_name: str) -> str:
        return f"{self.root}/{WAREHOUSE_SCHEMA}/{asset_name}"

    def scan(self, asset_name: str) -> pl.LazyFrame:
        """The asset's Delta table as a lazy frame (with the warehouse's storage options)."""
        return pl.scan_delta(self.table_uri(asset_name), storage_options=self.storage_options or None)

    def write(self, asset_name: str, table: pl.DataFrame) -> None:
        """Replace the asset's whole table in one Delta commit (a reader sees the old table or the new
        one, never part of it): for a table a job reports rather than the IO manager writes."""
        table.write_delta(
            self.table_uri(asset_name),
            mode="overwrite",
            storage_options=self.storage_options or None,
            delta_write_options={"schema_mode": "overwrite"},
        )

    def exists(self, asset_name: str) -> bool:
        return DeltaTable.is_deltatable(self.table_uri(asset_name), storage_options=self.storage_options or None)

    def _table(self, asset_name: str) -> DeltaTable:
        return DeltaTable(self.table_uri(asset_name), storage_options=self.storage_options or None)

    def table_problem(self, asset_name: str) -> str | None:
        """What is wrong with the asset's table (gone, a log that does not parse, or, on a local root,
        a data file its log names that is gone), or None."""
        uri = self.table_uri(asset_name)
        try:
            if not self.exists(asset_name):
                return f"its table {uri} is missing"
            table = self._table(asset_name)
        except Exception as error:  # deltalake reports a damaged log as a generic DeltaError
            return f"its table {uri} cannot be read ({str(error).splitlines()[0]})"
        if "://" not in self.root:
            # One stat per live data file: a table holds few (each write replaces a partition's files).
            gone = [path for path in table.file_uris() if not Path(path).exists() and not Path(unquote(path)).exists()]
            if gone:
                more = f" and {len(gone) - 1} more" if len(gone) > 1 else ""
                return f"its table {uri} names data files that are gone: {gone[0]}{more}"
        return None

    def partitions_held(self, asset_name: str) -> set[tuple[str, ...]]:
        """The partition values (in the order of the table's partition columns) that the table holds
        rows of (no table: none)."""
        if not self.exists(asset_name):
            return set()
        table = self._table(asset_name)
        columns = table.metadata().partition_columns
        actions = pa.table(table.get_add_actions(flatten=True))
        return set(zip(*(actions[f"partition.{column}"].to_pylist() for column in columns), strict=True))

    def delete_rows(self, asset_name: str, predicate: str) -> int:
        """Delete the rows where ``predicate`` (SQL) holds, in one Delta commit; returns how many."""
        return self._table(asset_name).delete(predicate)["num_deleted_rows"]

    def check_reachable(self) -> None:
        """Fail before any work, naming the root and the storage options set, where object storage
        cannot be listed (no credentials, a wrong endpoint): otherwise the first write fails an hour in."""
        if "://" not in self.root:
            return
        try:
            self.exists("training_pool")
        except Exception as error:
            detail = " ".join(re.sub(r"\x1b\[[0-9;]*m|↳", "", line).strip() for line in str(error).splitlines()[:4])
            keys = ", ".join(sorted(self.storage_options)) or "none"
            raise WarehouseError(
                f"warehouse.root {self.root} cannot be reached with warehouse.storage_options (keys set: {keys}): "
                f"{detail}. Set the credentials in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and the "
                "store's region and endpoint in warehouse.storage_options."
            ) from None

    @property
    def _lock_path(self) -> Path:
        return Path(self.root) / ".materialize.lock"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold a local warehouse for one materialization: a second one started meanwhile, or a run
        launched from the UI, fails at once, naming the holder, instead of recomputing everything
        beside it. (Object storage has no lock here: Dagster's run queue and pools order runs there.)"""
        if "://" in self.root:
            yield
            return
        with self._open_lock() as handle:  # closing releases the lock
            self._take(handle, fcntl.LOCK_EX, "wait for that run to finish (or point warehouse.root elsewhere)")
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
            handle.flush()
            _HELD_EXCLUSIVELY.add(os.path.realpath(self._lock_path))
            try:
                yield
            finally:
                _HELD_EXCLUSIVELY.discard(os.path.realpath(self._lock_path))

    @contextlib.contextmanager
    def shared_lock(self) -> Iterator[None]:
        """Hold a local warehouse for one run among others: runs side by side share it, and none runs
        while a ``materialize`` holds it exclusively (nor it while they run). Nothing to take where
        this process holds it exclusively: it is that ``materialize``, executing its own runs."""
        if "://" in self.root or os.path.realpath(self._lock_path) in _HELD_EXCLUSIVELY:
            yield
            return
        with self._open_lock() as handle:  # closing releases the lock
            self._take(handle, fcntl.LOCK_SH, "this run did nothing; launch it again once that one has finished")
            yield

    def _take(self, handle, mode: int, advice: str) -> None:
        """Take the lock file's lock in ``mode`` without waiting; held elsewhere, raise naming the holder and ``advice``."""
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WarehouseBusyError(f"warehouse {self.root} is being materialized by {self._holder(handle)}: {advice}") from None

    def _open_lock(self):
        try:
            Path(self.root).mkdir(parents=True, exist_ok=True)
            return self._lock_path.open("a+")
        except OSError as error:  # a read-only or full file system, a root that is a file
            raise WarehouseError(
                f"warehouse.root {self.root} cannot be written ({error.strerror}): nothing was changed"
            ) from None

    def _holder(self, handle) -> str:
        """Who holds the lock: the processes the kernel lists for its file (/proc/locks), else what
        the last exclusive holder wrote into it."""
        handle.seek(0)
        written = handle.read().strip()
        holders = _flock_holders(self._lock_path)
        if not holders:
            return written or "another process"
        if any(mode == "WRITE" for _, mode in holders):
            return written or ", ".join(f"pid {pid} ({_command(pid)})" for pid, _ in holders)
        return "runs Dagster launched (" + "; ".join(f"pid {pid}: {_command(pid)}" for pid, _ in holders) + ")"

    def identity(self) -> Identity | None:
        """The warehouse's identity (None: not written yet, or unreadable)."""
        if not self.exists(IDENTITY_TABLE):
            return None
        try:
            row = self.scan(IDENTITY_TABLE).collect().row(0, named=True)
        except Exception:  # damaged: written again by claim
            return None
        return Identity(row["id"], row["root"])

    @property
    def location(self) -> str:
        """The root as identities record it: a local directory with its links resolved."""
        return self.root if "://" in self.root else os.path.realpath(self.root)

    def claim(self, instance) -> None:
        """Make sure ``instance`` keeps this warehouse's history, recording it where it is new to the
        instance (:func:`drift_assets.core.data.ownership.claim`); raises :class:`WarehouseInstanceError`
        where it keeps another's. Serialized per instance, so that two runs started together on two
        warehouses cannot both take a new instance."""
        with _instance_lock(instance):
            stored = instance.run_storage.get_cursor_values({INSTANCE_KEY}).get(INSTANCE_KEY)
            recorded = Identity(**json.loads(stored)) if stored else None
            verdict = claim_warehouse(recorded, self.identity(), self.location, _describe_instance(instance))
            if verdict.refusal:
                raise WarehouseInstanceError(verdict.refusal)
            if verdict.warehouse is not None:
                try:
                    self.write(IDENTITY_TABLE, pl.DataFrame([vars(verdict.warehouse)]))
                except Exception as error:
                    raise WarehouseError(f"warehouse {self.root} cannot be written: {error}") from None
            if verdict.instance is not None:
                instance.run_storage.set_cursor_values({INSTANCE_KEY: json.dumps(vars(verdict.instance))})

    def partition_columns(self, asset_name: str) -> list[str] | None:
        """The columns the asset's table is partitioned by (None: no readable table)."""
        try:
            return list(self._table(asset_name).metadata().partition_columns)
        except Exception:  # missing or damaged: table_problem says which
            return None

    def set_aside(self, asset_name: str, why: str = "damaged") -> str:
        """Move a local table out of the way (kept for inspection, as ``<table>.<why>-<time>``);
        returns where it went."""
        uri = self.table_uri(asset_name)
        if "://" in uri:
            raise RuntimeError(f"{uri} is {why}: delete it (it is rebuilt by the next materialization)")
        target = f"{uri}.{why}-{time.strftime('%Y%m%dT%H%M%S')}"
        Path(uri).rename(target)
        return target

    def io_manager(self) -> WarehouseIOManager:
        client = None
        if self.root.startswith("s3://"):
            # S3Config drops what is not its own field (allow_http): the client's go apart.
            s3_fields, client_fields = s3_option_names()
            storage = S3Config(**{k: v for k, v in self.storage_options.items() if k in s3_fields})
            client_options = {k: v for k, v in self.storage_options.items() if k in client_fields}
            client = ClientConfig(**client_options) if client_options else None
        else:
            storage = LocalConfig()
        # A materialization rewrites its whole table (or partition), so its schema is the code's: a
        # release that adds a column must not fail on the table an earlier release wrote.
        return WarehouseIOManager(
            warehouse=self,
            root_uri=self.root,
            storage_options=storage,
            client_options=client,
            schema=WAREHOUSE_SCHEMA,
            overwrite_schema=True,
        )


class WarehouseIOManager(DeltaLakePolarsIOManager):
    """dagster-deltalake's IO manager with the warehouse's type handler (:class:`WarehouseTypeHandler`),
    which every step that stores a table initializes: through it, the warehouse's checks and lock
    (:class:`Warehouse`) hold for every run, whoever launched it."""

    warehouse: Warehouse

    @staticmethod
    def type_handlers() -> Sequence[WarehouseTypeHandler]:
        return [WarehouseTypeHandler()]


def _describe_instance(instance) -> str:
    try:
        return f"at {instance.root_directory}"
    except Exception:
        return "in use"


@contextlib.contextmanager
def _instance_lock(instance) -> Iterator[None]:
    """An exclusive lock in the instance's directory (none where it has no writable one)."""
    try:
        handle = (Path(instance.root_directory) / ".drift_assets-warehouse.lock").open("a+")
    except Exception:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _flock_holders(path: Path) -> list[tuple[int, str]]:
    """(pid, READ or WRITE) of each process the kernel lists as holding a flock on ``path``."""
    try:
        stat = path.stat()
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF": the device's major and minor in hex, the
    # inode in decimal ("->" marks a waiter, which holds nothing).
    file = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    holders = {
        (int(fields[4]), fields[3]) for fields in map(str.split, lines) if fields[1:2] == ["FLOCK"] and fields[5:6] == [file]
    }
    return sorted(holders)


def _command(pid: int) -> str:
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(word.decode(errors="replace") for word in words if word)
    return text if len(text) <= 100 else text[:99] + "…"
