"""Schema drift (pipelines/drift.py): headers recorded at take-in (submission_columns),
columns added, missing and renamed against the declared feed and the submitter's
previous submission, never a value of a row."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines import drift, ingest
from pipelines.config import Settings
from pipelines.storage import Store
from pipelines.warehouse import Warehouse
from tests.helpers import land, nhs_numbers

GP_COLS = ["NHS_NUMBER", "DATE_OF_BIRTH", "SEX", "POSTCODE", "LSOA", "ETHNIC_CATEGORY", "REGISTRATION_DATE",
           "DEREGISTRATION_DATE", "DATE_OF_DEATH", "OBJECTION"]
HES_SAMPLE = Path("/work/shared/reference/artificial_hes/artificial_hes_apc_0102.csv")


def _gp_text(cols: list[str], numbers: list[str]) -> str:
    values = {"DATE_OF_BIRTH": "1961-02-03", "SEX": "2", "POSTCODE": "LS1 4AP", "LSOA": "E01000001",
              "ETHNIC_CATEGORY": "A", "ETHNIC_CATEGRY": "A", "REGISTRATION_DATE": "2001-01-01"}
    lines = [",".join(cols)]
    for n in numbers:
        lines.append(",".join(n if c == "NHS_NUMBER" else values.get(c, "") for c in cols))
    return "\n".join(lines) + "\n"


@pytest.fixture
def zone(tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    return landing, Warehouse(Store(tmp_path / "warehouse")), Settings()


def test_second_extract_drops_a_column_and_renames_another(zone):
    landing, wh, settings = zone
    numbers = nhs_numbers(100, 6)
    land(landing, "gp/GP_A81001_20240301.csv", _gp_text(GP_COLS, numbers))
    # a month later: LSOA dropped, ETHNIC_CATEGORY misspelt (one letter lost)
    second = [c for c in GP_COLS if c != "LSOA"]
    second[second.index("ETHNIC_CATEGORY")] = "ETHNIC_CATEGRY"
    land(landing, "gp/GP_A81001_20240401.csv", _gp_text(second, numbers))
    for period in ("2024-03", "2024-04"):
        ingest.ingest("gp", period, Store(landing), wh, settings)

    cols = wh.read("submission_columns")
    by_sid = {sid: [r["column_name"] for r in cols.to_pylist() if r["submission_id"] == sid]
              for sid in set(cols.column("submission_id").to_pylist())}
    assert by_sid["GP_A81001_20240301"] == GP_COLS
    assert by_sid["GP_A81001_20240401"] == second

    first = drift.check_feed(wh, "gp", "2024-03")
    assert first["passed"] and first["metadata"]["rows"] == []  # as declared, nothing before it

    check = drift.check_feed(wh, "gp", "2024-04")
    assert not check["passed"] and check["severity"] == "warn"
    rows = {r["against"]: r for r in check["metadata"]["rows"]}
    assert set(rows) == {"declared", "previous"}
    for against in ("declared", "previous"):
        r = rows[against]
        assert r["submitter_code"] == "A81001" and r["period"] == "2024-04"
        assert r["missing"] == ["LSOA"]
        assert r["renamed"] == ["ETHNIC_CATEGORY -> ETHNIC_CATEGRY"]
        assert r["added"] == []
    assert "LSOA" in check["metadata"]["drift"]["markdown"]
    # names only: no value of any row anywhere in what the check says
    said = json.dumps(check, default=str)
    for value in numbers + ["1961-02-03", "LS1 4AP", "E01000001", "2001-01-01"]:
        assert value not in said


def test_a_header_name_shaped_like_an_identifier_is_never_stored_or_shown(zone):
    landing, wh, settings = zone
    numbers = nhs_numbers(200, 3)
    # a supplier's extra column whose "name" is an NHS number (a data row pasted as header)
    cols = GP_COLS + [numbers[0], "LS1 4AP"]
    land(landing, "gp/GP_A81002_20240301.csv", _gp_text(cols, numbers[1:]))
    ingest.ingest("gp", "2024-03", Store(landing), wh, settings)
    stored = wh.read("submission_columns").column("column_name").to_pylist()
    assert stored[-2:] == ["(unnamed column 11)", "(unnamed column 12)"]
    check = drift.check_feed(wh, "gp", "2024-03")
    said = json.dumps(check, default=str)
    assert numbers[0] not in said and "LS1 4AP" not in said
    assert check["metadata"]["rows"][0]["added"] == ["(unnamed column 11)", "(unnamed column 12)"]
    assert check["passed"]  # columns added to the declaration only: listed, not a failure


def _head(sid, names, at, period, submitter="RXX", source="sus_apc"):
    return drift.header_rows(period, sid, source, submitter, f"{source}/{sid}.csv",
                             datetime(*at, tzinfo=timezone.utc), names)


def test_previous_is_by_submission_time_per_submitter():
    base = ["PROCODE3", "SUSRECID", "EPISTART", "EPIEND", "ADMIDATE", "ADMIMETH", "DISMETH", "SEX"]
    t = pa.concat_tables([
        _head("B", base + ["OPERTN_4_01"], (2024, 3, 20), "2024-03"),       # later in time
        _head("A", base + ["OPERTN_4_01", "X_EXTRA"], (2024, 3, 5), "2024-03"),
        _head("C", base, (2024, 3, 6), "2024-03", submitter="RYY"),          # another submitter
    ])
    rows = [r for r in drift.drift(t, "sus_apc") if r["against"] == "previous"]
    # B is compared with A (same submitter, earlier): X_EXTRA gone; RYY has no previous
    assert rows == [{"submitter_code": "RXX", "period": "2024-03", "file_name": "sus_apc/B.csv",
                     "against": "previous", "previous_file_name": "sus_apc/A.csv",
                     "added": [], "missing": ["X_EXTRA"], "renamed": []}]


def test_rename_by_header_matching_and_by_edit_distance():
    c = drift.compare(["Opertn_01", "MAINSPEF", "SEX"], ["OPERTN_01", "MAINSPF", "SEQ"])
    # same name ignoring case: the same column, no drift; MAINSPF is 1 edit from MAINSPEF;
    # SEX/SEQ: too short to call a rename (1 edit in 3 letters)
    assert c == {"added": ["SEQ"], "missing": ["SEX"], "renamed": [("MAINSPEF", "MAINSPF")]}
    assert drift.compare(["OPERTN_4_01"], ["OPERTN_01"])["renamed"] == [("OPERTN_4_01", "OPERTN_01")]


def test_hes_extracts_compared_in_turn_opertn_01_missing():
    hes = ["FYEAR", "EPIKEY", "PROCODE3", "EPISTART", "EPIEND", "ADMIDATE", "ADMIMETH", "DISMETH", "SEX",
           "OPERTN_01", "OPERTN_4_01"]
    t = pa.concat_tables([
        drift.header_rows("2019-03", "hes1819", "hes_apc", None, "hes_apc/extract-aaaaaaaaaaaa",
                          datetime(2024, 1, 1, tzinfo=timezone.utc), hes),
        drift.header_rows("2020-03", "hes1920", "hes_apc", None, "hes_apc/extract-bbbbbbbbbbbb",
                          datetime(2024, 2, 1, tzinfo=timezone.utc), [c for c in hes if c != "OPERTN_01"]),
    ])
    check = drift.drift_check(t, "hes_apc", latest_only=True)
    prev = [r for r in check["metadata"]["rows"] if r["against"] == "previous"]
    assert prev == [{"submitter_code": None, "period": "2020-03", "file_name": "hes_apc/extract-bbbbbbbbbbbb",
                     "against": "previous", "added": [], "missing": ["OPERTN_01"], "renamed": []}]
    assert not check["passed"] and "(HES extract)" in check["metadata"]["drift"]["markdown"]


@pytest.mark.skipif(not HES_SAMPLE.exists(), reason="artificial HES sample not present")
def test_artificial_hes_field_names_are_kept_as_names():
    with HES_SAMPLE.open(encoding="utf-8") as fh:
        names = fh.readline().strip().split(",")
    t = drift.header_rows("2001-04", "hes", "hes_apc", None, "hes_apc/extract-cccccccccccc",
                          datetime(2024, 1, 1, tzinfo=timezone.utc), names)
    assert t.column("column_name").to_pylist() == names  # real HES field names: none hidden
    # against the declaration: no HES field is taken for a renamed declared column
    rows = drift.drift(t, "hes_apc")
    assert [r["renamed"] for r in rows] in ([], [[]])


def test_hes_take_in_records_headers_and_the_check_sees_a_dropped_column(zone):
    landing, wh, settings = zone
    cols = ["EPIKEY", "PROCODE3", "EPISTART", "EPIEND", "ADMIDATE", "ADMIMETH", "DISMETH", "SEX", "OPERTN_01",
            "OPERTN_4_01"]
    row = {"EPIKEY": "1", "PROCODE3": "RXX", "EPISTART": "2019-04-02", "EPIEND": "2019-04-03",
           "ADMIDATE": "2019-04-02", "ADMIMETH": "11", "DISMETH": "1", "SEX": "1", "OPERTN_01": "K40",
           "OPERTN_4_01": "K401"}

    def text(names):
        return ",".join(names) + "\n" + ",".join(row[c] for c in names) + "\n"

    land(landing, "hes_apc/hes_1819.csv", text(cols))
    ingest.ingest_hes(Store(landing), wh, settings)
    land(landing, "hes_apc/hes_1920.csv", text([c for c in cols if c != "OPERTN_01"]))
    ingest.ingest_hes(Store(landing), wh, settings)
    stored = wh.read("submission_columns")
    assert sorted(set(stored.column("submission_id").to_pylist())) == ["hes_1819", "hes_1920"]
    assert set(stored.column("period").to_pylist()) == {"2019-04"}  # the latest month each holds
    check = drift.check_feed(wh, "hes_apc")
    prev = [r for r in check["metadata"]["rows"] if r["against"] == "previous"]
    assert [(r["missing"], r["added"], r["renamed"]) for r in prev] == [(["OPERTN_01"], [], [])]
    assert prev[0]["file_name"].startswith("hes_apc/extract-")  # a HES name is free text: never shown
    assert not check["passed"]
