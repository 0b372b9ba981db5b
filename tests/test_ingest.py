"""Landing zone to warehouse: ledger, rejections, typed silver, quarantine, HES, S3.

Most tests replace the Great Expectations validator with a small stand-in that honours
its contract (``fake_validate``: rejects rows missing a required value or with SEX 'X'),
so that they stay quick; ``test_sus_end_to_end_with_the_real_validator`` and
``test_artificial_hes_sample`` run the real one.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from pipelines import current, ingest
from pipelines.config import Settings
from pipelines.ingest import intake, quarantine, silver
from pipelines.nhs_number import with_check_digit
from pipelines.schemas.inputs import FEEDS
from pipelines.storage import Store
from pipelines.warehouse import Warehouse

# ../shared sits beside the checkout (CI clones main with shared/ beside it).
HES_SAMPLE = Path(__file__).resolve().parents[2] / "shared/reference/artificial_hes/artificial_hes_apc_0102.csv"
SUS_COLS = ["PROCODE3", "SUSRECID", "EPISTART", "EPIEND", "ADMIDATE", "ADMIMETH", "DISMETH", "SEX",
            "NEWNHSNO", "HOMEADD", "DOB", "MYDOB", "OPERTN_4_01", "OPDATE_01", "OPERTN_4_02", "OPDATE_02",
            "OPERTN_4_03", "OPDATE_03", "DIAG_4_01", "DIAG_4_02", "CDS_UPDATE_TYPE"]


def nhs(i: int) -> str:
    """A valid NHS number in the 999 test range (never a real one)."""
    k = i
    while True:
        n = with_check_digit(f"999{k:06d}")
        if n:
            return n
        k += 1


def fake_validate(source, frame, *, period, submitter, file_name, context=None, data_docs_dir=None):
    """The validator's contract, with two rules: a required value missing (reject), SEX 'X'
    (reject); NEWNHSNO invalid is a warning."""
    feed = FEEDS[source]
    n = len(frame)
    rejected = np.zeros(n, dtype=bool)
    ids = [[] for _ in range(n)]
    msgs = [[] for _ in range(n)]
    counts = []
    checks = [(f"{c}_MISSING", c, "reject", frame[c].isna().to_numpy()) for c in feed.required if c in frame]
    if "SEX" in frame:
        checks.append(("SEX_CODE", "SEX", "reject", (frame["SEX"] == "X").fillna(False).to_numpy(dtype=bool)))
    if "NEWNHSNO" in frame:
        from pipelines.nhs_number import valid_series
        present = frame["NEWNHSNO"].notna().to_numpy()
        checks.append(("NEWNHSNO_INVALID", "NEWNHSNO", "warn",
                       present & ~valid_series(frame["NEWNHSNO"]).to_numpy(dtype=bool)))
    for rid, fld, sev, fail in checks:
        for i in np.flatnonzero(fail):
            ids[i].append(rid)
            msgs[i].append(f"{rid} broken")
            if sev == "reject":
                rejected[i] = True
        counts.append({"rule_id": rid, "field": fld, "severity": sev, "rows_checked": n,
                       "rows_failed": int(fail.sum()),
                       "example_lines": frame["_line"].to_numpy()[fail][:5].tolist()})
    return SimpleNamespace(
        rejected=rejected, rule_ids=ids, messages=msgs,
        rule_counts=pd.DataFrame(counts, columns=["rule_id", "field", "severity", "rows_checked",
                                                  "rows_failed", "example_lines"]),
        field_scores=pd.DataFrame({"field": ["SEX"], "rows": [n], "rows_valid": [n - int(rejected.sum())]}),
        data_docs=None)


FAKE = ingest.one_by_one(fake_validate)
"""The stand-in validator, passed to ingest as ``validator=`` (no Great Expectations run)."""


def sus_row(rid, *, provider="RGT", start="2024-01-05", end="2024-01-10", sex="1", update="",
            nhs_no="", **extra) -> dict:
    row = {"PROCODE3": provider, "SUSRECID": rid, "EPISTART": start, "EPIEND": end, "ADMIDATE": start,
           "ADMIMETH": "11", "DISMETH": "1", "SEX": sex, "NEWNHSNO": nhs_no, "CDS_UPDATE_TYPE": update}
    row.update(extra)
    return row


def csv_text(rows: list[dict], cols=SUS_COLS, sep=",") -> str:
    lines = [sep.join(cols)]
    for r in rows:
        lines.append(sep.join(str(r.get(c, "")) for c in cols))
    return "\n".join(lines) + "\n"


def put(landing: Path, rel: str, content) -> Path:
    p = landing / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(content.encode() if isinstance(content, str) else content)
    old = p.stat().st_mtime - 60  # suppliers wrote it before the pipeline looked
    os.utime(p, (old, old))
    return p


@pytest.fixture
def zone(tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    wh = Warehouse(Store(tmp_path / "warehouse"))
    return SimpleNamespace(path=landing, store=Store(landing), wh=wh, settings=Settings())


def ledger_df(wh) -> pd.DataFrame:
    return ingest.read_ledger(wh).to_pandas().set_index("file_name")


def tree_snapshot(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


BULK1 = "sus_apc/APC_RGT_202401_20240205120000_BULK.csv"
NET1 = "sus_apc/APC_RGT_202401_20240210120000_NET.csv"


# ----------------------------------------------------------------------------- tests
def test_malformed_file_rejected_and_the_others_go_on(zone):
    put(zone.path, BULK1, csv_text([sus_row("A"), sus_row("B")]))
    bad = "sus_apc/APC_RGT_202401_20240206120000_NET.csv"
    put(zone.path, bad, csv_text([sus_row("C")]) + "RGT,D\n")
    misnamed = "sus_apc/APC_RGT_2024_BULK.csv"
    put(zone.path, misnamed, csv_text([sus_row("E")]))
    before = tree_snapshot(zone.path)
    report = ingest.ingest("sus_apc", "2024-01", zone.store, zone.wh, zone.settings, validator=FAKE)
    assert report.files_taken == [BULK1]
    assert {r["file_name"] for r in report.rejected_files} == {bad, misnamed}
    led = ledger_df(zone.wh)
    assert led.at[bad, "status"] == "rejected"
    assert led.at[bad, "reason"] == f"{bad}: line 3: expected {len(SUS_COLS)} fields, found 2"
    assert "file name does not follow APC_<provider>_<YYYYMM>_<YYYYMMDDHHMMSS>_<BULK|NET>.csv" in led.at[misnamed, "reason"]
    assert led.at[BULK1, "status"] == "current"
    assert sorted(current.current_sus(zone.wh, "2024-01").column("susrecid").to_pylist()) == ["A", "B"]
    assert tree_snapshot(zone.path) == before  # the landing zone is never modified
    subs = ingest.submissions_dataset(zone.wh).to_pandas().set_index("file_name")
    assert pd.isna(subs.at[bad, "rows_received"]) and subs.at[BULK1, "rows_received"] == 2


def test_missing_required_column_rejected_with_reason(zone):
    cols = [c for c in SUS_COLS if c != "EPIEND"]
    put(zone.path, BULK1, csv_text([sus_row("A")], cols=cols))
    ingest.ingest("sus_apc", "2024-01", zone.store, zone.wh, zone.settings, validator=FAKE)
    led = ledger_df(zone.wh)
    assert led.at[BULK1, "status"] == "rejected"
    assert led.at[BULK1, "reason"] == f"{BULK1}: the header lacks required column(s) EPIEND"
    assert pd.isna(led.at[BULK1, "rows_received"])
    assert not zone.wh.parts("sus_episodes")


def test_file_seen_twice_is_not_taken_in_twice(zone):
    p = put(zone.path, BULK1, csv_text([sus_row("A")]))
    r1 = ingest.ingest("sus_apc", "2024-01", zone.store, zone.wh, zone.settings, validator=FAKE)
    part = zone.wh.path("sus_episodes", "2024-01", "APC_RGT_202401_20240205120000_BULK")
    written = (zone.wh.store.root / part).stat().st_mtime_ns
    os.utime(p, None)  # touched, same bytes: hashed again, recognised by its SHA-256
    p.write_bytes(p.read_bytes())
    r2 = ingest.ingest("sus_apc", "2024-01", zone.store, zone.wh, zone.settings, validator=FAKE)
    r3 = ingest.ingest("sus_apc", "2024-01", zone.store, zone.wh, zone.settings, validator=FAKE)
    assert r1.files_taken == [BULK1]
    assert r2.files_taken == [] and r2.files_skipped == [BULK1]
    assert r3.files_taken == [] and r3.rows_read == 0
    assert (zone.wh.store.root / part).stat().st_mtime_ns == written
    assert len(ingest.read_ledger(zone.wh)) == 1


def test_changed_file_under_an_old_name_is_an_error_and_the_earlier_version_stays(zone):
    p = put(zone.path, BULK1, csv_text([sus_row("A"), sus_row("B")]))
    ingest.ingest("sus_apc", "2024-01", zone.store, zone.wh, zone.settings, validator=FAKE)
    first_sha = ledger_df(zone.wh).at[BULK1, "sha256"]
    p.write_text(csv_text([sus_row("Z")]))
    report = ingest.ingest("sus_apc", "2024-01", zone.store, zone.wh, zone.settings, validator=FAKE)
    assert report.files_taken == []
    assert report.rejected_files and "changed after it was taken in" in report.rejected_files[0]["reason"]
    led = ingest.read_ledger(zone.wh).to_pandas()
    assert len(led) == 2
    old = led[led["sha256"] == first_sha].iloc[0]
    new = led[led["sha256"] != first_sha].iloc[0]
    assert old["status"] == "current"
    assert new["status"] == "rejected" and new["reason"].startswith(f"{BULK1}: changed after it was taken in: ")
    assert "earlier version stays in force" in new["reason"]
    assert sorted(current.current_sus(zone.wh, "2024-01").column("susrecid").to_pylist()) == ["A", "B"]
    # Reported once: a third run does not add another event.
    ingest.ingest("sus_apc", "2024-01", zone.store, zone.wh, zone.settings, validator=FAKE)
    assert len(ingest.read_ledger(zone.wh)) == 2


def test_rows_kept_typed_and_quarantined_with_rules_and_raw(zone):
    rows = [
        sus_row("A", nhs_no="999 000 0018", HOMEADD="cb2 0qq", OPERTN_4_01="K401", OPDATE_01="2024-01-06",
                OPERTN_4_02="-   ", OPERTN_4_03="K402", OPDATE_03="2024-01-07", DIAG_4_01="I219",
                DIAG_4_02="-", DOB="1950-03-04", MYDOB="011949"),
        sus_row("B", nhs_no="9990000019", MYDOB="071961"),
        sus_row("C", sex="X"),
        sus_row("D", start=""),
    ]
    put(zone.path, BULK1, csv_text(rows))
    report = ingest.ingest("sus_apc", "2024-01", zone.store, zone.wh, zone.settings, validator=FAKE)
    assert (report.rows_read, report.rows_kept, report.rows_quarantined) == (4, 2, 2)
    silver = zone.wh.read("sus_episodes", ["2024-01"]).to_pandas().set_index("susrecid")
    a, b = silver.loc["A"], silver.loc["B"]
    assert a["nhs_number"] == "9990000018" and a["nhs_number_valid"]
    assert pd.isna(b["nhs_number"]) and not b["nhs_number_valid"]
    assert list(b["dq_warnings"]) == ["NEWNHSNO_INVALID"]
    assert a["postcode"] == "CB20QQ"
    assert list(a["procedures"]) == ["K401", "K402"]
    assert [d.isoformat() for d in a["procedure_dates"]] == ["2024-01-06", "2024-01-07"]
    assert list(a["diagnoses"]) == ["I219"]
    assert (a["birth_year"], a["birth_month"]) == (1950, 3)  # DOB first
    assert (b["birth_year"], b["birth_month"]) == (1961, 7)  # else MYDOB
    assert a["cds_update_type"] == "9" and a["line"] == 2 and a["epistart"].isoformat() == "2024-01-05"
    q = zone.wh.read("quarantine", ["2024-01"]).to_pandas().sort_values("line")
    assert q["line"].tolist() == [4, 5]
    assert [list(x) for x in q["rule_ids"]] == [["SEX_CODE"], ["EPISTART_MISSING", "ADMIDATE_MISSING"]]
    assert (q["file_name"] == BULK1).all()
    raw = json.loads(q.iloc[0]["raw"])
    assert raw["SUSRECID"] == "C" and raw["SEX"] == "X" and raw["NEWNHSNO"] is None
    rules = zone.wh.read("dq_rules", ["2024-01"]).to_pandas().set_index("rule_id")
    assert rules.at["SEX_CODE", "rows_failed"] == 1 and rules.at["SEX_CODE", "submitter_code"] == "RGT"
    led = ledger_df(zone.wh)
    assert (led.at[BULK1, "rows_received"], led.at[BULK1, "rows_kept"], led.at[BULK1, "rows_quarantined"]) == (4, 2, 2)


def test_held_file_keeps_the_earlier_data_in_force(zone):
    put(zone.path, BULK1, csv_text([sus_row("A"), sus_row("B")]))
    ingest.ingest("sus_apc", "2024-01", zone.store, zone.wh, zone.settings, validator=FAKE)
    bulk2 = "sus_apc/APC_RGT_202401_20240301120000_BULK.csv"
    put(zone.path, bulk2, csv_text([sus_row("C", sex="X"), sus_row("D", sex="X"), sus_row("E")]))
    report = ingest.ingest("sus_apc", "2024-01", zone.store, zone.wh, zone.settings, validator=FAKE)
    assert [h["file_name"] for h in report.held_files] == [bulk2]
    led = ledger_df(zone.wh)
    assert led.at[bulk2, "status"] == "held"
    assert led.at[bulk2, "reason"].startswith("held: 2 of 3 rows rejected, more than 50%")
    assert led.at[BULK1, "status"] == "current"
    assert sorted(current.current_sus(zone.wh, "2024-01").column("susrecid").to_pylist()) == ["A", "B"]


def test_other_periods_are_left_for_their_own_partition(zone):
    put(zone.path, BULK1, csv_text([sus_row("A")]))
    feb = "sus_apc/APC_RGT_202402_20240305120000_BULK.csv"
    put(zone.path, feb, csv_text([sus_row("F", start="2024-02-01", end="2024-02-02")]))
    assert ingest.pending_periods(zone.store, zone.wh).keys() == {"2024-01", "2024-02"}
    report = ingest.ingest("sus_apc", "2024-01", zone.store, zone.wh, zone.settings, validator=FAKE)
    assert report.files_taken == [BULK1] and report.partitions == {"2024-01": ["APC_RGT_202401_20240205120000_BULK"]}
    assert list(ingest.pending_periods(zone.store, zone.wh)) == ["2024-02"]
    assert ingest.periods_with_data(zone.wh) == ["2024-01"]


def test_scan_records_every_file_with_size_and_hash(zone):
    put(zone.path, BULK1, csv_text([sus_row("A")]))
    put(zone.path, "notes/readme.txt", "hello")
    out = ingest.scan_landing(zone.store, zone.wh, zone.settings)
    assert out["files"] == 2 and out["new_files"] == 1
    led = ledger_df(zone.wh)
    assert led.at[BULK1, "status"] == "pending"
    assert led.at["notes/readme.txt", "status"] == "rejected"
    assert led.at[BULK1, "size_bytes"] == (zone.path / BULK1).stat().st_size
    import hashlib
    assert led.at[BULK1, "sha256"] == hashlib.sha256((zone.path / BULK1).read_bytes()).hexdigest()
    seen = led.at[BULK1, "first_seen_at"]
    ingest.ingest("sus_apc", "2024-01", zone.store, zone.wh, zone.settings, validator=FAKE)
    led = ledger_df(zone.wh)
    assert led.at[BULK1, "status"] == "current" and led.at[BULK1, "first_seen_at"] == seen
    assert ingest.scan_landing(zone.store, zone.wh)["new_files"] == 0



def test_scan_writes_its_events_a_batch_to_a_ledger_part(zone):
    names = [f"sus_apc/APC_RGT_202401_2024020{d}120000_NET.csv" for d in range(1, 6)]
    for k, name in enumerate(names):
        put(zone.path, name, csv_text([sus_row(f"A{k}")]))
    assert ingest.scan_landing(zone.store, zone.wh, per_part=2)["new_files"] == 5
    parts = [f.path for f in zone.wh.store.list(ingest.LEDGER_PARTS)]
    assert len(parts) == 3 and all(p.endswith("-seen.parquet") for p in parts)  # 2 + 2 + 1
    led = ledger_df(zone.wh)
    assert all(led.at[n, "status"] == "pending" for n in names)
    assert ingest.scan_landing(zone.store, zone.wh, per_part=2)["new_files"] == 0
    assert len(list(zone.wh.store.list(ingest.LEDGER_PARTS))) == 3


def test_reference_data_loaded(zone):
    row = [""] * 27
    row[0], row[1], row[9], row[10], row[11], row[12], row[14], row[25] = (
        "A81001", "THE SURGERY", "TS1 1AA", "19740401", "20200131", "C", "00K", "4")
    put(zone.path, "reference/epraccur.csv", ",".join(row) + "\n")
    put(zone.path, "reference/providers.csv", "PROVIDER_CODE,NAME,COMMISSIONER_CODE\nRGT,CAMBRIDGE,00K\n")
    put(zone.path, "reference/sites.csv.gz",
        __import__("gzip").compress(b"SITE_CODE,PROVIDER_CODE,NAME\nRGT01,RGT,ADDENBROOKES\n"))
    out = ingest.load_reference(zone.store, zone.wh)
    assert (out["ref_practices"], out["ref_providers"], out["ref_sites"]) == (1, 1, 1)
    p = zone.wh.read("ref_practices").to_pylist()[0]
    assert p["open_date"].isoformat() == "1974-04-01" and p["close_date"].isoformat() == "2020-01-31"
    assert (p["status"], p["commissioner_code"], p["prescribing_setting"]) == ("C", "00K", "4")
    assert zone.wh.read("ref_sites").to_pylist()[0]["provider_code"] == "RGT"
    assert set(ledger_df(zone.wh)["status"]) == {"current"}
    assert ingest.load_reference(zone.store, zone.wh)["files_taken"] == []


def test_sus_end_to_end_with_the_real_validator(zone):
    rows = [sus_row("A", nhs_no=nhs(1)), sus_row("B", end="2024-01-01"), sus_row("C", nhs_no="123")]
    put(zone.path, BULK1, csv_text(rows, sep="|"))
    report = ingest.ingest("sus_apc", "2024-01", zone.store, zone.wh, zone.settings)
    assert (report.rows_read, report.rows_kept, report.rows_quarantined) == (3, 2, 1)
    q = zone.wh.read("quarantine", ["2024-01"]).to_pylist()
    assert [r["line"] for r in q] == [3] and "EPIEND_BEFORE_EPISTART" in q[0]["rule_ids"]
    silver = zone.wh.read("sus_episodes", ["2024-01"]).to_pandas().set_index("susrecid")
    assert "NEWNHSNO_INVALID" in list(silver.at["C", "dq_warnings"])
    rules = zone.wh.read("dq_rules", ["2024-01"]).to_pandas().set_index("rule_id")
    assert rules.at["EPIEND_BEFORE_EPISTART", "rows_failed"] == 1
    assert zone.wh.read("dq_fields", ["2024-01"]).num_rows > 0


def test_artificial_hes_sample(zone):
    assert HES_SAMPLE.exists(), f"NHS Digital's artificial HES sample is missing: {HES_SAMPLE}"
    put(zone.path, "hes_apc/artificial_hes_apc_0102.csv", HES_SAMPLE.read_bytes())
    seen = {}
    from pipelines.validation import validate_many

    def spy(source, items, **kw):  # the real validator, its outcome kept for the checks below
        (seen["outcome"],) = validate_many(source, items, **kw)
        return [seen["outcome"]]

    report = ingest.ingest_hes(zone.store, zone.wh, zone.settings, validator=spy)
    assert report.rows_read == 2075 == report.rows_kept + report.rows_quarantined
    led = ledger_df(zone.wh).loc["hes_apc/artificial_hes_apc_0102.csv"]
    assert led["status"] == "current"
    assert led["rows_received"] == led["rows_kept"] + led["rows_quarantined"] == 2075
    periods = zone.wh.periods("sus_episodes")
    assert "2001-04" in periods and set(report.partitions) == set(periods) | set(zone.wh.periods("quarantine"))
    silver = zone.wh.read("sus_episodes")
    assert silver.num_rows == report.rows_kept
    df = silver.to_pandas()
    assert (df["period"] == df["epiend"].map(lambda d: d.strftime("%Y-%m"))).all()
    assert not any("-" in c for lst in df["procedures"] for c in lst)  # '-   ' placeholders dropped
    assert df["birth_year"].notna().mean() > 0.9  # from MYDOB
    rules = zone.wh.read("dq_rules").to_pandas()
    assert set(rules["submitter_code"].dropna()) <= set(df["provider_code"]) | set(
        zone.wh.read("quarantine").to_pandas()["submitter_code"].dropna())
    # Validated once; the counts split by (period, provider) add up to the validator's.
    assert rules.groupby("rule_id")["rows_failed"].sum().get("DOB_AFTER_ADMIDATE", 0) > 0
    whole = seen["outcome"].rule_counts.set_index("rule_id")[["rows_checked", "rows_failed"]]
    split = rules.groupby("rule_id")[["rows_checked", "rows_failed"]].sum().loc[whole.index]
    assert (split.to_numpy() == whole.to_numpy()).all()
    fields = zone.wh.read("dq_fields").to_pandas().groupby("field")[["rows", "rows_valid"]].sum()
    fs = seen["outcome"].field_scores.set_index("field")[["rows", "rows_valid"]]
    assert (fields.loc[fs.index].to_numpy() == fs.to_numpy()).all()
    cur = current.current_sus(zone.wh, "2001-04")
    assert cur.num_rows == (df["period"] == "2001-04").sum()
    # Taken in once.
    assert ingest.ingest_hes(zone.store, zone.wh, zone.settings).files_taken == []


# ----------------------------------------------------------------------------- S3
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



def _comparable_ledger(wh) -> pd.DataFrame:
    led = ingest.read_ledger(wh).to_pandas()
    cols = ["file_name", "source", "submitter_code", "reporting_period", "protocol", "sha256", "size_bytes",
            "status", "reason", "rows_received", "rows_quarantined", "rows_kept"]
    return led[cols].sort_values(["file_name", "sha256"]).reset_index(drop=True)


def test_landing_zone_in_s3_gives_the_same_ledger_and_current_view(tmp_path, s3_endpoint):
    moto_endpoint = s3_endpoint  # the shared moto server (tests/conftest.py)
    import boto3

    local = tmp_path / "landing"
    put(local, BULK1, csv_text([sus_row("A"), sus_row("B"), sus_row("C", sex="X")]))
    put(local, NET1, csv_text([sus_row("B", update="1"), sus_row("D", update="9")]))
    put(local, "sus_apc/APC_RGT_202401_20240211120000_NET.csv.gz",
        __import__("gzip").compress(("\ufeff" + csv_text([sus_row("E", update="9")], sep="|")).encode()))
    put(local, "sus_apc/APC_RGT_202401_20240212120000_NET.csv", csv_text([sus_row("F")]) + "RGT\n")
    put(local, "sus_apc/APC_RGT_2024_NET.csv", csv_text([sus_row("G")]))
    put(local, "gp/GP_A81001_20240131.csv",
        "NHS_NUMBER,DATE_OF_BIRTH,SEX,REGISTRATION_DATE,OBJECTION\n"
        f"{nhs(5)},1970-01-01,1,2000-01-01,\n{nhs(6)},1970-01-01,2,2000-01-01,9Nu0\n")

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="eu-west-2")
    s3.create_bucket(Bucket="landing-bucket", CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    for p in sorted(local.rglob("*")):
        if p.is_file():
            s3.put_object(Bucket="landing-bucket", Key=f"landing/{p.relative_to(local).as_posix()}", Body=p.read_bytes())

    results = {}
    for name, store in (("local", Store(local)),
                        ("s3", Store("s3://landing-bucket/landing", endpoint_url=moto_endpoint))):
        wh = Warehouse(Store(tmp_path / f"wh-{name}"))
        ingest.ingest("sus_apc", "2024-01", store, wh, Settings(), validator=FAKE)
        ingest.ingest("gp", "2024-01", store, wh, Settings(), validator=FAKE)
        again = ingest.ingest("sus_apc", "2024-01", store, wh, Settings(), validator=FAKE)
        assert again.files_taken == []
        cur = current.current_sus(wh, "2024-01").to_pandas()
        gp = current.gp_current(wh, "2024-01")
        results[name] = (_comparable_ledger(wh), cur.drop(columns=["dq_warnings"]), gp.extracts.to_pandas())
    pd.testing.assert_frame_equal(results["local"][0], results["s3"][0])
    pd.testing.assert_frame_equal(results["local"][1], results["s3"][1])
    pd.testing.assert_frame_equal(results["local"][2], results["s3"][2])
    assert sorted(results["s3"][1]["susrecid"]) == ["A", "D", "E"]
    statuses = results["s3"][0].set_index("file_name")["status"]
    assert statuses["sus_apc/APC_RGT_202401_20240212120000_NET.csv"] == "rejected"
    assert statuses["sus_apc/APC_RGT_2024_NET.csv"] == "rejected"
    assert results["s3"][2]["type1_objections"].tolist() == [1]
    # Nothing in the bucket was changed or added.
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="landing-bucket")["Contents"]]
    assert len(keys) == 6 and all(k.startswith("landing/") for k in keys)


def test_a_file_taken_in_the_second_it_was_written_is_not_pending_again(zone):
    p = zone.path / BULK1
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(csv_text([sus_row("A")]))  # no backdating: written, then seen at once
    ingest.ingest("sus_apc", "2024-01", zone.store, zone.wh, zone.settings, validator=FAKE)
    assert ingest.pending_periods(zone.store, zone.wh) == {}


def test_a_period_validated_in_several_chunks_writes_what_one_chunk_writes(tmp_path):
    """Files are validated together in chunks (``batch_cells``), then taken in one by one
    in order: a period of several chunks writes exactly what one chunk of all its files
    writes (rows, quarantine, data quality, ledger), with the real validator."""
    from pipelines.synth import generate

    gen = tmp_path / "gen"
    generate(gen, seed=3, scale=0.002, months=1, start="2024-01", progress=False)
    landing = Store(gen)
    period = sorted({p.reporting_period for p in (ingest.parse_name(f.path) for f in landing.list("gp"))
                     if isinstance(p, ingest.ParsedName)})[-1]
    out = {}
    for cells in (300_000, 100_000_000):   # chunks of about 25,000 GP rows; one chunk
        wh = Warehouse(Store(tmp_path / f"wh-{cells}"))
        report = ingest.ingest("gp", period, landing, wh, Settings(), today=pd.Timestamp("2024-03-01").date(),
                               batch_cells=cells)
        out[cells] = (report, wh)
    (chunked, wh0), (whole, wh1) = out[300_000], out[100_000_000]
    assert chunked.rows_read > 3 * 25_000 and chunked.rows_quarantined > 0
    assert (chunked.rows_read, chunked.rows_kept, chunked.rows_quarantined, chunked.held_files) == \
        (whole.rows_read, whole.rows_kept, whole.rows_quarantined, whole.held_files)
    assert len(wh0.parts("quarantine", [period])) >= 3 > len(wh1.parts("quarantine", [period]))
    for table in ("gp_patients", "quarantine", "dq_rules", "dq_fields", "gp_extracts", "gp_type2"):
        key = [c for c in ("submission_id", "line", "rule_id", "field", "nhs_number")
               if c in wh0.read(table, [period]).column_names]
        a = wh0.read(table, [period]).to_pandas().sort_values(key).reset_index(drop=True)
        b = wh1.read(table, [period]).to_pandas().sort_values(key).reset_index(drop=True)
        a = a.drop(columns=[c for c in a.columns if c.endswith("_at")])
        b = b.drop(columns=[c for c in b.columns if c.endswith("_at")])
        pd.testing.assert_frame_equal(a, b, obj=table)
    pd.testing.assert_frame_equal(_comparable_ledger(wh0), _comparable_ledger(wh1))


def test_a_chunk_is_written_as_one_part_per_table_and_a_stopped_run_counts_nothing_twice(tmp_path, monkeypatch):
    """The silver (gp_patients), quarantine, data-quality and gp_extracts rows and the
    ledger outcomes of a chunk's files are one part each, not one per file. A run stopped after a chunk's data
    parts but before its ledger part leaves those files untaken; the next run takes them
    in again and removes the stale parts: every table then equals an uninterrupted run's."""
    from pipelines.synth import generate

    gen = tmp_path / "gen"
    generate(gen, seed=4, scale=0.002, months=1, start="2024-01", progress=False)
    landing = Store(gen)
    periods = [p.reporting_period for p in (ingest.parse_name(f.path) for f in landing.list("gp"))
               if isinstance(p, ingest.ParsedName)]
    period = max(set(periods), key=periods.count)
    today = pd.Timestamp("2024-03-01").date()
    wh_ref = Warehouse(Store(tmp_path / "wh-ref"))
    ref = ingest.ingest("gp", period, landing, wh_ref, Settings(), today=today, batch_cells=300_000)
    files = len(ref.files_taken)
    parts = wh_ref.parts("quarantine", [period])
    assert 3 <= len(parts) <= files // 2 and len(wh_ref.parts("gp_extracts", [period])) == len(parts)
    assert len(wh_ref.parts("gp_patients", [period])) == len(parts)  # silver: one part per chunk too

    wh = Warehouse(Store(tmp_path / "wh"))
    calls = {"n": 0}
    real_write = intake._ChunkParts.write

    def stopped_on_the_second_chunk(self, part=None):
        calls["n"] += 1
        if calls["n"] == 2:
            def no_ledger(path, table, _orig=self.warehouse.store.write_parquet):
                if path.startswith(ingest.LEDGER_PARTS):
                    raise KeyboardInterrupt("stopped")
                return _orig(path, table)
            monkeypatch.setattr(self.warehouse.store, "write_parquet", no_ledger)
        return real_write(self, part)

    monkeypatch.setattr(intake._ChunkParts, "write", stopped_on_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        ingest.ingest("gp", period, landing, wh, Settings(), today=today, batch_cells=300_000)
    stale = len(wh.parts("quarantine", [period]))
    assert stale == 2
    assert len(wh.parts("gp_patients", [period])) == 2  # the stopped chunk's silver part is there
    monkeypatch.setattr(intake._ChunkParts, "write", real_write)
    # The next run chunks the files left differently (as new files sorting among them
    # would): the stopped chunk's parts are not simply overwritten.
    wh = Warehouse(Store(tmp_path / "wh"))  # a fresh run: the store's own write again
    again = ingest.ingest("gp", period, landing, wh, Settings(), today=today, batch_cells=10_000_000)
    assert 0 < len(again.files_taken) < files  # the first chunk stays taken in
    for table in ("gp_patients", "quarantine", "dq_rules", "dq_fields", "gp_extracts"):
        cols = lambda df: df.drop(columns=[c for c in df.columns if c.endswith("_at")])  # noqa: E731
        key = [c for c in ("submission_id", "line", "rule_id", "field") if c in wh.read(table, [period]).column_names]
        a = cols(wh_ref.read(table, [period]).to_pandas()).sort_values(key).reset_index(drop=True)
        b = cols(wh.read(table, [period]).to_pandas()).sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b, obj=table)
    pd.testing.assert_frame_equal(_comparable_ledger(wh_ref), _comparable_ledger(wh))


