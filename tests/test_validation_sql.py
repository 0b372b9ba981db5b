"""The row rules as SQL (pipelines/validation/compiled.py): row conditions, Modulus 11,
ISO dates, missing against empty values, value sets with quotes, and the SQL carried to
Spark's dialect by SQLGlot. NHS numbers are generated in the 999 range."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipelines.engine import default_engine, make_engine
from pipelines.nhs_number import check_digit, is_valid, with_check_digit
from pipelines.validation import compiled
from pipelines.validation.compiled import (
    NotCompiled,
    expectation_sql,
    row_condition_sql,
)


def _table(**cols) -> pa.Table:
    return pa.table({k: pa.array(v, type=pa.string()) for k, v in cols.items()})


def _judge(expectation: str, kw: dict, values: list, column: str = "v", **other) -> tuple[list, list]:
    """(counted, unexpected) per value, as the engine computes them from the SQL."""
    counted, unexpected = expectation_sql(expectation, kw)
    out = default_engine().query(
        f"SELECT COALESCE({counted}, FALSE) AS c, COALESCE({unexpected}, FALSE) AS f FROM t",
        {"t": _table(**{column: values}, **other)})
    return out.column("c").to_pylist(), out.column("f").to_pylist()


# ------------------------------------------------------------------ row conditions
CONDITIONS = [
    'CDS_UPDATE_TYPE != "1"',
    'CDS_UPDATE_TYPE == "1"',
    '"1" == CDS_UPDATE_TYPE',
    'CDS_UPDATE_TYPE in ["1", "9"]',
    'CDS_UPDATE_TYPE not in ["1"]',
    'CDS_UPDATE_TYPE != "1" and OTHER == "x"',
    '(CDS_UPDATE_TYPE == "1") | (OTHER != "y")',
    '(CDS_UPDATE_TYPE == "9") & (OTHER == "x")',
    'not CDS_UPDATE_TYPE == "1"',
    "CDS_UPDATE_TYPE == \"it's\"",
]


@pytest.mark.parametrize("condition", CONDITIONS)
def test_row_conditions_keep_the_rows_pandas_query_keeps(condition):
    """GX's pandas engine limits a rule with ``DataFrame.query``; the SQL keeps exactly
    those rows, missing values included (``!=`` keeps a missing value, ``==`` does not)."""
    a = [None, "1", "9", "x", "it's", None, "1", "9"]
    b = ["x", "x", "x", None, "y", "y", None, "x"]
    df = pd.DataFrame({"CDS_UPDATE_TYPE": pd.array(a, dtype="string"), "OTHER": pd.array(b, dtype="string")})
    want = df.index.isin(df.query(condition, parser="pandas").index).tolist()
    got = default_engine().query(f"SELECT {row_condition_sql(condition)} AS k FROM t",
                                 {"t": _table(CDS_UPDATE_TYPE=a, OTHER=b)}).column("k").to_pylist()
    assert got == want
    assert None not in got  # never NULL: a NOT around it stays two-valued


def test_row_condition_the_sus_suite_uses_is_translated():
    from expectations.rules import Env
    from expectations.sus_apc import RULES, row_condition

    rule = next(r for r in RULES if r.id == "EPISTART_MISSING")
    cond = row_condition(rule, Env(source="sus_apc", protocol="NET"))
    assert row_condition_sql(cond) == """(NOT COALESCE("CDS_UPDATE_TYPE" = '1', FALSE))"""
    assert row_condition_sql(None) == "TRUE"


@pytest.mark.parametrize("condition", ['A > "1"', "A.str.len() == 1", 'A == B', "A == 1", "import os", 'A == "1" if B else C'])
def test_row_conditions_not_understood_are_refused(condition):
    with pytest.raises(NotCompiled):
        row_condition_sql(condition)


# ------------------------------------------------------------------ NHS numbers (Modulus 11)
def _nine_with_check_ten() -> str:
    for k in range(1000):
        nine = f"999{k:06d}"
        if check_digit(nine) is None:
            return nine
    raise AssertionError


def test_nhs_number_modulus_11_in_sql():
    ok = with_check_digit("999000001")
    ten = _nine_with_check_ten()
    cases = {
        ok: True,
        next(v for k in range(123456, 123499) if (v := with_check_digit(f"999{k}"))): True,
        f"{ok[:3]} {ok[3:6]} {ok[6:]}": True,  # spaced
        f"{ok[:3]}-{ok[3:6]}-{ok[6:]}": True,  # hyphens
        f"{ok[:3]}\u00a0{ok[3:6]}\u2011{ok[6:]}": True,  # no-break space, non-breaking hyphen
        ok[:9] + str((int(ok[9]) + 1) % 10): False,  # wrong check digit
        **{ten + str(d): False for d in range(10)},  # check result 10: no digit is right
        "1111111111": False, "0000000000": False,  # identical digits
        ok[:9]: False, ok + "0": False, "": False,  # wrong length
        ok[:8] + "A" + ok[9]: False, "99900000AB": False,  # non-digits
        "\uff19" * 3 + ok[3:]: False,  # full-width digits
        "\u0669" * 10: False,  # Arabic-Indic digits
        ok[:5] + "." + ok[5:]: False,
    }
    values = list(cases)
    counted, failed = _judge("ExpectColumnValuesToBeValidNhsNumber", {"column": "v"}, values + [None])
    assert counted == [True] * len(values) + [False]  # a missing value is not judged
    got = {v: not f for v, f in zip(values, failed)}
    assert got == cases
    assert all(is_valid(v) == want for v, want in cases.items())  # the Python rule agrees


def test_nhs_number_sql_agrees_with_python_on_random_digits():
    rng = np.random.default_rng(11)
    values = ["999" + "".join(map(str, rng.integers(0, 10, 7))) for _ in range(3000)]
    _, failed = _judge("ExpectColumnValuesToBeValidNhsNumber", {"column": "v"}, values)
    assert [not f for f in failed] == [is_valid(v) for v in values]
    assert 0 < sum(failed) < len(values)


# ------------------------------------------------------------------ ISO dates
def test_iso_dates_in_sql():
    cases = {"2024-02-29": True, "2023-02-29": False, "2000-02-29": True, "1900-02-29": False,
             "2014-13-01": False, "2014-00-10": False, "2014-01-32": False, "2024-3-05": False,
             "05/03/2024": False, "2024-03-05T00:00": False, "20240305": False, "1850-06-01": True,
             "9999-12-31": True, "2024-04-31": False}
    values = list(cases)
    counted, failed = _judge("ExpectColumnValuesToBeIsoDates", {"column": "v"}, values + [None])
    assert counted == [True] * len(values) + [False]
    assert {v: not f for v, f in zip(values, failed)} == cases
    from expectations.custom import parse_iso_dates

    assert parse_iso_dates(pd.Series(values, dtype="string")).notna().tolist() == list(cases.values())


def test_iso_dates_between_judge_real_dates_only():
    kw = {"column": "v", "min_value": "1890-01-01", "max_value": "2024-04-10"}
    values = ["1889-12-31", "1890-01-01", "2024-04-10", "2024-04-11", "2023-02-29", "garbage", None]
    counted, failed = _judge("ExpectColumnValuesToBeIsoDatesBetween", kw, values)
    assert counted == [True] * 6 + [False]
    assert failed == [True, False, False, True, False, False, False]  # not a date: not judged here


# ------------------------------------------------------------------ missing against empty
def test_null_is_missing_and_blank_becomes_missing_in_the_work_frame():
    """In SQL an empty string is a value and NULL is missing; the work frame makes a blank
    (or spaces-only) cell missing before any rule reads it, so a blank required value is
    missing (not an invalid code), as GX sees it."""
    counted, failed = _judge("ExpectColumnValuesToNotBeNull", {"column": "v"}, ["", None, "1"])
    assert counted == [True, True, True] and failed == [False, True, False]
    counted, failed = _judge("ExpectColumnValuesToBeInSet", {"column": "v", "value_set": ["1"]}, ["", None, "1"])
    assert counted == [True, False, True] and failed == [True, False, False]

    from pipelines.validation import ValidationContext, validate

    from test_validation import GP_COLUMNS, GP_GOOD, TODAY, frame

    rows = [{**GP_GOOD, "SEX": v} for v in ("", "  ", "\t", None, "7")]
    out = validate("gp", frame(rows, GP_COLUMNS), period="2024-04", submitter="A81001",
                   file_name="gp/GP_A81001_20240401.csv", context=ValidationContext(today=TODAY))
    assert out.rule_ids == [["SEX_MISSING"]] * 4 + [["SEX_CODE"]]
    rc = out.rule_counts.set_index("rule_id")
    assert rc.loc["SEX_CODE", ["rows_checked", "rows_failed"]].tolist() == [1, 1]


# ------------------------------------------------------------------ value sets
def test_value_set_with_a_quote_and_an_injection_attempt():
    kw = {"column": "v", "value_set": ["O'BRIEN", "x') OR TRUE OR ('", "A"]}
    values = ["O'BRIEN", "O", "x') OR TRUE OR ('", "x", "A", "'", None]
    counted, failed = _judge("ExpectColumnValuesToBeInSet", kw, values)
    assert failed == [False, True, False, True, False, True, False]
    assert counted == [True] * 6 + [False]
    assert compiled.in_list('"v"', []) == "FALSE"
    with pytest.raises(NotCompiled):
        expectation_sql("ExpectColumnValuesToBeInSet", {"column": "v", "value_set": [1, 2]})


def test_regex_is_a_search_with_python_spaces():
    from expectations.rules import POSTCODE_RE

    values = ["LS1 4AP", "ls14ap", "LS1\u30004AP", "LS1\u00a04AP", "LS1 4AP!", "XLS1 4AP", "1LS 4AP"]
    _, failed = _judge("ExpectColumnValuesToMatchRegex", {"column": "v", "regex": POSTCODE_RE}, values)
    import re

    assert [not f for f in failed] == [bool(re.search(POSTCODE_RE, v)) for v in values]


def test_unsupported_expectations_are_refused():
    with pytest.raises(NotCompiled):
        expectation_sql("ExpectColumnValuesToBeUnique", {"column": "v"})
    with pytest.raises(NotCompiled):
        expectation_sql("ExpectColumnValuesToBeInSet", {"column": "v", "value_set": ["1"], "parse_strings_as_datetimes": True})


# ------------------------------------------------------------------ the engine is passed in
def test_an_engine_passed_in_runs_the_rules():
    from pipelines.validation import ValidationContext, validate

    from test_validation import GP_COLUMNS, GP_GOOD, NHS_BAD, TODAY, frame

    class Counting:
        def __init__(self):
            self.inner, self.name, self.calls = make_engine("duckdb", threads=1), "duckdb", 0

        def query(self, sql, inputs=None):
            self.calls += 1
            return self.inner.query(sql, inputs)

    engine = Counting()
    df = frame([GP_GOOD, {**GP_GOOD, "NHS_NUMBER": NHS_BAD}], GP_COLUMNS)
    kw = {"period": "2024-04", "submitter": "A81001", "file_name": "gp/GP_A81001_20240401.csv",
          "context": ValidationContext(today=TODAY)}
    out = validate("gp", df, engine=engine, **kw)
    assert engine.calls == 1 and out.rule_ids == [[], ["NHS_NUMBER_INVALID"]]
    with pytest.raises(TypeError, match="mode="):
        validate("gp", df, engine="gx", **kw)
    engine.inner.close()


# ------------------------------------------------------------------ Spark's dialect
def _plan_sql(source: str, file_name: str, submitter, period):
    from pipelines.validation import ValidationContext
    from pipelines.validation.plan import active_rules, env_for, make_plan
    from pipelines.validation.workframe import work_frame

    from test_validation import TODAY

    env = env_for(source, period, submitter, file_name, ValidationContext(today=TODAY, practice_codes={"A81001"},
                                                                          site_providers={"RXX01": "RXX"}))
    work = work_frame(source, pd.DataFrame({"x": []}), env)
    plan = make_plan(source, [active_rules(source, env)], work, np.array([0]))
    return compiled.plan_sql(plan)[0]


FEEDS = [("gp", "gp/GP_A81001_20240401.csv", "A81001", "2024-04"),
         ("sus_apc", "sus_apc/APC_RXX_202403_20240405120000_NET.csv", "RXX", "2024-03"),
         ("hes_apc", "hes_apc/extract.csv", None, None),
         ("fft", "fft/FFT_RXX_202403_20240405120000.csv", "RXX", "2024-03")]


@pytest.mark.parametrize("source,file_name,submitter,period", FEEDS)
def test_every_feeds_rules_carry_to_spark_sql(source, file_name, submitter, period):
    """SQLGlot carries each feed's rule SQL to Spark's dialect without loss: no DuckDB-only
    function left, and regexes' backslashes and quotes escaped for Spark's literals."""
    import sqlglot

    sql = _plan_sql(source, file_name, submitter, period)
    spark = sqlglot.transpile(sql, read="duckdb", write="spark", unsupported_level=sqlglot.ErrorLevel.RAISE)[0]
    for duck_only in ("REGEXP_MATCHES", "TRY_STRPTIME", "REGEXP_FULL_MATCH"):
        assert duck_only not in spark.upper()
    assert "RLIKE" in spark and "TRY_CAST" in spark.upper() or source == "fft" and "RLIKE" in spark


# ------------------------------------------------------------------ on Spark
class _LocalSpark:
    """Until pipelines/engine/spark_engine.py lands: the plan's SQL carried by SQLGlot and
    run on a local Spark session over the Arrow input."""

    name = "spark"

    def __init__(self):
        from pyspark.sql import SparkSession

        self.spark = (SparkSession.builder.master("local[2]").appName("caredata-tests")
                      .config("spark.ui.enabled", "false").config("spark.sql.session.timeZone", "UTC")
                      .config("spark.sql.shuffle.partitions", "2").getOrCreate())

    def query(self, sql, inputs=None):
        import sqlglot

        for name, table in (inputs or {}).items():
            self.spark.createDataFrame(table.to_pandas()).createOrReplaceTempView(name)
        return self.spark.sql(sqlglot.transpile(sql, read="duckdb", write="spark")[0]).toArrow()


@pytest.fixture(scope="module")
def spark_engine():
    pytest.importorskip("pyspark")
    try:
        engine = make_engine("spark", master="local[2]")
    except ImportError:  # the Spark engine is not on this branch yet
        engine = _LocalSpark()
    yield engine


@pytest.mark.spark
@pytest.mark.parametrize("source", ["gp", "sus_apc", "fft"])
def test_the_rules_give_the_same_verdicts_on_spark(source, spark_engine):
    """Every rule of a feed on 300 messy rows (Unicode spaces and digits, impossible
    dates, NET deletions, repeated keys): Spark running the SQL SQLGlot carried gives
    DuckDB's counted and unexpected rows, rule by rule."""
    from pipelines.validation import ValidationContext
    from pipelines.validation.plan import active_rules, env_for, make_plan
    from pipelines.validation.workframe import work_frame

    from test_validation import (
        FFT_COLUMNS,
        FFT_CONTEXT,
        FFT_GOOD,
        GP_COLUMNS,
        GP_GOOD,
        SUS_COLUMNS,
        SUS_GOOD,
        TODAY,
    )
    from test_validation_engines import _messy

    base, columns, name, submitter, period, ctx = {
        "gp": (GP_GOOD, GP_COLUMNS, "gp/GP_A81001_20240401.csv", "A81001", "2024-04", ValidationContext(today=TODAY)),
        "sus_apc": (SUS_GOOD, SUS_COLUMNS, "sus_apc/APC_RXX_202403_20240405120000_NET.csv", "RXX", "2024-03",
                    ValidationContext(today=TODAY, practice_codes={"A81001"})),
        "fft": (FFT_GOOD, FFT_COLUMNS, "fft/FFT_RXX_202403_20240405120000.csv", "RXX", "2024-03", FFT_CONTEXT),
    }[source]
    df = _messy(base, columns, 300, seed=3)
    env = env_for(source, period, submitter, name, ctx)
    work = work_frame(source, df, env)
    plan = make_plan(source, [active_rules(source, env)], work, np.array([len(df)]))
    duck = compiled.run(plan, work, default_engine())
    spark = compiled.run(plan, work, spark_engine)
    for key in duck[0]:
        rule = plan.jobs[key[0]][key[1]][0].id
        assert duck[0][key].tolist() == spark[0][key].tolist(), rule
        assert duck[1][key].tolist() == spark[1][key].tolist(), rule
    assert sum(len(v) for v in duck[1].values()) > 20  # the rows do break rules


