"""Linkage precision and recall by rank (pipelines/linkage_accuracy.py) on a hand-made truth.
The same function on the generator's truth after a whole run: tests/test_end_to_end.py
(test_linkage_precision_and_recall_by_rank_have_sensible_floors)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from pipelines.linkage_accuracy import COLUMNS, format_table, precision_recall_by_rank

from helpers import nhs_numbers

A, B, C, D, E, F, G = nhs_numbers(100, 7)


def _truth_and_linked():
    # episode  true person  in GP  type 1  quarantined | pipeline: rank  linked to
    # e1       A            yes    no      no          |           1     A      correct
    # e2       B            yes    no      no          |           1     B      correct
    # e3       C            yes    no      no          |           2     C      correct
    # e4       D            yes    no      no          |           5     E      wrong (a twin)
    # e5       E            yes    no      no          |           5     E      correct
    # e6       F            yes    no      no          |           -     -      missed
    # e7       G            no (a visitor)             |           -     -      not a true pair
    # e8       A            yes    yes     no          |           -     -      type 1: not a true pair
    # e9       B            yes    no      yes         |           1     B      quarantined: left out
    # e10      (not in the truth, e.g. the benchmark's HES history)  1  C    left out
    truth = pd.DataFrame({
        "provider_code": ["RA1"] * 9,
        "susrecid": [f"e{k}" for k in range(1, 10)],
        "true_nhs_number": [A, B, C, D, E, F, G, A, B],
        "in_any_extract": [True] * 6 + [False, True, True],
        "type1_patient": [False] * 7 + [True, False],
        "expected_quarantined": [False] * 8 + [True],
    })
    linked = pd.DataFrame({
        "provider_code": ["RA1"] * 9,
        "susrecid": ["e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8", "e10"],
        "match_rank": pd.array([1, 1, 2, 5, 5, None, None, None, 1], dtype="Int64"),
        "linked_nhs_number": [A, B, C, E, E, None, None, None, C],
    })
    return truth, linked


def test_precision_and_recall_by_rank_worked_out_by_hand():
    truth, linked = _truth_and_linked()
    got = precision_recall_by_rank(truth, linked).set_index("rank")
    assert list(got.reset_index().columns) == list(COLUMNS)
    assert list(got.index) == ["1", "2", "3", "4", "5", "1-5"]
    # episodes kept and known to the truth: e1..e8 (e9 quarantined, e10 not in the truth)
    assert (got["episodes"] == 8).all()
    # true pairs: e1..e6 (e7 a visitor, e8 a type 1 objector)
    assert (got["true_pairs"] == 6).all()
    # rank 1: 2 links (e1, e2), both right: precision 2/2, recall 2/6
    assert got.loc["1", ["links", "correct_links"]].tolist() == [2, 2]
    assert got.loc["1", "precision"] == 1.0 and got.loc["1", "recall"] == pytest.approx(2 / 6)
    # rank 2: e3, right: cumulative 3 of 3 links right, 3/6 recalled
    assert got.loc["2", "recall"] == pytest.approx(1 / 6)
    assert got.loc["2", "cumulative_precision"] == 1.0 and got.loc["2", "cumulative_recall"] == pytest.approx(3 / 6)
    # ranks 3 and 4: no link: precision undefined, recall 0, cumulative unchanged
    assert math.isnan(got.loc["3", "precision"]) and got.loc["3", "recall"] == 0.0
    assert got.loc["4", "cumulative_recall"] == pytest.approx(3 / 6)
    # rank 5: e4 (to the twin E: wrong) and e5 (right): precision 1/2, recall 1/6
    assert got.loc["5", ["links", "correct_links"]].tolist() == [2, 1]
    assert got.loc["5", "precision"] == 0.5 and got.loc["5", "recall"] == pytest.approx(1 / 6)
    # every link: 5 links, 4 right (e4 wrong); 4 of the 6 true pairs recalled (e4, e6 missed)
    assert got.loc["1-5", ["links", "correct_links"]].tolist() == [5, 4]
    assert got.loc["1-5", "precision"] == pytest.approx(4 / 5)
    assert got.loc["1-5", "recall"] == pytest.approx(4 / 6) == got.loc["5", "cumulative_recall"]


def test_a_wrong_link_lowers_precision_and_a_missed_one_recall():
    truth, linked = _truth_and_linked()
    base = precision_recall_by_rank(truth, linked).set_index("rank")
    wrong = linked.copy()
    wrong.loc[wrong.susrecid == "e1", "linked_nhs_number"] = B  # e1 now linked to someone else
    got = precision_recall_by_rank(truth, wrong).set_index("rank")
    assert got.loc["1", "precision"] == 0.5 < base.loc["1", "precision"]
    missed = linked.copy()
    missed.loc[missed.susrecid == "e3", ["match_rank", "linked_nhs_number"]] = [pd.NA, None]
    got = precision_recall_by_rank(truth, missed).set_index("rank")
    assert got.loc["2", "links"] == 0 and got.loc["1-5", "recall"] == pytest.approx(3 / 6)


def test_missing_columns_are_named_and_no_number_is_printed():
    truth, linked = _truth_and_linked()
    with pytest.raises(ValueError, match=r"linked: missing columns \['linked_nhs_number'\]"):
        precision_recall_by_rank(truth, linked.drop(columns="linked_nhs_number"))
    text = format_table(precision_recall_by_rank(truth, linked))
    assert "80.000%" in text and "true pairs 6 of 8 episodes" in text
    assert not any(n in text for n in (A, B, C, D, E, F, G))


def test_a_national_months_counts_stay_in_their_columns():
    # a national month links 1,489,516 episodes at rank 1: 9 characters, the width the
    # columns had, which ran links and correct together ("1,489,5161,489,516")
    table = pd.DataFrame([{"rank": "1", "links": 1_489_516, "correct_links": 1_489_516, "precision": 1.0,
                           "recall": 0.85233, "cumulative_precision": 1.0, "cumulative_recall": 0.85233,
                           "true_pairs": 1_747_573, "episodes": 1_790_308}])
    row = format_table(table).splitlines()[1].split()
    assert row[:3] == ["1", "1,489,516", "1,489,516"] and row[3] == "100.000%"