def test_dq_rows_of_a_chunk_keep_each_files_own_keys():
    """A chunk's ``dq_rules`` and ``dq_fields`` rows are built at once: each row must
    still carry its own file's period, submission, source and submitter (files of
    different sizes, one with no rule rows, a HES extract with a submitter per row)."""
    def counts(ids):
        return pd.DataFrame({"rule_id": ids, "field": ["F"] * len(ids), "severity": ["warn"] * len(ids),
                             "rows_checked": np.arange(len(ids)) + 10, "rows_failed": np.arange(len(ids)),
                             "example_lines": [[2, 3]] * len(ids)})

    def scores(fields, subs=None):
        f = pd.DataFrame({"field": fields, "rows": [5] * len(fields), "rows_valid": [4] * len(fields)})
        return f if subs is None else f.assign(submitter_code=subs)

    files = [("2014-01", "s1", "gp", "A1", counts(["r1", "r2", "r3"]), scores(["F1"])),
             ("2014-01", "s2", "gp", "A2", counts([]), scores(["F1", "F2"])),
             ("2014-02", "s3", "hes_apc", ["RA", "RB"], counts(["r9", "r8"]), scores(["F3"], ["RC"])),
             ("2014-01", "s4", "gp", None, counts(["r4"]), scores([]))]
    rules, fields = quarantine._dq_tables(files)

    def rows(table, cols):
        return [list(r) for r in zip(*(table.column(c).to_pylist() for c in cols))]

    assert rows(rules, ["submission_id", "rule_id", "submitter_code", "period", "source"]) == [
        ["s1", "r1", "A1", "2014-01", "gp"], ["s1", "r2", "A1", "2014-01", "gp"], ["s1", "r3", "A1", "2014-01", "gp"],
        ["s3", "r9", "RA", "2014-02", "hes_apc"], ["s3", "r8", "RB", "2014-02", "hes_apc"],
        ["s4", "r4", None, "2014-01", "gp"]]
    assert rules.column("rows_checked").to_pylist() == [10, 11, 12, 10, 11, 10]
    assert rules.column("example_lines").to_pylist() == [["2", "3"]] * 6  # the schema: line numbers as text
    assert rows(fields, ["submission_id", "field", "submitter_code"]) == [
        ["s1", "F1", "A1"], ["s2", "F1", "A2"], ["s2", "F2", "A2"], ["s3", "F3", "RC"]]


