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

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.text import WHITESPACE

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


# --------------------------------------------------------------------------- per episode
def _column(t: pa.Table, name: str) -> pa.ChunkedArray:
    if name in t.column_names:
        return t.column(name)
    return pa.chunked_array([pa.nulls(t.num_rows, pa.string())])


def _text(column) -> pa.ChunkedArray:
    """Text stripped as ``str.strip()`` strips it, empty as null."""
    s = pc.utf8_trim(column.cast(pa.string()), characters=WHITESPACE)
    return pc.if_else(pc.equal(s, ""), pa.scalar(None, pa.string()), s)


def person(t: pa.Table) -> pa.ChunkedArray:
    """The spell's person of each episode: its valid NHS number, else ``HESID:`` +
    ``pseudo_hesid``; null when it has neither."""
    valid = pc.fill_null(_column(t, "nhs_number_valid").cast(pa.bool_()), False)
    nhs = pc.if_else(valid, _text(_column(t, "nhs_number")), pa.scalar(None, pa.string()))
    hesid = _text(_column(t, "pseudo_hesid"))
    return pc.coalesce(nhs, pc.binary_join_element_wise("HESID:", hesid, ""))


def group_keys(t: pa.Table) -> pa.ChunkedArray:
    """Each episode's spell group within its provider: ``ID:`` + its spell id; else
    ``DER:`` + person + admission date (the episodes a derived spell is cut from: one
    spell, or several when the person was discharged and admitted again on the same day);
    else ``EPI:`` + its susrecid. Internal: it holds the person's NHS number."""
    spell_id = _text(_column(t, "spell_id"))
    adm = _column(t, "admidate")
    adm = adm.cast(pa.date32()).cast(pa.string()) if not pa.types.is_string(adm.type) else _text(adm)
    derived = pc.binary_join_element_wise("DER:", person(t), adm, "")  # null unless both
    own = pc.binary_join_element_wise("EPI:", pc.fill_null(_text(_column(t, "susrecid")), ""), "")
    return pc.coalesce(pc.binary_join_element_wise("ID:", spell_id, ""), derived, own)


def order_rank(epiorder: pd.Series) -> pd.Series:
    """EPIORDER as a sort key: real orders (1 to 97) as numbers; 98, 99, missing and
    anything else after every real order (:data:`AFTER_EVERY_ORDER`)."""
    text = epiorder.astype("string").str.strip()
    num = pd.to_numeric(text.where(text.str.fullmatch(r"[0-9]{1,2}").fillna(False).astype(bool)),
                        errors="coerce").astype("float64")
    real = (num >= 1) & (num < AFTER_EVERY_ORDER)
    return num.where(real, AFTER_EVERY_ORDER)


def is_discharge(disdate: pd.Series, dismeth: pd.Series) -> pd.Series:
    """The episode has a discharge: a discharge date and a method other than 8 or 9."""
    meth = dismeth.astype("string").str.strip()
    return (disdate.notna() & meth.notna() & ~meth.isin(NO_DISCHARGE_DISMETH).fillna(False)).astype(bool)


def is_unfinished(epistat: pd.Series) -> pd.Series:
    return epistat.astype("string").str.strip().isin(UNFINISHED_EPISTAT).fillna(False).astype(bool)


# --------------------------------------------------------------------------- spells
def assign_spells(episodes: pa.Table) -> pd.DataFrame:
    """Each episode's spell, in spell order. One row per episode of ``episodes`` (columns
    :data:`EPISODE_COLUMNS`; absent ones are empty): ``row`` (its position in
    ``episodes``), ``provider_code``, ``spell_id`` (the given one, ``DER:`` + the first
    episode's susrecid, or ``EPI:`` + its own), ``spell`` (0, 1, ... numbering the spells
    by provider and ``spell_id``), ``order_rank``, ``is_last`` (the spell's last episode),
    ``discharged`` (the episode has a discharge), ``unfinished``. Sorted by spell, then
    episode order. Episodes without a provider are in no spell (left out)."""
    n = episodes.num_rows
    provider = _text(_column(episodes, "provider_code"))
    df = pd.DataFrame({
        "row": np.arange(n, dtype=np.int64),
        "provider_code": pd.Series(provider.to_pandas(), dtype=object),
        "group": pd.Series(group_keys(episodes).to_pandas(), dtype=object),
        "susrecid": pd.Series(_text(_column(episodes, "susrecid")).to_pandas(), dtype=object),
        "order_rank": order_rank(pd.Series(_column(episodes, "epiorder").to_pandas())).to_numpy(),
    })
    for c in ("epistart", "epiend", "disdate"):
        col = _column(episodes, c)
        df[c] = pd.to_datetime(pd.Series(col.to_pandas()) if not pa.types.is_null(col.type)
                               else pd.Series([pd.NaT] * n), errors="coerce").to_numpy()
    df["discharged"] = is_discharge(df["disdate"], pd.Series(_column(episodes, "dismeth").to_pandas())).to_numpy()
    df["unfinished"] = is_unfinished(pd.Series(_column(episodes, "epistat").to_pandas())).to_numpy()
    df = df[df["provider_code"].notna()]
    df = df.sort_values(["provider_code", "group", "order_rank", "epistart", "epiend", "susrecid", "row"],
                        na_position="last", kind="stable")
    # A derived group splits after each episode with a discharge.
    derived = df["group"].str.startswith("DER:").to_numpy(dtype=bool)
    gnum = df.groupby(["provider_code", "group"], sort=False).ngroup().to_numpy()
    disch = df["discharged"].to_numpy(dtype=bool) & derived
    before = pd.Series(disch.astype(np.int64)).groupby(gnum).cumsum().to_numpy() - disch
    first_of_spell = np.ones(len(df), dtype=bool)
    if len(df):
        first_of_spell[1:] = (gnum[1:] != gnum[:-1]) | (before[1:] != before[:-1])
    spell = np.cumsum(first_of_spell) - 1
    group = df["group"]
    ids = group.str.slice(3).where(group.str.startswith("ID:"), group).to_numpy(dtype=object, copy=True)
    if derived.any():
        first_rec = ("DER:" + df["susrecid"].fillna("")).to_numpy(dtype=object)[first_of_spell]
        ids[derived] = first_rec[spell[derived]]
    df["spell_id"] = ids
    df["spell"] = spell
    last = np.ones(len(df), dtype=bool)
    if len(df):
        last[:-1] = spell[1:] != spell[:-1]
    df["is_last"] = last
    return df.drop(columns=["group"]).reset_index(drop=True)


def last_episodes(assigned: pd.DataFrame) -> pd.DataFrame:
    """One row per spell (indexed by ``spell``) from :func:`assign_spells`: its last
    episode's ``row``, ``spell_id``, ``provider_code``, whether it is ``unfinished``, and
    whether it ends the spell with a discharge (``discharged``: the last episode has a
    discharge and is finished)."""
    last = assigned[assigned["is_last"]].set_index("spell")
    out = last[["row", "provider_code", "spell_id", "unfinished"]].copy()
    out["discharged"] = last["discharged"] & ~last["unfinished"]
    return out
