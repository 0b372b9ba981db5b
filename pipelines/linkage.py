"""Record linkage of SUS episodes to GP registrations, and care.data linkage coverage.

methods.md "Record linkage" and "care.data linkage coverage"; outputs.md
``linkage_coverage_*``, ``programme_targets`` and the restricted ``linked_episodes``.
The choices made where the spec is silent are written down in docs/methods-linkage.md.

Each step is one relational plan (a SELECT in DuckDB's dialect, CTEs for its working
sets) that an engine runs (``engine``; None -> :func:`pipelines.engine.default_engine`,
DuckDB in process; Spark through SQLGlot). The GP rows may be given as a lazy
``pyarrow.dataset.Dataset`` over the extracts' Parquet parts
(:func:`pipelines.current.gp_current_lazy`): on a local store they go to the engine as
:class:`pipelines.engine.Parquet` and the engine scans the files itself, keeping only
the rows of patients who can link, so memory does not grow with the GP list. DuckDB
runs under a memory limit (``CAREDATA_DUCKDB_MEMORY_LIMIT``, default 4GB) and spills to
a temporary folder beyond it. No Dagster here: the assets call these functions.

* :func:`link_episodes`: match rank 1-5 of each episode against the patients of the GP
  extracts (a patient = one NHS number, over all practices), the registration covering
  the episode start, and the patient's LSOA, date of death and type 2 objection.
* :func:`coverage`: the four public coverage datasets of a period, unsuppressed
  (publishing applies disclosure control from the declarations).
* :func:`linked_episodes_restricted`: the pseudonymised record-level episodes, without any
  episode of a type 2 objector.

Nothing here logs or raises with an NHS number, a postcode or a date of birth in it.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from pyarrow import fs as pafs

from expectations.rules import PRACTICE_PLACEHOLDERS
from pipelines import plans, pseudo, schemas
from pipelines.engine import DuckDBEngine, Engine, Input, Parquet
from pipelines.warehouse import selected_submissions

__all__ = [
    "LINK_COLUMNS",
    "link_episodes",
    "coverage",
    "linked_episodes_restricted",
    "mark_type2",
]

# Columns link_episodes adds to the episodes.
LINK_COLUMNS = (
    "match_rank",
    "linked_nhs_number",
    "registered_practice",
    "lsoa",
    "date_of_death",
    "type2_objection",
    "linked_date_of_birth",
)

# The columns each function reads, with their types; absent optional columns are read as
# all-empty (so a feed without MYDOB or HOMEADD still links on what it has).
_EPISODE_IN = {
    "nhs_number": pa.string(),
    "nhs_number_valid": pa.bool_(),
    "dob": pa.date32(),
    "birth_year": pa.int64(),
    "birth_month": pa.int64(),
    "sex": pa.string(),
    "postcode": pa.string(),
    "gpprac": pa.string(),
    "epistart": pa.date32(),
}
_EPISODE_REQUIRED = ("epistart",)

_GP_IN = {
    "practice_code": pa.string(),
    "extract_date": pa.date32(),
    "nhs_number": pa.string(),
    "nhs_number_valid": pa.bool_(),
    "date_of_birth": pa.date32(),
    "sex": pa.string(),
    "postcode": pa.string(),
    "lsoa": pa.string(),
    "registration_date": pa.date32(),
    "deregistration_date": pa.date32(),
    "date_of_death": pa.date32(),
    "type2_objection": pa.bool_(),
    "line": pa.int64(),
}
_GP_REQUIRED = ("practice_code", "nhs_number")

_LINKED_IN = {
    "provider_code": pa.string(),
    "epiend": pa.date32(),
    "nhs_number_valid": pa.bool_(),
    "nhsnoind": pa.string(),
    "gpprac": pa.string(),
    "match_rank": pa.int64(),
    "registered_practice": pa.string(),
}

_PRACTICES_IN = {
    "practice_code": pa.string(),
    "status": pa.string(),
    "prescribing_setting": pa.string(),
    "commissioner_code": pa.string(),
}
_PROVIDERS_IN = {"provider_code": pa.string(), "commissioner_code": pa.string()}
_EXTRACTS_IN = {
    "submission_id": pa.string(),
    "practice_code": pa.string(),
    "extract_date": pa.date32(),
    "type1_objections": pa.int64(),
    "type2_objections": pa.int64(),
    "held": pa.bool_(),
}
_GP_PERIOD_IN = {
    "practice_code": pa.string(),
    "extract_date": pa.date32(),
    "line": pa.int64(),
    "nhs_number": pa.string(),
    "registration_date": pa.date32(),
    "deregistration_date": pa.date32(),
    "date_of_death": pa.date32(),
}

# Normalisations shared by both sides of every comparison.
_SEX = "CASE WHEN trim({c}) IN ('1', '2') THEN trim({c}) END"  # 0 and 9 never agree
_POSTCODE = r"NULLIF(upper(regexp_replace({c}, '\s', '', 'g')), '')"
_CODE = "NULLIF(upper(trim({c})), '')"
NO_PRACTICE = PRACTICE_PLACEHOLDERS + ("&",)
"""GPPRAC values meaning "no practice / not known" (inputs.md): such an episode is in no
practice's expected episodes."""
_NO_PRACTICE_SQL = ", ".join(f"'{c}'" for c in NO_PRACTICE)


# --------------------------------------------------------------------------- helpers
_slim = plans.slim


def _gp_input(gp, columns: dict[str, pa.DataType], required: tuple[str, ...], what: str,
              valid_only: bool = False) -> Input:
    """GP rows as an engine input with exactly ``columns`` typed as given (absent optional
    columns null): a ``pa.Table`` is sliced to them; a Parquet ``pyarrow.dataset`` on the
    local file system becomes :class:`Parquet` (the engine scans the files itself, reading
    only the columns and rows the plan asks for); one on another file system (S3) is read
    here, only those columns (and, ``valid_only``, only rows with a valid NHS number: the
    plan reads no other). Only column names go into an error."""
    if isinstance(gp, pa.Table):
        return _slim(gp, columns, required, what)
    if not isinstance(gp, pads.Dataset):
        raise TypeError(f"{what}: expected a pyarrow Table or Dataset, got {type(gp).__name__}")
    missing = [c for c in required if c not in gp.schema.names]
    if missing:
        raise ValueError(f"{what}: missing columns {missing}")
    schema = pa.schema([pa.field(n, t) for n, t in columns.items()])
    if isinstance(gp, pads.FileSystemDataset) and isinstance(gp.filesystem, pafs.LocalFileSystem):
        # a dataset of the chosen extracts' rows of parts shared with others: the same filter
        sids = selected_submissions(gp)
        return Parquet(tuple(gp.files), schema, where=None if sids is None else ("submission_id", sids))
    present = [c for c in columns if c in gp.schema.names]
    keep = (pc.field("nhs_number").is_valid() & pc.field("nhs_number_valid")) if valid_only else None
    return _slim(gp.to_table(columns=present, filter=keep), columns, required, what)


