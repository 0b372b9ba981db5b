"""Reference data (:func:`load_reference`: ODS epraccur, providers, sites) and the
re-validation of files already taken in when a reference file they were validated against
changes (:func:`revalidate`)."""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import schemas
from pipelines.ingest.intake import (
    IngestReport,
    Validator,
    _as_of_submission,
    _context_from_tables,
    _is_held,
    validate_one,
)
from pipelines.ingest.ledger import (
    REVALIDATED_HELD,
    _event,
    _files,
    _hash_or_refuse,
    _Ledger,
    _now,
    _record_bad_names,
    _refuse_unopened,
    _reject,
    _unexpected,
    _write_event,
    _write_events,
    public_file_name,
    public_reason,
    read_ledger,
)
from pipelines.ingest.quarantine import _dq_tables, _quarantine
from pipelines.ingest.silver import (
    SILVER,
    _fft_silver,
    _str_array,
    _strip,
    _sus_silver,
    _warnings,
)
from pipelines.landing import (
    FileRejected,
    Limits,
    ParsedName,
    parse_bytes,
    parse_name,
    read_csv,
    to_date_yyyymmdd,
)
from pipelines.schemas.inputs import FEEDS
from pipelines.storage import Store, UnsafePath
from pipelines.warehouse import Warehouse

log = logging.getLogger(__name__)


def load_reference(landing: Store, warehouse: Warehouse, settings=None, *, validator: Validator | None = None,
                   engine=None) -> dict:
    """Read ``reference/epraccur.csv``, ``providers.csv`` and ``sites.csv`` into
    ``ref_practices``, ``ref_providers`` and ``ref_sites`` (epraccur dates YYYYMMDD),
    recording each file in the ledger. A file already taken in byte for byte is not read
    again; a new version under the same name replaces the table (ODS republishes its
    files under the same names), and the files already taken in are validated again
    against it (:func:`revalidate`; ``settings`` for the held share, defaults if None).
    Returns counts, rejections and the files validated again, for metadata. ``validator``
    and ``engine``: as for :func:`pipelines.ingest.intake.ingest`, for that re-validation."""
    ledger = _Ledger(warehouse)
    out: dict = {"ref_practices": None, "ref_providers": None, "ref_sites": None,
                 "files_taken": [], "rejected_files": []}
    report = IngestReport("reference", None)
    files = _files(landing, "reference")
    _record_bad_names(landing, files, ledger, warehouse, report)
    limits = Limits.from_settings(settings)
    target = {"epraccur": "ref_practices", "providers": "ref_providers", "sites": "ref_sites"}
    arrived: list[tuple[ParsedName, dict]] = []
    for fi in files:
        parsed = parse_name(fi.path)
        if fi.kind != "file" or not isinstance(parsed, ParsedName):
            continue
        table_name = target[parsed.feed]
        if ledger.unchanged(fi) and warehouse.store.exists(warehouse.path(table_name)):
            continue
        hashed = _hash_or_refuse(landing, warehouse, fi, ledger, report)
        if hashed is None:
            continue
        sha, size = hashed
        if ledger.has(fi.path, sha) and warehouse.store.exists(warehouse.path(table_name)):
            continue
        first = ledger.first_seen(fi.path, sha)
        try:
            frame, _ = read_csv(landing, fi.path, parsed.feed, limits, size)
            table = _reference_table(parsed.feed, frame)
        except FileRejected as exc:
            _reject(warehouse, parsed, sha, size, first, exc.reason, report)
            continue
        except UnsafePath:
            _refuse_unopened(warehouse, fi, "link", ledger, report)
            continue
        except Exception as exc:  # noqa: BLE001 - no file can stop the pipeline
            _reject(warehouse, parsed, sha, size, first, _unexpected(fi.path, "reading it", exc), report)
            continue
        warehouse.write(table_name, table)
        # The ledger outcome is written after the files already taken in are validated
        # again against it: a run stopped part-way takes the file in again, and does the
        # re-validation again.
        arrived.append((parsed, _event(parsed, sha, size, first, "taken", None, received=len(frame),
                                       quarantined=0, kept=table.num_rows)))
        ledger.keys.add((fi.path, sha))
        out["files_taken"].append(fi.path)
    if arrived:
        out["revalidated"] = revalidate(landing, warehouse, arrived, settings, validator=validator, engine=engine)
        for _, e_ in arrived:
            _write_event(warehouse, e_, "outcome")
    for name in target.values():
        out[name] = warehouse.read(name).num_rows
    out["rejected_files"] = report.rejected_files
    return out


