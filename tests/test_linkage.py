"""Record linkage and care.data coverage (methods.md): pipelines/linkage.py.

Small hand-made tables. NHS numbers are generated in the 999 range (never issued) with
valid check digits.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import hmac
import os
import tempfile

import pyarrow as pa
import pyarrow.dataset  # noqa: F401 - pa.dataset
import pytest

from pipelines import linkage, pseudo, schemas
from pipelines.config import Settings
from pipelines.nhs_number import with_check_digit

D = dt.date
KEY = "unit-test-key"
# Ten generated valid numbers in the 999 range.
N = [n for n in (with_check_digit(f"999{i:06d}") for i in range(100)) if n][:10]


def by_susrecid(out: pa.Table, key: str, susrecids) -> dict:
    """Rows of a linked_episodes table by their supplier SUSRECID (published as keyed
    pseudonyms: pseudo.record_key_id)."""
    names = {pseudo.record_key_id(key, "SUSRECID", p, s): s for s in susrecids
             for p in set(out.column("provider_code").to_pylist())}
    return {names[r["susrecid"]]: r for r in out.to_pylist()}


def hmac32(key: str, message: str) -> str:
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()[:32]


# --------------------------------------------------------------------------- builders
def _table(name: str, rows: list[dict]) -> pa.Table:
    schema = schemas.get(name).arrow_schema(include_partition=True)
    return pa.Table.from_pylist(rows, schema=schema)


def gp_row(nhs, practice="P1", **kw) -> dict:
    row = dict(
        period="2014-03", submission_id=f"GP_{practice}_20140301", line=2,
        practice_code=practice, extract_date=D(2014, 3, 1),
        nhs_number=nhs, nhs_number_valid=nhs is not None,
        date_of_birth=D(1950, 3, 15), sex="1", postcode="LS14AP", lsoa="E01000001",
        registration_date=D(2000, 1, 1), deregistration_date=None, date_of_death=None,
        type2_objection=False,
    )
    row.update(kw)
    return row


def gp(*rows) -> pa.Table:
    return _table("gp_patients", list(rows))


_n_ep = 0


def ep_row(nhs=None, **kw) -> dict:
    global _n_ep
    _n_ep += 1
    row = dict(
        period="2014-03", submission_id="APC_R1_201403_20140405000000_BULK", line=_n_ep + 1,
        source="sus_apc", provider_code="R1", susrecid=f"E{_n_ep:04d}", cds_update_type="9",
        spell_id=f"S{_n_ep:04d}", epiorder="01", epistat="3",
        epistart=D(2014, 3, 1), epiend=D(2014, 3, 3), admidate=D(2014, 3, 1), disdate=D(2014, 3, 3),
        admimeth="11", dismeth="1", classpat="1", sex="1",
        nhs_number=nhs, nhs_number_valid=nhs is not None, nhsnoind="01" if nhs else "03",
        dob=D(1950, 3, 15), birth_year=1950, birth_month=3, postcode="LS14AP", gpprac="P1",
        consultant_code="C1234567", mainspef="100", tretspef="100",
        diagnoses=["I219"], procedures=["K401"], procedure_dates=[D(2014, 3, 1)],
        pseudo_hesid=None,
    )
    row.update(kw)
    if "dob" in kw and kw["dob"] is not None and "birth_year" not in kw:
        row["birth_year"], row["birth_month"] = kw["dob"].year, kw["dob"].month
    return row


def eps(*rows) -> pa.Table:
    return _table("sus_episodes", list(rows))


def link_one(episode: dict, *gp_rows: dict) -> dict:
    out = linkage.link_episodes(eps(episode), gp(*gp_rows))
    return out.select(list(linkage.LINK_COLUMNS)).to_pylist()[0]


PATIENT = gp_row(N[0])  # born 1950-03-15, male, LS1 4AP, registered at P1 since 2000


# --------------------------------------------------------------------------- ranks
def test_rank_1_nhs_number_dob_sex_postcode():
    got = link_one(ep_row(N[0]), PATIENT)
    assert got["match_rank"] == 1
    assert got["linked_nhs_number"] == N[0]
    assert got["registered_practice"] == "P1"


def test_postcodes_agree_after_removing_spaces_and_upper_casing():
    assert link_one(ep_row(N[0], postcode="ls1 4ap"), PATIENT)["match_rank"] == 1
    assert link_one(ep_row(N[0], postcode=" Ls 14 Ap "), gp_row(N[0], postcode="ls1  4ap"))["match_rank"] == 1


def test_rank_2_postcode_differs():
    assert link_one(ep_row(N[0], postcode="M11AA"), PATIENT)["match_rank"] == 2
    assert link_one(ep_row(N[0], postcode=None), PATIENT)["match_rank"] == 2


def test_rank_3_month_and_year_of_birth():
    # full DOB on the episode, another day of the same month
    assert link_one(ep_row(N[0], dob=D(1950, 3, 1)), PATIENT)["match_rank"] == 3
    # MYDOB only: no DOB, birth year and month derived from MMYYYY
    assert link_one(ep_row(N[0], dob=None, birth_year=1950, birth_month=3), PATIENT)["match_rank"] == 3


def test_rank_4_nhs_number_only():
    # sex differs
    assert link_one(ep_row(N[0], sex="2"), PATIENT)["match_rank"] == 4
    # birth date missing altogether
    assert link_one(ep_row(N[0], dob=None, birth_year=None, birth_month=None), PATIENT)["match_rank"] == 4
    # another month of birth
    assert link_one(ep_row(N[0], dob=D(1950, 4, 15)), PATIENT)["match_rank"] == 4


@pytest.mark.parametrize("sex", ["0", "9"])
def test_sex_0_or_9_never_agrees(sex):
    both = link_one(ep_row(N[0], sex=sex), gp_row(N[0], sex=sex))
    assert both["match_rank"] == 4  # NHS number only, though DOB and postcode agree
    no_nhs = link_one(ep_row(None, sex=sex), gp_row(N[0], sex=sex))
    assert no_nhs["match_rank"] is None


def test_rank_5_no_nhs_number_unique_dob_sex_postcode():
    got = link_one(ep_row(None, postcode="ls1 4ap"), PATIENT, gp_row(N[1], date_of_birth=D(1960, 1, 1)))
    assert got["match_rank"] == 5
    assert got["linked_nhs_number"] == N[0]
    # an invalid number on the episode counts as no valid number
    got = link_one(ep_row(None, nhs_number_valid=False), PATIENT)
    assert got["match_rank"] == 5


def test_rank_5_one_patient_seen_at_two_practices_is_one_candidate():
    other_practice = gp_row(N[0], practice="P2", registration_date=D(2014, 2, 1))
    moved = gp_row(N[0], deregistration_date=D(2014, 1, 31))
    got = link_one(ep_row(None), moved, other_practice)
    assert got["match_rank"] == 5
    assert got["registered_practice"] == "P2"


def test_rank_5_ambiguous_two_patients_unlinked():
    twin = gp_row(N[1])  # same DOB, sex, postcode, another patient
    got = link_one(ep_row(None), PATIENT, twin)
    assert got["match_rank"] is None
    assert got["linked_nhs_number"] is None
    assert got["registered_practice"] is None


def test_never_link_to_a_patient_with_another_valid_nhs_number():
    # N[5] is valid but not in the GP data; PATIENT agrees on DOB, sex and postcode.
    got = link_one(ep_row(N[5]), PATIENT)
    assert got == dict(match_rank=None, linked_nhs_number=None, registered_practice=None,
                       lsoa=None, date_of_death=None, type2_objection=False, linked_date_of_birth=None)
    # N[1] is in the GP data with another DOB: rank 4 to N[1], never rank 5 to PATIENT.
    got = link_one(ep_row(N[1]), PATIENT, gp_row(N[1], date_of_birth=D(1990, 1, 1)))
    assert got["match_rank"] == 4 and got["linked_nhs_number"] == N[1]
    assert got["linked_date_of_birth"] == D(1990, 1, 1)  # the GP record's, for age at admission


def test_linked_date_of_birth_only_for_ranks_1_to_4_from_the_newest_extract():
    newer = gp_row(N[0], date_of_birth=D(1961, 2, 2), extract_date=D(2014, 3, 20))
    older = gp_row(N[0], date_of_birth=D(1960, 1, 1), extract_date=D(2014, 1, 20))
    got = link_one(ep_row(N[0], dob=None, birth_year=None, birth_month=None), older, newer)
    assert got["match_rank"] == 4 and got["linked_date_of_birth"] == D(1961, 2, 2)
    rank5 = link_one(ep_row(None, postcode="ls1 4ap"), PATIENT)
    assert rank5["match_rank"] == 5 and rank5["linked_date_of_birth"] is None


def test_gp_rows_without_a_valid_nhs_number_are_never_linked():
    got = link_one(ep_row(None), gp_row(None))
    assert got["match_rank"] is None


def test_best_agreement_over_the_patients_rows():
    old = gp_row(N[0], practice="P2", postcode="M11AA", deregistration_date=D(2010, 1, 1))
    new = gp_row(N[0], practice="P1", postcode="LS14AP", registration_date=D(2010, 1, 2))
    assert link_one(ep_row(N[0], postcode="M11AA"), old, new)["match_rank"] == 1
    assert link_one(ep_row(N[0], postcode="LS14AP"), old, new)["match_rank"] == 1


# --------------------------------------------------------------------------- registration history
# Patient N[2] was at P1 from 2005 to 2012-06-30, then at P2 from 2012-07-01.
HISTORY = (
    gp_row(N[2], practice="P1", registration_date=D(2005, 1, 1), deregistration_date=D(2012, 6, 30),
           lsoa="E01000111"),
    gp_row(N[2], practice="P2", registration_date=D(2012, 7, 1), lsoa="E01000222",
           date_of_death=D(2014, 3, 20), extract_date=D(2014, 3, 25)),
)


def test_registered_practice_is_the_registration_covering_epistart():
    table = linkage.link_episodes(
        eps(
            ep_row(N[2], epistart=D(2012, 3, 1), gpprac="P2"),
            ep_row(N[2], epistart=D(2013, 1, 5), gpprac="P2"),
            ep_row(N[2], epistart=D(2012, 6, 30)),  # deregistered that day, P2 not started
            ep_row(N[2], epistart=D(2004, 6, 1)),   # before any registration
        ),
        gp(*HISTORY),
    )
    assert table.column("registered_practice").to_pylist() == ["P1", "P2", None, None]
    assert table.column("match_rank").to_pylist() == [1, 1, 1, 1]
    assert table.column("lsoa").to_pylist() == ["E01000111", "E01000222", "E01000222", "E01000222"]
    # date of death from any of the patient's rows
    assert table.column("date_of_death").to_pylist() == [D(2014, 3, 20)] * 4


def test_overlapping_registrations_prefer_the_hospitals_gpprac():
    stale = gp_row(N[3], practice="P1", registration_date=D(2005, 1, 1))  # move not yet recorded
    new = gp_row(N[3], practice="P2", registration_date=D(2013, 7, 1))
    table = linkage.link_episodes(
        eps(ep_row(N[3], gpprac="P1"), ep_row(N[3], gpprac="P2"), ep_row(N[3], gpprac=None)),
        gp(stale, new),
    )
    assert table.column("registered_practice").to_pylist() == ["P1", "P2", "P2"]


def test_type2_objection_from_any_gp_row_of_the_patient():
    rows = (
        gp_row(N[4], practice="P1", deregistration_date=D(2010, 1, 1)),
        gp_row(N[4], practice="P2", registration_date=D(2010, 1, 2), type2_objection=True),
        PATIENT,
    )
    table = linkage.link_episodes(
        eps(
            ep_row(N[4]),                                    # own valid number: type 2 objector
            ep_row(None, dob=D(1950, 3, 15), postcode="ZZ11ZZ"),  # unlinked
            ep_row(N[0]),
        ),
        gp(*rows),
    )
    assert table.column("type2_objection").to_pylist() == [True, False, False]
    # rank 5 link to a type 2 objector is flagged too
    got = link_one(ep_row(None), gp_row(N[4], type2_objection=True))
    assert got["match_rank"] == 5 and got["type2_objection"] is True


def test_episodes_come_back_whole_in_order():
    episodes = eps(ep_row(N[5]), ep_row(N[0]), ep_row(None))
    out = linkage.link_episodes(episodes, gp(PATIENT))
    assert out.num_rows == 3
    assert out.column_names == episodes.column_names + list(linkage.LINK_COLUMNS)
    assert out.select(episodes.column_names).equals(episodes)
    assert out.column("match_rank").to_pylist() == [None, 1, 5]
    assert out.schema.field("match_rank").type == pa.int64()
    # linking the output again replaces the link columns
    again = linkage.link_episodes(out, gp(PATIENT))
    assert again.column_names == out.column_names


# --------------------------------------------------------------------------- restricted
def test_linked_episodes_restricted():
    t2 = gp_row(N[4], type2_objection=True, date_of_birth=D(1970, 1, 1))
    linked = linkage.link_episodes(
        eps(
            ep_row(N[0], susrecid="A1", admidate=D(2014, 3, 14)),            # 63: day before birthday
            ep_row(None, susrecid="A2", admidate=D(2014, 3, 15)),            # rank 5 to N[0], 64
            ep_row(N[4], susrecid="A3", dob=D(1970, 1, 1), pseudo_hesid="HX"),   # type 2
            ep_row(None, susrecid="A4", pseudo_hesid="HX", dob=None, birth_year=None, birth_month=None),
            ep_row(None, susrecid="A5", pseudo_hesid="HY", dob=None, birth_year=1980, birth_month=6,
                   admidate=D(2014, 5, 31)),                                 # MYDOB: 33
            ep_row(N[6], susrecid="A6"),                                     # unlinked, own number
        ),
        gp(PATIENT, t2),
    )
    out = linkage.linked_episodes_restricted(linked, KEY)
    assert out.schema.equals(schemas.get("linked_episodes").arrow_schema(include_partition=True),
                             check_metadata=True)
    for banned in ("nhs_number", "linked_nhs_number", "postcode", "dob", "birth_year", "birth_month",
                   "pseudo_hesid", "type2_objection"):
        assert banned not in out.column_names
    assert {r["susrecid"] for r in out.to_pylist()}.isdisjoint({"A1", "A2", "A5", "A6"})
    rows = by_susrecid(out, KEY, ["A1", "A2", "A3", "A4", "A5", "A6"])
    assert rows["A1"]["susrecid"] == hmac32(KEY, f"SUSRECID:{rows['A1']['provider_code']}:A1")
    # A3 is the type 2 patient; A4 shares its PSEUDO_HESID, so it is the same person.
    assert sorted(rows) == ["A1", "A2", "A5", "A6"]
    assert rows["A1"]["person_id"] == hmac32(KEY, N[0])
    assert rows["A2"]["person_id"] == hmac32(KEY, N[0])  # rank 5: the linked patient's number
    assert rows["A5"]["person_id"] == hmac32(KEY, "HESID:HY")
    assert rows["A6"]["person_id"] == hmac32(KEY, N[6]) and rows["A6"]["match_rank"] is None
    assert rows["A1"]["age_at_admission"] == 63
    assert rows["A2"]["age_at_admission"] == 64
    assert rows["A5"]["age_at_admission"] == 33
    assert rows["A1"]["diagnoses"] == ["I219"] and rows["A1"]["procedures"] == ["K401"]
    assert rows["A1"]["period"] == "2014-03" and rows["A1"]["registered_practice"] == "P1"
    assert rows["A1"]["lsoa"] == "E01000001"
    # deterministic for one key, different for another
    again = linkage.linked_episodes_restricted(linked, KEY)
    assert again.column("person_id").equals(out.column("person_id"))
    other = linkage.linked_episodes_restricted(linked, "another-key")
    assert set(other.column("person_id").to_pylist()).isdisjoint(out.column("person_id").to_pylist())


def test_linked_episodes_restricted_refuses_without_a_key():
    linked = linkage.link_episodes(eps(ep_row(N[0])), gp(PATIENT))
    for key in (None, ""):
        with pytest.raises(pseudo.MissingKeyError):
            linkage.linked_episodes_restricted(linked, key)


# --------------------------------------------------------------------------- coverage
def settings_with(**linkage_over) -> Settings:
    base = Settings()
    thresholds = copy.deepcopy(base.thresholds)
    thresholds["linkage"].update(linkage_over)
    return Settings(thresholds=thresholds)


def practices() -> pa.Table:
    rows = [
        ("P1", "A", "4", "C1"),
        ("P2", "A", "4", "C1"),
        ("P3", "A", "4", "C2"),
        ("P4", "C", "4", "C2"),  # closed: not counted
        ("P5", "A", "1", "C2"),  # not a GP practice: not counted
    ]
    return _table("ref_practices", [
        dict(practice_code=p, status=s, prescribing_setting=ps, commissioner_code=c) for p, s, ps, c in rows
    ])


def providers() -> pa.Table:
    return _table("ref_providers", [
        dict(provider_code="R1", commissioner_code="C1"),
        dict(provider_code="R2", commissioner_code="C2"),
        dict(provider_code="R9", commissioner_code="C2"),  # no episodes: not a provider of the period
    ])


def extracts() -> pa.Table:
    rows = [
        ("GP_P1_20140310", "P1", D(2014, 3, 10), 9, 9, False),  # superseded by the 25th
        ("GP_P1_20140325", "P1", D(2014, 3, 25), 2, 1, False),
        ("GP_P2_20140220", "P2", D(2014, 2, 20), 0, 0, False),  # previous period
        ("GP_P3_20140305", "P3", D(2014, 3, 5), 0, 0, False),
        ("GP_P3_20140320", "P3", D(2014, 3, 20), 5, 5, True),   # held: not an extract provided
    ]
    return _table("gp_extracts", [
        dict(submission_id=s, practice_code=p, extract_date=d, period=d.strftime("%Y-%m"),
             rows_received=10, type1_objections=t1, type2_objections=t2, held=h)
        for s, p, d, t1, t2, h in rows
    ])


def gp_patients_period() -> pa.Table:
    p1 = dict(practice="P1", extract_date=D(2014, 3, 25), submission_id="GP_P1_20140325")
    p3 = dict(practice="P3", extract_date=D(2014, 3, 5), submission_id="GP_P3_20140305")
    return gp(
        gp_row(N[0], **p1),                                        # registered
        gp_row(N[1], type2_objection=True, **p1),                  # registered, type 2 counted
        gp_row(N[2], deregistration_date=D(2014, 3, 25), **p1),    # deregistered on the date
        gp_row(N[3], date_of_death=D(2014, 3, 1), **p1),           # dead before it
        gp_row(N[4], deregistration_date=D(2014, 4, 1), **p1),     # still registered that day
        gp_row(N[5], **p3),
        gp_row(N[6], **p3),
    )


def linked_table() -> pa.Table:
    """Hand-made link_episodes output for 2014-03."""
    rows = []

    def add(provider, gpprac, rank, reg, valid=True, ind="01", epiend=D(2014, 3, 10)):
        rows.append(dict(provider_code=provider, epiend=epiend, nhs_number_valid=valid, nhsnoind=ind,
                         gpprac=gpprac, match_rank=rank, registered_practice=reg))

    for _ in range(5):
        add("R1", "P1", 1, "P1")
    add("R1", "P1", 2, "P1")
    add("R1", "P1", 2, "P1")
    add("R1", "P1", 3, "P1")
    add("R1", "P1", 5, "P1", valid=False, ind="03")
    add("R1", "P1", 4, "P2")           # linked, but registered elsewhere at EPISTART
    add("R2", "P3", 1, "P3")
    add("R2", "P3", 1, "P3")
    add("R2", "P3", 1, "P3")
    add("R2", "P3", None, None, ind="02")
    add("R2", None, None, None, ind="02")
    add("R2", "P3", 1, "P3", epiend=D(2014, 4, 1))  # another period: ignored
    return pa.Table.from_pylist(rows, schema=pa.schema([
        ("provider_code", pa.string()), ("epiend", pa.date32()), ("nhs_number_valid", pa.bool_()),
        ("nhsnoind", pa.string()), ("gpprac", pa.string()), ("match_rank", pa.int64()),
        ("registered_practice", pa.string()),
    ]))


@pytest.fixture(scope="module")
def cov():
    return linkage.coverage("2014-03", linked_table(), practices(), providers(), extracts(),
                            gp_patients_period(), Settings())


def test_coverage_outputs_are_conformed(cov):
    assert set(cov) == {"linkage_coverage_practice", "linkage_coverage_provider",
                        "linkage_coverage_summary", "programme_targets", "linkage_quality"}
    for name, table in cov.items():
        # staged: unsuppressed, without the *_suppressed flags publishing adds
        assert table.schema.equals(schemas.get(name).arrow_schema(include_partition=True, staged=True))
        assert not [c for c in table.column_names if c.endswith("_suppressed")]
        assert set(table.column("period").to_pylist()) == {"2014-03"}


def test_coverage_practice(cov):
    rows = {r["practice_code"]: r for r in cov["linkage_coverage_practice"].to_pylist()}
    assert sorted(rows) == ["P1", "P2", "P3"]
    p1, p2, p3 = rows["P1"], rows["P2"], rows["P3"]
    assert (p1["commissioner_code"], p1["extract_received"], p1["extract_date"]) == ("C1", True, D(2014, 3, 25))
    assert (p1["registered_patients"], p1["type1_objections"], p1["type2_objections"]) == (3, 2, 1)
    assert (p1["episodes_expected"], p1["episodes_linked"]) == (10, 9)
    assert p1["pct_linked"] == pytest.approx(90.0)
    assert p1["linked_to_hospital_data"] is True  # 90% is enough
    # no extract in the period: empty, not 0
    assert (p2["extract_received"], p2["extract_date"]) == (False, None)
    assert (p2["registered_patients"], p2["type1_objections"], p2["type2_objections"]) == (None, None, None)
    assert (p2["episodes_expected"], p2["episodes_linked"], p2["pct_linked"]) == (0, 0, None)
    assert p2["linked_to_hospital_data"] is False
    # held extract ignored: the 5th is the newest provided
    assert (p3["extract_received"], p3["extract_date"]) == (True, D(2014, 3, 5))
    assert (p3["registered_patients"], p3["type1_objections"], p3["type2_objections"]) == (2, 0, 0)
    assert (p3["episodes_expected"], p3["episodes_linked"]) == (4, 3)
    assert p3["pct_linked"] == pytest.approx(75.0)
    assert p3["linked_to_hospital_data"] is False


def test_coverage_practice_threshold_from_settings():
    out = linkage.coverage("2014-03", linked_table(), practices(), providers(), extracts(),
                           gp_patients_period(), settings_with(practice_linked_pct=95.0))
    rows = {r["practice_code"]: r for r in out["linkage_coverage_practice"].to_pylist()}
    assert rows["P1"]["linked_to_hospital_data"] is False


def test_coverage_provider(cov):
    rows = {r["provider_code"]: r for r in cov["linkage_coverage_provider"].to_pylist()}
    assert sorted(rows) == ["R1", "R2"]
    r1, r2 = rows["R1"], rows["R2"]
    assert r1["commissioner_code"] == "C1"
    assert (r1["episodes"], r1["episodes_valid_nhs_number"], r1["episodes_verified_nhs_number"]) == (10, 9, 9)
    assert r1["pct_valid_nhs_number"] == pytest.approx(90.0)
    assert r1["episodes_linked"] == 10 and r1["pct_linked"] == pytest.approx(100.0)
    assert [r1[f"linked_rank_{k}"] for k in range(1, 6)] == [5, 2, 1, 1, 1]
    assert r1["meets_nhs_number_standard"] is False
    assert (r2["episodes"], r2["episodes_valid_nhs_number"], r2["episodes_verified_nhs_number"]) == (5, 5, 3)
    assert r2["pct_verified_nhs_number"] == pytest.approx(60.0)
    assert (r2["episodes_linked"], r2["pct_linked"]) == (3, pytest.approx(60.0))
    assert [r2[f"linked_rank_{k}"] for k in range(1, 6)] == [3, 0, 0, 0, 0]
    assert r2["meets_nhs_number_standard"] is True


def test_coverage_summary(cov):
    rows = {r["area_code"]: r for r in cov["linkage_coverage_summary"].to_pylist()}
    assert [r["area_code"] for r in cov["linkage_coverage_summary"].to_pylist()] == ["ENG", "C1", "C2"]
    eng, c1, c2 = rows["ENG"], rows["C1"], rows["C2"]
    assert eng["area_level"] == "national" and c1["area_level"] == "commissioner"
    assert (eng["practices"], eng["practices_providing_extract"], eng["practices_linked"]) == (3, 2, 1)
    assert eng["pct_practices_providing_extract"] == pytest.approx(200 / 3)
    assert eng["pct_practices_linked"] == pytest.approx(100 / 3)
    assert (eng["providers"], eng["providers_meeting_nhs_number_standard"]) == (2, 1)
    assert eng["pct_providers_meeting_nhs_number_standard"] == pytest.approx(50.0)
    assert (c1["practices"], c1["practices_providing_extract"], c1["practices_linked"]) == (2, 1, 1)
    assert (c1["pct_practices_providing_extract"], c1["pct_practices_linked"]) == (50.0, 50.0)
    assert (c1["providers"], c1["providers_meeting_nhs_number_standard"]) == (1, 0)
    assert c1["pct_providers_meeting_nhs_number_standard"] == 0.0
    assert (c2["practices"], c2["practices_providing_extract"], c2["practices_linked"]) == (1, 1, 0)
    assert (c2["pct_practices_providing_extract"], c2["pct_practices_linked"]) == (100.0, 0.0)
    assert c2["pct_providers_meeting_nhs_number_standard"] == 100.0


def test_programme_targets_default_configuration(cov):
    got = {(r["area_code"], r["target_id"]): r for r in cov["programme_targets"].to_pylist()}
    assert len(got) == 3 * 5
    # extract_75 was due 2013-09-30: assessed in 2014-03
    assert got[("ENG", "extract_75")]["status"] == "not_met"       # 66.7 < 75
    assert got[("ENG", "extract_75")]["actual_pct"] == pytest.approx(200 / 3)
    assert got[("C2", "extract_75")]["status"] == "met"            # 100 >= 75
    assert got[("ENG", "extract_75")]["due_date"] == D(2013, 9, 30)
    assert got[("ENG", "extract_75")]["target_pct"] == 75.0
    # the others fall due later, or have no date
    for target in ("linked_5", "linked_90", "nhs_number_95", "linked_100"):
        assert got[("ENG", target)]["status"] == "not_yet_due"
    assert got[("ENG", "linked_100")]["due_date"] is None
    assert got[("C1", "nhs_number_95")]["actual_pct"] == 0.0


def test_programme_targets_status_on_the_due_date():
    s = Settings()
    thresholds = copy.deepcopy(s.thresholds)
    thresholds["targets"] = [
        dict(id="due_on_last_day", measure="m", metric="pct_practices_linked", target_pct=30.0, due_date="2014-03-31"),
        dict(id="due_next_day", measure="m", metric="pct_practices_linked", target_pct=30.0, due_date=D(2014, 4, 1)),
        dict(id="due_before_high", measure="m", metric="pct_providers_meeting_nhs_number_standard",
             target_pct=50.000001, due_date="2014-01-01"),
        dict(id="exactly_met", measure="m", metric="pct_providers_meeting_nhs_number_standard",
             target_pct=50.0, due_date="2014-01-01"),
        dict(id="no_date", measure="m", metric="pct_practices_linked", target_pct=1.0, due_date=None),
    ]
    out = linkage.coverage("2014-03", linked_table(), practices(), providers(), extracts(),
                           gp_patients_period(), Settings(thresholds=thresholds))
    eng = {r["target_id"]: r["status"] for r in out["programme_targets"].to_pylist() if r["area_code"] == "ENG"}
    assert eng == {"due_on_last_day": "met", "due_next_day": "not_yet_due", "due_before_high": "not_met",
                   "exactly_met": "met", "no_date": "not_yet_due"}


def test_practice_rate_counts_only_links_to_a_registration_at_that_practice():
    # N[2] left P1 on 2013-12-31 and joined P2 on 2014-01-01 (newest extracts of both).
    history = gp(
        gp_row(N[2], practice="P1", registration_date=D(2005, 1, 1), deregistration_date=D(2013, 12, 31)),
        gp_row(N[2], practice="P2", registration_date=D(2014, 1, 1)),
    )
    episodes = eps(
        ep_row(N[2], gpprac="P2", epistart=D(2013, 11, 1), epiend=D(2014, 3, 2)),  # long stay: P1 then
        ep_row(N[2], gpprac="P2", epistart=D(2014, 3, 1), epiend=D(2014, 3, 4)),
        ep_row(N[2], gpprac="P1", epistart=D(2014, 3, 5), epiend=D(2014, 3, 6)),   # GPPRAC out of date
    )
    linked = linkage.link_episodes(episodes, history)
    assert linked.column("match_rank").to_pylist() == [1, 1, 1]
    assert linked.column("registered_practice").to_pylist() == ["P1", "P2", "P2"]
    out = linkage.coverage("2014-03", linked, practices(), providers(), extracts(), gp(), Settings())
    rows = {r["practice_code"]: r for r in out["linkage_coverage_practice"].to_pylist()}
    assert (rows["P2"]["episodes_expected"], rows["P2"]["episodes_linked"]) == (2, 1)
    assert (rows["P1"]["episodes_expected"], rows["P1"]["episodes_linked"]) == (1, 0)
    assert rows["P1"]["registered_patients"] == 0  # an extract but no rows passed: 0, not empty
    provider = out["linkage_coverage_provider"].to_pylist()[0]
    assert (provider["episodes"], provider["episodes_linked"], provider["linked_rank_1"]) == (3, 3, 3)


def test_coverage_rejects_a_bad_period():
    with pytest.raises(ValueError):
        linkage.coverage("2014-3", linked_table(), practices(), providers(), extracts(),
                         gp_patients_period(), Settings())


def test_empty_inputs():
    linked = linkage.link_episodes(eps(), gp())
    assert linked.num_rows == 0 and linked.column_names[-len(linkage.LINK_COLUMNS):] == list(linkage.LINK_COLUMNS)
    out = linkage.coverage("2014-03", linked, practices(), providers(), extracts(), gp(), Settings())
    assert out["linkage_coverage_provider"].num_rows == 0
    summary = out["linkage_coverage_summary"].to_pylist()
    eng = summary[0]
    assert (eng["area_code"], eng["practices"], eng["providers"]) == ("ENG", 3, 0)
    assert eng["pct_providers_meeting_nhs_number_standard"] is None
    targets = {(r["area_code"], r["target_id"]): r["status"] for r in out["programme_targets"].to_pylist()}
    assert targets[("ENG", "extract_75")] == "not_met"
    assert linkage.linked_episodes_restricted(linked, KEY).num_rows == 0
    nothing = linkage.coverage("2014-03", linked, practices().slice(0, 0), providers(), extracts().slice(0, 0),
                               gp(), Settings())
    assert [r["area_code"] for r in nothing["linkage_coverage_summary"].to_pylist()] == ["ENG"]
    assert nothing["linkage_coverage_practice"].num_rows == 0


# --------------------------------------------------------------------------- GP rows as a lazy dataset
# More generated 999-range numbers, for GP patients who have no episode.
MORE = [n for n in (with_check_digit(f"999{i:06d}") for i in range(100, 400)) if n][:40]


def _gp_dataset(tmp_path, rows: list[dict], per_file: int):
    """``rows`` written to a warehouse as gp_patients parts of ``per_file`` rows (one
    Parquet file each, like one submission each), and the two ways of reading them: the
    whole table (``Warehouse.read``) and the lazy dataset (``Warehouse.dataset``)."""
    from pipelines.storage import Store
    from pipelines.warehouse import Warehouse

    wh = Warehouse(Store(tmp_path / "wh"))
    paths = []
    for i in range(0, len(rows), per_file):
        paths.append(wh.write("gp_patients", gp(*rows[i:i + per_file]), "2014-03", f"part-{i:05d}"))
    return wh.read("gp_patients", parts=paths), wh.dataset("gp_patients", parts=paths)


def _lazy_case():
    """GP rows and episodes covering every rank, with the rows that decide rank 5 and a
    rank 5 patient's registration spread over several files among unrelated patients."""
    filler = [gp_row(n, practice=f"F{i % 3}", date_of_birth=D(1930 + i, 1 + i % 12, 1 + i % 28),
                     postcode=f"X{i}1AA") for i, n in enumerate(MORE[2:])]
    rows = [
        *filler[:10],
        PATIENT,                                                              # N[0]
        gp_row(None, postcode="Q11QQ"),                                       # not a patient
        *HISTORY,                                                             # N[2], two practices
        *filler[10:20],
        # N[7]: no episode with its number; its P1 row agrees with a no-number episode, its
        # P2 row (after a move: other postcode) covers EPISTART and is a type 2 objection.
        gp_row(N[7], practice="P1", date_of_birth=D(1961, 5, 5), postcode="B11AA", lsoa="E01000071",
               registration_date=D(2001, 1, 1), deregistration_date=D(2013, 12, 31)),
        *filler[20:25],
        gp_row(N[7], practice="P2", date_of_birth=D(1961, 5, 5), postcode="B22BB", lsoa="E01000072",
               registration_date=D(2014, 1, 1), type2_objection=True),
        # N[8] and MORE[0] (neither has an episode) share DOB, sex and postcode, in other files.
        gp_row(N[8], practice="P3", date_of_birth=D(1972, 7, 7), sex="2", postcode="C33CC"),
        *filler[25:],
        gp_row(MORE[0], practice="P4", date_of_birth=D(1972, 7, 7), sex="2", postcode="c3 3cc"),
        # MORE[1]: alone on its DOB, sex and postcode, two practices (one candidate).
        gp_row(MORE[1], practice="P1", date_of_birth=D(1980, 2, 2), postcode="D44DD", deregistration_date=D(2014, 1, 1)),
        gp_row(MORE[1], practice="P3", date_of_birth=D(1980, 2, 2), postcode="D44DD", registration_date=D(2014, 1, 1),
               date_of_death=D(2014, 3, 20)),
    ]
    episodes = eps(
        ep_row(N[0]),                                                         # rank 1
        ep_row(N[0], postcode="M11AA"),                                       # rank 2
        ep_row(N[0], dob=D(1950, 3, 1)),                                      # rank 3
        ep_row(N[0], sex="2"),                                                # rank 4
        ep_row(N[2], epistart=D(2012, 3, 1), gpprac="P2"),                    # history: P1
        ep_row(N[2], epistart=D(2013, 1, 5)),                                 # history: P2
        ep_row(None, dob=D(1961, 5, 5), postcode="b1 1aa"),                   # rank 5 to N[7]
        ep_row(None, dob=D(1972, 7, 7), sex="2", postcode="C33CC"),           # two candidates
        ep_row(None, dob=D(1980, 2, 2), postcode="D4 4DD"),                   # rank 5 to MORE[1]
        ep_row(N[5]),                                                         # number not in GP data
        ep_row(None, dob=None, birth_year=None, birth_month=None),            # nothing to match
    )
    return rows, episodes


