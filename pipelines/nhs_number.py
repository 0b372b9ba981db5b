"""NHS number validity (methods.md "NHS number"), scalar and vectorised: one
normalisation for every caller (ingest, validation, pseudonymisation, disclosure checks).

Canonical form: every whitespace character (Python's ``\\s``: spaces, tabs, line
breaks, no-break and other Unicode spaces; :data:`pipelines.text.SPACE_CHARS`) and
hyphen (``-``, U+2010 hyphen, U+2011 non-breaking hyphen) removed, wherever it stands.
Valid when the canonical form is exactly 10 ASCII digits (``0``-``9``: a full-width or
Arabic-Indic digit makes it invalid) whose tenth is the Modulus 11 check digit of the
first nine (weights 10..2; 11 - remainder; 11 -> 0; 10 -> invalid), and not ten identical
digits. :func:`canonical`/:func:`is_valid` (one value), :func:`canonical_series`/
:func:`valid_series` (pandas) and :func:`canonical_arrow` (Arrow) agree on every input.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.text import SPACE_CHARS

WEIGHTS = np.arange(10, 1, -1)  # 10, 9, ..., 2
HYPHENS = "\u2010\u2011-"  # hyphen, non-breaking hyphen, hyphen-minus ('-' last in a class)
_SPACE_OR_HYPHEN = f"[{SPACE_CHARS}{HYPHENS}]"  # the same in Python's re and in RE2 (pipelines.text)
_SPACE_OR_HYPHEN_RE = re.compile(_SPACE_OR_HYPHEN)


def is_missing(value: object) -> bool:
    """None, NaN, NaT and pandas' NA are missing; anything else (an empty string too) is not."""
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def canonical(value: object) -> str | None:
    """Whitespace and hyphens removed; None for missing or empty."""
    if is_missing(value):
        return None
    text = _SPACE_OR_HYPHEN_RE.sub("", str(value))
    return text or None


def check_digit(first_nine: str) -> int | None:
    """The Modulus 11 check digit of nine digits, or None when the result is 10."""
    total = sum(int(ch) * w for ch, w in zip(first_nine, WEIGHTS))
    result = 11 - total % 11
    if result == 11:
        return 0
    if result == 10:
        return None
    return result


def is_valid(value: object) -> bool:
    text = canonical(value)
    if text is None or len(text) != 10 or not (text.isascii() and text.isdigit()):
        return False
    if len(set(text)) == 1:
        return False
    cd = check_digit(text[:9])
    return cd is not None and cd == int(text[9])


def with_check_digit(first_nine: str) -> str | None:
    """Complete nine digits into a valid NHS number, or None if none exists (check result
    10, or ten identical digits)."""
    cd = check_digit(first_nine)
    if cd is None:
        return None
    full = f"{first_nine}{cd}"
    return None if len(set(full)) == 1 else full


def canonical_arrow(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Vectorised :func:`canonical` over Arrow text (null for missing or empty)."""
    text = values if pa.types.is_string(values.type) or pa.types.is_large_string(values.type) \
        else values.cast(pa.string())
    out = pc.replace_substring_regex(text, _SPACE_OR_HYPHEN, "")
    return pc.if_else(pc.equal(out, ""), pa.scalar(None, out.type), out)


def canonical_series(values: pd.Series) -> pd.Series:
    """Vectorised :func:`canonical` (string dtype, <NA> for missing/empty)."""
    # Python's \s spelled out (pipelines.text): pandas then runs the replace in pyarrow.
    out = values.astype("string").str.replace(_SPACE_OR_HYPHEN, "", regex=True)
    return out.mask(out == "")


def _mod11_rows(digits: np.ndarray) -> np.ndarray:
    """Per row of an (n, 10) matrix of digits: the Modulus 11 check digit matches (a check
    result of 10 is never valid) and the ten digits are not all the same."""
    total = digits[:, :9].astype(np.int64) @ WEIGHTS
    result = 11 - total % 11
    result = np.where(result == 11, 0, result)
    ok = (result != 10) & (result == digits[:, 9])
    return ok & ~(digits == digits[:, :1]).all(axis=1)


def _ascii_digits(values: pd.Series) -> np.ndarray:
    """Ten-ASCII-digit strings as an (n, 10) array of digits, read from the Arrow string
    array's value buffer (no Python string per value)."""
    arr = pa.array(values, type=pa.string(), from_pandas=True)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset:arr.offset + len(arr) + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
    return data.reshape(-1, 10) - ord("0")


def valid_series(values: pd.Series) -> pd.Series:
    """Vectorised validity over any string-like Series. Returns a bool Series."""
    return pd.Series(valid_canonical(canonical_series(values)), index=values.index)


def valid_canonical(canon: pd.Series) -> np.ndarray:
    """Validity of values already made canonical (:func:`canonical_series`), as bools."""
    canon = canon.fillna("")
    shaped = canon.str.fullmatch(r"[0-9]{10}").fillna(False).to_numpy(dtype=bool)
    out = np.zeros(len(canon), dtype=bool)
    if shaped.any():
        digits = _ascii_digits(canon[shaped])
        out[shaped] = _mod11_rows(digits)
    return out


def canonical_valid_arrow(values) -> tuple[pa.Array, pa.Array]:
    """:func:`canonical_series` and :func:`valid_canonical` in Arrow, in one pass: each
    value's canonical form (null for missing or empty) and whether it is a valid NHS
    number. Most values are already ASCII digits only, so nothing can be removed from
    them: the regular expression runs on the other values only."""
    arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values, pa.string(),
                                                                                   from_pandas=True)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], pa.string())
    if arr.type != pa.string():
        arr = arr.cast(pa.string())
    plain = pc.fill_null(pc.ascii_is_decimal(arr), True)  # digits only (or missing): already canonical
    rest = pc.invert(plain)
    if pc.any(rest).as_py():
        fixed = canonical_arrow(arr.filter(rest))
        canon = pc.replace_with_mask(arr, rest, fixed)
    else:
        canon = arr
    shaped = pc.fill_null(pc.and_(pc.equal(pc.binary_length(canon), 10), pc.ascii_is_decimal(canon)), False)
    out = np.zeros(len(canon), dtype=bool)
    mask = shaped.to_numpy(zero_copy_only=False)
    if mask.any():
        picked = canon.filter(shaped)
        offsets = np.frombuffer(picked.buffers()[1], dtype=np.int32)[picked.offset:picked.offset + len(picked) + 1]
        data = np.frombuffer(picked.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
        digits = data.reshape(-1, 10) - ord("0")
        out[mask] = _mod11_rows(digits)
    return canon, pa.array(out, pa.bool_())