REFERENCE_RULES = {"sites": ("fft", "SITE_CODE_PROVIDER"), "epraccur": ("sus_apc", "GPPRAC_UNKNOWN")}
"""The rules that read reference data (expectations/fft.py, expectations/sus_apc.py): the
reference file, the feed whose files it validates, the rule. ``providers.csv`` feeds no
rule (only the commissioner of the computed figures, which follow it from then on); GP
extracts have no rule on reference data. HES extracts (many periods in one file) are not
validated again: their GPPRAC warnings stay as first counted."""


def _sid_rows(warehouse: Warehouse, table: str, period: str, sids: set[str], columns: list[str]) -> pa.Table:
    """Only ``columns`` of the rows of the submissions ``sids`` in a period of a table
    (a national month of SUS episodes is not read whole for three columns)."""
    import pyarrow.dataset as pads

    if not sids:
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    data = warehouse.dataset(table, [period], columns=columns)
    return data.to_table(filter=pads.field("submission_id").isin(sorted(sids)))


def _fft_now_differs(warehouse: Warehouse, period: str, sids: set[str], site_providers: dict) -> set[str]:
    """FFT submissions of ``period`` with a row whose SITE_CODE_PROVIDER verdict the sites
    now change: a kept row whose site is not one of its provider's (the provider has sites
    listed), or a row quarantined for that rule alone whose site now is."""
    sites_of: dict[str, set[str]] = {}
    for site, prov in site_providers.items():
        sites_of.setdefault(prov, set()).add(site)
    out: set[str] = set()
    kept = _sid_rows(warehouse, "fft_responses", period, sids, ["submission_id", "site_code", "provider_code"])
    for sid, site, prov in zip(kept.column("submission_id").to_pylist(), kept.column("site_code").to_pylist(),
                               kept.column("provider_code").to_pylist()):
        if prov in sites_of and site not in sites_of[prov]:
            out.add(sid)
    q = _sid_rows(warehouse, "quarantine", period, sids - out, ["submission_id", "rule_ids", "raw"])
    for sid, ids, raw in zip(q.column("submission_id").to_pylist(), q.column("rule_ids").to_pylist(),
                             q.column("raw").to_pylist()):
        if ids != ["SITE_CODE_PROVIDER"]:
            continue
        try:
            row = json.loads(raw)
        except (TypeError, ValueError):
            continue
        norm = {str(k).strip().upper(): v for k, v in row.items()}
        prov = str(norm.get("PROVIDER_CODE") or "").strip().upper()
        site = str(norm.get("SITE_CODE") or "").strip().upper()
        if prov not in sites_of or site in sites_of[prov]:
            out.add(sid)
    return out


def _sus_now_differs(warehouse: Warehouse, period: str, sids: set[str], practices: set[str]) -> set[str]:
    """SUS submissions of ``period`` with a kept episode whose GPPRAC_UNKNOWN warning the
    practices now change (a superset: the re-validation says what really changed)."""
    from expectations.rules import PRACTICE_PLACEHOLDERS

    known = set(practices) | set(PRACTICE_PLACEHOLDERS)
    kept = _sid_rows(warehouse, "sus_episodes", period, sids, ["submission_id", "gpprac", "dq_warnings"])
    out: set[str] = set()
    for sid, gp, warns in zip(kept.column("submission_id").to_pylist(), kept.column("gpprac").to_pylist(),
                              kept.column("dq_warnings").to_pylist()):
        warned = "GPPRAC_UNKNOWN" in (warns or [])
        now = bool(practices) and gp is not None and gp.strip().upper() not in known
        if warned != now:
            out.add(sid)
    return out


