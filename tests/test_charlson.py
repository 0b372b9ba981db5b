"""Charlson comorbidity index, Quan (2005) ICD-10 coding, original weights."""

from __future__ import annotations

import pytest

from pipelines.charlson import QUAN_ICD10, charlson_index, charlson_indices, conditions


@pytest.mark.parametrize("codes, expected", [
    ([], 0),
    (None, 0),
    (["J189", "R69X"], 0),                    # pneumonia, no Charlson condition
    (["I219"], 1),                            # MI
    (["I21.9", "I252"], 1),                   # MI twice counts once
    (["I500", "J440", "K257"], 3),            # CHF + COPD + peptic ulcer
    (["E119"], 1),                            # diabetes without complications
    (["E119", "E112"], 2),                    # with complications supersedes: 2, not 3
    (["K703"], 1),                            # mild liver disease
    (["K703", "I850"], 3),                    # moderate/severe supersedes mild: 3, not 4
    (["C509"], 2),                            # malignancy
    (["C509", "C787"], 6),                    # metastatic supersedes malignancy: 6, not 8
    (["C440"], 0),                            # skin other than melanoma: not counted
    (["C439"], 2),                            # melanoma counts
    (["B20", "N185", "G819", "F03X"], 6 + 2 + 2 + 1),
    (["i63.9-", " g45.9 "], 1),               # case, dots, filler and spaces
    (["I42"], 0),                             # I42.0 and I42.5-9 only, not the bare category
    (["I421"], 0),
    (["I420"], 1),
])
def test_charlson_index(codes, expected):
    assert charlson_index(codes) == expected


def test_conditions_and_many():
    assert conditions(["E112", "E119", "G30"]) == {"diabetes_with_complications", "dementia"}
    assert charlson_indices([["I219"], [], ["C787", "N18"]]) == [1, 0, 8]


def test_table_has_seventeen_conditions_and_charlson_weights():
    weights = {k: w for k, (w, _) in QUAN_ICD10.items()}
    assert len(weights) == 17
    assert sorted(weights.values()) == [1] * 10 + [2] * 4 + [3] + [6] * 2
