"""Issue 21, items 3 and 4: two silent failures.

(a) The GP held rule (inputs.md "GP extracts"): an extract with no data row, or with fewer
    than half the rows of the practice's current extract, is held: it supersedes nothing
    until an operator releases it (``caredata release``) or a later extract arrives.
(b) Late reference data (inputs.md "No file can stop the pipeline"): reference files that
    arrive after the data re-validate the files already taken in; the ledger and the
    data-quality figures say what changed.

GP tests replace the validator with a small stand-in (rows with SEX 'X' rejected); the
late-reference tests run the real one on a few FFT rows.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from pipelines import cli, current, ingest, linkage, quality, schemas, stages
from pipelines.config import Settings
from pipelines.nhs_number import with_check_digit
from pipelines.schemas.inputs import FEEDS
from pipelines.storage import Store
from pipelines.warehouse import Warehouse

GP_COLS = ["NHS_NUMBER", "DATE_OF_BIRTH", "SEX", "REGISTRATION_DATE", "OBJECTION"]
FFT_COLS = ["RESPONSE_ID", "PROVIDER_CODE", "SITE_CODE", "SETTING", "RESPONSE_DATE", "RESPONSE"]


def fake_validate(source, frame, *, period, submitter, file_name, context=None, data_docs_dir=None):
    n = len(frame)
    bad = np.zeros(n, dtype=bool)
    for c in FEEDS[source].required:
        if c in frame:
            bad |= frame[c].isna().to_numpy()
    if "SEX" in frame:
        bad |= (frame["SEX"] == "X").fillna(False).to_numpy(dtype=bool)
    return SimpleNamespace(
        rejected=bad, rule_ids=[["BAD"] if b else [] for b in bad], messages=[["bad"] if b else [] for b in bad],
        rule_counts=pd.DataFrame([{"rule_id": "BAD", "field": "SEX", "severity": "reject", "rows_checked": n,
                                   "rows_failed": int(bad.sum()), "example_lines": []}]),
        field_scores=pd.DataFrame({"field": ["SEX"], "rows": [n], "rows_valid": [n - int(bad.sum())]}),
        data_docs=None)


def put(landing: Path, rel: str, lines: list[str]) -> None:
    p = landing / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\n".join(lines) + "\n")
    old = p.stat().st_mtime - 60
    os.utime(p, (old, old))


def gp_lines(first: int, count: int, *, type1: int = 0) -> list[str]:
    """A GP extract: header, ``count`` patients (999 test numbers), ``type1`` of them type 1."""
    lines = [",".join(GP_COLS)]
    for k in range(first, first + count):
        obj = "9Nu0" if k - first < type1 else ""
        lines.append(f"{with_check_digit(f'999{k:06d}')},1970-01-01,1,2000-01-01,{obj}")
    return lines


class Zone:
    def __init__(self, root: Path):
        self.root = root
        self.landing = root / "landing"
        self.landing.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.landing)
        self.wh = Warehouse(Store(root / "warehouse"))
        self.settings = Settings(landing=str(self.landing), warehouse=str(root / "warehouse"),
                                 publish=str(root / "publish"))

    def gp(self, name: str, lines: list[str]):
        put(self.landing, f"gp/{name}", lines)
        period = f"{name[10:14]}-{name[14:16]}"
        return ingest.ingest("gp", period, self.store, self.wh, self.settings,
                             validator=getattr(self, "validator", FAKE))  # RefZone: the real one

    def ledger(self) -> pd.DataFrame:
        return ingest.read_ledger(self.wh).to_pandas().set_index("file_name")

    def newest(self) -> dict:
        t = current.gp_current(self.wh).patients_newest_overall.to_pandas()
        return t.groupby("practice_code")["submission_id"].unique().map(list).to_dict()

    def coverage(self, period: str) -> dict:
        """linkage_coverage_practice of the period for A81001, as the stages compute it."""
        practices = schemas.get("ref_practices").conform(pd.DataFrame({
            "practice_code": ["A81001"], "name": ["X"], "postcode": [None], "open_date": [None],
            "close_date": [None], "status": ["A"], "commissioner_code": ["00K"],
            "prescribing_setting": ["4"]}).pipe(lambda d: __import__("pyarrow").Table.from_pandas(d)))
        lazy = current.gp_current_lazy(self.wh, period)
        empty = schemas.get("sus_episodes").arrow_schema(include_partition=True).empty_table()
        linked = linkage.link_episodes(empty, lazy.patients_newest_overall)
        out = linkage.coverage(period, linked, practices, self.wh.read("ref_providers"), lazy.extracts,
                               lazy.patients_newest_in_period, self.settings)
        return out["linkage_coverage_practice"].to_pylist()[0]


FAKE = ingest.one_by_one(fake_validate)
"""The stand-in validator, passed to ingest as ``validator=`` (no Great Expectations run)."""


@pytest.fixture
def zone(tmp_path):
    return Zone(tmp_path)


JAN, FEB, MAR = "GP_A81001_20240110.csv", "GP_A81001_20240210.csv", "GP_A81001_20240310.csv"


def _publishable(zone) -> None:
    """The public ledger with these reasons passes the public zone's checks."""
    from pipelines import disclosure

    table = ingest.submissions_dataset(zone.wh)
    assert disclosure.check_public(schemas.get("submissions"), table, zone.settings) == []


