"""The data-quality datasets (outputs.md ``data_quality``, ``data_quality_summary``;
methods.md "Data quality").

Inputs are the validation stage's internal tables: ``dq_rules`` (each rule's counts per
submission), ``dq_fields`` (each scored field's rows and rows present-and-valid per
submission) and the ``ledger`` (every file and what became of it). Only each submitter's
submissions that are ``current`` or ``held`` count: superseded and rejected ones are left
out.

* item score of a field = rows present and valid / rows, summed over the submitter's
  submissions of the period;
* ``dq_score`` = 100 x the mean item score over the scored fields (fields with no rows are
  not scored; FFT's optional NHS number is reported but not scored);
* ``pct_valid_nhs_number`` = 100 x rows with a valid NHS number / rows;
* ``below_sanction_threshold`` when ``dq_score`` < ``data_quality.sanction_score`` or, for
  GP, SUS and HES data, ``pct_valid_nhs_number`` < ``data_quality.sanction_nhs_number_pct``;
* ``held`` when any of the submissions is held, ``held_reason`` their reasons;
* beside ``dq_score``, NHS Digital's Data Quality Maturity Index (DQMI) measures
  (:func:`dqmi_items`, docs/data-quality.md "DQMI"): per item (scored field) coverage,
  completeness, validity, default values and the item score; per row their means and the
  DQMI score = mean item score x coverage.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd
import pyarrow as pa

from expectations.rules import NHS_NUMBER_FIELD, NHS_NUMBER_SANCTIONED
from pipelines import schemas
from pipelines.schemas.outputs import DQMI_COLUMNS

KEEP_STATUSES = ("current", "held")
SOURCES = ("gp", "sus_apc", "hes_apc", "fft")


def is_held(rows_received: int, rows_rejected: int, settings) -> bool:
    """A readable file is held when more than ``held_reject_share`` of its rows are rejected."""
    if not rows_received:
        return False
    return rows_rejected / rows_received > float(settings.t("data_quality", "held_reject_share"))


def _frame(table: pa.Table | None, columns: list[str]) -> pd.DataFrame:
    if table is None or table.num_rows == 0:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})
    df = table.to_pandas()
    for c in columns:
        if c not in df.columns:
            df[c] = None
    return df


def _pct(num: pd.Series, den: pd.Series) -> pd.Series:
    num = num.astype("float64")
    den = den.astype("float64")
    return (100.0 * num / den).where(den > 0)


HES = "hes_apc"
HES_NO_PROVIDER = "UNKNOWN"
"""The submitter a HES extract's rows count under when their PROCODE3 is missing (such
rows are quarantined: PROCODE3 is required; ``submitter_code`` is never empty)."""


def _hes_group_rows(groups: pd.DataFrame, fields: pd.DataFrame, quarantine: pd.DataFrame | None) -> pd.DataFrame:
    """Rows received, quarantined and kept of each (submission, period, provider) group of
    a HES extract. Every scored field of a group has one row per row received (ingest's
    ``_hes_group_counts``), so received is their largest ``rows``; quarantined counts the
    group's quarantine rows (null when the quarantine is not given); kept is the rest."""
    key = ["submission_id", "period", "submitter_code"]
    g = groups[key].reset_index(drop=True)
    f = fields.loc[fields["submission_id"].isin(set(g["submission_id"])), key + ["rows"]].copy()
    f["submitter_code"] = f["submitter_code"].astype(object).where(f["submitter_code"].notna(), HES_NO_PROVIDER)
    f["rows"] = f["rows"].astype("Float64")
    received = f.groupby(key, dropna=False)["rows"].max()
    out = g.merge(received.rename("rows_received").reset_index(), on=key, how="left")
    if quarantine is None:
        out["rows_quarantined"] = pd.Series(pd.NA, index=out.index, dtype="Float64")
    else:
        q = quarantine.loc[quarantine["submission_id"].isin(set(g["submission_id"])), key].copy()
        q["submitter_code"] = q["submitter_code"].astype(object).where(q["submitter_code"].notna(), HES_NO_PROVIDER)
        n_q = q.groupby(key, dropna=False).size().rename("rows_quarantined").reset_index()
        out = out.merge(n_q, on=key, how="left")
        out["rows_quarantined"] = out["rows_quarantined"].astype("Float64").fillna(0)
    out["rows_received"] = out["rows_received"].astype("Float64")
    out["rows_kept"] = out["rows_received"] - out["rows_quarantined"]
    return out


