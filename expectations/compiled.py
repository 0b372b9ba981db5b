"""The care.data suites' expectations evaluated column-wise, without GX's per-batch
machinery (issue #8: SUS validation ran at about 3,700 rows a second on GX's pandas
engine, 131 expectations each resolving its metrics batch by batch).

A rule is still declared once, as a Great Expectations expectation (class name and
keyword arguments, :mod:`expectations.rules`); :func:`evaluate` computes, for the rows of
a frame, exactly what GX's pandas engine computes for that expectation: the rows it
counts (``element_count - missing_count``) and the rows it reports unexpected. The
custom expectations share their conditions with their GX metric providers
(:mod:`expectations.custom`); the built-in ones follow GX's pandas implementations:

* a row condition (pandas parser) limits the rows as ``DataFrame.query`` does;
* ``ExpectColumnValuesToNotBeNull`` / ``ToBeNull`` count every row and fail the
  missing / present ones;
* the other column map expectations do not judge a missing value (it is neither counted
  nor unexpected); a regex is matched as GX matches it (``str.contains``), with ``\\s``
  spelled out so that pyarrow runs it (:mod:`pipelines.text`);
* ``ExpectColumnPairValuesAToBeGreaterThanB`` with
  ``ignore_row_if="either_value_is_missing"`` judges rows where both values are present.

:mod:`pipelines.validation` checks the two agree on a sample of every validation (GX
validates the sample rows, including rows the compiled rules failed) and raises when
they do not; ``tests/test_validation.py`` checks it on every rule of every feed.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from expectations.custom import iso_date_between_ok, iso_date_ok
from pipelines.nhs_number import valid_series
from pipelines.text import re2_friendly


def _in_set(s: pd.Series, kw: dict) -> pd.Series:
    return s.isin(kw["value_set"])


def _match_regex(s: pd.Series, kw: dict) -> pd.Series:
    return s.astype(str).str.contains(re2_friendly(kw["regex"]))


# Column map expectations: the condition a present value must meet.
MAP_CONDITIONS: dict[str, Callable[[pd.Series, dict], pd.Series]] = {
    "ExpectColumnValuesToBeInSet": _in_set,
    "ExpectColumnValuesToMatchRegex": _match_regex,
    "ExpectColumnValuesToBeValidNhsNumber": lambda s, kw: valid_series(s),
    "ExpectColumnValuesToBeIsoDates": lambda s, kw: iso_date_ok(s),
    "ExpectColumnValuesToBeIsoDatesBetween": lambda s, kw: iso_date_between_ok(
        s, kw.get("min_value"), kw.get("max_value")),
}
NULL_EXPECTATIONS = ("ExpectColumnValuesToNotBeNull", "ExpectColumnValuesToBeNull")
PAIR = "ExpectColumnPairValuesAToBeGreaterThanB"
SUPPORTED = frozenset(MAP_CONDITIONS) | frozenset(NULL_EXPECTATIONS) | {PAIR}

_KNOWN_KWARGS = {"column", "column_A", "column_B", "value_set", "regex", "min_value", "max_value",
                 "or_equal", "ignore_row_if", "row_condition", "condition_parser", "mostly"}


class NotCompiled(ValueError):
    """An expectation (or an argument of it) this module does not evaluate."""


def _bool(values) -> np.ndarray:
    return np.asarray(pd.Series(values).fillna(False).to_numpy(dtype=bool, na_value=False), dtype=bool)


def rows_in_condition(frame: pd.DataFrame, kw: dict) -> np.ndarray:
    """The rows a row condition keeps (all rows without one), as GX's pandas engine keeps
    them (``DataFrame.query`` with the condition's parser)."""
    cond = kw.get("row_condition")
    if not cond:
        return np.ones(len(frame), dtype=bool)
    kept = frame.query(cond, parser=kw.get("condition_parser") or "pandas").index
    return frame.index.isin(kept)


def evaluate(expectation: str, kw: dict, frame: pd.DataFrame,
             base: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(checked, failed)``: bool per row of ``frame``, the rows GX counts as checked
    (element count less missing count) and the rows it reports unexpected. ``base``: the
    rows the row condition keeps, if already worked out (:func:`rows_in_condition`)."""
    unknown = set(kw) - _KNOWN_KWARGS
    if expectation not in SUPPORTED or unknown:
        raise NotCompiled(f"{expectation} {sorted(unknown) if unknown else ''}".strip())
    if base is None:
        base = rows_in_condition(frame, kw)
    if expectation == PAIR:
        if kw.get("ignore_row_if") != "either_value_is_missing":
            raise NotCompiled(f"{expectation} with ignore_row_if={kw.get('ignore_row_if')!r}")
        a, b = frame[kw["column_A"]], frame[kw["column_B"]]
        checked = base & a.notna().to_numpy(dtype=bool) & b.notna().to_numpy(dtype=bool)
        ok = (a >= b) if kw.get("or_equal") else (a > b)
        return checked, checked & ~_bool(ok)
    s = frame[kw["column"]]
    present = s.notna().to_numpy(dtype=bool)
    if expectation == "ExpectColumnValuesToNotBeNull":
        return base, base & ~present
    if expectation == "ExpectColumnValuesToBeNull":
        return base, base & present
    checked = base & present
    failed = np.zeros(len(frame), dtype=bool)
    if checked.any():
        values = s[checked]
        failed[np.flatnonzero(checked)] = ~_bool(MAP_CONDITIONS[expectation](values, kw))
    return checked, failed
