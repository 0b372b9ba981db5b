"""Hospital provider spells from episodes: one derivation and one episode order for every
module (inputs.md "HES APC extracts"; :func:`pipelines.outcomes.build_spells` and
:func:`pipelines.fft.spells_for_fft_linkage` both use it).

* An episode with a ``spell_id`` (SUS ``SUSSPELLID``) belongs to that spell.
* Without one (every HES extract, SUS files without ``SUSSPELLID``) the spell is derived as
  HES derives it: the episodes of one person (valid NHS number, else ``PSEUDO_HESID``) at
  one provider with the same ``ADMIDATE``, in episode order; the spell ends with the
  episode that has a discharge (``DISDATE`` present, ``DISMETH`` other than ``8`` or
  ``9``), and a further episode of the same person, provider and admission date starts
  the next spell. A derived spell's ``spell_id`` is ``DER:`` + its first episode's
  ``susrecid`` (never a patient identifier: ``spell_id`` is published).
* An episode with neither a spell id nor a person (or no admission date) is a spell of its
  own, ``EPI:`` + its ``susrecid``.
* Episode order within a spell: ``EPIORDER`` (``98`` not applicable and ``99`` not known,
  and anything that is not an order, after every real order), then ``EPISTART``, then
  ``EPIEND``, then ``susrecid``. The spell's last episode is the last in that order; its
  discharge is the spell's. A spell whose last episode is unfinished (``EPISTAT`` ``1`` or
  ``9``) has no discharge.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from pipelines import plans
from pipelines.engine import Engine

NOT_AN_ORDER = ("98", "99")  # EPIORDER not applicable / not known
AFTER_EVERY_ORDER = 98.0  # the rank of 98, 99, missing and non-numeric orders
UNFINISHED_EPISTAT = ("1", "9")  # 1 unfinished, 9 derived unfinished
NO_DISCHARGE_DISMETH = ("8", "9")  # 8 not applicable (still in hospital), 9 not known

GROUP_COLUMNS = ("provider_code", "spell_id", "susrecid", "admidate", "nhs_number", "nhs_number_valid",
                 "pseudo_hesid")
"""The episode columns an episode's spell group (:func:`group_keys`) is worked out from."""
ORDER_COLUMNS = ("epiorder", "epistart", "epiend", "epistat", "disdate", "dismeth")
EPISODE_COLUMNS = GROUP_COLUMNS + ORDER_COLUMNS
"""The episode columns :func:`assign_spells` reads."""

ASSIGNED_COLUMNS = {
    "row": pa.int64(), "provider_code": pa.string(), "susrecid": pa.string(), "order_rank": pa.float64(),
    "discharged": pa.bool_(), "unfinished": pa.bool_(), "spell_id": pa.string(), "spell": pa.int64(),
    "is_last": pa.bool_(),
}
"""What :func:`assign_spells` returns, in this order."""

_DATES = ("admidate", "epistart", "epiend", "disdate")


# --------------------------------------------------------------------------- the plan
def _input(episodes: pa.Table) -> tuple[pa.Table, str]:
    """The columns the plan reads (absent ones all-null text) with ``__row`` (position),
    and the SQL of the admission date as text (an ISO date, or the supplier's text
    stripped when the column is text)."""
    cols, names = [pa.array(range(episodes.num_rows), pa.int64())], ["__row"]
    for c in EPISODE_COLUMNS:
        if c in episodes.column_names:
            col = episodes.column(c)
            if c == "nhs_number_valid":
                col = col.cast(pa.bool_())
            elif c in _DATES and not pa.types.is_string(col.type):
                col = col.cast(pa.date32()) if not pa.types.is_null(col.type) else pa.nulls(len(col), pa.date32())
            elif c not in _DATES:
                col = col.cast(pa.string())
        else:
            col = pa.nulls(episodes.num_rows, pa.bool_() if c == "nhs_number_valid" else pa.string())
        cols.append(col)
        names.append(c)
    t = pa.Table.from_arrays(cols, names=names)
    adm = plans.text("admidate") if pa.types.is_string(t.column("admidate").type) \
        else "CAST(CAST(admidate AS DATE) AS VARCHAR)"
    return t, adm


def _group_sql(adm: str) -> str:
    """An episode's spell group within its provider (:func:`group_keys`)."""
    person = (f"coalesce(CASE WHEN coalesce(CAST(nhs_number_valid AS BOOLEAN), false) THEN {plans.text('nhs_number')} END, "
              f"'HESID:' || {plans.text('pseudo_hesid')})")
    return (f"coalesce('ID:' || {plans.text('spell_id')}, 'DER:' || {person} || {adm}, "
            f"'EPI:' || coalesce({plans.text('susrecid')}, ''))")


# Episode order within a spell group; ties broken by position in the input.
_ORDER = "order_rank, epistart NULLS LAST, epiend NULLS LAST, susrecid NULLS LAST, __row"
_NOT_AN_ORDER_SQL = f"{AFTER_EVERY_ORDER!r}"