def _member(df: pd.DataFrame, hes: np.ndarray) -> pd.Series:
    """What ties dq rows to a summary group: the submission, or (HES) the submission, period
    and provider."""
    own = df["submission_id"].astype(str)
    return own.where(~hes, own + "|" + df["period"].astype(str) + "|" + df["submitter_code"].astype(str))


def _hes_provider(df: pd.DataFrame, led: pd.DataFrame) -> pd.DataFrame:
    """A HES extract's dq rows with no provider (PROCODE3 missing) under HES_NO_PROVIDER."""
    hes = df["submission_id"].map(led["source"]).eq(HES) & df["submitter_code"].isna()
    if not hes.any():
        return df
    df = df.copy()
    df["submitter_code"] = df["submitter_code"].astype(object)
    df.loc[hes, "submitter_code"] = HES_NO_PROVIDER
    return df


@lru_cache(maxsize=None)
def scored_fields(source: str) -> tuple:
    """The DQMI items of a feed: its scored fields (expectations/, with their default
    values and thresholds), FFT's optional NHS number left out as in ``dq_score``."""
    if source == "gp":
        from expectations import gp as mod
    elif source in ("sus_apc", "hes_apc"):
        from expectations import sus_apc as mod
    elif source == "fft":
        from expectations import fft as mod
    else:
        return ()
    return tuple(sf for sf in mod.SCORED if not (source == "fft" and sf.name == NHS_NUMBER_FIELD["fft"]))


def _headers(submission_columns: pa.Table | None) -> dict[str, frozenset[str]]:
    """Each submission's header (column names as read), from ``submission_columns``."""
    if submission_columns is None or submission_columns.num_rows == 0:
        return {}
    out: dict[str, set[str]] = {}
    for sid, name in zip(submission_columns.column("submission_id").to_pylist(),
                         submission_columns.column("column_name").to_pylist()):
        if name is not None:
            out.setdefault(sid, set()).add(name)
    return {sid: frozenset(names) for sid, names in out.items()}


DQMI_ITEM_COLUMNS = ["g", "field", "has_defaults", "rows", "rows_valid", "rows_present", "rows_default", "coverage", "sent",
                     "completeness", "validity", "default_share", "defaults_in_excess", "item_score"]


