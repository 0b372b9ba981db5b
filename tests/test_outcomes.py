"""Consultant-level outcomes: cohorts, spells, 30-day outcomes, risk models, windows."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipelines import funnel, outcomes, pseudo, schemas
from pipelines.config import Settings
from pipelines.nhs_number import with_check_digit

D = dt.date
NHS_A = with_check_digit("999000001")
NHS_B = with_check_digit("401023213")
assert NHS_A and NHS_B

_SCHEMA = pa.schema([
    ("provider_code", pa.string()), ("susrecid", pa.string()), ("spell_id", pa.string()),
    ("epiorder", pa.string()), ("epistart", pa.date32()), ("epiend", pa.date32()),
    ("admidate", pa.date32()), ("disdate", pa.date32()), ("admimeth", pa.string()),
    ("dismeth", pa.string()), ("sex", pa.string()), ("dob", pa.date32()),
    ("birth_year", pa.int64()), ("birth_month", pa.int64()), ("consultant_code", pa.string()),
    ("tretspef", pa.string()), ("diagnoses", pa.list_(pa.string())),
    ("procedures", pa.list_(pa.string())), ("procedure_dates", pa.list_(pa.date32())),
    ("nhs_number", pa.string()), ("nhs_number_valid", pa.bool_()), ("period", pa.string()),
    ("match_rank", pa.int64()), ("linked_nhs_number", pa.string()), ("date_of_death", pa.date32()),
    ("type2_objection", pa.bool_()), ("pseudo_hesid", pa.string()),
])


def episode(**kw) -> dict:
    row = dict(
        provider_code="RAA", susrecid=None, spell_id="S1", epiorder="01",
        epistart=D(2024, 3, 1), epiend=D(2024, 3, 5), admidate=D(2024, 3, 1),
        disdate=D(2024, 3, 5), admimeth="11", dismeth="1", sex="1", dob=D(1950, 6, 15),
        birth_year=None, birth_month=None, consultant_code="C1111111", tretspef="110",
        diagnoses=[], procedures=["W371"], procedure_dates=None, nhs_number=NHS_A,
        nhs_number_valid=True, period="2024-03", match_rank=2, linked_nhs_number=NHS_A,
        date_of_death=None, type2_objection=False, pseudo_hesid=None,
    )
    row.update(kw)
    if row["procedure_dates"] is None:
        row["procedure_dates"] = [None] * len(row["procedures"])
    if row["dob"] is not None:
        row["birth_year"] = row["birth_year"] or row["dob"].year
        row["birth_month"] = row["birth_month"] or row["dob"].month
    return row


def episodes(*rows: dict) -> pa.Table:
    rows = [dict(r, susrecid=r["susrecid"] or f"E{i}") for i, r in enumerate(rows)]
    return pa.Table.from_pylist(rows, schema=_SCHEMA)


def spells_of(*rows: dict, **kw) -> pd.DataFrame:
    table = outcomes.build_spells(episodes(*rows), **kw)
    return table.to_pandas().set_index("spell_id", drop=False)


# --------------------------------------------------------------------------- cohorts
def test_packaged_cohorts_cover_ten_specialties():
    c = outcomes.load_cohorts()
    assert c["specialty"].nunique() == 10
    assert set(c.loc[c["opcs4_prefix"] == "G28", "specialty"]) == {"upper_gi_surgery", "bariatric_surgery"}


def test_cohorts_file_from_settings(tmp_path):
    path = tmp_path / "cohorts.csv"
    path.write_text("specialty,opcs4_prefix,requires_diagnosis_prefix,excludes_diagnosis_prefix\n"
                    "hips,W371,,\n")
    settings = Settings(thresholds={"outcomes": {"cohorts_file": str(path)}})
    c = outcomes.load_cohorts(settings=settings)
    assert list(c["specialty"]) == ["hips"]
    s = spells_of(episode(spell_id="A", procedures=["W371"]), episode(spell_id="B", procedures=["W381"]),
                  cohorts=c)
    assert s.loc["A", "specialty"] == "hips"
    assert pd.isna(s.loc["B", "specialty"])


def test_index_procedure_by_prefix():
    s = spells_of(
        episode(spell_id="ortho", procedures=["W37.1"]),
        episode(spell_id="cabg", procedures=["X999", "K401"]),
        episode(spell_id="none", procedures=["W361", "Z942"]),
        episode(spell_id="noproc", procedures=[]),
    )
    assert s.loc["ortho", "specialty"] == "orthopaedic_surgery"
    assert s.loc["ortho", "index_procedure"] == "W371"
    assert s.loc["ortho", "opcs_group"] == "W37"
    assert s.loc["cabg", "specialty"] == "adult_cardiac_surgery"
    assert s.loc["cabg", "index_procedure"] == "K401"
    assert pd.isna(s.loc["none", "specialty"]) and pd.isna(s.loc["none", "death_30d"])
    assert pd.isna(s.loc["noproc", "index_procedure"])


def test_age_18_boundary_at_admission():
    s = spells_of(
        episode(spell_id="18today", dob=D(2006, 3, 1)),      # 18th birthday on admission
        episode(spell_id="18tomorrow", dob=D(2006, 3, 2)),   # still 17 on admission
        episode(spell_id="ym_after", dob=None, birth_year=2006, birth_month=2),   # Feb 2006: 18
        episode(spell_id="ym_same", dob=None, birth_year=2006, birth_month=3),    # March: unsure, 17
        episode(spell_id="unknown", dob=None, birth_year=None, birth_month=None),
    )
    assert s.loc["18today", "age"] == 18 and s.loc["18today", "specialty"] == "orthopaedic_surgery"
    assert s.loc["18tomorrow", "age"] == 17 and pd.isna(s.loc["18tomorrow", "specialty"])
    assert s.loc["ym_after", "specialty"] == "orthopaedic_surgery"
    assert pd.isna(s.loc["ym_same", "specialty"])
    assert pd.isna(s.loc["unknown", "specialty"])


def test_obesity_diagnosis_splits_bariatric_from_upper_gi():
    s = spells_of(
        episode(spell_id="bar", procedures=["G281"], diagnoses=["E66.0"]),
        episode(spell_id="ugi", procedures=["G281"], diagnoses=["K210"]),
        # the E66 may be on another episode of the same spell
        episode(spell_id="bar2", epiorder="01", procedures=["G301"], diagnoses=["I10X"]),
        episode(spell_id="bar2", epiorder="02", procedures=[], diagnoses=["E669"]),
        episode(spell_id="g30_no_e66", procedures=["G301"], diagnoses=["K219"]),
        episode(spell_id="g01_e66", procedures=["G011"], diagnoses=["E66"]),
    )
    assert s.loc["bar", "specialty"] == "bariatric_surgery"
    assert s.loc["ugi", "specialty"] == "upper_gi_surgery"
    assert s.loc["bar2", "specialty"] == "bariatric_surgery"
    assert pd.isna(s.loc["g30_no_e66", "specialty"])
    assert pd.isna(s.loc["g01_e66", "specialty"])  # upper GI excludes obese spells


def test_first_procedure_by_opdate_then_episode_and_position():
    s = spells_of(
        # OPDATE decides: the colorectal one came later although listed first
        episode(spell_id="opdate", procedures=["H041", "W371"],
                procedure_dates=[D(2024, 3, 4), D(2024, 3, 2)]),
        episode(spell_id="opdate_across", epiorder="01", consultant_code="C0000003", procedures=["H041"],
                procedure_dates=[D(2024, 3, 5)]),
        episode(spell_id="opdate_across", epiorder="02", consultant_code="C0000004", epistart=D(2024, 3, 3),
                procedures=["M611"], procedure_dates=[D(2024, 3, 4)]),
        # no OPDATE: the episode's EPISTART, then position
        episode(spell_id="position", procedures=["H041", "W371"]),
        # procedure in the second episode belongs to that episode's consultant
        episode(spell_id="ep2", epiorder="01", consultant_code="C0000001", procedures=["Z942"]),
        episode(spell_id="ep2", epiorder="02", consultant_code="C0000002", epistart=D(2024, 3, 3),
                procedures=["M611"]),
    )
    assert s.loc["opdate", "index_procedure"] == "W371"
    assert s.loc["opdate_across", "index_procedure"] == "M611"   # OPDATE wins over episode order
    assert s.loc["opdate_across", "consultant_code"] == "C0000004"
    assert s.loc["opdate", "index_procedure_date"] == D(2024, 3, 2)
    assert s.loc["position", "index_procedure"] == "H041"
    assert s.loc["position", "index_procedure_date"] == D(2024, 3, 1)   # EPISTART
    assert s.loc["ep2", "specialty"] == "urological_surgery"
    assert s.loc["ep2", "consultant_code"] == "C0000002"
    assert s.loc["ep2", "index_procedure_date"] == D(2024, 3, 3)


def test_spell_fields_from_first_and_last_episode():
    s = spells_of(
        episode(spell_id="x", epiorder="02", epistart=D(2024, 3, 4), admimeth="99", dismeth="1",
                disdate=D(2024, 3, 9), diagnoses=["E112"]),
        episode(spell_id="x", epiorder="01", epistart=D(2024, 3, 1), admimeth="21", dismeth="8",
                disdate=D(2024, 3, 9), diagnoses=["I21.0"]),
    )
    row = s.loc["x"]
    assert row["admimeth"] == "21" and row["emergency"]
    assert row["dismeth"] == "1"
    assert row["los_days"] == 8
    assert row["charlson_index"] == 3  # MI 1 + diabetes with complications 2


# --------------------------------------------------------------------------- 30-day death
def test_death_within_30_days_in_hospital_and_after_discharge():
    proc = D(2024, 3, 2)
    s = spells_of(
        episode(spell_id="died30", procedure_dates=[proc], dismeth="4", disdate=proc + dt.timedelta(30),
                nhs_number=None, nhs_number_valid=False, linked_nhs_number=None),
        episode(spell_id="died31", procedure_dates=[proc], dismeth="4", disdate=proc + dt.timedelta(31),
                nhs_number=None, nhs_number_valid=False, linked_nhs_number=None),
        episode(spell_id="gp30", procedure_dates=[proc], nhs_number=NHS_A,
                date_of_death=proc + dt.timedelta(30)),
        episode(spell_id="gp31", procedure_dates=[proc], nhs_number=NHS_B, linked_nhs_number=NHS_B,
                date_of_death=proc + dt.timedelta(31)),
        episode(spell_id="alive", procedure_dates=[proc], nhs_number=None, nhs_number_valid=False,
                linked_nhs_number=None),
    )
    assert s.loc["died30", "death_30d"] == True  # noqa: E712
    assert s.loc["died31", "death_30d"] == False  # noqa: E712
    assert s.loc["gp30", "death_30d"] == True  # noqa: E712
    assert s.loc["gp31", "death_30d"] == False  # noqa: E712
    assert s.loc["alive", "death_30d"] == False  # noqa: E712
    assert not s.loc["died30", "discharged_alive"]


def test_gp_death_date_follows_the_person_to_other_spells():
    # the death date is only on a later episode of the same person at another provider
    s = spells_of(
        episode(spell_id="op", procedure_dates=[D(2024, 3, 2)]),
        episode(spell_id="later", provider_code="RBB", admidate=D(2024, 3, 20), epistart=D(2024, 3, 20),
                disdate=D(2024, 3, 22), procedures=[], date_of_death=D(2024, 3, 25)),
    )
    assert s.loc["op", "death_30d"] == True  # noqa: E712


def test_death_from_an_older_gp_extract_for_an_unlinked_person():
    # the patient died months after the procedure, more than a year before the newest
    # extract: no longer in it, so not linked; an older extract holds the death
    proc = D(2024, 3, 2)
    unlinked = dict(procedure_dates=[proc], match_rank=None, linked_nhs_number=None)
    older = pa.table({"nhs_number": [NHS_A, NHS_B], "date_of_death": [proc + dt.timedelta(20), D(2024, 3, 20)],
                      "type2_objection": [False, True]})
    rows = (episode(spell_id="a", **unlinked),
            episode(spell_id="b", nhs_number=NHS_B, linked_nhs_number=NHS_B, procedure_dates=[proc],
                    date_of_death=D(2024, 6, 1)),
            episode(spell_id="c", nhs_number=None, nhs_number_valid=False, **unlinked))
    without = spells_of(*rows)
    s = spells_of(*rows, gp_deaths=older)
    assert without.loc["a", "death_30d"] == False and s.loc["a", "death_30d"] == True  # noqa: E712
    # the linked record's own date of death stands; so does its (absent) type 2 objection
    assert s.loc["b", "death_30d"] == False and not s.loc["b", "type2_objection"]  # noqa: E712
    # no NHS number, no link: no person to look up
    assert s.loc["c", "death_30d"] == False  # noqa: E712
    # a type 2 objection on the older record comes with its death
    older = older.set_column(2, "type2_objection", pa.array([True, False]))
    assert spells_of(*rows, gp_deaths=older).loc["a", "type2_objection"]


# --------------------------------------------------------------------------- readmission
def _readmission(days: int, admimeth: str = "21", provider: str = "RBB", **kw) -> object:
    disdate = D(2024, 3, 5)
    s = spells_of(
        episode(spell_id="index", disdate=disdate, **kw),
        episode(spell_id="back", provider_code=provider, admimeth=admimeth,
                admidate=disdate + dt.timedelta(days), epistart=disdate + dt.timedelta(days),
                disdate=disdate + dt.timedelta(days + 2), procedures=[]),
    )
    return s.loc["index", "emergency_readmission_30d"]


def test_readmission_window_and_method():
    assert _readmission(1) == True  # noqa: E712  another provider counts
    assert _readmission(30) == True  # noqa: E712
    assert _readmission(0) == False  # noqa: E712  same-day: a transfer
    assert _readmission(31) == False  # noqa: E712
    assert _readmission(5, admimeth="11") == False  # noqa: E712  elective
    assert _readmission(5, admimeth="2B") == True  # noqa: E712
    assert _readmission(5, provider="RAA") == True  # noqa: E712  same provider counts too


def test_readmission_person_through_linked_patient():
    # index episode has no valid NHS number: its linked patient is the person
    assert _readmission(3, nhs_number=None, nhs_number_valid=False, linked_nhs_number=NHS_A) == True  # noqa: E712
    # no number and no link: cannot be followed
    assert pd.isna(_readmission(3, nhs_number=None, nhs_number_valid=False, linked_nhs_number=None))


def test_hes_extract_person_by_pseudo_hesid():
    # HES: no NHS number, PSEUDO_HESID is the person key
    back = _readmission(3, nhs_number=None, nhs_number_valid=False, linked_nhs_number=None, pseudo_hesid="H1")
    assert back == False  # noqa: E712 -- "back" has another (no) person
    s = spells_of(
        episode(spell_id="index", nhs_number=None, nhs_number_valid=False, linked_nhs_number=None,
                pseudo_hesid="H1"),
        episode(spell_id="back", provider_code="RBB", admimeth="21", admidate=D(2024, 3, 9),
                epistart=D(2024, 3, 9), disdate=D(2024, 3, 10), procedures=[], nhs_number=None,
                nhs_number_valid=False, linked_nhs_number=None, pseudo_hesid="H1"),
    )
    assert s.loc["index", "emergency_readmission_30d"] == True  # noqa: E712
    out = outcomes.linked_spells_restricted(outcomes.build_spells(episodes(
        episode(spell_id="h", nhs_number=None, nhs_number_valid=False, linked_nhs_number=None,
                pseudo_hesid="H1"))), "k").to_pandas()
    assert out.loc[0, "person_id"] == pseudo.person_id("k", None, "H1")


def test_implausible_age_and_stay_are_unknown():
    s = spells_of(
        episode(spell_id="born_later", dob=None, birth_year=2030, birth_month=1),
        episode(spell_id="old", dob=None, birth_year=1800, birth_month=1),
        episode(spell_id="backwards", admidate=D(2024, 3, 5), disdate=D(2024, 3, 1)),
    )
    assert pd.isna(s.loc["born_later", "age"]) and pd.isna(s.loc["born_later", "specialty"])
    assert pd.isna(s.loc["old", "age"])
    assert pd.isna(s.loc["backwards", "los_days"])


def test_no_readmission_when_died():
    s = spells_of(episode(spell_id="index", dismeth="4"),
                  episode(spell_id="back", admidate=D(2024, 3, 8), epistart=D(2024, 3, 8), admimeth="21",
                          procedures=[]))
    assert pd.isna(s.loc["index", "emergency_readmission_30d"])


# --------------------------------------------------------------------------- restricted
def test_linked_spells_restricted_drops_type2_and_pseudonymises():
    t = outcomes.build_spells(episodes(
        episode(spell_id="keep", nhs_number=NHS_A, linked_nhs_number=NHS_A),
        episode(spell_id="t2", nhs_number=NHS_B, linked_nhs_number=NHS_B, type2_objection=True),
        # another spell of the type 2 person, the flag not on its episodes: dropped too
        episode(spell_id="t2b", nhs_number=NHS_B, linked_nhs_number=NHS_B, admidate=D(2024, 5, 1),
                epistart=D(2024, 5, 1), disdate=D(2024, 5, 2)),
    ))
    # as read back from the warehouse's work area: a partition period column beside it
    t = t.append_column("period", pa.array(["2024-06"] * t.num_rows))
    out = outcomes.linked_spells_restricted(t, "k")
    assert out.column("period").to_pylist() == ["2024-03"]   # the spell's own month
    assert out.schema.names == schemas.get("linked_spells").arrow_schema(include_partition=True).names
    rows = out.to_pandas()
    # the spell id as a keyed pseudonym (the same as linked_episodes.spell_id)
    assert list(rows["spell_id"]) == [pseudo.record_key_id("k", "SPELL", rows.loc[0, "provider_code"], "keep")]
    assert rows.loc[0, "person_id"] == pseudo.person_id("k", NHS_A)
    assert NHS_A not in str(out.to_pylist())
    with pytest.raises(pseudo.MissingKeyError):
        outcomes.linked_spells_restricted(t, None)


# --------------------------------------------------------------------------- windows
def _spells_table(n_rows: int, **cols) -> pa.Table:
    base = {
        "provider_code": ["RAA"] * n_rows,
        "spell_id": [f"S{i}" for i in range(n_rows)],
        "person_key": [None] * n_rows, "pseudo_hesid": [None] * n_rows,
        "spell_period": ["2024-03"] * n_rows,
        "admidate": [D(2024, 3, 1)] * n_rows, "disdate": [D(2024, 3, 5)] * n_rows,
        "admimeth": ["11"] * n_rows, "dismeth": ["1"] * n_rows, "los_days": [4] * n_rows,
        "age": [65] * n_rows, "sex": ["1"] * n_rows, "emergency": [False] * n_rows,
        "specialty": ["orthopaedic_surgery"] * n_rows, "index_procedure": ["W371"] * n_rows,
        "index_procedure_date": [D(2024, 3, 2)] * n_rows, "consultant_code": ["C1111111"] * n_rows,
        "opcs_group": ["W37"] * n_rows, "charlson_index": [0] * n_rows,
        "death_30d": [False] * n_rows, "discharged_alive": [True] * n_rows,
        "emergency_readmission_30d": [False] * n_rows, "type2_objection": [False] * n_rows,
    }
    for k, v in cols.items():
        base[k] = list(v)
    if "opcs_group" not in cols:
        base["opcs_group"] = [p[:3] for p in base["index_procedure"]]
    return pa.table(base)


def _settings(**outcomes_over) -> Settings:
    s = Settings()
    th = dict(s.thresholds)
    th["outcomes"] = {**th["outcomes"], **outcomes_over}
    return Settings(thresholds=th)


def test_window_bounds_and_degenerate_specialty():
    dates = [D(2021, 3, 31), D(2021, 4, 1), D(2024, 3, 31), D(2024, 4, 1)] + [D(2023, 1, 1)] * 8
    t = _spells_table(12, index_procedure_date=dates)
    out = outcomes.window_outcomes(t, "2024-03", _settings())
    spec = out["specialty_outcomes"].to_pandas()
    assert spec.loc[0, "window_start"] == "2021-04" and spec.loc[0, "window_end"] == "2024-03"
    assert spec.loc[0, "period"] == "2024-03"
    assert spec.loc[0, "procedures"] == 10       # 2021-03-31 and 2024-04-01 are outside
    assert pd.isna(spec.loc[0, "c_statistic"])   # no deaths: no model
    cons = out["consultant_outcomes"].to_pandas()
    assert cons.loc[0, "expected_deaths"] == 0 and pd.isna(cons.loc[0, "smr"])
    assert cons.loc[0, "outlier_status"] == "as_expected"
    for name, table in out.items():
        assert table.schema == schemas.get(name).arrow_schema(include_partition=True, staged=True), name


def test_small_consultant_and_readmission_pct():
    n = 30
    cons_codes = ["C1"] * 20 + ["C2"] * 9 + [None]
    deaths = [True] * 4 + [False] * 26
    readm = [None] * 4 + [True] * 2 + [False] * 24  # the four dead: not discharged alive
    los = list(range(n))
    t = _spells_table(n, consultant_code=cons_codes, death_30d=deaths, emergency_readmission_30d=readm,
                      los_days=los, age=[50 + i for i in range(n)])
    out = outcomes.window_outcomes(t, "2024-03", _settings(min_procedures=15))
    cons = out["consultant_outcomes"].to_pandas().set_index("consultant_code")
    assert cons.loc["C1", "procedures"] == 20 and cons.loc["C1", "deaths_30d"] == 4
    assert cons.loc["C1", "crude_mortality_pct"] == pytest.approx(20.0)
    assert cons.loc["C1", "readmission_pct"] == pytest.approx(100 * 2 / 16)
    assert cons.loc["C1", "median_los_days"] == pytest.approx(9.5)
    assert cons.loc["C2", "outlier_status"] == "insufficient_data"
    assert cons.loc["&", "procedures"] == 1          # consultant not known: HES "&"
    assert "deaths_30d_suppressed" not in cons.columns   # staged: the publisher suppresses
    spec = out["specialty_outcomes"].to_pandas()
    # an unpenalised logistic model with an intercept reproduces the total deaths
    assert cons["expected_deaths"].sum() == pytest.approx(4, rel=1e-4)
    assert spec.loc[0, "crude_mortality_pct"] == pytest.approx(100 * 4 / 30)
    assert spec.loc[0, "consultants"] == 2           # "&" is not a consultant
    ram = cons.loc["C1", "smr"] * 100 * 4 / 30
    assert cons.loc["C1", "risk_adjusted_mortality_pct"] == pytest.approx(ram)


def _simulate(seed: int = 20241, consultant_sd: float = 0.0):
    """``consultant_sd``: a random effect per consultant on the log-odds (overdispersion)."""
    rng = np.random.default_rng(seed)
    n_cons, per = 60, 80
    n = n_cons * per
    consultant = np.repeat([f"C{1000000 + i}" for i in range(n_cons)], per)
    provider = np.repeat([f"R{i % 12:02d}" for i in range(n_cons)], per)
    age = rng.integers(40, 91, n)
    emergency = rng.random(n) < 0.25
    charl = np.minimum(rng.poisson(0.8, n), 8)
    sex = np.where(rng.random(n) < 0.5, "1", "2")
    group = rng.choice(["W37", "W38", "W39", "W40"], n)
    logit = -4.3 + 0.07 * (age - 65) + 1.6 * emergency + 0.3 * charl + (group == "W40") * 0.4
    if consultant_sd:
        effect = np.random.default_rng(seed + 1).normal(0.0, consultant_sd, n_cons)
        logit = logit + np.repeat(effect, per)
    p = 1 / (1 + np.exp(-logit))
    planted = [f"C{1000000 + i}" for i in (5, 27, 49)]
    p = np.where(np.isin(consultant, planted), np.minimum(4 * p, 0.95), p)
    death = rng.random(n) < p
    start = np.datetime64("2022-01-01")
    dates = (start + rng.integers(0, 800, n).astype("timedelta64[D]")).astype(object)
    table = _spells_table(
        n, provider_code=provider, consultant_code=consultant, age=age.tolist(),
        emergency=emergency.tolist(), charlson_index=charl.tolist(), sex=sex.tolist(),
        index_procedure=[g + "1" for g in group], death_30d=death.tolist(),
        index_procedure_date=dates, spell_id=[f"S{i}" for i in range(n)],
        emergency_readmission_30d=[None if d else False for d in death],
    )
    return table, planted


def test_simulation_flags_planted_consultants():
    table, planted = _simulate()
    out = outcomes.window_outcomes(table, "2024-03", _settings())
    cons = out["consultant_outcomes"].to_pandas().set_index("consultant_code")
    spec = out["specialty_outcomes"].to_pandas()
    status = cons["outlier_status"]
    for c in planted:
        assert status[c] in ("alarm_high", "alert_high"), (c, status[c], cons.loc[c, "smr"])
    others = status.drop(planted)
    assert (others == "alarm_high").sum() <= 2
    assert (others == "alert_high").sum() <= 8
    assert spec.loc[0, "c_statistic"] > 0.7
    assert spec.loc[0, "consultants"] == 60
    # calibration deciles add up to the specialty's totals
    cal = out["specialty_calibration"].to_pandas()
    assert list(cal["risk_decile"]) == list(range(1, 11))
    assert cal["procedures"].sum() == spec.loc[0, "procedures"]
    assert cal["observed_deaths"].sum() == spec.loc[0, "deaths_30d"]
    assert cal["expected_deaths"].sum() == pytest.approx(cons["expected_deaths"].sum())
    # the model is calibrated: expected rises with the decile, observed follows
    assert cal["expected_deaths"].is_monotonic_increasing
    assert cal["observed_deaths"].iloc[-1] > cal["observed_deaths"].iloc[0]


def test_risk_model_stays_finite_under_separation():
    df = pd.DataFrame({
        "age": np.arange(40, 80), "sex": ["1", "2"] * 20, "emergency": [False] * 40,
        "charlson_index": [0] * 40, "opcs_group": ["W37"] * 40,
        "death_30d": [False] * 36 + [True] * 4,   # the four oldest die: age separates perfectly
    })
    # The unpenalised estimate does not exist here (the age coefficient runs off to
    # infinity); the light penalty keeps it finite and the model is still fitted.
    p, c, model = outcomes.fit_risk_model(df)
    assert model == "full" and c == pytest.approx(1.0)
    assert p.sum() == pytest.approx(4, rel=1e-6)          # the intercept is not penalised
    assert np.all(np.diff(p) > 0) and p.max() < 0.99      # risk rises with age, not to 1
    df["death_30d"] = [i % 7 == 0 for i in range(40)]
    p, c, model = outcomes.fit_risk_model(df)
    assert model == "full" and 0 <= c <= 1 and p.sum() == pytest.approx(6, rel=1e-6)
    # no deaths, or no survivors: nothing to model
    for deaths in ([False] * 40, [True] * 40):
        df["death_30d"] = deaths
        p, c, model = outcomes.fit_risk_model(df)
        assert model == "crude" and c is None and np.allclose(p, float(deaths[0]))


def _sparse_specialty(seed: int = 7, n: int = 600) -> pd.DataFrame:
    """A small specialty as the generated data have them: a handful of sex-not-known
    patients and of rare procedure groups, none of whom die."""
    rng = np.random.default_rng(seed)
    age = rng.integers(30, 90, n)
    emergency = rng.random(n) < 0.3
    charl = np.minimum(rng.poisson(0.6, n), 6)
    logit = -4.8 + 0.05 * (age - 65) + 1.2 * emergency + 0.3 * charl
    death = rng.random(n) < 1 / (1 + np.exp(-logit))
    sex = np.where(rng.random(n) < 0.5, "1", "2")
    group = np.where(rng.random(n) < 0.6, "M61", "M02")
    rare = np.flatnonzero(~death)[:12]
    sex[rare[:5]] = ["9", "0", "9", "9", "0"]         # 5 sex not known, all survive
    group[rare[5:]] = ["M03", "M03", "M34", "M34", "M34", "M03", "M34"]   # 7 in rare groups
    return pd.DataFrame({"age": age, "sex": sex, "emergency": emergency, "charlson_index": charl,
                         "opcs_group": group, "death_30d": death})


def test_rare_levels_are_pooled_and_the_model_is_fitted():
    df = _sparse_specialty()
    X = outcomes._design(df, with_group=True)
    assert "sex_unknown" not in X.columns                 # 5 < 30: counted with the reference (male)
    assert [c for c in X.columns if c.startswith("opcs_")] == ["opcs_M02"]   # M03, M34 pooled into M61
    assert set(X.columns) == {"age10", "female", "emergency", "charlson", "opcs_M02"}
    p, c, model = outcomes.fit_risk_model(df)
    assert model == "full" and c > 0.7
    assert p.sum() == pytest.approx(df["death_30d"].sum(), rel=1e-6)
    # with enough of them, sex not known and a group get their own coefficient
    df.loc[:40, "sex"] = "0"
    df.loc[:40, "opcs_group"] = "M34"
    X = outcomes._design(df, with_group=True)
    assert "sex_unknown" in X.columns and "opcs_M34" in X.columns


def test_rare_groups_pool_into_other_or_the_reference():
    g = pd.Series(["A"] * 50 + ["B"] * 40 + ["C"] * 20 + ["D"] * 15)
    pooled = outcomes._pooled_groups(g, 30)
    assert pooled.value_counts().to_dict() == {"A": 50, "B": 40, "other": 35}   # C + D >= 30
    g = pd.Series(["A"] * 50 + ["B"] * 40 + ["C"] * 20)
    pooled = outcomes._pooled_groups(g, 30)
    assert pooled.value_counts().to_dict() == {"A": 70, "B": 40}   # "other" too small: the reference
    # the reference (most frequent; ties by code) does not depend on row order
    g = pd.Series(["B"] * 40 + ["A"] * 40 + ["C"] * 10)
    assert outcomes._pooled_groups(g, 30).value_counts().to_dict() == {"A": 50, "B": 40}
    assert outcomes._pooled_groups(g.iloc[::-1], 30).value_counts().to_dict() == {"A": 50, "B": 40}
    df = _sparse_specialty(n=90).assign(opcs_group=list(g))
    for frame in (df, df.iloc[::-1]):
        assert [c for c in outcomes._design(frame, with_group=True).columns if c.startswith("opcs_")] == ["opcs_B"]


def test_one_death_still_gives_a_c_statistic():
    df = _sparse_specialty(seed=3, n=400)
    df["death_30d"] = False
    df.loc[df["age"].idxmax(), "death_30d"] = True
    p, c, model = outcomes.fit_risk_model(df)
    assert model == "full" and c is not None and 0.5 < c <= 1
    assert p.sum() == pytest.approx(1, rel=1e-6) and np.all(p < 0.5)


def test_empty_input_gives_empty_conformed_outputs():
    spells = outcomes.build_spells(episodes(episode()).slice(0, 0))
    assert spells.num_rows == 0 and spells.schema.names == list(outcomes.SPELL_COLUMNS)
    out = outcomes.window_outcomes(spells, "2024-03", _settings())
    for name, table in out.items():
        assert table.num_rows == 0
        assert table.schema == schemas.get(name).arrow_schema(include_partition=True, staged=True)


def test_charlson_of_every_spell_equals_the_index_of_its_codes():
    """The column-wise Charlson index of a long (spell, code) table against
    :func:`charlson.charlson_index` of each spell's codes: severe-and-mild pairs (the
    hierarchy), repeated codes, codes of no condition, rows of no spell, spells without
    codes."""
    from pipelines import charlson

    pool = ["E109", "E102", "K703", "K746", "C189", "C787", "I219", "I500", "J449", "B20", "N185",
            "Z999", "R69X", "A099"]
    rng = np.random.default_rng(3)
    spell = rng.integers(0, 200, 3000).astype(float)
    spell[rng.random(3000) < 0.02] = np.nan
    diag = pd.DataFrame({"spell": spell, "code": rng.choice(pool, 3000)})
    got = outcomes._charlson_by_spell(diag, 250)
    known = diag.dropna()
    want = np.zeros(250, dtype=np.int64)
    for s, codes in known.groupby("spell")["code"]:
        want[int(s)] = charlson.charlson_index(codes)
    assert got.tolist() == want.tolist()
    assert want.max() >= 10 and (want[200:] == 0).all()
    assert outcomes._charlson_by_spell(pd.DataFrame({"spell": [0.0], "code": ["Z999"]}), 2).tolist() == [0, 0]


def test_readmissions_equal_the_definition_over_every_pair_of_a_persons_spells():
    """30-day emergency readmission (worked out from each discharge's nearest later
    emergency admission) against the definition: some emergency admission of the same
    person 1 to 30 days after the discharge; people with many spells, same-day and
    day-31 gaps, no discharge, no person."""
    rng = np.random.default_rng(5)
    n = 3000
    day = pd.Timestamp("2014-01-01")
    adm = day + pd.to_timedelta(rng.integers(0, 120, n), unit="D")
    dis = adm + pd.to_timedelta(rng.integers(0, 10, n), unit="D")
    sp = pd.DataFrame({
        "person_key": pd.array(np.where(rng.random(n) < 0.05, None, rng.integers(0, 400, n).astype(str)),
                               dtype="string"),
        "admidate": pd.Series(adm).where(rng.random(n) > 0.03),
        "disdate": pd.Series(dis).where(rng.random(n) > 0.05),
        "emergency": rng.random(n) < 0.5,
    })
    sp["discharged_alive"] = sp["disdate"].notna() & (rng.random(n) > 0.1)
    got = outcomes._readmissions(sp, 30)
    want = []
    for i in range(n):
        r = sp.iloc[i]
        if not (r["discharged_alive"] and pd.notna(r["person_key"])):
            want.append(None)
            continue
        later = sp[(sp["person_key"] == r["person_key"]).fillna(False) & sp["emergency"] & sp["admidate"].notna()]
        gaps = (later["admidate"] - r["disdate"]).dt.days
        want.append(bool(((gaps >= 1) & (gaps <= 30)).any()))
    assert [None if pd.isna(v) else bool(v) for v in got] == want
    assert 200 < sum(w is True for w in want) and 200 < sum(w is False for w in want)


# --------------------------------------------------------------------------- the window's spells
def _random_window(seed: int, n: int = 1500) -> pa.Table:
    """Episodes over four months: shared people (by valid, invalid, linked NHS numbers and
    PSEUDO_HESIDs), spells split over months, padded keys, surgical and other codes,
    deaths and type 2 objections on other spells of a person, emergency readmissions."""
    rng = np.random.default_rng(seed)
    months = ["2024-01", "2024-02", "2024-03", "2024-04"]
    people = [with_check_digit(f"{400000000 + 7919 * i:09d}") for i in range(1000)]
    people = [p for p in people if p][:800]  # the first 60 often in hospital, the rest seldom
    codes = ["W371", "w37.1", " K401", "H33.4", "X999", "Z942", "J181", "W401", None]
    rows = []
    for i in range(n):
        spell = int(rng.integers(0, n // 2))
        m = int(rng.integers(0, 4))
        day = D(2024, m + 1, 1) + dt.timedelta(int(rng.integers(0, 27)))
        person = people[int(rng.integers(0, 60) if rng.random() < 0.5 else rng.integers(60, len(people)))]
        how = rng.random()
        pad = " " if rng.random() < 0.1 else ""
        rows.append(episode(
            provider_code=pad + ["RAA", "RBB"][spell % 2] + pad,
            spell_id=None if spell % 17 == 0 else f"{pad}S{spell}",
            susrecid=f"R{i}", epiorder=f"{int(rng.integers(1, 4)):02d}",
            epistart=day, epiend=day + dt.timedelta(2), admidate=day - dt.timedelta(int(rng.integers(0, 3))),
            disdate=day + dt.timedelta(int(rng.integers(0, 6))),
            admimeth=str(rng.choice(["11", "21", "2B", "12"])), dismeth=str(rng.choice(["1", "1", "4", "2"])),
            procedures=[c for c in rng.choice(codes, int(rng.integers(0, 3))).tolist() if c is not None],
            diagnoses=[str(rng.choice(["E669", "I219", "K703", "A099"]))],
            nhs_number=person if how < 0.7 else (None if how < 0.85 else "1234567890"),
            nhs_number_valid=how < 0.7,
            linked_nhs_number=person if how < 0.6 or 0.85 <= how < 0.95 else None,
            pseudo_hesid=f"H{people.index(person)}" if how >= 0.7 else None,
            date_of_death=D(2024, 4, 20) if people.index(person) % 9 == 0 and rng.random() < 0.3 else None,
            type2_objection=people.index(person) % 11 == 0 and rng.random() < 0.5,
            period=months[m],
        ))
    # one of each way a kept spell meets a person's other spell in another month: by the
    # valid NHS number (readmitted under the linked one), by PSEUDO_HESID (readmitted), by
    # the linked NHS number (died: the date is on the other spell only)
    x, y, z = (with_check_digit(f"{n:09d}") for n in (555000001, 555000002, 555000004))
    assert x and y and z
    none = dict(nhs_number=None, nhs_number_valid=False, linked_nhs_number=None)
    for k, (mine, theirs, other) in enumerate([
            (dict(nhs_number=x, linked_nhs_number=None), dict(none, linked_nhs_number=x), dict(admimeth="21")),
            (dict(none, pseudo_hesid="HX"), dict(none, pseudo_hesid="HX"), dict(admimeth="21")),
            (dict(none, linked_nhs_number=z), dict(nhs_number=z, linked_nhs_number=None),
             dict(admimeth="11", date_of_death=D(2024, 2, 10)))]):
        day = D(2024, 1, 20)
        rows.append(episode(spell_id=f"K{k}", susrecid=f"K{k}", period="2024-01", procedures=["W371"],
                            epistart=day, admidate=day, disdate=day + dt.timedelta(3), **mine))
        back = day + dt.timedelta(8 + 3)
        rows.append(episode(spell_id=f"L{k}", susrecid=f"L{k}", provider_code="RCC", period="2024-02",
                            procedures=[], epistart=back, admidate=back, disdate=back + dt.timedelta(2),
                            **dict(theirs, **other)))
    return episodes(*rows)


@pytest.mark.parametrize("seed,current", [(1, "2024-02"), (2, "2024-04"), (3, "2024-01")])
def test_window_spells_equal_the_spells_built_from_every_episode(seed, current):
    """The spells :func:`outcomes.window_spells` builds from the episodes that decide them
    against :func:`outcomes.build_spells` over the whole window, kept the same way (an
    index procedure, or discharged in the current month): every row and value equal."""
    table = _random_window(seed)
    months = sorted(set(table.column("period").to_pylist()))
    reads = []

    def read(period, columns):
        reads.append((period, tuple(columns)))
        part = table.filter(pc.equal(table.column("period"), period))
        return part.select([c for c in columns if c in part.column_names] + ["period"] * ("period" not in columns))

    older = pa.table({"nhs_number": [NHS_A], "date_of_death": [D(2024, 2, 1)], "type2_objection": [True]})
    got = outcomes.window_spells(read, months, current, gp_deaths=lambda ep: older).to_pandas()
    full = outcomes.build_spells(table, gp_deaths=older).to_pandas()
    want = full[full["specialty"].notna() | (full["spell_period"] == current)]
    key = ["provider_code", "spell_id"]
    got, want = (df.sort_values(key).reset_index(drop=True) for df in (got, want))
    pd.testing.assert_frame_equal(got, want)
    # it is a selection: fewer spells than the whole window, yet ones with a follow-up
    assert 0 < len(got) < len(full)
    assert got["emergency_readmission_30d"].fillna(False).any() and got["death_30d"].fillna(False).any()
    assert (got["spell_period"] != current).any() and got["type2_objection"].any()
    k = got.set_index("spell_id").loc[["K0", "K1", "K2"]]
    assert k["emergency_readmission_30d"].tolist() == [True, True, False]
    assert k["death_30d"].tolist() == [False, False, True]
    # every month is read four times, never all at once
    assert sorted(p for p, _ in reads) == sorted(months * 4)


def test_overdispersion_and_power_columns():
    """od_* limits, od_status, phi and tau2 (outcomes.overdispersion) and the power columns,
    from the funnel functions over the consultants on the funnel (>= 10 procedures, E > 0)."""
    # no spread beyond chance but the three planted consultants, set aside by the truncation:
    # phi <= 1, so tau2 = 0 and the adjusted limits and status are the exact Poisson ones
    table, planted = _simulate()
    flat = outcomes.window_outcomes(table, "2024-03", _settings())
    fs = flat["specialty_outcomes"].to_pandas()
    fc = flat["consultant_outcomes"].to_pandas()
    assert fs.loc[0, "overdispersion_phi"] <= 1 and fs.loc[0, "overdispersion_tau2"] == 0.0
    for od, exact in (("od_lower_95", "smr_lower_95"), ("od_upper_95", "smr_upper_95"),
                      ("od_lower_998", "smr_lower_998"), ("od_upper_998", "smr_upper_998")):
        assert np.allclose(fc[od], fc[exact]), od
    assert (fc["od_status"] == fc["outlier_status"]).all()

    table, planted = _simulate(consultant_sd=1.2)
    out = outcomes.window_outcomes(table, "2024-03", _settings())   # default: shmi
    cons = out["consultant_outcomes"].to_pandas().set_index("consultant_code")
    spec = out["specialty_outcomes"].to_pandas()
    obs, E = cons["deaths_30d"].to_numpy(float), cons["expected_deaths"].to_numpy(float)
    phi, tau2 = funnel.overdispersion(obs, E, "shmi")
    assert spec.loc[0, "overdispersion_phi"] == pytest.approx(phi)
    # a random consultant effect: real between-consultant variation
    assert phi > 1 and spec.loc[0, "overdispersion_tau2"] == pytest.approx(tau2) and tau2 > 0
    lo, hi = funnel.adjusted_limits(E, 0.998, "shmi", phi, tau2)
    assert np.allclose(cons["od_lower_998"], lo) and np.allclose(cons["od_upper_998"], hi)
    # never inside the exact Poisson limits: overdispersion only widens the funnel
    assert (cons["od_lower_95"] <= cons["smr_lower_95"]).all() and (cons["od_upper_998"] >= cons["smr_upper_998"]).all()
    # a consultant with no deaths is never a low outlier where the exact limits cannot say so
    zero = cons["deaths_30d"] == 0
    assert not (zero & (cons["od_status"] == "alarm_low") & (cons["smr_lower_998"] == 0)).any()
    assert np.all(cons["od_upper_95"] > funnel.od_limits(E, 0.95, "shmi", 0.0)[1])  # tau2 widens them
    assert set(cons["od_status"]) <= set(funnel.STATUSES)
    # adjusted limits are wider: never more alarms than the exact Poisson limits
    assert (cons["od_status"] == "alarm_high").sum() <= (cons["outlier_status"] == "alarm_high").sum()
    assert cons["power_smr_2"].to_numpy() == pytest.approx(funnel.power(E, 2.0, 0.998))
    assert cons["min_detectable_smr"].to_numpy() == pytest.approx(funnel.min_detectable_smr(E))
    assert cons["power_smr_2"].between(0, 1).all()

    cqc = outcomes.window_outcomes(table, "2024-03", _settings(overdispersion="cqc"))
    c2 = cqc["consultant_outcomes"].to_pandas().set_index("consultant_code")
    assert cqc["specialty_outcomes"].to_pandas().loc[0, "overdispersion_phi"] == pytest.approx(
        funnel.overdispersion(obs, E, "cqc")[0])
    assert not np.allclose(c2["od_upper_998"], cons["od_upper_998"])
    none = outcomes.window_outcomes(table, "2024-03", _settings(overdispersion="none"))
    n2 = none["consultant_outcomes"].to_pandas()
    assert n2[["od_lower_95", "od_upper_95", "od_lower_998", "od_upper_998", "od_status"]].isna().all().all()
    assert none["specialty_outcomes"].to_pandas()[["overdispersion_phi", "overdispersion_tau2"]].isna().all().all()
    assert n2["power_smr_2"].notna().all()       # power does not depend on the method
    for result in (out, cqc, none):
        for name, t in result.items():
            assert t.schema == schemas.get(name).arrow_schema(include_partition=True, staged=True), name


def test_power_empty_without_expected_deaths_and_od_leaves_out_small_consultants():
    # no deaths at all: E = 0 for everyone, so no power, no limits, phi unknown, tau2 0
    t = _spells_table(12)
    out = outcomes.window_outcomes(t, "2024-03", _settings())
    cons = out["consultant_outcomes"].to_pandas()
    assert cons["power_smr_2"].isna().all() and cons["min_detectable_smr"].isna().all()
    assert cons["od_upper_95"].isna().all()
    spec = out["specialty_outcomes"].to_pandas()
    assert pd.isna(spec.loc[0, "overdispersion_phi"]) and spec.loc[0, "overdispersion_tau2"] == 0.0
