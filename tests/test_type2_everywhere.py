"""A type 2 objection (``OBJECTION`` ``9Nu4``) is honoured whichever GP extract is
current: a 9Nu4 row that was quarantined (so not in ``gp_patients``), or that is in a
newer extract held by the GP held rule, still keeps that person out of every restricted
(record-level) dataset. A non-objector whose row is quarantined is unaffected.

The NHS numbers are generated in the 999 test range with valid check digits; never real.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import current, ingest, linkage
from pipelines.config import DEMO_PSEUDO_KEY, Settings
from pipelines.pseudo import person_id, record_key_id
from pipelines.storage import Store
from pipelines.warehouse import Warehouse

from helpers import land, nhs_numbers, run_cli_process

HEADER = "NHS_NUMBER,DATE_OF_BIRTH,SEX,POSTCODE,REGISTRATION_DATE,DEREGISTRATION_DATE,DATE_OF_DEATH,OBJECTION"


def _zone(tmp_path: Path):
    landing, wh = tmp_path / "landing", tmp_path / "wh"
    landing.mkdir()
    wh.mkdir()
    return Store(str(landing)), Warehouse(Store(str(wh))), landing


def _row(n: str, *, sex="1", dod="", obj="") -> str:
    return f"{n},1970-05-05,{sex},LS1 1AA,2010-01-01,,{dod},{obj}"


# --------------------------------------------------------------------------- ingest
def test_gp_type2_records_kept_and_quarantined_objectors_of_taken_and_held_extracts(tmp_path):
    """Every valid NHS number of a 9Nu4 row lands in gp_type2: a kept row, a quarantined
    one (SEX X; DATE_OF_DEATH 2099), and the rows of a held extract. Rows without a valid
    number, and non-objectors, do not. Rows received = kept + quarantined, and the
    type 2 count of each extract, are as before."""
    store, wh, landing = _zone(tmp_path)
    a = nhs_numbers(100, 12)
    kept, q_sex, q_dod, plain_q, plain = a[0], a[1], a[2], a[3], a[4:10]
    rows = [_row(kept, obj="9Nu4"), _row(q_sex, sex="X", obj="9Nu4"),
            _row(q_dod, dod="2099-01-01", obj="9Nu4"), _row(plain_q, sex="X"),
            _row("1234567890", obj="9Nu4")] + [_row(n) for n in plain]
    land(landing, "gp/GP_Y00001_20240105.csv", "\n".join([HEADER, *rows]) + "\n")
    ingest.ingest("gp", "2024-01", store, wh, Settings())
    # a newer extract with fewer than half the rows: held; it records a new objection
    land(landing, "gp/GP_Y00001_20240120.csv",
         "\n".join([HEADER, _row(a[10], obj="9Nu4"), _row(a[11])]) + "\n")
    ingest.ingest("gp", "2024-01", store, wh, Settings())

    ex = wh.read("gp_extracts").to_pandas().set_index("submission_id")
    assert bool(ex.loc["GP_Y00001_20240120", "held"]) and not bool(ex.loc["GP_Y00001_20240105", "held"])
    assert ex.loc["GP_Y00001_20240105", "type2_objections"] == 4  # the invalid number's row too
    led = ingest.read_ledger(wh).to_pandas().set_index("submission_id")
    first = led.loc["GP_Y00001_20240105"]
    assert first["rows_received"] == 11 == first["rows_kept"] + first["rows_quarantined"]
    assert first["rows_quarantined"] == 4  # SEX X twice, 2099 death, invalid number

    t2 = wh.read("gp_type2").to_pandas()
    by = t2.groupby("submission_id")["nhs_number"].apply(set).to_dict()
    assert by == {"GP_Y00001_20240105": {kept, q_sex, q_dod}, "GP_Y00001_20240120": {a[10]}}
    assert set(current.gp_type2_numbers(wh).to_pylist()) == {kept, q_sex, q_dod, a[10]}
    # the quarantined objectors are not in gp_patients: only gp_type2 knows them
    silver = set(wh.read("gp_patients").column("nhs_number").to_pylist())
    assert q_sex not in silver and q_dod not in silver and kept in silver


def test_an_objection_stands_twelve_months_after_it_was_last_seen(tmp_path):
    """Withdrawn in a later extract: the flag of an extract dated within 12 months
    before the practice's current extract stands; older than that, it lapses."""
    store, wh, landing = _zone(tmp_path)
    n, others = nhs_numbers(300, 1)[0], nhs_numbers(400, 4)
    land(landing, "gp/GP_Y00002_20230110.csv",
         "\n".join([HEADER, _row(n, obj="9Nu4"), *(_row(o) for o in others)]) + "\n")
    ingest.ingest("gp", "2023-01", store, wh, Settings())
    land(landing, "gp/GP_Y00002_20231215.csv", "\n".join([HEADER, _row(n), *(_row(o) for o in others)]) + "\n")
    ingest.ingest("gp", "2023-12", store, wh, Settings())
    assert current.gp_type2_numbers(wh).to_pylist() == [n]  # 11 months: stands
    land(landing, "gp/GP_Y00002_20240215.csv", "\n".join([HEADER, _row(n), *(_row(o) for o in others)]) + "\n")
    ingest.ingest("gp", "2024-02", store, wh, Settings())
    assert current.gp_type2_numbers(wh).to_pylist() == []  # 13 months: withdrawn


