"""Engines that run this pipeline's relational plans (DuckDB-dialect SQL, written once).

    make_engine("duckdb") -> Engine        # in process, the default
    make_engine("spark", master="local[2]") -> Engine

See :mod:`pipelines.engine.base` for the contract.
"""

from __future__ import annotations

from pipelines.engine.base import Engine, Input, Parquet
from pipelines.engine.duckdb_engine import DuckDBEngine

ENGINES = ("duckdb", "spark")

_DEFAULT: Engine | None = None


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


__all__ = ["ENGINES", "DuckDBEngine", "Engine", "Input", "Parquet", "default_engine", "make_engine"]
