"""Nothing a supplier writes reaches the restricted zone unless it is a declared code or a
keyed pseudonym (outputs.md "Restricted datasets": no NHS number, postcode or date of birth;
methods.md "Pseudonymisation").

Each value a reviewer found published verbatim is a case here: blocked by check_restricted
when it reaches it, and blanked (counted under a warn rule) or pseudonymised where it enters,
so that the dataset is still published."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipelines import disclosure, pseudo, schemas, stages
from pipelines.config import Settings
from pipelines.nhs_number import with_check_digit
from pipelines.storage import Store
from pipelines.warehouse import Warehouse

P = "2024-01"
KEY = "k" * 40
NHS = with_check_digit("999058711") or with_check_digit("999058712")
assert NHS and NHS.startswith("999")
PATIENT = with_check_digit("999000123") or with_check_digit("999000124")
assert PATIENT and PATIENT.startswith("999")


# --------------------------------------------------------------------------- declarations
def test_every_restricted_string_column_declares_a_format_or_codes():
    for ds in schemas.datasets("restricted"):
        for c in ds.columns:
            if pa.types.is_string(c.type) or (pa.types.is_list(c.type) and pa.types.is_string(c.type.value_type)):
                assert c.codes is not None or c.format is not None, (ds.name, c.name)
    ep = schemas.get("linked_episodes")
    assert ep.column("epiorder").conforms("98") and ep.column("epiorder").conforms("01")
    assert not ep.column("epiorder").conforms("1") and not ep.column("epiorder").conforms("1970/01/01")
    assert ep.column("lsoa").conforms("E01000001") and not ep.column("lsoa").conforms("X" + NHS)
    assert ep.column("registered_practice").conforms("A81001")
    assert not ep.column("registered_practice").conforms("LS1  4AP")
    assert set(ep.column("sex").codes) == {"0", "1", "2", "9"}


# --------------------------------------------------------------------------- check_restricted
def _row(ds_name: str) -> dict:
    ds = schemas.get(ds_name)
    row = {c.name: None for c in ds.columns}
    row.update(period=P, person_id="a" * 32, provider_code="RFA", spell_id="b" * 32)
    if ds_name == "linked_episodes":
        row.update(susrecid="c" * 32, epiorder="01", admimeth="11", dismeth="1", classpat="1", sex="1",
                   lsoa="E01000001", registered_practice="A81001", diagnoses=["I219"], procedures=["K401"])
    return row


def _table(ds_name: str, **values) -> pa.Table:
    ds = schemas.get(ds_name)
    return pa.Table.from_pylist([{**_row(ds_name), **values}], schema=ds.arrow_schema(include_partition=True))


# (dataset, column, value, the identifier the scan must find too, or None)
REPRO = [
    ("linked_episodes", "susrecid", "X" + NHS, "nhs_number"),
    ("linked_episodes", "spell_id", "RFA" + NHS, "nhs_number"),
    ("linked_spells", "spell_id", "RFA" + NHS, "nhs_number"),
    ("linked_episodes", "classpat", "DOB 1970-01-01", "date_of_birth"),
    ("linked_episodes", "epiorder", "1970/01/01", "date_of_birth"),
    ("linked_episodes", "lsoa", "X" + NHS, "nhs_number"),
    ("linked_episodes", "lsoa", "DOB 1970-01-01", "date_of_birth"),
    ("linked_episodes", "sex", "LS1-4AP", None),
    ("linked_episodes", "registered_practice", "LS1  4AP", None),  # two spaces: the format stops it
    ("linked_episodes", "admimeth", "01/01/1970", "date_of_birth"),
    ("linked_episodes", "dismeth", "LS1 4AP", "postcode"),
    ("linked_spells", "admimeth", "X" + NHS, "nhs_number"),
    ("linked_spells", "specialty", "dob 1970-01-01", None),
    ("linked_episodes", "diagnoses", ["I219", "X" + NHS], "nhs_number"),
]


def test_a_well_formed_restricted_row_passes():
    for name in ("linked_episodes", "linked_spells"):
        assert disclosure.check_restricted(schemas.get(name), _table(name)) == []


@pytest.mark.parametrize("name,column,value,kind", REPRO)
def test_check_restricted_blocks_each_value_outside_its_format(name, column, value, kind):
    found = disclosure.check_restricted(schemas.get(name), _table(name, **{column: value}))
    rules = {(v.rule, v.column) for v in found}
    assert ("format", column) in rules
    if kind:
        assert (f"identifier:{kind}", column) in rules
    # no message quotes the value
    for v in found:
        assert NHS not in v.message and "1970" not in v.message and "LS1" not in v.message


def test_restricted_scan_finds_dates_and_numbers_touching_letters():
    t = pa.table({"note": ["DOB 1970-01-01", "seen 01/01/1970", "X" + NHS, "RFA" + NHS + "Z", "E01000001"]})
    found = {(f.kind, f.rows) for f in disclosure.scan_for_identifiers(t, strict=True)}
    assert found == {("date_of_birth", (0, 1)), ("nhs_number", (2, 3))}
    # check_restricted uses this reading: a declared free column would be both undeclared and found
    ds = schemas.get("linked_spells")
    extra = _table("linked_spells").append_column("note", pa.array(["X" + NHS]))
    rules = {(v.rule, v.column) for v in disclosure.check_restricted(ds, extra)}
    assert {("format_undeclared", "note"), ("identifier:nhs_number", "note")} <= rules


# --------------------------------------------------------------------------- pseudonyms
def test_record_key_pseudonyms_are_keyed_scoped_and_stable():
    a = pseudo.record_key_ids(KEY, "SPELL", pa.array(["RFA", "RFA", "RGT", "RFA"]),
                              pa.array(["S1", "S1", "S1", None])).to_pylist()
    assert a[0] == a[1] != a[2] and a[3] is None
    assert a[0] == pseudo.record_key_id(KEY, "SPELL", "RFA", "S1")
    import hashlib
    import hmac
    assert a[0] == hmac.new(KEY.encode(), b"SPELL:RFA:S1", hashlib.sha256).hexdigest()[:32]
    assert pseudo.record_key_id(KEY, "SUSRECID", "RFA", "S1") != a[0]
    assert pseudo.record_key_id("z" * 40, "SPELL", "RFA", "S1") != a[0]
    with pytest.raises(pseudo.MissingKeyError):
        pseudo.record_key_ids(None, "SPELL", pa.array(["RFA"]), pa.array(["S1"]))


# --------------------------------------------------------------------------- end to end
SUS_COLS = ["PROCODE3", "SUSRECID", "EPISTART", "EPIEND", "ADMIDATE", "ADMIMETH", "DISMETH", "SEX",
            "NEWNHSNO", "DOB", "SUSSPELLID", "EPIORDER", "DISDATE", "CLASSPAT", "CONSULT", "MAINSPEF",
            "TRETSPEF", "DIAG_4_01", "DIAG_4_02", "OPERTN_4_01", "OPDATE_01"]
GP_HEADER = "NHS_NUMBER,DATE_OF_BIRTH,SEX,POSTCODE,LSOA,REGISTRATION_DATE,DEREGISTRATION_DATE,OBJECTION"


def put(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    old = p.stat().st_mtime - 60
    os.utime(p, (old, old))


def episode(rid: str, spell: str, order: str, **kw) -> dict:
    row = {"PROCODE3": "RFA", "SUSRECID": rid, "EPISTART": "2024-01-05", "EPIEND": "2024-01-10",
           "ADMIDATE": "2024-01-05", "ADMIMETH": "11", "DISMETH": "1", "SEX": "1", "NEWNHSNO": PATIENT,
           "DOB": "1950-03-03", "SUSSPELLID": spell, "EPIORDER": order, "DISDATE": "2024-01-10",
           "CLASSPAT": "1", "CONSULT": "C1234567", "MAINSPEF": "100", "TRETSPEF": "100",
           "DIAG_4_01": "I219", "OPERTN_4_01": "K401", "OPDATE_01": "2024-01-06"}
    row.update(kw)
    return row


def sus_csv(rows) -> str:
    def q(v):
        v = str(v)
        return '"' + v.replace('"', '""') + '"' if any(c in v for c in ',"\n') else v
    return "\n".join([",".join(SUS_COLS)] + [",".join(q(r.get(c, "")) for c in SUS_COLS) for r in rows]) + "\n"


@pytest.fixture
def run(tmp_path):
    landing = tmp_path / "landing"
    put(landing, "reference/providers.csv", "PROVIDER_CODE,NAME,COMMISSIONER_CODE\nRFA,Trust,00K\n")
    put(landing, "gp/GP_A81001_20240131.csv", GP_HEADER + "\n"
        + f"{PATIENT},1950-03-03,1,CB2 0QQ,X{NHS},2000-01-01,,\n"
        + f"{with_check_digit('999000200') or with_check_digit('999000201')},1960-01-01,2,CB2 0QQ,DOB 1970-01-01,2000-01-01,,\n"
        + f"{with_check_digit('999000300') or with_check_digit('999000301')},1961-01-01,2,CB2 0QQ,e01000002,2000-01-01,,\n")
    put(landing, "sus_apc/APC_RFA_202401_20240205120000_BULK.csv", sus_csv([
        # the reviewer's values: record keys built from an NHS number, codes holding dates
        episode("X" + NHS, "RFA" + NHS, "1"),
        episode("E2", "RFA" + NHS, "1970/01/01", CLASSPAT="DOB 1970-01-01", EPISTART="2024-01-10",
                DIAG_4_02="X" + NHS, OPERTN_4_01="K4O1"),
        episode("E3", "S3", "02", CLASSPAT="5", EPISTART="2024-01-08"),
    ]))
    settings = Settings(landing=str(landing), warehouse=str(tmp_path / "wh"), publish=str(tmp_path / "pub"),
                        pseudo_key=KEY)
    stages.scan(settings)
    stages.load_reference(settings)
    stages.ingest_feed(settings, "gp", P)
    stages.ingest_feed(settings, "sus_apc", P)
    stages.current_sus(settings, P)
    stages.link(settings, P)
    stages.outcome_outputs(settings, P)
    released = stages.release(settings, P)
    stages.publish(settings, P, run_id="t")
    return settings, released


def test_repro_values_are_blanked_or_pseudonymised_and_the_datasets_still_publish(run):
    settings, released = run
    assert released["metadata"]["linked_episodes"] == 3 and released["metadata"]["linked_spells"] == 2
    assert not any("linked_" in str(b) for b in released["blocked"])
    wh = Warehouse(Store(settings.warehouse))
    rules = {(r["rule_id"]): r["rows_failed"] for r in wh.read("dq_rules", [P]).to_pylist()}
    assert rules["EPIORDER_FORMAT"] == 1 and rules["CLASSPAT_CODE"] == 1
    assert rules["LSOA_FORMAT"] == 3 and rules["DIAG_4_02_FORMAT"] == 1 and rules["OPERTN_4_01_FORMAT"] == 1

    root = Path(settings.publish) / "restricted"
    ep = pq.read_table(root / "linked_episodes")
    assert ep.num_rows == 3
    sus = {pseudo.record_key_id(KEY, "SUSRECID", "RFA", r): r for r in ("X" + NHS, "E2", "E3")}
    assert set(ep.column("susrecid").to_pylist()) == set(sus)
    by = {sus[r["susrecid"]]: r for r in ep.to_pylist()}
    assert by["X" + NHS]["epiorder"] == "01"  # HES-style 1 written 01
    assert by["E2"]["epiorder"] is None and by["E2"]["classpat"] is None
    assert by["E2"]["diagnoses"] == ["I219"] and by["E2"]["procedures"] == []
    assert by["E3"]["classpat"] == "5" and by["E3"]["epiorder"] == "02"
    assert {r["lsoa"] for r in by.values()} == {None}  # the linked patient's LSOA was X<NHS>
    assert {r["registered_practice"] for r in by.values()} == {"A81001"}

    # linked_spells.spell_id joins linked_episodes.spell_id, and the spell is the same one
    sp = pq.read_table(root / "linked_spells")
    assert sp.num_rows == 2
    spell_of = {sus[r["susrecid"]]: r["spell_id"] for r in ep.to_pylist()}
    assert spell_of["X" + NHS] == spell_of["E2"] == pseudo.record_key_id(KEY, "SPELL", "RFA", "RFA" + NHS)
    assert spell_of["E3"] == pseudo.record_key_id(KEY, "SPELL", "RFA", "S3")
    assert set(sp.column("spell_id").to_pylist()) == set(spell_of.values())
    joined = ep.select(["susrecid", "spell_id"]).join(sp.select(["spell_id", "los_days"]), "spell_id")
    assert joined.num_rows == 3
    assert pc.all(pc.is_valid(joined.column("los_days"))).as_py()

    # nothing of the supplier's values, anywhere in the restricted zone's bytes
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            for needle in (NHS.encode(), b"1970", b"RFA" + NHS.encode(), b"DOB", b"K4O1"):
                assert needle not in data, (p.name, needle)
            if p.suffix == ".parquet":
                t = pq.read_table(p)
                for c in t.column_names:
                    text = str(t.column(c).to_pylist())
                    assert NHS not in text and "1970" not in text, (p.name, c)
