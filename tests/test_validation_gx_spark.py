"""Great Expectations on Spark beside the Spark engine (pipelines/validation/gx_spark.py):
GX's Spark execution engine validates every row of a validation with the expectations of
expectations/, its counts per rule are the engine's, and a disagreement stops the
validation naming the rule and the file, never a value. On DuckDB it does not run.

The Spark tests are marked ``spark`` and share tests/test_engines.py's one session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.validation import ValidationContext, ValidationError, gx_spark, validate, validate_many

from helpers import LyingEngine
from test_engines import spark_engine  # noqa: F401  (the one session fixture)
from test_validation import (
    FFT_COLUMNS,
    FFT_CONTEXT,
    FFT_GOOD,
    GP_COLUMNS,
    GP_GOOD,
    NHS_BAD,
    NHS_OK,
    TODAY,
    _same,
    frame,
)
from test_validation_engines import _messy

GP_NAME = "gp/GP_A81001_20240401.csv"
GP_KW = {"period": "2024-04", "submitter": "A81001", "file_name": GP_NAME,
         "context": ValidationContext(today=TODAY, practice_codes={"A81001"})}

# A GP extract with planted bad rows: (row changes, the rules it breaks)
PLANTED = [
    ({}, []),
    ({"NHS_NUMBER": NHS_BAD}, ["NHS_NUMBER_INVALID"]),
    ({"NHS_NUMBER": "1111111111"}, ["NHS_NUMBER_INVALID"]),
    ({"NHS_NUMBER": None}, ["NHS_NUMBER_MISSING"]),
    ({"NHS_NUMBER": f"{NHS_OK[:3]} {NHS_OK[3:6]}-{NHS_OK[6:]}"}, []),  # spaces and hyphens allowed
    ({"NHS_NUMBER": "\u0669" * 10}, ["NHS_NUMBER_INVALID"]),  # Arabic-Indic digits are not digits here
    ({"SEX": "7"}, ["SEX_CODE"]),
    ({"DATE_OF_BIRTH": "2023-02-30"}, ["DATE_OF_BIRTH_DATE"]),
    ({"DATE_OF_BIRTH": "2099-01-01"}, ["DATE_OF_BIRTH_FUTURE", "REGISTRATION_BEFORE_BIRTH"]),
    ({"POSTCODE": "LS1\u30004AP"}, []),  # Python's \s takes the ideographic space; Java's would not
    ({"POSTCODE": "ZZ"}, ["POSTCODE_FORMAT"]),
    ({"POSTCODE": "\u212aT1 4AP"}, ["POSTCODE_FORMAT"]),  # Kelvin sign: no letter of a postcode on any engine
    ({"POSTCODE": "ls1\t4ap"}, []),  # any spacing and case
    ({"LSOA": "E0100000"}, ["LSOA_FORMAT"]),
    ({"ETHNIC_CATEGORY": "Q"}, ["ETHNIC_CATEGORY_CODE"]),
    ({"DEREGISTRATION_DATE": "1999-01-01"}, ["DEREGISTRATION_BEFORE_REGISTRATION"]),
    ({"DATE_OF_DEATH": "1970-01-01"}, ["DEATH_BEFORE_BIRTH"]),
    ({"REGISTRATION_DATE": None}, ["REGISTRATION_DATE_MISSING"]),
]


def _planted() -> pd.DataFrame:
    return frame([{**GP_GOOD, **change} for change, _ in PLANTED], GP_COLUMNS)


def _planted_rejects() -> list[int]:
    """The planted rows that broke a reject rule (by the rules' declared severity)."""
    from pipelines.validation import rules_for

    severity = {r.id: r.severity for r in rules_for("gp")}
    return [i for i, (_, rules) in enumerate(PLANTED) if any(severity[r] == "reject" for r in rules)]


# ------------------------------------------------------------------ without Spark
def test_the_expectations_as_the_spark_engine_reads_them():
    """Row conditions (pandas parser) become Spark SQL filters with pandas's meaning,
    ``\\s`` is spelled out for Java's regular expressions, and what cannot be put to GX's
    Spark engine is refused (then checked by the sample only)."""
    from expectations.rules import POSTCODE_RE, Rule

    rule = Rule("X_CODE", "X", "reject", "m", "ExpectColumnValuesToBeInSet", {})
    kw = gx_spark.spark_kwargs(rule, {"column": "X", "value_set": ["1"], "row_condition": 'CDS_UPDATE_TYPE != "1"',
                                      "condition_parser": "pandas"})
    assert kw["condition_parser"] == "spark"
    assert "`CDS_UPDATE_TYPE`" in kw["row_condition"] and "COALESCE" in kw["row_condition"].upper()
    rx = gx_spark.spark_kwargs(Rule("P", "P", "warn", "m", "ExpectColumnValuesToMatchRegex", {}),
                               {"column": "P", "regex": POSTCODE_RE})
    assert "\\s" not in rx["regex"] and "\u3000" in rx["regex"]
    with pytest.raises(gx_spark.NotOnSpark):  # a comparison the translation does not read
        gx_spark.spark_kwargs(rule, {"column": "X", "value_set": ["1"], "row_condition": "AGE > 5",
                                     "condition_parser": "pandas"})
    with pytest.raises(gx_spark.NotOnSpark):
        gx_spark.spark_kwargs(Rule("Y", "Y", "warn", "m", "ExpectNoSuchThing", {}), {"column": "Y"})


def test_only_custom_expectations_with_a_spark_provider_go_to_spark():
    from great_expectations.execution_engine import PandasExecutionEngine
    from great_expectations.expectations.expectation import ColumnMapExpectation
    from great_expectations.expectations.metrics import ColumnMapMetricProvider, column_condition_partial

    from expectations.custom import CUSTOM

    class _PandasOnly(ColumnMapMetricProvider):
        condition_metric_name = "column_values.caredata_test_pandas_only"

        @column_condition_partial(engine=PandasExecutionEngine)
        def _pandas(cls, column, **kwargs):
            return column.notna()

    class ExpectColumnValuesToBeCaredataTestPandasOnly(ColumnMapExpectation):
        map_metric = "column_values.caredata_test_pandas_only"

    assert not gx_spark._has_spark_provider(ExpectColumnValuesToBeCaredataTestPandasOnly)
    assert all(gx_spark._has_spark_provider(cls) for cls in CUSTOM.values())


def test_the_duckdb_path_runs_no_gx_on_spark():
    """DuckDB (the default) is as before: GX on a sample only, GX's Spark engine never asked."""
    from pipelines.engine import DuckDBEngine

    def never(batch, suite):
        raise AssertionError("GX on Spark ran on the DuckDB path")

    assert gx_spark.session_of(None) is None
    with DuckDBEngine(threads=1) as duck:
        assert gx_spark.session_of(duck) is None
        out = validate("gp", _planted(), engine=duck, gx_validate=never, **GP_KW)
    assert "gx_spark_seconds" not in out.stats and out.stats["engine"] == "duckdb"
    assert np.flatnonzero(out.rejected).tolist() == _planted_rejects()


# ------------------------------------------------------------------ on Spark


    def close(self):
        pass


def _counts(out) -> dict[str, dict[str, int]]:
    rc = out.rule_counts.set_index("rule_id")
    return {rid: {"checked": int(rc.at[rid, "rows_checked"]), "failed": int(rc.at[rid, "rows_failed"])}
            for rid in rc.index}


@pytest.mark.spark
def test_gx_on_spark_counts_are_the_engines_per_rule(spark_engine, tmp_path):  # noqa: F811
    """A GP extract with planted bad rows on the Spark engine: GX's Spark engine
    validated every row of every rule, and its counts per rule are the engine's (and
    DuckDB's); quarantine is the engine's; the Data Docs show GX on Spark's results with
    counts only."""
    df = _planted()
    out = validate("gp", df, engine=spark_engine, data_docs_dir=str(tmp_path / "docs"), **GP_KW)
    duck = validate("gp", df, **GP_KW)
    _same(out, duck)
    assert out.stats["gx_spark_sample_only"] == []
    gx_counts = out.stats["gx_spark_counts"]
    assert gx_counts == _counts(out) == _counts(duck)
    planted: dict[str, int] = {}
    for _, rules in PLANTED:
        for rid in rules:
            planted[rid] = planted.get(rid, 0) + 1
    assert {rid: c["failed"] for rid, c in gx_counts.items() if c["failed"]} == planted
    assert [sorted(r) for r in out.rule_ids] == [sorted(rules) for _, rules in PLANTED]
    assert np.flatnonzero(out.rejected).tolist() == _planted_rejects()
    assert {1, 2, 3, 5} <= set(_planted_rejects())  # the NHS number rows at least
    pages = list((tmp_path / "docs").rglob("*.html"))
    text = "\n".join(p.read_text(errors="replace") for p in pages)
    assert Path(out.data_docs).exists() and "caredata_gp.spark.job001" in text
    for value in (NHS_BAD, "1111111111", "2023-02-30", "E0100000"):
        assert value not in text


@pytest.mark.spark
def test_fft_files_of_two_months_and_providers_on_spark(spark_engine):  # noqa: F811
    """Two FFT files of different months and providers validated together: rules whose
    arguments differ per file run on each file's rows (a filtered DataFrame), the period
    bounds as a per-row comparison; GX on Spark agrees with the engine on every rule and
    each outcome is DuckDB's."""
    names = ["fft/FFT_RXX_202403_20240405120000.csv", "fft/FFT_RYY_202402_20240305120000.csv"]
    items = [{"frame": _messy({**FFT_GOOD, "PROVIDER_CODE": sub, "SITE_CODE": f"{sub}01"}, FFT_COLUMNS, 60, seed=k),
              "period": period, "submitter": sub, "file_name": name, "context": FFT_CONTEXT}
             for k, (name, sub, period) in enumerate(zip(names, ["RXX", "RYY"], ["2024-03", "2024-02"]))]
    outs = validate_many("fft", items, engine=spark_engine)
    ducks = validate_many("fft", items)
    for o, d in zip(outs, ducks):
        _same(o, d)
    summed: dict[str, dict[str, int]] = {}
    for o in outs:
        for rid, c in _counts(o).items():
            s = summed.setdefault(rid, {"checked": 0, "failed": 0})
            s["checked"] += c["checked"]
            s["failed"] += c["failed"]
    gx_counts = outs[0].stats["gx_spark_counts"]
    # the period rule, merged (its bounds differ per file), gives GX's failing count only
    assert gx_counts["RESPONSE_DATE_PERIOD"] == {"failed": summed["RESPONSE_DATE_PERIOD"]["failed"]}
    assert {k: v for k, v in gx_counts.items() if k != "RESPONSE_DATE_PERIOD"} == \
        {k: v for k, v in summed.items() if k != "RESPONSE_DATE_PERIOD"}
    assert summed["RESPONSE_DATE_PERIOD"]["failed"] > 0 and summed["PROVIDER_CODE_SUBMITTER"]["failed"] > 0


@pytest.mark.spark
def test_row_conditions_keep_pandas_meaning_on_spark(spark_engine):  # noqa: F811
    """The SUS NET condition ``CDS_UPDATE_TYPE != "1"`` keeps a missing value on Spark as
    pandas's query does (Spark SQL's ``!=`` alone would drop it)."""
    import pyarrow as pa

    values = [None, "1", "9", "", "1 "]
    cond = 'CDS_UPDATE_TYPE != "1"'
    kept = pd.DataFrame({"CDS_UPDATE_TYPE": pd.array(values, dtype="string"), "i": range(5)}).query(cond)
    df = spark_engine.spark.createDataFrame(pa.table({"CDS_UPDATE_TYPE": pa.array(values, pa.string()),
                                                      "i": pa.array(range(5), pa.int64())}))
    got = sorted(r["i"] for r in df.filter(gx_spark.spark_condition(cond)).collect())
    assert got == kept["i"].tolist() == [0, 2, 3, 4]


@pytest.mark.spark
def test_an_engine_dropping_failures_past_the_sample_is_caught_by_gx_on_spark(spark_engine):  # noqa: F811
    """The engine passes every row of SEX_CODE, whose two failures lie past the rows GX's
    sample reads: the sample agrees, GX on Spark over every row does not, and the
    validation stops naming the rule and the file, with counts, never the value."""
    rows = [dict(GP_GOOD) for _ in range(1100)]
    for i in (1050, 1070):
        rows[i]["SEX"] = "X9"
    df = frame(rows, GP_COLUMNS)
    with pytest.raises(ValidationError) as err:
        validate("gp", df, engine=LyingEngine('"SEX" IN', spark_engine, name="spark"), **GP_KW)
    msg = str(err.value)
    assert "SEX_CODE" in msg and "GP_A81001_20240401.csv" in msg and "Spark" in msg
    assert "failing 0 against 2" in msg and "X9" not in msg


@pytest.mark.spark
def test_gx_on_spark_dropping_a_rules_failures_is_caught(spark_engine):  # noqa: F811
    """A GX validator that drops SEX_CODE's failing count (passed in): the counts differ
    and the validation stops naming the rule and the file."""
    def dropping(batch, suite):
        res = batch.validate(suite, result_format=gx_spark.RESULT_FORMAT)
        for r in res.results:
            if r.expectation_config.meta["rule_id"] == "SEX_CODE":
                r.result["unexpected_count"] = 0
        return res

    with pytest.raises(ValidationError, match=r"rule SEX_CODE, file\(s\) GP_A81001_20240401\.csv.*failing 1 against 0"):
        validate("gp", _planted(), engine=spark_engine, gx_validate=dropping, **GP_KW)


@pytest.mark.spark
def test_an_expectation_gx_cannot_evaluate_on_spark_is_named_by_error_class_only(spark_engine):  # noqa: F811
    """A Spark error's message may quote a value of a row: the validation stops naming the
    rule, the file and the error class, never the message."""
    def failing(batch, suite):
        res = batch.validate(suite, result_format=gx_spark.RESULT_FORMAT)
        for r in res.results:
            if r.expectation_config.meta["rule_id"] == "NHS_NUMBER_INVALID":
                r.exception_info = {"raised_exception": True, "exception_traceback": "",
                                    "exception_message": f"[CAST_INVALID_INPUT] The value '{NHS_BAD}' cannot be cast"}
        return res

    with pytest.raises(ValidationError) as err:
        validate("gp", _planted(), engine=spark_engine, gx_validate=failing, **GP_KW)
    msg = str(err.value)
    assert "NHS_NUMBER_INVALID" in msg and "CAST_INVALID_INPUT" in msg and "GP_A81001_20240401.csv" in msg
    assert NHS_BAD not in msg
