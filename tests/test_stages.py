"""The bronze asset checks built from an ingest report: one per quality dimension."""

import pandas as pd

from pipelines import stages


def _report(failing_rows, subs=None, rejected=()):
    subs = subs or [{"file_name": "sus_apc/A.csv", "submission_id": "A", "rows_received": 10,
                     "rows_kept": 8, "rows_quarantined": 2, "held": False}]
    return {"metadata": {"submissions": subs, "rejected_files": list(rejected)},
            "failing_rules": pd.DataFrame(failing_rows, columns=[
                "submission_id", "rule_id", "field", "severity", "rows_checked", "rows_failed", "example_lines"])}


def test_each_rule_lands_in_its_dimension():
    assert stages._dimension("EPISTART_MISSING") == "completeness"
    assert stages._dimension("SUSRECID_DUPLICATE") == "uniqueness"
    assert stages._dimension("EPIEND_BEFORE_EPISTART") == "consistency"
    assert stages._dimension("PROCODE3_SUBMITTER") == "consistency"
    assert stages._dimension("SEX_CODE") == "validity"
    assert stages._dimension("NEWNHSNO_INVALID") == "validity"


def test_checks_pass_fail_and_show_counts_and_lines():
    rep = _report([("A", "SEX_CODE", "SEX", "reject", 10, 2, ["4", "7"]),
                   ("A", "NEWNHSNO_INVALID", "NEWNHSNO", "warn", 10, 1, ["9"])])
    checks = {c["name"]: c for c in stages.ingest_checks(rep)}
    assert checks["rows_accounted_for"]["passed"] and checks["rows_accounted_for"]["severity"] == "error"
    assert not checks["validity"]["passed"]
    assert checks["validity"]["description"] == "2 row failure(s) quarantined, 1 kept with a warning"
    table = checks["validity"]["metadata"]["failing_rules"]["markdown"]
    assert "| A | SEX_CODE | SEX | reject | 2 | 10 | 4, 7 |" in table
    assert checks["completeness"]["passed"] and checks["uniqueness"]["passed"]


def test_unbalanced_rows_fail_the_blocking_check():
    rep = _report([], subs=[{"file_name": "x", "submission_id": "X", "rows_received": 10, "rows_kept": 8,
                             "rows_quarantined": 1, "held": False}])
    check = stages.ingest_checks(rep)[0]
    assert check["name"] == "rows_accounted_for" and not check["passed"]


def test_rejected_file_reason_is_said_once():
    rep = _report([], rejected=[{"file_name": "gp/x.csv", "reason": "gp/x.csv: file name does not follow"}])
    check = {c["name"]: c for c in stages.ingest_checks(rep)}["no_rejected_files"]
    assert check["description"] == "gp/x.csv: file name does not follow"
