"""Record linkage of SUS episodes to GP registrations, and care.data linkage coverage.

methods.md "Record linkage" and "care.data linkage coverage"; outputs.md
``linkage_coverage_*``, ``programme_targets`` and the restricted ``linked_episodes``.
The choices made where the spec is silent are written down in docs/methods-linkage.md.

Everything runs in an in-process DuckDB over Arrow data (national tables are never held
in pandas). The GP rows may be given as a lazy ``pyarrow.dataset.Dataset`` over the
extracts' Parquet parts (:func:`pipelines.current.gp_current_lazy`): they are then
scanned, never held whole, so memory does not grow with the number of GP patients.
DuckDB runs under a memory limit (:data:`DEFAULT_MEMORY_LIMIT`, or
``CAREDATA_DUCKDB_MEMORY_LIMIT``) and spills to a temporary folder beyond it. No Dagster
here: the assets call these functions.

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
import contextlib
import datetime as dt
import os
import re
import shutil
import tempfile
from typing import Iterator

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from expectations.rules import PRACTICE_PLACEHOLDERS
from pipelines import pseudo, schemas

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
def _slim(table: pa.Table, columns: dict[str, pa.DataType], required: tuple[str, ...] = (), what: str = "table") -> pa.Table:
    """The named columns of ``table`` cast to the given types; absent optional columns
    become all-null. Only column names go into the error, never values."""
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ValueError(f"{what}: missing columns {missing}")
    arrays, names = [], []
    for name, typ in columns.items():
        if name in table.column_names:
            arrays.append(table.column(name).cast(typ))
        else:
            arrays.append(pa.nulls(table.num_rows, typ))
        names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


# DuckDB's memory ceiling (beyond it, joins and aggregates spill to a temporary folder
# under the system temp directory). Override with CAREDATA_DUCKDB_MEMORY_LIMIT or the
# ``memory_limit`` argument, in DuckDB's notation ("4GB", "512MB", "75%").
DEFAULT_MEMORY_LIMIT = "4GB"
MEMORY_LIMIT_ENV = "CAREDATA_DUCKDB_MEMORY_LIMIT"

# GP rows are scanned in slices of about this many rows (bounded memory per step), and
# their files this many at a time (see _slices). Each slice goes to DuckDB as an Arrow
# table of known size. (A whole pyarrow Dataset registered in DuckDB has no row estimate,
# ~1 row, so DuckDB makes the GP side the build side of its joins: a hash table of every
# GP row. Slices keep any such choice bounded by a slice.)
_GP_SLICE_ROWS = 1 << 19
_GP_SCAN_FILES = 128


def _memory_limit(explicit: str | None = None) -> str:
    return str(explicit or os.environ.get(MEMORY_LIMIT_ENV) or DEFAULT_MEMORY_LIMIT)


@contextlib.contextmanager
def _connect(memory_limit: str | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB with a memory limit, one thread per CPU, and its own spill
    folder under the system temp directory (removed afterwards)."""
    spill = tempfile.mkdtemp(prefix="caredata-duckdb-")
    try:
        con = duckdb.connect(database=":memory:", config={
            "memory_limit": _memory_limit(memory_limit),
            "temp_directory": spill,
            "threads": os.cpu_count() or 1,
        })
        try:
            yield con
        finally:
            con.close()
    finally:
        shutil.rmtree(spill, ignore_errors=True)


def _gp_source(gp, columns: dict[str, pa.DataType], required: tuple[str, ...], what: str):
    """GP rows as something DuckDB can scan, with exactly ``columns`` typed as given
    (absent optional columns null): a ``pa.Table`` is sliced to them (:func:`_slim`); a
    Parquet ``pyarrow.dataset.FileSystemDataset`` stays lazy, re-declared with those
    columns so a scan reads only them. Only column names go into an error."""
    if isinstance(gp, pa.Table):
        return _slim(gp, columns, required, what)
    if not isinstance(gp, pads.Dataset):
        raise TypeError(f"{what}: expected a pyarrow Table or Dataset, got {type(gp).__name__}")
    missing = [c for c in required if c not in gp.schema.names]
    if missing:
        raise ValueError(f"{what}: missing columns {missing}")
    if not isinstance(gp, pads.FileSystemDataset):
        return _slim(gp.to_table(), columns, required, what)
    schema = pa.schema([pa.field(n, t) for n, t in columns.items()])
    return pads.FileSystemDataset(list(gp.get_fragments()), schema=schema, format=gp.format,
                                  filesystem=gp.filesystem)


