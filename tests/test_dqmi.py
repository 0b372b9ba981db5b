"""NHS Digital's Data Quality Maturity Index beside dq_score (pipelines/quality.py,
expectations/ ScoredField defaults), on hand-made tables with the numbers worked out."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from expectations.rules import ScoredField
from pipelines.config import Settings
from pipelines.nhs_number import with_check_digit
from pipelines.quality import data_quality_tables, dqmi_items


def _ledger(rows):
    cols = ["file_name", "submission_id", "source", "submitter_code", "reporting_period", "status",
            "reason", "rows_received", "rows_quarantined", "rows_kept"]
    return pa.Table.from_pylist([dict(zip(cols, r)) for r in rows])


def _fields(rows):
    cols = ["period", "submission_id", "source", "submitter_code", "field", "rows", "rows_valid",
            "rows_present", "rows_default"]
    return pa.Table.from_pylist([dict(zip(cols, r)) for r in rows])


def _rules():
    cols = ["period", "submission_id", "source", "submitter_code", "rule_id", "field", "severity",
            "rows_checked", "rows_failed"]
    return pa.Table.from_pylist([], schema=pa.schema([(c, pa.int64() if c.startswith("rows") else pa.string())
                                                      for c in cols]))


def _header(sid, names):
    return pa.table({"submission_id": [sid] * len(names), "column_name": list(names)})


# A GP practice's month: one extract of 100 rows whose header lacks LSOA.
LEDGER = _ledger([("gp/a.csv", "A", "gp", "P1", "2024-03", "current", "", 100, 0, 100)])
FIELDS = _fields([
    # field               rows valid present default
    ("2024-03", "A", "gp", "P1", "NHS_NUMBER", 100, 100, 100, 0),        # no defaults: item 100
    ("2024-03", "A", "gp", "P1", "DATE_OF_BIRTH", 100, 100, 100, 0),     # item 100
    ("2024-03", "A", "gp", "P1", "SEX", 100, 98, 100, 10),               # 10 of 98 valid are 0/9: item (98-10)/100 = 88
    ("2024-03", "A", "gp", "P1", "POSTCODE", 100, 76, 80, 4),            # 4 ZZ99 postcodes: item (76-4)/100 = 72
    ("2024-03", "A", "gp", "P1", "LSOA", 100, 0, 0, 0),                  # not in the header: not sent
    ("2024-03", "A", "gp", "P1", "ETHNIC_CATEGORY", 100, 50, 50, 25),    # 25 Z/99: item (50-25)/100 = 25
    ("2024-03", "A", "gp", "P1", "REGISTRATION_DATE", 100, 100, 100, 0), # item 100
])
HEADER = _header("A", ["NHS_NUMBER", "DATE_OF_BIRTH", "SEX", "POSTCODE", "ETHNIC_CATEGORY",
                       "REGISTRATION_DATE", "OBJECTION"])


def test_dqmi_summary_by_hand():
    out = data_quality_tables(_rules(), FIELDS, LEDGER, Settings(), submission_columns=HEADER)
    row = out["data_quality_summary"].to_pylist()[0]
    # dq_score as methods.md defines it: 100 x mean(valid / rows) over the 7 scored fields
    # = (100 + 100 + 98 + 76 + 0 + 50 + 100) / 7 = 524 / 7
    assert row["dq_score"] == pytest.approx(524 / 7)
    # coverage: 6 of the feed's 7 items were in the header
    assert row["dqmi_coverage"] == pytest.approx(100 * 6 / 7)
    # over the 6 items sent: completeness (100+100+100+80+50+100)/6, validity
    # (100+100+98+95+100+100)/6 (POSTCODE 76 of 80 present are valid = 95)
    assert row["dqmi_completeness"] == pytest.approx(530 / 6)
    assert row["dqmi_validity"] == pytest.approx(593 / 6)
    # default share over the items that have defaults (SEX, POSTCODE, ETHNIC_CATEGORY):
    # 10/98, 4/76 and 25/50 of their valid values
    assert row["dqmi_default_share"] == pytest.approx((1000 / 98 + 400 / 76 + 50) / 3)
    # DQMI = mean item score (100+100+88+72+25+100)/6 x coverage 6/7 = 485/7
    assert row["dqmi_score"] == pytest.approx(485 / 7)
    items = out["dqmi_items"].set_index("field")
    assert items.at["SEX", "item_score"] == pytest.approx(88.0)
    assert items.at["POSTCODE", "validity"] == pytest.approx(95.0)
    assert not items.at["LSOA", "sent"] and items.at["LSOA", "coverage"] == 0.0
    assert np.isnan(items.at["NHS_NUMBER", "default_share"])  # no default codes: not applicable


def test_dqmi_without_headers_or_counts_is_empty_not_invented():
    # Parts written before the header and the DQMI counts were recorded: dq_score as before,
    # DQMI coverage and score empty, completeness empty (rows_present unknown).
    old = FIELDS.drop_columns(["rows_present", "rows_default"])
    row = data_quality_tables(_rules(), old, LEDGER, Settings())["data_quality_summary"].to_pylist()[0]
    assert row["dq_score"] == pytest.approx(524 / 7)
    assert row["dqmi_coverage"] is None and row["dqmi_score"] is None
    assert row["dqmi_completeness"] is None and row["dqmi_default_share"] is None


def test_dqmi_coverage_over_two_submissions():
    # Two FFT files of one provider in the month; the second's header lacks SITE_CODE.
    # FFT items: PROVIDER_CODE, SITE_CODE, SETTING, RESPONSE_DATE, RESPONSE (NHS number not scored).
    led = _ledger([("fft/a.csv", "A", "fft", "RXX", "2024-03", "current", "", 10, 0, 10),
                   ("fft/b.csv", "B", "fft", "RXX", "2024-03", "current", "", 10, 0, 10)])
    names = ["PROVIDER_CODE", "SITE_CODE", "SETTING", "RESPONSE_DATE", "RESPONSE"]
    fields = _fields([("2024-03", s, "fft", "RXX", f, 10, 10 if (s, f) != ("B", "SITE_CODE") else 0,
                       10 if (s, f) != ("B", "SITE_CODE") else 0, 0) for s in "AB" for f in names])
    headers = pa.concat_tables([_header("A", names + ["RESPONSE_ID"]),
                                _header("B", [n for n in names if n != "SITE_CODE"] + ["RESPONSE_ID"])])
    row = data_quality_tables(_rules(), fields, led, Settings(), submission_columns=headers)[
        "data_quality_summary"].to_pylist()[0]
    # SITE_CODE in 1 of 2 headers: coverage (1 + 0.5 + 1 + 1 + 1) / 5 = 0.9
    assert row["dqmi_coverage"] == pytest.approx(90.0)
    # SITE_CODE sent (by A): 10 valid of 20 rows -> item 50; others 100: mean 450/5 = 90; x 0.9
    assert row["dqmi_score"] == pytest.approx(81.0)


def test_nhs_digital_appendix_example_thresholds():
    # NHS Digital, DQMI methodology, appendix 1, dataset 1: items of 2,500 records with a
    # 2% and a 0% threshold for the proportion of defaults.
    items = (ScoredField("ONE", defaults=("9",), default_threshold=0.02),
             ScoredField("THREE", defaults=("9",), default_threshold=0.0))
    f = pd.DataFrame({"g": [0, 0], "field": ["ONE", "THREE"], "rows": [2500, 2500],
                      "rows_valid": [2400, 2000], "rows_present": [2500.0, 2500.0],
                      "rows_default": [100.0, 100.0]})
    got = dqmi_items(f, np.array(["x"], dtype=object), [["S"]], {"S": frozenset({"ONE", "THREE"})},
                     items_of=lambda source: items).set_index("field")
    # ONE: excess = 100 - 0.02 x 2500 = 50; (2400 - 50) / 2500 = 94.0
    assert got.at["ONE", "defaults_in_excess"] == 50 and got.at["ONE", "item_score"] == pytest.approx(94.0)
    # THREE: excess 100; (2000 - 100) / 2500 = 76.0
    assert got.at["THREE", "item_score"] == pytest.approx(76.0)


def _frame(rows, columns):
    df = pd.DataFrame([{c: r.get(c) for c in columns} for r in rows], columns=columns).astype("string")
    df["_line"] = np.arange(2, 2 + len(rows), dtype=np.int64)
    return df


def test_validation_counts_present_and_default_values():
    from pipelines.validation import ValidationContext, validate

    nhs = with_check_digit("999000001")
    good = {"NHS_NUMBER": nhs, "DATE_OF_BIRTH": "1980-05-05", "SEX": "1", "POSTCODE": "LS1 4AP",
            "ETHNIC_CATEGORY": "A", "REGISTRATION_DATE": "2000-01-01"}
    rows = [good,
            {**good, "SEX": "0", "POSTCODE": "ZZ99 3WZ"},      # sex not known; pseudo postcode
            {**good, "SEX": "9", "ETHNIC_CATEGORY": "Z"},      # sex not specified; ethnicity not stated
            {**good, "ETHNIC_CATEGORY": "99", "POSTCODE": None},  # ethnicity not known; no postcode
            {**good, "ETHNIC_CATEGORY": "QQ"}]                 # invalid: not counted as a default
    cols = ["NHS_NUMBER", "DATE_OF_BIRTH", "SEX", "POSTCODE", "LSOA", "ETHNIC_CATEGORY", "REGISTRATION_DATE",
            "OBJECTION"]
    out = validate("gp", _frame(rows, cols), period="2024-04", submitter="A81001",
                   file_name="gp/GP_A81001_20240401.csv", context=ValidationContext(today=dt.date(2024, 4, 10)))
    fs = out.field_scores.set_index("field")
    assert fs.loc["SEX", ["rows", "rows_valid", "rows_present", "rows_default"]].tolist() == [5, 5, 5, 2]
    assert fs.loc["POSTCODE", ["rows_valid", "rows_present", "rows_default"]].tolist() == [4, 4, 1]
    assert fs.loc["ETHNIC_CATEGORY", ["rows_valid", "rows_present", "rows_default"]].tolist() == [4, 5, 2]
    assert fs.loc["LSOA", ["rows_present", "rows_default"]].tolist() == [0, 0]


def test_sus_nhs_number_status_other_than_01_is_a_default():
    from pipelines.validation import ValidationContext, validate

    base = {"PROCODE3": "RXX", "EPISTART": "2024-03-01", "EPIEND": "2024-03-02", "ADMIDATE": "2024-03-01",
            "ADMIMETH": "11", "DISMETH": "1", "SEX": "1", "NEWNHSNO": with_check_digit("999000002"),
            "NHSNOIND": "01"}
    rows = [{**base, "SUSRECID": "1"},
            {**base, "SUSRECID": "2", "NHSNOIND": "03"},   # valid number, trace required: a default
            {**base, "SUSRECID": "3", "NHSNOIND": None},   # status not given: not a default
            {**base, "SUSRECID": "4", "ADMIMETH": "99", "DISMETH": "9"}]  # not known codes
    cols = list(base) + ["SUSRECID"]
    out = validate("sus_apc", _frame(rows, cols), period="2024-03", submitter="RXX",
                   file_name="sus_apc/SUS_APC_RXX_202403_20240405T120000_BULK.csv",
                   context=ValidationContext(today=dt.date(2024, 4, 10)))
    fs = out.field_scores.set_index("field")
    assert fs.at["NEWNHSNO", "rows_default"] == 1
    assert fs.at["ADMIMETH", "rows_default"] == 1 and fs.at["DISMETH", "rows_default"] == 1
    assert fs.at["SEX", "rows_default"] == 0
