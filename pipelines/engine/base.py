"""The engine contract: what a relational plan asks of the engine that runs it.

A plan is SQL text in DuckDB's dialect, written once. An engine runs it over named inputs
and returns an Arrow table. :class:`~pipelines.engine.duckdb_engine.DuckDBEngine` runs it
in process (the default); :class:`~pipelines.engine.spark_engine.SparkEngine` carries it
to Spark SQL with SQLGlot and runs it on a Spark session (``local[*]`` here, a cluster or
Databricks in production).

Inputs are either Arrow tables (small, or already in memory) or :class:`Parquet` sources
(paths the engine reads itself: on Spark the executors read them, nothing passes through
the driver). Nothing here imports Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, Union, runtime_checkable

import pyarrow as pa


@dataclass(frozen=True)
class Parquet:
    """Parquet files an engine reads itself; ``schema`` (optional) is the declared Arrow
    schema they are read as, so that absent optional columns read as null."""

    paths: tuple[str, ...]
    schema: pa.Schema | None = None
    where: tuple[str, tuple[str, ...]] | None = None
    """(column, values): only the rows whose ``column`` (a string column of the files, in
    ``schema`` or not) is one of ``values``, e.g. the chosen submissions' rows of a part
    that holds many submissions'."""


Input = Union[pa.Table, Parquet]


@runtime_checkable
class Engine(Protocol):
    """Runs a relational plan (DuckDB-dialect SQL) over named inputs."""

    name: str

    def query(self, sql: str, inputs: Mapping[str, Input] | None = None) -> pa.Table:
        """Run one SELECT over ``inputs`` (each visible to the SQL under its key) and return
        its result as an Arrow table."""
        ...

    def close(self) -> None:
        ...
