"""Data-quality datasets (pipelines/quality.py) on a small example computed by hand."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipelines import schemas
from pipelines.config import Settings
from pipelines.quality import data_quality_tables, is_held


@pytest.fixture
def settings():
    return Settings()


def ledger(rows):
    cols = ["file_name", "submission_id", "source", "submitter_code", "reporting_period", "status",
            "reason", "rows_received", "rows_quarantined", "rows_kept"]
    return pa.Table.from_pylist([dict(zip(cols, r)) for r in rows])


def dq_rules(rows):
    cols = ["period", "submission_id", "source", "submitter_code", "rule_id", "field", "severity",
            "rows_checked", "rows_failed"]
    t = pa.Table.from_pylist([dict(zip(cols, r)) for r in rows])
    return t.append_column("example_lines", pa.array([[] for _ in rows], pa.list_(pa.string())))


def dq_fields(rows):
    cols = ["period", "submission_id", "source", "submitter_code", "field", "rows", "rows_valid"]
    return pa.Table.from_pylist([dict(zip(cols, r)) for r in rows])


LEDGER = ledger([
    # RXX: a current NET file and a held one in 2024-03; an older superseded BULK left out
    ("sus_apc/a.csv", "A", "sus_apc", "RXX", "2024-03", "current", "", 100, 10, 90),
    ("sus_apc/b.csv", "B", "sus_apc", "RXX", "2024-03", "held", "60 of 100 rows rejected", 100, 60, 40),
    ("sus_apc/old.csv", "OLD", "sus_apc", "RXX", "2024-03", "superseded", "replaced", 50, 0, 50),
    # RYY: one good file
    ("sus_apc/c.csv", "C", "sus_apc", "RYY", "2024-03", "current", "", 10, 0, 10),
    ("reference/sites.csv", "sites", "reference", None, None, "current", "", None, None, None),
])
RULES = dq_rules([
    ("2024-03", "A", "sus_apc", "RXX", "EPIEND_BEFORE_EPISTART", "EPIEND", "reject", 100, 10),
    ("2024-03", "B", "sus_apc", "RXX", "EPIEND_BEFORE_EPISTART", "EPIEND", "reject", 100, 60),
    ("2024-03", "A", "sus_apc", "RXX", "NEWNHSNO_INVALID", "NEWNHSNO", "warn", 100, 2),
    ("2024-03", "B", "sus_apc", "RXX", "NEWNHSNO_INVALID", "NEWNHSNO", "warn", 100, 0),
    ("2024-03", "OLD", "sus_apc", "RXX", "EPIEND_BEFORE_EPISTART", "EPIEND", "reject", 50, 50),
    ("2024-03", "C", "sus_apc", "RYY", "EPIEND_BEFORE_EPISTART", "EPIEND", "reject", 10, 0),
    ("2024-03", "C", "sus_apc", "RYY", "GPPRAC_UNKNOWN", "GPPRAC", "warn", 0, 0),
])
FIELDS = dq_fields([
    ("2024-03", "A", "sus_apc", "RXX", "NEWNHSNO", 100, 98),
    ("2024-03", "B", "sus_apc", "RXX", "NEWNHSNO", 100, 100),
    ("2024-03", "A", "sus_apc", "RXX", "EPIEND", 100, 90),
    ("2024-03", "B", "sus_apc", "RXX", "EPIEND", 100, 40),
    ("2024-03", "OLD", "sus_apc", "RXX", "EPIEND", 50, 0),
    ("2024-03", "C", "sus_apc", "RYY", "NEWNHSNO", 10, 10),
    ("2024-03", "C", "sus_apc", "RYY", "EPIEND", 10, 10),
    ("2024-03", "C", "sus_apc", "RYY", "CONSULT", 10, 9),
])


def test_data_quality_by_hand(settings):
    out = data_quality_tables(RULES, FIELDS, LEDGER, settings)
    dq = out["data_quality"]
    assert dq.schema.equals(schemas.get("data_quality").arrow_schema(include_partition=True), check_metadata=False)
    rows = {(r["submitter_code"], r["rule_id"]): r for r in dq.to_pylist()}
    assert set(rows) == {("RXX", "EPIEND_BEFORE_EPISTART"), ("RXX", "NEWNHSNO_INVALID"),
                         ("RYY", "EPIEND_BEFORE_EPISTART"), ("RYY", "GPPRAC_UNKNOWN")}
    r = rows[("RXX", "EPIEND_BEFORE_EPISTART")]  # OLD (superseded) left out
    assert (r["rows_checked"], r["rows_failed"], r["pct_passed"]) == (200, 70, 65.0)
    assert rows[("RXX", "NEWNHSNO_INVALID")]["pct_passed"] == 99.0
    assert rows[("RYY", "GPPRAC_UNKNOWN")]["pct_passed"] is None  # nothing checked
    assert all(r["period"] == "2024-03" and r["source"] == "sus_apc" for r in dq.to_pylist())


def test_data_quality_summary_by_hand(settings):
    out = data_quality_tables(RULES, FIELDS, LEDGER, settings)
    s = out["data_quality_summary"]
    assert s.schema.equals(schemas.get("data_quality_summary").arrow_schema(include_partition=True),
                           check_metadata=False)
    rows = {r["submitter_code"]: r for r in s.to_pylist()}
    assert set(rows) == {"RXX", "RYY"}
    rxx = rows["RXX"]
    assert (rxx["rows_received"], rxx["rows_quarantined"], rxx["rows_kept"]) == (200, 70, 130)
    # NEWNHSNO 198/200 = 0.99; EPIEND 130/200 = 0.65 -> 100 * mean = 82.0
    assert rxx["dq_score"] == pytest.approx(82.0)
    assert rxx["pct_valid_nhs_number"] == pytest.approx(99.0)
    assert rxx["below_sanction_threshold"] is True  # score under 95
    assert rxx["held"] is True and rxx["held_reason"] == "60 of 100 rows rejected"
    ryy = rows["RYY"]
    # 1.0, 1.0, 0.9 -> 96.67; NHS 100%
    assert ryy["dq_score"] == pytest.approx(100 * 2.9 / 3)
    assert ryy["below_sanction_threshold"] is False
    assert ryy["held"] is False and ryy["held_reason"] is None
    assert ryy["rows_received"] == ryy["rows_kept"] == 10


def test_nhs_number_rate_alone_triggers_sanction(settings):
    fields = dq_fields([
        ("2024-03", "C", "sus_apc", "RYY", "NEWNHSNO", 100, 98),  # 98% < 99%
        ("2024-03", "C", "sus_apc", "RYY", "EPIEND", 100, 100),
    ])
    rows = data_quality_tables(dq_rules([]), fields, LEDGER, settings)["data_quality_summary"].to_pylist()
    row = next(r for r in rows if r["submitter_code"] == "RYY")
    # RXX has no dq rows here: still listed (from the ledger), with no score
    assert next(r for r in rows if r["submitter_code"] == "RXX")["dq_score"] is None
    assert row["dq_score"] == pytest.approx(99.0) and row["pct_valid_nhs_number"] == pytest.approx(98.0)
    assert row["below_sanction_threshold"] is True


def test_fft_nhs_number_reported_not_scored(settings):
    led = ledger([("fft/f.csv", "F", "fft", "RXX", "2024-03", "current", "", 4, 0, 4)])
    fields = dq_fields([
        ("2024-03", "F", "fft", "RXX", "NHS_NUMBER", 4, 1),
        ("2024-03", "F", "fft", "RXX", "RESPONSE", 4, 4),
    ])
    row = data_quality_tables(dq_rules([]), fields, led, settings)["data_quality_summary"].to_pylist()[0]
    assert row["dq_score"] == 100.0 and row["pct_valid_nhs_number"] == 25.0
    assert row["below_sanction_threshold"] is False


def test_thresholds_from_settings():
    s = Settings.load(env={"CAREDATA_DATA_QUALITY__SANCTION_SCORE": "80"})
    rows = {r["submitter_code"]: r for r in
            data_quality_tables(RULES, FIELDS, LEDGER, s)["data_quality_summary"].to_pylist()}
    assert rows["RXX"]["below_sanction_threshold"] is False  # 82 >= 80, NHS 99% >= 99%


def test_empty_inputs(settings):
    empty = ledger([])
    out = data_quality_tables(dq_rules([]), dq_fields([]), empty, settings)
    assert out["data_quality"].num_rows == 0 and out["data_quality_summary"].num_rows == 0


def test_is_held(settings):
    assert is_held(100, 51, settings) is True
    assert is_held(100, 50, settings) is False  # "more than half"
    assert is_held(0, 0, settings) is False
    assert is_held(3, 2, settings) is True