def dqmi_items(f: pd.DataFrame, group_source: np.ndarray, group_subs: list[list[str]],
               headers: dict[str, frozenset[str]], items_of=None) -> pd.DataFrame:
    """NHS Digital's DQMI per item (scored field) of each summary group ``g``.

    ``f``: per (g, field) the sums over the group's submissions of ``rows``,
    ``rows_valid``, ``rows_present`` and ``rows_default`` (null when some submission's
    part did not record them). ``group_subs``: each group's submission ids; ``headers``:
    each submission's header; ``items_of(source)``: a feed's items (default
    :func:`scored_fields`). Every item of the group's feed gets a row:

    * coverage = share of the group's submissions whose header carried the item (any of
      its columns); empty when no submission's header was recorded;
    * sent = coverage > 0 (header unknown: the item has rows) and rows > 0;
    * completeness = 100 x rows_present / rows; validity = 100 x rows_valid / rows_present;
    * default_share = 100 x rows_default / rows_valid (items with declared defaults only);
    * defaults_in_excess = max(0, rows_default - threshold x rows) (0 without defaults);
    * item_score = 100 x (rows_valid - defaults_in_excess) / rows (NHS Digital, DQMI
      methodology, appendix 1)."""
    items_of = items_of or scored_fields
    nan = float("nan")
    counts = {(int(r.g), r.field): (r.rows, r.rows_valid, r.rows_present, r.rows_default)
              for r in f[["g", "field", "rows", "rows_valid", "rows_present", "rows_default"]].itertuples(index=False)}
    out = []
    for g, source in enumerate(group_source):
        subs = group_subs[g]
        known = [headers[s] for s in subs if s in headers]
        for sf in items_of(source):
            rows, valid, present, default = counts.get((g, sf.name), (0, 0, nan, nan))
            rows, valid, present, default = int(rows), int(valid), float(present), float(default)
            if known:
                coverage = sum(any(c in h for c in sf.cols) for h in known) / len(known)
                sent = coverage > 0 and rows > 0
            else:
                coverage = nan
                sent = rows > 0
            completeness = 100.0 * present / rows if rows else nan
            validity = 100.0 * valid / present if present > 0 else nan  # NaN > 0 is False
            if sf.has_defaults:
                share = 100.0 * default / valid if valid else nan
                excess = max(0.0, default - sf.default_threshold * rows) if default == default else nan
            else:
                share, excess = nan, 0.0
            score = 100.0 * (valid - excess) / rows if rows and excess == excess else nan
            out.append((g, sf.name, sf.has_defaults, rows, valid, present, default, coverage, sent, completeness, validity,
                        share, excess, score))
    return pd.DataFrame(out, columns=DQMI_ITEM_COLUMNS)


def _dqmi_summary(items: pd.DataFrame, n: int) -> dict[str, np.ndarray]:
    """Per group: the DQMI measures of its row of ``data_quality_summary`` (NaN = empty).
    Means are over the items sent (coverage: over every item of the feed); a mean over
    an item whose figure is unknown (a part written before it was recorded) is unknown."""
    res = {c: np.full(n, np.nan) for c in DQMI_COLUMNS}
    if items.empty:
        return res
    g = items["g"].to_numpy(dtype="int64")

    def put(name: str, values: pd.Series, known: pd.Series) -> None:
        v = values[known.reindex(values.index, fill_value=False).astype(bool)]
        res[name][v.index.to_numpy(dtype="int64")] = v.to_numpy(dtype="float64")

    cov = items["coverage"].astype("float64")
    put("dqmi_coverage", 100.0 * cov.groupby(g).mean(), cov.notna().groupby(g).all())
    sent = items[items["sent"].astype(bool)]
    sg = sent["g"].to_numpy(dtype="int64")
    present_known = sent["rows_present"].notna().groupby(sg).all()
    put("dqmi_completeness", sent["completeness"].astype("float64").groupby(sg).mean(), present_known)
    filled = sent[sent["rows_present"] > 0]
    put("dqmi_validity", filled["validity"].astype("float64").groupby(filled["g"].to_numpy(dtype="int64")).mean(),
        present_known)
    wd = sent[sent["has_defaults"].astype(bool) & (sent["rows_valid"] > 0)]
    wg = wd["g"].to_numpy(dtype="int64")
    put("dqmi_default_share", wd["default_share"].astype("float64").groupby(wg).mean(),
        wd["rows_default"].notna().groupby(wg).all())
    score = sent["item_score"].astype("float64")
    mean_score = score.groupby(sg).mean()
    known = score.notna().groupby(sg).all()
    res["dqmi_score"][:] = np.nan
    idx = mean_score.index.to_numpy(dtype="int64")
    vals = mean_score.to_numpy(dtype="float64") * res["dqmi_coverage"][idx] / 100.0
    ok = known.reindex(mean_score.index, fill_value=False).to_numpy(dtype=bool)
    res["dqmi_score"][idx[ok]] = vals[ok]
    return res


