import pandas as pd
import pytest
from hypothesis import given, strategies as st

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
