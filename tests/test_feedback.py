"""Feedback packs (issue 25 item 1): a tmp landing zone with GP extracts with planted bad
rows, a held extract and a rejected one, validated by the real suite; the packs under
<publish>/feedback/gp/<practice>/<period>/ list the exact lines and rule ids, the effects,
how to fix, and never a value of a row."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import pytest

from pipelines import feedback, publish, stages
from pipelines.config import Settings
from pipelines.storage import Store
from pipelines.warehouse import Warehouse

from helpers import found_in, land, nhs_numbers

P = "2024-01"
HEADER = "NHS_NUMBER,DATE_OF_BIRTH,SEX,POSTCODE,LSOA,ETHNIC_CATEGORY,REGISTRATION_DATE,OBJECTION"
NUMBERS = nhs_numbers(100, 1200)
BAD_NHS = NUMBERS[0][:9] + str((int(NUMBERS[0][9]) + 1) % 10)  # a wrong check digit
POSTCODE = "CB2 0QQ"
FREE_TEXT = "Mrs Jane Doe of 12 Acacia Avenue"
ODD_NAME = f"gp/Jane Doe {POSTCODE} {NUMBERS[5]}.csv"
N = 1100  # rows of A81001 (lines 2..1101)


def row(k: int, **kw) -> str:
    v = {"NHS_NUMBER": NUMBERS[k], "DATE_OF_BIRTH": "1970-01-01", "SEX": "1", "POSTCODE": "",
         "LSOA": "E01000001", "ETHNIC_CATEGORY": "A", "REGISTRATION_DATE": "2000-01-01", "OBJECTION": ""}
    v.update(kw)
    return ",".join(f'"{x}"' if "," in x else x for x in v.values())


def a81001() -> str:
    lines = [HEADER]
    for k in range(N):
        line = k + 2
        if line == 3:
            lines.append(row(k, NHS_NUMBER=BAD_NHS))                      # reject NHS_NUMBER_INVALID
        elif line == 4:
            lines.append(row(k, SEX=POSTCODE))                            # reject SEX_CODE
        elif line in (5, 6, 7, 9):
            lines.append(row(k, ETHNIC_CATEGORY=FREE_TEXT))               # warn ETHNIC_CATEGORY_CODE
        elif line == 8:
            lines.append(row(k, DATE_OF_BIRTH="1970-13-45"))              # reject DATE_OF_BIRTH_DATE
        else:
            lines.append(row(k, LSOA="E0100"))                            # warn LSOA_FORMAT (1,093 rows)
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def zone(tmp_path_factory):
    root = tmp_path_factory.mktemp("feedback")
    landing = root / "landing"
    land(landing, "gp/GP_A81001_20240131.csv", a81001())
    # an earlier extract of the month, superseded by the one above: still in the pack
    land(landing, "gp/GP_A81001_20240105.csv", "\n".join([HEADER, row(1150), row(1151, SEX="X"), row(1152),
                                                           row(1153)]) + "\n")
    # held: 2 of 3 rows rejected (SEX not a code)
    land(landing, "gp/GP_A81002_20240131.csv", "\n".join(
        [HEADER, row(1000, SEX="X"), row(1001), row(1002, SEX=POSTCODE)]) + "\n")
    # rejected whole: no SEX column
    land(landing, "gp/GP_A81003_20240131.csv", "NHS_NUMBER,DATE_OF_BIRTH,REGISTRATION_DATE,OBJECTION\n"
         f"{NUMBERS[1100]},1970-01-01,2000-01-01,\n")
    # a name that is supplier free text: rejected, and no pack names it
    land(landing, ODD_NAME, HEADER + "\n" + row(1101) + "\n")
    settings = Settings(landing=str(landing), warehouse=str(root / "wh"), publish=str(root / "pub"))
    stages.scan(settings)
    stages.load_reference(settings)
    ingested = stages.ingest_feed(settings, "gp", P)
    report = stages.feedback_packs(settings, run_id="t")
    return settings, report, root, ingested


def pack(settings, practice: str) -> tuple[Path, list[dict]]:
    folder = Path(settings.publish) / "feedback" / "gp" / practice / P
    text = (folder / f"feedback_gp_{practice}_{P}.csv").read_text(encoding="utf-8")
    return folder, list(csv.DictReader(io.StringIO(text)))


def by_rule(rows: list[dict]) -> dict[str, dict]:
    return {r["rule_id"]: r for r in rows}


def test_pack_lists_exact_lines_rule_ids_effects_and_fixes(zone):
    settings, report, _, _ = zone
    assert report["packs"] == 3 and report["packs_written"] == 3 and not report["failed"]
    folder, rows = pack(settings, "A81001")
    old = [r for r in rows if r["file"] == "gp/GP_A81001_20240105.csv"]
    assert [(r["rule_id"], r["line_numbers"], r["status"]) for r in old] == [("SEX_CODE", "3", "superseded")]
    rows = [r for r in rows if r not in old]
    rules = by_rule(rows)
    assert set(rules) == {"NHS_NUMBER_INVALID", "SEX_CODE", "DATE_OF_BIRTH_DATE", "ETHNIC_CATEGORY_CODE",
                          "LSOA_FORMAT"}
    assert {r["file"] for r in rows} == {"gp/GP_A81001_20240131.csv"}
    # rows not used first, then the warnings
    assert [r["rule_id"] for r in rows] == ["DATE_OF_BIRTH_DATE", "NHS_NUMBER_INVALID", "SEX_CODE",
                                           "ETHNIC_CATEGORY_CODE", "LSOA_FORMAT"]
    assert rules["NHS_NUMBER_INVALID"]["line_numbers"] == "3"
    assert rules["SEX_CODE"]["line_numbers"] == "4"
    assert rules["DATE_OF_BIRTH_DATE"]["line_numbers"] == "8"
    assert rules["ETHNIC_CATEGORY_CODE"]["line_numbers"] == "5 to 7, 9"
    for rid in ("NHS_NUMBER_INVALID", "SEX_CODE", "DATE_OF_BIRTH_DATE"):
        assert rules[rid]["effect"] == "row_quarantined" and rules[rid]["severity"] == "reject"
        assert rules[rid]["rows_failed"] == "1" and rules[rid]["lines_note"] == "all 1 line(s) listed"
    assert rules["ETHNIC_CATEGORY_CODE"]["effect"] == "row_warned" and rules["ETHNIC_CATEGORY_CODE"]["rows_failed"] == "4"
    assert rules["SEX_CODE"]["field"] == "SEX" and rules["SEX_CODE"]["status"] == "current"
    # 1,093 LSOA failures (lines 2 and 10..1101): the first 1,000 line numbers, and the count
    lsoa = rules["LSOA_FORMAT"]
    assert lsoa["rows_failed"] == "1093" and lsoa["lines_listed"] == "1000"
    assert lsoa["line_numbers"] == "2, 10 to 1008"
    assert lsoa["lines_note"] == "the first 1,000 of 1,093 lines listed"
    # how to fix comes from the rule's declaration
    from expectations import gp
    declared = {r.id: r for r in gp.RULES}
    for rid, r in rules.items():
        assert r["how_to_fix"] == declared[rid].how_to_fix and r["message"] == declared[rid].message
    assert "allowed codes (0, 1, 2, 9)" in rules["SEX_CODE"]["how_to_fix"]
    # the manifest lists both files with their digests, and the folder verifies
    manifest = json.loads((folder / "_manifest.json").read_text())
    assert set(manifest["files"]) == {f"feedback_gp_A81001_{P}.csv", f"feedback_gp_A81001_{P}.xlsx"}
    assert manifest["source"] == "gp" and manifest["submitter_code"] == "A81001" and manifest["period"] == P
    assert publish.verify_publication(Store(settings.publish), "feedback/gp/A81001", P) == []
    assert sorted(p.name for p in folder.iterdir()) == sorted(["_manifest.json", *manifest["files"]])


def test_xlsx_holds_the_same_rules_and_the_files(zone):
    from openpyxl import load_workbook

    settings, _, _, _ = zone
    folder, rows = pack(settings, "A81001")
    wb = load_workbook(folder / f"feedback_gp_A81001_{P}.xlsx")
    assert wb.sheetnames == ["Read me", "Rules", "Files"]
    sheet = list(wb["Rules"].iter_rows(values_only=True))
    head = list(sheet[0])
    got = {r[head.index("rule_id")]: r for r in sheet[1:]}
    assert got["ETHNIC_CATEGORY_CODE"][head.index("line_numbers")] == "5 to 7, 9"
    assert got["NHS_NUMBER_INVALID"][head.index("effect")] == "row_quarantined"
    assert len(sheet) - 1 == len(rows)
    files = list(wb["Files"].iter_rows(values_only=True))
    fh = list(files[0])
    got = {f[fh.index("file")]: f for f in files[1:]}
    new, old = got["gp/GP_A81001_20240131.csv"], got["gp/GP_A81001_20240105.csv"]
    assert new[fh.index("rows_received")] == N and new[fh.index("rows_quarantined")] == 3
    assert new[fh.index("status")] == "current" and new[fh.index("reason")] is None
    assert old[fh.index("status")] == "superseded" and "superseded by" in old[fh.index("reason")]
    assert (old[fh.index("rows_received")], old[fh.index("rows_kept")]) == (4, 3)


def test_held_and_rejected_files_say_so(zone):
    settings, _, _, _ = zone
    _, held = pack(settings, "A81002")
    rules = by_rule(held)
    assert rules["FILE_HELD"]["effect"] == "file_held" and rules["FILE_HELD"]["status"] == "held"
    assert "held" in rules["FILE_HELD"]["message"] and "release" in rules["FILE_HELD"]["how_to_fix"]
    assert rules["SEX_CODE"]["line_numbers"] == "2, 4" and rules["SEX_CODE"]["effect"] == "row_quarantined"
    assert rules["SEX_CODE"]["status"] == "held"
    _, rejected = pack(settings, "A81003")
    assert [r["rule_id"] for r in rejected] == ["FILE_REJECTED"]
    r = rejected[0]
    assert r["effect"] == "file_rejected" and r["status"] == "rejected" and r["severity"] == "file"
    assert "lacks required column(s) SEX" in r["message"] and r["rows_failed"] == ""


def test_no_value_of_a_row_in_any_byte_of_any_pack(zone):
    """Attack: bad values that are an NHS number, a postcode and a supplier's free text, a
    file name holding a postcode and an NHS number: none is in any byte of any pack (the CSV,
    the manifest, every part of the XLSX zip, every cell as openpyxl reads it)."""
    from openpyxl import load_workbook

    settings, _, _, _ = zone
    root = Path(settings.publish) / "feedback"
    texts = []
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        texts.append(p.read_bytes().decode("utf-8", "replace"))
        if p.suffix == ".xlsx":
            with zipfile.ZipFile(p) as z:
                texts += [z.read(n).decode("utf-8", "replace") for n in z.namelist()]
            wb = load_workbook(p)
            texts += [str(c) for ws in wb for r in ws.iter_rows(values_only=True) for c in r if c is not None]
    assert len(texts) > 9
    blob = "\n".join(texts)
    assert found_in(blob, NUMBERS + [BAD_NHS]) == set()
    for needle in (POSTCODE, POSTCODE.replace(" ", ""), FREE_TEXT, "Acacia", "Jane Doe", "1970-13-45", "E0100",
                   "1970-01-01"):
        assert needle not in blob, needle
    # the free-text file is in no pack, and no folder is named after anything but a code
    assert sorted(p.relative_to(root).as_posix() for p in root.glob("*/*/*")) == [
        f"gp/A81001/{P}", f"gp/A81002/{P}", f"gp/A81003/{P}"]


def test_not_in_the_public_zone_and_rerun_writes_nothing(zone):
    settings, _, root, _ = zone
    pub = Path(settings.publish)
    assert not any("feedback" in p.as_posix() for p in (pub / "public").rglob("*"))
    assert not any(d["dataset"].startswith("feedback") for d in stages.published_summary(settings))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (pub / "feedback").rglob("*") if p.is_file()}
    again = stages.feedback_packs(settings, run_id="t2")
    assert again["packs_written"] == 0 and again["packs_unchanged"] == 3
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (pub / "feedback").rglob("*") if p.is_file()}
    assert after == before
    # without the digests (lost warehouse state) the packs are rebuilt byte for byte: nothing written
    Warehouse(Store(settings.warehouse)).store.delete(feedback.DIGESTS)
    third = stages.feedback_packs(settings, run_id="t3")
    assert third["packs_written"] == 0
    assert {p: p.read_bytes() for p in before} == {p: v[1] for p, v in before.items()}


def test_line_ranges_cap_and_order():
    assert feedback.line_ranges([9, 2, 3, 4, 12, 13, 2]) == ("2 to 4, 9, 12 to 13", 6, 6)
    text, listed, total = feedback.line_ranges(range(2, 5000, 2))
    assert listed == 1000 and total == 2499 and text.endswith(", 2000")
    assert feedback.line_ranges([]) == ("", 0, 0)


def test_identifier_shaped_text_is_withheld(zone):
    """A text of the pipeline's own that would carry something shaped like an identifier
    (a ledger reason quoting supplier text, say) is withheld from the pack, never written."""
    from pipelines import ingest

    settings, _, _, _ = zone
    wh = Warehouse(Store(settings.warehouse))
    led = ingest.read_ledger(wh)
    packs = [p for p in feedback.plan(wh, led) if p.submitter == "A81003"]
    p = packs[0]
    p.files = p.files.assign(reason=f"rejected: column {NUMBERS[7]} near {POSTCODE}")
    rules, files, withheld = feedback.build_pack(p, wh, {})
    assert withheld == 2
    assert rules.column("message").to_pylist() == [feedback.WITHHELD]
    assert files.column("reason").to_pylist() == [feedback.WITHHELD]


def test_pack_written_to_s3(zone, s3_bucket):
    bucket, endpoint = s3_bucket
    settings, _, _, _ = zone
    wh = Warehouse(Store(settings.warehouse))
    wh.store.delete(feedback.DIGESTS)
    out = Store(f"s3://{bucket}/pub", endpoint)
    rep = feedback.write_packs(wh, out, run_id="s3")
    assert len(rep.written) == 3 and rep.root == f"s3://{bucket}/pub/feedback"
    manifest = json.loads(out.read_bytes(f"feedback/gp/A81001/{P}/_manifest.json"))
    assert set(manifest["files"]) == {f"feedback_gp_A81001_{P}.csv", f"feedback_gp_A81001_{P}.xlsx"}
    assert publish.verify_publication(out, "feedback/gp/A81001", P) == []
    assert not [f.path for f in out.list("") if "_staging" in f.path]
    got = feedback.read_pack(out, "gp", "A81001", P)
    assert by_rule(got["rules"])["SEX_CODE"]["line_numbers"] == "4"


def test_validity_check_links_the_packs_and_the_run_summary_names_them(zone):
    """The Dagster checks of the period's ingest name the packs' folders of the submitters
    whose rules failed; the run summary says how many packs were written and where."""
    from pipelines.runner import RunSummary, print_summary

    settings, report, _, ingested = zone
    checks = {c["name"]: c for c in stages.ingest_checks(ingested)}
    root = Path(settings.publish) / "feedback"
    links = checks["validity"]["metadata"]["feedback_packs"]
    assert links == [f"{root}/gp/A81001/{P}/", f"{root}/gp/A81002/{P}/"]
    assert all(Path(x).is_dir() for x in links)
    assert "feedback_packs" not in checks["uniqueness"]["metadata"]  # no uniqueness rule failed
    out = io.StringIO()
    print_summary(RunSummary(periods=[P], new_files=[("x", "y")], feedback=report), settings, out)
    assert f"Feedback packs for submitters: 3 written, 3 in all, under {root}\n" in out.getvalue()


def test_the_dagster_asset_reports_the_packs(zone):
    """The feedback_packs asset (after the submissions ledger) carries the counts and the
    root folder the run summary prints."""
    import dagster as dg

    from assets.publish import feedback_packs
    from pipelines.resources import CareDataConfig

    settings, _, _, _ = zone
    caredata = CareDataConfig(landing=settings.landing, warehouse=settings.warehouse, publish=settings.publish)
    result = dg.materialize([feedback_packs], resources={"caredata": caredata}, raise_on_error=True)
    mats = [ev.event_specific_data.materialization for ev in result.all_events
            if ev.event_type_value == "ASSET_MATERIALIZATION"]
    md = {k: v.value for k, v in mats[0].metadata.items()}
    assert mats[0].asset_key.to_user_string() == "feedback_packs"
    assert md["packs"] == 3 and md["failed"] == [] and md["root"] == str(Path(settings.publish) / "feedback")


def test_release_with_by_and_reason_then_the_pack_says_current(zone, capsys):
    """`caredata release FILE --by NAME --reason TEXT` records both in the ledger; the next
    feedback run rebuilds that submitter's pack: the file is current, no FILE_HELD row, its
    quarantined rows still listed. (Last in this module: it changes the zone.)"""
    from pipelines import cli, ingest

    settings, _, _, _ = zone
    rc = cli.main(["release", "gp/GP_A81002_20240131.csv", "--warehouse", settings.warehouse,
                   "--by", "j.smith", "--reason", "list cleaned, confirmed with the practice"])
    assert rc == 0, capsys.readouterr().err
    led = ingest.read_ledger(Warehouse(Store(settings.warehouse))).to_pandas().set_index("file_name")
    reason = led.at["gp/GP_A81002_20240131.csv", "reason"]
    assert reason.startswith("released by j.smith on ") and "list cleaned, confirmed with the practice" in reason
    rep = stages.feedback_packs(settings, run_id="after-release")
    assert rep["written"] == [f"feedback/gp/A81002/{P}"]
    rules = by_rule(pack(settings, "A81002")[1])
    assert "FILE_HELD" not in rules and rules["SEX_CODE"]["status"] == "current"
    assert rules["SEX_CODE"]["line_numbers"] == "2, 4"
    assert "j.smith" not in (Path(settings.publish) / "feedback" / "gp" / "A81002" / P /
                             f"feedback_gp_A81002_{P}.csv").read_text()


def test_hes_extract_one_pack_per_provider_and_month(tmp_path):
    """A HES extract (free-text name) holds many providers: each provider's month gets its
    own pack with its own lines; a PROCODE3 that is no provider code (here a postcode) names
    no folder, and neither it nor the extract's name is in any pack."""
    landing = tmp_path / "landing"
    cols = ["PROCODE3", "EPIKEY", "EPISTART", "EPIEND", "ADMIDATE", "ADMIMETH", "DISMETH", "SEX", "NEWNHSNO"]

    def ep(key, provider, **kw):
        r = {"PROCODE3": provider, "EPIKEY": key, "EPISTART": "2002-01-02", "EPIEND": "2002-01-10",
             "ADMIDATE": "2002-01-02", "ADMIMETH": "11", "DISMETH": "1", "SEX": "1", "NEWNHSNO": NUMBERS[int(key[1:])]}
        r.update(kw)
        return ",".join(r[c] for c in cols)

    land(landing, f"hes_apc/Jane Doe {POSTCODE}.csv", "\n".join([
        ",".join(cols),
        ep("K1", "RAA"),                      # line 2
        ep("K2", "RAA", SEX="X"),             # line 3: SEX_CODE, quarantined
        ep("K3", "RBB", NEWNHSNO=BAD_NHS),    # line 4: NEWNHSNO_INVALID, kept with a warning
        ep("K4", POSTCODE),                   # line 5: PROCODE3_FORMAT, quarantined, no provider
    ]) + "\n")
    settings = Settings(landing=str(landing), warehouse=str(tmp_path / "wh"), publish=str(tmp_path / "pub"))
    stages.scan(settings)
    stages.load_reference(settings)
    stages.ingest_hes(settings)
    rep = stages.feedback_packs(settings)
    root = Path(settings.publish) / "feedback"
    assert sorted(p.relative_to(root).as_posix() for p in root.glob("*/*/*")) == [
        "hes_apc/RAA/2002-01", "hes_apc/RBB/2002-01"]
    assert rep["packs"] == 2 and not rep["failed"]
    raa = by_rule(feedback.read_pack(Store(settings.publish), "hes_apc", "RAA", "2002-01")["rules"])
    assert set(raa) == {"SEX_CODE"} and raa["SEX_CODE"]["line_numbers"] == "3"
    assert raa["SEX_CODE"]["effect"] == "row_quarantined" and raa["SEX_CODE"]["file"].startswith("hes_apc/extract-")
    rbb = by_rule(feedback.read_pack(Store(settings.publish), "hes_apc", "RBB", "2002-01")["rules"])
    assert set(rbb) == {"NEWNHSNO_INVALID"} and rbb["NEWNHSNO_INVALID"]["line_numbers"] == "4"
    assert rbb["NEWNHSNO_INVALID"]["effect"] == "row_warned"
    from openpyxl import load_workbook
    files = list(load_workbook(root / "hes_apc/RAA/2002-01/feedback_hes_apc_RAA_2002-01.xlsx")["Files"]
                 .iter_rows(values_only=True))
    head = list(files[0])
    assert (files[1][head.index("rows_received")], files[1][head.index("rows_quarantined")]) == (2, 1)
    blob = "\n".join(p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*") if p.is_file())
    assert POSTCODE not in blob and "Jane" not in blob and found_in(blob, NUMBERS + [BAD_NHS]) == set()


def test_a_rule_counted_after_linkage_rebuilds_the_pack_with_its_example_lines(zone):
    """PROCEDURE_AGE_UNKNOWN is counted by the linkage stage (dq_rules part
    linkage-age-unknown), not at take-in: when it changes, the pack is rebuilt without any
    ledger change, and lists the example lines it has, saying so."""
    import pyarrow as pa

    from pipelines import schemas
    from pipelines.outcomes import AGE_UNKNOWN_RULE

    settings, _, _, _ = zone
    wh = Warehouse(Store(settings.warehouse))
    rows = schemas.get("dq_rules").conform(pa.Table.from_pylist([{
        "period": P, "submission_id": "GP_A81001_20240131", "source": "gp", "submitter_code": "A81001",
        "rule_id": AGE_UNKNOWN_RULE, "field": "DOB", "severity": "warn", "rows_checked": 40, "rows_failed": 7,
        "example_lines": ["12", "15"]}]))
    wh.write("dq_rules", rows, P, part=feedback.LINKAGE_PART)
    rep = stages.feedback_packs(settings, run_id="after-link")
    assert f"feedback/gp/A81001/{P}" in rep["written"]
    r = by_rule(pack(settings, "A81001")[1])[AGE_UNKNOWN_RULE]
    assert r["line_numbers"] == "12, 15" and r["rows_failed"] == "7" and r["effect"] == "row_warned"
    assert r["lines_note"].startswith("2 example line(s) of 7") and r["how_to_fix"] == feedback.AGE_UNKNOWN_FIX


def test_a_rejection_that_names_a_line_gives_it(tmp_path):
    """A file rejected for a ragged row: its FILE_REJECTED row carries the line the
    rejection names, and the reason without the file's own name."""
    import pandas as pd

    files = pd.DataFrame([{"file_name": "gp/GP_A81004_20240131.csv", "submission_id": "GP_A81004_20240131",
                           "sha256": "b" * 64, "status": "rejected",
                           "reason": "gp/GP_A81004_20240131.csv: line 57: expected 8 fields, found 12",
                           "rows_received": None, "rows_quarantined": None, "rows_kept": None}])
    p = feedback.Pack("gp", "A81004", P, files)
    rules, got_files, withheld = feedback.build_pack(p, Warehouse(Store(tmp_path)), {}, dq=pd.DataFrame(
        {c: [] for c in ("submission_id", "rule_id", "field", "severity", "rows_checked", "rows_failed",
                         "example_lines", "submitter_code")}), lines={})
    row = rules.to_pylist()[0]
    assert (row["rule_id"], row["effect"], row["line_numbers"], row["lines_listed"]) == ("FILE_REJECTED", "file_rejected",
                                                                                         "57", 1)
    assert row["message"] == "line 57: expected 8 fields, found 12" and withheld == 0
    assert got_files.to_pylist()[0]["reason"] == "line 57: expected 8 fields, found 12"


def test_publish_folder_is_atomic_and_recovers_an_interrupted_write(tmp_path):
    """publish_folder follows the datasets' protocol: a run killed after its commit (the
    manifest lists staged files) is completed by the next call; staging left before a commit
    is dropped; nothing outside the folder and its manifest is left behind."""
    store = Store(tmp_path)
    base = "feedback/gp/A81001/2024-01"
    assert publish.publish_folder(store, base, {"a.csv": b"one"}, {"kind": "feedback_pack"}, run_id="r1")
    assert not publish.publish_folder(store, base, {"a.csv": b"one"}, {"kind": "feedback_pack"}, run_id="r2")
    # a run killed after its commit: the manifest points at a staged file not yet promoted
    manifest = json.loads(store.read_bytes(f"{base}/_manifest.json"))
    staged = publish._staged_rel(base, "txn1", "a.csv")
    store.write_bytes(publish._join(base, staged), b"two")
    manifest["files"]["a.csv"] = {**manifest["files"]["a.csv"], "path": staged, "bytes": 3,
                                  "sha256": publish._sha256(b"two")}
    store.write_bytes(f"{base}/_manifest.json", json.dumps(manifest).encode())
    # and a leftover of a run killed before its commit
    store.write_bytes("_staging/feedback/gp/A81001/2024-01/txn0/b.csv.staged", b"junk")
    assert publish.publish_folder(store, base, {"a.csv": b"two", "b.csv": b"three"}, {"kind": "feedback_pack"})
    assert (tmp_path / base / "a.csv").read_bytes() == b"two" and (tmp_path / base / "b.csv").read_bytes() == b"three"
    assert publish.verify_publication(store, "feedback/gp/A81001", "2024-01") == []
    assert not (tmp_path / "_staging").exists()
    # a file the new set no longer has is removed after the commit
    assert publish.publish_folder(store, base, {"b.csv": b"three"}, {"kind": "feedback_pack"})
    assert sorted(p.name for p in (tmp_path / base).iterdir()) == ["_manifest.json", "b.csv"]
    with pytest.raises(publish.PublicationError):
        publish.publish_folder(store, "public/x", {"a.csv": b"x"}, {})
    with pytest.raises(publish.PublicationError):
        publish.publish_folder(store, base, {"../a.csv": b"x"}, {})
