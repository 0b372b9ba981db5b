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
* ``held`` when any of the submissions is held, ``held_reason`` their reasons.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from expectations.rules import NHS_NUMBER_FIELD, NHS_NUMBER_SANCTIONED
from pipelines import schemas

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


def data_quality_tables(dq_rules: pa.Table, dq_fields: pa.Table, ledger: pa.Table, settings) -> dict[str, pa.Table]:
    led = _frame(ledger, ["submission_id", "source", "submitter_code", "reporting_period", "status",
                          "reason", "rows_received", "rows_quarantined", "rows_kept"])
    led = led[led["status"].isin(KEEP_STATUSES) & led["source"].isin(SOURCES)]
    led = led.drop_duplicates("submission_id", keep="last").set_index("submission_id")
    keep = set(led.index)

    rules = _frame(dq_rules, ["period", "submission_id", "source", "submitter_code", "rule_id", "field",
                              "severity", "rows_checked", "rows_failed"])
    rules = rules[rules["submission_id"].isin(keep)]
    fields = _frame(dq_fields, ["period", "submission_id", "source", "submitter_code", "field", "rows", "rows_valid"])
    fields = fields[fields["submission_id"].isin(keep)]
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
    # else (no dq rows, e.g. an empty file) its reporting period.
    placed = pd.concat([rules[["submission_id", "period"]], fields[["submission_id", "period"]]]).drop_duplicates()
    unplaced = [s for s in led.index if s not in set(placed["submission_id"])]
    extra = pd.DataFrame({"submission_id": unplaced,
                          "period": [led.at[s, "reporting_period"] for s in unplaced]}, dtype="object")
    placed = pd.concat([placed, extra.dropna(subset=["period"])], ignore_index=True)
    placed["source"] = placed["submission_id"].map(led["source"])
    placed["submitter_code"] = placed["submission_id"].map(led["submitter_code"])
    for c in ("rows_received", "rows_quarantined", "rows_kept"):
        placed[c] = placed["submission_id"].map(led[c]).astype("Float64")
    placed["held"] = placed["submission_id"].map(led["status"]).eq("held")
    placed["reason"] = placed["submission_id"].map(led["reason"])

    out_rows = []
    for (period, source, submitter), grp in placed.groupby(key, dropna=False, sort=True):
        subs = set(grp["submission_id"])
        f = fields[fields["submission_id"].isin(subs)]
        f = (f.assign(rows=f["rows"].fillna(0).astype("int64"), rows_valid=f["rows_valid"].fillna(0).astype("int64"))
             .groupby("field")[["rows", "rows_valid"]].sum())
        nhs_field = NHS_NUMBER_FIELD.get(source)
        scored = f[f["rows"] > 0]
        if source == "fft":
            scored = scored.drop(index=[nhs_field], errors="ignore")
        dq_score = float(100.0 * (scored["rows_valid"] / scored["rows"]).mean()) if len(scored) else None
        pct_nhs = None
        if nhs_field in f.index and f.at[nhs_field, "rows"] > 0:
            pct_nhs = float(100.0 * f.at[nhs_field, "rows_valid"] / f.at[nhs_field, "rows"])
        below = dq_score is not None and dq_score < float(settings.t("data_quality", "sanction_score"))
        if source in NHS_NUMBER_SANCTIONED and pct_nhs is not None:
            below = below or pct_nhs < float(settings.t("data_quality", "sanction_nhs_number_pct"))
        held = bool(grp["held"].any())
        reasons = [r for r in grp.loc[grp["held"], "reason"].dropna().unique().tolist() if r]
        total = lambda c: None if grp[c].isna().all() else int(grp[c].sum())  # noqa: E731
        out_rows.append({
            "period": period, "source": source, "submitter_code": submitter,
            "rows_received": total("rows_received"), "rows_quarantined": total("rows_quarantined"),
            "rows_kept": total("rows_kept"), "dq_score": dq_score, "pct_valid_nhs_number": pct_nhs,
            "below_sanction_threshold": bool(below), "held": held,
            "held_reason": "; ".join(reasons) if held and reasons else None,
        })
    summary_schema = schemas.get("data_quality_summary").arrow_schema(include_partition=True)
    summary = pa.Table.from_pylist(out_rows, schema=summary_schema) if out_rows else summary_schema.empty_table()
    return {
        "data_quality": data_quality,
        "data_quality_summary": schemas.get("data_quality_summary").conform(summary),
    }