def _balanced(led: pd.DataFrame) -> None:
    taken = led[led["status"] != "rejected"]
    assert (taken["rows_received"] == taken["rows_kept"] + taken["rows_quarantined"]).all()


# ----------------------------------------------------------------------------- (a) GP held rule
def test_header_only_extract_is_held_and_the_practice_stays_as_before(zone):
    zone.gp(JAN, gp_lines(1, 10))
    before = zone.coverage("2024-01")
    assert before["registered_patients"] == 10
    report = zone.gp(FEB, gp_lines(1, 0))  # the header and nothing else
    led = zone.ledger()
    assert led.at[f"gp/{FEB}", "status"] == "held"
    assert led.at[f"gp/{FEB}", "reason"] == (
        f"0 rows received against 10 in the current extract {JAN}; "
        "held until an operator releases it or a later extract arrives")
    assert led.at[f"gp/{JAN}", "status"] == "current"  # superseded by nothing
    assert zone.newest() == {"A81001": ["GP_A81001_20240110"]}
    assert zone.coverage("2024-01") == before
    # February: no extract in force dated in it: empty, not 0 patients
    assert zone.coverage("2024-02")["registered_patients"] is None
    # the report, the run summary's "Held back", the Dagster check
    assert [h["file_name"] for h in report.held_files] == [f"gp/{FEB}"]
    held_back = stages.held_back_summary(zone.settings)
    assert {"what": f"held gp/{FEB}", "why": led.at[f"gp/{FEB}", "reason"]} in held_back
    check = {c["name"]: c for c in stages.ingest_checks({"metadata": report.as_metadata(),
                                                         "failing_rules": None})}["no_held_submissions"]
    assert check["passed"] is False and check["severity"] == "warn"
    assert f"gp/{FEB}" in check["description"] and "fewer than half the rows" in check["description"]
    assert "caredata release" in check["description"]
    assert check["metadata"]["gp_held_rule"] == [f"gp/{FEB}"]
    _publishable(zone)
    # data_quality_summary: February's row for the practice is held, with the reason
    out = quality.data_quality_tables(zone.wh.read("dq_rules"), zone.wh.read("dq_fields"),
                                      ingest.read_ledger(zone.wh), zone.settings)
    s = out["data_quality_summary"].to_pandas().set_index("period")
    assert bool(s.at["2024-02", "held"]) is True and "0 rows received against 10" in s.at["2024-02", "held_reason"]
    assert bool(s.at["2024-01", "held"]) is False
    _balanced(led)


def test_first_extract_with_no_data_row_is_held(zone):
    zone.gp(JAN, gp_lines(1, 0))
    led = zone.ledger()
    assert led.at[f"gp/{JAN}", "status"] == "held"
    assert led.at[f"gp/{JAN}", "reason"].startswith("no data row (header only); held until")
    assert zone.newest() == {}
    assert zone.coverage("2024-01")["registered_patients"] is None


