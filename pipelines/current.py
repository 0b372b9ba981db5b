"""The current view: the submission protocols applied (inputs.md).

* :func:`current_sus` - per provider and period, SUS submissions apply in order of their
  submission time (from the file name), whatever order they arrived in: ``BULK`` replaces
  everything earlier for that provider and period, ``NET`` inserts/replaces
  (``CDS_UPDATE_TYPE`` 9) or deletes (1) by ``SUSRECID``. HES extract rows apply as net
  change (insert or replace) keyed by ``(PROCODE3, SUSRECID/EPIKEY)``; a HES extract has
  no submission time in its name, so it takes its place in the order at the time the
  pipeline first saw it (its ``first_seen_at``). At equal times: BULK, then NET, then
  HES, then by file name. Held submissions are skipped (earlier data stay in force).
* :func:`current_fft` - the newest non-held file per provider and period.
* :func:`gp_current` - GP: the newest non-held extract per practice supersedes.
  :func:`gp_current_lazy` chooses the same extracts but returns lazy Arrow datasets over
  their Parquet parts (national GP data is never held in memory: the linkage scans it).
* :func:`gp_death_extracts` - for the 30-day death of consultant outcomes, the extracts
  (older ones too) that show every death since a date: the dead leave an extract 12
  months after they die, so the newest extract alone misses earlier deaths.

Silver parts are never deleted: every submission stays readable for audit
(``warehouse.read("sus_episodes", parts=[...])``). A SUS, FFT or HES submission's rows are
a part named by its submission id; the GP extracts validated together in one chunk are one
``gp_patients`` part (:data:`CHUNK_PART` in its name), read filtered by ``submission_id``.
The ledger's current/superseded statuses (:func:`pipelines.ingest.read_ledger`) follow the
same rules.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from pipelines import plans, schemas
from pipelines.engine import Engine
from pipelines.warehouse import Warehouse

_RANK = {"BULK": 0, "NET": 1, "HES": 2}


def _ledger(warehouse: Warehouse) -> pd.DataFrame:
    from pipelines.ingest import read_ledger

    led = read_ledger(warehouse).to_pandas()
    led["submitted_at"] = pd.to_datetime(led["submitted_at"], utc=True)
    led["first_seen_at"] = pd.to_datetime(led["first_seen_at"], utc=True)
    return led


CHUNK_PART = "-chunk-"
"""In the name of a part that holds the rows of many submissions, each row carrying its
``submission_id``: a chunk's GP extracts are written as one ``gp_patients`` part
(:class:`pipelines.ingest.intake._ChunkParts`). Other parts hold one submission's rows and
are named by its submission id."""


class _Parts(NamedTuple):
    paths: list[str]
    mixed: bool  # a part holds rows of submissions not asked for: filter by submission_id


def _part_submissions(warehouse: Warehouse, path: str) -> set[str]:
    t = warehouse.store.read_parquet(path, columns=["submission_id"])
    return set(pc.unique(t.column("submission_id")).to_pylist())


def _parts(warehouse: Warehouse, table: str, period: str, submission_ids) -> _Parts:
    """The parts of ``table`` in ``period`` holding rows of ``submission_ids``: a part
    named by one of them, or a chunk part (:data:`CHUNK_PART`) holding rows of any of
    them (its ``submission_id`` column read); ``mixed`` when a chunk part also holds rows
    of other submissions, which the reader must then leave out."""
    wanted = set(submission_ids)
    out, mixed = [], False
    for p in warehouse.parts(table, [period]):
        stem = p.rsplit("/", 1)[-1][: -len(".parquet")]
        if stem in wanted:
            out.append(p)
        elif CHUNK_PART in stem:
            held = _part_submissions(warehouse, p)
            if held & wanted:
                out.append(p)
                mixed = mixed or bool(held - wanted)
    return _Parts(out, mixed)


def submission_parts(warehouse: Warehouse, table: str, period: str, submission_ids) -> list[str]:
    """The parts of ``table`` in ``period`` that hold rows of ``submission_ids`` (their own
    parts, or chunk parts holding them among others: filter what is read by
    ``submission_id``)."""
    return _parts(warehouse, table, period, submission_ids).paths


def _read_rows(warehouse: Warehouse, table: str, paths: list[str], submission_ids, mixed: bool) -> pa.Table:
    """The rows of ``submission_ids`` in the parts ``paths``, in the order they would have
    if each submission had a part of its own named by it (parts in path order, a part's
    rows in file order): the order readers had before chunk parts."""
    data = warehouse.read(table, parts=paths)
    if mixed:
        data = data.filter(pc.is_in(data.column("submission_id"), pa.array(sorted(set(submission_ids)), pa.string())))
    if data.num_rows and any(CHUNK_PART in p.rsplit("/", 1)[-1] for p in paths):
        key = pc.binary_join_element_wise(data.column("period"), pa.scalar("/"), data.column("submission_id"),
                                          pa.scalar(".parquet"), "")
        data = data.take(pc.sort_indices(key))  # stable: a submission's rows stay in file order
    return data


def _empty(table: str) -> pa.Table:
    return schemas.get(table).arrow_schema(include_partition=True).empty_table()


def sus_order(led: pd.DataFrame, period: str) -> pd.DataFrame:
    """The submissions that make the period's current SUS view, in the order they apply:
    SUS files of the period and HES extracts, taken in and not held."""
    usable = led["status"].isin(["current", "superseded"])
    sus = led[usable & (led["source"] == "sus_apc") & (led["reporting_period"] == period)].copy()
    sus["_time"] = sus["submitted_at"]
    sus["_rank"] = sus["protocol"].map(_RANK).fillna(1)
    hes = led[usable & (led["source"] == "hes_apc")].copy()
    hes["_time"] = hes["first_seen_at"]
    hes["_rank"] = _RANK["HES"]
    order = pd.concat([sus, hes], ignore_index=True)
    return order.sort_values(["_time", "_rank", "file_name"]).reset_index(drop=True)


_PROTOCOLS_SQL = """
WITH r AS (
    SELECT t.provider_code, t.susrecid, t.cds_update_type, t.line, t.__i, o.seq AS __seq, o.bulk AS __bulk
    FROM rows t JOIN subs o ON o.submission_id = t.submission_id
), floor AS (
    -- per provider: rows of submissions before its last BULK are gone
    SELECT provider_code, max(__seq) AS floor_seq FROM r WHERE __bulk GROUP BY provider_code
), live AS (
    SELECT r.*,
        row_number() OVER (PARTITION BY r.provider_code, r.susrecid
                           ORDER BY r.__seq DESC, r.line DESC NULLS FIRST, r.__i DESC) AS __rn
    FROM r LEFT JOIN floor f ON f.provider_code = r.provider_code
    WHERE f.floor_seq IS NULL OR r.__seq >= f.floor_seq
)
-- then the last event per (provider, susrecid) decides: a deletion (1) removes the episode
SELECT CAST(__i AS BIGINT) AS __i
FROM live
WHERE __rn = 1 AND NOT coalesce({update_type} = '1', false)
ORDER BY provider_code NULLS LAST, susrecid NULLS LAST
"""

PROTOCOL_COLUMNS = {"submission_id": pa.string(), "provider_code": pa.string(), "susrecid": pa.string(),
                    "cds_update_type": pa.string(), "line": pa.int64()}


def protocols_sql() -> str:
    """The plan of the SUS protocols over inputs ``rows`` (:data:`PROTOCOL_COLUMNS` and
    ``__i``, the row's position) and ``subs`` (``submission_id``, ``seq``: the order the
    submissions apply in, ``bulk``: a BULK file). Per provider, rows before its last BULK
    are gone; then the last event per ``susrecid`` (by submission order, then line, then
    position) decides: a deletion (``1``) removes the episode, anything else keeps it.
    Returns the positions (``__i``) of the surviving rows, by provider then susrecid."""
    return _PROTOCOLS_SQL.format(update_type=plans.stripped("cds_update_type"))


def apply_protocols(rows: pa.Table, order: pa.Table, engine: Engine | None = None) -> pa.Array:
    """The positions in ``rows`` of the rows that survive the protocols
    (:func:`protocols_sql`), by provider then susrecid. ``order``: ``submission_id``,
    ``seq``, ``bulk``. Only the key columns go to the engine."""
    keys = plans.slim(rows, PROTOCOL_COLUMNS, tuple(c for c in PROTOCOL_COLUMNS if c != "line"), "sus rows")
    keys = keys.append_column("__i", pa.array(range(rows.num_rows), pa.int64()))
    subs = order.select(["submission_id", "seq", "bulk"]).cast(
        pa.schema([("submission_id", pa.string()), ("seq", pa.int64()), ("bulk", pa.bool_())]))
    out = plans.engine_or_default(engine).query(protocols_sql(), {"rows": keys, "subs": subs})
    return out.column("__i").combine_chunks()


def current_sus(warehouse: Warehouse, period: str, engine: Engine | None = None) -> pa.Table:
    """The period's current SUS episodes (``sus_episodes`` columns, ``period`` included),
    checked against the ``current_sus_episodes`` declaration."""
    led = _ledger(warehouse)
    order = sus_order(led, period)
    declared = schemas.get("current_sus_episodes")
    if order.empty:
        return declared.arrow_schema(include_partition=True).empty_table()
    seq = {sid: i for i, sid in enumerate(order["submission_id"])}
    paths, mixed = _parts(warehouse, "sus_episodes", period, seq)
    if not paths:
        return declared.arrow_schema(include_partition=True).empty_table()
    table = _read_rows(warehouse, "sus_episodes", paths, seq, mixed)
    subs = pa.table({"submission_id": pa.array(list(seq), pa.string()),
                     "seq": pa.array(list(seq.values()), pa.int64()),
                     "bulk": pa.array([p == "BULK" for p in order["protocol"]], pa.bool_())})
    return declared.check(table.take(apply_protocols(table, subs, engine)))


def current_fft(warehouse: Warehouse, period: str) -> pa.Table:
    """The period's current FFT responses: per provider, the newest non-held file."""
    led = _ledger(warehouse)
    f = led[(led["source"] == "fft") & (led["reporting_period"] == period) & (led["status"] == "current")]
    if f.empty:
        return _empty("fft_responses")
    paths, mixed = _parts(warehouse, "fft_responses", period, f["submission_id"])
    if not paths:
        return _empty("fft_responses")
    return schemas.get("fft_responses").conform(_read_rows(warehouse, "fft_responses", paths, f["submission_id"],
                                                           mixed))