def test_link_episodes_same_from_a_parquet_dataset_as_from_a_table(tmp_path):
    # the dataset goes to the engine as Parquet files it scans itself (linkage._gp_input)
    rows, episodes = _lazy_case()
    table, dataset = _gp_dataset(tmp_path, rows, per_file=4)
    assert isinstance(dataset, pa.dataset.Dataset) and len(dataset.files) > 1
    from_table = linkage.link_episodes(episodes, table)
    from_dataset = linkage.link_episodes(episodes, dataset)
    assert from_dataset.schema.equals(from_table.schema, check_metadata=True)
    assert from_dataset.equals(from_table)
    got = from_dataset.select(list(linkage.LINK_COLUMNS)).to_pylist()
    assert [g["match_rank"] for g in got] == [1, 2, 3, 4, 1, 1, 5, None, 5, None, None]
    # rank 5 to N[7]: its other row (another file, another postcode) gives the registration
    # covering EPISTART, its LSOA and the type 2 objection
    assert got[6] == dict(match_rank=5, linked_nhs_number=N[7], registered_practice="P2",
                          lsoa="E01000072", date_of_death=None, type2_objection=True, linked_date_of_birth=None)
    # the second patient on that DOB, sex and postcode has no episode, yet still counts
    assert got[7]["linked_nhs_number"] is None
    assert (got[8]["linked_nhs_number"], got[8]["registered_practice"], got[8]["date_of_death"]) == (
        MORE[1], "P3", D(2014, 3, 20))
    assert [g["registered_practice"] for g in got[4:6]] == ["P1", "P2"]
    # and the same as linking against one table of every row at once
    assert linkage.link_episodes(episodes, gp(*rows)).equals(from_table)


