"""HES APC extracts (:func:`ingest_hes`): one file holds many providers and periods; each
row is filed under its PROCODE3 and EPIEND month, the file validated once and its
data-quality counts split by (period, provider)."""

from __future__ import annotations

import logging
from datetime import date, datetime

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.drift import header_rows
from pipelines.ingest.intake import (
    IngestReport,
    Validator,
    _account,
    _as_of,
    _held_reason,
    _is_held,
    _read_candidate,
    _reference_context,
    _remove_file_parts,
    validate_one,
)
from pipelines.ingest.ledger import (
    _event,
    _files,
    _Ledger,
    _record_bad_names,
    _reject,
    _unexpected,
    _write_event,
    public_file_name,
)
from pipelines.ingest.quarantine import _dq_tables, _quarantine
from pipelines.ingest.scan import periods_with_data
from pipelines.ingest.silver import _parse_dates, _strip, _sus_silver, _warnings
from pipelines.landing import (
    Limits,
    ParsedName,
    parse_name,
)
from pipelines.storage import Store
from pipelines.warehouse import Warehouse

log = logging.getLogger(__name__)


def ingest_hes(landing: Store, warehouse: Warehouse, settings, *, today: date | None = None,
               data_docs_dir: str | None = None, validator: Validator | None = None,
               engine=None) -> IngestReport:
    """Take in every not-yet-taken-in HES APC extract under ``hes_apc/``. Each row belongs
    to the provider in its PROCODE3 and the month of its EPIEND; rows whose EPIEND is
    not a date or a HES placeholder (they are quarantined: EPIEND is required) are filed
    under the file's latest EPIEND month (the month it was first seen if it has none), so
    they open no period of their own. Silver, quarantine and data-quality parts are written per
    period (part = the file's submission id); the ledger holds one row per file.
    ``validator`` and ``engine``: as for :func:`pipelines.ingest.intake.ingest`."""
    report = IngestReport("hes_apc", None)
    ledger = _Ledger(warehouse)
    files = _files(landing, "hes_apc")
    report.files_listed = len(files)
    _record_bad_names(landing, files, ledger, warehouse, report)
    limits = Limits.from_settings(settings)
    context = None
    for fi in files:
        parsed = parse_name(fi.path)
        if fi.kind != "file" or not isinstance(parsed, ParsedName):
            continue
        got = _read_candidate(landing, fi, parsed, "hes_apc", ledger, warehouse, report, limits)
        if got is None:
            continue
        frame, _info, sha, first = got
        if context is None:
            context = _reference_context(landing, warehouse, today, validator=validator, engine=engine)
        try:
            _take_in_hes(parsed, frame, sha, fi.size, first, warehouse, settings, context, data_docs_dir, report,
                         validator=validator, engine=engine)
        except Exception as exc:  # noqa: BLE001 - no file can stop the pipeline
            periods = sorted({*periods_with_data(warehouse)})
            _remove_file_parts(warehouse, periods, parsed.submission_id)
            _reject(warehouse, parsed, sha, fi.size, first, _unexpected(fi.path, "taking it in", exc), report)
        ledger.keys.add((fi.path, sha))
    return report