class GPCurrent(NamedTuple):
    patients_newest_overall: pa.Table  # rows of each practice's newest non-held extract (any period)
    patients_newest_in_period: pa.Table  # rows of each practice's newest non-held extract dated in the period
    extracts: pa.Table  # every gp_extracts row (all periods), held and superseded ones included


def _newest(extracts: pd.DataFrame) -> pd.DataFrame:
    ok = extracts[~extracts["held"].fillna(False).astype(bool)]
    ok = ok.sort_values(["practice_code", "extract_date", "submission_id"])
    return ok.drop_duplicates("practice_code", keep="last")


def _gp_paths(warehouse: Warehouse, chosen: pd.DataFrame) -> _Parts:
    """The ``gp_patients`` parts of the chosen submissions, sorted, and whether a part
    holds other extracts' rows too (a chunk part: :data:`CHUNK_PART`)."""
    paths, mixed = [], False
    for period, grp in chosen.groupby("period"):
        got = _parts(warehouse, "gp_patients", period, grp["submission_id"])
        paths += got.paths
        mixed = mixed or got.mixed
    return _Parts(sorted(paths), mixed)


def _gp_rows(warehouse: Warehouse, chosen: pd.DataFrame) -> pa.Table:
    if chosen.empty:
        return _empty("gp_patients")
    paths, mixed = _gp_paths(warehouse, chosen)
    if not paths:
        return _empty("gp_patients")
    return schemas.get("gp_patients").conform(
        _read_rows(warehouse, "gp_patients", paths, chosen["submission_id"], mixed))