def test_link_episodes_dataset_needs_the_required_columns(tmp_path):
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"practice_code": ["P1"]}), tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="missing columns"):
        linkage.link_episodes(eps(ep_row(N[0])), pads.dataset([str(tmp_path / "x.parquet")], format="parquet"))
    with pytest.raises(TypeError):
        linkage.link_episodes(eps(ep_row(N[0])), [PATIENT])


def test_coverage_same_from_a_parquet_dataset_as_from_a_table(tmp_path):
    # P1's extract spread over two files is still counted once per patient
    rows = gp_patients_period().to_pylist()
    # P1's extract in two files (4 and 1 rows), P3's in one
    table, dataset = _gp_dataset(tmp_path, rows, per_file=4)
    expected = linkage.coverage("2014-03", linked_table(), practices(), providers(), extracts(),
                                gp_patients_period(), Settings())
    for gp_input in (table, dataset):
        got = linkage.coverage("2014-03", linked_table(), practices(), providers(), extracts(), gp_input,
                               Settings())
        for name, want in expected.items():
            assert got[name].equals(want), name
    regs = {r["practice_code"]: r["registered_patients"] for r in expected["linkage_coverage_practice"].to_pylist()}
    assert regs == {"P1": 3, "P2": None, "P3": 2}


def test_duckdb_runs_under_a_memory_limit_and_spills_to_its_own_temp_folder(monkeypatch):
    from pipelines.engine import DuckDBEngine, duckdb_engine

    monkeypatch.setenv(duckdb_engine.MEMORY_LIMIT_ENV, "1GB")
    engine = DuckDBEngine()
    try:
        got = engine.query("SELECT current_setting('memory_limit') AS m, current_setting('temp_directory') AS t, "
                           "current_setting('threads') AS n").to_pylist()[0]
    finally:
        engine.close()
    assert got["m"] == "953.6 MiB"  # 1 GB as DuckDB prints it
    assert got["t"].startswith(tempfile.gettempdir()) and not os.path.exists(got["t"])
    assert int(got["n"]) == (os.cpu_count() or 1)
    # linkage's memory_limit argument wins over the environment, for that call
    run, own = linkage._engine(None, "256MB")
    try:
        assert own and run.query("SELECT current_setting('memory_limit') AS m").column("m")[0].as_py() == "244.1 MiB"
    finally:
        run.close()
    monkeypatch.delenv(duckdb_engine.MEMORY_LIMIT_ENV)
    assert duckdb_engine.DEFAULT_MEMORY_LIMIT == "4GB"

