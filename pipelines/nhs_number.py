"""NHS number validity (methods.md "NHS number"), scalar and vectorised.

Remove spaces and hyphens; valid when exactly 10 digits whose tenth is the Modulus 11
check digit of the first nine (weights 10..2; 11 - remainder; 11 -> 0; 10 -> invalid),
and not ten identical digits.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

WEIGHTS = np.arange(10, 1, -1)  # 10, 9, ..., 2


def canonical(value: object) -> str | None:
    """Spaces and hyphens removed; None for missing."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).replace(" ", "").replace("-", "")
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
    if text is None or len(text) != 10 or not text.isdigit():
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


_SPACE_OR_HYPHEN = "[\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000-]"


def canonical_series(values: pd.Series) -> pd.Series:
    """Vectorised :func:`canonical` (string dtype, <NA> for missing/empty)."""
    # Python's \s spelled out (the same characters): pandas then runs the replace in
    # pyarrow (RE2) instead of one Python call per value.
    out = values.astype("string").str.replace(_SPACE_OR_HYPHEN, "", regex=True)
    return out.mask(out == "")


def valid_series(values: pd.Series) -> pd.Series:
    """Vectorised validity over any string-like Series. Returns a bool Series."""
    canon = canonical_series(values).fillna("")
    shaped = canon.str.fullmatch(r"\d{10}").fillna(False).to_numpy(dtype=bool)
    out = np.zeros(len(canon), dtype=bool)
    if shaped.any():
        digits = np.frombuffer(
            "".join(canon[shaped].tolist()).encode("ascii"), dtype=np.uint8
        ).reshape(-1, 10) - ord("0")
        total = digits[:, :9].astype(np.int64) @ WEIGHTS
        result = 11 - total % 11
        result = np.where(result == 11, 0, result)
        ok = (result != 10) & (result == digits[:, 9])
        same = (digits == digits[:, :1]).all(axis=1)
        out[shaped] = ok & ~same
    return pd.Series(out, index=values.index)