def _engine(engine: Engine | None, memory_limit: str | None):
    """The engine to run on, and whether it is ours to close: ``engine``; else, with a
    ``memory_limit``, a DuckDB of that limit for this call; else the default engine."""
    if engine is None and memory_limit is not None:
        return DuckDBEngine(memory_limit=memory_limit), True
    return plans.engine_or_default(engine), False


def _period_bounds(period: str) -> tuple[dt.date, dt.date]:
    if not isinstance(period, str) or not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", period):
        raise ValueError(f"period must be YYYY-MM, got {period!r}")
    year, month = int(period[:4]), int(period[5:])
    return dt.date(year, month, 1), dt.date(year, month, calendar.monthrange(year, month)[1])


def _as_date(value) -> dt.date | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))


def _sql_date(value: dt.date) -> str:
    return f"DATE '{value.isoformat()}'"


def _conform_public(name: str, table: pa.Table) -> pa.Table:
    """Conform to a public declaration as *staged*: computed, not yet disclosure-controlled,
    without the ``<count>_suppressed`` flags that publishing adds."""
    return schemas.get(name).conform(table, staged=True)


# --------------------------------------------------------------------------- linkage
_GP_VALID = "g.nhs_number IS NOT NULL AND coalesce(g.nhs_number_valid, false)"

# The whole linkage, one SELECT. Working sets:
#   ep     the episodes, normalised; the keys the GP rows are looked up by
#   k5     DOB, sex and postcode of the episodes without a valid NHS number (rank 5
#          candidates must agree on all three, so an episode missing one cannot be rank 5)
#   want   the patients (NHS numbers) whose GP rows can matter: the episodes' valid numbers,
#          and every patient with a row agreeing with k5 (all their rows are kept, so rank 5
#          still counts every candidate patient, and a rank 5 patient's other rows, another
#          address, still give registration, LSOA, death and objection)
#   gp     every row of the wanted patients, normalised: the one scan of the GP rows that
#          is kept (the engine reads the rest and drops it); every later step reads only it
#   links  ranks 1-4: the patient with the episode's valid NHS number (never another one),
#          the rank the best agreement with any one of that patient's GP rows; rank 5: no
#          valid NHS number on the episode, and DOB, sex and postcode agree with the rows of
#          exactly one patient (distinct NHS numbers)
#   pat_*  what is kept of each patient met: type 2 objection in any row, date of death
#          (newest extract that records one, earliest on a tie), LSOA of the most recent
#          registration that has one, date of birth in the newest extract
#   cover  the registration covering EPISTART: started on or before it and not ended on or
#          before it; where several cover it (a move not yet recorded by the old practice),
#          the practice the hospital recorded (GPPRAC) first, then the latest registration
# Ties are broken by values, never by the order rows arrive in (it differs between engines):
# practice, then the row's line in its extract, then the value taken.
_LINK_SQL = rf"""
WITH ep AS (
    SELECT
        __row,
        CASE WHEN coalesce(nhs_number_valid, false) AND nhs_number IS NOT NULL THEN nhs_number END AS e_nhs,
        dob AS e_dob,
        coalesce(year(dob), birth_year) AS e_by,
        coalesce(month(dob), birth_month) AS e_bm,
        {_SEX.format(c="sex")} AS e_sex,
        {_POSTCODE.format(c="postcode")} AS e_pc,
        {_CODE.format(c="gpprac")} AS e_gpprac,
        epistart
    FROM ep_in
), k5 AS (
    SELECT DISTINCT e_dob, e_sex, e_pc FROM ep
    WHERE e_nhs IS NULL AND e_dob IS NOT NULL AND e_sex IS NOT NULL AND e_pc IS NOT NULL
), want AS (
    SELECT e_nhs AS nhs FROM ep WHERE e_nhs IS NOT NULL
    UNION
    SELECT g.nhs_number AS nhs FROM gp_in g
    SEMI JOIN k5 ON g.date_of_birth = k5.e_dob
        AND {_SEX.format(c="g.sex")} = k5.e_sex
        AND {_POSTCODE.format(c="g.postcode")} = k5.e_pc
    WHERE {_GP_VALID}
), gp AS (
    SELECT
        g.nhs_number AS nhs,
        {_CODE.format(c="g.practice_code")} AS practice,
        g.extract_date,
        g.date_of_birth AS g_dob,
        {_SEX.format(c="g.sex")} AS g_sex,
        {_POSTCODE.format(c="g.postcode")} AS g_pc,
        NULLIF(trim(g.lsoa), '') AS lsoa,
        g.registration_date,
        g.deregistration_date,
        g.date_of_death,
        coalesce(g.type2_objection, false) AS t2,
        g.line
    FROM gp_in g
    WHERE {_GP_VALID} AND g.nhs_number IN (SELECT nhs FROM want)
), t2n AS (
    SELECT DISTINCT nhs FROM t2n_in WHERE nhs IS NOT NULL
), links AS (
    SELECT e.__row, g.nhs,
        min(CASE
            WHEN g.g_dob = e.e_dob AND g.g_sex = e.e_sex AND g.g_pc = e.e_pc THEN 1
            WHEN g.g_dob = e.e_dob AND g.g_sex = e.e_sex THEN 2
            WHEN year(g.g_dob) = e.e_by AND month(g.g_dob) = e.e_bm AND g.g_sex = e.e_sex THEN 3
            ELSE 4
        END) AS match_rank
    FROM ep e JOIN gp g ON g.nhs = e.e_nhs
    GROUP BY e.__row, g.nhs
    UNION ALL
    SELECT e.__row, min(g.nhs) AS nhs, 5 AS match_rank
    FROM ep e JOIN gp g ON g.g_dob = e.e_dob AND g.g_sex = e.e_sex AND g.g_pc = e.e_pc
    WHERE e.e_nhs IS NULL
    GROUP BY e.__row
    HAVING count(DISTINCT g.nhs) = 1
), pat_t2 AS (
    SELECT nhs, bool_or(t2) AS t2 FROM gp GROUP BY nhs
), pat_dod AS (
    SELECT nhs, date_of_death AS dod FROM (
        SELECT nhs, date_of_death,
            row_number() OVER (PARTITION BY nhs ORDER BY extract_date DESC, date_of_death) AS rn
        FROM gp WHERE date_of_death IS NOT NULL
    ) x WHERE rn = 1
), pat_lsoa AS (
    SELECT nhs, lsoa AS lsoa_latest FROM (
        SELECT nhs, lsoa,
            row_number() OVER (PARTITION BY nhs ORDER BY registration_date DESC NULLS LAST,
                extract_date DESC, practice NULLS LAST, line NULLS LAST, lsoa) AS rn
        FROM gp WHERE lsoa IS NOT NULL
    ) x WHERE rn = 1
), pat_dob AS (
    SELECT nhs, g_dob AS dob_latest FROM (
        SELECT nhs, g_dob,
            row_number() OVER (PARTITION BY nhs ORDER BY extract_date DESC, practice NULLS LAST,
                line NULLS LAST, g_dob) AS rn
        FROM gp WHERE g_dob IS NOT NULL
    ) x WHERE rn = 1
), cover AS (
    SELECT __row, practice, lsoa FROM (
        SELECT l.__row, g.practice, g.lsoa,
            row_number() OVER (
                PARTITION BY l.__row
                ORDER BY coalesce(g.practice = e.e_gpprac, false) DESC,
                         g.registration_date DESC, g.extract_date DESC, g.practice NULLS LAST,
                         g.line NULLS LAST, g.lsoa NULLS LAST
            ) AS rn
        FROM links l
        JOIN ep e ON e.__row = l.__row
        JOIN gp g ON g.nhs = l.nhs
        WHERE g.registration_date <= e.epistart
          AND (g.deregistration_date IS NULL OR g.deregistration_date > e.epistart)
    ) x WHERE rn = 1
)
SELECT
    CAST(e.__row AS BIGINT) AS __row,
    CAST(l.match_rank AS BIGINT) AS match_rank,
    CAST(l.nhs AS VARCHAR) AS linked_nhs_number,
    CAST(c.practice AS VARCHAR) AS registered_practice,
    CAST(CASE WHEN l.nhs IS NOT NULL THEN coalesce(c.lsoa, pl.lsoa_latest) END AS VARCHAR) AS lsoa,
    CAST(pd.dod AS DATE) AS date_of_death,
    CAST(coalesce(pt.t2, false) OR coalesce(pt_own.t2, false)
        OR tl.nhs IS NOT NULL OR te.nhs IS NOT NULL AS BOOLEAN) AS type2_objection,
    -- the linked GP record's date of birth (newest extract), ranks 1 to 4 only: where the
    -- episode has neither DOB nor MYDOB, age at admission comes from it (methods.md)
    CAST(CASE WHEN l.match_rank BETWEEN 1 AND 4 THEN pb.dob_latest END AS DATE) AS linked_date_of_birth
FROM ep e
LEFT JOIN links l ON l.__row = e.__row
LEFT JOIN cover c ON c.__row = e.__row
LEFT JOIN pat_t2 pt ON pt.nhs = l.nhs
LEFT JOIN pat_t2 pt_own ON pt_own.nhs = e.e_nhs
LEFT JOIN pat_dod pd ON pd.nhs = l.nhs
LEFT JOIN pat_lsoa pl ON pl.nhs = l.nhs
LEFT JOIN pat_dob pb ON pb.nhs = l.nhs
LEFT JOIN t2n tl ON tl.nhs = l.nhs
LEFT JOIN t2n te ON te.nhs = e.e_nhs
ORDER BY e.__row
"""