def test_code_lists_are_each_rows_present_codes_in_column_order():
    """Diagnosis and procedure lists (built in Arrow from all the code columns at once)
    against the definition row by row: the stripped codes in column order, blanks, the
    HES placeholders ('-', '-   ', '&') and codes that are no OPCS-4 code (a letter and
    three digits: 'Z99X', 'A01'; they are counted by their FORMAT rule and would reach the
    restricted zone) left out, each procedure with its own date; an absent column holds
    nothing."""
    rng = np.random.default_rng(11)
    pool = ["K401", " K402 ", "", None, "-", "-   ", "&", "I219", "Z99X", "\tA01"]
    dates = ["2024-03-01", "2024-02-30", None, " 2024-03-05 ", "x"]
    n = 200
    cols = {f"OPERTN_4_{k:02d}": rng.choice(np.array(pool, dtype=object), n) for k in (1, 2, 3, 5)}
    cols |= {f"OPDATE_{k:02d}": rng.choice(np.array(dates, dtype=object), n) for k in (1, 2, 3, 4, 5)}
    frame = pd.DataFrame(cols).astype("string")
    lists, date_lists = silver._code_lists(silver._Columns(frame), "OPERTN_4_", 6, "OPDATE_")
    real = {"2024-03-01": "2024-03-01", " 2024-03-05 ": "2024-03-05"}
    want_codes, want_dates = [], []
    for i in range(n):
        codes, ds = [], []
        for k in range(1, 7):
            v = frame.get(f"OPERTN_4_{k:02d}")
            v = None if v is None or pd.isna(v.iloc[i]) else v.iloc[i].strip()
            if v and re.fullmatch(r"[A-Z][0-9]{3}", v):
                codes.append(v)
                d = frame[f"OPDATE_{k:02d}"].iloc[i]
                ds.append(None if pd.isna(d) else real.get(d))
        want_codes.append(codes)
        want_dates.append(ds)
    assert lists.to_pylist() == want_codes
    assert [[None if d is None else d.isoformat() for d in row] for row in date_lists.to_pylist()] == want_dates
    assert sum(map(len, want_codes)) > 200