def data_quality_tables(dq_rules: pa.Table, dq_fields: pa.Table, ledger: pa.Table, settings,
                        quarantine: pa.Table | None = None,
                        submission_columns: pa.Table | None = None) -> dict[str, pa.Table]:
    """The two data-quality datasets, and (``dqmi_items``, a pandas frame, not a dataset)
    the DQMI figures of each item of each summary row. ``quarantine`` (the period's
    quarantine rows, at least ``period``, ``submission_id``, ``submitter_code``) gives a
    HES extract's rows quarantined per provider; without it those counts are empty.
    ``submission_columns`` (each submission's header, any period) gives DQMI coverage;
    without it coverage and the DQMI score are empty."""
    led = _frame(ledger, ["submission_id", "source", "submitter_code", "reporting_period", "status",
                          "reason", "rows_received", "rows_quarantined", "rows_kept"])
    led = led[led["status"].isin(KEEP_STATUSES) & led["source"].isin(SOURCES)]
    led = led.drop_duplicates("submission_id", keep="last").set_index("submission_id")
    keep = set(led.index)

    rules = _frame(dq_rules, ["period", "submission_id", "source", "submitter_code", "rule_id", "field",
                              "severity", "rows_checked", "rows_failed"])
    rules = rules[rules["submission_id"].isin(keep)]
    fields = _frame(dq_fields, ["period", "submission_id", "source", "submitter_code", "field", "rows", "rows_valid",
                                "rows_present", "rows_default"])
    fields = fields[fields["submission_id"].isin(keep)]
    rules, fields = _hes_provider(rules, led), _hes_provider(fields, led)
    q = None
    if quarantine is not None:
        q = _frame(quarantine.select([c for c in ("period", "submission_id", "submitter_code")
                                      if c in quarantine.column_names]),
                   ["period", "submission_id", "submitter_code"])
    key = ["period", "source", "submitter_code"]

    # ---------------------------------------------------------------- data_quality
    if len(rules):
        dq = (rules.assign(rows_checked=rules["rows_checked"].fillna(0).astype("int64"),
                           rows_failed=rules["rows_failed"].fillna(0).astype("int64"))
              .groupby(key + ["rule_id", "field", "severity"], dropna=False, sort=True)
              [["rows_checked", "rows_failed"]].sum().reset_index())
        dq["pct_passed"] = _pct(dq["rows_checked"] - dq["rows_failed"], dq["rows_checked"])
    else:
        dq = pd.DataFrame(columns=key + ["rule_id", "field", "severity", "rows_checked", "rows_failed", "pct_passed"])
    data_quality = schemas.get("data_quality").conform(
        pa.Table.from_pandas(dq.reset_index(drop=True), preserve_index=False))

    # ---------------------------------------------------------------- summary
    # Which (period, source, submitter) each submission belongs to: its dq rows' period,
    # else (no dq rows, e.g. an empty file) its reporting period. A HES extract has no
    # submitter of its own: its rows count under the provider in their PROCODE3, the
    # submitter_code its dq rows carry (one group per period and provider).
    placed = pd.concat([rules[["submission_id", "period", "submitter_code"]],
                        fields[["submission_id", "period", "submitter_code"]]])
    placed["source"] = placed["submission_id"].map(led["source"])
    hes = placed["source"].eq(HES).to_numpy(dtype=bool)
    placed["submitter_code"] = placed["submitter_code"].where(
        hes, placed["submission_id"].map(led["submitter_code"])).astype(object)
    placed.loc[hes & placed["submitter_code"].isna().to_numpy(), "submitter_code"] = HES_NO_PROVIDER
    placed = placed.drop_duplicates(["submission_id", "period", "submitter_code"])
    unplaced = ~led.index.isin(placed["submission_id"])
    extra = pd.DataFrame({"submission_id": led.index[unplaced].tolist(),
                          "period": led["reporting_period"].to_numpy()[unplaced].tolist(),
                          "source": led["source"].to_numpy()[unplaced].tolist(),
                          "submitter_code": led["submitter_code"].to_numpy()[unplaced].tolist()}, dtype="object")
    extra = extra.dropna(subset=["period"])
    extra = extra[extra["source"].ne(HES) & extra["submitter_code"].notna()]
    placed = pd.concat([placed, extra], ignore_index=True)
    hes = placed["source"].eq(HES).to_numpy(dtype=bool)
    for c in ("rows_received", "rows_quarantined", "rows_kept"):
        placed[c] = placed["submission_id"].map(led[c]).astype("Float64")
    if hes.any():
        counts = _hes_group_rows(placed[hes], fields, q)
        for c in ("rows_received", "rows_quarantined", "rows_kept"):
            placed.loc[hes, c] = counts[c].to_numpy()
    placed["held"] = placed["submission_id"].map(led["status"]).eq("held")
    placed["reason"] = placed["submission_id"].map(led["reason"])

    summary_schema = schemas.get("data_quality_summary").arrow_schema(include_partition=True)
    if placed.empty:
        return {
            "data_quality": data_quality,
            "data_quality_summary": schemas.get("data_quality_summary").conform(summary_schema.empty_table()),
            "dqmi_items": pd.DataFrame(columns=DQMI_ITEM_COLUMNS[1:] + ["period", "source", "submitter_code"]),
        }
    # One row per (period, source, submitter) group, in sorted key order; every table
    # below is worked out for all groups at once and lined up by the group number ``g``.
    grouped = placed.groupby(key, dropna=False, sort=True)
    placed["g"] = grouped.ngroup().to_numpy()
    groups = grouped.size().index.to_frame(index=False)
    n = len(groups)
    group_source = groups["source"].to_numpy(dtype=object)

    # Each group's fields: rows and rows present-and-valid summed over its submissions.
    # A HES extract's fields belong to their own (period, provider) group only.
    members = placed[["g", "submission_id"]].assign(member=_member(placed, hes)).drop_duplicates(["g", "member"])
    f = fields.loc[fields["field"].notna(), ["submission_id", "period", "submitter_code", "field", "rows", "rows_valid",
                                             "rows_present", "rows_default"]]
    f = f.assign(rows=f["rows"].fillna(0).astype("int64"), rows_valid=f["rows_valid"].fillna(0).astype("int64"),
                 rows_present=pd.to_numeric(f["rows_present"]).astype("float64"),
                 rows_default=pd.to_numeric(f["rows_default"]).astype("float64"),
                 member=_member(f, f["submission_id"].map(led["source"]).eq(HES).to_numpy(dtype=bool)))
    f = members[["g", "member"]].merge(f, on="member", how="inner")
    # DQMI counts: summed, empty when a submission's part did not record them
    dqmi_counts = (f.groupby(["g", "field"], sort=True)[["rows_present", "rows_default"]]
                   .sum(min_count=1).where(~f[["rows_present", "rows_default"]].isna()
                                           .groupby([f["g"], f["field"]], sort=True).any()))
    f = f.groupby(["g", "field"], sort=True)[["rows", "rows_valid"]].sum()
    f = f.join(dqmi_counts).reset_index()
    fg = f["g"].to_numpy(dtype="int64")
    f_rows = f["rows"].to_numpy(dtype="int64")
    f_valid = f["rows_valid"].to_numpy(dtype="int64")
    f_name = f["field"].to_numpy(dtype=object)
    nhs_field = pd.Series(group_source).map(NHS_NUMBER_FIELD).to_numpy(dtype=object)[fg]
    is_nhs = f_name == nhs_field

    # dq_score: 100 x the mean item score over the scored fields. Each group's sum is the
    # same numpy reduction as Series.mean's (fields in order, pairwise summation), so the
    # scores match to the last bit; np.add.reduceat adds in another order and does not.
    scored = (f_rows > 0) & ~(is_nhs & (group_source[fg] == "fft"))
    ratio = f_valid[scored] / f_rows[scored]
    sg = fg[scored]
    counts = np.bincount(sg, minlength=n)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    dq_score = np.full(n, np.nan)
    for g in np.flatnonzero(counts):
        dq_score[g] = 100.0 * (ratio[bounds[g]:bounds[g + 1]].sum() / np.float64(counts[g]))
    has_score = counts > 0

    # pct_valid_nhs_number from the group's NHS number field, when it has rows.
    nhs_rows = is_nhs & (f_rows > 0)
    pct_nhs = np.full(n, np.nan)
    pct_nhs[fg[nhs_rows]] = 100.0 * f_valid[nhs_rows].astype("float64") / f_rows[nhs_rows].astype("float64")
    has_nhs = np.zeros(n, dtype=bool)
    has_nhs[fg[nhs_rows]] = True

    below = has_score & (dq_score < float(settings.t("data_quality", "sanction_score")))
    sanctioned = np.isin(group_source, list(NHS_NUMBER_SANCTIONED)) & has_nhs
    below |= sanctioned & (pct_nhs < float(settings.t("data_quality", "sanction_nhs_number_pct")))

    # held, and the held submissions' distinct reasons in the order they come.
    # DQMI beside dq_score (NHS Digital's method; docs/data-quality.md "DQMI").
    group_subs = [[] for _ in range(n)]
    for g, sid in placed[["g", "submission_id"]].drop_duplicates().itertuples(index=False):
        group_subs[int(g)].append(sid)
    items = dqmi_items(f, group_source, group_subs, _headers(submission_columns))
    dqmi = _dqmi_summary(items, n)

    held = placed.groupby("g", sort=True)["held"].any().reindex(range(n), fill_value=False).to_numpy(dtype=bool)
    hr = placed.loc[placed["held"], ["g", "reason"]].dropna(subset=["reason"])
    hr = hr[np.array([bool(r) for r in hr["reason"]], dtype=bool)].drop_duplicates()
    reasons = hr.groupby("g", sort=True)["reason"].agg(lambda r: "; ".join(r))
    held_reason = np.full(n, None, dtype=object)
    held_reason[reasons.index.to_numpy(dtype="int64")] = reasons.to_numpy(dtype=object)

    # Row counts: summed over the submissions; null when none of them has the count.
    totals = placed.groupby("g", sort=True)[["rows_received", "rows_quarantined", "rows_kept"]].sum(min_count=1)

    def opt_int(c: str) -> pa.Array:
        v = totals[c]
        return pa.array(v.fillna(0).to_numpy(dtype="float64").astype("int64"), pa.int64(), mask=v.isna().to_numpy())

    summary = pa.Table.from_arrays([
        pa.array(groups["period"].tolist(), pa.string()),
        pa.array(groups["source"].tolist(), pa.string()),
        pa.array(groups["submitter_code"].tolist(), pa.string()),
        opt_int("rows_received"), opt_int("rows_quarantined"), opt_int("rows_kept"),
        pa.array(np.where(has_score, dq_score, 0.0), pa.float64(), mask=~has_score),
        pa.array(np.where(has_nhs, pct_nhs, 0.0), pa.float64(), mask=~has_nhs),
        pa.array(below, pa.bool_()),
        pa.array(held, pa.bool_()),
        pa.array(held_reason.tolist(), pa.string()),
        *[pa.array(np.nan_to_num(dqmi[c]), pa.float64(), mask=np.isnan(dqmi[c])) for c in DQMI_COLUMNS],
    ], schema=summary_schema)
    items = items.assign(period=groups["period"].to_numpy(dtype=object)[items["g"].to_numpy(dtype="int64")],
                         source=group_source[items["g"].to_numpy(dtype="int64")],
                         submitter_code=groups["submitter_code"].to_numpy(dtype=object)[items["g"].to_numpy(dtype="int64")])
    return {
        "data_quality": data_quality,
        "data_quality_summary": schemas.get("data_quality_summary").conform(summary),
        "dqmi_items": items.drop(columns=["g"]),
    }