def _numbers(values) -> pa.Array:
    """Distinct non-empty strings of an Arrow array or any iterable of strings."""
    if values is None:
        return pa.array([], pa.string())
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        arr = pc.drop_null(values.cast(pa.string()))
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        arr = pc.unique(arr)
    else:
        arr = pa.array(sorted({v for v in values if isinstance(v, str)}), pa.string())
    return arr.filter(pc.not_equal(arr, ""))


def mark_type2(linked: pa.Table, type2_numbers) -> pa.Table:
    """``linked`` (the output of :func:`link_episodes`) with ``type2_objection`` also set
    on every episode whose own valid NHS number, or linked patient's number, is one of
    ``type2_numbers`` (:func:`pipelines.current.gp_type2_numbers`). Applied again when the
    restricted datasets are released, so an objection that arrived after a period was
    linked still keeps that period's episodes out."""
    numbers = _numbers(type2_numbers)
    flag = (pc.fill_null(linked.column("type2_objection"), False) if "type2_objection" in linked.column_names
            else pa.array([False] * linked.num_rows, pa.bool_()))
    if len(numbers) and linked.num_rows:
        if "nhs_number" in linked.column_names:
            own = pc.is_in(linked.column("nhs_number").cast(pa.string()), value_set=numbers)
            if "nhs_number_valid" in linked.column_names:
                own = pc.and_(own, pc.fill_null(linked.column("nhs_number_valid"), False))
            flag = pc.or_(flag, pc.fill_null(own, False))
        if "linked_nhs_number" in linked.column_names:
            flag = pc.or_(flag, pc.fill_null(
                pc.is_in(linked.column("linked_nhs_number").cast(pa.string()), value_set=numbers), False))
    if "type2_objection" in linked.column_names:
        i = linked.schema.get_field_index("type2_objection")
        return linked.set_column(i, pa.field("type2_objection", pa.bool_()), flag)
    return linked.append_column(pa.field("type2_objection", pa.bool_()), flag)


def link_episodes(episodes: pa.Table, gp_patients, *, type2_numbers=None,
                  memory_limit: str | None = None, engine: Engine | None = None) -> pa.Table:
    """Link each episode to a GP-registered patient (methods.md "Record linkage").

    ``episodes``: current SUS episodes (warehouse ``sus_episodes`` columns).
    ``gp_patients``: the rows of each practice's newest extract (warehouse ``gp_patients``),
    as a ``pa.Table`` or, at national scale, a lazy ``pyarrow.dataset.Dataset`` over
    their Parquet parts (:func:`pipelines.current.gp_current_lazy`), which the engine
    scans itself (twice when an episode has no valid NHS number), keeping only the rows of
    patients who can be linked, so memory follows the episodes, not the GP list.
    ``type2_numbers``: NHS numbers of type 2 objectors found in any GP extract taken in
    or held, rows kept or quarantined (:func:`pipelines.current.gp_type2_numbers`): an
    episode whose own valid number or linked patient is one of them is flagged
    ``type2_objection`` even where no current GP row says so.
    ``engine``: runs the plan (:data:`_LINK_SQL`; None -> the default engine; with a
    ``memory_limit``, a DuckDB of that limit for this call).

    Returns ``episodes`` unchanged, in the same order, with :data:`LINK_COLUMNS` added
    (replaced if already there): ``match_rank`` (1-5, null = unlinked),
    ``linked_nhs_number``, ``registered_practice`` (registration covering EPISTART, else
    null), ``lsoa``, ``date_of_death`` (the linked patient's), ``type2_objection``
    (True when the linked patient, or the owner of the episode's own valid NHS number,
    has a type 2 objection in any GP row or is in ``type2_numbers``) and ``linked_date_of_birth`` (ranks 1 to 4:
    the linked patient's date of birth in their newest extract, for age at admission
    where the episode has neither DOB nor MYDOB; internal, never published).
    """
    ep_in = _slim(episodes, _EPISODE_IN, _EPISODE_REQUIRED, "episodes")
    ep_in = ep_in.append_column("__row", pa.array(range(episodes.num_rows), pa.int64()))
    gp_in = _gp_input(gp_patients, _GP_IN, _GP_REQUIRED, "gp_patients", valid_only=True)
    run, own = _engine(engine, memory_limit)
    try:
        result = run.query(_LINK_SQL, {"ep_in": ep_in, "gp_in": gp_in,
                                       "t2n_in": pa.table({"nhs": _numbers(type2_numbers)})})
    finally:
        if own:
            run.close()

    out = episodes.drop_columns([c for c in LINK_COLUMNS if c in episodes.column_names])
    types = {
        "match_rank": pa.int64(),
        "linked_nhs_number": pa.string(),
        "registered_practice": pa.string(),
        "lsoa": pa.string(),
        "date_of_death": pa.date32(),
        "type2_objection": pa.bool_(),
        "linked_date_of_birth": pa.date32(),
    }
    for name in LINK_COLUMNS:
        out = out.append_column(pa.field(name, types[name]), result.column(name).cast(types[name]))
    return out