def revalidate(landing: Store, warehouse: Warehouse, arrived: list[tuple[ParsedName, dict]],
               settings=None, *, validator: Validator | None = None, engine=None) -> list[dict]:
    """Validate again, against the reference data now in the warehouse, the files already
    taken in whose rules read a reference file that has just ``arrived`` (a list of
    (parsed name, its ledger event)). Only the files where a row's verdict changes are
    validated again, from their bytes in the landing zone (the same bytes, checked by
    SHA-256): their kept rows, quarantine and data-quality rows are replaced by the new
    outcome (rows that now fail are quarantined, rows that now pass are kept again), and
    a ``revalidated`` event in the ledger gives their new counts and says what changed
    (a file with more than ``held_reject_share`` of its rows now rejected is held, as at
    take-in; one under it again is no longer held). Returns one entry per file validated
    again."""
    feeds = {p.feed: (p, e) for p, e in arrived if p.feed in REFERENCE_RULES}
    if not feeds:
        return []
    if settings is None:
        from pipelines.config import Settings

        settings = Settings()
    context = _context_from_tables(warehouse, None)
    led = read_ledger(warehouse).to_pandas()
    done: list[dict] = []
    for feed, (ref, ref_event) in feeds.items():
        source, rule = REFERENCE_RULES[feed]
        files = led[(led["source"] == source) & led["status"].isin(["current", "superseded", "held"])]
        if files.empty:
            continue
        for period, grp in files.groupby("reporting_period"):
            sids = set(grp["submission_id"])
            if source == "fft":
                changed = _fft_now_differs(warehouse, period, sids, getattr(context, "site_providers", None) or {})
            else:
                changed = _sus_now_differs(warehouse, period, sids, set(getattr(context, "practice_codes", None) or ()))
            for r in grp[grp["submission_id"].isin(changed)].itertuples(index=False):
                got = _revalidate_file(landing, warehouse, r, context, ref, ref_event, rule, settings,
                                       validator=validator, engine=engine)
                if got is not None:
                    done.append(got)
    return done


