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
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from great_expectations.execution_engine import PandasExecutionEngine
from great_expectations.expectations.expectation import ColumnMapExpectation
from great_expectations.expectations.metrics import ColumnMapMetricProvider, column_condition_partial

from pipelines.nhs_number import valid_series

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


class ColumnValuesValidNhsNumber(ColumnMapMetricProvider):
    condition_metric_name = "column_values.valid_nhs_number"

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, **kwargs) -> pd.Series:
        return valid_series(column)


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