_DEATH_COLUMNS = {"nhs_number": pa.string(), "nhs_number_valid": pa.bool_(), "extract_date": pa.date32(),
                  "date_of_death": pa.date32(), "type2_objection": pa.bool_()}

_DEATHS_SQL = f"""
WITH d AS (
    SELECT g.nhs_number, g.extract_date, g.date_of_death, coalesce(g.type2_objection, false) AS t2
    FROM gp_in g
    WHERE {_GP_VALID} AND g.date_of_death IS NOT NULL
      AND g.nhs_number IN (SELECT nhs FROM wanted)
), newest AS (
    SELECT nhs_number, date_of_death FROM (
        SELECT nhs_number, date_of_death,
            row_number() OVER (PARTITION BY nhs_number ORDER BY extract_date DESC, date_of_death) AS rn
        FROM d
    ) x WHERE rn = 1
), t2 AS (
    SELECT nhs_number, bool_or(t2) AS t2 FROM d GROUP BY nhs_number
)
SELECT CAST(n.nhs_number AS VARCHAR) AS nhs_number,
       CAST(n.date_of_death AS DATE) AS date_of_death,
       CAST(t2.t2 AS BOOLEAN) AS type2_objection
FROM newest n JOIN t2 ON t2.nhs_number = n.nhs_number
ORDER BY n.nhs_number
"""


def gp_deaths(gp_patients, nhs_numbers, engine: Engine | None = None) -> pa.Table:
    """The GP-recorded date of death of each of ``nhs_numbers`` (an Arrow array, or any
    iterable of strings; nulls and blanks ignored) found dead in
    ``gp_patients`` (a ``pa.Table`` or a lazy Parquet dataset, as for
    :func:`link_episodes`: typically the extracts of
    :func:`pipelines.current.gp_death_extracts`, older ones included). Only rows with a
    valid NHS number and a ``DATE_OF_DEATH`` are read. Returns ``nhs_number``,
    ``date_of_death`` (from the patient's newest extract that has one; on a tie, the
    earliest date) and ``type2_objection`` (in any of those rows), one row per patient.
    One plan (:data:`_DEATHS_SQL`) run by ``engine``.

    Rows that carry a date of death are of patients already dead on the extract date,
    whose record can change no more: a type 1 objection made in life is on those rows, and
    such rows are never stored (inputs.md), so nothing here comes from a type 1 objector."""
    wanted = _numbers(nhs_numbers if isinstance(nhs_numbers, (pa.Array, pa.ChunkedArray))
                      else [n for n in nhs_numbers if n])
    gp_in = _gp_input(gp_patients, _DEATH_COLUMNS, _GP_REQUIRED[1:] + ("date_of_death",), "gp_patients",
                      valid_only=True)
    out = plans.engine_or_default(engine).query(_DEATHS_SQL, {"gp_in": gp_in, "wanted": pa.table({"nhs": wanted})})
    return out.cast(pa.schema([("nhs_number", pa.string()), ("date_of_death", pa.date32()),
                               ("type2_objection", pa.bool_())]))


# --------------------------------------------------------------------------- coverage
def coverage(
    period: str,
    linked: pa.Table,
    practices: pa.Table,
    providers: pa.Table,
    extracts: pa.Table,
    gp_patients_period,
    settings,
    *,
    memory_limit: str | None = None,
    engine: Engine | None = None,
) -> dict[str, pa.Table]:
    """The care.data linkage coverage of ``period`` (methods.md), unsuppressed.

    ``linked``: :func:`link_episodes` output for the period's episodes (episodes whose
    EPIEND falls in another month are ignored). ``practices``: ``ref_practices``;
    ``providers``: ``ref_providers``; ``extracts``: ``gp_extracts``;
    ``gp_patients_period``: the rows of each practice's newest extract dated in the period,
    a ``pa.Table`` or a lazy ``pyarrow.dataset.Dataset`` (scanned by the engine, which
    keeps only each extract's count). ``engine``: runs the plans (None -> the default
    engine; with a ``memory_limit``, a DuckDB of that limit for this call).

    Returns ``linkage_coverage_practice``, ``linkage_coverage_provider``,
    ``linkage_coverage_summary``, ``programme_targets`` and ``linkage_quality``
    (:func:`linkage_quality`), each conformed to its
    declaration as staged (with ``period``; no ``*_suppressed`` flags: publishing applies
    disclosure control from the declarations).
    """
    start, end = _period_bounds(period)
    practice_pct = float(settings.t("linkage", "practice_linked_pct"))
    standard_pct = float(settings.t("linkage", "nhs_number_standard_pct"))
    p_start, p_end = _sql_date(start), _sql_date(end)
    run, own = _engine(engine, memory_limit)
    try:
        lk = run.query(_COVERAGE_EPISODES_SQL.format(p_start=p_start, p_end=p_end), {
            "lk_in": _slim(linked, _LINKED_IN, ("provider_code", "epiend", "match_rank"), "linked")})
        practice = run.query(_COVERAGE_PRACTICE_SQL.format(period=period, p_start=p_start, p_end=p_end,
                                                           practice_pct=repr(practice_pct)), {
            "lk_in": lk,
            "prac_in": _slim(practices, _PRACTICES_IN, ("practice_code",), "practices"),
            "ext_in": _slim(extracts, _EXTRACTS_IN, ("practice_code", "extract_date"), "extracts"),
            "gpp_in": _gp_input(gp_patients_period, _GP_PERIOD_IN, ("practice_code", "extract_date"),
                                "gp_patients_period"),
        })
        provider = run.query(_COVERAGE_PROVIDER_SQL.format(period=period, standard_pct=repr(standard_pct)), {
            "lk_in": lk, "prov_in": _slim(providers, _PROVIDERS_IN, ("provider_code",), "providers")})
        summary = run.query(_COVERAGE_SUMMARY_SQL.format(period=period),
                            {"practice_out": practice, "provider_out": provider})
        quality = linkage_quality(period, linked, engine=run)
    finally:
        if own:
            run.close()

    targets = _programme_targets(period, summary, settings)
    return {
        "linkage_coverage_practice": _conform_public("linkage_coverage_practice", practice),
        "linkage_coverage_provider": _conform_public("linkage_coverage_provider", provider),
        "linkage_coverage_summary": _conform_public("linkage_coverage_summary", summary),
        "programme_targets": _conform_public("programme_targets", targets),
        "linkage_quality": quality,
    }