def test_extract_shrunk_to_40_percent_is_held(zone):
    zone.gp(JAN, gp_lines(1, 10))
    zone.gp(FEB, gp_lines(1, 4))
    led = zone.ledger()
    assert led.at[f"gp/{FEB}", "status"] == "held"
    assert led.at[f"gp/{FEB}", "reason"].startswith(f"4 rows received against 10 in the current extract {JAN};")
    assert led.at[f"gp/{FEB}", "rows_received"] == 4 and led.at[f"gp/{FEB}", "rows_kept"] == 4
    assert zone.newest() == {"A81001": ["GP_A81001_20240110"]}
    held = current.gp_current(zone.wh).extracts.to_pandas().set_index("submission_id")["held"]
    assert held.to_dict() == {"GP_A81001_20240110": False, "GP_A81001_20240210": True}
    _balanced(led)


def test_exactly_half_is_not_held(zone):
    zone.gp(JAN, gp_lines(1, 10))
    zone.gp(FEB, gp_lines(1, 5))
    led = zone.ledger()
    assert led.at[f"gp/{FEB}", "status"] == "current"
    assert led.at[f"gp/{JAN}", "status"] == "superseded"
    assert zone.newest() == {"A81001": ["GP_A81001_20240210"]}


def test_type1_rows_count_as_rows_of_the_extract(zone):
    # 10 patients, 6 of them type 1: 4 rows received, but the extract is not shrunken
    zone.gp(JAN, gp_lines(1, 10))
    zone.gp(FEB, gp_lines(1, 10, type1=6))
    assert zone.ledger().at[f"gp/{FEB}", "status"] == "current"


def test_the_held_reason_gives_rows_received_so_no_type1_count_can_be_subtracted(zone):
    # current: 10 patients, 3 type 1 (7 received, public); then a shrunken extract of 2
    zone.gp(JAN, gp_lines(1, 10, type1=3))
    zone.gp(FEB, gp_lines(1, 2))
    led = zone.ledger()
    assert led.at[f"gp/{FEB}", "status"] == "held"
    reason = led.at[f"gp/{FEB}", "reason"]
    assert reason.startswith(f"2 rows received against 7 in the current extract {JAN};")
    # the public ledger's rows_received and the reason together say nothing of the 3
    assert "10" not in reason.replace(JAN, "") and int(led.at[f"gp/{JAN}", "rows_received"]) == 7


def test_release_makes_the_held_extract_current_on_the_next_run(zone, capsys):
    zone.gp(JAN, gp_lines(1, 10))
    zone.gp(FEB, gp_lines(1, 4))  # the practice really did lose patients: an operator checked
    stored = zone.wh.read("gp_extracts").to_pandas().set_index("submission_id")["held"].to_dict()
    # a file that is not held cannot be released, and says why
    rc = cli.main(["release", f"gp/{JAN}", "--warehouse", str(zone.root / "warehouse"), "--by", "ops"])
    assert rc == 1 and "not held (status current)" in capsys.readouterr().err
    rc = cli.main(["release", f"gp/{FEB}", "--warehouse", str(zone.root / "warehouse"), "--by", "j.smith",
                   "--note", "practice split, confirmed with the CCG"])
    assert rc == 0
    led = zone.ledger()
    assert led.at[f"gp/{FEB}", "status"] == "current"
    assert led.at[f"gp/{FEB}", "reason"].startswith("released by j.smith on ")
    assert "practice split, confirmed with the CCG" in led.at[f"gp/{FEB}", "reason"]
    assert led.at[f"gp/{JAN}", "status"] == "superseded"
    assert zone.newest() == {"A81001": ["GP_A81001_20240210"]}
    assert zone.coverage("2024-02")["registered_patients"] == 4
    # the release is an event in the ledger, the extract's own record is not edited
    assert zone.wh.read("gp_extracts").to_pandas().set_index("submission_id")["held"].to_dict() == stored
    events = ingest.ledger._events(zone.wh)
    assert list(events.loc[events["status"] == "released", "file_name"]) == [f"gp/{FEB}"]
    # the public ledger: current, so no reason (outputs.md); held back: nothing
    sub = ingest.submissions_dataset(zone.wh).to_pandas().set_index("file_name")
    assert sub.at[f"gp/{FEB}", "status"] == "current"
    assert not [h for h in stages.held_back_summary(zone.settings) if FEB in h["what"]]
    # a later extract is compared with the released one (4 rows): 3 rows is not under half
    zone.gp(MAR, gp_lines(1, 3))
    assert zone.ledger().at[f"gp/{MAR}", "status"] == "current"