def _hes_group_counts(frame: pd.DataFrame, outcome, context, groups: pd.Series, file_name: str):
    """Per (period, provider) group: each rule's rows checked and failed, and each scored
    field's rows and rows present-and-valid, from one validation of the whole file.
    Rows checked per group count the rows where the column the rule reads is present
    (a not-null rule checks every row), as the validator counts them; where that does not
    add up to the validator's own count, its count is shared out by group size."""
    from expectations.rules import Env
    from pipelines import validation as V

    n = len(frame)
    codes, uniques = pd.factorize(groups)
    uniques = list(uniques)
    ng = len(uniques)
    rc = outcome.rule_counts.set_index("rule_id") if len(outcome.rule_counts) else None
    failed: dict[str, np.ndarray] = {}
    for i, ids in enumerate(outcome.rule_ids):
        for r in ids:
            failed.setdefault(r, np.zeros(n, dtype=bool))[i] = True
    lines = frame["_line"].to_numpy()
    sizes = np.bincount(codes, minlength=ng)

    def per_group(mask: np.ndarray) -> np.ndarray:
        return np.bincount(codes[mask], minlength=ng)

    env = Env(source="hes_apc", file_name=file_name,
              site_providers=getattr(context, "site_providers", None),
              practice_codes=frozenset(context.practice_codes) if getattr(context, "practice_codes", None) else None,
              today=getattr(context, "today", None) or date.today())
    try:
        work = V._work_frame("hes_apc", frame, env)
        suite_rules = V.SUITES["hes_apc"].RULES
        scored = V.SUITES["hes_apc"].SCORED
    except Exception:  # noqa: BLE001 - the validator's internals changed: fall back to shares
        work, suite_rules, scored = None, [], ()
    rule_rows = []
    done = set()
    for rule in suite_rules:
        kw = rule.kwargs(env)
        if kw is None or rc is None or rule.id not in rc.index:
            continue
        present = None
        try:
            if rule.expectation in ("ExpectColumnValuesToNotBeNull", "ExpectColumnValuesToBeNull"):
                present = np.ones(n, dtype=bool)
            elif "column_A" in kw:
                present = (work[kw["column_A"]].notna() & work[kw["column_B"]].notna()).to_numpy(dtype=bool)
            else:
                present = work[kw["column"]].notna().to_numpy(dtype=bool)
        except (KeyError, TypeError):
            present = None
        rule_rows.append((rule.id, rule.field, rule.severity, present))
        done.add(rule.id)
    if rc is not None:
        for rid in rc.index:
            if rid not in done:
                rule_rows.append((rid, rc.at[rid, "field"], rc.at[rid, "severity"], None))
    out_rules = []
    for rid, fld, sev, present in rule_rows:
        total = int(rc.at[rid, "rows_checked"])
        if present is not None and int(present.sum()) == total:
            checked = per_group(present)
        else:
            checked = np.floor(total * sizes / max(n, 1) + 0.5).astype(np.int64)
        fmask = failed.get(rid, np.zeros(n, dtype=bool))
        fails = per_group(fmask)
        examples: dict[int, list[int]] = {}
        for i in np.flatnonzero(fmask):
            examples.setdefault(int(codes[i]), []).append(int(lines[i]))
        for g in range(ng):
            out_rules.append({"group": uniques[g], "rule_id": rid, "field": fld, "severity": sev,
                              "rows_checked": int(checked[g]), "rows_failed": int(fails[g]),
                              "example_lines": sorted(examples.get(g, []))[:5]})
    field_of = {r.id: r.field for r in suite_rules}
    out_fields = []
    for sf in scored:
        present = np.zeros(n, dtype=bool)
        for c in sf.cols:
            present |= work[c].notna().to_numpy()
        invalid = np.zeros(n, dtype=bool)
        for rid, mask in failed.items():
            if field_of.get(rid) in sf.cols:
                invalid |= mask
        is_valid = present & ~invalid
        valid = per_group(is_valid)
        filled = per_group(present)  # DQMI completeness and default values
        default = per_group(is_valid & sf.default_rows(lambda c: work[c]))
        for g in range(ng):
            out_fields.append({"group": uniques[g], "field": sf.name, "rows": int(sizes[g]),
                               "rows_valid": int(valid[g]), "rows_present": int(filled[g]),
                               "rows_default": int(default[g])})
    if not scored and len(outcome.field_scores):
        # Fallback: the whole file's field scores, shared out by group size.
        for r in outcome.field_scores.itertuples(index=False):
            for g in range(ng):
                out_fields.append({"group": uniques[g], "field": r.field, "rows": int(sizes[g]),
                                   "rows_valid": int(round(r.rows_valid * sizes[g] / max(n, 1)))})
    return (pd.DataFrame(out_rules, columns=["group", "rule_id", "field", "severity", "rows_checked",
                                             "rows_failed", "example_lines"]),
            pd.DataFrame(out_fields, columns=["group", "field", "rows", "rows_valid", "rows_present", "rows_default"]))