# ----------------------------------------------------------------------------- validator and reading
def test_the_engine_reaches_the_validator_and_a_validator_without_one_still_works(zone):
    """``ingest(..., engine=E)`` hands ``E`` to a validator declaring an ``engine``
    parameter; a validator that takes no engine (a stand-in) is called without it."""
    put(zone.path, BULK1, csv_text([sus_row("A"), sus_row("B", sex="X")]))
    engine, got = object(), {}

    def takes_engine(source, items, *, data_docs_dir=None, engine=None):
        got["engine"] = engine
        return FAKE(source, items, data_docs_dir=data_docs_dir)

    report = ingest.ingest("sus_apc", "2024-01", zone.store, zone.wh, zone.settings, validator=takes_engine,
                           engine=engine)
    assert got["engine"] is engine and (report.rows_kept, report.rows_quarantined) == (1, 1)

    def no_engine(source, items, *, data_docs_dir=None):
        got["called"] = True
        return FAKE(source, items, data_docs_dir=data_docs_dir)

    put(zone.path, NET1, csv_text([sus_row("C", update="9")]))
    ingest.ingest("sus_apc", "2024-01", zone.store, zone.wh, zone.settings, validator=no_engine, engine=engine)
    assert got.get("called") is True


def test_a_validator_giving_the_wrong_number_of_outcomes_rejects_the_files_not_the_run(zone):
    """A validator that loses a file's outcome cannot make rows vanish: the chunk's files
    are taken in one by one, and a file whose validation fails is rejected."""
    put(zone.path, BULK1, csv_text([sus_row("A")]))

    def loses_one(source, items, **kw):
        return FAKE(source, items, **kw)[:-1]

    report = ingest.ingest("sus_apc", "2024-01", zone.store, zone.wh, zone.settings, validator=loses_one)
    assert report.files_taken == [] and [r["file_name"] for r in report.rejected_files] == [BULK1]
    assert "RuntimeError" in report.rejected_files[0]["reason"]
    assert zone.wh.read("sus_episodes", ["2024-01"]).num_rows == 0