def test_a_later_extract_supersedes_both(zone):
    zone.gp(JAN, gp_lines(1, 10))
    zone.gp(FEB, gp_lines(1, 0))
    zone.gp(MAR, gp_lines(1, 9))  # compared with January's 10, not with the held 0
    led = zone.ledger()
    assert led.at[f"gp/{MAR}", "status"] == "current"
    assert led.at[f"gp/{JAN}", "status"] == "superseded"
    assert led.at[f"gp/{FEB}", "status"] == "superseded"
    assert led.at[f"gp/{FEB}", "reason"].startswith(f"superseded by a newer extract, gp/{MAR} (it had been held: 0 rows")
    assert zone.newest() == {"A81001": ["GP_A81001_20240310"]}
    assert not [h for h in stages.held_back_summary(zone.settings) if "GP_" in h["what"]]
    _publishable(zone)
    # data_quality_summary leaves the superseded held extract out: February is not held
    out = quality.data_quality_tables(zone.wh.read("dq_rules"), zone.wh.read("dq_fields"),
                                      ingest.read_ledger(zone.wh), zone.settings)
    s = out["data_quality_summary"].to_pandas()
    assert not s["held"].any()
    # a held extract still does not count for its own month
    assert zone.coverage("2024-02")["registered_patients"] is None


def test_two_extracts_in_one_run_compare_with_each_other(zone):
    put(zone.landing, f"gp/{JAN}", gp_lines(1, 10))
    put(zone.landing, "gp/GP_A81001_20240120.csv", gp_lines(1, 3))
    ingest.ingest("gp", "2024-01", zone.store, zone.wh, zone.settings, validator=FAKE)
    led = zone.ledger()
    assert led.at["gp/GP_A81001_20240120.csv", "status"] == "held"
    assert led.at[f"gp/{JAN}", "status"] == "current"


# ----------------------------------------------------------------------------- (b) late reference data
FFT_FILE = "fft/FFT_RGT_202401_20240205120000.csv"


def fft_lines(sites: list[str]) -> list[str]:
    return [",".join(FFT_COLS)] + [f"R{k},RGT,{site},IP,2024-01-15,1" for k, site in enumerate(sites, 1)]


def put_now(landing: Path, rel: str, text: str) -> None:
    """A new version of a reference file, written now (after the pipeline last looked)."""
    p = landing / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


class RefZone(Zone):
    validator = None  # the real validator

    def sites(self, rows: list[tuple[str, str]]) -> dict:
        put_now(self.landing, "reference/sites.csv",
                "SITE_CODE,PROVIDER_CODE,NAME\n" + "".join(f"{s},{p},SITE {s}\n" for s, p in rows))
        return ingest.load_reference(self.store, self.wh)

    def national_responses(self, period="2024-01") -> int:
        from pipelines import fft

        scores = fft.fft_scores(current.current_fft(self.wh, period), self.wh.read("ref_sites"),
                                self.wh.read("ref_providers")).to_pandas()
        return int(scores.loc[scores["level"] == "national", "responses"].sum())


@pytest.fixture
def ref_zone(tmp_path):
    z = RefZone(tmp_path)
    put(z.landing, "reference/providers.csv", ["PROVIDER_CODE,NAME,COMMISSIONER_CODE", "RGT,A,00K", "RXX,B,00L"])
    return z


