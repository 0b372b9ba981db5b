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
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import current, ingest, linkage
from pipelines.config import DEMO_PSEUDO_KEY, Settings
from pipelines.nhs_number import with_check_digit
from pipelines.pseudo import person_id
from pipelines.storage import Store
from pipelines.warehouse import Warehouse

HEADER = "NHS_NUMBER,DATE_OF_BIRTH,SEX,POSTCODE,REGISTRATION_DATE,DEREGISTRATION_DATE,DATE_OF_DEATH,OBJECTION"


def numbers(start: int, count: int) -> list[str]:
    out, k = [], start
    while len(out) < count:
        n = with_check_digit(f"999{k:06d}")
        if n:
            out.append(n)
        k += 1
    return out


def write(landing: Path, rel: str, text: str) -> None:
    p = landing / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    old = p.stat().st_mtime - 60
    os.utime(p, (old, old))


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
    a = numbers(100, 12)
    kept, q_sex, q_dod, plain_q, plain = a[0], a[1], a[2], a[3], a[4:10]
    rows = [_row(kept, obj="9Nu4"), _row(q_sex, sex="X", obj="9Nu4"),
            _row(q_dod, dod="2099-01-01", obj="9Nu4"), _row(plain_q, sex="X"),
            _row("1234567890", obj="9Nu4")] + [_row(n) for n in plain]
    write(landing, "gp/GP_Y00001_20240105.csv", "\n".join([HEADER, *rows]) + "\n")
    ingest.ingest("gp", "2024-01", store, wh, Settings())
    # a newer extract with fewer than half the rows: held; it records a new objection
    write(landing, "gp/GP_Y00001_20240120.csv",
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
    n, others = numbers(300, 1)[0], numbers(400, 4)
    write(landing, "gp/GP_Y00002_20230110.csv",
          "\n".join([HEADER, _row(n, obj="9Nu4"), *(_row(o) for o in others)]) + "\n")
    ingest.ingest("gp", "2023-01", store, wh, Settings())
    write(landing, "gp/GP_Y00002_20231215.csv", "\n".join([HEADER, _row(n), *(_row(o) for o in others)]) + "\n")
    ingest.ingest("gp", "2023-12", store, wh, Settings())
    assert current.gp_type2_numbers(wh).to_pylist() == [n]  # 11 months: stands
    write(landing, "gp/GP_Y00002_20240215.csv", "\n".join([HEADER, _row(n), *(_row(o) for o in others)]) + "\n")
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
    obj_q, obj_held, plain_q, gp_plain = numbers(500, 4)
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
    out = linkage.linked_episodes_restricted(linked, DEMO_PSEUDO_KEY)
    assert sorted(out.column("susrecid").to_pylist()) == ["4", "5"]
    # the same through mark_type2 on an older linkage (as the release applies it)
    again = linkage.linked_episodes_restricted(linkage.mark_type2(before, [obj_q, obj_held]), DEMO_PSEUDO_KEY)
    assert sorted(again.column("susrecid").to_pylist()) == ["4", "5"]


def test_rank5_link_to_an_objector_known_only_from_another_extract():
    """An episode without a NHS number linked at rank 5 to a patient whose objection is in
    a held or quarantined row: flagged through the linked number."""
    n = numbers(600, 1)[0]
    linked = linkage.link_episodes(_episodes([("RAA", "1", None, None)]), _gp([(n, False)]),
                                   type2_numbers=[n])
    assert linked.column("match_rank").to_pylist() == [5]
    assert linked.column("type2_objection").to_pylist() == [True]
