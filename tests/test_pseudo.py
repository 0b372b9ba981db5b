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


# --------------------------------------------------------------------------- vectorised = scalar
# person_ids computes validity and messages column-wise in Arrow and hashes each distinct
# message once; every value must give exactly what person_id gives for it.

import random  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402

NINES = [with_check_digit(f"999{i:06d}") for i in range(100, 140)]
VALID = [v for v in NINES if v is not None]


def _bad_check(v: str) -> str:
    return v[:9] + str((int(v[9]) + 1) % 10)


def messy_numbers() -> list:
    v, w = VALID[0], VALID[1]
    return [
        v, w, None, "", " ", "-", "\t", float("nan"),
        f"{v[:3]} {v[3:6]} {v[6:]}", f"{v[:3]}-{v[3:6]}-{v[6:]}", f" {v} ", f"--{v}--", f"{v[:5]} - {v[5:]}",
        # any whitespace and hyphen is removed (one normalisation: pipelines.nhs_number);
        # a zero-width space is not whitespace, so that one is not valid
        f"\t{v}", f"{v}\n", f"{v[:3]}\t{v[3:6]}\t{v[6:]}", f"{v[:3]}\u00a0{v[3:6]}\u00a0{v[6:]}",
        f"{v[:3]}\u3000{v[3:]}", f"{v}\u200b", f"{v[:3]}\u2010{v[3:]}",
        "\u0669" * 10, "\u0669" + v[1:], "\uff19" * 10, "".join(chr(0xFF10 + int(c)) for c in v),
        v[:9], v + "0", v[1:], v * 2, _bad_check(v), _bad_check(w),
        "0000000000", "9999999999", "000 000 0000",  # Modulus 11 holds, identical digits
        f"{v[:9]}.", f"+{v}", v.replace("9", "x", 1), f"{v[:9]}\x00",
    ]


def messy_hesids(n: int) -> list:
    base = ["H1", " H1 ", "H1\t", "\u3000H1\u2029", "\u200bH1", None, "", "   ", "\t\n", "\x1c",
            "HESID:H1", "h\u00e9sid", "H 2", float("nan")]
    return [base[i % len(base)] for i in range(n)]


def reference(numbers, hesids):
    return [pseudo.person_id(KEY, n, h) for n, h in zip(numbers, hesids)]


def _strings(values):
    return [None if (isinstance(v, float) and v != v) else v for v in values]


def test_vectorised_equals_scalar_on_messy_strings_all_input_kinds():
    numbers = messy_numbers()
    hesids = messy_hesids(len(numbers))
    want = reference(numbers, hesids)
    assert want[0] == expected(KEY, VALID[0])
    # a tab is removed like a space (one normalisation): the NHS number is used
    assert want[13] == expected(KEY, VALID[0])
    assert want[18] == pseudo.person_id(KEY, None, hesids[18])  # zero-width space: not valid
    s_numbers, s_hesids = _strings(numbers), _strings(hesids)
    inputs = {
        "arrow": (pa.array(s_numbers, pa.string()), pa.array(s_hesids, pa.string())),
        "large": (pa.array(s_numbers, pa.large_string()), pa.array(s_hesids, pa.large_string())),
        "dictionary": (pa.array(s_numbers, pa.string()).dictionary_encode(),
                       pa.array(s_hesids, pa.string()).dictionary_encode()),
        "chunked": (pa.chunked_array([s_numbers[:7], s_numbers[7:20], s_numbers[20:]], pa.string()),
                    pa.chunked_array([s_hesids[:3], s_hesids[3:]], pa.string())),
        "lists": (numbers, hesids),
        "object series": (pd.Series(numbers, dtype=object), pd.Series(hesids, dtype=object)),
        "string series": (pd.Series(s_numbers, dtype="string"), pd.Series(s_hesids, dtype="string[pyarrow]")),
        "tuples": (tuple(numbers), tuple(hesids)),
    }
    for name, (nums, hes) in inputs.items():
        got = pseudo.person_ids(KEY, nums, hes)
        assert got.type == pa.string(), name
        assert got.to_pylist() == want, name


def test_vectorised_equals_scalar_on_sliced_arrays():
    numbers = _strings(messy_numbers()) * 3
    hesids = _strings(messy_hesids(len(numbers)))
    nums, hes = pa.array(numbers, pa.string()), pa.array(hesids, pa.string())
    got = pseudo.person_ids(KEY, nums.slice(5, 50), hes.slice(5, 50))
    assert got.to_pylist() == reference(numbers[5:55], hesids[5:55])


