"""The engines: one plan (DuckDB-dialect SQL) gives the same rows and types on DuckDB and on
Spark for every construct the plans use; the dialect rules of pipelines/engine/__init__.py;
the engine settings (engine:, spark:, CAREDATA_ENGINE, --engine).

The Spark tests are marked ``spark`` and share one local[2] session (about 13 s to start):
``pytest -m spark tests/test_engines.py`` or ``-m "not spark"``.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.config import ConfigError, Settings
from pipelines.engine import (
    DuckDBEngine,
    Parquet,
    default_engine,
    from_settings,
    make_engine,
)
from pipelines.engine.spark_engine import SparkEngine, to_spark_sql


@pytest.fixture(scope="session")
def spark_engine():
    pytest.importorskip("pyspark")
    engine = SparkEngine(master="local[2]")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def duck():
    engine = DuckDBEngine(threads=1)
    yield engine
    engine.close()


def _key(v):
    return (v is None, str(type(v)), v if v is not None else 0)


def rows(table: pa.Table) -> list[tuple]:
    """Rows as tuples, sorted by every column (NULLs last)."""
    out = [tuple(r.values()) for r in table.to_pylist()]
    return sorted(out, key=lambda r: tuple(_key(v) for v in r))


def both(duck, spark, sql, inputs=None):
    """Run ``sql`` on both engines; the same schema and the same rows, returned."""
    d = duck.query(sql, inputs)
    before = spark.queries
    s = spark.query(sql, inputs)
    assert spark.queries == before + 1
    assert s.schema == d.schema, f"\nspark {s.schema}\nduckdb {d.schema}"
    assert rows(s) == rows(d)
    return rows(d)


# --------------------------------------------------------------------------- inputs
PEOPLE = pa.table({
    "nhs": pa.array(["9990000018", "9990000026", "9990000034", None, "9990000042"], pa.string()),
    "practice": pa.array(["A81001", "A81001", "B82002", "B82002", None], pa.string()),
    "registered": pa.array([dt.date(2010, 1, 1), dt.date(2013, 6, 1), None, dt.date(2012, 1, 1),
                            dt.date(2014, 1, 1)], pa.date32()),
    "age": pa.array([34, None, 71, 5, 88], pa.int64()),
    "objected": pa.array([False, True, None, False, False], pa.bool_()),
    "nothing": pa.nulls(5),
})
EPISODES = pa.table({
    "id": pa.array([1, 2, 3, 4, 5, 6, 7], pa.int64()),
    "nhs": pa.array(["9990000018", "9990000018", "9990000026", "9990000099", None, "9990000034",
                     "9990000018"], pa.string()),
    "start": pa.array(["20140105", "2014-01-20", "20140231", "2014013x", "", None, "20140301"], pa.string()),
    "provider": pa.array(["RX1", "RX1", "RX2", "RX2", "RX1", None, "RX2"], pa.string()),
    "cost": pa.array([10.5, None, 3.0, 4.25, 1.0, 2.0, 7.0], pa.float64()),
})


@pytest.mark.spark
def test_arrow_input_types_come_back_as_duckdb_gives_them(duck, spark_engine):
    """date32, int64, bool, string and an all-null column in, the same types and values out."""
    got = both(duck, spark_engine, "SELECT * FROM people", {"people": PEOPLE})
    assert len(got) == 5
    out = spark_engine.query("SELECT registered, age, objected, nothing FROM people", {"people": PEOPLE})
    assert out.schema.types == [pa.date32(), pa.int64(), pa.bool_(), pa.null()]


@pytest.mark.spark
def test_joins_and_group_by(duck, spark_engine):
    sql = """
        SELECT CAST(e.provider AS VARCHAR) AS provider,
               CAST(count(*) AS BIGINT) AS episodes,
               CAST(count(p.nhs) AS BIGINT) AS linked,
               CAST(sum(e.cost) AS DOUBLE) AS cost,
               CAST(min(p.age) AS BIGINT) AS youngest,
               CAST(count(DISTINCT p.practice) AS BIGINT) AS practices
        FROM episodes e LEFT JOIN people p ON e.nhs = p.nhs AND p.objected = FALSE
        GROUP BY e.provider"""
    got = both(duck, spark_engine, sql, {"episodes": EPISODES, "people": PEOPLE})
    # the NULL nhs never joins; the NULL provider is a group of its own
    assert got == sorted([("RX1", 3, 2, 11.5, 34, 1), ("RX2", 3, 1, 14.25, 34, 1), (None, 1, 0, 2.0, None, 0)],
                         key=lambda r: tuple(_key(v) for v in r))
    inner = both(duck, spark_engine, """
        SELECT CAST(e.id AS BIGINT) AS id, CAST(p.practice AS VARCHAR) AS practice
        FROM episodes e JOIN people p ON e.nhs = p.nhs
        WHERE p.registered <= DATE '2014-01-01'""", {"episodes": EPISODES, "people": PEOPLE})
    assert inner == [(1, "A81001"), (2, "A81001"), (3, "A81001"), (7, "A81001")]


@pytest.mark.spark
def test_window_functions_over_partitions(duck, spark_engine):
    sql = """
        SELECT CAST(id AS BIGINT) AS id,
               CAST(row_number() OVER (PARTITION BY nhs ORDER BY start NULLS LAST, id) AS BIGINT) AS rn,
               CAST(lag(id) OVER (PARTITION BY nhs ORDER BY start NULLS LAST, id) AS BIGINT) AS prev,
               CAST(lead(provider) OVER (PARTITION BY nhs ORDER BY start NULLS LAST, id) AS VARCHAR) AS next_provider,
               CAST(count(*) OVER (PARTITION BY provider) AS BIGINT) AS in_provider
        FROM episodes"""
    got = both(duck, spark_engine, sql, {"episodes": EPISODES})
    by_id = {r[0]: r for r in got}
    # 9990000018: '2014-01-20' < '20140105' < '20140301' as text
    assert by_id[2][1:3] == (1, None) and by_id[1][1:3] == (2, 2) and by_id[7][1:3] == (3, 1)
    assert by_id[2][3] == "RX1" and by_id[7][3] is None


@pytest.mark.spark
def test_case_coalesce_and_null_semantics(duck, spark_engine):
    sql = """
        SELECT CAST(nhs AS VARCHAR) AS nhs,
               CASE WHEN objected THEN 'objected' WHEN NOT objected THEN 'ok' ELSE 'unknown' END AS status,
               CAST(coalesce(practice, 'V81999') AS VARCHAR) AS practice,
               CAST(coalesce(age, -1) AS BIGINT) AS age,
               (age > 30) AS over_30,
               (nhs = NULL) AS eq_null,
               (nhs IS NOT DISTINCT FROM NULL) AS is_null,
               (practice IN ('A81001', NULL)) AS in_list,
               CAST(nothing AS VARCHAR) AS nothing
        FROM people"""
    got = both(duck, spark_engine, sql, {"people": PEOPLE})
    by = {r[0]: r for r in got}
    assert by["9990000026"][1:4] == ("objected", "A81001", -1)
    assert by["9990000034"][1] == "unknown"
    assert by["9990000042"][2] == "V81999"
    assert {r[5] for r in got} == {None}                                  # x = NULL is NULL
    assert by[None][6] is True and by["9990000018"][6] is False
    assert by["9990000018"][7] is True and by["9990000034"][7] is None   # IN with a NULL: NULL
    assert by["9990000026"][4] is None                                    # NULL > 30 is NULL


@pytest.mark.spark
def test_dates_from_text_invalid_is_null_on_both(duck, spark_engine):
    text = pa.table({"t": pa.array(["20140105", "2014-01-05", "20140231", "2014-02-30", "2014013x",
                                    "", None, "2014-1-5", "19991231"], pa.string())})
    sql = """
        SELECT t,
               CAST(try_strptime(t, '%Y%m%d') AS DATE) AS compact,
               CAST(try_strptime(t, '%Y-%m-%d') AS DATE) AS iso
        FROM text"""
    got = {r[0]: r[1:] for r in both(duck, spark_engine, sql, {"text": text})}
    assert got["20140105"] == (dt.date(2014, 1, 5), None)
    assert got["2014-01-05"] == (None, dt.date(2014, 1, 5))
    assert got["19991231"] == (dt.date(1999, 12, 31), None)
    for bad in ("20140231", "2014-02-30", "2014013x", "", None):     # not a date: NULL, no error
        assert got[bad] == (None, None), bad
    assert got["2014-1-5"] == (None, dt.date(2014, 1, 5))          # dialect rule 3: both accept it


@pytest.mark.spark
def test_strptime_and_cast_of_bad_text_fail_on_both(duck, spark_engine):
    """Dialect rule 3: without try_, bad text is an error on both engines (Spark in ANSI mode)."""
    text = pa.table({"t": pa.array(["20140231"], pa.string())})
    import duckdb
    from pyspark.errors import PySparkException

    for sql in ("SELECT CAST(strptime(t, '%Y%m%d') AS DATE) AS d FROM text",
                "SELECT CAST(t AS INTEGER) + 0 AS n FROM (SELECT 'x' || t AS t FROM text)"):
        with pytest.raises(duckdb.Error):
            duck.query(sql, {"text": text})
        with pytest.raises(PySparkException):
            spark_engine.query(sql, {"text": text})


@pytest.mark.spark
def test_regexp_substr_and_text(duck, spark_engine):
    codes = pa.table({"c": pa.array(["E01000001", "e01000001", "W01000002x", "AB12 3CD", None, "X"], pa.string())})
    sql = r"""
        SELECT c,
               regexp_matches(c, '^[EW]0[0-9]{7}$') AS lsoa,
               regexp_matches(c, '[0-9]{3}') AS has_digits,
               CAST(substr(c, 1, 3) AS VARCHAR) AS head,
               CAST(substr(c, 2) AS VARCHAR) AS tail,
               CAST(regexp_replace(c, '[0-9]', '', 'g') AS VARCHAR) AS letters,
               CAST(regexp_extract(c, '[0-9]+') AS VARCHAR) AS digits,
               CAST(regexp_extract(c, '([A-Z]+)([0-9]+)', 2) AS VARCHAR) AS group2,
               CAST(upper(trim(c)) AS VARCHAR) AS up,
               CAST(length(c) AS BIGINT) AS n
        FROM codes"""
    got = {r[0]: r[1:] for r in both(duck, spark_engine, sql, {"codes": codes})}
    assert got["E01000001"][:6] == (True, True, "E01", "01000001", "E", "01000001")
    assert got["W01000002x"][0] is False and got["W01000002x"][1] is True
    assert got["AB12 3CD"][5:7] == ("12", "12")   # regexp_extract without a group: the whole match
    assert got[None][0] is None
    assert got["X"][5] == ""


@pytest.mark.spark
def test_date_arithmetic(duck, spark_engine):
    d = pa.table({"a": pa.array([dt.date(2014, 1, 31), dt.date(2014, 2, 28), None], pa.date32()),
                  "b": pa.array([dt.date(2014, 3, 2), dt.date(2014, 2, 27), dt.date(2014, 1, 1)], pa.date32())})
    sql = """
        SELECT CAST(a + INTERVAL 30 DAY AS DATE) AS plus_30,
               a + INTERVAL 2 DAY AS plus_2_raw,
               CAST(date_diff('day', a, b) AS BIGINT) AS days,
               (date_diff('day', a, b) BETWEEN 0 AND 30) AS within_30,
               CAST(year(a) AS BIGINT) AS y,
               CAST(month(a) AS BIGINT) AS m
        FROM d"""
    got = both(duck, spark_engine, sql, {"d": d})
    assert (dt.date(2014, 3, 2), dt.datetime(2014, 2, 2), 30, True, 2014, 1) in got
    assert (dt.date(2014, 3, 30), dt.datetime(2014, 3, 2), -1, False, 2014, 2) in got
    assert (None, None, None, None, None, None) in got


@pytest.mark.spark
def test_parquet_inputs_with_a_declared_schema(tmp_path, duck, spark_engine):
    """A declared column absent from a file reads as NULL on both; files are read by the engine."""
    pq.write_table(pa.table({"id": pa.array([1, 2], pa.int64()), "code": ["A", "B"]}), tmp_path / "one.parquet")
    pq.write_table(pa.table({"id": pa.array([3], pa.int64()), "code": ["C"],
                             "when": pa.array([dt.date(2014, 1, 1)], pa.date32())}), tmp_path / "two.parquet")
    schema = pa.schema([("id", pa.int64()), ("code", pa.string()), ("when", pa.date32())])
    src = Parquet((str(tmp_path / "one.parquet"), str(tmp_path / "two.parquet")), schema)
    got = both(duck, spark_engine, "SELECT id, code, \"when\" FROM src", {"src": src})
    assert got == [(1, "A", None), (2, "B", None), (3, "C", dt.date(2014, 1, 1))]
    empty = Parquet((), schema)
    assert both(duck, spark_engine, "SELECT CAST(count(*) AS BIGINT) AS n FROM src", {"src": empty}) == [(0,)]
    # without a schema: the files' own (the first file's columns on DuckDB; Spark the same here)
    assert both(duck, spark_engine, "SELECT id, code FROM src", {"src": Parquet((str(tmp_path / "one.parquet"),))}) == [
        (1, "A"), (2, "B")]


@pytest.mark.spark
def test_parquet_inputs_with_where_keep_the_same_rows_on_both(tmp_path, duck, spark_engine):
    """Parquet(where=(column, values)): only the rows whose column is one of the values,
    the column read from the files whether the declared schema has it or not (a chunk
    part's rows of the chosen submissions: pipelines.current)."""
    pq.write_table(pa.table({"submission_id": ["a", "b", "c", "a"], "id": pa.array([1, 2, 3, 4], pa.int64())}),
                   tmp_path / "chunk.parquet")
    path = (str(tmp_path / "chunk.parquet"),)
    without = pa.schema([("id", pa.int64())])
    sql = "SELECT id FROM src ORDER BY id"
    assert both(duck, spark_engine, sql, {"src": Parquet(path, without, where=("submission_id", ("a", "c")))}) == [
        (1,), (3,), (4,)]
    with_it = pa.schema([("submission_id", pa.string()), ("id", pa.int64())])
    assert both(duck, spark_engine, "SELECT submission_id, id FROM src ORDER BY id",
                {"src": Parquet(path, with_it, where=("submission_id", ("b",)))}) == [("b", 2)]
    assert both(duck, spark_engine, sql, {"src": Parquet(path, without, where=("submission_id", ()))}) == []


@pytest.mark.spark
def test_result_types_are_duckdbs_for_the_same_plan(duck, spark_engine):
    """Where Spark's own type differs (sum of bigint, timestamps with a zone, unaliased
    columns), the Spark engine returns DuckDB's."""
    sql = "SELECT sum(age), CAST('2014-01-05 10:00:00' AS TIMESTAMP) AS ts, count(*) FROM people"
    d, s = duck.query(sql, {"people": PEOPLE}), spark_engine.query(sql, {"people": PEOPLE})
    assert s.schema == d.schema
    assert s.schema.field(1).type == pa.timestamp("us") and s.column(1)[0].as_py() == dt.datetime(2014, 1, 5, 10)
    assert s.to_pylist() == d.to_pylist()


# --------------------------------------------------------------------------- no Spark session
def test_sqlglot_carry_rewrites():
    """What SQLGlot carries wrong, rewritten (pipelines/engine/spark_engine.to_spark_sql)."""
    out = to_spark_sql("SELECT CAST(try_strptime(t, '%Y%m%d') AS DATE) AS d, regexp_extract(c, 'x+') AS r, "
                       "regexp_extract(c, '(x)(y)', 2) AS r2 FROM x")
    assert "TRY_TO_TIMESTAMP(t, 'yyyyMMdd')" in out and "STRPTIME" not in out.upper()
    assert "REGEXP_EXTRACT(c, 'x+', 0)" in out and "REGEXP_EXTRACT(c, '(x)(y)', 2)" in out


def test_from_settings_one_engine_per_process_and_settings():
    duck_settings = Settings.load(env={})
    assert from_settings(duck_settings) is default_engine()
    spark_settings = Settings.load(env={}, engine="spark", spark={"master": "local[1]"})
    one = from_settings(spark_settings)
    assert isinstance(one, SparkEngine) and one.master == "local[1]" and one._spark is None  # lazy: no session yet
    assert from_settings(Settings.load(env={}, engine="spark", spark={"master": "local[1]"})) is one
    other = from_settings(Settings.load(env={}, engine="spark", spark={"master": "local[1]", "conf": {"a.b": 1}}))
    assert other is not one and other.conf["a.b"] == "1"
    from pipelines import stages

    assert stages.engine(spark_settings) is one
    with pytest.raises(ValueError, match="engine must be one of duckdb, spark"):
        make_engine("polars")


def test_engine_settings_parse_from_yaml_and_env(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("engine: spark\nspark:\n  master: spark://head:7077\n  conf: {spark.executor.memory: 4g, "
                   "spark.sql.shuffle.partitions: 200}\n")
    s = Settings.load(cfg, env={})
    assert s.engine == "spark"
    assert s.spark == {"master": "spark://head:7077", "connect_url": None, "driver_memory": "2g",
                       "conf": {"spark.executor.memory": "4g", "spark.sql.shuffle.partitions": "200"}}
    assert "engine" not in s.thresholds and "spark" not in s.thresholds  # not in manifests
    assert Settings.load(env={}).engine == "duckdb"
    e = Settings.load(cfg, env={"CAREDATA_ENGINE": "duckdb", "CAREDATA_SPARK__CONNECT_URL": "sc://h:15002"})
    assert e.engine == "duckdb" and e.spark["connect_url"] == "sc://h:15002" and e.spark["master"] == "spark://head:7077"
    assert Settings.load(env={}, engine="spark").engine == "spark"


@pytest.mark.parametrize("text,env,message", [
    ("engine: polars\n", {}, r"engine \(in .*c.yaml\): expected one of duckdb, spark, got 'polars'"),
    ("engine: 3\n", {}, r"engine \(in .*\): expected one of duckdb, spark, got a number"),
    ("", {"CAREDATA_ENGINE": "Sparky"}, r"engine \(CAREDATA_ENGINE\): expected one of duckdb, spark"),
    ("spark:\n  masterr: local[2]\n", {}, r"spark.masterr \(in .*\): unknown key \(known: master, connect_url"),
    ("spark:\n  conf: [a, b]\n", {}, r"spark.conf \(in .*\): expected a mapping of Spark settings"),
    ("spark:\n  master: 2\n", {}, r"spark.master \(in .*\): expected text"),
    ("", {"CAREDATA_SPARK__MASTERR": "x"}, r"spark.masterr \(CAREDATA_SPARK__MASTERR\): unknown key"),
])
def test_engine_settings_errors_are_clear(tmp_path, text, env, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text or "{}\n")
    with pytest.raises(ConfigError, match=message):
        Settings.load(cfg, env=env)


def test_run_engine_flag_sets_the_setting_for_the_run(monkeypatch):
    """``caredata run --engine spark``: the run's settings say spark, and the environment the
    Dagster resources load from says it too (so the run's resource agrees)."""
    from pipelines import cli, runner

    seen = {}

    def fake_run(settings, **kwargs):
        seen["settings"] = settings
        seen["env"] = runner._env_for(settings)
        return runner.RunSummary(startup_code=0)

    monkeypatch.setattr(runner, "run_pipeline", fake_run)
    monkeypatch.delenv("CAREDATA_ENGINE", raising=False)
    cli.main(["run", "--landing", "l", "--warehouse", "w", "--publish", "p", "--demo-mode", "--engine", "spark"])
    assert seen["settings"].engine == "spark"
    assert seen["env"]["CAREDATA_ENGINE"] == "spark" and seen["env"]["CAREDATA_SPARK__MASTER"] == "local[2]"
    cli.main(["run", "--landing", "l", "--warehouse", "w", "--publish", "p", "--demo-mode"])
    assert seen["settings"].engine == "duckdb" and seen["env"]["CAREDATA_ENGINE"] == "duckdb"
    with pytest.raises(SystemExit):
        cli.main(["run", "--landing", "l", "--warehouse", "w", "--publish", "p", "--engine", "polars"])


def test_engine_resource_gives_the_process_engine(monkeypatch):
    from pipelines.resources import CareDataConfig, EngineResource

    caredata = CareDataConfig(landing="l", warehouse="w", publish="p", demo_mode=True)
    monkeypatch.delenv("CAREDATA_ENGINE", raising=False)
    assert EngineResource(caredata=caredata).engine() is default_engine()
    monkeypatch.setenv("CAREDATA_ENGINE", "spark")   # what caredata run --engine spark sets for the run
    caredata = CareDataConfig(landing="l", warehouse="w", publish="p", demo_mode=True)
    spark = EngineResource(caredata=caredata).engine()
    assert isinstance(spark, SparkEngine)
    assert spark is from_settings(Settings.load(env={}, landing="l", warehouse="w", publish="p", engine="spark"))


_CONNECT_SCRIPT = """
import datetime as dt, sys
import pyarrow as pa, pyarrow.parquet as pq
from pipelines.engine import DuckDBEngine, Parquet
from pipelines.engine.spark_engine import SparkEngine
spark, duck = SparkEngine(connect_url="local[1]"), DuckDBEngine(threads=1)
t = pa.table({"a": ["20140105", "x"], "d": pa.array([dt.date(2014, 1, 1), None], pa.date32()), "n": pa.nulls(2)})
pq.write_table(t.drop_columns(["n"]), sys.argv[1])
sql = "SELECT a, CAST(try_strptime(a, '%Y%m%d') AS DATE) AS p, d + INTERVAL 1 DAY AS nd, n FROM t"
assert spark.query(sql, {"t": t}).equals(duck.query(sql, {"t": t}))
src = Parquet((sys.argv[1],), pa.schema([("a", pa.string()), ("n", pa.string())]))
assert spark.query("SELECT a, n FROM t", {"t": src}).equals(duck.query("SELECT a, n FROM t", {"t": src}))
assert type(spark.spark).__module__.startswith("pyspark.sql.connect") and not spark._started
print("connect ok")
"""


@pytest.mark.spark
def test_spark_connect_path(tmp_path):
    """``connect_url``: the same plan over Arrow and Parquet inputs through Spark Connect (a
    local Connect server, ``sc://`` works the same), in a process of its own (one Spark per
    process). Needs the ``spark`` extra (pyspark[connect])."""
    import os
    import subprocess
    import sys

    for module in ("grpc_status", "zstandard", "google.rpc"):
        pytest.importorskip(module)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", _CONNECT_SCRIPT, str(tmp_path / "t.parquet")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "connect ok" in out.stdout, out.stderr[-2000:]