def test_coverage_gpprac_placeholders_belong_to_no_practice():
    """GPPRAC V81997, V81998, V81999 and '&' mean no practice / not known (inputs.md): such
    episodes are in no practice's expected episodes, even where the reference file lists
    the pseudo code as an active practice; they still count for their provider."""
    extra = [dict(practice_code=c, status="A", prescribing_setting="4", commissioner_code="C1")
             for c in ("V81997", "V81998", "V81999", "&")]
    prac = pa.concat_tables([practices(), _table("ref_practices", extra)])
    base = linked_table()
    rows = [dict(provider_code="R1", epiend=D(2014, 3, 10), nhs_number_valid=True, nhsnoind="01", gpprac=g,
                 match_rank=1, registered_practice="P1") for g in ("V81997", "V81998", " v81999 ", "&")]
    linked = pa.concat_tables([base, pa.Table.from_pylist(rows, schema=base.schema)])
    out = linkage.coverage("2014-03", linked, prac, providers(), extracts(), gp_patients_period(), Settings())
    practice = {r["practice_code"]: r for r in out["linkage_coverage_practice"].to_pylist()}
    assert sorted(practice) == ["P1", "P2", "P3"]          # the pseudo codes are not practices
    plain = linkage.coverage("2014-03", base, practices(), providers(), extracts(), gp_patients_period(), Settings())
    before = {r["practice_code"]: r for r in plain["linkage_coverage_practice"].to_pylist()}
    for code in practice:
        assert (practice[code]["episodes_expected"], practice[code]["episodes_linked"]) == \
            (before[code]["episodes_expected"], before[code]["episodes_linked"]), code
    assert out["linkage_coverage_summary"].to_pylist() == plain["linkage_coverage_summary"].to_pylist()
    prov = {r["provider_code"]: r for r in out["linkage_coverage_provider"].to_pylist()}
    prov0 = {r["provider_code"]: r for r in plain["linkage_coverage_provider"].to_pylist()}
    assert prov["R1"]["episodes"] == prov0["R1"]["episodes"] + 4


