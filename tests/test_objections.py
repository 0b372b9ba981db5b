"""Type 1 objections are binding: a type 1 GP row is never stored beyond the moment it is
read (not in silver, quarantine, ledger, data-quality tables, Data Docs, logs or error
messages); only its count per practice survives. Runs the real validator.

The NHS numbers are generated in the 999 test range with valid check digits; never real.
"""

from __future__ import annotations

import json
import logging

from pipelines import current, ingest
from pipelines.config import Settings
from pipelines.storage import Store
from pipelines.warehouse import Warehouse

from helpers import land, nhs_numbers, spaced, written_texts

HEADER = "NHS_NUMBER,DATE_OF_BIRTH,SEX,POSTCODE,REGISTRATION_DATE,DEREGISTRATION_DATE,OBJECTION"
T1_DOB = "1911-11-11"  # only type 1 rows carry this date of birth and postcode
T1_POSTCODE = "ZZ9 9ZZ"


def test_type1_rows_never_stored_only_counted(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    landing = tmp_path / "landing"
    wh_root = tmp_path / "warehouse"
    ordinary = nhs_numbers(100, 4)
    t1 = nhs_numbers(500, 5)
    type2 = nhs_numbers(800, 1)[0]
    rows = [
        f"{ordinary[0]},1970-01-01,1,CB2 0QQ,2000-01-01,,",
        f"{t1[0]},{T1_DOB},2,{T1_POSTCODE},2000-01-01,,9Nu0",
        f"{ordinary[1]},1980-05-05,2,cb20qq,2001-01-01,,",
        f"{spaced(t1[1])},{T1_DOB},1,{T1_POSTCODE},2000-01-01,,9Nu0",
        f"{type2},1990-01-01,2,CB2 0QQ,2002-01-01,,9Nu4",
        f"{t1[2]},not-a-date,7,{T1_POSTCODE},,,9Nu0",  # would be quarantined if it were kept
        f"{ordinary[2]},,1,CB2 0QQ,2003-01-01,,",  # quarantined: no date of birth
        f"{t1[3]},{T1_DOB},2,{T1_POSTCODE},2000-01-01,, 9nu0 ",
        f"{ordinary[3]},1960-01-01,1,CB2 0QQ,2004-01-01,,",
    ]
    land(landing, "gp/GP_A81001_20240131.csv", HEADER + "\n" + "\n".join(rows) + "\n")
    land(landing, "gp/GP_A81002_20240115.csv",
         HEADER + f"\n{t1[4]},{T1_DOB},1,{T1_POSTCODE},2000-01-01,,9Nu0\n{nhs_numbers(900, 1)[0]},1950-01-01,1,,2000-01-01,,\n")
    # A file rejected whole (ragged) holding a type 1 row: the reason must not quote it.
    land(landing, "gp/GP_A81003_20240120.csv", HEADER + f"\n{t1[0]},{T1_DOB}\n")

    store, wh = Store(landing), Warehouse(Store(wh_root))
    report = ingest.ingest("gp", "2024-01", store, wh, Settings(), data_docs_dir=str(wh_root / "data_docs"))

    # Counted, per practice, and never counted as received.
    extracts = {r["practice_code"]: r for r in current.gp_current(wh, "2024-01").extracts.to_pylist()}
    assert extracts["A81001"]["type1_objections"] == 4
    assert extracts["A81002"]["type1_objections"] == 1
    assert extracts["A81001"]["type2_objections"] == 1
    assert extracts["A81001"]["rows_received"] == 5
    led = ingest.read_ledger(wh).to_pandas().set_index("file_name")
    a = led.loc["gp/GP_A81001_20240131.csv"]
    assert (a["rows_received"], a["rows_kept"], a["rows_quarantined"], a["type1_objections"]) == (5, 4, 1, 4)
    assert led.at["gp/GP_A81003_20240120.csv", "status"] == "rejected"
    assert report.type1_objections == 5 and report.rows_read == 6

    # The type 2 patient is kept (aggregate figures count them), flagged.
    patients = wh.read("gp_patients", ["2024-01"]).to_pandas()
    assert patients.loc[patients["nhs_number"] == type2, "type2_objection"].tolist() == [True]
    assert set(ordinary[:2] + ordinary[3:]) <= set(patients["nhs_number"])
    assert len(wh.read("quarantine", ["2024-01"])) == 1

    # Nowhere: every file the pipeline wrote (values of every Parquet column too), the
    # report, the logs.
    written = list(written_texts(wh_root))
    assert any(name.endswith("(values)") for name, _ in written)
    assert any("data_docs" in name for name, _ in written)
    haystacks = written + [("report", json.dumps(report.as_metadata(), default=str)),
                           ("logs", caplog.text + "\n".join(r.getMessage() for r in caplog.records))]
    needles = t1 + [spaced(n) for n in t1] + [T1_DOB, T1_POSTCODE, T1_POSTCODE.replace(" ", "")]
    found = [(name, needle) for name, text in haystacks for needle in needles if needle in text]
    assert found == []
    # ... while the ordinary patients are there, so the search can find what it looks for.
    assert any(ordinary[0] in text for _, text in written)
