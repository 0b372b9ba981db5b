"""Nothing a supplier writes reaches the public zone unless it is a declared code, and the
identifier scan can neither be fooled nor used to block everything (outputs.md
"Disclosure control on the public zone", inputs.md FFT WARD_CODE)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import disclosure, ingest, schemas, stages
from pipelines.config import Settings
from pipelines.nhs_number import with_check_digit
from pipelines.storage import Store
from pipelines.warehouse import Warehouse

from helpers import land

P = "2024-01"
P2 = "2024-02"
NHS = with_check_digit("999058711") or with_check_digit("999058712")
assert NHS and NHS.startswith("999")
FULL_WIDTH = "".join(chr(0xFF10 + int(c)) for c in NHS)
ARABIC_INDIC = "".join(chr(0x0660 + int(c)) for c in NHS)
KEY = "k" * 40


def fft_csv(rows, cols=("RESPONSE_ID", "PROVIDER_CODE", "SITE_CODE", "WARD_CODE", "SETTING",
                        "RESPONSE_DATE", "RESPONSE")) -> str:
    def q(v):
        v = str(v)
        return '"' + v.replace('"', '""') + '"' if any(c in v for c in ',"\n') else v
    return "\n".join([",".join(cols)] + [",".join(q(r.get(c, "")) for c in cols) for r in rows]) + "\n"


def response(rid, ward, *, site="RGT01", date="2024-01-10", answer="1"):
    return {"RESPONSE_ID": rid, "PROVIDER_CODE": "RGT", "SITE_CODE": site, "WARD_CODE": ward,
            "SETTING": "IP", "RESPONSE_DATE": date, "RESPONSE": answer}


@pytest.fixture
def zone(tmp_path):
    landing = tmp_path / "landing"
    land(landing, "reference/providers.csv", "PROVIDER_CODE,NAME,COMMISSIONER_CODE\nRGT,Trust,00K\n")
    land(landing, "reference/sites.csv", "SITE_CODE,PROVIDER_CODE,NAME\nRGT01,RGT,Site one\nRGT02,RGT,Site two\n")
    settings = Settings(landing=str(landing), warehouse=str(tmp_path / "wh"), publish=str(tmp_path / "pub"))
    return settings


def keyed(settings: Settings, key: str = KEY) -> Settings:
    return Settings(landing=settings.landing, warehouse=settings.warehouse, publish=settings.publish,
                    pseudo_key=key, thresholds=settings.thresholds)


def take_in(settings: Settings, *feeds_periods) -> None:
    stages.scan(settings)
    stages.load_reference(settings)
    for feed, period in feeds_periods:
        stages.ingest_feed(settings, feed, period)


def wh_of(settings) -> Warehouse:
    return Warehouse(Store(settings.warehouse))


def tree(root: str, under: str = "") -> dict[str, bytes]:
    base = Path(root) / under
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- declarations

def test_every_public_string_column_declares_a_format_or_codes_and_the_dictionary_says_it():
    from pipelines.dictionary import render_markdown

    text = render_markdown()
    for ds in schemas.datasets("public"):
        for c in ds.published_columns():
            if pa.types.is_string(c.type) or pa.types.is_list(c.type):
                assert c.codes is not None or c.format is not None, f"{ds.name}.{c.name}"
                if c.format is not None:
                    assert c.format.description in text, f"{ds.name}.{c.name}"


def test_check_public_rejects_a_string_outside_its_format_and_an_undeclared_string_column():
    ds = schemas.get("fft_by_specialty")
    staged = ds.arrow_schema(include_partition=True, staged=True).empty_table()
    row = {n: [None] for n in staged.column_names}
    row.update(period=[P], provider_code=["RGT"], tretspef=["=cmd|' /C calc'!A0"], responses=[20],
               extremely_likely=[20], likely=[0], neither=[0], unlikely=[0], extremely_unlikely=[0],
               dont_know=[0], suppressed=[False])
    table = disclosure.apply_small_numbers(ds, pa.table(row, schema=staged.schema))
    found = disclosure.check_public(ds, table)
    assert [(v.rule, v.column, v.count) for v in found] == [("format", "tretspef", 1)]
    assert "calc" not in str(found[0]) and "3 digits" in str(found[0])
    good = table.set_column(table.column_names.index("tretspef"), "tretspef", pa.array(["101"]))
    assert disclosure.check_public(ds, good) == []
    extra = good.append_column("note", pa.array(["anything"]))
    assert [(v.rule, v.column) for v in disclosure.check_public(ds, extra)] == [("format_undeclared", "note")]


# --------------------------------------------------------------------------- the scan

ATTACKS = {
    "full-width digits": f"W{FULL_WIDTH}",
    "Arabic-Indic digits": ARABIC_INDIC,
    "letter-prefixed": f"W{NHS}",
    "dotted": f"{NHS[:3]}.{NHS[3:6]}.{NHS[6:]}",
    "slashed and spaced": f"{NHS[:3]} / {NHS[3:6]} / {NHS[6:]}",
    "embedded in words": f"ward of john{NHS}smith",
    "digit by digit": "-".join(NHS),
}


@pytest.mark.parametrize("how", sorted(ATTACKS))
def test_scan_finds_nhs_numbers_however_written(how):
    t = pa.table({"org_code": ["RGT01/W1", ATTACKS[how], None]})
    found = disclosure.scan_for_identifiers(t, dataset="fft_scores")
    assert [(f.column, f.kind, f.count, f.rows) for f in found] == [("org_code", "nhs_number", 1, (1,))]
    assert NHS not in str(found[0])


def test_scan_finds_dates_of_birth_and_postcodes_inside_longer_strings_after_nfkc():
    values = ["JOHN SMITH 1980-01-31", "smith01/02/1980x", "born 1980.12.31", "RGT01/W1",
              "\uff2c\uff33\uff11 \uff14\uff21\uff30", "2024-02-30", "2024-01", "held: 3 of 4 rows"]
    found = {(f.kind, f.rows) for f in disclosure.scan_for_identifiers(pa.table({"v": values}))}
    assert found == {("date_of_birth", (0, 1, 2)), ("postcode", (4,))}


def test_scan_does_not_block_on_codes_dates_and_digests_that_hold_no_identifier():
    # a bad check digit, longer numbers, SUS and FFT file names, periods, rule ids
    bad = NHS[:9] + str((int(NHS[9]) + 1) % 10)
    values = [bad, "1" + NHS, NHS + "1", "sus_apc/APC_RGT_202401_20240205120000_BULK.csv",
              "fft/FFT_RGT_202401_20240205120000.csv", "gp/GP_A81001_20240131.csv", "2024-01",
              "DIAG_4_01", "held: 45 of 60 rows rejected, more than 50%"]
    assert disclosure.scan_for_identifiers(pa.table({"v": values})) == []
    # a digest is the pipeline's: its digits are no patient's (opaque in its format)
    ds = schemas.get("submissions")
    digest = "ab" + NHS + "cdef" * 13
    assert disclosure.scan_for_identifiers(pa.table({"sha256": [digest]}), strict=True)
    assert disclosure._scan_violations(ds, pa.table({"sha256": [digest],
                                                     "file_name": [f"gp/unrecognised-{NHS}ab"]}),
                                       strict=True) == []


def test_restricted_reading_keeps_record_keys_but_finds_numbers_standing_alone():
    keys = pa.table({"spell_id": ["RGT" + NHS, f"{NHS[:3]} {NHS[3:6]} {NHS[6:]}", ARABIC_INDIC]})
    found = disclosure.scan_for_identifiers(keys, strict=False)
    assert [(f.kind, f.rows) for f in found] == [("nhs_number", (1, 2))]


def test_arrow_scan_equals_the_python_rules_value_by_value():
    import random

    rng = random.Random(5)
    pieces = [NHS, NHS[:3] + " " + NHS[3:], "W", "x", " ", ".", "/", "-", "--", "\u0660", FULL_WIDTH[:4],
              "1980-01-31", "31/01/1980", "LS1 4AP", "ls14ap", "\uff2c", "2024", "12", "_", "\u00e9"]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randrange(1, 6))) for _ in range(3000)]
    for strict in (True, False):
        hits = disclosure._identifier_hits(pa.array(texts), strict=strict)
        for kind in disclosure.KINDS:
            want = [kind in disclosure.identifiers_in(t, strict=strict) for t in texts]
            assert hits[kind].tolist() == want, (kind, strict)
        assert 100 < sum(hits["nhs_number"]) < 2900


# --------------------------------------------------------------------------- FFT WARD_CODE

def test_fft_ward_code_attacks_are_quarantined_and_never_published(zone):
    landing = Path(zone.landing)
    wards = {"ok_lower": "w1", "ok": "W2", **{k: v for k, v in ATTACKS.items()},
             "plain": NHS, "name_dob": "JOHN SMITH 1980-01-31", "formula": "=cmd|' /C calc'!A0",
             "too_long": "WARD12345"}
    rows = [response(f"R{i}", ward) for i, ward in enumerate(wards.values())]
    rows += [response(f"S{i}", "W2") for i in range(10)]
    name = "fft/FFT_RGT_202401_20240205120000.csv"
    land(landing, name, fft_csv(rows))
    take_in(zone, ("fft", P))
    wh = wh_of(zone)
    quarantine = wh.read("quarantine", [P]).to_pylist()
    lines = sorted(r["line"] for r in quarantine if "WARD_CODE_FORMAT" in r["rule_ids"])
    # every ward but w1 and W2 (header is line 1, the first response line 2)
    assert lines == [i + 2 for i, k in enumerate(wards) if not k.startswith("ok")]
    stages.current_fft(zone, P)
    stages.fft_outputs(zone, P)
    report = stages.release(zone, P)
    assert report["blocked"] == []
    stages.publish(zone, P)
    org = pq.read_table(Path(zone.publish) / "public/fft_scores").column("org_code").to_pylist()
    assert sorted(o for o in org if "/" in o) == ["RGT01/W1", "RGT01/W2"]
    public_bytes = b"".join(tree(zone.publish, "public").values())
    # the formula's own pieces ("calc" alone is in the dictionary's methods: calculate_limits.R)
    for secret in (NHS, "SMITH", "cmd|", "/C calc"):
        assert secret.encode() not in public_bytes


def test_an_identifier_blocks_only_its_dataset_and_period_and_a_replacement_publishes(zone):
    landing = Path(zone.landing)
    bad = "fft/FFT_RGT_202401_20240205120000.csv"
    # a postcode is 1 to 8 letters and digits: it passes WARD_CODE_FORMAT, the scan stops it
    land(landing, bad, fft_csv([response(f"R{i}", "LS14AP" if i < 9 else "W1") for i in range(20)]))
    land(landing, "fft/FFT_RGT_202402_20240305120000.csv",
         fft_csv([response(f"R{i}", "W1", date="2024-02-10") for i in range(20)]))
    take_in(zone, ("fft", P), ("fft", P2))
    for p in (P, P2):
        stages.current_fft(zone, p)
        stages.fft_outputs(zone, p)
        stages.quality_outputs(zone, p)
    report = stages.release(zone, P)
    assert [(b["dataset"], b["period"], b["columns"]) for b in report["blocked"]] == [("fft_scores", P, ["org_code"])]
    msg = report["violations"][0]
    assert "fft_scores" in msg and "org_code" in msg and P in msg and bad in msg and "LS14AP" not in msg
    assert stages.release(zone, P2)["blocked"] == []
    held = [h for h in stages.held_back_summary(zone) if h["what"].startswith("blocked")]
    assert [h["what"] for h in held] == [f"blocked public/fft_scores {P}"] and bad in held[0]["why"]
    stages.publish(zone, P)
    stages.publish(zone, P2)
    manifest = json.loads((Path(zone.publish) / "public/fft_scores/_manifest.json").read_text())
    assert sorted(manifest["partitions"]) == [f"period={P2}"] or sorted(manifest["partitions"]) == [P2]
    dq = json.loads((Path(zone.publish) / "public/data_quality/_manifest.json").read_text())
    assert len(dq["partitions"]) == 2  # the other datasets of the blocked period are published
    # the supplier sends a corrected file (a newer FFT file replaces the older one)
    land(landing, "fft/FFT_RGT_202401_20240210120000.csv", fft_csv([response(f"R{i}", "W1") for i in range(20)]))
    take_in(zone, ("fft", P))
    stages.current_fft(zone, P)
    stages.fft_outputs(zone, P)
    assert stages.release(zone, P)["blocked"] == []
    stages.publish(zone, P)
    manifest = json.loads((Path(zone.publish) / "public/fft_scores/_manifest.json").read_text())
    assert len(manifest["partitions"]) == 2


def test_dagster_check_reports_blocked_datasets_with_error_severity_without_blocking():
    from assets.publish import release_candidate, submissions

    for asset, key in ((release_candidate, "release_candidate"), (submissions, "submissions")):
        specs = list(asset.check_specs)
        assert specs[0].name == "disclosure_control" and not any(s.blocking for s in specs), key


# --------------------------------------------------------------------------- the ledger

def test_misnamed_files_are_published_as_unrecognised_and_no_reason_repeats_them(zone):
    landing = Path(zone.landing)
    nasty = f"fft/John Smith {NHS} LS1 4AP 1980-01-31.csv"
    land(landing, nasty, fft_csv([response("R1", "W1")]))
    land(landing, f"Smith_{NHS}.csv", "x\n")
    land(landing, f"gp/{NHS}/GP_A81001_20240131.csv", "y\n")
    land(landing, "fft/FFT_RGT_202401_2024020512000\u0661.csv", "z\n")  # an Arabic-Indic digit
    land(landing, f"hes_apc/smith {NHS}.csv", "PROCODE3,SUSRECID\n")  # a HES name is free text
    header = "fft/FFT_RGT_202401_20240205120000.csv"
    land(landing, header, f"RESPONSE_ID,{NHS},{NHS},PROVIDER_CODE\n1,2,3,RGT\n")
    take_in(zone, ("fft", P))
    stages.ingest_hes(zone)
    wh = wh_of(zone)
    warehouse_names = set(ingest.read_ledger(wh).column("file_name").to_pylist())
    assert nasty in warehouse_names  # operators keep the full name
    table = ingest.submissions_dataset(wh)
    rows = {r["sha256"]: r for r in table.to_pylist()}
    assert len(rows) == table.num_rows == 8
    for r in rows.values():
        assert NHS not in (r["file_name"] + (r["reason"] or "")), r
        assert "Smith" not in r["file_name"] and "smith" not in (r["reason"] or "").lower()
    names = sorted(r["file_name"] for r in rows.values())
    sha = {r["file_name"]: r["sha256"] for r in ingest.read_ledger(wh).to_pylist()}
    assert f"fft/unrecognised-{sha[nasty][:12]}" in names
    assert f"unrecognised-{sha[f'Smith_{NHS}.csv'][:12]}" in names
    assert f"gp/unrecognised-{sha[f'gp/{NHS}/GP_A81001_20240131.csv'][:12]}" in names
    assert f"hes_apc/extract-{sha[f'hes_apc/smith {NHS}.csv'][:12]}" in names
    arabic = "fft/FFT_RGT_202401_2024020512000\u0661.csv"
    assert f"fft/unrecognised-{sha[arabic][:12]}" in names
    assert header in names
    header_reason = [r["reason"] for r in rows.values() if r["file_name"] == header][0]
    # the reader names a repeated header column that is no declared column by its position
    # only (header text is the supplier's): the public reason says so, and holds no value
    assert "same column more than once" in header_reason and "columns 2 and 3" in header_reason
    assert NHS not in header_reason
    misnamed = rows[sha[nasty]]
    assert misnamed["status"] == "rejected" and "does not follow" in misnamed["reason"]
    assert misnamed["submitter_code"] is None and misnamed["reporting_period"] is None
    assert disclosure.check_public(schemas.get("submissions"), table) == []
    report = stages.publish_submissions(zone)
    assert report["violations"] == [] and report["rows_published"] == table.num_rows
    # the misnamed file deleted, the ledger still publishes (the original never mattered)
    os.remove(landing / nasty)
    take_in(zone, ("fft", P))
    assert stages.publish_submissions(zone)["violations"] == []
    public_bytes = b"".join(tree(zone.publish, "public").values())
    assert NHS.encode() not in public_bytes and b"Smith" not in public_bytes


def test_public_name_follows_convention_only_with_ascii_codes():
    sha = "0123456789abcdef" * 4
    assert ingest.public_file_name("fft/FFT_RGT_202401_20240205120000.csv", sha) == "fft/FFT_RGT_202401_20240205120000.csv"
    for name in ("fft/FFT_RGT_202401_2024020512000\u0661.csv", "fft/FFT_RGT_202401_20240205120000.csv\n",
                 "fft/FFT_rgt_202401_20240205120000.csv", "gp/GP_A8100\uff11_20240131.csv"):
        assert ingest.public_file_name(name, sha) == f"{name.split('/')[0]}/unrecognised-0123456789ab"
    assert ingest.public_file_name("fft/unrecognised-0123456789ab", "f" * 64) == "fft/unrecognised-ffffffffffff"


# --------------------------------------------------------------------------- restricted zone

SUS_COLS = ["PROCODE3", "SUSRECID", "EPISTART", "EPIEND", "ADMIDATE", "ADMIMETH", "DISMETH", "SEX",
            "CONSULT", "MAINSPEF", "TRETSPEF"]


def sus_csv(rows) -> str:
    def q(v):
        v = str(v)
        return '"' + v.replace('"', '""') + '"' if any(c in v for c in ',"\n') else v
    return "\n".join([",".join(SUS_COLS)] + [",".join(q(r.get(c, "")) for c in SUS_COLS) for r in rows]) + "\n"


def episode(rid, consult="C1234567", spec="100"):
    return {"PROCODE3": "RGT", "SUSRECID": rid, "EPISTART": "2024-01-05", "EPIEND": "2024-01-10",
            "ADMIDATE": "2024-01-05", "ADMIMETH": "11", "DISMETH": "1", "SEX": "1", "CONSULT": consult,
            "MAINSPEF": spec, "TRETSPEF": spec}


def test_formula_in_consult_is_warned_and_blanked_and_keyless_runs_never_touch_restricted(zone):
    landing = Path(zone.landing)
    land(landing, "sus_apc/APC_RGT_202401_20240205120000_BULK.csv", sus_csv([
        episode("A"), episode("B", consult="=cmd|' /C calc'!A0", spec=f"{NHS}"),
        episode("C", consult="&", spec="&"), episode("D", consult=f"C{NHS}")]))
    take_in(zone, ("sus_apc", P))
    wh = wh_of(zone)
    rules = {r["rule_id"]: r["rows_failed"] for r in wh.read("dq_rules", [P]).to_pylist()}
    assert rules["CONSULT_FORMAT"] == 3 and rules["TRETSPEF_FORMAT"] == 2 and rules["MAINSPEF_FORMAT"] == 2
    stages.current_sus(zone, P)
    stages.link(zone, P)
    with_key = keyed(zone)
    assert stages.release(with_key, P)["blocked"] == []
    stages.publish(with_key, P, run_id="keyed")
    restricted = pq.read_table(Path(zone.publish) / "restricted/linked_episodes")
    by_id = dict(zip(restricted.column("susrecid").to_pylist(), restricted.column("consultant_code").to_pylist()))
    # susrecid is published as its keyed pseudonym (pipelines.pseudo.record_key_id)
    from pipelines.pseudo import record_key_id
    assert by_id == {record_key_id(KEY, "SUSRECID", "RGT", "A"): "C1234567",
                     record_key_id(KEY, "SUSRECID", "RGT", "B"): None,
                     record_key_id(KEY, "SUSRECID", "RGT", "C"): None,
                     record_key_id(KEY, "SUSRECID", "RGT", "D"): None}
    assert set(restricted.column("tretspef").to_pylist()) == {"100", None}
    before = tree(zone.publish, "restricted")
    assert before
    # a keyed run makes its candidates and is killed before publishing ...
    stages.release(with_key, P)
    # ... then a run without a key publishes: nothing under restricted/ changes
    stages.publish(zone, P, run_id="keyless-1")
    assert tree(zone.publish, "restricted") == before
    stages.release(zone, P)
    stages.publish(zone, P, run_id="keyless-2")
    assert tree(zone.publish, "restricted") == before
    assert not wh.store.exists(stages._release_path("restricted", "linked_episodes", P))
    # a candidate made under another key is never published under this one
    stages.release(keyed(zone, "z" * 40), P)
    report = stages.publish(with_key, P, run_id="other-key")
    assert "another key" in report["restricted/linked_episodes"]
    assert tree(zone.publish, "restricted") == before