def test_linked_episodes_age_falls_back_to_the_linked_gp_date_of_birth():
    linked = linkage.link_episodes(
        eps(ep_row(N[0], susrecid="B1", dob=None, birth_year=None, birth_month=None, admidate=D(2014, 3, 14)),
            ep_row(N[0], susrecid="B2", dob=None, birth_year=1960, birth_month=1, admidate=D(2014, 3, 14)),
            ep_row(N[6], susrecid="B3", dob=None, birth_year=None, birth_month=None)),   # unlinked
        gp(PATIENT),  # born 1950-03-15
    )
    out = linkage.linked_episodes_restricted(linked, KEY)
    assert "linked_date_of_birth" not in out.column_names  # never published
    rows = by_susrecid(out, KEY, ["B1", "B2", "B3"])
    assert rows["B1"]["match_rank"] == 4 and rows["B1"]["age_at_admission"] == 63  # the GP record's
    assert rows["B2"]["age_at_admission"] == 54        # MYDOB comes before the GP record
    assert rows["B3"]["age_at_admission"] is None


# --------------------------------------------------------------------------- linkage_quality
def quality_linked() -> pa.Table:
    """Hand-made link_episodes output for 2014-05 (linkage_quality).

    RX1, 13 episodes ending in May (and one in June, ignored):
      a) 8 x age 70 (DOB 1944-03-10, admitted 2014-05-02), sex 1, ADMIMETH 21, valid number, rank 1
      b) 2 x age 29 (DOB 1984-06-01: birthday not yet reached), sex 2, ADMIMETH 11, invalid number, unlinked
      c) 1 x age 4 (no DOB; born 2010-01), sex ' 9 ', ADMIMETH 81, no number, rank 5
      d) 1 x age 84 (only the linked GP record's DOB, 1930-05-02: birthday on the day), sex X, no ADMIMETH,
         valid, rank 2
      e) 1 x age unknown (no admission date), sex 1, ADMIMETH 2a, valid, unlinked
    RX2 (' r2 ' normalised), 21 episodes: 20 x age 94, sex 2, ADMIMETH 12, valid, rank 1, and one the same
    unlinked. One episode without a provider: in no row.
    """
    rows = []

    def add(n, provider="RX1", epiend=D(2014, 5, 20), admidate=D(2014, 5, 2), dob=None, birth_year=None,
            birth_month=None, linked_dob=None, sex="1", admimeth="21", number=N[0], valid=True, rank=1):
        for _ in range(n):
            rows.append(dict(provider_code=provider, epiend=epiend, admidate=admidate, dob=dob,
                             birth_year=birth_year, birth_month=birth_month, linked_date_of_birth=linked_dob,
                             sex=sex, admimeth=admimeth, nhs_number=number, nhs_number_valid=valid,
                             match_rank=rank))

    add(8, dob=D(1944, 3, 10))                                                            # a
    add(2, dob=D(1984, 6, 1), sex="2", admimeth="11", number="1234567890", valid=False, rank=None)  # b
    add(1, birth_year=2010, birth_month=1, sex=" 9 ", admimeth="81", number=None, valid=False, rank=5)  # c
    add(1, linked_dob=D(1930, 5, 2), sex="X", admimeth=None, rank=2)                      # d
    add(1, admidate=None, dob=D(1950, 1, 1), admimeth="2a", rank=None)                    # e
    add(1, epiend=D(2014, 6, 1), dob=D(1944, 3, 10))                                      # June: ignored
    add(20, provider="RX2", dob=D(1920, 1, 1), sex="2", admimeth="12")
    add(1, provider=" rx2 ", dob=D(1920, 1, 1), sex="2", admimeth="12", rank=None)
    add(1, provider=None, dob=D(1920, 1, 1))                                              # no provider
    return pa.Table.from_pylist(rows, schema=pa.schema([
        ("provider_code", pa.string()), ("epiend", pa.date32()), ("admidate", pa.date32()), ("dob", pa.date32()),
        ("birth_year", pa.int64()), ("birth_month", pa.int64()), ("linked_date_of_birth", pa.date32()),
        ("sex", pa.string()), ("admimeth", pa.string()), ("nhs_number", pa.string()),
        ("nhs_number_valid", pa.bool_()), ("match_rank", pa.int64())]))