# --------------------------------------------------------------------------- linkage
def _episodes(rows):
    return pa.table({
        "provider_code": pa.array([r[0] for r in rows], pa.string()),
        "susrecid": pa.array([r[1] for r in rows], pa.string()),
        "nhs_number": pa.array([r[2] for r in rows], pa.string()),
        "nhs_number_valid": pa.array([r[2] is not None for r in rows], pa.bool_()),
        "dob": pa.array([dt.date(1970, 5, 5)] * len(rows), pa.date32()),
        "sex": pa.array(["1"] * len(rows), pa.string()),
        "postcode": pa.array(["LS11AA"] * len(rows), pa.string()),
        "gpprac": pa.array(["Y00001"] * len(rows), pa.string()),
        "epistart": pa.array([dt.date(2024, 1, 10)] * len(rows), pa.date32()),
        "epiend": pa.array([dt.date(2024, 1, 12)] * len(rows), pa.date32()),
        "admidate": pa.array([dt.date(2024, 1, 10)] * len(rows), pa.date32()),
        "admimeth": pa.array(["11"] * len(rows), pa.string()),
        "dismeth": pa.array(["1"] * len(rows), pa.string()),
        "pseudo_hesid": pa.array([r[3] for r in rows], pa.string()),
    })


def _gp(rows):
    n = len(rows)
    return pa.table({
        "practice_code": pa.array(["Y00001"] * n, pa.string()),
        "extract_date": pa.array([dt.date(2024, 1, 5)] * n, pa.date32()),
        "nhs_number": pa.array([r[0] for r in rows], pa.string()),
        "nhs_number_valid": pa.array([True] * n, pa.bool_()),
        "date_of_birth": pa.array([dt.date(1970, 5, 5)] * n, pa.date32()),
        "sex": pa.array(["1"] * n, pa.string()),
        "postcode": pa.array(["LS11AA"] * n, pa.string()),
        "registration_date": pa.array([dt.date(2010, 1, 1)] * n, pa.date32()),
        "type2_objection": pa.array([r[1] for r in rows], pa.bool_()),
    })