class ChangingStore(Store):
    """A landing store whose file ``path`` holds other bytes from its second opening on
    (a supplier rewriting it while the pipeline reads)."""

    def __init__(self, root, path: str, later: bytes):
        super().__init__(root)
        self.path, self.later, self.opened = path, later, 0

    def open(self, path, *, regular_only=False):
        if path == self.path:
            self.opened += 1
            if self.opened > 1:
                import io
                return io.BytesIO(self.later)
        return super().open(path, regular_only=regular_only)


def test_the_rows_taken_in_are_the_bytes_whose_sha256_the_ledger_records(zone):
    """A small file is read once: hashed and parsed from the same bytes, so a file
    rewritten while it is read cannot be recorded under one SHA-256 with another
    version's rows."""
    import hashlib

    name = "gp/GP_A81001_20240131.csv"
    head = "NHS_NUMBER,DATE_OF_BIRTH,SEX,REGISTRATION_DATE,OBJECTION\n"
    first = head + "".join(f"{nhs(k)},1970-01-01,1,2000-01-01,\n" for k in range(3))
    later = (head + "".join(f"{nhs(k)},1970-01-01,1,2000-01-01,\n" for k in range(10, 15))).encode()
    put(zone.path, name, first)
    store = ChangingStore(zone.path, name, later)
    report = ingest.ingest("gp", "2024-01", store, zone.wh, zone.settings, validator=FAKE)
    row = ledger_df(zone.wh).loc[name]
    assert row["sha256"] == hashlib.sha256(first.encode()).hexdigest() and row["rows_received"] == 3
    assert report.rows_read == 3 and store.opened == 1
    kept = zone.wh.read("gp_patients", ["2024-01"]).column("nhs_number").to_pylist()
    assert sorted(kept) == sorted(nhs(k) for k in range(3))