# (provider, characteristic, category) -> (episodes, episodes_linked), worked out from the rows above.
QUALITY_EXPECTED = {
    ("RX1", "age_band", "0-17"): (1, 1),          # c
    ("RX1", "age_band", "18-44"): (2, 0),         # b
    ("RX1", "age_band", "65-74"): (8, 8),         # a
    ("RX1", "age_band", "75-84"): (1, 1),         # d
    ("RX1", "age_band", "unknown"): (1, 0),       # e
    ("RX1", "sex", "1"): (9, 8),                  # a + e
    ("RX1", "sex", "2"): (2, 0),                  # b
    ("RX1", "sex", "9"): (1, 1),                  # c, trimmed
    ("RX1", "sex", "unknown"): (1, 1),            # d: X is not a SEX code
    ("RX1", "admission_method", "emergency"): (9, 8),  # a (21) + e (2a read as 2A)
    ("RX1", "admission_method", "elective"): (2, 0),   # b
    ("RX1", "admission_method", "other"): (1, 1),      # c (81)
    ("RX1", "admission_method", "unknown"): (1, 1),    # d (empty)
    ("RX1", "match_rank", "1"): (8, 8),
    ("RX1", "match_rank", "2"): (1, 1),
    ("RX1", "match_rank", "5"): (1, 1),
    ("RX1", "match_rank", "unlinked"): (3, 0),    # b + e
    ("RX1", "nhs_number_status", "valid"): (10, 9),   # a + d + e; e unlinked
    ("RX1", "nhs_number_status", "invalid"): (2, 0),  # b
    ("RX1", "nhs_number_status", "missing"): (1, 1),  # c
    ("RX2", "age_band", "85+"): (21, 20),
    ("RX2", "sex", "2"): (21, 20),
    ("RX2", "admission_method", "elective"): (21, 20),
    ("RX2", "match_rank", "1"): (20, 20),
    ("RX2", "match_rank", "unlinked"): (1, 0),
    ("RX2", "nhs_number_status", "valid"): (21, 20),
}