def test_sites_arriving_after_fft_data_quarantine_the_row_they_now_reject(ref_zone):
    z = ref_zone
    z.sites([("RGT01", "RGT"), ("RGT02", "RGT")])
    put(z.landing, FFT_FILE, fft_lines(["RGT01", "RGT01", "RGT02"]))
    ingest.ingest("fft", "2024-01", z.store, z.wh, z.settings)
    assert z.national_responses() == 3
    before = z.ledger().loc[FFT_FILE]
    assert (before["rows_received"], before["rows_kept"], before["rows_quarantined"]) == (3, 3, 0)

    out = z.sites([("RGT01", "RGT"), ("RGT02", "RXX")])  # RGT02 is another provider's site
    assert [r["file_name"] for r in out["revalidated"]] == [FFT_FILE]
    assert z.national_responses() == 2
    led = z.ledger()
    row = led.loc[FFT_FILE]
    assert row["status"] == "current"
    assert (row["rows_received"], row["rows_kept"], row["rows_quarantined"]) == (3, 2, 1)
    day = pd.Timestamp(led.loc["reference/sites.csv", "first_seen_at"].max()).strftime("%Y-%m-%d")
    assert row["reason"] == (f"re-validated against reference/sites.csv of {day}: 1 row now quarantined, "
                             "SITE_CODE_PROVIDER now fails on 1 row (was 0)")
    q = z.wh.read("quarantine", ["2024-01"]).to_pandas()
    assert q["line"].tolist() == [4] and list(q["rule_ids"].iloc[0]) == ["SITE_CODE_PROVIDER"]
    # the public ledger's counts, the data-quality figures
    sub = ingest.submissions_dataset(z.wh).to_pandas().set_index("file_name")
    assert (sub.at[FFT_FILE, "rows_kept"], sub.at[FFT_FILE, "rows_quarantined"]) == (2, 1)
    _publishable(z)
    dq = quality.data_quality_tables(z.wh.read("dq_rules"), z.wh.read("dq_fields"), ingest.read_ledger(z.wh),
                                     z.settings)
    s = dq["data_quality_summary"].to_pylist()[0]
    assert (s["rows_received"], s["rows_kept"], s["rows_quarantined"]) == (3, 2, 1)
    r = dq["data_quality"].to_pandas().set_index("rule_id").loc["SITE_CODE_PROVIDER"]
    assert (r["rows_checked"], r["rows_failed"]) == (3, 1)
    assert len(z.wh.read("dq_rules", ["2024-01"]).to_pandas().query("rule_id == 'SITE_CODE_PROVIDER'")) == 1

    # the same sites again: nothing to do; the next run reads the same
    assert ingest.load_reference(z.store, z.wh).get("revalidated") is None
    assert z.national_responses() == 2

    # and back: the row passes again and is kept, the quarantine row goes
    out = z.sites([("RGT01", "RGT"), ("RGT02", "RGT"), ("RXX01", "RXX")])
    assert [r["file_name"] for r in out["revalidated"]] == [FFT_FILE]
    assert z.national_responses() == 3
    row = z.ledger().loc[FFT_FILE]
    assert (row["rows_kept"], row["rows_quarantined"]) == (3, 0)
    assert row["reason"].endswith(": 1 row now kept, SITE_CODE_PROVIDER now fails on 0 rows (was 1)")
    assert z.wh.read("quarantine", ["2024-01"]).num_rows == 0


def test_a_file_gone_from_the_landing_zone_is_said_not_to_be_revalidated(ref_zone):
    z = ref_zone
    z.sites([("RGT01", "RGT"), ("RGT02", "RGT")])
    put(z.landing, FFT_FILE, fft_lines(["RGT01", "RGT02"]))
    ingest.ingest("fft", "2024-01", z.store, z.wh, z.settings)
    (z.landing / FFT_FILE).unlink()
    z.sites([("RGT01", "RGT"), ("RGT02", "RXX")])
    row = z.ledger().loc[FFT_FILE]
    assert "not re-validated against reference/sites.csv" in row["reason"]
    assert (row["rows_kept"], row["rows_quarantined"]) == (2, 0)  # as first validated, still balanced
    assert z.national_responses() == 2


def epraccur(*codes: str) -> str:
    rows = []
    for c in codes:
        row = [""] * 27
        row[0], row[1], row[12], row[14], row[25] = c, "SURGERY", "A", "00K", "4"
        rows.append(",".join(row) + "\n")
    return "".join(rows)