def _revalidate_file(landing: Store, warehouse: Warehouse, r, context, ref: ParsedName, ref_event: dict,
                     rule: str, settings, *, validator: Validator | None = None, engine=None) -> dict | None:
    parsed = parse_name(r.file_name)
    source, period, sid = parsed.source, parsed.reporting_period, parsed.submission_id
    ref_label = f"{ref.file_name} of {pd.Timestamp(ref_event['first_seen_at']).strftime('%Y-%m-%d')}"
    stage = f"revalidated-{ref_event['sha256'][:12]}"

    def note(reason: str, **counts) -> dict:
        event = _event(parsed, r.sha256, None if pd.isna(r.size_bytes) else int(r.size_bytes), _now(),
                       "revalidated", reason, **counts)
        _write_events(warehouse, [event], stage)
        shown = public_file_name(r.file_name, r.sha256)
        log.warning("%s: %s", shown, public_reason(reason, r.file_name, {r.file_name: shown}))
        return {"file_name": r.file_name, "reason": reason}

    try:
        data = landing.read_bytes(r.file_name, regular_only=True)
    except Exception:  # noqa: BLE001 - gone from the landing zone (or no longer a regular file)
        data = None
    if data is None or hashlib.sha256(data).hexdigest() != r.sha256:
        return note(f"not re-validated against {ref_label}: the file taken in is no longer in the landing "
                    f"zone as it was; its rows stand as first validated")
    try:
        frame, _ = parse_bytes(data, r.file_name, FEEDS[source], Limits.from_settings(settings))
    except FileRejected:
        return None  # taken in before, so readable: a reader change, left as it was
    outcome = validate_one(source, frame, period=period, submitter=parsed.submitter_code, file_name=r.file_name,
                           context=_as_of_submission(context, parsed), data_docs_dir=None, validator=validator,
                           engine=engine)
    rejected = np.asarray(outcome.rejected, dtype=bool)
    kept = ~rejected
    received, n_rej = len(frame), int(rejected.sum())
    old_lines = set(_sid_rows(warehouse, "quarantine", period, {sid}, ["submission_id", "line"])
                    .column("line").to_pylist())
    new_lines = set(frame["_line"].to_numpy()[rejected].tolist())
    old_rules = _sid_rows(warehouse, "dq_rules", period, {sid}, ["submission_id", "rule_id", "rows_failed"]).to_pandas()
    old_fails = int(old_rules.loc[old_rules["rule_id"] == rule, "rows_failed"].sum())
    rc = outcome.rule_counts
    new_fails = int(rc.loc[rc["rule_id"] == rule, "rows_failed"].sum()) if len(rc) else 0
    if new_lines == old_lines and new_fails == old_fails:
        return None
    # Replace the file's rows: the new quarantine and data-quality parts first, then the
    # old rows taken out of the parts they share with other files, then the ledger event,
    # then the kept rows (what the next run's check reads: a run stopped part-way does it
    # all again).
    own = f"{sid}-revalidated"
    q = _quarantine(frame, rejected, outcome, source=source, file_name=r.file_name, submission_id=sid,
                    submitter=parsed.submitter_code, periods=period)
    rules, fields = _dq_tables([(period, sid, source, parsed.submitter_code, outcome.rule_counts,
                                 outcome.field_scores)])
    for table, new in (("quarantine", q), ("dq_rules", rules), ("dq_fields", fields)):
        warehouse.write(table, new, period, part=own)
        for path in warehouse.parts(table, [period]):
            if path.rsplit("/", 1)[-1] == f"{own}.parquet":
                continue
            t = warehouse.store.read_parquet(path)
            mine = pc.equal(t.column("submission_id"), sid)
            if not pc.any(mine).as_py():
                continue
            rest = t.filter(pc.invert(mine))
            if rest.num_rows:
                warehouse.store.write_parquet(path, rest)
            else:
                warehouse.store.delete(path)
    now_q, now_k = len(new_lines - old_lines), len(old_lines - new_lines)
    what = [f"{n} row{'s' if n != 1 else ''} now quarantined" for n in [now_q] if n]
    what += [f"{n} row{'s' if n != 1 else ''} now kept" for n in [now_k] if n]
    if new_fails != old_fails:
        what.append(f"{rule} now fails on {new_fails} row{'s' if new_fails != 1 else ''} (was {old_fails})")
    if _is_held(received, n_rej, settings):
        share = float(settings.t("data_quality", "held_reject_share"))
        reason = (f"{REVALIDATED_HELD}{ref_label}: {', '.join(what)}; {n_rej} of {received} rows rejected, "
                  f"more than {share:.0%}: nothing downstream is computed from this file and earlier data for "
                  f"{parsed.submitter_code} {period} stay in force")
    else:
        reason = f"re-validated against {ref_label}: {', '.join(what)}"
    got = note(reason, received=received, quarantined=n_rej, kept=received - n_rej)
    warn = _warnings(outcome, kept)
    kept_frame = frame.iloc[np.flatnonzero(kept)]
    silver = (_fft_silver(kept_frame, parsed, period, warn) if source == "fft"
              else _sus_silver(kept_frame, source, parsed.protocol, period, sid, warn))
    warehouse.write(SILVER[source], silver, period, part=sid)
    return got


def _reference_table(feed: str, frame: pd.DataFrame) -> pa.Table:
    s = lambda c: _str_array(_strip(frame, c))  # noqa: E731
    if feed == "epraccur":
        t = pa.table({
            "practice_code": _str_array(_strip(frame, "ORG_CODE").str.upper()),
            "name": s("NAME"), "postcode": s("POSTCODE"),
            "open_date": to_date_yyyymmdd(_strip(frame, "OPEN_DATE")),
            "close_date": to_date_yyyymmdd(_strip(frame, "CLOSE_DATE")),
            "status": s("STATUS"), "commissioner_code": s("COMMISSIONER_CODE"),
            "prescribing_setting": s("PRESCRIBING_SETTING"),
        })
        key = "practice_code"
        ds = "ref_practices"
    elif feed == "providers":
        t = pa.table({"provider_code": _str_array(_strip(frame, "PROVIDER_CODE").str.upper()),
                      "name": s("NAME"), "commissioner_code": s("COMMISSIONER_CODE")})
        key, ds = "provider_code", "ref_providers"
    else:
        t = pa.table({"site_code": _str_array(_strip(frame, "SITE_CODE").str.upper()),
                      "provider_code": _str_array(_strip(frame, "PROVIDER_CODE").str.upper()),
                      "name": s("NAME")})
        key, ds = "site_code", "ref_sites"
    # A row without its code cannot be referred to: left out (counted in the ledger).
    t = t.filter(pc.is_valid(t.column(key)))
    return schemas.get(ds).conform(t)