def test_type2_numbers_flag_episodes_with_no_kept_gp_row_and_rank5_links():
    """The objector whose only GP row was quarantined (no GP row at all here) is flagged
    by their own number; one linked at rank 5 by their patient's number; the flag then
    drops their episodes, and those sharing their PSEUDO_HESID, from linked_episodes. A
    non-objector with no GP row (their row quarantined) keeps their episode."""
    obj_q, obj_held, plain_q, gp_plain = nhs_numbers(500, 4)
    gp = _gp([(obj_held, False), (gp_plain, False)])
    eps = _episodes([
        ("RAA", "1", obj_q, "H1"),          # objector, row quarantined: unlinked
        ("RAA", "2", None, "H1"),           # same person, no number: shares the HESID
        ("RAA", "3", obj_held, "H2"),       # objection only in a held extract: rank 1
        ("RAA", "4", plain_q, "H3"),        # non-objector, row quarantined
        ("RAA", "5", gp_plain, "H4"),       # non-objector, linked
    ])
    before = linkage.link_episodes(eps, gp)
    assert not any(before.column("type2_objection").to_pylist())
    linked = linkage.link_episodes(eps, gp, type2_numbers=pa.array([obj_q, obj_held]))
    assert linked.column("type2_objection").to_pylist() == [True, False, True, False, False]
    assert linked.column("match_rank").to_pylist() == [None, None, 1, None, 1]
    # restricted susrecid is a keyed pseudonym of provider and SUSRECID (pseudo.record_key_id)
    kept = sorted(record_key_id(DEMO_PSEUDO_KEY, "SUSRECID", "RAA", s) for s in ("4", "5"))
    out = linkage.linked_episodes_restricted(linked, DEMO_PSEUDO_KEY)
    assert sorted(out.column("susrecid").to_pylist()) == kept
    # the same through mark_type2 on an older linkage (as the release applies it)
    again = linkage.linked_episodes_restricted(linkage.mark_type2(before, [obj_q, obj_held]), DEMO_PSEUDO_KEY)
    assert sorted(again.column("susrecid").to_pylist()) == kept


def test_rank5_link_to_an_objector_known_only_from_another_extract():
    """An episode without a NHS number linked at rank 5 to a patient whose objection is in
    a held or quarantined row: flagged through the linked number."""
    n = nhs_numbers(600, 1)[0]
    linked = linkage.link_episodes(_episodes([("RAA", "1", None, None)]), _gp([(n, False)]),
                                   type2_numbers=[n])
    assert linked.column("match_rank").to_pylist() == [5]
    assert linked.column("type2_objection").to_pylist() == [True]


# --------------------------------------------------------------------------- end to end
ROOT = Path(__file__).resolve().parents[1]


def _sus_numbers(landing: Path) -> set[str]:
    out: set[str] = set()
    for p in sorted((landing / "sus_apc").iterdir()):
        try:  # the generated zone holds poison files too: those are skipped here
            raw = p.read_bytes()
            text = (gzip.decompress(raw) if p.name.endswith(".gz") else raw).decode("utf-8-sig")
            sep = "|" if "|" in text.partition("\n")[0] else ","
            df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False)
        except Exception:  # noqa: BLE001
            continue
        if "NEWNHSNO" in df.columns:
            out |= {n.replace(" ", "") for n in df["NEWNHSNO"] if n.strip()}
    return out


def _current_gp_files(landing: Path) -> dict[str, Path]:
    """Per practice, its newest plain-CSV extract named GP_<practice>_<YYYYMMDD>.csv."""
    newest: dict[str, Path] = {}
    for p in sorted((landing / "gp").iterdir()):
        parts = p.name[:-4].split("_") if p.name.endswith(".csv") else []
        if len(parts) == 3 and parts[2].isdigit() and len(parts[2]) == 8:
            if parts[1] not in newest or p.name > newest[parts[1]].name:
                newest[parts[1]] = p
    return newest


