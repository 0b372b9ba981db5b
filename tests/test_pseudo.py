"""Pseudonymisation (methods.md "Pseudonymisation"): pipelines/pseudo.py."""

from __future__ import annotations

import hashlib
import hmac

import pandas as pd
import pyarrow as pa
import pytest

from pipelines import pseudo
from pipelines.nhs_number import with_check_digit

KEY = "test-key-for-unit-tests"
# A generated number in the 999 range (never issued to a patient), valid Modulus 11.
NHS = with_check_digit("999000001")
NHS_2 = with_check_digit("999000002")


def expected(key: str, message: str) -> str:
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()[:32]


def test_generated_numbers_are_valid():
    assert NHS is not None and NHS.startswith("999") and len(NHS) == 10
    assert NHS_2 is not None and NHS_2 != NHS


def test_person_id_is_first_32_hex_of_hmac_sha256_of_the_nhs_number():
    pid = pseudo.person_id(KEY, NHS, None)
    assert pid == expected(KEY, NHS)
    assert len(pid) == 32 and all(c in "0123456789abcdef" for c in pid)


def test_person_id_uses_the_canonical_nhs_number():
    spaced = f"{NHS[:3]} {NHS[3:6]} {NHS[6:]}"
    hyphened = f"{NHS[:3]}-{NHS[3:6]}-{NHS[6:]}"
    assert pseudo.person_id(KEY, spaced, None) == expected(KEY, NHS)
    assert pseudo.person_id(KEY, hyphened, None) == expected(KEY, NHS)


def test_nhs_number_wins_over_pseudo_hesid():
    assert pseudo.person_id(KEY, NHS, "H123") == expected(KEY, NHS)


def test_pseudo_hesid_used_without_a_valid_nhs_number():
    assert pseudo.person_id(KEY, None, "H123") == expected(KEY, "HESID:H123")
    invalid = NHS[:9] + str((int(NHS[9]) + 1) % 10)  # wrong check digit
    assert pseudo.person_id(KEY, invalid, "H123") == expected(KEY, "HESID:H123")


def test_no_identifier_gives_no_id():
    assert pseudo.person_id(KEY, None, None) is None
    assert pseudo.person_id(KEY, "", "  ") is None


def test_same_key_same_id_other_key_other_id():
    assert pseudo.person_id(KEY, NHS, None) == pseudo.person_id(KEY, NHS, None)
    assert pseudo.person_id("another-key", NHS, None) != pseudo.person_id(KEY, NHS, None)
    assert pseudo.person_id(KEY, NHS_2, None) != pseudo.person_id(KEY, NHS, None)


@pytest.mark.parametrize("key", [None, "", "   "])
def test_missing_key_error(key):
    with pytest.raises(pseudo.MissingKeyError):
        pseudo.person_id(key, NHS, None)
    with pytest.raises(pseudo.MissingKeyError):
        pseudo.person_ids(key, pa.array([NHS]), None)


def test_key_and_identifiers_never_in_error_messages():
    with pytest.raises(pseudo.MissingKeyError) as err:
        pseudo.person_id(None, NHS, "H123")
    assert NHS not in str(err.value) and "H123" not in str(err.value)
    secret = 12345678901
    with pytest.raises(TypeError) as err:
        pseudo.person_id(secret, NHS, None)
    assert str(secret) not in str(err.value) and NHS not in str(err.value)


def test_vectorised_matches_scalar_over_arrow_and_pandas():
    numbers = [NHS, None, "not a number", NHS_2, NHS]
    hesids = ["H1", "H2", None, None, "H9"]
    want = [pseudo.person_id(KEY, n, h) for n, h in zip(numbers, hesids)]
    assert want[1] == expected(KEY, "HESID:H2") and want[2] is None
    got_arrow = pseudo.person_ids(KEY, pa.array(numbers), pa.chunked_array([hesids]))
    assert got_arrow.type == pa.string()
    assert got_arrow.to_pylist() == want
    got_pandas = pseudo.person_ids(KEY, pd.Series(numbers, dtype="string"), pd.Series(hesids))
    assert got_pandas.to_pylist() == want
    assert pseudo.person_ids(KEY, pa.array([NHS]), None).to_pylist() == [expected(KEY, NHS)]
