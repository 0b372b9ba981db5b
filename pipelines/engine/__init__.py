"""Engines that run this pipeline's relational plans (DuckDB-dialect SQL, written once).

    make_engine("duckdb") -> Engine        # in process, the default
    make_engine("spark", master="local[2]") -> Engine
    from_settings(settings) -> Engine      # the engine the configuration names, one per process
    default_engine() -> Engine             # the process's DuckDB, for callers that pass none

Configuration: ``engine: duckdb | spark`` and ``spark: {master, connect_url, driver_memory,
conf}`` (pipelines/defaults.yaml; ``CAREDATA_ENGINE``, ``CAREDATA_SPARK__MASTER``, ...;
``caredata run --engine spark``). In Dagster the ``engine`` resource
(:class:`pipelines.resources.EngineResource`) starts it before the first step; stages get
it with ``pipelines.stages.engine(settings)``. See :mod:`pipelines.engine.base` for the
contract and :mod:`pipelines.engine.spark_engine` for how Spark runs a plan.

Dialect rules: what a plan's SQL must do so that the same text gives the same rows on
DuckDB and on Spark (SQLGlot carries it; tests/test_engines.py checks each rule):

1. Name inputs only by their keys; no DuckDB table functions (``read_parquet``,
   ``read_csv``, ``range``, ``unnest`` of a list literal) inside a plan: the engine reads inputs.
2. Alias every output column and CAST it to its declared type (``CAST(x AS BIGINT)``,
   ``CAST(... AS DATE)``, ``CAST(... AS VARCHAR)``). The Spark engine also casts its result
   to the schema DuckDB gives for the plan, but explicit casts keep the plan's types in
   the plan, not in an engine.
3. Dates from text: ``CAST(try_strptime(x, '%Y%m%d') AS DATE)`` (or ``'%Y-%m-%d'``): text
   that is not a real date gives NULL on both (the Spark engine rewrites it to
   ``try_to_timestamp``). ``strptime`` (no ``try_``) and a plain ``CAST`` of bad text are
   errors on both engines (Spark runs in ANSI mode): use them only on text already checked.
   Both accept a month or day without its leading zero (``2014-1-5``); check the text's
   shape with ``regexp_matches`` first where that matters.
4. Date arithmetic: ``d + INTERVAL n DAY`` (a TIMESTAMP on DuckDB, a DATE on Spark: CAST
   it to DATE), ``d + n`` with an integer (a DATE on both) and ``date_diff('day', a, b)``
   (whole days from a to b). Never ``a - b`` of two dates: days on DuckDB, an interval on
   Spark (which comes back as a count of microseconds).
5. Text: ``regexp_matches(x, pattern)`` is a search (anchor with ``^...$`` for a whole
   match); ``regexp_replace`` always with the ``'g'`` flag (without it DuckDB replaces the
   first match, Spark every match); ``regexp_extract(x, pattern, group)`` (without a group
   the engine asks Spark for group 0, as DuckDB does); ``substr(x, start, len)`` 1-based;
   ``trim``, ``upper``, ``length``, ``coalesce``.
6. Windows: ``row_number()``, ``lag``, ``lead`` with an ``ORDER BY`` that makes the order
   total (ties broken by a unique column): the two engines break ties differently. No
   ``QUALIFY``: write a subquery and WHERE (SQLGlot carries ``SELECT * ... QUALIFY`` with
   an extra column).
7. No ``hash()`` (different on each engine, and out of range on Spark), no ``random()``,
   no ``current_date`` (pass the date in as a literal or an input), no ``list``/``struct``
   functions, no ``string_agg`` whose order matters. ``/`` gives a DOUBLE on both.
8. Sort keys of an ``ORDER BY`` that decides a result say ``NULLS FIRST`` or ``NULLS
   LAST`` (DuckDB's and Spark's defaults differ; SQLGlot makes DuckDB's explicit, but say it).
"""

from __future__ import annotations

import threading

from pipelines.engine.base import Engine, Input, Parquet
from pipelines.engine.duckdb_engine import DuckDBEngine

ENGINES = ("duckdb", "spark")

_DEFAULT: Engine | None = None
_BY_SETTINGS: dict[tuple, Engine] = {}
_LOCK = threading.Lock()


def make_engine(name: str = "duckdb", **options) -> Engine:
    if name == "duckdb":
        return DuckDBEngine(**options)
    if name == "spark":
        from pipelines.engine.spark_engine import SparkEngine

        return SparkEngine(**options)
    raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {name!r}")


def default_engine() -> Engine:
    """The process's in-process DuckDB engine, made on first use: what a plan runs on
    when its caller passes no engine (tests, notebooks)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = DuckDBEngine()
    return _DEFAULT


def _key(settings) -> tuple:
    if settings.engine != "spark":
        return ("duckdb",)
    spark = settings.spark or {}
    return ("spark", spark.get("master"), spark.get("connect_url"), spark.get("driver_memory"),
            tuple(sorted((spark.get("conf") or {}).items())))


def from_settings(settings) -> Engine:
    """The engine ``settings`` name (``settings.engine``, ``settings.spark``), made once per
    process and per engine settings, then reused: DuckDB is :func:`default_engine`; Spark
    is one :class:`~pipelines.engine.spark_engine.SparkEngine` whose session starts on its
    first query. Not closed here: :func:`close_all` (the runner, at the end of a run)."""
    key = _key(settings)
    if key == ("duckdb",):
        return default_engine()
    with _LOCK:
        engine = _BY_SETTINGS.get(key)
        if engine is None:
            spark = settings.spark or {}
            engine = make_engine("spark", master=spark.get("master") or "local[2]",
                                 connect_url=spark.get("connect_url"), conf=spark.get("conf") or {},
                                 driver_memory=spark.get("driver_memory"))
            _BY_SETTINGS[key] = engine
        return engine


def close_all() -> None:
    """Close the Spark engines :func:`from_settings` made (their sessions, if they started
    them). The default DuckDB engine stays (plans called without an engine use it)."""
    with _LOCK:
        engines = list(_BY_SETTINGS.values())
        _BY_SETTINGS.clear()
    for engine in engines:
        engine.close()


__all__ = ["ENGINES", "DuckDBEngine", "Engine", "Input", "Parquet", "close_all", "default_engine",
           "from_settings", "make_engine"]