# The period's episodes (EPIEND in the period), normalised for coverage.
_COVERAGE_EPISODES_SQL = f"""
SELECT CAST({_CODE.format(c="provider_code")} AS VARCHAR) AS provider_code,
       CAST(coalesce(nhs_number_valid, false) AS BOOLEAN) AS valid,
       CAST(coalesce(trim(nhsnoind) = '01', false) AS BOOLEAN) AS verified,
       CAST(CASE WHEN {_CODE.format(c="gpprac")} IN ({_NO_PRACTICE_SQL}) THEN NULL
                 ELSE {_CODE.format(c="gpprac")} END AS VARCHAR) AS gpprac,
       CAST(match_rank AS BIGINT) AS match_rank,
       CAST({_CODE.format(c="registered_practice")} AS VARCHAR) AS registered_practice
FROM lk_in WHERE epiend BETWEEN {{p_start}} AND {{p_end}}
"""

# Per active practice (status A, prescribing setting 4): its newest extract dated in the
# period (held extracts do not count), the patients registered on the extract date (started
# on or before it, not deregistered or dead on or before it; a patient with two rows in one
# extract counts once; the engine scans the extract rows and keeps only the counts), and
# practice linkage: of the episodes whose GPPRAC is the practice, those linked to a patient
# whose registration at that practice covers EPISTART (link_episodes picks the GPPRAC
# practice first among covering registrations, so that is registered_practice = gpprac).
_COVERAGE_PRACTICE_SQL = f"""
WITH act AS (
    SELECT {_CODE.format(c="practice_code")} AS practice, min(commissioner_code) AS commissioner_code
    FROM prac_in
    WHERE trim(status) = 'A' AND trim(prescribing_setting) = '4'
      AND coalesce({_CODE.format(c="practice_code")} NOT IN ({_NO_PRACTICE_SQL}), true)
    GROUP BY {_CODE.format(c="practice_code")}
), chosen AS (
    SELECT practice, extract_date, type1_objections, type2_objections FROM (
        SELECT {_CODE.format(c="practice_code")} AS practice, extract_date,
               type1_objections, type2_objections,
               row_number() OVER (PARTITION BY {_CODE.format(c="practice_code")}
                                  ORDER BY extract_date DESC, submission_id DESC NULLS LAST) AS rn
        FROM ext_in
        WHERE extract_date BETWEEN {{p_start}} AND {{p_end}} AND NOT coalesce(held, false)
    ) x WHERE rn = 1
), reg AS (
    SELECT c.practice,
           count(DISTINCT coalesce(g.nhs_number, 'line:' || coalesce(CAST(g.line AS VARCHAR), '?'))) AS registered
    FROM gpp_in g
    JOIN chosen c ON upper(trim(g.practice_code)) = c.practice AND g.extract_date = c.extract_date
    WHERE (g.registration_date IS NULL OR g.registration_date <= c.extract_date)
      AND (g.deregistration_date IS NULL OR g.deregistration_date > c.extract_date)
      AND (g.date_of_death IS NULL OR g.date_of_death > c.extract_date)
    GROUP BY c.practice
), pe AS (
    SELECT gpprac AS practice, count(*) AS expected,
           count(*) FILTER (WHERE match_rank IS NOT NULL AND registered_practice = gpprac) AS linked
    FROM lk_in WHERE gpprac IS NOT NULL GROUP BY gpprac
)
SELECT CAST('{{period}}' AS VARCHAR) AS period,
       CAST(a.practice AS VARCHAR) AS practice_code,
       CAST(a.commissioner_code AS VARCHAR) AS commissioner_code,
       CAST(c.practice IS NOT NULL AS BOOLEAN) AS extract_received,
       CAST(c.extract_date AS DATE) AS extract_date,
       CAST(CASE WHEN c.practice IS NOT NULL THEN coalesce(r.registered, 0) END AS BIGINT) AS registered_patients,
       CAST(c.type1_objections AS BIGINT) AS type1_objections,
       CAST(c.type2_objections AS BIGINT) AS type2_objections,
       CAST(coalesce(pe.expected, 0) AS BIGINT) AS episodes_expected,
       CAST(coalesce(pe.linked, 0) AS BIGINT) AS episodes_linked,
       CAST(CASE WHEN coalesce(pe.expected, 0) > 0
                 THEN CAST(100 * pe.linked AS DOUBLE) / pe.expected END AS DOUBLE) AS pct_linked,
       CAST(c.practice IS NOT NULL
            AND coalesce(CAST(100 * pe.linked AS DOUBLE) / pe.expected >= {{practice_pct}}, false) AS BOOLEAN)
           AS linked_to_hospital_data
FROM act a
LEFT JOIN chosen c ON c.practice = a.practice
LEFT JOIN reg r ON r.practice = a.practice
LEFT JOIN pe ON pe.practice = a.practice
ORDER BY a.practice NULLS LAST
"""

_RANK_COLUMNS = ",\n".join(
    f"count(*) FILTER (WHERE l.match_rank = {k}) AS linked_rank_{k}" for k in range(1, 6))