def test_epraccur_arriving_after_sus_data_recounts_the_unknown_practice_warning(ref_zone):
    z = ref_zone
    put_now(z.landing, "reference/epraccur.csv", epraccur("A81001"))
    ingest.load_reference(z.store, z.wh)
    cols = ["PROCODE3", "SUSRECID", "EPISTART", "EPIEND", "ADMIDATE", "ADMIMETH", "DISMETH", "SEX", "GPPRAC"]
    name = "sus_apc/APC_RGT_202401_20240205120000_BULK.csv"
    put(z.landing, name, [",".join(cols)] + [
        f"RGT,{rid},2024-01-05,2024-01-10,2024-01-05,11,1,1,{gp}" for rid, gp in
        (("E1", "A81001"), ("E2", "A81002"), ("E3", "A81002"))])
    ingest.ingest("sus_apc", "2024-01", z.store, z.wh, z.settings)

    def warned() -> dict:
        t = z.wh.read("sus_episodes", ["2024-01"]).to_pandas().set_index("susrecid")
        return {k: "GPPRAC_UNKNOWN" in list(v) for k, v in t["dq_warnings"].items()}

    def failed() -> int:
        r = z.wh.read("dq_rules", ["2024-01"]).to_pandas()
        return int(r.loc[r["rule_id"] == "GPPRAC_UNKNOWN", "rows_failed"].sum())

    assert warned() == {"E1": False, "E2": True, "E3": True} and failed() == 2
    put_now(z.landing, "reference/epraccur.csv", epraccur("A81001", "A81002"))  # A81002 opened
    out = ingest.load_reference(z.store, z.wh)
    assert [r["file_name"] for r in out["revalidated"]] == [name]
    assert warned() == {"E1": False, "E2": False, "E3": False} and failed() == 0
    row = z.ledger().loc[name]
    assert row["status"] == "current" and (row["rows_received"], row["rows_kept"], row["rows_quarantined"]) == (3, 3, 0)
    assert row["reason"].endswith(": GPPRAC_UNKNOWN now fails on 0 rows (was 2)")
    assert current.current_sus(z.wh, "2024-01").num_rows == 3


def test_a_file_with_most_rows_now_rejected_is_held_and_the_older_file_stands_again(ref_zone):
    z = ref_zone
    z.sites([("RGT01", "RGT"), ("RGT02", "RGT")])
    older = "fft/FFT_RGT_202401_20240203120000.csv"
    put(z.landing, older, fft_lines(["RGT01"]))
    put(z.landing, FFT_FILE, fft_lines(["RGT01", "RGT02", "RGT02"]))
    ingest.ingest("fft", "2024-01", z.store, z.wh, z.settings)
    assert z.ledger().loc[older, "status"] == "superseded" and z.national_responses() == 3

    z.sites([("RGT01", "RGT"), ("RGT02", "RXX")])  # 2 of the newer file's 3 rows now fail
    led = z.ledger()
    row = led.loc[FFT_FILE]
    assert row["status"] == "held"
    assert row["reason"].startswith("held after re-validation against reference/sites.csv of ")
    assert "2 of 3 rows rejected, more than 50%" in row["reason"]
    assert (row["rows_received"], row["rows_kept"], row["rows_quarantined"]) == (3, 1, 2)
    assert led.loc[older, "status"] == "current"  # earlier data for RGT 2024-01 stay in force
    assert z.national_responses() == 1
    assert any(h["what"] == f"held {FFT_FILE}" for h in stages.held_back_summary(z.settings))
    dq = quality.data_quality_tables(z.wh.read("dq_rules"), z.wh.read("dq_fields"), ingest.read_ledger(z.wh),
                                     z.settings)["data_quality_summary"].to_pylist()[0]
    assert dq["held"] is True and dq["held_reason"].startswith("held after re-validation")

    z.sites([("RGT01", "RGT"), ("RGT02", "RGT"), ("RXX01", "RXX")])  # and back: no longer held
    led = z.ledger()
    assert led.loc[FFT_FILE, "status"] == "current" and led.loc[older, "status"] == "superseded"
    assert z.national_responses() == 3
