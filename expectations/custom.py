"""Custom Great Expectations expectations of the care.data suites.

* ``ExpectColumnValuesToBeValidNhsNumber``: Modulus 11 valid NHS number (methods.md
  "NHS number"; spaces and hyphens allowed, ten identical digits invalid), through
  :func:`pipelines.nhs_number.valid_series`.
* ``ExpectColumnValuesToBeIsoDates``: ``YYYY-MM-DD`` and a real calendar date
  (``2023-02-30`` fails).
* ``ExpectColumnValuesToBeIsoDatesBetween``: such a date within bounds (no future dates;
  a response date in the file's month), vectorised (GX's own between maps a Python
  function over every value).

Both are column map expectations: missing values are not checked (a separate
not-null rule says whether a value is required), and failing rows come back in
``unexpected_index_list``. Defining the classes registers them with GX. The engine
evaluates the same conditions as SQL (:mod:`pipelines.validation.compiled`); GX checks a
sample of every validation with these providers, and the two must agree.

Each has a pandas provider and a Spark one (pyspark column expressions, written apart
from the engine's SQL so that GX on Spark is a second opinion, not the same text run
twice; Spark SQL text): on the Spark engine GX validates every row with the Spark providers
(:mod:`pipelines.validation.gx_spark`), and their counts must be the engine's.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from great_expectations.compatibility.pyspark import functions as F
from great_expectations.execution_engine import PandasExecutionEngine, SparkDFExecutionEngine
from great_expectations.expectations.expectation import ColumnMapExpectation
from great_expectations.expectations.metrics import ColumnMapMetricProvider, column_condition_partial

from pipelines.nhs_number import HYPHENS, valid_series
from pipelines.text import SPACE_CHARS

ISO_DATE_RE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"


def parse_iso_dates(values: pd.Series) -> pd.Series:
    """``YYYY-MM-DD`` strings to datetime64; NaT where missing, misshapen or not a real
    calendar date. Each distinct value is parsed once (a file has few distinct dates)."""
    codes, uniques = pd.factorize(values.astype("string"), use_na_sentinel=True)
    text = pd.Series(uniques, dtype="string").str.strip()
    shaped = text.str.fullmatch(ISO_DATE_RE).fillna(False).astype(bool)
    parsed = pd.to_datetime(text.where(shaped), format="%Y-%m-%d", errors="coerce").to_numpy("datetime64[s]")
    out = np.full(len(values), np.datetime64("NaT"), dtype="datetime64[s]")
    known = codes >= 0
    out[known] = parsed[codes[known]]
    return pd.Series(out, index=values.index)


def iso_date_ok(values: pd.Series) -> pd.Series:
    """True where a value is a real calendar date written ``YYYY-MM-DD``."""
    return parse_iso_dates(values).notna()


def iso_date_between_ok(values: pd.Series, min_value=None, max_value=None) -> pd.Series:
    """False where a value is a real date outside ``[min_value, max_value]`` (ISO date
    strings, either may be None); True otherwise (a value that is not a date is not
    judged here)."""
    dates = parse_iso_dates(values)
    ok = pd.Series(True, index=values.index)
    if min_value is not None:
        ok &= ~(dates < pd.Timestamp(min_value)).fillna(False).astype(bool)
    if max_value is not None:
        ok &= ~(dates > pd.Timestamp(max_value)).fillna(False).astype(bool)
    return ok


# ------------------------------------------------------------------ the same on Spark
# Written as Spark SQL text, one ``F.expr`` per use (a pyspark column expression built
# call by call costs a JVM round trip per call: half a second for Modulus 11). Java's
# regular expressions (Spark's rlike, regexp_replace) read a class of literal characters
# as Python's re does; [0-9] is ASCII in both. No literal below holds a quote or a
# backslash (Spark SQL reads backslash escapes in string literals).
_SPARK_SPACE_OR_HYPHEN = f"[{SPACE_CHARS}{HYPHENS}]"


def spark_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def spark_nhs_number_ok_sql(col: str) -> str:
    """:func:`pipelines.nhs_number.valid_series` as Spark SQL over the column ``col`` (an
    identifier): every whitespace character and hyphen removed, then exactly ten ASCII
    digits, the Modulus 11 check digit (11 - weighted sum mod 11; 11 reads as 0, 10 is
    never valid) equal to the tenth, and not ten identical digits."""
    canon = f"regexp_replace({col}, '{_SPARK_SPACE_OR_HYPHEN}', '')"
    digit = [f"try_cast(substring({canon}, {i}, 1) AS INT)" for i in range(1, 11)]
    total = " + ".join(f"{digit[i]} * {10 - i}" for i in range(9))
    check = f"((11 - ({total}) % 11) % 11)"
    same = f"{canon} = repeat(substring({canon}, 1, 1), 10)"
    return (f"coalesce({canon} rlike '^[0-9]{{10}}$' AND {check} <> 10 AND {check} = {digit[9]}"
            f" AND NOT ({same}), false)")


def spark_iso_date_sql(col: str) -> str:
    """The value as a date where it is written ``YYYY-MM-DD`` and is a real calendar date,
    else null (:func:`parse_iso_dates`), as Spark SQL."""
    return (f"CASE WHEN coalesce({col} rlike '^{ISO_DATE_RE}$', false) "
            f"THEN to_date(try_to_timestamp({col}, 'yyyy-MM-dd')) END")


def spark_iso_date_between_ok_sql(col: str, min_value=None, max_value=None) -> str:
    """:func:`iso_date_between_ok` as Spark SQL."""
    d = spark_iso_date_sql(col)
    parts = ["true"]
    if min_value is not None:
        parts.append(f"NOT coalesce({d} < DATE '{dt_text(min_value)}', false)")
    if max_value is not None:
        parts.append(f"NOT coalesce({d} > DATE '{dt_text(max_value)}', false)")
    return " AND ".join(parts)


def dt_text(value) -> str:
    """A bound as ``YYYY-MM-DD`` text (a bound is declared as an ISO date)."""
    text = str(pd.Timestamp(value).date())
    return text


def _spark_column(kwargs: dict) -> str:
    return spark_ident(kwargs["_accessor_domain_kwargs"]["column"])


class ColumnValuesValidNhsNumber(ColumnMapMetricProvider):
    condition_metric_name = "column_values.valid_nhs_number"

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, **kwargs) -> pd.Series:
        return valid_series(column)

    @column_condition_partial(engine=SparkDFExecutionEngine)
    def _spark(cls, column, **kwargs):
        return F.expr(spark_nhs_number_ok_sql(_spark_column(kwargs)))


class ExpectColumnValuesToBeValidNhsNumber(ColumnMapExpectation):
    """Expect column values to be valid NHS numbers (10 digits after removing spaces and
    hyphens, Modulus 11 check digit, not ten identical digits)."""

    map_metric = "column_values.valid_nhs_number"
    success_keys = ("mostly",)
    library_metadata = {"tags": ["nhs", "care.data"], "contributors": ["care.data"]}


class ColumnValuesIsoDate(ColumnMapMetricProvider):
    condition_metric_name = "column_values.iso_calendar_date"

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, **kwargs) -> pd.Series:
        return iso_date_ok(column)

    @column_condition_partial(engine=SparkDFExecutionEngine)
    def _spark(cls, column, **kwargs):
        return F.expr(f"({spark_iso_date_sql(_spark_column(kwargs))}) IS NOT NULL")


class ExpectColumnValuesToBeIsoDates(ColumnMapExpectation):
    """Expect column values to be real calendar dates written YYYY-MM-DD."""

    map_metric = "column_values.iso_calendar_date"
    success_keys = ("mostly",)
    library_metadata = {"tags": ["dates", "care.data"], "contributors": ["care.data"]}


class ColumnValuesIsoDateBetween(ColumnMapMetricProvider):
    condition_metric_name = "column_values.iso_date_between"
    condition_value_keys = ("min_value", "max_value")

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, min_value=None, max_value=None, **kwargs) -> pd.Series:
        return iso_date_between_ok(column, min_value, max_value)

    @column_condition_partial(engine=SparkDFExecutionEngine)
    def _spark(cls, column, min_value=None, max_value=None, **kwargs):
        return F.expr(spark_iso_date_between_ok_sql(_spark_column(kwargs), min_value, max_value))


class ExpectColumnValuesToBeIsoDatesBetween(ColumnMapExpectation):
    """Expect YYYY-MM-DD dates to fall between min_value and max_value (inclusive, ISO
    date strings; either may be omitted). Values that are not real dates are not judged
    here: ExpectColumnValuesToBeIsoDates catches them."""

    map_metric = "column_values.iso_date_between"
    success_keys = ("min_value", "max_value", "mostly")
    min_value: str | None = None
    max_value: str | None = None
    library_metadata = {"tags": ["dates", "care.data"], "contributors": ["care.data"]}


CUSTOM = {
    "ExpectColumnValuesToBeIsoDatesBetween": ExpectColumnValuesToBeIsoDatesBetween,
    "ExpectColumnValuesToBeValidNhsNumber": ExpectColumnValuesToBeValidNhsNumber,
    "ExpectColumnValuesToBeIsoDates": ExpectColumnValuesToBeIsoDates,
}