_COVERAGE_PROVIDER_SQL = f"""
            WITH host AS (
                SELECT {_CODE.format(c="provider_code")} AS provider_code, min(commissioner_code) AS commissioner_code
                FROM prov_in GROUP BY {_CODE.format(c="provider_code")}
            ), agg AS (
                SELECT l.provider_code,
                       count(*) AS episodes,
                       count(*) FILTER (WHERE l.valid) AS episodes_valid_nhs_number,
                       count(*) FILTER (WHERE l.verified) AS episodes_verified_nhs_number,
                       count(*) FILTER (WHERE l.match_rank IS NOT NULL) AS episodes_linked,
                       {_RANK_COLUMNS}
                FROM lk_in l WHERE l.provider_code IS NOT NULL GROUP BY l.provider_code
            )
            SELECT CAST('{{period}}' AS VARCHAR) AS period,
                   CAST(agg.provider_code AS VARCHAR) AS provider_code,
                   CAST(host.commissioner_code AS VARCHAR) AS commissioner_code,
                   CAST(agg.episodes AS BIGINT) AS episodes,
                   CAST(agg.episodes_valid_nhs_number AS BIGINT) AS episodes_valid_nhs_number,
                   CAST(CAST(100 * agg.episodes_valid_nhs_number AS DOUBLE) / agg.episodes AS DOUBLE)
                       AS pct_valid_nhs_number,
                   CAST(agg.episodes_verified_nhs_number AS BIGINT) AS episodes_verified_nhs_number,
                   CAST(CAST(100 * agg.episodes_verified_nhs_number AS DOUBLE) / agg.episodes AS DOUBLE)
                       AS pct_verified_nhs_number,
                   CAST(agg.episodes_linked AS BIGINT) AS episodes_linked,
                   CAST(CAST(100 * agg.episodes_linked AS DOUBLE) / agg.episodes AS DOUBLE) AS pct_linked,
                   CAST(agg.linked_rank_1 AS BIGINT) AS linked_rank_1, CAST(agg.linked_rank_2 AS BIGINT) AS linked_rank_2,
                   CAST(agg.linked_rank_3 AS BIGINT) AS linked_rank_3, CAST(agg.linked_rank_4 AS BIGINT) AS linked_rank_4,
                   CAST(agg.linked_rank_5 AS BIGINT) AS linked_rank_5,
                   CAST(CAST(100 * agg.episodes_valid_nhs_number AS DOUBLE) / agg.episodes >= {{standard_pct}} AS BOOLEAN)
                       AS meets_nhs_number_standard
            FROM agg LEFT JOIN host ON host.provider_code = agg.provider_code
            ORDER BY agg.provider_code
        """

_COVERAGE_SUMMARY_SQL = """
            WITH pr AS (
                SELECT 'national' AS area_level, 'ENG' AS area_code, extract_received, linked_to_hospital_data
                FROM practice_out
                UNION ALL
                SELECT 'commissioner', commissioner_code, extract_received, linked_to_hospital_data
                FROM practice_out WHERE commissioner_code IS NOT NULL
            ), pv AS (
                SELECT 'national' AS area_level, 'ENG' AS area_code, meets_nhs_number_standard FROM provider_out
                UNION ALL
                SELECT 'commissioner', commissioner_code, meets_nhs_number_standard
                FROM provider_out WHERE commissioner_code IS NOT NULL
            ), areas AS (
                SELECT 'national' AS area_level, 'ENG' AS area_code
                UNION SELECT area_level, area_code FROM pr
                UNION SELECT area_level, area_code FROM pv
            ), pa AS (
                SELECT area_level, area_code, count(*) AS practices,
                       count(*) FILTER (WHERE extract_received) AS providing,
                       count(*) FILTER (WHERE linked_to_hospital_data) AS linked
                FROM pr GROUP BY area_level, area_code
            ), va AS (
                SELECT area_level, area_code, count(*) AS providers,
                       count(*) FILTER (WHERE meets_nhs_number_standard) AS meeting
                FROM pv GROUP BY area_level, area_code
            )
            SELECT CAST('{period}' AS VARCHAR) AS period,
                   CAST(a.area_level AS VARCHAR) AS area_level,
                   CAST(a.area_code AS VARCHAR) AS area_code,
                   CAST(coalesce(pa.practices, 0) AS BIGINT) AS practices,
                   CAST(coalesce(pa.providing, 0) AS BIGINT) AS practices_providing_extract,
                   CAST(CASE WHEN pa.practices > 0 THEN CAST(100 * pa.providing AS DOUBLE) / pa.practices END AS DOUBLE)
                       AS pct_practices_providing_extract,
                   CAST(coalesce(pa.linked, 0) AS BIGINT) AS practices_linked,
                   CAST(CASE WHEN pa.practices > 0 THEN CAST(100 * pa.linked AS DOUBLE) / pa.practices END AS DOUBLE)
                       AS pct_practices_linked,
                   CAST(coalesce(va.providers, 0) AS BIGINT) AS providers,
                   CAST(coalesce(va.meeting, 0) AS BIGINT) AS providers_meeting_nhs_number_standard,
                   CAST(CASE WHEN va.providers > 0 THEN CAST(100 * va.meeting AS DOUBLE) / va.providers END AS DOUBLE)
                       AS pct_providers_meeting_nhs_number_standard
            FROM areas a
            LEFT JOIN pa ON pa.area_level = a.area_level AND pa.area_code = a.area_code
            LEFT JOIN va ON va.area_level = a.area_level AND va.area_code = a.area_code
            ORDER BY a.area_level = 'commissioner', a.area_code NULLS LAST
        """


def _programme_targets(period: str, summary: pa.Table, settings) -> pa.Table:
    """Each configured target beside each area of the summary.

    ``not_yet_due`` when the target has no due date or the period's last day is before
    it; else ``met`` when actual_pct >= target_pct, ``not_met`` when below, and empty
    when the area has nothing to measure (actual_pct empty: no practices or no
    providers)."""
    _, last_day = _period_bounds(period)
    targets = settings.thresholds.get("targets") or []
    metrics = set(summary.column_names)
    rows: dict[str, list] = {k: [] for k in (
        "period", "area_level", "area_code", "target_id", "measure", "target_pct",
        "due_date", "actual_pct", "status")}
    areas = summary.select(["area_level", "area_code"]).to_pylist()
    for target in targets:
        metric = target["metric"]
        if metric not in metrics or not metric.startswith("pct_"):
            raise ValueError(f"target {target.get('id')!r}: unknown metric {metric!r}")
        actuals = summary.column(metric).to_pylist()
        due = _as_date(target.get("due_date"))
        target_pct = None if target.get("target_pct") is None else float(target["target_pct"])
        for area, actual in zip(areas, actuals):
            if due is None or last_day < due:
                status = "not_yet_due"
            elif actual is None or target_pct is None:
                status = None
            else:
                status = "met" if actual >= target_pct else "not_met"
            rows["period"].append(period)
            rows["area_level"].append(area["area_level"])
            rows["area_code"].append(area["area_code"])
            rows["target_id"].append(str(target["id"]))
            rows["measure"].append(target.get("measure"))
            rows["target_pct"].append(target_pct)
            rows["due_date"].append(due)
            rows["actual_pct"].append(actual)
            rows["status"].append(status)
    types = {
        "period": pa.string(), "area_level": pa.string(), "area_code": pa.string(),
        "target_id": pa.string(), "measure": pa.string(), "target_pct": pa.float64(),
        "due_date": pa.date32(), "actual_pct": pa.float64(), "status": pa.string(),
    }
    return pa.table({k: pa.array(v, types[k]) for k, v in rows.items()})


