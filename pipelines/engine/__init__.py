"""Engines that run this pipeline's relational plans (DuckDB-dialect SQL, written once).

    make_engine("duckdb") -> Engine        # in process, the default
    make_engine("spark", master="local[2]") -> Engine

See :mod:`pipelines.engine.base` for the contract.
"""

from __future__ import annotations

from pipelines.engine.base import Engine, Input, Parquet
from pipelines.engine.duckdb_engine import DuckDBEngine

ENGINES = ("duckdb", "spark")


def make_engine(name: str = "duckdb", **options) -> Engine:
    if name == "duckdb":
        return DuckDBEngine(**options)
    if name == "spark":
        from pipelines.engine.spark_engine import SparkEngine

        return SparkEngine(**options)
    raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {name!r}")


__all__ = ["ENGINES", "DuckDBEngine", "Engine", "Input", "Parquet", "make_engine"]