def test_linkage_quality_counts_each_episode_once_per_characteristic():
    out = linkage.linkage_quality("2014-05", quality_linked())
    assert out.schema.equals(schemas.get("linkage_quality").arrow_schema(include_partition=True, staged=True))
    got = {(r["provider_code"], r["characteristic"], r["category"]): (r["episodes"], r["episodes_linked"])
           for r in out.to_pylist()}
    assert got == QUALITY_EXPECTED
    assert set(out.column("period").to_pylist()) == {"2014-05"}
    rows = {(r["provider_code"], r["characteristic"], r["category"]): r for r in out.to_pylist()}
    assert rows[("RX1", "sex", "1")]["pct_linked"] == pytest.approx(100 * 8 / 9)
    assert rows[("RX2", "age_band", "85+")]["pct_linked"] == pytest.approx(100 * 20 / 21)
    assert rows[("RX1", "match_rank", "unlinked")]["pct_linked"] == 0.0
    # every characteristic splits the same episodes: RX1 13, RX2 21
    for prov, total in (("RX1", 13), ("RX2", 21)):
        for ch in ("age_band", "sex", "admission_method", "match_rank", "nhs_number_status"):
            assert sum(e for (p, c, _), (e, _) in got.items() if p == prov and c == ch) == total


def test_linkage_quality_published_under_the_1_to_7_rule():
    from pipelines import disclosure

    ds = schemas.get("linkage_quality")
    out = disclosure.apply_small_numbers(ds, linkage.linkage_quality("2014-05", quality_linked()))
    rows = {(r["provider_code"], r["characteristic"], r["category"]): r for r in out.to_pylist()}
    sex2 = rows[("RX1", "sex", "2")]          # 2 episodes, none linked
    assert (sex2["episodes"], sex2["episodes_suppressed"]) == (None, True)
    assert (sex2["episodes_linked"], sex2["episodes_linked_suppressed"]) == (0, False)  # 0 stays 0
    assert sex2["pct_linked"] is None        # from fewer than 8 episodes
    sex1 = rows[("RX1", "sex", "1")]          # 9 episodes, 8 linked: both shown
    assert (sex1["episodes"], sex1["episodes_linked"], sex1["episodes_suppressed"]) == (9, 8, False)
    assert sex1["pct_linked"] == pytest.approx(100 * 8 / 9)
    valid = rows[("RX1", "nhs_number_status", "valid")]   # 10 episodes, 9 linked
    assert (valid["episodes"], valid["episodes_linked"]) == (10, 9)
    rank1 = rows[("RX1", "match_rank", "1")]  # 8 is not small
    assert (rank1["episodes"], rank1["episodes_linked"], rank1["pct_linked"]) == (8, 8, 100.0)
    r2 = rows[("RX2", "match_rank", "1")]
    assert (r2["episodes"], r2["episodes_linked"], r2["pct_linked"]) == (20, 20, 100.0)
    r2u = rows[("RX2", "match_rank", "unlinked")]   # a 1-episode cell
    assert (r2u["episodes"], r2u["episodes_suppressed"], r2u["pct_linked"]) == (None, True, None)
    age = rows[("RX1", "age_band", "75-84")]  # 1 episode, 1 linked: both blanked
    assert (age["episodes_suppressed"], age["episodes_linked_suppressed"]) == (True, True)
    assert disclosure.check_public(ds, out) == []
    # unsuppressed, the check refuses it
    raw = linkage.linkage_quality("2014-05", quality_linked())
    assert {v.rule for v in disclosure.check_public(ds, raw)} >= {"not_suppressed"}


