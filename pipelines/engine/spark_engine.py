"""Spark (``engine: spark``): the same DuckDB-dialect plans, carried to Spark SQL by SQLGlot.

    SparkEngine(master="local[2]")                       # a Spark session in this process
    SparkEngine(master="spark://host:7077")              # a standalone cluster (or yarn, k8s://...)
    SparkEngine(connect_url="sc://host:15002")           # Spark Connect (Databricks Connect too)

How a query runs:

1. The SQL (DuckDB's dialect, as every plan is written) is transpiled once per text with
   ``sqlglot.transpile(sql, read="duckdb", write="spark")`` plus the small rewrites of
   :func:`to_spark_sql` (SQLGlot carries ``try_strptime`` verbatim and ``regexp_extract``
   without its group; see the dialect rules in :mod:`pipelines.engine`).
2. Each Arrow input becomes a temporary view (``spark.createDataFrame(table)``: Arrow goes
   to the JVM without pandas); each :class:`~pipelines.engine.base.Parquet` input is read by
   Spark itself (``spark.read.schema(declared).parquet(*paths)``: on a cluster the executors
   read the files, nothing passes through the driver), so a declared column absent from a
   file reads as null, as on DuckDB.
3. The result comes back with ``DataFrame.toArrow()`` and is cast to the Arrow schema DuckDB
   gives for the same plan. That schema is found by running the plan on DuckDB over
   zero-row inputs of the same schemas (milliseconds; cached per plan text and input
   schemas). So both engines return the same column names and types whatever Spark's own
   choices: Spark's timestamps carry the session zone (UTC here) where DuckDB's have none,
   Spark's ``sum`` of a bigint is a bigint where DuckDB's is a decimal(38,0), Spark's
   ``date + INTERVAL n DAY`` is a date where DuckDB's is a timestamp, unaliased columns are
   named differently. Plans still CAST their outputs explicitly (the dialect rules).

Session: one per process, reused (``getOrCreate``); :meth:`close` stops it only if this
engine started it. ``spark.sql.session.timeZone=UTC``; ANSI mode stays on (Spark 4's
default), because it is the closer match to DuckDB: a bad ``CAST`` or ``strptime`` is an
error on both, and the ``try_*`` forms give NULL on both. ``spark.ui.enabled=false``,
four shuffle partitions (small local jobs; raise it on a cluster with ``spark.conf``),
Arrow enabled, log4j at WARN.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads

from pipelines.engine.base import Input, Parquet

DEFAULT_CONF: dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.shuffle.partitions": "4",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
    "spark.sql.adaptive.enabled": "true",
    "spark.ui.showConsoleProgress": "false",
}

_LOCK = threading.Lock()          # one session per process; one query at a time on it
_SQL_CACHE: dict[str, str] = {}                        # plan text -> Spark SQL
_SCHEMA_CACHE: dict[tuple, pa.Schema | None] = {}      # (plan, input schemas) -> DuckDB's result schema
_CACHE_MAX = 2048                                      # plans with literals in them: bounded


# --------------------------------------------------------------------------- SQL
def to_spark_sql(sql: str) -> str:
    """A DuckDB-dialect plan as Spark SQL (cached per text). SQLGlot does the carrying; the
    rewrites below fix what it carries wrong (each checked in tests/test_engines.py):

    * ``try_strptime(x, fmt)``: SQLGlot leaves it as is, Spark has no such function; it
      becomes ``try_to_timestamp(x, spark_fmt)`` (NULL for text that is not a date, as on
      DuckDB), the format translated as SQLGlot translates ``strptime``'s.
    * ``regexp_extract(x, pattern)`` without a group: DuckDB returns the whole match (group
      0), Spark group 1; the group is made explicit.
    """
    out = _SQL_CACHE.get(sql)
    if out is None:
        import sqlglot
        from sqlglot import exp

        tree = sqlglot.parse_one(sql, read="duckdb")

        def fix(node):
            if isinstance(node, exp.Anonymous) and node.name.upper() == "TRY_STRPTIME":
                value, fmt = node.expressions[0], node.expressions[1]
                # strptime's carry, TO_TIMESTAMP(value, spark_fmt), made TRY_TO_TIMESTAMP
                spark = exp.StrToTime(this=value.copy(), format=fmt.copy()).sql(dialect="spark")
                return sqlglot.parse_one(_to_try(spark), read="spark")
            if isinstance(node, exp.RegexpExtract) and node.args.get("group") is None:
                node.set("group", exp.Literal.number(0))
            return node

        tree = tree.transform(fix)
        out = tree.sql(dialect="spark")
        if len(_SQL_CACHE) >= _CACHE_MAX:
            _SQL_CACHE.clear()
        _SQL_CACHE[sql] = out
    return out


def _to_try(spark_sql: str) -> str:
    if not spark_sql.upper().startswith("TO_TIMESTAMP("):
        raise ValueError(f"cannot carry try_strptime to Spark (SQLGlot gave {spark_sql[:40]}...)")
    return "TRY_" + spark_sql


# --------------------------------------------------------------------------- types
def _duckdb_schema(sql: str, inputs: Mapping[str, Input]) -> pa.Schema | None:
    """The schema DuckDB gives for ``sql`` over zero-row inputs of the same schemas; None
    when DuckDB cannot run it (the Spark types are then kept, timestamps made naive)."""
    empties: dict[str, pa.Table] = {}
    for name, value in inputs.items():
        try:
            schema = value.schema if isinstance(value, pa.Table) else _parquet_schema(value)
        except Exception:  # noqa: BLE001 - files the driver cannot open (only the cluster can)
            return None
        empties[name] = schema.empty_table()
    key = (sql, tuple((n, str(t.schema)) for n, t in sorted(empties.items())))
    if key not in _SCHEMA_CACHE:
        import duckdb

        if len(_SCHEMA_CACHE) >= _CACHE_MAX:
            _SCHEMA_CACHE.clear()
        con = duckdb.connect()
        try:
            for name, table in empties.items():
                con.register(name, table)
            _SCHEMA_CACHE[key] = con.sql(sql).to_arrow_table().schema
        except duckdb.Error:
            _SCHEMA_CACHE[key] = None
        finally:
            con.close()
    return _SCHEMA_CACHE[key]


def _where(frame, where: tuple[str, tuple[str, ...]]):
    """A Spark frame's rows whose column is one of the values (:class:`Parquet`'s ``where``)."""
    from pyspark.sql import functions as F

    column, values = where
    return frame.where(F.col(column).isin(list(values)))


def _parquet_schema(value: Parquet) -> pa.Schema:
    if value.schema is not None:
        return value.schema
    return pads.dataset(list(value.paths), format="parquet").schema


def _conform(table: pa.Table, schema: pa.Schema | None) -> pa.Table:
    """Spark's result with DuckDB's names and types for the same plan."""
    if schema is None or len(schema) != table.num_columns:
        cols = []
        for col in table.columns:
            t = col.type
            cols.append(col.cast(pa.timestamp(t.unit)) if pa.types.is_timestamp(t) and t.tz else col)
        return pa.table(cols, names=table.column_names)
    cols = []
    for col, field in zip(table.columns, schema):
        if col.type != field.type:
            if pa.types.is_null(field.type):
                col = pa.nulls(len(col), pa.null())
            else:
                try:
                    col = col.cast(field.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise TypeError(f"column {field.name}: Spark gave {col.type}, DuckDB gives {field.type} for "
                                    f"the same plan, and one does not cast to the other ({type(exc).__name__}); "
                                    "CAST it in the plan (pipelines.engine dialect rule 2)") from None
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema)


def _spark_ready(table: pa.Table) -> pa.Table:
    """What ``createDataFrame`` takes: a null-typed column (all nulls, no type) goes as text;
    dictionary columns are decoded; large/view strings as plain strings."""
    cols, changed = [], False
    for col in table.columns:
        t = col.type
        if pa.types.is_null(t):
            col, changed = col.cast(pa.string()), True
        elif pa.types.is_dictionary(t):
            col, changed = col.cast(t.value_type), True
        elif pa.types.is_large_string(t) or (hasattr(pa.types, "is_string_view") and pa.types.is_string_view(t)):
            col, changed = col.cast(pa.string()), True
        cols.append(col)
    return pa.table(cols, names=table.column_names) if changed else table


# --------------------------------------------------------------------------- engine
class SparkEngine:
    """Runs the pipeline's plans on a Spark session (see the module docstring)."""

    name = "spark"

    def __init__(self, master: str = "local[2]", connect_url: str | None = None,
                 conf: Mapping[str, Any] | None = None, driver_memory: str | None = None,
                 app_name: str = "caredata"):
        self.master = master
        self.connect_url = connect_url or None
        self.conf = {**DEFAULT_CONF, **{str(k): str(v) for k, v in (conf or {}).items()}}
        if driver_memory and not self.connect_url:
            self.conf.setdefault("spark.driver.memory", str(driver_memory))
        self.app_name = app_name
        self.queries = 0  # queries run: the parity test checks the Spark run really used Spark
        self._spark = None
        self._started = False

    # ---------------------------------------------------------------- session
    @property
    def spark(self):
        if self._spark is None:
            with _LOCK:
                if self._spark is None:
                    self._spark = self._session()
        return self._spark

    def _session(self):
        from pyspark.sql import SparkSession

        if self.connect_url:
            builder = SparkSession.builder.remote(self.connect_url)
            for k, v in self.conf.items():
                if not k.startswith(("spark.ui.", "spark.driver.")):
                    builder = builder.config(k, v)
            self._started = False  # the server's session: never stopped from here
            return builder.getOrCreate()
        active = SparkSession.getActiveSession()
        if active is None and os.environ.get("DATABRICKS_RUNTIME_VERSION"):
            # a job on a Databricks cluster (e.g. launched by Dagster Pipes): the cluster's session
            active = SparkSession.builder.getOrCreate()
        if active is not None:
            self._started = False
            self._set_sql_conf(active)
            return active
        os.environ.setdefault("PYSPARK_PYTHON", os.sys.executable)
        builder = SparkSession.builder.master(self.master).appName(self.app_name)
        for k, v in self.conf.items():
            builder = builder.config(k, v)
        # log4j at WARN from the start (Spark's INFO lines otherwise flood the run's stderr)
        java = self.conf.get("spark.driver.extraJavaOptions", "")
        builder = builder.config("spark.driver.extraJavaOptions", f"{java} -Dlog4j2.level=warn".strip())
        spark = builder.getOrCreate()
        spark.sparkContext.setLogLevel("WARN")
        self._started = True
        return spark

    def _set_sql_conf(self, session) -> None:
        """On a session this engine did not start: its SQL settings (the time zone above
        all: dates and timestamps must read as UTC), where the session lets them be set."""
        for k, v in self.conf.items():
            if k.startswith("spark.sql.") and not k.startswith("spark.sql.execution.arrow.pyspark.fallback"):
                try:
                    session.conf.set(k, v)
                except Exception:  # noqa: BLE001, S110 - a static setting of the cluster's: kept as it is
                    pass

    # ---------------------------------------------------------------- queries
    def query(self, sql: str, inputs: Mapping[str, Input] | None = None) -> pa.Table:
        inputs = dict(inputs or {})
        spark_sql = to_spark_sql(sql)
        schema = _duckdb_schema(sql, inputs)
        spark = self.spark
        with _LOCK:  # temporary views are the session's: one query at a time
            views = []
            try:
                for name, value in inputs.items():
                    self._frame(spark, value).createOrReplaceTempView(name)
                    views.append(name)
                result = spark.sql(spark_sql).toArrow()
            finally:
                for name in views:
                    spark.catalog.dropTempView(name)
            self.queries += 1
        return _conform(result, schema)

    def _frame(self, spark, value: Input):
        if isinstance(value, pa.Table):
            return spark.createDataFrame(_spark_ready(value))
        if isinstance(value, Parquet):
            from pyspark.sql.pandas.types import from_arrow_schema

            paths = [_spark_path(p) for p in value.paths]
            if value.schema is not None:
                declared = from_arrow_schema(_spark_ready(value.schema.empty_table()).schema)
                if not paths:
                    return spark.createDataFrame([], declared)
                if value.where is None:
                    return spark.read.schema(declared).parquet(*paths)
                column = value.where[0]
                wider = value.schema if column in value.schema.names else value.schema.append(
                    pa.field(column, pa.string()))
                read = spark.read.schema(from_arrow_schema(_spark_ready(wider.empty_table()).schema)).parquet(*paths)
                return _where(read, value.where).select(*value.schema.names)
            if not paths:
                raise ValueError("a Parquet input with no file needs a declared schema")
            read = spark.read.parquet(*paths)
            return read if value.where is None else _where(read, value.where)
        raise TypeError(f"an engine input is an Arrow table or Parquet, not {type(value).__name__}")

    def close(self) -> None:
        if self._spark is not None and self._started:
            self._spark.stop()
        self._spark = None
        self._started = False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _spark_path(path: str) -> str:
    """Local paths absolute (Spark resolves relative ones against its own working folder);
    ``s3://`` as Hadoop's ``s3a://`` outside Databricks (whose ``s3://`` is native)."""
    p = str(path)
    if "://" not in p:
        return os.path.abspath(p)
    if p.startswith("s3://") and not os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        return "s3a://" + p[len("s3://"):]
    return p