def test_vectorised_equals_scalar_on_non_string_values():
    v = VALID[2]
    numbers = [int(v), float(v), int(_bad_check(v)), 12, -int(v), True, None, float("nan"), pd.NA,
               np.int64(v), np.str_(v), [v], b"x", v]
    hesids = [None, 7, 7.5, None, "H", False, 1234, None, None, None, None, None, None, pd.NA]
    want = reference(numbers, hesids)
    assert want[0] == expected(KEY, v) and want[1] == expected(KEY, "HESID:7")
    assert pseudo.person_ids(KEY, numbers, hesids).to_pylist() == want
    assert pseudo.person_ids(KEY, pd.Series(numbers, dtype=object), pd.Series(hesids, dtype=object)
                             ).to_pylist() == reference(
        pd.Series(numbers, dtype=object).astype(object).where(pd.Series(numbers, dtype=object).notna(), None),
        pd.Series(hesids, dtype=object).astype(object).where(pd.Series(hesids, dtype=object).notna(), None))
    ints = [int(v), int(_bad_check(v)), None, 999, int(VALID[3])]
    assert pseudo.person_ids(KEY, pa.array(ints, pa.int64()), None).to_pylist() == reference(ints, [None] * 5)
    assert pseudo.person_ids(KEY, pd.Series([int(v), 5]), None).to_pylist() == reference([int(v), 5], [None] * 2)


def test_vectorised_equals_scalar_on_random_messy_strings():
    rng = random.Random(20140101)
    alphabet = list("0123456789") * 4 + [" ", "-", "\t", "\u00a0", "\u0669", "\uff15", "a", "\u2007"]
    numbers = []
    for _ in range(3000):
        kind = rng.random()
        v = rng.choice(VALID)
        if kind < 0.4:  # a valid number with separators or junk inserted
            chars = list(v)
            for _ in range(rng.randrange(4)):
                chars.insert(rng.randrange(len(chars) + 1), rng.choice([" ", "-", " ", "-", "\t", "\u00a0"]))
            numbers.append("".join(chars))
        elif kind < 0.6:  # one digit changed: usually a bad check digit
            i = rng.randrange(10)
            numbers.append(v[:i] + str(rng.randrange(10)) + v[i + 1:])
        elif kind < 0.9:
            numbers.append("".join(rng.choice(alphabet) for _ in range(rng.randrange(8, 14))))
        else:
            numbers.append(rng.choice([None, "", " - "]))
    hesids = [rng.choice([None, "", " ", f"H{rng.randrange(50)}", f" H{rng.randrange(50)}\u3000"])
              for _ in numbers]
    want = reference(numbers, hesids)
    assert sum(w is not None and w == expected(KEY, n.replace(" ", "").replace("-", ""))
               for w, n in zip(want, numbers) if n) > 300  # plenty of valid numbers in the mix
    assert pseudo.person_ids(KEY, pa.array(numbers), pa.array(hesids)).to_pylist() == want
    assert pseudo.person_ids(KEY, numbers, hesids).to_pylist() == want


def test_vectorised_lengths_empty_and_missing_sides():
    assert pseudo.person_ids(KEY, pa.array([], pa.string()), None).to_pylist() == []
    assert pseudo.person_ids(KEY, None, ["H1", " ", None]).to_pylist() == reference([None] * 3, ["H1", " ", None])
    assert pseudo.person_ids(KEY, pa.nulls(2), pa.array(["H1", None])).to_pylist() == [
        expected(KEY, "HESID:H1"), None]
    with pytest.raises(ValueError):
        pseudo.person_ids(KEY, None, None)
    with pytest.raises(ValueError):
        pseudo.person_ids(KEY, pa.array([NHS]), pa.array(["H1", "H2"]))
    with pytest.raises(pseudo.MissingKeyError):
        pseudo.person_ids(None, None, None)


def test_lone_surrogates_fall_back_to_the_scalar_loop():
    numbers, hesids = [NHS, None, None], [None, "H\ud800", "H1"]
    with pytest.raises(UnicodeEncodeError):
        pseudo.person_ids(KEY, numbers, hesids)  # as person_id(KEY, None, "H\ud800") does
    assert pseudo.person_ids(KEY, [NHS, "x\ud800"], ["H1", "H2"]).to_pylist() == reference(
        [NHS, "x\ud800"], ["H1", "H2"])


@pytest.mark.parametrize("key", ["k", "test-key-for-unit-tests", "x" * 64, "y" * 65, "z" * 200,
                                 "clé-ünïcode", b"\x00\xff" * 40, b"\x01"])
def test_keyed_once_hmac_equals_hmac_new_per_message(key):
    kb = pseudo._key_bytes(key)
    messages = ["", NHS, "HESID:H1", "h\u00e9sid" * 50]
    assert pseudo._hmac_hex(kb, [m.encode() for m in messages]) == [pseudo._digest(kb, m) for m in messages]
    assert pseudo.person_ids(key, [NHS, None], [None, "H1"]).to_pylist() == [
        pseudo.person_id(key, NHS, None), pseudo.person_id(key, None, "H1")]


def test_strip_chars_are_exactly_what_str_strip_removes():
    spaces = "".join(ch for ch in map(chr, range(sys.maxunicode + 1)) if ch.isspace())
    assert pseudo._STRIP_CHARS == spaces
    assert all(ch.strip() == "" for ch in spaces)