def test_linkage_quality_without_optional_columns_is_unknown_not_an_error():
    t = quality_linked().select(["provider_code", "epiend", "match_rank"])
    out = linkage.linkage_quality("2014-05", t)
    cats = {(r["provider_code"], r["characteristic"]): r["category"] for r in out.to_pylist()
            if r["characteristic"] != "match_rank"}
    assert set(cats.values()) == {"unknown", "missing"}


@pytest.mark.spark
def test_linkage_quality_same_on_spark():
    pytest.importorskip("pyspark")
    from pipelines.engine import make_engine

    spark = make_engine("spark", master="local[2]")
    try:
        got = linkage.linkage_quality("2014-05", quality_linked(), engine=spark)
    finally:
        spark.close()
    want = linkage.linkage_quality("2014-05", quality_linked())
    assert got.equals(want)


def test_linkage_quality_secondary_suppression_closes_subtraction():
    from pipelines import disclosure

    ds = schemas.get("linkage_quality")
    out = linkage.suppress_complements(
        disclosure.apply_small_numbers(ds, linkage.linkage_quality("2014-05", quality_linked())))
    rows = {(r["provider_code"], r["characteristic"], r["category"]): r for r in out.to_pylist()}
    # RX2 match_rank: 'unlinked' (1) blanked by the rule; '1' (20) the only other cell: blanked too,
    # else 21 - 20 gives it back
    assert rows[("RX2", "match_rank", "1")]["episodes"] is None
    assert rows[("RX2", "match_rank", "1")]["episodes_suppressed"]
    assert rows[("RX2", "match_rank", "1")]["pct_linked"] is None
    # RX1 sex: '2' (2), '9' (1), 'unknown' (1) blanked: already more than one, nothing added
    assert rows[("RX1", "sex", "1")]["episodes"] == 9
    # RX1 nhs_number_status episodes: invalid (2) and missing (1) blanked; valid (10) shown.
    # episodes_linked: invalid 0, missing 1 (blanked), valid 9: the one blanked cell takes
    # the smallest non-zero shown one with it (valid's 9; 0 is never a complement)
    v = rows[("RX1", "nhs_number_status", "valid")]
    assert (v["episodes"], v["episodes_linked"], v["episodes_linked_suppressed"]) == (10, None, True)
    assert v["pct_linked"] is None                        # would give 9 back from 10
    assert rows[("RX1", "nhs_number_status", "invalid")]["episodes_linked"] == 0
    # RX1 age_band episodes: 0-17 (1), 18-44 (2), 75-84 (1), unknown (1) blanked; 65-74 (8) shown
    assert rows[("RX1", "age_band", "65-74")]["episodes"] == 8
    # no characteristic is left with exactly one blanked cell of a count it adds up to
    for col in ("episodes", "episodes_linked"):
        groups = {}
        for (p, ch, _), r in rows.items():
            groups.setdefault((p, ch), []).append(r[f"{col}_suppressed"])
        assert all(sum(flags) != 1 for flags in groups.values()), col
    assert disclosure.check_public(ds, out) == []
    assert out.schema.equals(disclosure.apply_small_numbers(
        ds, linkage.linkage_quality("2014-05", quality_linked())).schema)
    assert linkage.suppress_complements(out).equals(out)    # idempotent
