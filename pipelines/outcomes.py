"""Consultant-level outcomes for the ten specialties (methods.md "Consultant-level outcomes").

Plain functions over Arrow and pandas, no Dagster:

* :func:`load_cohorts` -- the editable cohort table (specialty, OPCS-4 prefix, required and
  excluded diagnosis prefixes).
* :func:`build_spells` -- linked episodes -> one row per hospital spell with its index
  procedure, Charlson index, 30-day death and 30-day emergency readmission.
* :func:`window_spells` -- :func:`build_spells` for one window, from only the episodes
  that decide the spells it needs (read a month and a few columns at a time).
* :func:`window_outcomes` -- one window (the ``window_months`` months ending with a period):
  one risk model per specialty, then ``consultant_outcomes``, ``specialty_outcomes`` and
  ``specialty_calibration``, conformed to their staged schemas: **not yet suppressed**
  (the publisher applies disclosure control and adds the ``*_suppressed`` flags).
* :func:`linked_spells_restricted` -- the pseudonymised ``linked_spells`` dataset.

The table from :func:`build_spells` is internal: it carries the person's NHS number
(``person_key``: the NHS number, else ``HESID:`` + PSEUDO_HESID) so that readmissions can
be followed across providers. It is never published as it is.

Choices where the spec is silent are listed in docs/methods-outcomes.md.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import charlson, schemas
from pipelines import funnel as _funnel
from pipelines import spells as _spells
from pipelines.funnel import control_limits, exact_ci, funnel_plot, funnel_plot_svg, outlier_statuses, poisson_limits  # noqa: F401  (re-exported)
from pipelines.text import SPACE_CHARS, WHITESPACE

log = logging.getLogger(__name__)

EMERGENCY_ADMIMETH = frozenset({"21", "22", "23", "24", "25", "28", "2A", "2B", "2C", "2D"})
DIED_DISMETH = "4"
NOT_ALIVE_DISMETH = frozenset({"4", "5"})  # 4 died, 5 stillbirth
UNKNOWN_CONSULTANT = "&"  # HES convention for "not known"
MAX_AGE = 120

COHORT_COLUMNS = ("specialty", "opcs4_prefix", "requires_diagnosis_prefix", "excludes_diagnosis_prefix")

SPELL_COLUMNS = (
    "provider_code", "spell_id", "person_key", "pseudo_hesid", "spell_period",
    "admidate", "disdate", "admimeth", "dismeth", "los_days", "age", "sex", "emergency",
    "specialty", "index_procedure", "index_procedure_date", "consultant_code", "opcs_group",
    "charlson_index", "death_30d", "discharged_alive", "emergency_readmission_30d",
    "type2_objection",
)
_SPELL_DATES = ("admidate", "disdate", "index_procedure_date")


# --------------------------------------------------------------------------- cohorts
def _packaged_cohorts() -> Path:
    return Path(str(resources.files("pipelines").joinpath("reference/specialty_cohorts.csv")))


def load_cohorts(path: str | Path | None = None, settings: Any = None) -> pd.DataFrame:
    """The cohort table. ``path`` wins; else ``settings.t("outcomes", "cohorts_file")``
    when set; else the packaged ``pipelines/reference/specialty_cohorts.csv``.

    Diagnosis prefix cells may list several prefixes separated by ``|`` or ``;``."""
    if path is None and settings is not None:
        path = settings.t("outcomes", "cohorts_file")
    path = Path(path) if path else _packaged_cohorts()
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in COHORT_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"cohort file {path.name}: missing columns {missing}")
    df = df[list(COHORT_COLUMNS)].copy()
    for c in COHORT_COLUMNS:
        df[c] = df[c].astype(str).str.strip()
    for c in COHORT_COLUMNS[1:]:
        df[c] = df[c].str.upper().str.replace(f"[.{SPACE_CHARS}-]", "", regex=True)
    df["requires_diagnosis_prefix"] = df["requires_diagnosis_prefix"].str.replace(";", "|")
    df["excludes_diagnosis_prefix"] = df["excludes_diagnosis_prefix"].str.replace(";", "|")
    bad = df[(df["specialty"] == "") | (df["opcs4_prefix"] == "")]
    if len(bad):
        raise ValueError(f"cohort file {path.name}: {len(bad)} rows without specialty or OPCS-4 prefix")
    df = df.drop_duplicates().reset_index(drop=True)
    df["cohort_order"] = np.arange(len(df))
    return df


# --------------------------------------------------------------------------- helpers
def _clean_codes(s: pd.Series) -> pd.Series:
    return s.astype("string").str.upper().str.replace(r"[^A-Z0-9]", "", regex=True)


def _flatten(table: pa.Table, column: str, value_name: str) -> pd.DataFrame:
    """A list column as long rows: ``row`` (index into ``table``), ``pos`` (0-based), value."""
    arr = table.column(column).combine_chunks()
    if len(arr) == 0 or arr.null_count == len(arr):
        return pd.DataFrame({"row": pd.Series([], dtype="int64"), "pos": pd.Series([], dtype="int64"),
                             value_name: pd.Series([], dtype=object)})
    parents = pc.list_parent_indices(arr).to_numpy()
    values = pc.list_flatten(arr)
    offsets = arr.offsets.to_numpy()
    pos = np.arange(len(values)) - (offsets[parents] - offsets[0])
    vals = values.to_pandas(date_as_object=False) if pa.types.is_date(values.type) else values.to_pandas()
    return pd.DataFrame({"row": parents.astype("int64"), "pos": pos.astype("int64"), value_name: vals})


def _age(on: pd.Series, dob: pd.Series, by: pd.Series, bm: pd.Series,
         gp_dob: pd.Series | None = None) -> pd.Series:
    """Age in whole years on a date (methods.md: the episode's DOB, else its MYDOB, else
    the linked GP record's date of birth, ranks 1 to 4). From DOB when present; else from
    year and month of birth, counting the birthday as reached only from the month after
    the birth month (never makes a 17-year-old 18); else from ``gp_dob``; else from the
    year alone, minus one. Null when unknown."""
    on_y, on_m, on_d = on.dt.year, on.dt.month, on.dt.day

    def from_date(d: pd.Series) -> pd.Series:
        return (on_y - d.dt.year - (
            (on_m < d.dt.month) | ((on_m == d.dt.month) & (on_d < d.dt.day))).astype("Int64")).astype("Float64")

    by = pd.to_numeric(by, errors="coerce").astype("Float64")
    bm = pd.to_numeric(bm, errors="coerce").astype("Float64")
    from_ym = on_y - by - (on_m <= bm).astype("Float64")
    from_y = on_y - by - 1
    age = from_date(dob)
    age = age.fillna(from_ym.where(bm.notna()))
    if gp_dob is not None:
        age = age.fillna(from_date(pd.to_datetime(gp_dob)))
    age = age.fillna(from_y)
    age = age.where((age >= 0) & (age <= MAX_AGE))  # birth after admission or absurd: unknown
    return age.round().astype("Int64")


def _has_prefix(codes: pd.DataFrame, prefixes: str) -> set:
    """Spell indexes with a diagnosis starting with any of the ``|``-separated prefixes."""
    pats = tuple(p for p in prefixes.split("|") if p)
    if not pats or codes.empty:
        return set()
    hit = codes["code"].str.startswith(pats).fillna(False)
    return set(codes.loc[hit.to_numpy(dtype=bool), "spell"].unique())


def _charlson_by_spell(diag: pd.DataFrame, n_spells: int) -> np.ndarray:
    """Charlson index of each spell from the long (spell, code) table."""
    out = np.zeros(n_spells, dtype="int64")
    if diag.empty:
        return out
    pairs = diag[["spell", "code"]].dropna().drop_duplicates()
    codes, code_idx = np.unique(pairs["code"].to_numpy(dtype=object).astype(str), return_inverse=True)
    spells, spell_idx = np.unique(pairs["spell"].to_numpy(dtype="int64"), return_inverse=True)
    # Each distinct code's conditions, worked out once; then the (spell, condition) pairs.
    code_cond = pd.DataFrame([(i, cond) for i, c in enumerate(codes) for cond in charlson._conditions_of_code(c)],
                             columns=["code", "cond"])
    if code_cond.empty:
        return out
    conds = sorted(code_cond["cond"].unique())
    code_cond["cond"] = code_cond["cond"].map({c: k for k, c in enumerate(conds)})
    long = pd.DataFrame({"spell": spell_idx, "code": code_idx}).merge(code_cond, on="code")
    hit, row = np.unique(long["spell"].to_numpy(), return_inverse=True)
    present = np.zeros((len(hit), len(conds)), dtype=np.int8)
    present[row, long["cond"].to_numpy()] = 1
    wide = pd.DataFrame(present, index=spells[hit], columns=conds)
    for severe, mild in charlson.HIERARCHY:
        if severe in wide.columns and mild in wide.columns:
            wide[mild] = wide[mild].where(wide[severe] == 0, 0)
    weights = np.array([charlson.WEIGHTS[c] for c in wide.columns])
    out[wide.index.to_numpy(dtype="int64")] = wide.to_numpy() @ weights
    return out


def _to_arrow(df: pd.DataFrame, date_cols=()) -> pa.Table:
    table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    for name in date_cols:
        if name in table.column_names:
            i = table.column_names.index(name)
            table = table.set_column(i, name, table.column(name).cast(pa.date32()))
    return table


# --------------------------------------------------------------------------- spells
_EPISODE_COLUMNS = (
    "provider_code", "susrecid", "spell_id", "epiorder", "epistat", "epistart", "epiend", "admidate",
    "disdate", "admimeth", "dismeth", "sex", "dob", "birth_year", "birth_month",
    "consultant_code", "nhs_number", "nhs_number_valid", "period", "linked_nhs_number",
    "date_of_death", "type2_objection", "pseudo_hesid", "linked_date_of_birth",
)
EPISODE_COLUMNS = _EPISODE_COLUMNS + ("diagnoses", "procedures", "procedure_dates")
"""The linked-episode columns :func:`build_spells` reads."""


def build_spells(
    episodes: pa.Table,
    cohorts: pd.DataFrame | None = None,
    *,
    min_age: int = 18,
    death_days: int = 30,
    readmission_days: int = 30,
    gp_deaths: pa.Table | None = None,
    engine: Any = None,
) -> pa.Table:
    """One row per hospital spell (``provider_code`` + ``spell_id``) of the linked
    episodes, with its index procedure (if any) and outcomes. See the module docstring and
    docs/methods-outcomes.md for the rules. Columns: :data:`SPELL_COLUMNS`.

    ``gp_deaths`` (:func:`pipelines.linkage.gp_deaths`: ``nhs_number``,
    ``date_of_death``, ``type2_objection``): GP-recorded deaths from older extracts too.
    A person (by NHS number) whose linked GP record has no date of death takes it from
    there, with its type 2 objection: a patient who died more than about a year before
    the newest extract is no longer in it, so is not linked, yet was registered and died."""
    if cohorts is None:
        cohorts = load_cohorts()
    present = [c for c in _EPISODE_COLUMNS if c in episodes.column_names]
    ep = episodes.select(present).to_pandas(date_as_object=False)
    for c in _EPISODE_COLUMNS:
        if c not in ep.columns:
            ep[c] = None
    for c in ("epistart", "epiend", "admidate", "disdate", "dob", "date_of_death", "linked_date_of_birth"):
        ep[c] = pd.to_datetime(ep[c])
    for c in ("provider_code", "susrecid", "spell_id", "epiorder", "admimeth", "dismeth", "sex",
              "consultant_code", "nhs_number", "linked_nhs_number", "pseudo_hesid", "period"):
        ep[c] = ep[c].astype("string").str.strip().replace("", pd.NA)
    ep["row"] = np.arange(len(ep))

    # Spells and episode order as every module derives them (pipelines/spells.py): the
    # given spell id, else HES's derivation (person, provider, admission date, cut at each
    # discharge), else the episode alone; EPIORDER 98/99 after every real order.
    assigned = _spells.assign_spells(episodes, engine)  # engine: runs the spells plan
    ep = ep.iloc[assigned["row"].to_numpy()].reset_index(drop=True)
    ep["spell_key"] = assigned["spell_id"].to_numpy()
    ep["spell"] = assigned["spell"].to_numpy()
    ep["epiorder_num"] = assigned["order_rank"].to_numpy()
    ep["is_last"] = assigned["is_last"].to_numpy()
    ep["unfinished"] = assigned["unfinished"].to_numpy()
    n = int(ep["spell"].max()) + 1 if len(ep) else 0
    ep["t2"] = ep["type2_objection"].astype("boolean").fillna(False).astype(bool)
    ep["valid_nhs"] = ep["nhs_number"].where(ep["nhs_number_valid"].fillna(False).astype(bool))

    g = ep.groupby("spell", sort=True)
    # The spell's discharge is its last episode's; none when that episode is unfinished.
    last = ep[ep["is_last"]].set_index("spell")
    sp = pd.DataFrame({
        "provider_code": g["provider_code"].first(),
        "spell_id": g["spell_key"].first(),
        "spell_period": g["period"].max(),
        "admidate": g["admidate"].first(),
        "first_epistart": g["epistart"].min(),
        "disdate": last["disdate"].where(~last["unfinished"]),
        "admimeth": g["admimeth"].first(),
        "dismeth": last["dismeth"].where(~last["unfinished"]),
        "last_unfinished": last["unfinished"],
        "sex": g["sex"].first(),
        "dob": g["dob"].first(),
        "birth_year": g["birth_year"].first(),
        "birth_month": g["birth_month"].first(),
        "gp_dob": g["linked_date_of_birth"].first(),
        "valid_nhs": g["valid_nhs"].first(),
        "linked_nhs": g["linked_nhs_number"].first(),
        "pseudo_hesid": g["pseudo_hesid"].first(),
        "dod": g["date_of_death"].max(),
        "type2": g["t2"].any(),
    }).reindex(range(n))
    sp["spell_period"] = sp["spell_period"].fillna(
        sp["disdate"].fillna(sp["admidate"]).dt.strftime("%Y-%m").astype("string"))
    # the person: valid NHS number on the episodes, else the linked GP patient's, else
    # (HES extracts only) the PSEUDO_HESID
    sp["person_key"] = sp["valid_nhs"].fillna(sp["linked_nhs"]).fillna("HESID:" + sp["pseudo_hesid"])
    on = sp["admidate"].fillna(sp["first_epistart"])
    sp["age"] = _age(on, sp["dob"], sp["birth_year"], sp["birth_month"], sp["gp_dob"])
    los = (sp["disdate"] - sp["admidate"]).dt.days.astype("Int64")
    sp["los_days"] = los.where(los >= 0)  # discharge before admission: unknown
    sp["emergency"] = sp["admimeth"].isin(EMERGENCY_ADMIMETH).fillna(False).astype(bool)

    # person-level facts: date of death and type 2 objection follow the person
    person = sp["person_key"]
    has_person = person.notna()
    if has_person.any():
        dod_p = sp[has_person].groupby("person_key")["dod"].max()
        t2_p = sp[has_person].groupby("person_key")["type2"].any()
        sp.loc[has_person, "dod"] = person[has_person].map(dod_p).to_numpy()
        sp.loc[has_person, "type2"] = person[has_person].map(t2_p).to_numpy()
    if gp_deaths is not None and gp_deaths.num_rows and has_person.any():
        older = gp_deaths.select(["nhs_number", "date_of_death", "type2_objection"]).to_pandas()
        older = older.set_index("nhs_number")
        found = person.map(pd.to_datetime(older["date_of_death"]))
        use = sp["dod"].isna() & found.notna()
        sp.loc[use, "dod"] = found[use]
        sp.loc[use, "type2"] = sp.loc[use, "type2"] | person[use].map(older["type2_objection"]).fillna(False).astype(bool)

    # diagnoses of the spell (all episodes)
    diag = _flatten(episodes, "diagnoses", "code") if "diagnoses" in episodes.column_names else \
        pd.DataFrame({"row": [], "pos": [], "code": []})
    row_to_spell = pd.Series(ep["spell"].to_numpy(), index=ep["row"].to_numpy())
    diag["spell"] = row_to_spell.reindex(diag["row"].to_numpy()).to_numpy()
    diag["code"] = _clean_codes(diag["code"])
    diag = diag[diag["code"].notna() & (diag["code"] != "")]
    sp["charlson_index"] = _charlson_by_spell(diag, n)

    # index procedure
    index = _index_procedures(episodes, ep, sp, diag, cohorts, min_age)
    # A spell whose last episode is unfinished opens no outcome: not an index spell.
    index = index[~sp["last_unfinished"].reindex(index.index).fillna(False).astype(bool).to_numpy()]
    sp = sp.join(index, how="left")
    sp["index_procedure_date"] = pd.to_datetime(sp["index_procedure_date"])
    for c in ("specialty", "index_procedure", "consultant_code"):
        sp[c] = sp[c].astype("string")
    sp["opcs_group"] = sp["index_procedure"].str.slice(0, 3)

    # 30-day death
    has_index = sp["index_procedure"].notna()
    limit = sp["index_procedure_date"] + pd.to_timedelta(death_days, unit="D")
    died_in_spell = (sp["dismeth"] == DIED_DISMETH).fillna(False) & (sp["disdate"] <= limit).fillna(False)
    died_gp = ((sp["dod"] >= sp["index_procedure_date"]) & (sp["dod"] <= limit)).fillna(False)
    sp["death_30d"] = (died_in_spell | died_gp).astype("boolean").where(has_index, pd.NA)

    # 30-day emergency readmission at any provider
    sp["discharged_alive"] = (sp["disdate"].notna() & ~sp["dismeth"].isin(NOT_ALIVE_DISMETH).fillna(False)).astype(bool)
    sp["emergency_readmission_30d"] = _readmissions(sp, readmission_days)
    sp["type2_objection"] = sp["type2"].astype(bool)
    out = sp[list(SPELL_COLUMNS)]
    table = _to_arrow(out, _SPELL_DATES)
    return table.cast(_spell_schema(table.schema))


def _spell_schema(schema: pa.Schema) -> pa.Schema:
    types = {
        "age": pa.int64(), "los_days": pa.int64(), "charlson_index": pa.int64(),
        "emergency": pa.bool_(), "death_30d": pa.bool_(), "discharged_alive": pa.bool_(),
        "emergency_readmission_30d": pa.bool_(), "type2_objection": pa.bool_(),
    }
    fields = []
    for f in schema:
        t = types.get(f.name, pa.date32() if f.name in _SPELL_DATES else pa.string())
        fields.append(pa.field(f.name, t))
    return pa.schema(fields)


def _index_procedures(episodes, ep, sp, diag, cohorts, min_age) -> pd.DataFrame:
    cols = ["specialty", "index_procedure", "index_procedure_date", "consultant_code"]
    empty = pd.DataFrame(columns=cols, index=pd.RangeIndex(0))
    if "procedures" not in episodes.column_names or len(ep) == 0:
        return empty
    procs = _flatten(episodes, "procedures", "code")
    if procs.empty:
        return empty
    if "procedure_dates" in episodes.column_names:
        dates = _flatten(episodes, "procedure_dates", "opdate")
        procs = procs.merge(dates, on=["row", "pos"], how="left")
    else:
        procs["opdate"] = pd.NaT
    procs["opdate"] = pd.to_datetime(procs["opdate"])
    procs["code"] = _clean_codes(procs["code"])
    procs = procs[procs["code"].notna() & (procs["code"] != "")]
    epi = ep.set_index("row")[["spell", "epiorder_num", "epistart", "consultant_code"]]
    procs = procs.join(epi, on="row")
    # adults only
    adult = sp["age"].ge(min_age).fillna(False).astype(bool)
    procs = procs[adult.reindex(procs["spell"].to_numpy()).to_numpy()]
    # cohort match by prefix (prefixes may be of any length)
    matches = []
    for plen, sub in _cohorts_by_prefix_length(cohorts).items():
        key = procs["code"].str.slice(0, plen)
        m = procs.assign(opcs4_prefix=key).merge(sub, on="opcs4_prefix", how="inner")
        matches.append(m)
    if not matches:
        return empty
    cand = pd.concat(matches, ignore_index=True)
    if cand.empty:
        return empty
    # diagnosis requirements of the spell
    keep = np.ones(len(cand), dtype=bool)
    for value in cand["requires_diagnosis_prefix"].unique():
        if value:
            ok = _has_prefix(diag, value)
            sel = (cand["requires_diagnosis_prefix"] == value).to_numpy()
            keep &= ~sel | cand["spell"].isin(ok).to_numpy()
    for value in cand["excludes_diagnosis_prefix"].unique():
        if value:
            bad = _has_prefix(diag, value)
            sel = (cand["excludes_diagnosis_prefix"] == value).to_numpy()
            keep &= ~(sel & cand["spell"].isin(bad).to_numpy())
    cand = cand[keep]
    if cand.empty:
        return empty
    # first by procedure date (OPDATE, else the episode's EPISTART), then episode order,
    # then position in the episode; ties between specialties by the cohort file's order
    cand = cand.assign(proc_date=cand["opdate"].fillna(cand["epistart"]))
    cand = cand.sort_values(["spell", "proc_date", "epiorder_num", "epistart", "row", "pos", "cohort_order"],
                            na_position="last", kind="stable")
    first = cand.drop_duplicates("spell", keep="first").set_index("spell")
    out = pd.DataFrame({
        "specialty": first["specialty"],
        "index_procedure": first["code"],
        "index_procedure_date": first["proc_date"],
        "consultant_code": first["consultant_code"],
    })
    out.index.name = None
    return out


def _readmissions(sp: pd.DataFrame, days: int) -> pd.Series:
    """True when the person has an emergency admission (any provider) starting 1..days
    after this spell's discharge; False when discharged alive without one; null when not
    discharged alive or no person key to follow."""
    result = pd.Series(pd.NA, index=sp.index, dtype="boolean")
    base = sp["discharged_alive"] & sp["person_key"].notna()
    result[base] = False
    adm = sp.loc[sp["emergency"] & sp["person_key"].notna() & sp["admidate"].notna(), ["person_key", "admidate"]]
    if adm.empty or not base.any():
        return result
    # Each discharge's nearest emergency admission of the same person a day or more
    # after it (within ``days`` if any is): one sorted search over (person, day) keys,
    # not every pair of a person's spells.
    out = sp.loc[base, ["person_key", "disdate"]]  # (copies of two columns, not of every one)
    who, _ = pd.factorize(pd.concat([out["person_key"], adm["person_key"]], ignore_index=True))
    who = who.astype(np.int64)
    span, shift = np.int64(1 << 22), np.int64(1 << 21)  # days fit in 22 bits once shifted
    dis_day = out["disdate"].to_numpy(dtype="datetime64[D]").astype(np.int64)
    adm_day = adm["admidate"].to_numpy(dtype="datetime64[D]").astype(np.int64)
    keys = np.sort(who[len(out):] * span + adm_day + shift)
    at = np.searchsorted(keys, who[:len(out)] * span + dis_day + 1 + shift)
    nearest = keys[np.minimum(at, len(keys) - 1)]
    same = (at < len(keys)) & (nearest // span == who[:len(out)])
    hit = out.index[same & (nearest % span - shift - dis_day <= days)]
    result.loc[hit] = True
    return result


# --------------------------------------------------------------------------- the window's spells
_KEY_COLUMNS = _spells.GROUP_COLUMNS  # what an episode's spell group is worked out from
_PERSON_COLUMNS = ("nhs_number", "nhs_number_valid", "linked_nhs_number", "pseudo_hesid")
_KEY_AND_PERSON = tuple(dict.fromkeys(_KEY_COLUMNS + _PERSON_COLUMNS))


def window_spells(
    read: Callable[[str, Sequence[str]], pa.Table | None],
    periods: Sequence[str],
    current: str,
    cohorts: pd.DataFrame | None = None,
    *,
    gp_deaths: Callable[[pa.Table], pa.Table | None] | None = None,
    engine: Any = None,
    **rules: Any,
) -> pa.Table | None:
    """The spells a window ending with period ``current`` needs, built by
    :func:`build_spells` from only the episodes that decide them, so that memory follows
    the window's surgical spells rather than all its episodes.

    ``read(period, columns)`` gives one period's linked episodes (those of ``columns`` it
    has); ``periods`` are the window's, follow-up months included. The spells returned are
    those with an index procedure and those discharged in ``current`` (the restricted
    ``linked_spells`` release), every one exactly as :func:`build_spells` over all the
    window's episodes would give it. Each period is read four times, a few columns at a
    time, and never more than one at once:

    1. the spells to keep: any episode with a procedure code of a cohort's prefix (a
       superset of those with an index procedure), or an episode of ``current``;
    2. their people: every identifier a person key can come from (valid NHS number, linked
       NHS number, ``HESID:`` + PSEUDO_HESID) on their episodes;
    3. every spell with an episode bearing one of those identifiers: the spells that can
       share a person key with a kept spell, hence its deaths, objections and
       readmissions;
    4. all the episodes of those spells, which :func:`build_spells` takes.

    Spells and identifiers are matched on 64-bit hashes: a collision only adds a spell to
    steps 3-4, and those extra spells are dropped from the result, which keeps a spell by
    its own columns (an index procedure, or discharged in ``current``).

    ``gp_deaths(episodes)`` gives the GP-recorded deaths for :func:`build_spells`;
    ``rules`` are its ``min_age``, ``death_days`` and ``readmission_days``; ``engine``
    runs the spells plan (:mod:`pipelines.spells`; None: the default engine)."""
    if cohorts is None:
        cohorts = load_cohorts()
    prefixes = _prefixes_by_length(cohorts)
    keep: list[np.ndarray] = []
    for p in periods:
        t = read(p, _KEY_COLUMNS + ("procedures",))
        if t is None or t.num_rows == 0:
            continue
        keys = _spell_hashes(t, engine)
        hit = np.ones(t.num_rows, dtype=bool) if p == current else _has_cohort_code(t, prefixes)
        keep.append(keys[hit & (keys != 0)])
    if not keep:
        return None
    keep_keys = _sorted_set(keep)
    people = []
    for p in periods:
        t = read(p, _KEY_AND_PERSON)
        if t is not None and t.num_rows:
            mine = _member(_spell_hashes(t, engine), keep_keys)
            people += [ids[mine] for ids in _person_hashes(t)]
    people_keys = _sorted_set(people)
    people_keys = people_keys[people_keys != 0]
    wanted = [keep_keys]
    for p in periods:
        t = read(p, _KEY_AND_PERSON)
        if t is not None and t.num_rows:
            theirs = np.zeros(t.num_rows, dtype=bool)
            for ids in _person_hashes(t):
                theirs |= _member(ids, people_keys)
            keys = _spell_hashes(t, engine)
            wanted.append(keys[theirs & (keys != 0)])
    wanted_keys = _sorted_set(wanted)
    parts = []
    for p in periods:
        t = read(p, EPISODE_COLUMNS)
        if t is not None and t.num_rows:
            parts.append(t.filter(pa.array(_member(_spell_hashes(t, engine), wanted_keys))))
    episodes = pa.concat_tables(parts, promote_options="default")
    log.info("outcomes window %s..%s: %d spells kept, %d episodes read for them", periods[0], periods[-1],
             len(keep_keys), episodes.num_rows)
    spells = build_spells(episodes, cohorts, gp_deaths=gp_deaths(episodes) if gp_deaths else None,
                          engine=engine, **rules)
    kept = pc.or_(pc.is_valid(spells.column("specialty")),
                  pc.fill_null(pc.equal(spells.column("spell_period"), current), False))
    return spells.filter(kept)


def _sorted_set(parts: list[np.ndarray]) -> np.ndarray:
    """The distinct hashes of ``parts``, sorted (for :func:`_member`)."""
    if not parts:
        return np.zeros(0, np.uint64)
    values = np.sort(np.concatenate(parts))
    return values[np.concatenate(([True], values[1:] != values[:-1]))] if len(values) else values


def _member(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """``values`` in ``sorted_set``, by a binary search of the values in order (numpy's
    ``isin`` is much slower on millions of 64-bit hashes, and so is a search in the
    random order hashes come in)."""
    found = np.zeros(len(values), dtype=bool)
    if len(sorted_set) == 0:
        return found
    order = np.argsort(values)
    ordered = values[order]
    at = np.minimum(np.searchsorted(sorted_set, ordered), len(sorted_set) - 1)
    found[order] = sorted_set[at] == ordered
    return found


def _stripped(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """Text stripped as ``str.strip()`` strips it, empty as null (as :func:`build_spells`)."""
    s = pc.utf8_trim(column.cast(pa.string()), characters=WHITESPACE)
    return pc.if_else(pc.equal(s, ""), pa.scalar(None, pa.string()), s)


def _column(t: pa.Table, name: str) -> pa.ChunkedArray:
    if name in t.column_names:
        return t.column(name)
    return pa.chunked_array([pa.nulls(t.num_rows, pa.string())])


_HASHING = threading.local()


def _hashes(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """64-bit hashes of text values (DuckDB's ``hash``, over the Arrow buffers); 0 for null.
    One in-memory connection per thread, kept (a connection costs 13 ms; the outcomes
    window hashes each part's episodes several times)."""
    import duckdb

    pid, con = getattr(_HASHING, "con", (None, None))
    if con is None or pid != os.getpid():  # never a connection inherited across a fork
        con = duckdb.connect()
        con.execute("SET threads = 1")  # one thread keeps the rows in order
        _HASHING.con = (os.getpid(), con)
    text = pa.table({"v": values})
    con.register("caredata_text", text)
    try:
        h = con.sql("SELECT hash(v) AS h FROM caredata_text").to_arrow_table().column("h")
    finally:
        con.unregister("caredata_text")
    h = np.array(h.to_numpy(), dtype=np.uint64)
    h[pc.is_null(text.column("v")).to_numpy(zero_copy_only=False)] = 0
    return h


def _spell_hashes(t: pa.Table, engine: Any = None) -> np.ndarray:
    """Each episode's spell group (provider and :func:`pipelines.spells.group_keys`: its
    spell id, else its person and admission date, else itself) as a hash; 0 for an
    episode without a provider (it is in no spell). A derived group holds every episode
    a derived spell can take (several spells when the person was discharged and
    admitted again on the same day), so reading groups reads whole spells."""
    provider = _stripped(_column(t, "provider_code"))
    return _hashes(pc.binary_join_element_wise(provider, _spells.group_keys(t, engine), "\x1f"))


def _person_hashes(t: pa.Table) -> list[np.ndarray]:
    """Each episode's identifiers a spell's person key can come from, as hashes (0: none)."""
    valid = pc.fill_null(_column(t, "nhs_number_valid").cast(pa.bool_()), False)
    nhs = pc.if_else(valid, _stripped(_column(t, "nhs_number")), pa.scalar(None, pa.string()))
    hesid = pc.binary_join_element_wise("HESID:", _stripped(_column(t, "pseudo_hesid")), "")
    return [_hashes(nhs), _hashes(_stripped(_column(t, "linked_nhs_number"))), _hashes(hesid)]


def _cohorts_by_prefix_length(cohorts: pd.DataFrame) -> dict[int, pd.DataFrame]:
    """The cohort rows by the length n of their OPCS-4 prefix: a cleaned procedure code
    is in a row's cohort when its first n characters are the prefix."""
    rows = cohorts.dropna(subset=["opcs4_prefix"])
    return {int(n): sub for n, sub in rows.groupby(rows["opcs4_prefix"].str.len())}


def _prefixes_by_length(cohorts: pd.DataFrame) -> dict[int, set]:
    return {n: set(sub["opcs4_prefix"]) for n, sub in _cohorts_by_prefix_length(cohorts).items()}


def _has_cohort_code(t: pa.Table, prefixes: dict[int, set]) -> np.ndarray:
    """Episodes with a procedure code (cleaned as :func:`_index_procedures` cleans it) that
    starts with a cohort's prefix. Codes are few: each distinct code is tested once."""
    hit = np.zeros(t.num_rows, dtype=bool)
    if "procedures" not in t.column_names:
        return hit
    lists = t.column("procedures").combine_chunks()
    flat = pc.list_flatten(lists)
    if len(flat) == 0:
        return hit
    codes = flat.cast(pa.string()).dictionary_encode()
    clean = _clean_codes(pd.Series(codes.dictionary.to_pandas()))
    matches = np.zeros(len(clean) + 1, dtype=bool)  # the last: null codes
    for n, group in prefixes.items():
        matches[:-1] |= clean.str.slice(0, n).isin(group).fillna(False).to_numpy(dtype=bool)
    index = pc.fill_null(codes.indices, len(clean)).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
    hit[parents[matches[index]]] = True
    return hit


# --------------------------------------------------------------------------- age unknown
AGE_UNKNOWN_RULE = "PROCEDURE_AGE_UNKNOWN"
"""The data-quality rule counting episodes with a cohort procedure whose patient's age at
admission stays unknown (no DOB, no MYDOB, no linked GP date of birth at ranks 1 to 4):
such a procedure can be no index procedure (adults only), so it is counted, not lost."""


def procedures_without_age(linked: pa.Table, period: str, cohorts: pd.DataFrame | None = None,
                          engine: Any = None) -> pa.Table:
    """``dq_rules`` rows (internal, ``schemas.get("dq_rules")``) for one period's linked
    episodes: per submission and provider, ``rows_checked`` = episodes with
    a procedure code of a cohort's prefix, ``rows_failed`` = those whose age at admission
    is unknown, worked out as :func:`build_spells` works it out over the episodes of the
    spell seen here (DOB, else MYDOB, else the linked GP date of birth, from the first
    episode that has one). Rule :data:`AGE_UNKNOWN_RULE`, field ``DOB``, severity ``warn``;
    example lines are line numbers, never values."""
    ds = schemas.get("dq_rules")
    empty = ds.arrow_schema(include_partition=True).empty_table()
    if cohorts is None:
        cohorts = load_cohorts()
    if linked is None or linked.num_rows == 0:
        return empty
    hit = _has_cohort_code(linked, _prefixes_by_length(cohorts))
    if not hit.any():
        return empty
    cols = ("submission_id", "provider_code", "line", "admidate", "epistart", "dob", "birth_year", "birth_month",
            "linked_date_of_birth")
    df = pd.DataFrame({c: (linked.column(c).to_pandas() if c in linked.column_names else pd.Series([None] * linked.num_rows))
                       for c in cols})
    for c in ("admidate", "epistart", "dob", "linked_date_of_birth"):
        df[c] = pd.to_datetime(df[c])
    # the spell's values, from its first episode that has each (as build_spells)
    assigned = _spells.assign_spells(linked, engine)
    spell = np.full(len(df), -1, dtype=np.int64)
    spell[assigned["row"].to_numpy()] = assigned["spell"].to_numpy()
    own = spell < 0
    spell[own] = spell.max(initial=-1) + 1 + np.arange(int(own.sum()))
    order = np.empty(len(df), dtype=np.int64)
    order[assigned["row"].to_numpy()] = np.arange(len(assigned))
    order[own] = len(assigned) + np.arange(int(own.sum()))
    df["spell"], df["order"] = spell, order
    firsts = df.sort_values("order").groupby("spell")[["admidate", "epistart", "dob", "birth_year", "birth_month",
                                                       "linked_date_of_birth"]].first()
    sp = firsts.reindex(df["spell"].to_numpy())
    on = sp["admidate"].fillna(sp["epistart"]).reset_index(drop=True)
    age = _age(on, sp["dob"].reset_index(drop=True), sp["birth_year"].reset_index(drop=True),
               sp["birth_month"].reset_index(drop=True), sp["linked_date_of_birth"].reset_index(drop=True))
    df["checked"] = hit
    df["failed"] = hit & age.isna().to_numpy(dtype=bool)
    df = df[df["checked"]]
    df["provider_code"] = df["provider_code"].astype("string").str.strip().str.upper()
    rows = []
    for (sid, provider), grp in df.groupby(["submission_id", "provider_code"], sort=True, dropna=False):
        lines = grp.loc[grp["failed"], "line"].dropna().astype("int64").tolist()[:5]
        rows.append({"period": period, "submission_id": sid, "source": None, "submitter_code": None if pd.isna(provider) else provider,
                     "rule_id": AGE_UNKNOWN_RULE, "field": "DOB", "severity": "warn",
                     "rows_checked": int(len(grp)), "rows_failed": int(grp["failed"].sum()),
                     "example_lines": [str(x) for x in lines]})
    out = pd.DataFrame(rows)
    if "source" in linked.column_names:
        src = pd.Series(linked.column("source").to_pandas()).groupby(
            pd.Series(linked.column("submission_id").to_pandas())).first()
        out["source"] = out["submission_id"].map(src)
    return ds.conform(pa.Table.from_pandas(out, preserve_index=False))


# --------------------------------------------------------------------------- models
def _months_back(period: str, months: int) -> str:
    y, m = (int(x) for x in period.split("-"))
    total = y * 12 + (m - 1) - (months - 1)
    return f"{total // 12:04d}-{total % 12 + 1:02d}"


# Risk model: which levels get their own coefficient, and how hard the coefficients are held.
MIN_LEVEL_PROCEDURES = 30
"""A procedure group, or sex not known, with fewer index procedures than this in the
window gets no coefficient of its own: rare procedure groups are pooled into one "other"
group (itself pooled into the reference group when it is rare too), sex not known into
the reference sex (male). A level of a handful of procedures says nothing reliable, and
with no death among them it makes the unpenalised estimate infinite (separation)."""

PRIOR_SD = 2.5
"""The light L2 (ridge) penalty of the risk model, as the standard deviation of a normal
prior on each coefficient, in the covariate's own units (log-odds per 10 years of age,
per Charlson point, for an indicator going from 0 to 1). The intercept is not penalised,
so the specialty's expected deaths still equal its observed deaths. The penalty's weight
is fixed while the likelihood grows with the number of procedures: at national volumes it
changes the fit by very little; at small volumes and under (quasi-)separation (a level
with no deaths, a covariate that splits deaths from survivors) it keeps the coefficients
finite, where the unpenalised maximum likelihood estimate does not exist."""


def _design(df: pd.DataFrame, *, with_group: bool, min_level: int = MIN_LEVEL_PROCEDURES) -> pd.DataFrame:
    """The covariates of the risk model (no intercept column): ``age10`` (years over 65,
    per 10), ``female``, ``sex_unknown`` (only when at least ``min_level`` procedures have
    a sex other than 1 or 2; else they count with the reference, male), ``emergency``,
    ``charlson`` (capped at 10) and, ``with_group``, one indicator per 3-character OPCS-4
    group with at least ``min_level`` procedures except the reference (the most frequent
    group), plus ``opcs_other`` for the rarer groups pooled together when they add up to
    ``min_level`` (else they join the reference). Columns that do not vary are dropped."""
    X = pd.DataFrame(index=df.index)
    X["age10"] = (df["age"].astype(float) - 65.0) / 10.0
    sex = df["sex"].astype("string")
    X["female"] = (sex == "2").fillna(False).astype(float)
    unknown = (~sex.isin(["1", "2"])).fillna(True).astype(float)
    if unknown.sum() >= min_level:
        X["sex_unknown"] = unknown
    X["emergency"] = df["emergency"].astype(bool).astype(float)
    X["charlson"] = df["charlson_index"].astype(float).clip(upper=10)
    if with_group:
        grp = _pooled_groups(df["opcs_group"], min_level)
        levels = _by_frequency(grp)
        if len(levels) > 1:
            ref = levels[0]
            dummies = pd.get_dummies(grp, prefix="opcs", dtype=float)
            X = X.join(dummies.drop(columns=f"opcs_{ref}"))
    return X.loc[:, X.std(ddof=0) > 0]


def _pooled_groups(groups: pd.Series, min_level: int) -> pd.Series:
    """OPCS-4 groups with fewer than ``min_level`` procedures become ``other``; ``other``
    itself, when it has fewer than ``min_level``, joins the most frequent group. Ties in
    frequency are broken by the group code, so the reference does not depend on row order."""
    grp = groups.astype("string").fillna("other").astype(str)
    counts = grp.value_counts()
    grp = grp.where(grp.map(counts) >= min_level, "other")
    counts = grp.value_counts()
    if counts.get("other", 0) and counts["other"] < min_level:
        big = [g for g in _by_frequency(grp) if g != "other"]
        if big:
            grp = grp.where(grp != "other", big[0])
    return grp


def _by_frequency(values: pd.Series) -> list:
    """Distinct values, most frequent first, ties by value (independent of row order)."""
    counts = values.value_counts()
    return sorted(counts.index, key=lambda v: (-counts[v], v))


def _fit_logistic(y: np.ndarray, X: pd.DataFrame) -> np.ndarray | None:
    """Penalised logistic regression (scikit-learn, L-BFGS, intercept not penalised):
    the fitted probabilities, or None when the solver does not converge."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    # C is the prior variance: scikit-learn minimises ½·Σβ² + C·(negative log-likelihood)
    model = LogisticRegression(C=PRIOR_SD ** 2, l1_ratio=0.0, solver="lbfgs", tol=1e-10, max_iter=2000)
    Z = X.to_numpy(dtype=float) if X.shape[1] else np.zeros((len(y), 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        try:
            model.fit(Z, y)
        except (ConvergenceWarning, ValueError, FloatingPointError) as exc:
            log.info("risk model did not fit (%s); falling back", type(exc).__name__)
            return None
    p = model.predict_proba(Z)[:, 1]
    if not np.all(np.isfinite(p)):
        return None
    return p


def fit_risk_model(df: pd.DataFrame) -> tuple[np.ndarray, float | None, str]:
    """Predicted 30-day death probabilities for one specialty's index procedures, the
    c-statistic, and which model was used: ``full`` (age, sex, emergency, Charlson, OPCS-4
    group; rare levels pooled, light L2 penalty: :data:`MIN_LEVEL_PROCEDURES`,
    :data:`PRIOR_SD`), ``no_group`` (the same without the group, should the full model
    not converge), or ``crude`` (every procedure gets the crude rate: no deaths, or no
    survivors, or no model converged; c-statistic null)."""
    from sklearn.metrics import roc_auc_score

    y = df["death_30d"].astype(int).to_numpy()
    crude = float(y.mean()) if len(y) else 0.0
    if len(y) == 0 or y.min() == y.max():
        return np.full(len(y), crude), None, "crude"
    for name, with_group in (("full", True), ("no_group", False)):
        p = _fit_logistic(y, _design(df, with_group=with_group))
        if p is not None:
            return p, float(roc_auc_score(y, p)), name
    return np.full(len(y), crude), None, "crude"


def _deciles(p: np.ndarray) -> np.ndarray:
    """Decile of predicted risk, 1 (lowest) to 10: equal-sized groups by rank (ties in
    row order)."""
    n = len(p)
    order = np.argsort(p, kind="stable")
    rank = np.empty(n, dtype=int)
    rank[order] = np.arange(n)
    return rank * 10 // max(n, 1) + 1


def _pct(num, den):
    return np.where(den > 0, 100.0 * num / np.where(den > 0, den, 1), np.nan)


def window_outcomes(spells: pa.Table, window_end: str, settings: Any = None) -> dict[str, pa.Table]:
    """Outcomes of one window: the ``outcomes.window_months`` months ending with
    ``window_end`` (YYYY-MM). Index procedures whose date is in the window; their 30-day
    follow-up was computed by :func:`build_spells` from all the data. Returns
    ``consultant_outcomes``, ``specialty_outcomes`` and ``specialty_calibration`` conformed
    to their *staged* schemas (no ``*_suppressed`` flags: disclosure control is the
    publisher's), with ``period`` = ``window_end``. Beside the spec's exact Poisson limits:
    the overdispersion-adjusted limits and status of ``outcomes.overdispersion`` with the
    specialty's phi and tau2 (:func:`_overdispersion_columns`), and each consultant's power
    (``power_smr_2``, ``min_detectable_smr``; docs/methods-outcomes.md)."""
    if settings is None:
        from pipelines.config import Settings

        settings = Settings()
    months = int(settings.t("outcomes", "window_months"))
    min_procs = int(settings.t("outcomes", "min_procedures"))
    levels = tuple(float(x) for x in settings.t("outcomes", "limits"))
    inner, outer = sorted(levels)
    window_start = _months_back(window_end, months)
    start = pd.Timestamp(f"{window_start}-01")
    end = pd.Timestamp(f"{window_end}-01") + pd.offsets.MonthEnd(0)

    df = spells.to_pandas(date_as_object=False)
    df["index_procedure_date"] = pd.to_datetime(df["index_procedure_date"])
    df = df[df["specialty"].notna() & df["index_procedure_date"].between(start, end)
            & df["death_30d"].notna()].copy()
    df["consultant_code"] = df["consultant_code"].fillna(UNKNOWN_CONSULTANT)
    df = df.sort_values(["specialty", "provider_code", "consultant_code", "index_procedure_date", "spell_id"],
                        kind="stable").reset_index(drop=True)

    if df.empty:
        return {name: _empty(name) for name in ("consultant_outcomes", "specialty_outcomes",
                                                "specialty_calibration")}
    df["expected"] = 0.0
    spec_rows, cal_rows = [], []
    for specialty, sub in df.groupby("specialty", sort=True):
        p, c_stat, model = fit_risk_model(sub)
        df.loc[sub.index, "expected"] = p
        y = sub["death_30d"].astype(int).to_numpy()
        dec = _deciles(p)
        for d in range(1, 11):
            sel = dec == d
            if sel.any():
                cal_rows.append({"specialty": specialty, "risk_decile": d, "procedures": int(sel.sum()),
                                 "observed_deaths": int(y[sel].sum()), "expected_deaths": float(p[sel].sum())})
        alive = sub["emergency_readmission_30d"].notna()
        spec_rows.append({
            "specialty": specialty,
            "procedures": len(sub),
            "consultants": sub.loc[sub["consultant_code"] != UNKNOWN_CONSULTANT,
                                   ["provider_code", "consultant_code"]].drop_duplicates().shape[0],
            "deaths_30d": int(y.sum()),
            "crude_mortality_pct": 100.0 * y.mean(),
            "readmission_pct": (100.0 * sub.loc[alive, "emergency_readmission_30d"].astype(int).mean()
                                if alive.any() else np.nan),
            "median_los_days": float(sub["los_days"].median()) if sub["los_days"].notna().any() else np.nan,
            "c_statistic": c_stat if c_stat is not None else np.nan,
            "model": model,
        })
        log.info("outcomes %s %s: %d procedures, model %s, c=%s", window_end, specialty, len(sub), model, c_stat)

    spec = pd.DataFrame(spec_rows, columns=["specialty", "procedures", "consultants", "deaths_30d",
                                            "crude_mortality_pct", "readmission_pct", "median_los_days",
                                            "c_statistic", "model"])
    crude_rate = dict(zip(spec["specialty"], spec["crude_mortality_pct"]))

    # consultants
    df["death_i"] = df["death_30d"].astype(int)
    df["readm_known"] = df["emergency_readmission_30d"].notna().astype(int)
    df["readm_i"] = df["emergency_readmission_30d"].fillna(False).astype(int)
    g = df.groupby(["specialty", "provider_code", "consultant_code"], sort=True)
    cons = pd.DataFrame({
        "procedures": g.size(),
        "deaths_30d": g["death_i"].sum(),
        "expected_deaths": g["expected"].sum(),
        "readmissions_30d": g["readm_i"].sum(),
        "readm_den": g["readm_known"].sum(),
        "median_los_days": g["los_days"].median(),
    }).reset_index()
    O = cons["deaths_30d"].to_numpy(dtype=float)
    E = cons["expected_deaths"].to_numpy(dtype=float)
    pos = E > 0
    cons["crude_mortality_pct"] = _pct(O, cons["procedures"].to_numpy(dtype=float))
    cons["smr"] = np.where(pos, O / np.where(pos, E, 1), np.nan)
    cons["risk_adjusted_mortality_pct"] = cons["smr"] * cons["specialty"].map(crude_rate).astype(float)
    for level, suffix in ((inner, "95"), (outer, "998")):
        lo, hi = control_limits(np.where(pos, E, np.nan), level)
        cons[f"smr_lower_{suffix}"] = np.where(pos, lo, np.nan)
        cons[f"smr_upper_{suffix}"] = np.where(pos, hi, np.nan)
    cons["outlier_status"] = outlier_statuses(
        cons["deaths_30d"].to_numpy(dtype=float), cons["expected_deaths"].to_numpy(dtype=float),
        cons["procedures"].to_numpy(dtype=float), levels=(inner, outer), min_procedures=min_procs)
    cons["readmission_pct"] = _pct(cons["readmissions_30d"].to_numpy(dtype=float),
                                   cons["readm_den"].to_numpy(dtype=float))
    od = _overdispersion_columns(cons, spec, settings, (inner, outer), min_procs)
    spec = spec.merge(od, on="specialty", how="left")
    # Power (Walker et al., Lancet 2013): functions of E alone, like the limits.
    cons["power_smr_2"] = _funnel.power(E, 2.0, outer)
    cons["min_detectable_smr"] = _funnel.min_detectable_smr(E, 0.8, outer)

    cal = pd.DataFrame(cal_rows, columns=["specialty", "risk_decile", "procedures", "observed_deaths",
                                          "expected_deaths"])
    out = {}
    for name, frame in (("consultant_outcomes", cons), ("specialty_outcomes", spec),
                        ("specialty_calibration", cal)):
        frame = frame.copy()
        frame["period"] = window_end
        frame["window_start"] = window_start
        frame["window_end"] = window_end
        table = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
        out[name] = schemas.get(name).conform(table, staged=True) if len(frame) else _empty(name)
    return out


def _overdispersion_columns(cons: pd.DataFrame, spec: pd.DataFrame, settings: Any,
                            levels: tuple[float, float], min_procs: int) -> pd.DataFrame:
    """Adds ``od_lower_95`` ... ``od_upper_998`` and ``od_status`` to ``cons`` (in place)
    and returns ``specialty``, ``overdispersion_phi``, ``overdispersion_tau2``
    (docs/methods-outcomes.md "Overdispersion"). Method: ``outcomes.overdispersion``
    (``shmi``, ``cqc`` or ``none``: then every one of these columns is empty).

    phi and tau2 are estimated per specialty over the consultants on its funnel: at least
    ``min_procs`` procedures, E > 0, a known consultant (the provider's ``&`` bucket is a
    mixture of people, not a unit). tau2 is 0 when phi <= 1 (no overdispersion) or cannot
    be estimated (fewer than 2 such consultants): the adjusted limits and status are then
    the exact Poisson ones (:func:`pipelines.funnel.adjusted_limits`)."""
    method = str(settings.t("outcomes", "overdispersion"))
    inner, outer = levels
    names = ["od_lower_95", "od_upper_95", "od_lower_998", "od_upper_998"]
    for c in names:
        cons[c] = np.nan
    cons["od_status"] = None
    rows = []
    if method == "none":
        return pd.DataFrame({"specialty": spec["specialty"], "overdispersion_phi": np.nan,
                             "overdispersion_tau2": np.nan})
    for specialty, sub in cons.groupby("specialty", sort=True):
        O = sub["deaths_30d"].to_numpy(dtype=float)
        E = sub["expected_deaths"].to_numpy(dtype=float)
        units = ((sub["procedures"].to_numpy() >= min_procs) & (E > 0)
                 & (sub["consultant_code"].to_numpy() != UNKNOWN_CONSULTANT))
        phi, tau2 = _funnel.overdispersion(O[units], E[units], method)
        tau2 = _funnel.limits_tau2(phi, tau2)
        lims = []
        for level in (inner, outer):
            lo, hi = _funnel.adjusted_limits(E, level, method, phi, tau2)
            lims += [np.atleast_1d(lo), np.atleast_1d(hi)]
        for c, v in zip(names, lims):
            cons.loc[sub.index, c] = v
        smr = sub["smr"].to_numpy(dtype=float)
        cons.loc[sub.index, "od_status"] = _funnel.statuses_from_limits(
            smr, lims[0], lims[1], lims[2], lims[3], sub["procedures"].to_numpy(dtype=float),
            min_procedures=min_procs)
        rows.append({"specialty": specialty, "overdispersion_phi": phi, "overdispersion_tau2": tau2})
    return pd.DataFrame(rows, columns=["specialty", "overdispersion_phi", "overdispersion_tau2"])


def _empty(name: str) -> pa.Table:
    return schemas.get(name).arrow_schema(include_partition=True, staged=True).empty_table()


# --------------------------------------------------------------------------- restricted
def linked_spells_restricted(spells: pa.Table, key: str | bytes | None) -> pa.Table:
    """The restricted ``linked_spells`` dataset: every spell of a person without a type 2
    objection, the NHS number replaced by the keyed person id and the spell id by its keyed
    pseudonym (:mod:`pipelines.pseudo`).
    Raises ``pipelines.pseudo.MissingKeyError`` without a key."""
    from pipelines import pseudo  # lazily: owned by another stage

    mask = pc.invert(pc.fill_null(spells.column("type2_objection"), False))
    kept = spells.filter(mask)
    hesid = kept.column("pseudo_hesid") if "pseudo_hesid" in kept.column_names else None
    # person_key is a valid NHS number, or "HESID:..." which person_ids does not take
    # for a number and so hashes from the pseudo_hesid column instead
    ids = pseudo.person_ids(key, kept.column("person_key"), hesid)
    table = kept.append_column("person_id", ids)
    # spell_id: a keyed pseudonym, as linked_episodes.spell_id (the same function)
    i = table.column_names.index("spell_id")
    table = table.set_column(i, pa.field("spell_id", pa.string()), pseudo.record_key_ids(
        key, pseudo.SPELL_KIND, table.column("provider_code"), table.column("spell_id")))
    # period = the month of the spell's last episode end (its discharge), whatever
    # partition the spells table was stored under
    if "period" in table.column_names:
        table = table.drop_columns(["period"])
    table = table.append_column("period", table.column("spell_period"))
    return schemas.get("linked_spells").conform(table)