# --------------------------------------------------------------------------- restricted
# Age in whole years at admission: from DOB, else month and year of birth, else the linked
# GP record's date of birth (ranks 1 to 4); empty without an admission date. Shared by
# linked_episodes.age_at_admission and linkage_quality's age bands.
_AGE_AT_ADMISSION_SQL = """CASE
    WHEN admidate IS NULL THEN NULL
    WHEN dob IS NOT NULL THEN year(admidate) - year(dob)
        - CASE WHEN month(admidate) < month(dob)
                 OR (month(admidate) = month(dob) AND day(admidate) < day(dob)) THEN 1 ELSE 0 END
    WHEN birth_year IS NOT NULL AND birth_month IS NOT NULL THEN year(admidate) - birth_year
        - CASE WHEN month(admidate) < birth_month THEN 1 ELSE 0 END
    WHEN linked_date_of_birth IS NOT NULL THEN year(admidate) - year(linked_date_of_birth)
        - CASE WHEN month(admidate) < month(linked_date_of_birth)
                 OR (month(admidate) = month(linked_date_of_birth)
                     AND day(admidate) < day(linked_date_of_birth)) THEN 1 ELSE 0 END
END"""

_RESTRICTED_SQL = """
WITH t2_hesid AS (
    -- a PSEUDO_HESID seen on an episode of a type 2 patient marks that person everywhere
    SELECT DISTINCT trim(pseudo_hesid) AS h FROM lk
    WHERE coalesce(type2_objection, false) AND NULLIF(trim(pseudo_hesid), '') IS NOT NULL
)
SELECT
    CAST({period} AS VARCHAR) AS period,
    CAST(CASE WHEN coalesce(nhs_number_valid, false) AND nhs_number IS NOT NULL THEN nhs_number
         ELSE linked_nhs_number END AS VARCHAR) AS __id_nhs,
    CAST(pseudo_hesid AS VARCHAR) AS __id_hesid,
    CAST(provider_code AS VARCHAR) AS provider_code,
    CAST(susrecid AS VARCHAR) AS susrecid,
    CAST(spell_id AS VARCHAR) AS spell_id,
    CAST(epiorder AS VARCHAR) AS epiorder,
    CAST(admidate AS DATE) AS admidate,
    CAST(epistart AS DATE) AS epistart,
    CAST(epiend AS DATE) AS epiend,
    CAST(disdate AS DATE) AS disdate,
    CAST(admimeth AS VARCHAR) AS admimeth,
    CAST(dismeth AS VARCHAR) AS dismeth,
    CAST(classpat AS VARCHAR) AS classpat,
    CAST(mainspef AS VARCHAR) AS mainspef,
    CAST(tretspef AS VARCHAR) AS tretspef,
    CAST(consultant_code AS VARCHAR) AS consultant_code,
    CAST(diagnoses AS VARCHAR[]) AS diagnoses,
    CAST(procedures AS VARCHAR[]) AS procedures,
    CAST(CASE WHEN age >= 0 THEN age END AS BIGINT) AS age_at_admission,
    CAST(sex AS VARCHAR) AS sex,
    CAST(lsoa AS VARCHAR) AS lsoa,
    CAST(registered_practice AS VARCHAR) AS registered_practice,
    CAST(match_rank AS BIGINT) AS match_rank,
    CAST(date_of_death AS DATE) AS date_of_death
FROM (SELECT *, {age} AS age FROM lk) a
WHERE NOT coalesce(type2_objection, false)
  AND (NULLIF(trim(pseudo_hesid), '') IS NULL OR trim(pseudo_hesid) NOT IN (SELECT h FROM t2_hesid))
ORDER BY provider_code, susrecid
"""

_RESTRICTED_SQL = _RESTRICTED_SQL.replace("{age}", _AGE_AT_ADMISSION_SQL)

_RESTRICTED_OPTIONAL = {
    "spell_id": pa.string(), "epiorder": pa.string(), "disdate": pa.date32(),
    "classpat": pa.string(), "mainspef": pa.string(), "tretspef": pa.string(),
    "consultant_code": pa.string(), "diagnoses": pa.list_(pa.string()),
    "procedures": pa.list_(pa.string()), "dob": pa.date32(), "birth_year": pa.int64(),
    "birth_month": pa.int64(), "pseudo_hesid": pa.string(), "nhs_number": pa.string(),
    "nhs_number_valid": pa.bool_(), "sex": pa.string(), "linked_date_of_birth": pa.date32(),
}


def linked_episodes_restricted(linked: pa.Table, key: str, engine: Engine | None = None) -> pa.Table:
    """The restricted ``linked_episodes`` dataset from :func:`link_episodes` output.

    Every episode flagged ``type2_objection`` is dropped, and so is every episode sharing
    a PSEUDO_HESID with one. ``person_id`` is :func:`pipelines.pseudo.person_ids` of the
    episode's valid NHS number, else the linked patient's (rank 5), else the PSEUDO_HESID;
    ``susrecid`` and ``spell_id`` are :func:`pipelines.pseudo.record_key_ids`.
    No NHS number, postcode or date of birth is kept. Raises
    :class:`pipelines.pseudo.MissingKeyError` without a key, before reading anything.
    """
    pseudo.person_id(key, None, None)  # MissingKeyError now, not after the work
    required = ("provider_code", "susrecid", "admidate", "epistart", "epiend", "admimeth",
                "dismeth", *(c for c in LINK_COLUMNS if c not in _RESTRICTED_OPTIONAL))
    missing = [c for c in required if c not in linked.column_names]
    if missing:
        raise ValueError(f"linked: missing columns {missing}")
    table = linked
    for name, typ in _RESTRICTED_OPTIONAL.items():
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, typ))
    period_sql = "period" if "period" in table.column_names else "strftime(epiend, '%Y-%m')"
    rows = plans.engine_or_default(engine).query(
        _RESTRICTED_SQL.format(period=period_sql), {"lk": table})
    ids = pseudo.person_ids(key, rows.column("__id_nhs"), rows.column("__id_hesid"))
    rows = rows.drop_columns(["__id_nhs", "__id_hesid"])
    rows = rows.add_column(1, pa.field("person_id", pa.string()), ids)
    # Record keys are supplier text: published as keyed pseudonyms (the same function as
    # linked_spells, so that spell_id still joins the two datasets).
    provider = rows.column("provider_code")
    for name, kind in (("susrecid", pseudo.SUSRECID_KIND), ("spell_id", pseudo.SPELL_KIND)):
        i = rows.column_names.index(name)
        rows = rows.set_column(i, pa.field(name, pa.string()),
                               pseudo.record_key_ids(key, kind, provider, rows.column(name)))
    return schemas.get("linked_episodes").conform(rows)


# --------------------------------------------------------------------------- linkage quality
_QUALITY_IN = {
    "provider_code": pa.string(),
    "epiend": pa.date32(),
    "admidate": pa.date32(),
    "dob": pa.date32(),
    "birth_year": pa.int64(),
    "birth_month": pa.int64(),
    "linked_date_of_birth": pa.date32(),
    "sex": pa.string(),
    "admimeth": pa.string(),
    "nhs_number": pa.string(),
    "nhs_number_valid": pa.bool_(),
    "match_rank": pa.int64(),
}


