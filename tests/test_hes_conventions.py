"""HES's own conventions (inputs.md "HES APC extracts"), each on a small hand-made table:
a HES extract's rows counted under their provider in the data-quality outputs, ..."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from pipelines import ingest, stages
from pipelines.config import Settings
from pipelines.nhs_number import with_check_digit

HES_COLS = ["PROCODE3", "EPIKEY", "EPISTART", "EPIEND", "ADMIDATE", "ADMIMETH", "DISMETH", "SEX", "NEWNHSNO"]


def nhs(i: int) -> str:
    """A valid NHS number in the 999 test range (never a real one)."""
    k = i
    while True:
        n = with_check_digit(f"999{k:06d}")
        if n:
            return n
        k += 1


def csv(rows: list[dict], cols: list[str]) -> str:
    return "\n".join([",".join(cols)] + [",".join(r.get(c, "") for c in cols) for r in rows]) + "\n"


def put(landing: Path, rel: str, text: str) -> None:
    p = landing / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    old = p.stat().st_mtime - 60  # written before the pipeline looked
    os.utime(p, (old, old))


@pytest.fixture
def zone(tmp_path):
    settings = Settings.load(env={"CAREDATA_LANDING": str(tmp_path / "landing"),
                                  "CAREDATA_WAREHOUSE": str(tmp_path / "warehouse"),
                                  "CAREDATA_PUBLISH": str(tmp_path / "publish")})
    (tmp_path / "landing").mkdir()
    landing, wh, _ = stages.stores(settings)
    return tmp_path / "landing", landing, wh, settings


def episode(i: int, provider: str, end: str, **kw) -> dict:
    row = {"PROCODE3": provider, "EPIKEY": f"K{i}", "EPISTART": "2002-01-02", "EPIEND": end,
           "ADMIDATE": "2002-01-02", "ADMIMETH": "11", "DISMETH": "1", "SEX": "1", "NEWNHSNO": nhs(i)}
    row.update(kw)
    return row


# ------------------------------------------------------------------ data quality per provider
def test_quality_outputs_count_a_hes_extract_under_each_provider(zone):
    path, landing, wh, settings = zone
    rows = [episode(1, "RAA", "2002-01-10"), episode(2, "RAA", "2002-01-11"),
            episode(3, "RAA", "2002-01-12", SEX="X"),                  # SEX invalid: quarantined
            episode(4, "RBB", "2002-01-20"),
            episode(5, "RAA", "2002-02-03", EPISTART="2002-02-01", ADMIDATE="2002-02-01")]
    put(path, "hes_apc/extract.csv", csv(rows, HES_COLS))
    report = ingest.ingest_hes(landing, wh, settings)
    assert report.rows_read == 5 and report.rows_quarantined == 1
    got = {}
    for period in ("2002-01", "2002-02"):
        stages.quality_outputs(settings, period)   # failed with ArrowTypeError before
        for r in wh.read("data_quality_summary", [period]).to_pylist():
            got[(r["period"], r["source"], r["submitter_code"])] = (r["rows_received"], r["rows_quarantined"],
                                                                     r["rows_kept"])
    assert got == {("2002-01", "hes_apc", "RAA"): (3, 1, 2), ("2002-01", "hes_apc", "RBB"): (1, 0, 1),
                   ("2002-02", "hes_apc", "RAA"): (1, 0, 1)}
    dq = pd.concat([wh.read("data_quality", [p]).to_pandas() for p in ("2002-01", "2002-02")])
    assert set(dq["submitter_code"]) == {"RAA", "RBB"}
    sex = dq[(dq["field"] == "SEX") & (dq["rows_failed"] > 0)]
    assert sex[["period", "submitter_code", "rows_failed"]].values.tolist() == [["2002-01", "RAA", 1]]


# ------------------------------------------------------------------ placeholder dates
DATE_COLS = HES_COLS + ["DISDATE", "DOB", "MYDOB", "OPERTN_4_01", "OPDATE_01"]


def _ingest_hes(zone, rows):
    path, landing, wh, settings = zone
    put(path, "hes_apc/extract.csv", csv(rows, DATE_COLS))
    report = ingest.ingest_hes(landing, wh, settings)
    silver = wh.read("sus_episodes").to_pandas().set_index("susrecid")
    q = wh.read("quarantine").to_pandas()
    q["key"] = [__import__("json").loads(r)["EPIKEY"] for r in q["raw"]]
    return report, silver, q.set_index("key"), wh


def test_hes_placeholder_dates_read_as_empty_with_a_warning(zone):
    rows = [
        episode(1, "RAA", "2002-01-10", DISDATE="1800-01-01"),                   # kept, no discharge date
        episode(2, "RAA", "2002-01-10", DOB="1582-10-15", MYDOB="041968"),       # kept, birth from MYDOB
        episode(3, "RAA", "2002-01-10", OPERTN_4_01="K401", OPDATE_01="1600-01-01"),  # kept, date unknown
        episode(4, "RAA", "1801-01-01", EPISTART="1801-01-01"),                  # EPIEND unknown: required
        episode(5, "RAA", "2002-01-10", DISDATE="1850-06-01"),                   # not a placeholder: impossible
        episode(6, "RAA", "2002-01-10", DOB="1889-12-31"),                       # before 1890: impossible
        episode(7, "RAA", "2002-01-10", DOB="1890-01-01"),                       # the first possible date
        episode(8, "RAA", "2002-01-10", DISDATE="2099-01-10"),                   # after the file: impossible
    ]
    report, silver, q, wh = _ingest_hes(zone, rows)
    assert report.rows_read == 8 and report.rows_kept + report.rows_quarantined == 8
    assert set(silver.index) == {"K1", "K2", "K3", "K7"} and set(q.index) == {"K4", "K5", "K6", "K8"}
    assert pd.isna(silver.at["K1", "disdate"]) and "DISDATE_PLACEHOLDER" in silver.at["K1", "dq_warnings"]
    assert pd.isna(silver.at["K2", "dob"]) and (silver.at["K2", "birth_year"], silver.at["K2", "birth_month"]) == (1968, 4)
    assert "DOB_PLACEHOLDER" in silver.at["K2", "dq_warnings"]
    assert list(silver.at["K3", "procedures"]) == ["K401"] and pd.isna(silver.at["K3", "procedure_dates"][0])
    assert "OPDATE_01_PLACEHOLDER" in silver.at["K3", "dq_warnings"]
    assert silver.at["K7", "dob"].isoformat() == "1890-01-01" and len(silver.at["K7", "dq_warnings"]) == 0
    assert {"EPIEND_PLACEHOLDER", "EPISTART_PLACEHOLDER", "EPIEND_MISSING"} <= set(q.at["K4", "rule_ids"])
    assert "EPIEND_BEFORE_1890" not in q.at["K4", "rule_ids"]
    assert "DISDATE_BEFORE_1890" in q.at["K5", "rule_ids"] and "DISDATE_PLACEHOLDER" not in q.at["K5", "rule_ids"]
    assert list(q.at["K6", "rule_ids"]) == ["DOB_BEFORE_1890"]
    assert "DISDATE_FUTURE" in q.at["K8", "rule_ids"]
    # A placeholder never opens a period: no 18xx month anywhere.
    periods = set(report.partitions) | set(wh.periods("sus_episodes")) | set(wh.periods("quarantine")) \
        | set(wh.periods("dq_rules"))
    assert periods == {"2002-01"}  # the quarantined placeholder row goes under the file's month
    # Counted: each placeholder rule's failures, under the provider.
    dq = wh.read("dq_rules").to_pandas()
    failed = dq[dq["rows_failed"] > 0].groupby("rule_id")["rows_failed"].sum().to_dict()
    for rid in ("DISDATE_PLACEHOLDER", "DOB_PLACEHOLDER", "OPDATE_01_PLACEHOLDER", "EPIEND_PLACEHOLDER",
                "EPISTART_PLACEHOLDER"):
        assert failed.get(rid) == 1, rid
    assert dq.loc[dq["rule_id"] == "DISDATE_PLACEHOLDER", "severity"].unique().tolist() == ["warn"]


def test_sus_placeholder_dates_read_as_empty_in_both_typing_paths():
    """The SUS silver rows typed from the raw rows and from validation's work frame agree:
    placeholders missing in both."""
    from pipelines import validation
    from pipelines.validation import ValidationContext

    cols = DATE_COLS
    rows = [episode(1, "RAA", "2002-01-10", DISDATE="1801-01-01", DOB="1800-01-01", MYDOB="051970",
                    OPERTN_4_01="W371", OPDATE_01="1582-10-15"),
            episode(2, "RAA", "2002-01-10", DISDATE="2002-01-10", DOB="1970-05-02")]
    frame = pd.DataFrame(rows, columns=cols, dtype="string")
    frame["SUSRECID"] = frame["EPIKEY"]
    frame["_line"] = [2, 3]
    work: list = []
    out = validation.validate_many("sus_apc", [
        {"frame": frame, "period": "2002-01", "submitter": "RAA",
         "file_name": "sus_apc/APC_RAA_200201_20020205120000_BULK.csv", "context": ValidationContext()},
        {"frame": frame.iloc[:0], "period": "2002-01", "submitter": "RAA",
         "file_name": "sus_apc/APC_RAA_200201_20020206120000_BULK.csv", "context": ValidationContext()}],
        work_out=work)
    assert not out[0].rejected.any() and "DISDATE_PLACEHOLDER" in out[0].rule_ids[0]
    warn = ingest.silver._warnings(out[0], ~out[0].rejected)
    raw = ingest.silver._sus_silver_many([frame], "sus_apc", ["BULK"], ["2002-01"], ["S"], [warn]).table
    worked = ingest.silver._sus_silver_many([frame], "sus_apc", ["BULK"], ["2002-01"], ["S"], [warn],
                                     work[0].iloc[:2]).table
    assert raw.equals(worked)
    t = raw.to_pandas()
    assert pd.isna(t.at[0, "disdate"]) and pd.isna(t.at[0, "dob"]) and t.at[0, "birth_year"] == 1970
    assert pd.isna(t.at[0, "procedure_dates"][0]) and t.at[1, "disdate"].isoformat() == "2002-01-10"


# ------------------------------------------------------------------ spells
import datetime as dt  # noqa: E402

import pyarrow as pa  # noqa: E402

from pipelines import fft, outcomes, spells  # noqa: E402

D = dt.date
EP_TYPES = {"epistart": pa.date32(), "epiend": pa.date32(), "admidate": pa.date32(), "disdate": pa.date32(),
            "dob": pa.date32(), "nhs_number_valid": pa.bool_(), "diagnoses": pa.list_(pa.string()),
            "procedures": pa.list_(pa.string()), "procedure_dates": pa.list_(pa.date32())}


def hes_episode(key, *, start, end, order="01", adm=D(2020, 3, 1), disdate=None, dismeth="8", stat="3",
                hesid="H1", nhs=None, provider="RAA", procs=(), tret="110", spell_id=None, period="2020-03"):
    return {"provider_code": provider, "susrecid": key, "spell_id": spell_id, "epiorder": order, "epistat": stat,
            "epistart": start, "epiend": end, "admidate": adm, "disdate": disdate, "admimeth": "11",
            "dismeth": dismeth, "sex": "1", "dob": D(1950, 5, 5), "nhs_number": nhs,
            "nhs_number_valid": nhs is not None, "pseudo_hesid": hesid, "tretspef": tret,
            "consultant_code": "C1234567", "period": period, "procedures": list(procs),
            "procedure_dates": [None] * len(procs), "diagnoses": []}


def table(rows):
    cols = list(rows[0])
    return pa.table({c: pa.array([r[c] for r in rows], EP_TYPES.get(c, pa.string())) for c in cols})


def by_id(t: pa.Table, key: str = "spell_id") -> dict:
    return {r[key]: r for r in t.to_pylist()}


def test_hes_stay_with_procedure_then_death_counts_the_death_and_both_modules_agree():
    # No SUSSPELLID: one stay of H1 at RAA admitted 2020-03-01. The first episode holds the
    # hip replacement, the second (EPIORDER 02) ends in death; a third row of the stay is
    # EPIORDER 99, which sorts after every real order and is the spell's last episode.
    rows = [
        hes_episode("E2", start=D(2020, 3, 4), end=D(2020, 3, 9), order="02", disdate=D(2020, 3, 9),
                    dismeth="4", tret="300"),
        hes_episode("E1", start=D(2020, 3, 1), end=D(2020, 3, 4), order="01", procs=["W371"]),
    ]
    sp = by_id(outcomes.build_spells(table(rows)))
    assert list(sp) == ["DER:E1"]                     # one spell, named after its first episode
    s = sp["DER:E1"]
    assert (s["specialty"], s["index_procedure"]) == ("orthopaedic_surgery", "W371")
    assert s["death_30d"] is True and s["dismeth"] == "4" and s["disdate"] == D(2020, 3, 9)
    assert s["person_key"] == "HESID:H1"
    f = by_id(fft.spells_for_fft_linkage(table(rows)))
    assert list(f) == ["DER:E1"] and (f["DER:E1"]["disdate"], f["DER:E1"]["tretspef_last"]) == (D(2020, 3, 9), "300")


def test_epiorder_99_sorts_last_in_every_module():
    rows = [
        hes_episode("A", start=D(2020, 3, 1), end=D(2020, 3, 2), order="01", procs=["W371"]),
        hes_episode("Z", start=D(2020, 3, 1), end=D(2020, 3, 2), order="99", disdate=D(2020, 3, 6), dismeth="1",
                    tret="800"),
        hes_episode("B", start=D(2020, 3, 2), end=D(2020, 3, 6), order="02", tret="300"),
    ]
    assigned = spells.assign_spells(table(rows))
    assert assigned["susrecid"].tolist() == ["A", "B", "Z"]
    last_rows = spells.last_episodes(assigned)["row"].tolist()
    assert last_rows == [1]
    s = by_id(outcomes.build_spells(table(rows)))["DER:A"]
    assert s["disdate"] == D(2020, 3, 6) and s["dismeth"] == "1" and s["death_30d"] is False
    f = by_id(fft.spells_for_fft_linkage(table(rows)))["DER:A"]
    assert f["tretspef_last"] == "800" and f["disdate"] == D(2020, 3, 6)


def test_derived_spells_are_cut_at_each_discharge_and_follow_the_person():
    nhs = "9990000018"
    from pipelines.nhs_number import is_valid
    assert is_valid(nhs)
    rows = [
        # discharged and admitted again the same day: two spells
        hes_episode("P1", start=D(2020, 3, 1), end=D(2020, 3, 1), disdate=D(2020, 3, 1), dismeth="1"),
        hes_episode("P2", start=D(2020, 3, 1), end=D(2020, 3, 3), order="01", disdate=D(2020, 3, 3), dismeth="1",
                    stat="3"),
        # DISMETH 9 is not a discharge: the stay goes on into the next episode
        hes_episode("Q1", start=D(2020, 4, 1), end=D(2020, 4, 2), adm=D(2020, 4, 1), disdate=D(2020, 4, 2),
                    dismeth="9", order="01"),
        hes_episode("Q2", start=D(2020, 4, 2), end=D(2020, 4, 5), adm=D(2020, 4, 1), disdate=D(2020, 4, 5),
                    dismeth="1", order="02"),
        # a valid NHS number is the person, whatever the PSEUDO_HESID: the same person's stay
        hes_episode("N1", start=D(2020, 5, 1), end=D(2020, 5, 2), adm=D(2020, 5, 1), nhs=nhs, hesid="X1"),
        hes_episode("N2", start=D(2020, 5, 2), end=D(2020, 5, 4), adm=D(2020, 5, 1), nhs=nhs, hesid="X2",
                    order="02", disdate=D(2020, 5, 4), dismeth="1"),
        # another person, same provider and day: another spell
        hes_episode("O1", start=D(2020, 5, 1), end=D(2020, 5, 4), adm=D(2020, 5, 1), hesid="H9",
                    disdate=D(2020, 5, 4), dismeth="1"),
        # the same person at another provider: another spell
        hes_episode("R1", start=D(2020, 5, 1), end=D(2020, 5, 4), adm=D(2020, 5, 1), nhs=nhs, provider="RBB",
                    disdate=D(2020, 5, 4), dismeth="1"),
        # a SUSSPELLID is taken as given
        hes_episode("S1", start=D(2020, 5, 1), end=D(2020, 5, 4), adm=D(2020, 5, 1), hesid="H9", spell_id="SP7",
                    disdate=D(2020, 5, 4), dismeth="1"),
    ]
    sp = by_id(outcomes.build_spells(table(rows)))
    assert set(sp) == {"DER:P1", "DER:P2", "DER:Q1", "DER:N1", "DER:O1", "DER:R1", "SP7"}
    assert sp["DER:Q1"]["disdate"] == D(2020, 4, 5) and sp["DER:N1"]["disdate"] == D(2020, 5, 4)
    assert sp["DER:N1"]["person_key"] == nhs
    f = by_id(fft.spells_for_fft_linkage(table(rows)))
    assert set(f) == set(sp)
    assert f["DER:N1"]["nhs_number"] == nhs and f["DER:O1"]["nhs_number"] is None


def test_spell_ids_never_carry_a_patient_identifier():
    nhs = "9990000018"
    rows = [hes_episode("K1", start=D(2020, 3, 1), end=D(2020, 3, 2), nhs=nhs, hesid="HX",
                        disdate=D(2020, 3, 2), dismeth="1")]
    ids = outcomes.build_spells(table(rows)).column("spell_id").to_pylist()
    assert ids == ["DER:K1"] and not any(nhs in i or "HX" in i for i in ids)


# ------------------------------------------------------------------ unfinished episodes
def test_unfinished_last_episode_opens_no_outcome():
    rows = [
        hes_episode("U1", start=D(2020, 3, 1), end=D(2020, 3, 4), order="01", procs=["W371"]),
        # last episode unfinished (EPISTAT 1), with a discharge recorded anyway
        hes_episode("U2", start=D(2020, 3, 4), end=D(2020, 3, 31), order="02", stat="1",
                    disdate=D(2020, 3, 31), dismeth="4"),
        # EPISTAT 9 (derived unfinished) likewise
        hes_episode("V1", start=D(2020, 3, 1), end=D(2020, 3, 31), hesid="H2", stat="9", procs=["W371"],
                    disdate=D(2020, 3, 31), dismeth="1"),
        # an unfinished episode that is not the last does not stop the spell
        hes_episode("W1", start=D(2020, 3, 1), end=D(2020, 3, 2), hesid="H3", stat="1", procs=["W371"]),
        hes_episode("W2", start=D(2020, 3, 2), end=D(2020, 3, 5), hesid="H3", order="02",
                    disdate=D(2020, 3, 5), dismeth="1"),
    ]
    sp = by_id(outcomes.build_spells(table(rows)))
    for sid in ("DER:U1", "DER:V1"):
        assert sp[sid]["specialty"] is None and sp[sid]["index_procedure"] is None, sid
        assert sp[sid]["disdate"] is None and sp[sid]["dismeth"] is None and sp[sid]["death_30d"] is None
        assert sp[sid]["discharged_alive"] is False
    assert sp["DER:W1"]["index_procedure"] == "W371" and sp["DER:W1"]["disdate"] == D(2020, 3, 5)
    f = by_id(fft.spells_for_fft_linkage(table(rows)))
    assert f["DER:U1"]["disdate"] is None and f["DER:V1"]["disdate"] is None
    assert f["DER:W1"]["disdate"] == D(2020, 3, 5)


# ------------------------------------------------------------------ age at admission
def aged(key, *, dob=None, by=None, bm=None, gp_dob=None, hesid="H1", **kw):
    row = hes_episode(key, start=D(2020, 3, 1), end=D(2020, 3, 3), procs=["W371"], hesid=hesid,
                      disdate=D(2020, 3, 3), dismeth="1", **kw)
    row.update(dob=dob, birth_year=by, birth_month=bm, linked_date_of_birth=gp_dob,
               submission_id="hes_extract", line=int(key[1:]) + 1, source="hes_apc")
    return row


AGE_TYPES = {"linked_date_of_birth": pa.date32(), "birth_year": pa.int64(), "birth_month": pa.int64(),
             "line": pa.int64()}


def aged_table(rows):
    cols = list(rows[0])
    return pa.table({c: pa.array([r[c] for r in rows], AGE_TYPES.get(c, EP_TYPES.get(c, pa.string())))
                     for c in cols})


def test_age_from_dob_else_mydob_else_the_linked_gp_record():
    rows = [
        aged("E1", dob=D(2003, 3, 2), by=2003, bm=3, gp_dob=D(1950, 1, 1)),  # DOB: 16, a child
        aged("E2", by=2001, bm=2, gp_dob=D(1950, 1, 1), hesid="H2"),        # MYDOB: 19 (not the GP's 70)
        aged("E3", gp_dob=D(1950, 1, 1), hesid="H3"),                       # GP record: 70
        aged("E4", hesid="H4"),                                             # unknown
    ]
    sp = by_id(outcomes.build_spells(aged_table(rows)))
    assert [sp[f"DER:E{i}"]["age"] for i in range(1, 5)] == [16, 19, 70, None]
    assert sp["DER:E1"]["specialty"] is None                 # under 18: not an index procedure
    assert sp["DER:E2"]["specialty"] == sp["DER:E3"]["specialty"] == "orthopaedic_surgery"
    assert sp["DER:E4"]["specialty"] is None                 # age unknown: not an index procedure ...


def test_procedure_with_unknown_age_is_counted_in_data_quality_for_its_provider():
    from pipelines.quality import data_quality_tables

    rows = [aged("E1", gp_dob=D(1950, 1, 1)), aged("E2", hesid="H2"), aged("E3", hesid="H3"),
            aged("E4", hesid="H4", provider="RBB")]
    rows[2]["procedures"], rows[2]["procedure_dates"] = ["A011"], [None]   # not a cohort procedure
    rules = outcomes.procedures_without_age(aged_table(rows), "2020-03")
    got = {(r["submitter_code"], r["rule_id"]): (r["rows_checked"], r["rows_failed"], r["example_lines"])
           for r in rules.to_pylist()}
    assert got == {("RAA", "PROCEDURE_AGE_UNKNOWN"): (2, 1, ["3"]), ("RBB", "PROCEDURE_AGE_UNKNOWN"): (1, 1, ["5"])}
    assert set(rules.column("source").to_pylist()) == {"hes_apc"} and set(rules.column("field").to_pylist()) == {"DOB"}
    # ... and reaches data_quality under each provider (a HES extract's rows count there)
    led = pa.Table.from_pylist([{"file_name": "hes_apc/x.csv", "submission_id": "hes_extract", "source": "hes_apc",
                                 "submitter_code": None, "reporting_period": None, "status": "current",
                                 "reason": None, "rows_received": 4, "rows_quarantined": 0, "rows_kept": 4}])
    dq = data_quality_tables(rules, None, led, Settings())["data_quality"].to_pylist()
    assert {(r["submitter_code"], r["rule_id"], r["rows_failed"], r["severity"]) for r in dq} == {
        ("RAA", "PROCEDURE_AGE_UNKNOWN", 1, "warn"), ("RBB", "PROCEDURE_AGE_UNKNOWN", 1, "warn")}


def test_age_unknown_uses_the_spell_like_build_spells():
    # the spell's second episode holds the procedure; its first has the MYDOB: age known
    first = aged("E1", by=1950, bm=1, hesid="H7")
    second = aged("E2", hesid="H7", order="02")
    first["procedures"], first["procedure_dates"] = [], []
    first["disdate"], first["dismeth"] = None, "8"
    rules = outcomes.procedures_without_age(aged_table([first, second]), "2020-03").to_pylist()
    assert [(r["rows_checked"], r["rows_failed"]) for r in rules] == [(1, 0)]
    assert by_id(outcomes.build_spells(aged_table([first, second])))["DER:E1"]["age"] == 70


# ------------------------------------------------------------------ names in manifests
def test_a_free_text_hes_extract_name_never_reaches_a_published_manifest(zone):
    """A HES extract's file name is the supplier's free text (inputs.md): the manifests of
    the datasets it feeds, and the public ledger, name it hes_apc/extract-<digest> at most."""

    path, landing, wh, settings = zone
    name = f"hes_apc/Smith {nhs(7)} LS1 4AP.csv"
    put(path, name, csv([episode(1, "RAA", "2002-01-10"), episode(2, "RAA", "2002-01-11")], HES_COLS))
    assert ingest.ingest_hes(landing, wh, settings).rows_read == 2
    stages.quality_outputs(settings, "2002-01")
    stages.release(settings, "2002-01")
    stages.publish(settings, "2002-01")
    manifests = [p for p in Path(settings.publish).rglob("_manifest.json")]
    assert manifests
    text = "".join(p.read_text() for p in manifests)
    assert "Smith" not in text and nhs(7) not in text and "LS1 4AP" not in text
    public_ledger = ingest.submissions_dataset(wh).column("file_name").to_pylist()
    assert [n for n in public_ledger if n.startswith("hes_apc/")] == [
        f"hes_apc/extract-{ingest.read_ledger(wh).column('sha256').to_pylist()[0][:12]}"]