def _slices(source, columns: list[str], filter=None) -> Iterator[pa.Table]:
    """The rows of a :func:`_gp_source` in their order, ``columns`` only, in tables of
    about :data:`_GP_SLICE_ROWS` rows. A dataset is streamed (only one slice and the
    scanner's read-ahead in memory), and its slices hold whole files: a file (one
    extract) is never split over two slices. Files are scanned :data:`_GP_SCAN_FILES` at
    a time through fresh fragments, so what Arrow keeps of each file it has read
    (its Parquet metadata) is let go rather than piling up over thousands of files."""
    if isinstance(source, pa.Table):
        table = source.select(columns)
        if filter is not None:
            table = table.filter(filter)
        for start in range(0, table.num_rows, _GP_SLICE_ROWS):
            yield table.slice(start, _GP_SLICE_ROWS)
        return
    schema = pa.schema([source.schema.field(c) for c in columns])
    fmt, fs = source.format, source.filesystem
    files = [(f.path, f.partition_expression) for f in source.get_fragments()]
    pending, rows, fragment = [], 0, None
    for start in range(0, len(files), _GP_SCAN_FILES):
        group = pads.FileSystemDataset(
            [fmt.make_fragment(path, fs, partition_expression=part) for path, part in files[start:start + _GP_SCAN_FILES]],
            schema=source.schema, format=fmt, filesystem=fs)
        for tagged in group.scanner(columns=columns, filter=filter).scan_batches():
            path = tagged.fragment.path
            if path != fragment and rows >= _GP_SLICE_ROWS:
                yield pa.Table.from_batches(pending, schema=schema)
                pending, rows = [], 0
            fragment = path
            if tagged.record_batch.num_rows:
                pending.append(tagged.record_batch)
                rows += tagged.record_batch.num_rows
    if pending:
        yield pa.Table.from_batches(pending, schema=schema)


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


def _statements(sql: str) -> list[str]:
    """Split a script on the semicolons that end its statements (none inside comments
    or literals in this module's scripts)."""
    return [part.strip() for part in re.split(r";\s*\n", sql) if part.strip()]


def _conform_public(name: str, table: pa.Table) -> pa.Table:
    """Conform to a public declaration as *staged*: computed, not yet disclosure-controlled,
    without the ``<count>_suppressed`` flags that publishing adds."""
    return schemas.get(name).conform(table, staged=True)


# --------------------------------------------------------------------------- linkage
_GP_VALID = "nhs_number IS NOT NULL AND coalesce(nhs_number_valid, false)"

# 1. The episodes, normalised; the keys the GP rows are looked up by.
_LINK_PREPARE_SQL = rf"""
CREATE TEMP TABLE ep AS
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
FROM ep_in;

-- DOB, sex and postcode of the episodes without a valid NHS number (rank 5 candidates
-- must agree on all three, so an episode missing one of them cannot be rank 5).
CREATE TEMP TABLE k5 AS
SELECT DISTINCT e_dob, e_sex, e_pc FROM ep
WHERE e_nhs IS NULL AND e_dob IS NOT NULL AND e_sex IS NOT NULL AND e_pc IS NOT NULL;

-- The patients (NHS numbers) whose GP rows can matter: the episodes' valid numbers, and
-- (added while scanning the GP rows) every patient with a row agreeing with k5.
CREATE TEMP TABLE want AS
SELECT DISTINCT e_nhs AS nhs FROM ep WHERE e_nhs IS NOT NULL;

CREATE TEMP TABLE gp (
    nhs VARCHAR, practice VARCHAR, extract_date DATE, g_dob DATE, g_sex VARCHAR, g_pc VARCHAR,
    lsoa VARCHAR, registration_date DATE, deregistration_date DATE, date_of_death DATE,
    t2 BOOLEAN, __seq BIGINT
);
"""