def test_the_data_docs_site_is_built_once_per_ingest_with_every_chunks_pages(tmp_path):
    """GP extracts validated in several chunks: no chunk builds the Data Docs site (a
    build renders the whole site), the ingest builds it once at the end, and it shows the
    failing suite runs of every chunk (a build per chunk kept only the last chunk's)."""
    from pipelines.synth import generate
    from pipelines.validation import validate_many

    gen = tmp_path / "gen"
    generate(gen, seed=4, scale=0.002, months=1, start="2024-01", progress=False)
    landing = Store(gen)
    periods = [p.reporting_period for p in (ingest.parse_name(f.path) for f in landing.list("gp"))
               if isinstance(p, ingest.ParsedName)]
    period = max(set(periods), key=periods.count)
    docs = tmp_path / "docs"
    calls = []

    def counting(source, items, *, data_docs_dir=None, docs_out=None, **kw):
        assert docs_out is not None and not (docs / "index.html").exists()  # nothing built per chunk
        calls.append(f"{source}-{period}-{len(items)}-files")
        return validate_many(source, items, data_docs_dir=data_docs_dir, docs_out=docs_out, **kw)

    wh = Warehouse(Store(tmp_path / "wh"))
    rep = ingest.ingest("gp", period, landing, wh, Settings(), today=pd.Timestamp("2024-03-01").date(),
                        batch_cells=300_000, data_docs_dir=str(docs), validator=counting)
    assert len(calls) >= 2 and rep.files_taken
    pages = [p.relative_to(docs / "validations").parts for p in (docs / "validations").rglob("*.html")]
    runs = {parts[-3] for parts in pages}  # .../<suite parts>/<run name>/<run time>/<batch>.html
    assert runs == set(calls)
    index = (docs / "index.html").read_text()
    assert all(run in index for run in calls)
