"""Friends and Family Test: scores at every level with NHS England's suppression, and
responses linked to hospital spells (../shared/spec/methods.md "Friends and Family Test").

Plain functions over Arrow tables or pandas DataFrames; no Dagster. The method, and how
this module reads the suppression rules, is written out for analysts in
``docs/methods-fft.md``. In short:

* c1..c6 count the answers ``1``..``6``, T = c1 + ... + c6;
  pct_recommend = 100 (c1 + c2) / T, pct_not_recommend = 100 (c4 + c5) / T,
  net_score = 100 (c1 - (c3 + c4 + c5)) / (T - c6), empty where T - c6 = 0;
  pct_positive and pct_negative equal pct_recommend and pct_not_recommend (NHS England's
  names since April 2020), and ``question`` is ``recommend`` before 2020-04, ``experience``
  from then.
* Levels per period and setting: ward (``<site>/<ward>``, parent site), site (parent
  provider), provider (parent host commissioner), commissioner (parent ``ENG``),
  national (``ENG``).
* Suppression below national: rule 1 (1..suppress_max responses), rule 2 (a lone rule-1
  child of a parent takes its next-smallest sibling with it), rule 3 (a parent suppressed
  by rule 2 has at least two of its children suppressed; no further cascade). Rule set
  ``nhse`` (``fft.rule_set``): NHS England's fft_pipeline instead: rule 2 among the
  commissioners too, and a cascade from every suppressed parent to its two smallest
  children (``fft.nhse_cascade`` ``all``: every child), top down.
* :func:`fft_mode`: responses by mode of collection per provider and nationally, each
  cell suppressed with its provider's row, by rule 1, and by complements on both margins.

Thresholds come from ``settings.t("fft", "suppress_max_responses")`` and
``settings.t("fft", "link_max_days")``; callers pass them as keyword arguments.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import schemas, spells
from pipelines.text import WHITESPACE

TableLike = Union[pa.Table, pd.DataFrame]

NATIONAL_CODE = "ENG"
# Order of levels in the output: the order of the declared codes (fft_scores.level).
LEVELS = ("ward", "site", "provider", "commissioner", "national")
_LEVEL_ORDER = {lvl: k for k, lvl in enumerate(LEVELS)}
# Parent-child pairs that rules 2 and 3 work on (methods.md: "ward of a site, site of a
# provider, provider of a commissioner"). Commissioners under ENG are not among them.
_CHILD_LEVEL_OF = {"site": "ward", "provider": "site", "commissioner": "provider"}
_RULE2_CHILD_LEVELS = ("ward", "site", "provider")
_RULE3_PARENT_LEVELS = ("site", "provider")  # parents that can be suppressed by rule 2
# fft.rule_set: the spec's rules (default) or NHS England's (docs/methods-fft.md); and, under
# nhse, fft.nhse_cascade: how many children of a suppressed parent the cascade suppresses.
RULE_SETS = ("spec", "nhse")
CASCADES = ("smallest_two", "all")

ANSWERS = ("1", "2", "3", "4", "5", "6")
COUNT_COLUMNS = ("extremely_likely", "likely", "neither", "unlikely", "extremely_unlikely", "dont_know")
SCORE_COLUMNS = ("pct_recommend", "pct_not_recommend", "pct_positive", "pct_negative", "net_score")
# The question in force (methods.md): "would you recommend" until 2020-03; from 2020-04
# "Overall, how was your experience of our service?" (1 very good .. 5 very poor, 6 don't know).
EXPERIENCE_QUESTION_FROM = "2020-04"
# HES/SUS "not known" treatment function, used where a linked spell's last episode has none.
TRETSPEF_NOT_KNOWN = "&"

LINKED_SCHEMA = pa.schema([
    pa.field("period", pa.string()),
    pa.field("provider_code", pa.string()),
    pa.field("response_id", pa.string()),
    pa.field("tretspef", pa.string()),
    pa.field("response", pa.string()),
])

SPELLS_SCHEMA = pa.schema([
    pa.field("provider_code", pa.string()),
    pa.field("spell_id", pa.string()),
    pa.field("nhs_number", pa.string()),
    pa.field("disdate", pa.date32()),
    pa.field("tretspef_last", pa.string()),
])


# --------------------------------------------------------------------------- helpers
def _frame(table: TableLike | None, columns: list[str] | None = None) -> pd.DataFrame:
    """A pandas copy of ``table``; checks that ``columns`` are present."""
    if table is None:
        df = pd.DataFrame(columns=columns or [])
    elif isinstance(table, pa.Table):
        df = table.to_pandas()
    elif isinstance(table, pd.DataFrame):
        df = table.copy()
    else:
        raise TypeError(f"expected a pyarrow Table or pandas DataFrame, got {type(table).__name__}")
    if columns:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise ValueError(f"missing columns {missing}")
    return df


def _code(series: pd.Series) -> pd.Series:
    """Codes as stripped strings (object dtype), empty and missing as None.

    Text columns (all the columns it is called on) are stripped column-wise in pyarrow,
    of exactly what ``str.strip()`` removes; anything else value by value, as
    :func:`_code_each`."""
    if not (isinstance(series.dtype, pd.StringDtype)
            or (series.dtype == object and pd.api.types.infer_dtype(series, skipna=True) in ("string", "empty"))):
        return _code_each(series)
    arr = pc.utf8_trim(pa.array(series.astype(object), type=pa.string(), from_pandas=True),
                       characters=WHITESPACE)
    arr = pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)
    return pd.Series(arr.to_numpy(zero_copy_only=False), index=series.index, dtype=object)


def _code_each(series: pd.Series) -> pd.Series:
    """:func:`_code` value by value: ``str(value).strip()``, empty and missing as None."""
    values = [None if _missing(v) else (str(v).strip() or None) for v in series.astype(object)]
    return pd.Series(values, index=series.index, dtype=object)


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and np.isnan(value))


def _dates(series: pd.Series) -> pd.Series:
    return pd.to_datetime(series, errors="coerce").astype("datetime64[s]")


def _answer_counts(df: pd.DataFrame) -> pd.DataFrame:
    """Add c1..c6 indicator columns (named as the published counts) from ``response``."""
    resp = _code(df["response"])
    bad = resp.isna() | ~resp.isin(ANSWERS)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} FFT response(s) whose answer is not 1 to 6: "
            "such rows should have been quarantined by validation"
        )
    for answer, col in zip(ANSWERS, COUNT_COLUMNS):
        df[col] = (resp == answer).astype("int64")
    return df


def _scores(df: pd.DataFrame) -> pd.DataFrame:
    """responses, pct_recommend, pct_not_recommend, net_score from the six counts."""
    c1, c2, c3, c4, c5, c6 = (df[c].astype("float64") for c in COUNT_COLUMNS)
    total = c1 + c2 + c3 + c4 + c5 + c6
    df["responses"] = total.astype("int64")
    with np.errstate(divide="ignore", invalid="ignore"):
        df["pct_recommend"] = np.where(total > 0, 100.0 * (c1 + c2) / total, np.nan)
        df["pct_not_recommend"] = np.where(total > 0, 100.0 * (c4 + c5) / total, np.nan)
        known = total - c6
        df["net_score"] = np.where(known > 0, 100.0 * (c1 - (c3 + c4 + c5)) / known, np.nan)
    # NHS England's names since the 2020 question; the same shares (methods.md).
    df["pct_positive"] = df["pct_recommend"]
    df["pct_negative"] = df["pct_not_recommend"]
    df["question"] = question_of(df["period"]) if "period" in df.columns else None
    return df


def question_of(period: pd.Series) -> pd.Series:
    """``recommend`` for periods before 2020-04, ``experience`` from then (YYYY-MM text)."""
    text = period.astype("string")
    return pd.Series(np.where(text < EXPERIENCE_QUESTION_FROM, "recommend", "experience"),
                     index=period.index, dtype=object)


def _blank_suppressed(df: pd.DataFrame) -> pd.DataFrame:
    """Counts, responses, percentages and net score empty where ``suppressed``."""
    for col in ("responses", *COUNT_COLUMNS):
        df[col] = df[col].astype("Int64").mask(df["suppressed"])
    for col in SCORE_COLUMNS:
        df[col] = df[col].astype("float64").mask(df["suppressed"])
    return df


def _to_arrow(df: pd.DataFrame, dataset: str) -> pa.Table:
    ds = schemas.get(dataset)
    schema = ds.arrow_schema(include_partition=True)
    arrays = []
    for field in schema:
        values = df[field.name] if field.name in df.columns else pd.Series([None] * len(df))
        if pa.types.is_floating(field.type):
            values = values.astype("float64")  # NaN -> null below
            arr = pa.array(values.to_numpy(), type=field.type, from_pandas=True)
        elif pa.types.is_integer(field.type):
            arr = pa.array(values.astype("Int64"), type=field.type, from_pandas=True)
        elif pa.types.is_boolean(field.type):
            arr = pa.array(values.astype(bool).to_numpy(), type=field.type)
        else:
            arr = pa.array(list(_code(values)) if len(values) else [], type=pa.string())
        arrays.append(arr)
    return ds.conform(pa.Table.from_arrays(arrays, names=schema.names))


# --------------------------------------------------------------------------- scores
def _hierarchy_nodes(responses: pd.DataFrame, providers: pd.DataFrame) -> pd.DataFrame:
    """One row per (period, setting, level, org_code) with its parent and six counts."""
    df = responses
    for col in ("period", "setting", "provider_code", "site_code", "ward_code"):
        df[col] = _code(df[col])
    if df["period"].isna().any() or df["setting"].isna().any() or df["provider_code"].isna().any():
        raise ValueError("FFT responses without a period, setting or provider code")

    # A site belongs to exactly one provider (the one that submitted its responses); the
    # hierarchy must be a tree for the suppression rules to protect anything.
    with_site = df[df["site_code"].notna()]
    owners = with_site.groupby("site_code")["provider_code"].nunique()
    clashing = sorted(owners[owners > 1].index)
    if clashing:
        raise ValueError(f"FFT site codes reported under more than one provider: {clashing[:10]}")

    prov = _frame(providers, ["provider_code", "commissioner_code"])
    prov["provider_code"] = _code(prov["provider_code"])
    prov["commissioner_code"] = _code(prov["commissioner_code"])
    host = prov.dropna(subset=["provider_code"]).drop_duplicates("provider_code").set_index("provider_code")
    df["commissioner_code"] = _code(df["provider_code"].map(host["commissioner_code"]))

    counts = list(COUNT_COLUMNS)
    parts = []

    def level(frame: pd.DataFrame, name: str, org: pd.Series, parent: pd.Series | None) -> None:
        if frame.empty:
            return
        g = pd.DataFrame({
            "period": frame["period"], "setting": frame["setting"],
            "org_code": org, "parent_code": parent if parent is not None else None,
        })
        g[counts] = frame[counts]
        g["parent_code"] = g["parent_code"].astype(object).fillna("\x00")  # groupby key
        out = g.groupby(["period", "setting", "org_code", "parent_code"], sort=False, as_index=False)[counts].sum()
        out["parent_code"] = pd.Series([None if v == "\x00" else v for v in out["parent_code"]],
                                       index=out.index, dtype=object)
        out.insert(2, "level", name)
        parts.append(out)

    wards = df[df["ward_code"].notna() & df["site_code"].notna()]
    level(wards, "ward", wards["site_code"] + "/" + wards["ward_code"], wards["site_code"])
    sites = df[df["site_code"].notna()]
    level(sites, "site", sites["site_code"], sites["provider_code"])
    level(df, "provider", df["provider_code"], df["commissioner_code"])
    comm = df[df["commissioner_code"].notna()]
    level(comm, "commissioner", comm["commissioner_code"], pd.Series(NATIONAL_CODE, index=comm.index))
    level(df, "national", pd.Series(NATIONAL_CODE, index=df.index), None)
    return pd.concat(parts, ignore_index=True)


def _apply_suppression(nodes: pd.DataFrame, suppress_max: int, rule_set: str = "spec",
                       cascade: str = "smallest_two") -> pd.DataFrame:
    """Adds boolean columns rule1, rule2, rule3 and suppressed (see docs/methods-fft.md).

    ``rule_set`` ``spec`` (the default: methods.md's rules 1 to 3) or ``nhse`` (NHS
    England's fft_pipeline: rule 1; rule 2 also among the commissioners, and providers
    without a commissioner, under national; and, in column ``rule3``, a cascade from every
    suppressed parent, top down, to its two children with the fewest responses, or to every
    child with ``cascade`` ``all``)."""
    if rule_set not in RULE_SETS:
        raise ValueError(f"fft rule set must be one of {', '.join(RULE_SETS)}")
    if cascade not in CASCADES:
        raise ValueError(f"fft cascade must be one of {', '.join(CASCADES)}")
    n = nodes
    total = n[list(COUNT_COLUMNS)].sum(axis=1)
    n["_t"] = total
    below = n["level"] != "national"

    # Rule 1: 1..suppress_max responses, any level below national.
    n["rule1"] = below & (total >= 1) & (total <= suppress_max)

    # Rule 2: within each parent's children (ward|site, site|provider, provider|commissioner)
    # where exactly one child is suppressed by rule 1, suppress the unsuppressed sibling with
    # the fewest responses (ties: ascending org_code). Under nhse the commissioners (and any
    # provider without one) are one more group of siblings, under national.
    n["rule2"] = False
    key = ["period", "setting", "_group"]
    n["_group"] = n["level"] + "|" + n["parent_code"].astype(object).fillna("")
    kids = n[n["level"].isin(_RULE2_CHILD_LEVELS) & n["parent_code"].notna()]
    if rule_set == "nhse":
        orphan = n["parent_code"].isna() | (n["parent_code"].astype(object) == "")
        national_kids = (n["level"] == "commissioner") | ((n["level"] == "provider") & orphan)
        n.loc[national_kids, "_group"] = "national|" + NATIONAL_CODE
        kids = n[(n["level"].isin(_RULE2_CHILD_LEVELS) & ~orphan) | national_kids]
    if not kids.empty:
        lone = kids.groupby(key)["rule1"].transform("sum") == 1
        cand = kids[lone & ~kids["rule1"]].sort_values(key + ["_t", "org_code"])
        picked = cand.drop_duplicates(subset=key, keep="first").index
        n.loc[picked, "rule2"] = True

    if rule_set == "nhse":
        n["rule3"] = False
        _cascade(n, all_children=cascade == "all")
        n["suppressed"] = n["rule1"] | n["rule2"] | n["rule3"]
        return n.drop(columns=["_t", "_group"])
    key = ["period", "setting", "level", "parent_code"]

    # Rule 3: a site or provider suppressed by rule 2 has its children suppressed, fewest
    # responses first (ties: ascending org_code), until at least two of them are suppressed
    # (children suppressed by rule 1 or 2 count). Children suppressed here do not cascade.
    n["rule3"] = False
    parents = n[n["rule2"] & n["level"].isin(_RULE3_PARENT_LEVELS)]
    if not parents.empty:
        targets = pd.DataFrame({
            "period": parents["period"], "setting": parents["setting"],
            "level": parents["level"].map(_CHILD_LEVEL_OF), "parent_code": parents["org_code"],
        }).drop_duplicates()
        children = n.reset_index().merge(targets, on=key, how="inner").set_index("index")
        children["_done"] = children["rule1"] | children["rule2"]
        children["_need"] = (2 - children.groupby(key)["_done"].transform("sum")).clip(lower=0)
        free = children[~children["_done"]].copy()
        free = free.sort_values(key + ["_t", "org_code"])
        rank = free.groupby(key).cumcount()
        n.loc[free.index[(rank < free["_need"]).to_numpy()], "rule3"] = True

    n["suppressed"] = n["rule1"] | n["rule2"] | n["rule3"]
    return n.drop(columns=["_t", "_group"])


def _cascade(n: pd.DataFrame, *, all_children: bool) -> None:
    """NHS England's cascade (fft_pipeline ``apply_cascade_suppression``), in place on
    ``rule3``: top down (commissioner, provider, site), every suppressed parent (by any
    rule, the cascade included) has its two children with the fewest responses suppressed
    (ties: ascending org_code), or all its children with ``all_children``."""
    key = ["period", "setting", "parent_code"]
    for parent_level in ("commissioner", "provider", "site"):
        parents = n[(n["level"] == parent_level) & (n["rule1"] | n["rule2"] | n["rule3"])]
        if parents.empty:
            continue
        targets = pd.DataFrame({"period": parents["period"], "setting": parents["setting"],
                                "parent_code": parents["org_code"]}).drop_duplicates()
        level = n[n["level"] == _CHILD_LEVEL_OF[parent_level]]
        children = level.reset_index().merge(targets, on=key, how="inner").set_index("index")
        if children.empty:
            continue
        if not all_children:
            children = children.sort_values(key + ["_t", "org_code"])
            children = children[(children.groupby(key).cumcount() < 2).to_numpy()]
        n.loc[children.index, "rule3"] = True


def fft_nodes(responses: TableLike, sites: TableLike | None, providers: TableLike | None,
              *, suppress_max: int = 4, rule_set: str = "spec", cascade: str = "smallest_two") -> pd.DataFrame:
    """Every organisation's unsuppressed counts and scores with the rule that suppressed it
    (columns rule1, rule2, rule3, suppressed): for checking and audit, never published."""
    df = _frame(responses, ["period", "provider_code", "site_code", "ward_code", "setting", "response"])
    _ = sites  # the hierarchy is taken from the responses themselves (docs/methods-fft.md)
    if df.empty:
        cols = ["period", "setting", "level", "org_code", "parent_code", *COUNT_COLUMNS,
                "responses", *SCORE_COLUMNS, "rule1", "rule2", "rule3", "suppressed"]
        return pd.DataFrame(columns=cols)
    df = _answer_counts(df)
    nodes = _hierarchy_nodes(df, providers if providers is not None else pd.DataFrame(
        {"provider_code": [], "commissioner_code": []}))
    nodes = _apply_suppression(nodes, suppress_max, rule_set, cascade)
    nodes = _scores(nodes)
    nodes["_lvl"] = nodes["level"].map(_LEVEL_ORDER)
    nodes = nodes.sort_values(["period", "setting", "_lvl", "org_code"], kind="mergesort")
    return nodes.drop(columns="_lvl").reset_index(drop=True)


def fft_scores(responses: TableLike, sites: TableLike | None, providers: TableLike | None,
               *, suppress_max: int = 4, rule_set: str = "spec", cascade: str = "smallest_two") -> pa.Table:
    """FFT counts and scores per period, setting, level and organisation, with NHS
    England's suppression; conformed to ``schemas.get("fft_scores")``.

    ``responses``: current FFT responses (warehouse ``fft_responses`` columns), one or
    more periods. ``sites``: ``ref_sites``. ``providers``: ``ref_providers`` (the host
    commissioner of each provider). Sorted by period, setting, level (ward, site,
    provider, commissioner, national) and org_code. ``rule_set`` ``spec`` (methods.md) or
    ``nhse`` (NHS England's rules: docs/methods-fft.md), ``cascade`` the nhse cascade's width.
    """
    nodes = fft_nodes(responses, sites, providers, suppress_max=suppress_max, rule_set=rule_set,
                      cascade=cascade)
    if nodes.empty:
        return _to_arrow(nodes, "fft_scores")
    nodes = _blank_suppressed(nodes)
    return _to_arrow(nodes, "fft_scores")


# --------------------------------------------------------------------------- linkage
_SPELL_REQUIRED = ("provider_code", "spell_id", "epiorder", "nhs_number", "nhs_number_valid", "disdate",
                   "epiend", "tretspef")
SPELL_EPISODE_COLUMNS = tuple(dict.fromkeys(_SPELL_REQUIRED + spells.EPISODE_COLUMNS + ("cds_update_type",)))
"""The episode columns :func:`spells_for_fft_linkage` reads (those after
``_SPELL_REQUIRED`` if present)."""
_SPELL_DATES = ("admidate", "epistart", "epiend", "disdate")


def spells_for_fft_linkage(episodes: TableLike, engine=None) -> pa.Table:
    """One row per hospital spell from current SUS/HES episodes: provider_code, spell_id,
    nhs_number, disdate, tretspef_last.

    Spells and their last episode are those of :mod:`pipelines.spells`, as in the
    outcomes: the given spell id, else HES's derivation (person, provider, admission date,
    cut at each discharge), else the episode alone; the last episode in order of EPIORDER
    (98, 99 and anything not an order after every real order), EPISTART, EPIEND,
    susrecid. disdate and tretspef_last come from the last episode; a spell whose last
    episode is unfinished (EPISTAT 1 or 9) has no discharge date, so no response links to
    it. nhs_number is the spell's valid NHS number: empty where no episode has one, or
    where its episodes carry two different valid numbers (we cannot tell whose spell it
    is). Deletions (cds_update_type 1) are left out if any reach this far.
    """
    if isinstance(episodes, pa.Table):  # only what a spell needs goes to pandas
        episodes = episodes.select([c for c in SPELL_EPISODE_COLUMNS if c in episodes.column_names])
    df = _frame(episodes, list(_SPELL_REQUIRED))
    if df.empty:
        return SPELLS_SCHEMA.empty_table()
    if "cds_update_type" in df.columns:
        df = df[_code(df["cds_update_type"]) != "1"]
    df = df.reset_index(drop=True)
    if df.empty:
        return SPELLS_SCHEMA.empty_table()
    cols = {}
    for c in spells.EPISODE_COLUMNS + ("tretspef",):
        if c not in df.columns:
            continue
        if c in _SPELL_DATES:
            cols[c] = pa.array(_dates(df[c]).to_numpy(), pa.timestamp("s"), from_pandas=True).cast(pa.date32())
        elif c == "nhs_number_valid":
            cols[c] = pa.array(df[c].astype("boolean").fillna(False).to_numpy(dtype=bool), pa.bool_())
        else:
            cols[c] = pa.array(list(_code(df[c])), pa.string())
    t = pa.table(cols)
    assigned = spells.assign_spells(t, engine)  # engine: runs the spells plan (None: default)
    if assigned.empty:
        return SPELLS_SCHEMA.empty_table()
    last = spells.last_episodes(assigned)
    rows = last["row"].to_numpy()
    disdate = _dates(df["disdate"]).to_numpy()[rows]
    disdate = np.where(last["unfinished"].to_numpy(dtype=bool), np.datetime64("NaT"), disdate)

    nhs = _code(df["nhs_number"]).to_numpy(dtype=object)[assigned["row"].to_numpy()]
    valid = df["nhs_number_valid"].astype("boolean").fillna(False).to_numpy(dtype=bool)[assigned["row"].to_numpy()]
    has = valid & pd.notna(nhs)
    per = pd.DataFrame({"spell": assigned["spell"].to_numpy()[has], "nhs": nhs[has]})
    numbers = per.groupby("spell")["nhs"].agg(["nunique", "first"])
    numbers = numbers[numbers["nunique"] == 1]["first"]

    out = pd.DataFrame({
        "provider_code": last["provider_code"].to_numpy(),
        "spell_id": last["spell_id"].to_numpy(),
        "nhs_number": numbers.reindex(last.index).to_numpy(),
        "disdate": disdate,
        "tretspef_last": _code(df["tretspef"]).to_numpy(dtype=object)[rows],
    }).sort_values(["provider_code", "spell_id"])
    return pa.Table.from_arrays([
        pa.array(list(_code(out["provider_code"])), pa.string()),
        pa.array(list(_code(out["spell_id"])), pa.string()),
        pa.array(list(_code(out["nhs_number"])), pa.string()),
        pa.array(out["disdate"].to_numpy(), pa.timestamp("s"), from_pandas=True).cast(pa.date32()),
        pa.array(list(_code(out["tretspef_last"])), pa.string()),
    ], schema=SPELLS_SCHEMA)


# The relational plan of the response-to-spell linkage (DuckDB's dialect; the dialect rules of
# pipelines.engine): each inpatient response with a valid NHS number joined to that person's
# spells at the same provider discharged 0..max_days days before it; the latest discharge
# wins, then the highest spell_id (then the lowest tretspef_last: a total order, so both
# engines pick the same spell).
_LINK_SQL = """
SELECT CAST(rid AS BIGINT) AS rid,
       CAST(period AS VARCHAR) AS period,
       CAST(provider_code AS VARCHAR) AS provider_code,
       CAST(response_id AS VARCHAR) AS response_id,
       CAST(tretspef_last AS VARCHAR) AS tretspef,
       CAST(response AS VARCHAR) AS response
