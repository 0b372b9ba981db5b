"""Same outputs on both engines (issue #23, point 4): one generated landing zone (three
months, every fault the generator plants) run by ``caredata run --engine duckdb`` and by
``caredata run --engine spark`` into two roots; every published Parquet dataset (public and
restricted), the warehouse ledger and every table of the warehouse (silver, quarantine,
dq, current views, linked episodes, spells) are equal row for row, sorted by every column.

What is left out of the comparison, and why:

* ``first_seen_at`` (the ledger, and its event parts in the warehouse): the wall-clock
  time each run first saw a file;
* manifests (``_manifest.json``: run ids, write times): not Parquet datasets; their
  ``partitions`` and ``rows`` are compared through the datasets themselves;
* floats are compared to 9 decimal places: a sum of doubles may be added up in another
  order on Spark's partitions (none differs today).

It proves what goes through the engine: the Spark run must have run its queries on Spark
(``SparkEngine.queries``: validation, the current view, linkage, coverage, spells and the
FFT linkage of every period) and none on the process's DuckDB engine, and the DuckDB run
none on Spark.

Marked ``spark`` and ``e2e``: about 4 minutes (two runs and a Spark session).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import cli, ingest
from pipelines.config import Settings
from pipelines.engine import default_engine, from_settings
from pipelines.storage import Store
from pipelines.synth import generate
from pipelines.warehouse import Warehouse

pytestmark = [pytest.mark.spark, pytest.mark.e2e]

IGNORED_LEDGER_COLUMNS = ("first_seen_at",)
IGNORED_COLUMNS = IGNORED_LEDGER_COLUMNS    # in any warehouse table


@contextlib.contextmanager
def _env_without(*names):
    old = {k: os.environ.pop(k) for k in names if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(old)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    pytest.importorskip("pyspark")
    root = tmp_path_factory.mktemp("parity")
    landing = root / "landing"
    generate(landing, seed=23, scale=0.002, months=3, start="2014-01", truth_dir=root / "truth", progress=False)
    spark = from_settings(Settings.load(env={}, engine="spark"))  # the engine the Spark run gets
    out = {"landing": landing, "spark_engine": spark}
    engine_env = [k for k in os.environ if k == "CAREDATA_ENGINE" or k.startswith("CAREDATA_SPARK__")]
    with _env_without(*engine_env):
        for engine in ("duckdb", "spark"):
            before, duck_before = spark.queries, default_engine().queries
            text = io.StringIO()
            with contextlib.redirect_stdout(text):
                rc = cli.main(["run", "--landing", str(landing), "--warehouse", str(root / engine / "wh"),
                               "--publish", str(root / engine / "pub"), "--demo-mode", "--engine", engine])
            out[engine] = {"rc": rc, "stdout": text.getvalue(), "pub": root / engine / "pub",
                           "wh_root": root / engine / "wh",
                           "wh": Warehouse(Store(root / engine / "wh")), "spark_queries": spark.queries - before,
                           "duckdb_queries": default_engine().queries - duck_before}
    return out


def _value(v):
    if isinstance(v, float):
        return None if math.isnan(v) else round(v, 9)
    return v


def _sort_key(row):
    return tuple((v is None, type(v).__name__, v if v is not None else 0) for v in row)


def _rows(table: pa.Table) -> list[tuple]:
    return sorted((tuple(_value(v) for v in r.values()) for r in table.to_pylist()), key=_sort_key)


def _datasets(pub: Path) -> dict[str, dict[str, pa.Table]]:
    """zone/dataset -> {partition folder: the rows of its Parquet files}."""
    out: dict[str, dict[str, pa.Table]] = {}
    for path in sorted(pub.rglob("*.parquet")):
        rel = path.relative_to(pub)
        dataset = "/".join(rel.parts[:2])                 # public/fft_scores
        part = "/".join(rel.parts[2:-1])                  # period=2014-01 ('' if none)
        tables = out.setdefault(dataset, {})
        t = pq.read_table(path, partitioning=None)
        tables[part] = pa.concat_tables([tables[part], t], promote_options="default") if part in tables else t
    return out


def test_both_runs_succeed_and_spark_ran_the_engine_steps(runs):
    for engine in ("duckdb", "spark"):
        assert runs[engine]["rc"] == 0, runs[engine]["stdout"]
    assert runs["duckdb"]["spark_queries"] == 0 and runs["duckdb"]["duckdb_queries"] > 0
    # Every heavy step of the Spark run went to Spark: none fell back to the process's DuckDB
    # (a plan called without the run's engine would run there).
    assert runs["spark"]["duckdb_queries"] == 0
    # Per period at least: validation of each feed, the current view, linkage, coverage,
    # the spells of the window and the FFT linkage.
    assert runs["spark"]["spark_queries"] >= 3 * 7


def test_every_published_dataset_is_equal_row_for_row(runs):
    duck, spark = _datasets(runs["duckdb"]["pub"]), _datasets(runs["spark"]["pub"])
    assert set(spark) == set(duck)
    assert {"public/fft_by_specialty", "public/fft_scores", "public/submissions",
            "restricted/linked_episodes"} <= set(duck)
    compared = 0
    for name in sorted(duck):
        assert set(spark[name]) == set(duck[name]), f"{name}: other partitions"
        for part, d in duck[name].items():
            s = spark[name][part]
            assert s.schema == d.schema, f"{name}/{part}: other columns or types"
            assert _rows(s) == _rows(d), f"{name}/{part}: other rows"
            compared += d.num_rows
    # the step on the engine has rows to compare: responses linked to spells in every month
    fft = duck["public/fft_by_specialty"]
    assert sum(t.num_rows for t in fft.values()) > 0 and len(fft) == 3
    assert compared > 1000


def _first_seen_hes_blank(t):
    """submission_columns with a HES extract's submitted_at (the time the run first saw
    it, like the ledger's first_seen_at) blanked; every other submission's kept."""
    import pyarrow.compute as pc

    i = t.column_names.index("submitted_at")
    hes = pc.equal(t.column("source"), "hes_apc")
    blank = pa.nulls(t.num_rows, t.schema.field(i).type)
    return t.set_column(i, t.schema.field(i), pc.if_else(hes, blank, t.column(i)))


def test_the_ledger_is_equal_row_for_row(runs):
    d, s = (ingest.read_ledger(runs[e]["wh"]) for e in ("duckdb", "spark"))
    assert d.num_rows > 50 and {"held", "rejected", "current"} <= set(d.column("status").to_pylist())
    d, s = d.drop_columns(list(IGNORED_LEDGER_COLUMNS)), s.drop_columns(list(IGNORED_LEDGER_COLUMNS))
    assert s.schema == d.schema
    assert _rows(s) == _rows(d)


def test_every_warehouse_table_is_equal_row_for_row(runs):
    """Where the steps moving onto the engine write: silver, quarantine, dq, the current
    views, linked episodes, spells; compared before disclosure control hides anything."""
    duck, spark = _datasets(runs["duckdb"]["wh_root"]), _datasets(runs["spark"]["wh_root"])
    assert set(spark) == set(duck) and len(duck) > 15
    for name in sorted(duck):
        assert set(spark[name]) == set(duck[name]), f"{name}: other partitions"
        for part, d in duck[name].items():
            s = spark[name][part]
            drop = [c for c in IGNORED_COLUMNS if c in d.column_names]
            d, s = d.drop_columns(drop), s.drop_columns([c for c in drop if c in s.column_names])
            if name.endswith("submission_columns"):  # a HES extract's submitted_at is when it was first seen
                d, s = _first_seen_hes_blank(d), _first_seen_hes_blank(s)
            assert s.schema == d.schema, f"{name}/{part}: other columns or types"
            assert _rows(s) == _rows(d), f"{name}/{part}: other rows"
