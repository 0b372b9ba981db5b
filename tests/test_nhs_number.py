import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipelines import nhs_number as nn


def test_worked_example_from_the_method():
    # 999 000 001 (test range): 9*10+9*9+9*8+0+0+0+0+0+1*2 = 245; 245 % 11 = 3; 11 - 3 = 8
    assert nn.check_digit("999000001") == 8
    assert nn.is_valid("999 000 0018")
    assert nn.is_valid("999-000-0018")
    assert not nn.is_valid("9990000017")


def test_remainder_ten_is_invalid_and_eleven_is_zero():
    # find nine digits whose result is 10 and 11 by search in the 999 test range
    ten = next(f"999{i:06d}" for i in range(10**6) if nn.check_digit(f"999{i:06d}") is None)
    assert not any(nn.is_valid(ten + str(d)) for d in range(10))
    zero = next(f"999{i:06d}" for i in range(10**6)
                if sum(int(c) * w for c, w in zip(f"999{i:06d}", range(10, 1, -1))) % 11 == 0)
    assert nn.check_digit(zero) == 0 and nn.is_valid(zero + "0")


@pytest.mark.parametrize("value", ["0000000000", "1111111111", "9999999999", "", None, "12345", "99900000001", "99900000a0"])
def test_invalid_shapes(value):
    assert not nn.is_valid(value)


@given(st.text(alphabet="0123456789 -", min_size=0, max_size=14))
def test_vectorised_matches_scalar(text):
    assert nn.valid_series(pd.Series([text])).iloc[0] == nn.is_valid(text)


@given(st.integers(min_value=0, max_value=999_999))
def test_with_check_digit_is_valid_when_defined(n):
    full = nn.with_check_digit(f"999{n:06d}")
    assert full is None or nn.is_valid(full)


# --------------------------------------------------------------------------- one normalisation
# Unicode whitespace and hyphens between digit groups are removed; only ASCII digits count.
VALID = "9990000018"  # 999 test range
SEPARATORS = [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\xa0", "\u2007", "\u202f", "\u3000", "\u2028", "\x85",
              "-", "\u2010", "\u2011"]
FOREIGN_DIGITS = ["\uff19", "\u0669", "\u06f9", "\u0969"]  # full-width, Arabic-Indic, Eastern Arabic-Indic, Devanagari 9


@pytest.mark.parametrize("sep", SEPARATORS)
def test_whitespace_and_hyphens_between_groups_are_removed(sep):
    value = f"{sep}999{sep}000{sep}{sep}0018{sep}"
    assert nn.canonical(value) == VALID and nn.is_valid(value)
    assert nn.canonical_series(pd.Series([value])).iloc[0] == VALID
    assert bool(nn.valid_series(pd.Series([value])).iloc[0])
    assert nn.canonical_arrow(pa.array([value])).to_pylist() == [VALID]


@pytest.mark.parametrize("digit", FOREIGN_DIGITS)
def test_non_ascii_digits_make_it_invalid(digit):
    value = VALID[:-1] + digit
    assert not nn.is_valid(value) and not bool(nn.valid_series(pd.Series([value])).iloc[0])


def test_dashes_that_are_not_hyphens_are_kept():
    for dash in ("\u2013", "\u2014", "\u2212"):  # en dash, em dash, minus sign
        assert not nn.is_valid(f"999{dash}000{dash}0018")


ALPHABET = st.sampled_from(list("0123456789") + SEPARATORS + FOREIGN_DIGITS + ["a", "\u2013", "\u200b", "."])


def _pieces():
    # mostly near-valid numbers with separators sprinkled in, some arbitrary text
    return st.one_of(
        st.lists(ALPHABET, max_size=16).map("".join),
        st.tuples(st.sampled_from([VALID, "9990000026", "4010232137", "0000000000"]),
                  st.lists(st.tuples(st.integers(0, 10), ALPHABET), max_size=4)).map(
            lambda t: _sprinkle(*t)),
        st.text(max_size=14),
    )


def _sprinkle(number, inserts):
    chars = list(number)
    for at, ch in sorted(inserts, reverse=True):
        chars.insert(at, ch)
    return "".join(chars)


@given(st.lists(st.one_of(st.none(), _pieces()), min_size=1, max_size=8))
def test_scalar_and_vectorised_paths_agree(values):
    series = pd.Series(values, dtype=object)
    canon = nn.canonical_series(series)
    valid = nn.valid_series(series)
    arrow = nn.canonical_arrow(pa.array(values, pa.string())).to_pylist()
    for i, v in enumerate(values):
        c = nn.canonical(v)
        assert (None if pd.isna(canon.iloc[i]) else canon.iloc[i]) == c == arrow[i], repr(v)
        assert bool(valid.iloc[i]) == nn.is_valid(v), repr(v)


@given(st.lists(st.one_of(st.none(), _pieces()), min_size=1, max_size=8))
def test_arrow_canonical_and_validity_agree_with_the_scalar_rule(values):
    # the fast path (digits only: no regex) and the rest (spaces, hyphens, other text)
    canon, valid = nn.canonical_valid_arrow(pa.array(values, pa.string()))
    for i, v in enumerate(values):
        assert canon[i].as_py() == nn.canonical(v), repr(v)
        assert valid[i].as_py() == nn.is_valid(v), repr(v)


def test_arrow_path_on_mixed_values_in_one_array():
    good = next(g for g in map(nn.with_check_digit, ("999123456", "999123457", "999123458")) if g)
    values = [good, f"{good[:3]} {good[3:6]} {good[6:]}", f"{good[:3]}-{good[3:]}", "", None, "1111111111",
              good[:9] + ("0" if good[9] != "0" else "1"), "\u0669" * 10, good + "0", f"\u00a0{good}"]
    canon, valid = nn.canonical_valid_arrow(pa.array(values, pa.string()))
    assert canon.to_pylist() == [good, good, good, None, None, "1111111111", values[6], values[7], good + "0", good]
    assert valid.to_pylist() == [True, True, True, False, False, False, False, False, False, True]


@given(st.lists(st.one_of(st.none(), _pieces()), min_size=1, max_size=6))
def test_person_ids_vectorised_agree_with_the_scalar_rule(values):
    from pipelines import pseudo

    key = "k" * 32
    got = pseudo.person_ids(key, pa.array(values, pa.string())).to_pylist()
    assert got == [pseudo.person_id(key, v) for v in values]
    # a valid number is hashed in its canonical form, whatever the separators
    for v, pid in zip(values, got):
        if nn.is_valid(v):
            assert pid == pseudo.person_id(key, nn.canonical(v))