# 2. First scan of the GP rows (only when some episode has no valid NHS number): the
# patients with a row agreeing on DOB, sex and postcode with such an episode. All their
# rows are kept in the second scan, so rank 5 still counts every candidate patient, and a
# rank 5 patient's other rows (another address) still give registration, LSOA, death and
# objection.
_LINK_RANK5_SLICE_SQL = rf"""
INSERT INTO want
SELECT DISTINCT g.nhs_number FROM gp_slice g
SEMI JOIN k5 ON g.date_of_birth = k5.e_dob
    AND {_SEX.format(c="g.sex")} = k5.e_sex
    AND {_POSTCODE.format(c="g.postcode")} = k5.e_pc
WHERE {_GP_VALID}
"""

# 3. Second scan: every row of the wanted patients, normalised (__seq = order in the GP
# input, the last tie-break below). Every later statement only reads rows of patients in
# ``want`` (ranks 1-4: the episode's number; rank 5: rows agreeing with k5; pat and cover:
# the linked patients and the episodes' numbers), so the result is the one over all rows.
_LINK_GP_SLICE_SQL = rf"""
INSERT INTO gp
SELECT
    nhs_number AS nhs,
    {_CODE.format(c="practice_code")} AS practice,
    extract_date,
    date_of_birth AS g_dob,
    {_SEX.format(c="sex")} AS g_sex,
    {_POSTCODE.format(c="postcode")} AS g_pc,
    NULLIF(trim(lsoa), '') AS lsoa,
    registration_date,
    deregistration_date,
    date_of_death,
    coalesce(type2_objection, false) AS t2,
    __seq
FROM gp_slice
WHERE {_GP_VALID} AND nhs_number IN (SELECT nhs FROM want)
"""

# A patient's date of death: from their newest extract that has one (earliest on a tie).
_NEWEST_DOD = "first(date_of_death ORDER BY extract_date DESC, date_of_death)"

# 4. Match, and what is kept of each patient.
_LINK_SQL = rf"""
-- Ranks 1-4: the patient with the episode's valid NHS number (never another one). The
-- rank is the best agreement with any one of that patient's GP rows.
-- Rank 5: no valid NHS number on the episode, and DOB, sex and postcode agree with the rows
-- of exactly one patient (distinct NHS numbers).
CREATE TEMP TABLE links AS
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
HAVING count(DISTINCT g.nhs) = 1;

-- What we keep of each patient met: type 2 objection in any row, date of death (newest
-- extract that records one), LSOA of the most recent registration that has one.
CREATE TEMP TABLE pat AS
SELECT nhs,
    bool_or(t2) AS t2,
    {_NEWEST_DOD} FILTER (WHERE date_of_death IS NOT NULL) AS dod,
    first(lsoa ORDER BY registration_date DESC NULLS LAST, extract_date DESC, practice, __seq)
        FILTER (WHERE lsoa IS NOT NULL) AS lsoa_latest,
    first(g_dob ORDER BY extract_date DESC, __seq) FILTER (WHERE g_dob IS NOT NULL) AS dob_latest
FROM gp
WHERE nhs IN (SELECT nhs FROM links UNION SELECT e_nhs FROM ep WHERE e_nhs IS NOT NULL)
GROUP BY nhs;

-- The registration covering EPISTART: started on or before it and not ended on or before
-- it. Where several cover it (a move not yet recorded by the old practice), prefer the
-- practice the hospital recorded (GPPRAC), then the latest registration.
CREATE TEMP TABLE cover AS
SELECT __row, practice, lsoa FROM (
    SELECT l.__row, g.practice, g.lsoa,
        row_number() OVER (
            PARTITION BY l.__row
            ORDER BY coalesce(g.practice = e.e_gpprac, false) DESC,
                     g.registration_date DESC, g.extract_date DESC, g.practice, g.__seq
        ) AS rn
    FROM links l
    JOIN ep e USING (__row)
    JOIN gp g ON g.nhs = l.nhs
    WHERE g.registration_date <= e.epistart
      AND (g.deregistration_date IS NULL OR g.deregistration_date > e.epistart)
) WHERE rn = 1;

SELECT
    e.__row,
    CAST(l.match_rank AS BIGINT) AS match_rank,
    l.nhs AS linked_nhs_number,
    c.practice AS registered_practice,
    CASE WHEN l.nhs IS NOT NULL THEN coalesce(c.lsoa, p.lsoa_latest) END AS lsoa,
    p.dod AS date_of_death,
    coalesce(p.t2, false) OR coalesce(p_own.t2, false)
        OR coalesce(l.nhs IN (SELECT nhs FROM t2n), false)
        OR coalesce(e.e_nhs IN (SELECT nhs FROM t2n), false) AS type2_objection,
    -- the linked GP record's date of birth (newest extract), ranks 1 to 4 only: where the
    -- episode has neither DOB nor MYDOB, age at admission comes from it (methods.md)
    CASE WHEN l.match_rank BETWEEN 1 AND 4 THEN p.dob_latest END AS linked_date_of_birth
FROM ep e
LEFT JOIN links l USING (__row)
LEFT JOIN cover c USING (__row)
LEFT JOIN pat p ON p.nhs = l.nhs
LEFT JOIN pat p_own ON p_own.nhs = e.e_nhs
ORDER BY e.__row;
"""