def gp_extracts(warehouse: Warehouse) -> pa.Table:
    """Every ``gp_extracts`` row, ``held`` as it stands now: held when taken in (the
    data-quality rule, or the GP held rule of inputs.md: no data row, or under half the
    rows of the practice's current extract) and not released by an operator since
    (:func:`pipelines.ingest.release_held`). A held extract supersedes nothing."""
    from pipelines.ingest import released_submissions

    extracts = warehouse.read("gp_extracts")
    if extracts.num_rows == 0:
        return extracts
    released = released_submissions(warehouse)
    if not released:
        return extracts
    held = pc.fill_null(extracts.column("held"), False)
    free = pc.is_in(extracts.column("submission_id"), pa.array(sorted(released), pa.string()))
    i = extracts.schema.get_field_index("held")
    return extracts.set_column(i, extracts.schema.field(i), pc.and_(held, pc.invert(free)))


def gp_current(warehouse: Warehouse, period: str | None = None) -> GPCurrent:
    """GP: each practice's newest extract supersedes its older ones; held extracts are
    skipped (the previous extract stays in force). ``patients_newest_in_period`` is empty
    when no period is given."""
    extracts = gp_extracts(warehouse)
    ex = extracts.to_pandas()
    if ex.empty:
        return GPCurrent(_empty("gp_patients"), _empty("gp_patients"), extracts)
    overall = _gp_rows(warehouse, _newest(ex))
    in_period = _gp_rows(warehouse, _newest(ex[ex["period"] == period])) if period else _empty("gp_patients")
    return GPCurrent(overall, in_period, extracts)


