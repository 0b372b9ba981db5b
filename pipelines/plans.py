"""Shared pieces of the relational plans (SQL text in DuckDB's dialect, run by an engine).

The plans of :mod:`pipelines.current`, :mod:`pipelines.spells` and
:mod:`pipelines.linkage` are each one SELECT that :meth:`pipelines.engine.Engine.query`
runs over named inputs. What they share lives here:

* :func:`text` - a column as text stripped as Python's ``str.strip()`` strips it
  (:data:`pipelines.text.WHITESPACE`), empty as null; :func:`stripped` without the
  empty-as-null.
* :func:`sql_type` / :func:`cast_select` - the explicit CASTs every output column carries,
  so that SQLGlot can carry the plan to Spark with the same types.
* :func:`engine_or_default` - the engine a plan runs on (None -> the process's DuckDB).
* :func:`slim` - an Arrow table reduced to the columns a plan reads, absent optional
  columns all-null (only column names in an error, never values).

Nothing here imports Dagster.
"""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa

from pipelines.engine import Engine, default_engine
from pipelines.text import WHITESPACE


def _space_class() -> str:
    """A regex class of :data:`WHITESPACE` written with ``\\x{..}`` escapes, which RE2
    (DuckDB) and java.util.regex (Spark) read alike; runs of code points as ranges."""
    points = sorted(ord(c) for c in WHITESPACE)
    runs: list[tuple[int, int]] = []
    for p in points:
        if runs and p == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], p)
        else:
            runs.append((p, p))
    body = "".join(f"\\x{{{a:x}}}" if a == b else f"\\x{{{a:x}}}-\\x{{{b:x}}}" for a, b in runs)
    return f"[{body}]"


SPACE_CLASS = _space_class()


def stripped(expr: str) -> str:
    """``expr`` as text with leading and trailing whitespace removed (``str.strip()``)."""
    return f"regexp_replace(CAST({expr} AS VARCHAR), '^{SPACE_CLASS}+|{SPACE_CLASS}+$', '', 'g')"


def text(expr: str) -> str:
    """``expr`` stripped, empty as null."""
    return f"NULLIF({stripped(expr)}, '')"


def sql_type(typ: pa.DataType) -> str:
    """The SQL type (DuckDB's spelling; SQLGlot spells it for Spark) of an Arrow type."""
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return "VARCHAR"
    if pa.types.is_boolean(typ):
        return "BOOLEAN"
    if pa.types.is_int64(typ):
        return "BIGINT"
    if pa.types.is_int32(typ):
        return "INTEGER"
    if pa.types.is_floating(typ):
        return "DOUBLE"
    if pa.types.is_date32(typ):
        return "DATE"
    if pa.types.is_timestamp(typ):
        return "TIMESTAMP WITH TIME ZONE" if typ.tz else "TIMESTAMP"
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        return f"{sql_type(typ.value_type)}[]"
    raise TypeError(f"no SQL type for Arrow type {typ}")


def cast_select(columns: Mapping[str, pa.DataType], alias: str | None = None) -> str:
    """``CAST(<alias>.<c> AS <type>) AS <c>`` for each column, comma-separated."""
    prefix = f"{alias}." if alias else ""
    return ",\n    ".join(f'CAST({prefix}"{name}" AS {sql_type(typ)}) AS "{name}"' for name, typ in columns.items())


def engine_or_default(engine: Engine | None) -> Engine:
    return engine if engine is not None else default_engine()


def slim(table: pa.Table, columns: Mapping[str, pa.DataType], required: tuple[str, ...] = (),
         what: str = "table") -> pa.Table:
    """The named columns of ``table`` cast to the given types; absent optional columns
    become all-null. Only column names go into the error, never values."""
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ValueError(f"{what}: missing columns {missing}")
    arrays, names = [], []
    for name, typ in columns.items():
        if name in table.column_names:
            arrays.append(table.column(name).cast(typ))
        else:
            arrays.append(pa.nulls(table.num_rows, typ))
        names.append(name)
    return pa.Table.from_arrays(arrays, names=names)