# Only GP rows with a valid NHS number are patients; the scan drops the others early.
_GP_VALID_FILTER = pc.field("nhs_number").is_valid() & pc.field("nhs_number_valid")
_RANK5_COLUMNS = ["nhs_number", "nhs_number_valid", "date_of_birth", "sex", "postcode"]


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
                  memory_limit: str | None = None) -> pa.Table:
    """Link each episode to a GP-registered patient (methods.md "Record linkage").

    ``episodes``: current SUS episodes (warehouse ``sus_episodes`` columns).
    ``gp_patients``: the rows of each practice's newest extract (warehouse ``gp_patients``),
    as a ``pa.Table`` or, at national scale, a lazy ``pyarrow.dataset.Dataset`` over
    their Parquet parts (:func:`pipelines.current.gp_current_lazy`). The GP rows are
    scanned (twice when an episode has no valid NHS number) and only the rows of patients
    who can be linked are kept, so memory follows the episodes, not the GP list.
    ``type2_numbers``: NHS numbers of type 2 objectors found in any GP extract taken in
    or held, rows kept or quarantined (:func:`pipelines.current.gp_type2_numbers`): an
    episode whose own valid number or linked patient is one of them is flagged
    ``type2_objection`` even where no current GP row says so.
    ``memory_limit``: DuckDB's (default :func:`_memory_limit`).

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
    gp_src = _gp_source(gp_patients, _GP_IN, _GP_REQUIRED, "gp_patients")
    with _connect(memory_limit) as con:
        con.register("ep_in", ep_in)
        con.register("t2n_in", pa.table({"nhs": _numbers(type2_numbers)}))
        con.execute("CREATE TEMP TABLE t2n AS SELECT DISTINCT nhs FROM t2n_in")
        con.unregister("t2n_in")
        for statement in _statements(_LINK_PREPARE_SQL):
            con.execute(statement)
        if con.sql("SELECT count(*) FROM k5").fetchall()[0][0]:
            for part in _slices(gp_src, _RANK5_COLUMNS, _GP_VALID_FILTER):
                con.register("gp_slice", part)
                con.execute(_LINK_RANK5_SLICE_SQL)
                con.unregister("gp_slice")
        seq = 0
        for part in _slices(gp_src, list(_GP_IN), _GP_VALID_FILTER):
            part = part.append_column("__seq", pa.array(np.arange(seq, seq + part.num_rows, dtype=np.int64)))
            seq += part.num_rows
            con.register("gp_slice", part)
            con.execute(_LINK_GP_SLICE_SQL)
            con.unregister("gp_slice")
        *setup, final = _statements(_LINK_SQL)
        for statement in setup:
            con.execute(statement)
        result = con.sql(final).to_arrow_table()

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
_DEATH_FILTER = _GP_VALID_FILTER & pc.field("date_of_death").is_valid()


def gp_deaths(gp_patients, nhs_numbers) -> pa.Table:
    """The GP-recorded date of death of each of ``nhs_numbers`` (an Arrow array, or any
    iterable of strings; nulls and blanks ignored) found dead in
    ``gp_patients`` (a ``pa.Table`` or a lazy Parquet dataset, as for
    :func:`link_episodes`: typically the extracts of
    :func:`pipelines.current.gp_death_extracts`, older ones included). Only rows with a
    valid NHS number and a ``DATE_OF_DEATH`` are read. Returns ``nhs_number``,
    ``date_of_death`` (from the patient's newest extract that has one; on a tie, the
    earliest date) and ``type2_objection`` (in any of those rows), one row per patient.

    Rows that carry a date of death are of patients already dead on the extract date,
    whose record can change no more: a type 1 objection made in life is on those rows, and
    such rows are never stored (inputs.md), so nothing here comes from a type 1 objector."""
    if isinstance(nhs_numbers, (pa.Array, pa.ChunkedArray)):
        wanted = pc.unique(pc.drop_null(nhs_numbers.cast(pa.string())))
    else:
        wanted = pa.array(sorted({n for n in nhs_numbers if n}), pa.string())
    wanted = wanted.filter(pc.not_equal(wanted, ""))
    src = _gp_source(gp_patients, _DEATH_COLUMNS, _GP_REQUIRED[1:] + ("date_of_death",), "gp_patients")
    parts = [part.filter(pc.is_in(part.column("nhs_number"), value_set=wanted))
             for part in _slices(src, list(_DEATH_COLUMNS), _DEATH_FILTER)] if len(wanted) else []
    rows = pa.concat_tables(parts) if parts else pa.schema(_DEATH_COLUMNS).empty_table()
    with _connect() as con:
        con.register("d", rows)
        out = con.sql(f"""
            SELECT nhs_number,
                   {_NEWEST_DOD} AS date_of_death,
                   bool_or(coalesce(type2_objection, false)) AS type2_objection
            FROM d GROUP BY nhs_number ORDER BY nhs_number""").to_arrow_table()
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
) -> dict[str, pa.Table]:
    """The care.data linkage coverage of ``period`` (methods.md), unsuppressed.

    ``linked``: :func:`link_episodes` output for the period's episodes (episodes whose
    EPIEND falls in another month are ignored). ``practices``: ``ref_practices``;
    ``providers``: ``ref_providers``; ``extracts``: ``gp_extracts``;
    ``gp_patients_period``: the rows of each practice's newest extract dated in the period,
    a ``pa.Table`` or a lazy ``pyarrow.dataset.Dataset`` (streamed and counted slice by
    slice, never held whole: see :func:`_registered`). ``memory_limit``: DuckDB's (default
    :func:`_memory_limit`).

    Returns ``linkage_coverage_practice``, ``linkage_coverage_provider``,
    ``linkage_coverage_summary`` and ``programme_targets``, each conformed to its
    declaration as staged (with ``period``; no ``*_suppressed`` flags: publishing applies
    disclosure control from the declarations).
    """
    start, end = _period_bounds(period)
    practice_pct = float(settings.t("linkage", "practice_linked_pct"))
    standard_pct = float(settings.t("linkage", "nhs_number_standard_pct"))

    gpp_in = _gp_source(gp_patients_period, _GP_PERIOD_IN, ("practice_code", "extract_date"), "gp_patients_period")
    with _connect(memory_limit) as con:
        con.register("lk_in", _slim(linked, _LINKED_IN, ("provider_code", "epiend", "match_rank"), "linked"))
        con.register("prac_in", _slim(practices, _PRACTICES_IN, ("practice_code",), "practices"))
        con.register("prov_in", _slim(providers, _PROVIDERS_IN, ("provider_code",), "providers"))
        con.register("ext_in", _slim(extracts, _EXTRACTS_IN, ("practice_code", "extract_date"), "extracts"))
        p_start, p_end = _sql_date(start), _sql_date(end)
        con.execute(f"""
            CREATE TEMP TABLE lk AS
            SELECT {_CODE.format(c="provider_code")} AS provider_code,
                   coalesce(nhs_number_valid, false) AS valid,
                   trim(nhsnoind) = '01' AS verified,
                   CASE WHEN {_CODE.format(c="gpprac")} IN ({_NO_PRACTICE_SQL}) THEN NULL
                        ELSE {_CODE.format(c="gpprac")} END AS gpprac,
                   match_rank,
                   {_CODE.format(c="registered_practice")} AS registered_practice
            FROM lk_in WHERE epiend BETWEEN {p_start} AND {p_end}
        """)
        # Active practices: status A and prescribing setting 4.
        con.execute(f"""
            CREATE TEMP TABLE act AS
            SELECT {_CODE.format(c="practice_code")} AS practice, min(commissioner_code) AS commissioner_code
            FROM prac_in
            WHERE trim(status) = 'A' AND trim(prescribing_setting) = '4'
              AND coalesce({_CODE.format(c="practice_code")} NOT IN ({_NO_PRACTICE_SQL}), true)
            GROUP BY 1
        """)
        # Each practice's newest extract dated in the period (held extracts do not count).
        con.execute(f"""
            CREATE TEMP TABLE chosen AS
            SELECT practice, extract_date, type1_objections, type2_objections FROM (
                SELECT {_CODE.format(c="practice_code")} AS practice, extract_date,
                       type1_objections, type2_objections,
                       row_number() OVER (PARTITION BY {_CODE.format(c="practice_code")}
                                          ORDER BY extract_date DESC, submission_id DESC) AS rn
                FROM ext_in
                WHERE extract_date BETWEEN {p_start} AND {p_end} AND NOT coalesce(held, false)
            ) WHERE rn = 1
        """)
        # Registered on the extract date: started on or before it, not deregistered or
        # dead on or before it. A patient with two rows in one extract counts once.
        _registered(con, gpp_in)
        # Practice linkage: of the episodes whose GPPRAC is the practice, those linked to a
        # patient whose registration at that practice covers EPISTART. link_episodes picks
        # the GPPRAC practice first among covering registrations, so that is
        # registered_practice = gpprac.
        con.execute("""
            CREATE TEMP TABLE pe AS
            SELECT gpprac AS practice, count(*) AS expected,
                   count(*) FILTER (WHERE match_rank IS NOT NULL AND registered_practice = gpprac) AS linked
            FROM lk WHERE gpprac IS NOT NULL GROUP BY gpprac
        """)
        practice = con.sql(f"""
            SELECT '{period}' AS period,
                   a.practice AS practice_code,
                   a.commissioner_code,
                   c.practice IS NOT NULL AS extract_received,
                   c.extract_date,
                   CASE WHEN c.practice IS NOT NULL THEN coalesce(r.registered, 0) END AS registered_patients,
                   c.type1_objections,
                   c.type2_objections,
                   coalesce(pe.expected, 0) AS episodes_expected,
                   coalesce(pe.linked, 0) AS episodes_linked,
                   CASE WHEN coalesce(pe.expected, 0) > 0
                        THEN CAST(100 * pe.linked AS DOUBLE) / pe.expected END AS pct_linked,
                   c.practice IS NOT NULL
                       AND coalesce(CAST(100 * pe.linked AS DOUBLE) / pe.expected >= {practice_pct!r}, false)
                       AS linked_to_hospital_data
            FROM act a
            LEFT JOIN chosen c ON c.practice = a.practice
            LEFT JOIN reg r ON r.practice = a.practice
            LEFT JOIN pe ON pe.practice = a.practice
            ORDER BY a.practice
        """).to_arrow_table()
        con.register("practice_out", practice)

        rank_cols = ",\n".join(
            f"count(*) FILTER (WHERE l.match_rank = {k}) AS linked_rank_{k}" for k in range(1, 6)
        )
        provider = con.sql(f"""
            WITH host AS (
                SELECT {_CODE.format(c="provider_code")} AS provider_code, min(commissioner_code) AS commissioner_code
                FROM prov_in GROUP BY 1
            ), agg AS (
                SELECT l.provider_code,
                       count(*) AS episodes,
                       count(*) FILTER (WHERE l.valid) AS episodes_valid_nhs_number,
                       count(*) FILTER (WHERE l.verified) AS episodes_verified_nhs_number,
                       count(*) FILTER (WHERE l.match_rank IS NOT NULL) AS episodes_linked,
                       {rank_cols}
                FROM lk l WHERE l.provider_code IS NOT NULL GROUP BY l.provider_code
            )
            SELECT '{period}' AS period,
                   agg.provider_code,
                   host.commissioner_code,
                   agg.episodes,
                   agg.episodes_valid_nhs_number,
                   CAST(100 * agg.episodes_valid_nhs_number AS DOUBLE) / agg.episodes AS pct_valid_nhs_number,
                   agg.episodes_verified_nhs_number,
                   CAST(100 * agg.episodes_verified_nhs_number AS DOUBLE) / agg.episodes AS pct_verified_nhs_number,
                   agg.episodes_linked,
                   CAST(100 * agg.episodes_linked AS DOUBLE) / agg.episodes AS pct_linked,
                   agg.linked_rank_1, agg.linked_rank_2, agg.linked_rank_3, agg.linked_rank_4, agg.linked_rank_5,
                   CAST(100 * agg.episodes_valid_nhs_number AS DOUBLE) / agg.episodes >= {standard_pct!r}
                       AS meets_nhs_number_standard
            FROM agg LEFT JOIN host USING (provider_code)
            ORDER BY agg.provider_code
        """).to_arrow_table()
        con.register("provider_out", provider)

        summary = con.sql(f"""
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
                FROM pr GROUP BY ALL
            ), va AS (
                SELECT area_level, area_code, count(*) AS providers,
                       count(*) FILTER (WHERE meets_nhs_number_standard) AS meeting
                FROM pv GROUP BY ALL
            )
            SELECT '{period}' AS period, a.area_level, a.area_code,
                   coalesce(pa.practices, 0) AS practices,
                   coalesce(pa.providing, 0) AS practices_providing_extract,
                   CASE WHEN pa.practices > 0 THEN CAST(100 * pa.providing AS DOUBLE) / pa.practices END
                       AS pct_practices_providing_extract,
                   coalesce(pa.linked, 0) AS practices_linked,
                   CASE WHEN pa.practices > 0 THEN CAST(100 * pa.linked AS DOUBLE) / pa.practices END
                       AS pct_practices_linked,
                   coalesce(va.providers, 0) AS providers,
                   coalesce(va.meeting, 0) AS providers_meeting_nhs_number_standard,
                   CASE WHEN va.providers > 0 THEN CAST(100 * va.meeting AS DOUBLE) / va.providers END
                       AS pct_providers_meeting_nhs_number_standard
            FROM areas a
            LEFT JOIN pa USING (area_level, area_code)
            LEFT JOIN va USING (area_level, area_code)
            ORDER BY a.area_level = 'commissioner', a.area_code
        """).to_arrow_table()

    targets = _programme_targets(period, summary, settings)
    return {
        "linkage_coverage_practice": _conform_public("linkage_coverage_practice", practice),
        "linkage_coverage_provider": _conform_public("linkage_coverage_provider", provider),
        "linkage_coverage_summary": _conform_public("linkage_coverage_summary", summary),
        "programme_targets": _conform_public("programme_targets", targets),
    }


# The distinct registered patients of the chosen extracts in one slice of GP rows
# ({only}: a further join restricting the extracts).
_REGISTERED_ROWS_SQL = """
SELECT DISTINCT c.practice, c.extract_date,
       coalesce(g.nhs_number, 'line:' || coalesce(CAST(g.line AS VARCHAR), '?')) AS patient