@pytest.fixture(scope="module")
def type2_zone(tmp_path_factory):
    from pipelines.synth import generate

    root = tmp_path_factory.mktemp("type2")
    landing, truth = root / "landing", root / "truth"
    generate(landing, seed=7, scale=0.002, months=1, start="2014-01", truth_dir=truth, progress=False)
    in_sus = _sus_numbers(landing)
    files = _current_gp_files(landing)
    chosen: dict[str, str] = {}
    for practice, path in sorted(files.items()):
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        if not set(HEADER.split(",")) <= set(df.columns):
            continue  # a poison file of the generated zone (rejected on its header)
        nhs = df["NHS_NUMBER"].str.replace(" ", "")
        obj = df["OBJECTION"].str.strip()
        hit = nhs.isin(in_sus) & (df["SEX"].isin(["1", "2"]))
        if "quarantined_objector" not in chosen and (hit & (obj == "9Nu4")).sum():
            # route 1: the objector's row in the current extract is quarantined (SEX X)
            i = df.index[hit & (obj == "9Nu4")][0]
            j = df.index[hit & (obj == "")][0]  # and a non-objector's row, also quarantined
            chosen["quarantined_objector"], chosen["quarantined_plain"] = nhs[i], nhs[j]
            chosen["quarantined_in"] = path.name[:-4]
            df.loc[[i, j], "SEX"] = "X"
            df.to_csv(path, index=False)
            continue
        if "held_objector" not in chosen and (hit & (obj == "")).sum() >= 2:
            # route 2: a newer extract, held (under half the rows), records an objection
            # that the current extract does not have
            k = df.index[hit & (obj == "")][-1]
            chosen["held_objector"] = nhs[k]
            held = df.loc[[k, df.index[0]]].copy()
            held["OBJECTION"] = ["9Nu4", held["OBJECTION"].iloc[1]]
            day = dt.datetime.strptime(path.name[-12:-4], "%Y%m%d").date() + dt.timedelta(days=2)
            held.to_csv(landing / "gp" / f"GP_{practice}_{day:%Y%m%d}.csv", index=False)
    assert set(chosen) == {"quarantined_objector", "quarantined_plain", "quarantined_in", "held_objector"}, chosen
    proc = run_cli_process(root, landing)
    return {"root": root, "proc": proc, "chosen": chosen}


def _restricted_ids(root: Path, name: str) -> set[str]:
    parts = sorted((root / "pub" / "restricted" / name).rglob("*.parquet"))
    assert parts, f"no restricted {name} published"
    return {v for p in parts for v in pq.read_table(p, columns=["person_id"]).column("person_id").to_pylist()}


@pytest.mark.e2e
def test_end_to_end_quarantined_or_held_objection_keeps_person_out_of_restricted_zone(type2_zone):
    z = type2_zone
    assert z["proc"].returncode == 0, z["proc"].stdout[-3000:] + z["proc"].stderr[-3000:]
    c = z["chosen"]
    wh = Warehouse(Store(str(z["root"] / "wh")))
    # the conditions of each route hold: the objector's row was quarantined, the held
    # extract was held
    silver = wh.read("gp_patients").to_pandas()
    in_current = set(silver.loc[silver["submission_id"] == c["quarantined_in"], "nhs_number"])
    assert in_current and c["quarantined_objector"] not in in_current and c["quarantined_plain"] not in in_current
    q = wh.read("quarantine").to_pandas()
    assert (q["submission_id"] == c["quarantined_in"]).sum() >= 2
    ex = current.gp_extracts(wh).to_pandas()
    assert ex["held"].fillna(False).any()
    # the held extract is not current: the objection is only in the held file
    cur = current.gp_current(wh)
    patients = cur.patients_newest_overall.to_pandas()
    held_rows = patients[patients["nhs_number"] == c["held_objector"]]
    assert len(held_rows) and not held_rows["type2_objection"].any()
    episodes = _restricted_ids(z["root"], "linked_episodes")
    spells = _restricted_ids(z["root"], "linked_spells")
    for who in ("quarantined_objector", "held_objector"):
        pid = person_id(DEMO_PSEUDO_KEY, c[who])
        assert pid not in episodes, who
        assert pid not in spells, who
    # a non-objector whose GP row was quarantined keeps their (unlinked) episodes
    assert person_id(DEMO_PSEUDO_KEY, c["quarantined_plain"]) in episodes
