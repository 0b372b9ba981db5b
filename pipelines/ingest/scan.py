"""The landing zone's scan (:func:`scan_landing`: a ``seen`` event per new file) and the
periods with work to do or with data (:func:`pending_periods`, :func:`periods_with_data`)."""

from __future__ import annotations

import hashlib
import logging

from pipelines.ingest.intake import IngestReport
from pipelines.ingest.ledger import (
    SEEN_PER_PART,
    TAKEN,
    _event,
    _events,
    _files,
    _Ledger,
    _now,
    _record_bad_names,
    _refuse_unopened,
    _unexpected,
    _write_events,
)
from pipelines.landing import (
    ParsedName,
    Rejection,
    parse_name,
    sha256_stream,
)
from pipelines.storage import FileInfo, Store, UnsafePath
from pipelines.warehouse import Warehouse

log = logging.getLogger(__name__)


def scan_landing(landing: Store, warehouse: Warehouse, settings=None, *, per_part: int = SEEN_PER_PART) -> dict:
    """Record every file of the landing zone in the ledger: a file not seen before gets a
    ``seen`` event (name, size, SHA-256, first seen); a misnamed one is rejected at once.
    Reads nothing but bytes for the hash; takes nothing in. The events are written
    ``per_part`` to a ledger part (:data:`~pipelines.ingest.ledger.SEEN_PER_PART`: a
    national month brings 6,500 new files)."""
    ledger = _Ledger(warehouse)
    files = _files(landing, "")
    report = IngestReport("scan", None)
    _record_bad_names(landing, files, ledger, warehouse, report)
    new = 0
    seen: list[dict] = []
    for fi in files:
        if fi.kind != "file":
            continue
        parsed = parse_name(fi.path)
        if isinstance(parsed, Rejection) or ledger.unchanged(fi, outcomes_only=False):
            continue
        try:
            sha, size = sha256_stream(landing, fi.path)
        except UnsafePath:
            _refuse_unopened(warehouse, fi, "link", ledger, report)
            continue
        except Exception as exc:  # noqa: BLE001 - no file can stop the pipeline
            _refuse_unopened(warehouse, fi, "error", ledger, report, _unexpected(fi.path, "reading it", exc))
            continue
        if (fi.path, sha) in ledger.seen:
            continue
        seen.append(_event(parsed, sha, size, _now(), "seen"))
        ledger.seen[(fi.path, sha)] = _now()
        new += 1
        if len(seen) >= per_part:
            _write_events(warehouse, seen, "seen")
            seen = []
    _write_events(warehouse, seen, "seen")
    return {"files": len(files), "new_files": new, "rejected_files": report.rejected_files,
            "pending_periods": sorted(pending_periods(landing, warehouse))}


def pending_periods(landing: Store, warehouse: Warehouse) -> dict[str, str]:
    """Reporting periods with work to do, each with a fingerprint of that work (for a
    sensor's run key). Cheap: lists and reads the ledger, never reads a landing file.

    * GP, SUS and FFT files not yet taken in (no outcome in the ledger for that name and
      size, or modified since), by the period in their name;
    * periods with rows of a HES extract (taken in by ``ingest_hes``, which has no period)
      newer than the period's current view: the HES rows have not been run through the
      period yet."""
    ledger = _Ledger(warehouse)
    out: dict[str, list[str]] = {}
    for folder in ("gp", "sus_apc", "fft"):
        for fi in landing.list(folder):
            parsed = parse_name(fi.path)
            if not isinstance(parsed, ParsedName):
                continue
            done = ledger.unchanged(fi)
            if not done:
                out.setdefault(parsed.reporting_period, []).append(f"{fi.path}:{fi.size}:{fi.modified.isoformat()}")
    hes = _hes_parts(landing, warehouse, ledger)
    if hes:
        views = {f.path.split("period=", 1)[1].split("/", 1)[0]: f.modified
                 for f in warehouse.store.list("work/current_sus_episodes") if f.path.endswith(".parquet")}
        for period, parts in hes.items():
            newer = [f for f in parts if period not in views or f.modified > views[period]]
            if newer:
                out.setdefault(period, []).extend(f"{f.path}:{f.size}:{f.modified.isoformat()}" for f in newer)
    return {p: hashlib.sha256("\n".join(sorted(v)).encode()).hexdigest()[:16] for p, v in sorted(out.items())}


def _hes_parts(landing: Store, warehouse: Warehouse, ledger: _Ledger | None = None,
               present: set[str] | None = None) -> dict[str, list[FileInfo]]:
    """Period -> the silver and quarantine parts written from the HES extracts that are in
    the landing zone now (taken in or held: a part is named by its file's submission id)."""
    ledger = ledger or _Ledger(warehouse)
    files = [fi for fi in landing.list("hes_apc") if present is None or fi.path in present]
    taken = set(ledger.outcomes.loc[ledger.outcomes["status"].isin(TAKEN), "file_name"])
    sids = set()
    for fi in files:
        parsed = parse_name(fi.path)
        if isinstance(parsed, ParsedName) and fi.path in taken:
            sids.add(parsed.submission_id)
    out: dict[str, list[FileInfo]] = {}
    if not sids:
        return out
    for table in ("sus_episodes", "quarantine"):
        folder = warehouse.path(table, "_", "_").split("/period=", 1)[0]
        prefix = folder + "/period="
        for f in warehouse.store.list(folder):
            if not (f.path.startswith(prefix) and f.path.endswith(".parquet")):
                continue
            period, name = f.path[len(prefix):].split("/", 1)
            if name[: -len(".parquet")] in sids:
                out.setdefault(period, []).append(f)
    return out


def periods_with_data(warehouse: Warehouse, landing: Store | None = None) -> list[str]:
    """Every reporting period with a submission taken in (or HES rows), sorted.

    With ``landing``: only the periods whose data come from files that are in the landing
    zone now (a GP, SUS or FFT file taken in or held, by the period of its name; a HES
    extract taken in, by the periods of its rows). A period whose files were all removed
    from the landing zone is no longer one: it stops being run (its warehouse files and
    its last publication stay as they were)."""
    ev = _events(warehouse)
    taken = ev.loc[ev["status"].isin(TAKEN)]
    if landing is None:
        found: set[str] = set()
        for t in ("gp_patients", "sus_episodes", "fft_responses", "quarantine"):
            found.update(warehouse.periods(t))
        found.update(p for p in taken["reporting_period"].dropna())
        return sorted(found)
    present = {fi.path for fi in landing.list("")}
    found = {p for p, f in zip(taken["reporting_period"], taken["file_name"]) if f in present and isinstance(p, str)}
    found.update(_hes_parts(landing, warehouse, present=present))
    return sorted(found)