FROM gp_slice g
JOIN chosen c ON upper(trim(g.practice_code)) = c.practice AND g.extract_date = c.extract_date
{only}
WHERE (g.registration_date IS NULL OR g.registration_date <= c.extract_date)
  AND (g.deregistration_date IS NULL OR g.deregistration_date > c.extract_date)
  AND (g.date_of_death IS NULL OR g.date_of_death > c.extract_date)
"""
_REGISTERED_SLICE_SQL = f"""
INSERT INTO reg_part
SELECT {{slice}} AS slice, practice, extract_date, count(*) AS registered FROM (
{_REGISTERED_ROWS_SQL.format(only="")}
) GROUP BY ALL
"""
_REGISTERED_SPLIT_SQL = "INSERT INTO split_rows " + _REGISTERED_ROWS_SQL.format(
    only="SEMI JOIN split s ON s.practice = c.practice AND s.extract_date = c.extract_date")


def _registered(con: duckdb.DuckDBPyConnection, gpp_in) -> None:
    """Table ``reg`` (practice, registered) for the extracts of table ``chosen``, from GP
    rows streamed in slices (:func:`_slices`): distinct patients counted per slice and
    extract. An extract whose rows fall in one slice (always, for a dataset of one file
    per extract) has its count; one spread over several slices is counted again over
    its rows of all slices, so the count is exact for any input, and memory holds one
    slice rather than every patient of the period."""
    columns = list(_GP_PERIOD_IN)
    con.execute("CREATE TEMP TABLE reg_part (slice BIGINT, practice VARCHAR, extract_date DATE, registered BIGINT)")
    con.execute("CREATE TEMP TABLE split_rows (practice VARCHAR, extract_date DATE, patient VARCHAR)")
    for i, part in enumerate(_slices(gpp_in, columns)):
        con.register("gp_slice", part)
        con.execute(_REGISTERED_SLICE_SQL.format(slice=i))
        con.unregister("gp_slice")
    con.execute("""
        CREATE TEMP TABLE split AS
        SELECT practice, extract_date FROM reg_part GROUP BY ALL HAVING count(*) > 1
    """)
    if con.sql("SELECT count(*) FROM split").fetchall()[0][0]:
        # Rare (a Table input, or an extract in several files): those rows again, whole.
        for part in _slices(gpp_in, columns):
            con.register("gp_slice", part)
            con.execute(_REGISTERED_SPLIT_SQL)
            con.unregister("gp_slice")
    con.execute("""
        CREATE TEMP TABLE reg AS
        WITH counts AS (
            SELECT practice, extract_date, registered FROM reg_part
            ANTI JOIN split USING (practice, extract_date)
            UNION ALL
            SELECT practice, extract_date, count(DISTINCT patient) FROM split_rows GROUP BY ALL
        )
        SELECT c.practice, n.registered
        FROM chosen c JOIN counts n ON n.practice = c.practice AND n.extract_date = c.extract_date
    """)


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
_RESTRICTED_SQL = """
WITH t2_hesid AS (
    -- a PSEUDO_HESID seen on an episode of a type 2 patient marks that person everywhere
    SELECT DISTINCT trim(pseudo_hesid) AS h FROM lk
    WHERE coalesce(type2_objection, false) AND NULLIF(trim(pseudo_hesid), '') IS NOT NULL
)
SELECT
    {period} AS period,
    CASE WHEN coalesce(nhs_number_valid, false) AND nhs_number IS NOT NULL THEN nhs_number
         ELSE linked_nhs_number END AS __id_nhs,
    pseudo_hesid AS __id_hesid,
    provider_code, susrecid, spell_id, epiorder, admidate, epistart, epiend, disdate,
    admimeth, dismeth, classpat, mainspef, tretspef, consultant_code, diagnoses, procedures,
    CASE WHEN a.age >= 0 THEN a.age END AS age_at_admission,
    sex, lsoa, registered_practice, match_rank, date_of_death
FROM lk,
LATERAL (SELECT CASE
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
END AS age) a
WHERE NOT coalesce(type2_objection, false)
  AND (NULLIF(trim(pseudo_hesid), '') IS NULL OR trim(pseudo_hesid) NOT IN (SELECT h FROM t2_hesid))
ORDER BY provider_code, susrecid
"""

_RESTRICTED_OPTIONAL = {
    "spell_id": pa.string(), "epiorder": pa.string(), "disdate": pa.date32(),
    "classpat": pa.string(), "mainspef": pa.string(), "tretspef": pa.string(),
    "consultant_code": pa.string(), "diagnoses": pa.list_(pa.string()),
    "procedures": pa.list_(pa.string()), "dob": pa.date32(), "birth_year": pa.int64(),
    "birth_month": pa.int64(), "pseudo_hesid": pa.string(), "nhs_number": pa.string(),
    "nhs_number_valid": pa.bool_(), "sex": pa.string(), "linked_date_of_birth": pa.date32(),
}


def linked_episodes_restricted(linked: pa.Table, key: str) -> pa.Table:
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
    with _connect() as con:
        con.register("lk", table)
        rows = con.sql(_RESTRICTED_SQL.format(period=period_sql)).to_arrow_table()
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