FROM (
    SELECT r.rid, r.period, r.provider_code, r.response_id, r.response, s.tretspef_last,
           row_number() OVER (PARTITION BY r.rid
                              ORDER BY s.disdate DESC NULLS LAST, s.spell_id DESC NULLS LAST,
                                       s.tretspef_last ASC NULLS LAST) AS pick
    FROM responses r
    JOIN spells s ON r.nhs_number = s.nhs_number AND r.provider_code = s.provider_code
    WHERE r.setting = 'IP' AND r.nhs_number_valid AND r.response_date IS NOT NULL
      AND s.disdate IS NOT NULL
      AND date_diff('day', s.disdate, r.response_date) BETWEEN 0 AND {max_days}
) linked
WHERE pick = 1
"""


def _date32(series: pd.Series) -> pa.Array:
    return pa.array(_dates(series).to_numpy(), pa.timestamp("s"), from_pandas=True).cast(pa.date32())


def link_responses_to_spells(responses: TableLike, spells: TableLike, *, max_days: int = 2,
                             engine=None) -> pa.Table:
    """Inpatient (setting ``IP``) responses with a valid NHS number, each linked to that
    person's spell at the same provider discharged 0 to ``max_days`` days before the
    response date; the latest such discharge where there are several (then the highest
    spell_id). One row per linked response: period, provider_code, response_id,
    tretspef (the spell's last episode's treatment function), response.

    The codes are cleaned here (stripped, empty as missing); the join is a relational plan
    run by ``engine`` (:mod:`pipelines.engine`; None: the process's DuckDB)."""
    from pipelines.engine import default_engine

    r = _frame(responses, ["period", "provider_code", "response_id", "setting", "response_date",
                           "response", "nhs_number", "nhs_number_valid"])
    s = _frame(spells, ["nhs_number", "provider_code", "spell_id", "disdate", "tretspef_last"])
    if r.empty or s.empty:
        return LINKED_SCHEMA.empty_table()
    text = pa.string()
    resp_in = pa.table({
        "rid": pa.array(np.arange(len(r)), pa.int64()),
        **{c: pa.array(list(_code(r[c])), text)
           for c in ("period", "provider_code", "response_id", "setting", "response", "nhs_number")},
        "nhs_number_valid": pa.array(r["nhs_number_valid"].astype("boolean").fillna(False).to_numpy(dtype=bool)),
        "response_date": _date32(r["response_date"]),
    })
    spells_in = pa.table({
        **{c: pa.array(list(_code(s[c])), text) for c in ("nhs_number", "provider_code", "spell_id", "tretspef_last")},
        "disdate": _date32(s["disdate"]),
    })
    linked = (engine or default_engine()).query(
        _LINK_SQL.format(max_days=int(max_days)), {"responses": resp_in, "spells": spells_in})
    order = pc.sort_indices(linked, sort_keys=[(c, "ascending", "at_end")
                                               for c in ("period", "provider_code", "response_id", "rid")])
    return linked.take(order).drop_columns(["rid"]).cast(LINKED_SCHEMA)


def fft_by_specialty(linked: TableLike, *, suppress_max: int = 4) -> pa.Table:
    """Linked inpatient responses grouped by period, provider and the treatment function of
    the spell's last episode (``&``, not known, where it has none), with rule 1 only;
    conformed to ``schemas.get("fft_by_specialty")``."""
    df = _frame(linked, ["period", "provider_code", "tretspef", "response"])
    if df.empty:
        return _to_arrow(pd.DataFrame(columns=["period", "provider_code", "tretspef", "suppressed"]),
                         "fft_by_specialty")
    df = _answer_counts(df)
    for col in ("period", "provider_code", "tretspef"):
        df[col] = _code(df[col])
    df["tretspef"] = df["tretspef"].fillna(TRETSPEF_NOT_KNOWN)
    g = df.groupby(["period", "provider_code", "tretspef"], as_index=False)[list(COUNT_COLUMNS)].sum()
    g = _scores(g)
    g["suppressed"] = (g["responses"] >= 1) & (g["responses"] <= suppress_max)
    g = _blank_suppressed(g).sort_values(["period", "provider_code", "tretspef"], kind="mergesort")
    return _to_arrow(g.reset_index(drop=True), "fft_by_specialty")


# --------------------------------------------------------------------------- mode of collection
MODE_NOT_KNOWN = "NOT_KNOWN"
"""The mode of a response whose ``MODE`` is empty or not one of inputs.md's codes (such a
value is kept with a warning at ingest; supplier text never reaches the public zone)."""
MODE_LEVELS = ("provider", "national")


def _mode_complements(cells: pd.DataFrame) -> pd.Series:
    """Secondary suppression of the mode cells of one period and setting, to a fixed point.

    The modes of an organisation add up to its responses (published in ``fft_scores``) and
    the providers' cells of one mode add up to the national cell of that mode (never
    suppressed). So, as rule 2 does for a parent's children: wherever exactly one cell of a
    provider's modes, or of a mode's providers, is suppressed, the unsuppressed cell with
    the fewest responses in that group is suppressed too (ties: ascending mode, then
    ascending org_code); repeated until no group has exactly one (each pass only adds).
    The only cell of a provider whose ``fft_scores`` row is published equals that published
    total, so it is never taken as a complement (it would hide nothing); ``cells`` carries
    ``_parent_suppressed`` for this."""
    sup = cells["suppressed"].copy()
    prov = cells["level"] == "provider"
    n_modes = cells[prov].groupby("org_code")["mode"].transform("size")
    known = pd.Series(False, index=cells.index)
    known.loc[n_modes.index] = (n_modes == 1) & ~cells.loc[n_modes.index, "_parent_suppressed"]
    groups = (("org_code", "mode"), ("mode", "org_code"))
    changed = True
    while changed:
        changed = False
        for by, tie in groups:
            sub = cells[prov].assign(_s=sup[prov])
            for _, g in sub.groupby(by, sort=True):
                if int(g["_s"].sum()) != 1:
                    continue
                free = g[~g["_s"] & ~known.loc[g.index]]
                if free.empty:
                    continue
                pick = free.sort_values(["responses", tie], kind="mergesort").index[0]
                sup.loc[pick] = True
                changed = True
    return sup


def fft_mode(responses: TableLike, providers: TableLike | None, *, suppress_max: int = 4,
             sites: TableLike | None = None, rule_set: str = "spec", cascade: str = "smallest_two") -> pa.Table:
    """Responses by mode of collection (``MODE``: SMS, PAPER, ONLINE, TABLET, PHONE, OTHER,
    and ``NOT_KNOWN``), per period, setting, provider and nationally, as NHS England
    publishes the mode breakdown (trusts and England), with ``pct_positive`` and
    ``pct_negative`` of each cell; conformed to ``schemas.get("fft_mode")``.

    Suppression below national (docs/methods-fft.md, "Mode of collection"): every cell of a
    provider whose ``fft_scores`` row is suppressed (NHS England's rule: the mode columns go
    with the trust's row); a cell of 1 to ``suppress_max`` responses (rule 1); then
    :func:`_mode_complements` so that no suppressed cell can be found by subtraction from
    the provider's total or the national cell. A suppressed cell has ``responses`` and both
    percentages empty. Rows exist only for modes with responses (0 is never written).
    ``sites``, ``rule_set`` and ``cascade``: as given to :func:`fft_scores`, so that a
    provider is suppressed here exactly when its ``fft_scores`` row is (under ``nhse`` a
    cascade can suppress a provider of many responses: its mode cells add up to it)."""
    df = _frame(responses, ["period", "provider_code", "site_code", "ward_code", "setting", "response"])
    empty_cols = ["period", "setting", "level", "org_code", "mode", "responses", "suppressed"]
    if df.empty:
        return _to_arrow(pd.DataFrame(columns=empty_cols), "fft_mode")
    from pipelines.schemas.inputs import FFT_MODES

    nodes = fft_nodes(df, sites, providers, suppress_max=suppress_max, rule_set=rule_set, cascade=cascade)
    prov_sup = nodes[nodes["level"] == "provider"].set_index(["period", "setting", "org_code"])["suppressed"]
    df = _answer_counts(df)
    for col in ("period", "setting", "provider_code"):
        df[col] = _code(df[col])
    mode = _code(df["mode"]) if "mode" in df.columns else pd.Series(None, index=df.index, dtype=object)
    mode = mode.str.upper()
    df["mode"] = mode.where(mode.isin(FFT_MODES), MODE_NOT_KNOWN)
    counts = list(COUNT_COLUMNS)
    by_prov = df.groupby(["period", "setting", "provider_code", "mode"], as_index=False)[counts].sum()
    by_prov = by_prov.rename(columns={"provider_code": "org_code"}).assign(level="provider")
    nat = df.groupby(["period", "setting", "mode"], as_index=False)[counts].sum().assign(
        level="national", org_code=NATIONAL_CODE)
    cells = _scores(pd.concat([by_prov, nat], ignore_index=True))
    below = cells["level"] != "national"
    parent_sup = pd.Series(
        [bool(prov_sup.get((p, s, o), False)) for p, s, o in zip(cells["period"], cells["setting"], cells["org_code"])],
        index=cells.index)
    rule1 = below & (cells["responses"] >= 1) & (cells["responses"] <= suppress_max)
    cells["suppressed"] = below & (parent_sup | rule1)
    cells["_parent_suppressed"] = parent_sup
    parts = []
    for _, g in cells.groupby(["period", "setting"], sort=False):
        g = g.copy()
        g["suppressed"] = _mode_complements(g)
        parts.append(g)
    cells = pd.concat(parts).drop(columns="_parent_suppressed")
    cells = _blank_suppressed(cells)
    cells["_lvl"] = cells["level"].map(_LEVEL_ORDER)
    cells = cells.sort_values(["period", "setting", "_lvl", "org_code", "mode"], kind="mergesort")
    return _to_arrow(cells.drop(columns="_lvl").reset_index(drop=True), "fft_mode")