def _sql_list(codes) -> str:
    return ", ".join(f"'{c}'" for c in codes)


# One row per provider, characteristic and category present among the period's episodes
# (EPIEND in the period, as coverage): each episode once per characteristic. The category
# values are the declared codes of linkage_quality.category (schemas.outputs LQ_*).
_QUALITY_SQL = """
WITH e AS (
    SELECT {provider} AS provider_code,
           CAST(match_rank AS BIGINT) AS match_rank,
           {age} AS age,
           upper(trim(sex)) AS sex,
           upper(trim(admimeth)) AS admimeth,
           CAST(coalesce(nhs_number_valid, false) AS BOOLEAN) AS valid,
           CAST(NULLIF(trim(nhs_number), '') IS NULL AS BOOLEAN) AS no_number
    FROM lk_in
    WHERE epiend BETWEEN {p_start} AND {p_end} AND {provider} IS NOT NULL
), c AS (
    SELECT provider_code, match_rank,
           CASE WHEN age IS NULL OR age < 0 THEN 'unknown'
                WHEN age < 18 THEN '0-17' WHEN age < 45 THEN '18-44' WHEN age < 65 THEN '45-64'
                WHEN age < 75 THEN '65-74' WHEN age < 85 THEN '75-84' ELSE '85+' END AS age_band,
           CASE WHEN sex IN ({sex_codes}) THEN sex ELSE 'unknown' END AS sex,
           CASE WHEN admimeth IN ({elective}) THEN 'elective'
                WHEN admimeth IN ({emergency}) THEN 'emergency'
                WHEN admimeth IN ({other}) THEN 'other' ELSE 'unknown' END AS admission_method,
           CASE WHEN match_rank BETWEEN 1 AND 5 THEN CAST(match_rank AS VARCHAR) ELSE 'unlinked' END AS rank_cat,
           CASE WHEN valid THEN 'valid' WHEN no_number THEN 'missing' ELSE 'invalid' END AS nhs_status
    FROM e
), long AS (
    SELECT provider_code, 'age_band' AS characteristic, age_band AS category, match_rank FROM c
    UNION ALL SELECT provider_code, 'sex', sex, match_rank FROM c
    UNION ALL SELECT provider_code, 'admission_method', admission_method, match_rank FROM c
    UNION ALL SELECT provider_code, 'match_rank', rank_cat, match_rank FROM c
    UNION ALL SELECT provider_code, 'nhs_number_status', nhs_status, match_rank FROM c
), agg AS (
    SELECT provider_code, characteristic, category, count(*) AS episodes,
           count(*) FILTER (WHERE match_rank IS NOT NULL) AS episodes_linked
    FROM long GROUP BY provider_code, characteristic, category
)
SELECT CAST('{period}' AS VARCHAR) AS period,
       CAST(provider_code AS VARCHAR) AS provider_code,
       CAST(characteristic AS VARCHAR) AS characteristic,
       CAST(category AS VARCHAR) AS category,
       CAST(episodes AS BIGINT) AS episodes,
       CAST(episodes_linked AS BIGINT) AS episodes_linked,
       CAST(CAST(100 * episodes_linked AS DOUBLE) / episodes AS DOUBLE) AS pct_linked
FROM agg
ORDER BY provider_code, characteristic, category
"""


def linkage_quality_sql(period: str) -> str:
    """The :data:`_QUALITY_SQL` plan for ``period`` (its input: ``lk_in``)."""
    from pipelines.schemas.inputs import ADMIMETH_CODES, ADMIMETH_ELECTIVE, ADMIMETH_EMERGENCY
    from pipelines.schemas.outputs import LQ_SEX

    start, end = _period_bounds(period)
    other = [c for c in ADMIMETH_CODES if c not in ADMIMETH_ELECTIVE + ADMIMETH_EMERGENCY]
    return _QUALITY_SQL.format(
        period=period, p_start=_sql_date(start), p_end=_sql_date(end),
        provider=_CODE.format(c="provider_code"), age=_AGE_AT_ADMISSION_SQL,
        sex_codes=_sql_list(c for c in LQ_SEX if c != "unknown"),
        elective=_sql_list(ADMIMETH_ELECTIVE), emergency=_sql_list(ADMIMETH_EMERGENCY), other=_sql_list(other))


def linkage_quality(period: str, linked: pa.Table, *, engine: Engine | None = None) -> pa.Table:
    """``linkage_quality`` of ``period`` (outputs.md), unsuppressed: for each provider, the
    episodes ending in the period (EPIEND, as :func:`coverage`) and those linked (any
    rank), by age band, sex, admission method, match rank and NHS number status. ``linked``
    is :func:`link_episodes` output (absent optional columns read as empty, so their
    category is ``unknown``/``missing``). One plan (:data:`_QUALITY_SQL`) run by ``engine``.
    Conformed as staged: publishing applies the 1-to-7 rule from the declaration."""
    out = plans.engine_or_default(engine).query(
        linkage_quality_sql(period), {"lk_in": _slim(linked, _QUALITY_IN, ("provider_code", "epiend", "match_rank"), "linked")})
    return _conform_public("linkage_quality", out)


def suppress_complements(public: pa.Table) -> pa.Table:
    """Secondary suppression of ``linkage_quality`` after the 1-to-7 rule
    (:func:`pipelines.disclosure.apply_small_numbers`), stricter than the floor as
    outputs.md allows: the categories of one characteristic add up to the provider's
    episodes (and linked episodes), so where exactly one cell of a (period, provider,
    characteristic) is blanked, the next smallest non-zero cell of that count is blanked
    too (flag set; ties by category), so the first cannot be found by subtraction; and
    ``pct_linked`` is empty wherever ``episodes`` or ``episodes_linked`` is, since it
    would give the blanked count back. Returns the table with the same schema."""
    import numpy as np
    import pandas as pd

    if public.num_rows == 0:
        return public
    df = public.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    keys = [k for k in ("period", "provider_code", "characteristic") if k in df.columns]
    for col in ("episodes", "episodes_linked"):
        flag = f"{col}_suppressed"
        for _, g in df.groupby(keys, sort=False, dropna=False):
            if int(g[flag].sum()) != 1:
                continue
            open_ = g[~g[flag] & g[col].notna() & (g[col] > 0)]
            if open_.empty:
                continue
            pick = open_.sort_values([col, "category"], kind="mergesort").index[0]
            df.loc[pick, col] = pd.NA
            df.loc[pick, flag] = True
    blank = df["episodes_suppressed"] | df["episodes_linked_suppressed"]
    df.loc[blank, "pct_linked"] = np.nan
    out = pa.Table.from_pandas(df, preserve_index=False)
    return pa.Table.from_arrays([out.column(f.name).cast(f.type) for f in public.schema], schema=public.schema)