_ASSIGN_SQL = """
WITH e AS (
    SELECT __row,
        {provider} AS provider_code,
        {susrecid} AS susrecid,
        {group} AS grp,
        CASE WHEN regexp_matches({epiorder}, '^[0-9]{{1,2}}$')
                  AND TRY_CAST({epiorder} AS INTEGER) BETWEEN 1 AND 97
             THEN CAST(TRY_CAST({epiorder} AS INTEGER) AS DOUBLE) ELSE {after} END AS order_rank,
        TRY_CAST(epistart AS DATE) AS epistart,
        TRY_CAST(epiend AS DATE) AS epiend,
        coalesce(TRY_CAST(disdate AS DATE) IS NOT NULL AND {dismeth} IS NOT NULL
                 AND {dismeth} NOT IN ({no_discharge}), false) AS discharged,
        coalesce({epistat} IN ({unfinished}), false) AS unfinished
    FROM episodes
), k AS (
    SELECT *, substr(grp, 1, 4) = 'DER:' AS derived FROM e WHERE provider_code IS NOT NULL
), c AS (
    -- a derived group is cut after each episode with a discharge: the spell of an episode
    -- within its group is the number of discharges before it
    SELECT *,
        coalesce(sum(CASE WHEN derived AND discharged THEN 1 ELSE 0 END) OVER (
            PARTITION BY provider_code, grp ORDER BY {order}
            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS cut
    FROM k
), s AS (
    SELECT *,
        first_value(coalesce(susrecid, '')) OVER (PARTITION BY provider_code, grp, cut ORDER BY {order}
            ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS first_susrecid,
        row_number() OVER (PARTITION BY provider_code, grp, cut ORDER BY {order}) AS rn,
        count(*) OVER (PARTITION BY provider_code, grp, cut) AS n,
        dense_rank() OVER (ORDER BY provider_code, grp, cut) - 1 AS spell
    FROM c
)
SELECT
    CAST(__row AS BIGINT) AS "row",
    CAST(provider_code AS VARCHAR) AS provider_code,
    CAST(susrecid AS VARCHAR) AS susrecid,
    CAST(order_rank AS DOUBLE) AS order_rank,
    CAST(discharged AS BOOLEAN) AS discharged,
    CAST(unfinished AS BOOLEAN) AS unfinished,
    CAST(CASE WHEN substr(grp, 1, 3) = 'ID:' THEN substr(grp, 4)
              WHEN derived THEN 'DER:' || first_susrecid
              ELSE grp END AS VARCHAR) AS spell_id,
    CAST(spell AS BIGINT) AS spell,
    CAST(rn = n AS BOOLEAN) AS is_last
FROM s
ORDER BY provider_code, grp, {order}
"""

_GROUP_KEYS_SQL = """
SELECT CAST({group} AS VARCHAR) AS grp FROM episodes ORDER BY __row
"""


def _codes(values) -> str:
    return ", ".join(f"'{v}'" for v in values)


def assign_sql(adm: str) -> str:
    """The plan of :func:`assign_spells` over an input named ``episodes`` (:func:`_input`)."""
    return _ASSIGN_SQL.format(
        provider=plans.text("provider_code"), susrecid=plans.text("susrecid"), group=_group_sql(adm),
        epiorder=plans.stripped("epiorder"), after=_NOT_AN_ORDER_SQL, dismeth=plans.stripped("dismeth"),
        no_discharge=_codes(NO_DISCHARGE_DISMETH), epistat=plans.stripped("epistat"),
        unfinished=_codes(UNFINISHED_EPISTAT), order=_ORDER)


# --------------------------------------------------------------------------- spells
def group_keys(t: pa.Table, engine: Engine | None = None) -> pa.ChunkedArray:
    """Each episode's spell group within its provider: ``ID:`` + its spell id; else
    ``DER:`` + person (valid NHS number, else ``HESID:`` + ``pseudo_hesid``) + admission
    date (the episodes a derived spell is cut from: one spell, or several when the person
    was discharged and admitted again on the same day); else ``EPI:`` + its susrecid.
    Internal: it holds the person's NHS number. The same SQL as :func:`assign_spells`."""
    table, adm = _input(t)
    out = plans.engine_or_default(engine).query(_GROUP_KEYS_SQL.format(group=_group_sql(adm)), {"episodes": table})
    return out.column("grp")


def assign_spells(episodes: pa.Table, engine: Engine | None = None) -> pd.DataFrame:
    """Each episode's spell, in spell order: one relational plan (:func:`assign_sql`, run
    by ``engine``; None -> the process's DuckDB). One row per episode of ``episodes``
    (columns :data:`EPISODE_COLUMNS`; absent ones are empty): ``row`` (its position in
    ``episodes``), ``provider_code``, ``susrecid``, ``order_rank``, ``discharged`` (the
    episode has a discharge), ``unfinished``, ``spell_id`` (the given one, ``DER:`` + the
    first episode's susrecid, or ``EPI:`` + its own), ``spell`` (0, 1, ... numbering the
    spells by provider and group), ``is_last`` (the spell's last episode). Sorted by
    spell, then episode order. Episodes without a provider are in no spell (left out)."""
    table, adm = _input(episodes)
    out = plans.engine_or_default(engine).query(assign_sql(adm), {"episodes": table})
    out = out.select(list(ASSIGNED_COLUMNS)).cast(pa.schema(ASSIGNED_COLUMNS))
    return out.to_pandas()


def last_episodes(assigned: pd.DataFrame) -> pd.DataFrame:
    """One row per spell (indexed by ``spell``) from :func:`assign_spells`: its last
    episode's ``row``, ``spell_id``, ``provider_code``, whether it is ``unfinished``, and
    whether it ends the spell with a discharge (``discharged``: the last episode has a
    discharge and is finished). A filter over the plan's output, not a second rule."""
    last = assigned[assigned["is_last"]].set_index("spell")
    out = last[["row", "provider_code", "spell_id", "unfinished"]].copy()
    out["discharged"] = last["discharged"] & ~last["unfinished"]
    return out