def _take_in_hes(parsed: ParsedName, frame: pd.DataFrame, sha: str, size: int, first: datetime,
                 warehouse: Warehouse, settings, context, data_docs_dir, report: IngestReport, *,
                 validator: Validator | None = None, engine=None) -> None:
    sid = parsed.submission_id
    # No date after the file was submitted: a HES extract's name has no submission time,
    # so the time it was first seen stands for it.
    context = _as_of(context, first.date())
    outcome = validate_one("hes_apc", frame, period=None, submitter=None, file_name=parsed.file_name,
                           context=context, data_docs_dir=data_docs_dir, validator=validator, engine=engine)
    rejected = np.asarray(outcome.rejected, dtype=bool)
    n = len(frame)
    # A placeholder EPIEND is missing (quarantined: EPIEND is required): it opens no period.
    epiend = _parse_dates(_strip(frame, "EPIEND"))
    # Rows with no EPIEND date (quarantined) open no period of their own: they go under
    # the file's latest EPIEND month, or the month it was first seen if it has none.
    months = epiend.dt.strftime("%Y-%m").astype(object)
    fallback = max(months.dropna(), default=first.strftime("%Y-%m"))
    periods = months.where(epiend.notna(), fallback).to_numpy()
    procode = _strip(frame, "PROCODE3").str.upper()
    provider = procode.astype(object).where(procode.notna(), None).to_numpy()
    groups = pd.Series([f"{p}|{s or ''}" for p, s in zip(periods, provider)])
    rule_rows, field_rows = _hes_group_counts(frame, outcome, context, groups, parsed.file_name)
    rule_period = rule_rows["group"].str.split("|", n=1).str[0]
    field_period = field_rows["group"].str.split("|", n=1).str[0]

    kept = ~rejected
    silver_all = _sus_silver(frame.iloc[np.flatnonzero(kept)], "hes_apc", None, periods[kept], sid,
                             _warnings(outcome, kept))
    q_all = _quarantine(frame, rejected, outcome, source="hes_apc", file_name=parsed.file_name,
                        submission_id=sid, submitter=list(provider), periods=list(periods))
    silver_periods = np.asarray(silver_all.column("period").to_pylist(), dtype=object)
    q_periods = np.asarray(q_all.column("period").to_pylist(), dtype=object)
    per_period: dict[str, tuple[int, int, int]] = {}
    for period in sorted(set(periods.tolist())):
        in_p = periods == period
        warehouse.write("sus_episodes", silver_all.filter(pa.array(silver_periods == period)), period, part=sid)
        warehouse.write("quarantine", q_all.filter(pa.array(q_periods == period)), period, part=sid)
        rr = rule_rows[(rule_period == period).to_numpy(dtype=bool)]
        ff = field_rows[(field_period == period).to_numpy(dtype=bool)]
        subs_r = [g.split("|", 1)[1] or None for g in rr["group"]]
        ff = ff.assign(submitter_code=[g.split("|", 1)[1] or None for g in ff["group"]])
        rules, fields = _dq_tables([(period, sid, "hes_apc", subs_r, rr, ff)])
        warehouse.write("dq_rules", rules, period, part=sid)
        warehouse.write("dq_fields", fields, period, part=sid)
        per_period[period] = (int(in_p.sum()), int((in_p & rejected).sum()), int((in_p & kept).sum()))
    # The header's names only (schema drift, DQMI coverage), once, under the latest month.
    at = max(per_period, default=first.strftime("%Y-%m"))
    warehouse.write("submission_columns", header_rows(
        at, sid, "hes_apc", None, public_file_name(parsed.file_name, sha), first,
        [c for c in frame.columns if c != "_line"]), at, part=sid)
    received, n_rej = n, int(rejected.sum())
    held = _is_held(received, n_rej, settings)
    reason = (_held_reason(parsed.file_name, received, n_rej, outcome.rule_ids, rejected, None, None, settings)
              if held else None)
    _write_event(warehouse, _event(parsed, sha, size, first, "held" if held else "taken", reason,
                                   received=received, quarantined=n_rej, kept=received - n_rej), "outcome")
    _account(report, parsed.file_name, sid, per_period, held, reason, outcome, 0)