DEATH_LOOKBACK_DAYS = 330
"""How far back an extract is trusted to show a death: an extract lists every patient
registered in the 12 months before its date (inputs.md), the dead included, so a death is
on every extract of the practice dated up to 12 months after it. A month is kept in hand."""


def gp_death_extracts(extracts: pd.DataFrame, since, until) -> pd.DataFrame:
    """The non-held GP extracts that between them show every death on or after ``since``
    that an extract dated up to ``until`` shows: per practice, its newest extract dated up
    to ``until``, then, going back, the oldest extract at most :data:`DEATH_LOOKBACK_DAYS`
    older than the last one chosen (or, across a longer gap, the next older one), until
    one dated on or before ``since`` is chosen. About one extract a year per practice,
    rather than every monthly one. ``extracts``: ``gp_extracts`` rows."""
    ok = extracts[~extracts["held"].fillna(False).astype(bool)].copy()
    ok["extract_date"] = pd.to_datetime(ok["extract_date"])
    since, until = pd.Timestamp(since), pd.Timestamp(until)
    ok = ok[ok["extract_date"] <= until].sort_values(["practice_code", "extract_date", "submission_id"])
    ok = ok.drop_duplicates(["practice_code", "extract_date"], keep="last")
    back = pd.Timedelta(days=DEATH_LOOKBACK_DAYS)
    keep = []
    for _, grp in ok.groupby("practice_code", sort=True):
        dates = grp["extract_date"].to_numpy()
        i = len(dates) - 1
        keep.append(grp.index[i])
        while i > 0 and dates[i] > since:
            reach = np.flatnonzero(dates[:i] >= dates[i] - back)
            i = int(reach[0]) if len(reach) else i - 1
            keep.append(grp.index[i])
    return ok.loc[sorted(keep)] if keep else ok.iloc[:0]


def _gp_dataset(warehouse: Warehouse, chosen: pd.DataFrame | None, columns: list[str] | None) -> ds.Dataset:
    """The ``gp_patients`` rows of the chosen extracts, as a lazy dataset over their parts;
    filtered by ``submission_id`` when a part (a chunk part) holds other extracts' rows too
    (:meth:`Warehouse.dataset`'s ``submission_ids``: an engine reading the files itself
    applies the same filter)."""
    if chosen is None or chosen.empty:
        return warehouse.dataset("gp_patients", parts=[], columns=_with_sid(columns))
    paths, mixed = _gp_paths(warehouse, chosen)
    return warehouse.dataset("gp_patients", parts=paths, columns=_with_sid(columns),
                             submission_ids=sorted(set(chosen["submission_id"])) if mixed else None)