def test_many_files_with_their_own_arguments_run_in_one_small_query():
    """30 SUS files of 30 providers, NET and BULK (per-file submitter rules, row
    conditions, "no future dates" ceilings): one query on an engine with 300 MB, each
    job limited by a column of the items table (a long IN list per expression made DuckDB
    plan one join each and run out of 4 GB on 10 files), and each file's outcome the one
    it gets alone."""
    from pipelines.validation import ValidationContext, validate, validate_many

    from test_validation import SUS_COLUMNS, SUS_GOOD, _same, frame

    items = []
    for k in range(30):
        provider = f"R{k:02d}"
        protocol = "NET" if k % 2 else "BULK"
        rows = [{**SUS_GOOD, "PROCODE3": provider, "SUSRECID": f"{provider}{i}",
                 "CDS_UPDATE_TYPE": ("1" if i == 0 else "9") if protocol == "NET" else None} for i in range(3)]
        rows[1]["SEX"] = "7"
        rows[2]["PROCODE3"] = "RZZ"  # not the file's provider
        rows[2]["EPISTART"] = "2024-04-05"  # future for the files of 1 to 4 April only
        items.append({"frame": frame(rows, SUS_COLUMNS), "period": "2024-03", "submitter": provider,
                      "file_name": f"sus_apc/APC_{provider}_202403_202404{1 + k % 9:02d}120000_{protocol}.csv",
                      "context": ValidationContext(today=dt.date(2024, 4, 1 + k % 9))})
    engine = make_engine("duckdb", memory_limit="300MB", threads=1)
    seen = []

    class Recording:
        name = "duckdb"

        def query(self, sql, inputs=None):
            seen.append(sql)
            return engine.query(sql, inputs)

    try:
        many = validate_many("sus_apc", items, engine=Recording())
    finally:
        engine.close()
    assert len(seen) == 1 and '"__item" IN' not in seen[0]
    assert all(o.rule_ids[2][:1] == ["PROCODE3_SUBMITTER"] for o in many)
    for k in (0, 1, 9, 29):
        _same(many[k], validate("sus_apc", **items[k]))
    assert "EPISTART_FUTURE" in many[0].rule_ids[2] and "EPISTART_FUTURE" not in many[8].rule_ids[2]