def _with_sid(columns: list[str] | None) -> list[str] | None:
    """``columns`` and ``submission_id``, by which a chunk part's rows are chosen."""
    if columns is None or "submission_id" in columns:
        return columns
    return list(columns) + ["submission_id"]


def gp_deaths_lazy(warehouse: Warehouse, since, until, columns: list[str] | None = None) -> ds.Dataset:
    """The ``gp_patients`` rows of :func:`gp_death_extracts`, as a lazy dataset."""
    ex = gp_extracts(warehouse).to_pandas()
    return _gp_dataset(warehouse, gp_death_extracts(ex, since, until) if len(ex) else None, columns)


class GPCurrentLazy(NamedTuple):
    patients_newest_overall: ds.Dataset  # lazy: the parts of each practice's newest non-held extract
    patients_newest_in_period: ds.Dataset  # lazy: ... of its newest non-held extract dated in the period
    extracts: pa.Table  # every gp_extracts row (all periods), held and superseded ones included


def gp_current_lazy(warehouse: Warehouse, period: str | None = None,
                    columns: list[str] | None = None) -> GPCurrentLazy:
    """:func:`gp_current` without reading the patients: the same extracts chosen, each set
    of rows as a lazy ``pyarrow.dataset.Dataset`` over their Parquet parts (sorted, as
    :func:`gp_current` concatenates them) with the declared ``gp_patients`` columns, or
    only ``columns`` (and ``submission_id``, by which a chunk part's rows are chosen), typed
    as declared. Scanning one gives the rows of the matching :func:`gp_current` table (a
    column missing from an older part reads as null), in its order when no two chunk parts
    of a period are chosen from (an engine's plan orders its own output)."""
    extracts = gp_extracts(warehouse)
    ex = extracts.to_pandas()
    if ex.empty:
        return GPCurrentLazy(_gp_dataset(warehouse, None, columns), _gp_dataset(warehouse, None, columns), extracts)
    overall = _gp_dataset(warehouse, _newest(ex), columns)
    in_period = _gp_dataset(warehouse, _newest(ex[ex["period"] == period]) if period else None, columns)
    return GPCurrentLazy(overall, in_period, extracts)


TYPE2_STANDS_MONTHS = 12
"""How long a type 2 objection seen in any GP extract stands (docs/methods-linkage.md,
type2_objection): a ``9Nu4`` row of an extract dated within this many months before its
practice's current extract (or after it: a newer, held one) marks the patient type 2, even
where the current extract no longer records the objection."""


def gp_type2_numbers(warehouse: Warehouse, months: int = TYPE2_STANDS_MONTHS) -> pa.Array:
    """The NHS numbers to treat as type 2 objectors in linkage and every record-level
    output, whichever extract is current: every ``gp_type2`` row (a ``9Nu4`` row of a GP
    extract taken in or held, kept or quarantined) of an extract dated no more than
    ``months`` months before its practice's current extract (the newest non-held one, as
    :func:`gp_current` chooses; held extracts, newer ones included, all count). A practice
    with no current extract keeps all its rows. Distinct canonical numbers, sorted."""
    extracts = gp_extracts(warehouse).to_pandas()
    ok = extracts[~extracts["held"].fillna(False).astype(bool)] if len(extracts) else extracts
    cutoff: dict[str, pd.Timestamp] = {}
    if len(ok):
        newest = pd.to_datetime(ok["extract_date"]).groupby(ok["practice_code"]).max()
        cutoff = {p: d - pd.DateOffset(months=months) for p, d in newest.items()}
    found: set[str] = set()
    source = warehouse.dataset("gp_type2", columns=["practice_code", "extract_date", "nhs_number"])
    for batch in source.to_batches():
        if not batch.num_rows:
            continue
        b = batch.to_pandas()
        limit = pd.to_datetime(b["practice_code"].map(cutoff))
        stands = limit.isna() | (pd.to_datetime(b["extract_date"]) >= limit)
        found.update(n for n in b.loc[stands, "nhs_number"] if isinstance(n, str) and n)
    return pa.array(sorted(found), pa.string())
