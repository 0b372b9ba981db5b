"""Landing zone to warehouse: the ledger, reference data, and each feed's submissions
validated into silver (kept rows, typed) and quarantine (rejected rows, with every rule
they broke). See ``docs/ingest.md``.

Public API (no Dagster here; the assets call one function per source and period)::

    scan_landing(landing, warehouse, settings=None) -> dict
    load_reference(landing, warehouse, settings=None) -> dict
    ingest(source, period, landing, warehouse, settings, *, today=None, data_docs_dir=None) -> IngestReport
    ingest_hes(landing, warehouse, settings, *, today=None, data_docs_dir=None) -> IngestReport
    read_ledger(warehouse) -> pa.Table                 # conformed to schemas.get("ledger")
    submissions_dataset(warehouse, periods=None) -> pa.Table  # conformed to "submissions"
    periods_with_data(warehouse, landing=None) -> list[str]
    pending_periods(landing, warehouse) -> dict[str, str]

The ledger is append-only: one small Parquet file per event under ``ledger/parts/``
(``<sha256[:16]>-<sha1(path)[:8]>-<stage>.parquet``, stage ``seen`` or ``outcome``), so
that period partitions running at the same time never rewrite each other's files.
:func:`read_ledger` reconciles the events and derives each file's status (current,
superseded, held, rejected) from the submission rules at read time.

Nothing here logs or raises with a value of a row: only file names, counts, rule ids and
line numbers. Type 1 objection rows are dropped by :mod:`pipelines.landing` as the file is
read; only their count per practice reaches ``gp_extracts`` and the ledger.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import NamedTuple
from datetime import date, datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from expectations.rules import date_col
from pipelines import nhs_number, schemas
from pipelines.landing import (
    FileRejected,
    Limits,
    ParsedName,
    Rejection,
    opcs_present,
    parse_bytes,
    parse_name,
    read_csv,
    sha256_stream,
    to_date_yyyymmdd,
)
from pipelines.schemas.inputs import FEEDS, TYPE2
from pipelines.storage import FileInfo, Store, UnsafePath
from pipelines.text import SPACE
from pipelines.warehouse import Warehouse

log = logging.getLogger(__name__)

LEDGER_PARTS = "ledger/parts"
SILVER = {"gp": "gp_patients", "sus_apc": "sus_episodes", "hes_apc": "sus_episodes", "fft": "fft_responses"}
TAKEN = ("taken", "held")  # raw outcomes of a file taken in (held ones included)
_PROTOCOL_RANK = {"BULK": 0, "NET": 1}


# ============================================================================ ledger
def _now() -> datetime:
    # Milliseconds, as the ledger stores them: truncating to the second would make a file
    # written in the same second it was first seen look modified afterwards (pending forever).
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _part_path(file_name: str, sha: str, stage: str) -> str:
    name_hash = hashlib.sha1(file_name.encode()).hexdigest()[:8]
    return f"{LEDGER_PARTS}/{sha[:16]}-{name_hash}-{stage}.parquet"


def _event(
    name: ParsedName | Rejection | str,
    sha: str,
    size: int,
    first_seen: datetime,
    status: str,
    reason: str | None = None,
    *,
    received: int | None = None,
    quarantined: int | None = None,
    kept: int | None = None,
    type1: int | None = None,
) -> dict:
    if isinstance(name, str):
        name = parse_name(name)
    row = {c: None for c in schemas.get("ledger").column_names}
    row.update(file_name=name.file_name, submission_id=name.submission_id, source=name.source,
               sha256=sha, size_bytes=size, first_seen_at=first_seen, status=status, reason=reason,
               rows_received=received, rows_quarantined=quarantined, rows_kept=kept,
               type1_objections=type1)
    if isinstance(name, ParsedName):
        row.update(submitter_code=name.submitter_code, reporting_period=name.reporting_period,
                   submitted_at=name.submitted_at, protocol=name.protocol)
    return row


def _write_event(warehouse: Warehouse, row: dict, stage: str) -> None:
    _write_events(warehouse, [row], stage)


SEEN_PER_PART = 1_000


def _files_digest(events: list[dict]) -> str:
    """A short name for a set of (file name, SHA-256) events."""
    return hashlib.sha1("\n".join(f"{e['file_name']} {e['sha256']}" for e in events).encode()).hexdigest()[:12]


def _write_events(warehouse: Warehouse, rows: list[dict], stage: str, part: str | None = None) -> None:
    """Ledger events as one part: a single event under its file's own name; several
    under ``part`` or a hash of their files."""
    if not rows:
        return
    ds = schemas.get("ledger")
    table = ds.conform(pa.Table.from_pylist(rows, schema=ds.arrow_schema()))
    if len(rows) == 1:
        path = _part_path(rows[0]["file_name"], rows[0]["sha256"], stage)
    else:
        if part is None:
            part = f"{rows[0]['submission_id']}-{len(rows)}-{_files_digest(rows)}"
        path = f"{LEDGER_PARTS}/{part}-{stage}.parquet"
    warehouse.store.write_parquet(path, table)


def _events(warehouse: Warehouse) -> pd.DataFrame:
    """Every ledger event, raw (status seen / taken / held / rejected)."""
    ds = schemas.get("ledger")
    paths = [f.path for f in warehouse.store.list(LEDGER_PARTS) if f.path.endswith(".parquet")]
    schema = ds.arrow_schema()
    if not paths:
        return schema.empty_table().to_pandas()
    try:
        # One multi-threaded dataset read: a national month adds ~13,000 event files.
        table = ds.conform(warehouse.store.read_parquet_many(paths, schema=schema))
    except Exception:  # noqa: BLE001 - a part written with another layout: file by file
        table = pa.concat_tables([ds.conform(warehouse.store.read_parquet(p)) for p in paths])
    return table.to_pandas()


_NO_ROWS = np.zeros(0, dtype=np.int64)
OPERATOR_EVENTS = ("released", "revalidated")
"""Ledger events recorded after a file's outcome: an operator's release of a held file
(``caredata release``), and a re-validation against reference data that arrived later.
Their ``first_seen_at`` holds the time of the event (the file's first sighting is the
earliest of its events'); their ``reason`` says who or what, and why."""


class _GPSize(NamedTuple):
    rows: int  # data rows of the extract (rows received + type 1 rows): what the rule compares
    file_name: str
    submitted_at: object  # the extract date (a UTC timestamp)
    received: int = 0  # rows received (type 1 never counted): what the reason says


class _Ledger:
    """The raw events, indexed for the checks ingest makes."""

    def __init__(self, warehouse: Warehouse):
        self.ev = _events(warehouse)
        ev = self.ev
        self.outcomes = ev[ev["status"] != "seen"]
        self.keys = set(zip(self.outcomes["file_name"], self.outcomes["sha256"]))
        self.seen = {}
        for r in ev[["file_name", "sha256", "first_seen_at"]].itertuples(index=False):
            t = _py_ts(r.first_seen_at)
            k = (r.file_name, r.sha256)
            if t is not None and (k not in self.seen or t < self.seen[k]):
                self.seen[k] = t
        # Row positions by file and by submission, found once: ingest asks per file, and
        # months of national history hold tens of thousands of events.
        self.taken = self.outcomes[self.outcomes["status"].isin(TAKEN)]
        self._taken_by_file = self.taken.groupby("file_name", sort=False).indices
        self._taken_by_submission = self.taken.groupby(["source", "submission_id"], sort=False).indices
        self._by_file = {True: self.outcomes.groupby("file_name", sort=False).indices,
                         False: ev.groupby("file_name", sort=False).indices}
        rel = ev[ev["status"] == "released"]
        self.released = set(zip(rel["file_name"], rel["sha256"]))

    def gp_current_sizes(self) -> dict[str, "_GPSize"]:
        """Per practice, its current extract as far as the held rule is concerned: the
        newest (by extract date) taken in and not held, a released one included."""
        t = self.taken[self.taken["source"] == "gp"]
        if t.empty:
            return {}
        ok = (t["status"] == "taken").to_numpy(dtype=bool) | np.array(
            [(f, s) in self.released for f, s in zip(t["file_name"], t["sha256"])], dtype=bool)
        t = t[ok].assign(ts_=pd.to_datetime(t["submitted_at"], utc=True)).sort_values(["ts_", "file_name"])
        t = t.drop_duplicates("submitter_code", keep="last")
        out: dict[str, _GPSize] = {}
        for r in t.itertuples(index=False):
            rows = int(0 if pd.isna(r.rows_received) else r.rows_received) + int(
                0 if pd.isna(r.type1_objections) else r.type1_objections)
            out[r.submitter_code] = _GPSize(rows, r.file_name, r.ts_,
                                            int(0 if pd.isna(r.rows_received) else r.rows_received))
        return out

    def first_seen(self, file_name: str, sha: str) -> datetime:
        return self.seen.get((file_name, sha)) or _now()

    def has(self, file_name: str, sha: str) -> bool:
        return (file_name, sha) in self.keys

    def taken_versions(self, file_name: str) -> pd.DataFrame:
        return self.taken.iloc[self._taken_by_file.get(file_name, _NO_ROWS)]

    def taken_submission(self, source: str, submission_id: str) -> pd.DataFrame:
        return self.taken.iloc[self._taken_by_submission.get((source, submission_id), _NO_ROWS)]

    def unchanged(self, fi: FileInfo, outcomes_only: bool = True) -> bool:
        """The file at this path was recorded (with an outcome, unless ``outcomes_only``
        is False) with this size and has not been modified since (its modification time
        is before the time it was first seen): no need to read and hash it again."""
        rows = self._by_file[outcomes_only].get(fi.path)
        if rows is None:
            return False
        ev = (self.outcomes if outcomes_only else self.ev).iloc[rows]
        ev = ev[ev["size_bytes"] == fi.size]
        if ev.empty:
            return False
        seen = max(_py_ts(t) for t in ev["first_seen_at"])
        return seen is not None and fi.modified < seen


def _py_ts(value) -> datetime | None:
    if value is None or (not isinstance(value, datetime) and pd.isna(value)):
        return None
    ts = pd.Timestamp(value)
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return ts.to_pydatetime()


def _derive_status(df: pd.DataFrame) -> pd.DataFrame:
    """current / superseded from the submission rules, among files taken in and not held."""
    df = df.copy()
    df.loc[df["status"] == "taken", "status"] = "current"
    live = df["status"] == "current"
    ts = pd.to_datetime(df["submitted_at"], utc=True)
    seen = pd.to_datetime(df["first_seen_at"], utc=True)

    def supersede(idx, reason):
        df.loc[idx, "status"] = "superseded"
        df.loc[idx, "reason"] = reason

    # A newer GP extract supersedes an older one whatever its month (inputs.md; coverage
    # counts "an extract dated in the period (superseded or not)"); SUS and FFT files
    # supersede within their provider and period.
    group_period = df["reporting_period"].where(df["source"] != "gp", "*")
    for (source, submitter, _period), grp in df[live].assign(_gp=group_period).groupby(
        ["source", "submitter_code", "_gp"], dropna=False
    ):
        if source not in ("gp", "sus_apc", "fft") or len(grp) < 2:
            continue
        order = grp.assign(_ts=ts[grp.index],
                           _rank=grp["protocol"].map(_PROTOCOL_RANK).fillna(0)).sort_values(
            ["_ts", "_rank", "file_name"])
        if source == "sus_apc":
            bulks = [i for i in order.index if order.at[i, "protocol"] == "BULK"]
            if not bulks:
                continue
            last = bulks[-1]
            pos = list(order.index).index(last)
            for i in list(order.index)[:pos]:
                supersede(i, f"replaced by the bulk submission {df.at[last, 'file_name']}")
        else:
            newest = order.index[-1]
            word = "a newer extract" if source == "gp" else "a newer file"
            for i in order.index[:-1]:
                supersede(i, f"superseded by {word}, {df.at[newest, 'file_name']}")
    # A held GP extract supersedes nothing (inputs.md), and a later extract of the
    # practice, taken in and not held, supersedes it.
    gp_live = df[df["status"].isin(["current", "superseded"]) & (df["source"] == "gp")]
    for i in df.index[(df["status"] == "held") & (df["source"] == "gp")]:
        later = gp_live[(gp_live["submitter_code"] == df.at[i, "submitter_code"]) & (ts[gp_live.index] > ts[i])]
        if later.empty:
            continue
        newest = later.assign(_ts=ts[later.index]).sort_values(["_ts", "file_name"]).index[-1]
        was = df.at[i, "reason"]
        supersede(i, f"superseded by a newer extract, {df.at[newest, 'file_name']}"
                     + (f" (it had been held: {was})" if isinstance(was, str) and was else ""))
    # Reference files: the newest version of each (by first seen) is current.
    ref = df[live & (df["source"] == "reference")]
    for _, grp in ref.groupby("submission_id"):
        if len(grp) < 2:
            continue
        order = grp.assign(_seen=seen[grp.index]).sort_values(["_seen", "file_name"])
        for i in order.index[:-1]:
            supersede(i, f"replaced by a newer version of {order.at[order.index[-1], 'file_name']}")
    return df


def _apply_operator_events(ev: pd.DataFrame, operator: pd.DataFrame) -> pd.DataFrame:
    """Each file's outcome with the events recorded after it (:data:`OPERATOR_EVENTS`):
    a released held file is taken in like any other (its reason says who released it,
    when); the latest re-validation of a file gives its row counts, and its reason says
    what changed."""
    if operator.empty:
        return ev
    ev = ev.copy()
    operator = operator.assign(_at=pd.to_datetime(operator["first_seen_at"], utc=True)).sort_values("_at")
    pos = {k: i for i, k in zip(ev.index, zip(ev["file_name"], ev["sha256"]))}
    for r in operator.itertuples(index=False):
        i = pos.get((r.file_name, r.sha256))
        if i is None or ev.at[i, "status"] not in TAKEN:
            continue
        if r.status == "released":
            if ev.at[i, "status"] == "held":
                ev.at[i, "status"] = "taken"
                ev.at[i, "reason"] = r.reason
        else:
            counted = False
            for c in ("rows_received", "rows_quarantined", "rows_kept"):
                if not pd.isna(getattr(r, c)):
                    ev.at[i, c] = getattr(r, c)
                    counted = True
            reason = r.reason or ""
            if counted:  # validated again: held or not by its new counts
                ev.at[i, "status"] = "held" if reason.startswith(REVALIDATED_HELD) else "taken"
            was = ev.at[i, "reason"]
            ev.at[i, "reason"] = f"{was}; {reason}" if isinstance(was, str) and was else reason
    return ev


def read_ledger(warehouse: Warehouse) -> pa.Table:
    """Every file seen, one row per (file name, SHA-256), with its derived status:
    ``current``, ``superseded``, ``held``, ``rejected``, or ``pending`` (seen by a scan,
    not yet taken in). Conformed to ``schemas.get("ledger")``."""
    ds = schemas.get("ledger")
    ev = _events(warehouse)
    if ev.empty:
        return ds.arrow_schema().empty_table()
    operator = ev[ev["status"].isin(OPERATOR_EVENTS)]
    ev = ev[~ev["status"].isin(OPERATOR_EVENTS)].copy()
    ev["_first"] = pd.to_datetime(ev["first_seen_at"], utc=True)
    first = ev.groupby(["file_name", "sha256"])["_first"].min()
    prio = {"taken": 0, "held": 0, "rejected": 1, "seen": 2}
    ev["_prio"] = ev["status"].map(prio).fillna(3)
    ev = ev.sort_values(["file_name", "sha256", "_prio", "_first"]).drop_duplicates(
        ["file_name", "sha256"], keep="first")
    ev["first_seen_at"] = [first[(f, s)] for f, s in zip(ev["file_name"], ev["sha256"])]
    pending = ev["status"] == "seen"
    ev.loc[pending, "status"] = "pending"
    ev.loc[pending, "reason"] = "seen in the landing zone, not yet taken in"
    ev = _apply_operator_events(ev.drop(columns=["_first", "_prio"]), operator)
    ev = _derive_status(ev)
    ev = ev.sort_values(["first_seen_at", "file_name", "sha256"]).reset_index(drop=True)
    ev["first_seen_at"] = pd.to_datetime(ev["first_seen_at"], utc=True)
    ev["submitted_at"] = pd.to_datetime(ev["submitted_at"], utc=True)
    table = pa.Table.from_pandas(ev[ds.column_names], preserve_index=False)
    return ds.conform(table)


_LANDING_FOLDERS = ("reference", "gp", "sus_apc", "fft", "hes_apc")


def public_file_name(file_name: str, sha256: str) -> str:
    """A landing file's name as the public ledger shows it: as is when it follows its
    folder's naming convention (its parts are then codes and dates); else
    ``<folder>/unrecognised-<first 12 hex of its SHA-256>`` (no folder when it is not in a
    landing folder: a folder name is free text too). A HES extract's name is free text by
    convention, so it is always ``hes_apc/extract-<12 hex>``."""
    from pipelines.schemas.outputs import F_LANDING_NAME

    if F_LANDING_NAME.matches(file_name):
        return file_name
    # A file never opened has no digest (NOT_OPENED): such names read "...-not-opened".
    digest = "not-opened" if (sha256 or "").startswith("not-opened-") else (sha256 or "")[:12]
    parts = file_name.split("/")
    folder = parts[0] if len(parts) > 1 and parts[0] in _LANDING_FOLDERS else None
    if folder == "hes_apc" and len(parts) == 2 and (parts[1].endswith(".csv") or parts[1].endswith(".csv.gz")):
        return f"hes_apc/extract-{digest}"
    return f"{folder}/unrecognised-{digest}" if folder else f"unrecognised-{digest}"


_WHEN_RE = re.compile(r"\b([0-9]{4}-[0-9]{2})-[0-9]{2} [0-9]{2}:[0-9]{2} UTC")
_SHA_PAIR_RE = re.compile(r"had SHA-256 [0-9a-f]{12}\.\.\., this one has [0-9a-f]{12}\.\.\.")
_HEADER_RE = re.compile(r"the header repeats column\(s\) .*$", re.DOTALL)


def public_reason(reason: str | None, file_name: str, renamed: dict[str, str]) -> str | None:
    """A ledger reason as the public ledger shows it: file names as published
    (:func:`public_file_name`), no supplier text (repeated header names withheld), and no
    date or digest (the month of an earlier version, not its day and time)."""
    if reason is None:
        return None
    out = reason
    if out.startswith(f"{file_name}: "):
        out = out[len(file_name) + 2:]
    for original in sorted(renamed, key=len, reverse=True):
        if original in out:
            out = out.replace(original, renamed[original])
    out = _HEADER_RE.sub("the header repeats a column (the names are withheld: header text is the supplier's)", out)
    out = _SHA_PAIR_RE.sub("had other bytes (another SHA-256)", out)
    out = _WHEN_RE.sub(r"\1", out)
    return out


def submissions_dataset(warehouse: Warehouse, periods: list[str] | None = None) -> pa.Table:
    """The public ``submissions`` ledger: every file seen, ``period`` = the month (UTC)
    the pipeline first saw it. Files seen by a scan but not yet taken in are left out.

    A file name that breaks its folder's naming convention is published as
    ``<folder>/unrecognised-<first 12 hex of its SHA-256>`` (:func:`public_file_name`),
    with no submitter, period, time or protocol, and no reason repeats an original name
    (:func:`public_reason`); the warehouse ledger (:func:`read_ledger`) keeps them whole."""
    ds = schemas.get("submissions")
    led = read_ledger(warehouse).to_pandas()
    led = led[led["status"] != "pending"]
    if led.empty:
        return ds.arrow_schema(include_partition=True).empty_table()
    led["period"] = pd.to_datetime(led["first_seen_at"], utc=True).dt.strftime("%Y-%m")
    if periods is not None:
        led = led[led["period"].isin(periods)]
    rejected = led["status"] == "rejected"
    for c in ("rows_received", "rows_quarantined", "rows_kept"):
        led[c] = led[c].astype("Int64").mask(rejected)
    led.loc[led["status"] == "current", "reason"] = None
    public = [public_file_name(f, h) for f, h in zip(led["file_name"], led["sha256"])]
    renamed = {f: p for f, p in zip(led["file_name"], public) if f != p and len(f) >= 6}
    led["reason"] = [public_reason(r if isinstance(r, str) else None, f, renamed)
                     for r, f in zip(led["reason"], led["file_name"])]
    unconventional = pd.Series([f != p for f, p in zip(led["file_name"], public)], index=led.index)
    for c in ("submitter_code", "reporting_period", "protocol"):
        led[c] = led[c].astype(object).mask(unconventional, None)
    led["submitted_at"] = led["submitted_at"].mask(unconventional)
    led["file_name"] = public
    led = led.sort_values(["period", "first_seen_at", "file_name"])
    cols = ds.arrow_schema(include_partition=True).names
    return ds.conform(pa.Table.from_pandas(led[cols].reset_index(drop=True), preserve_index=False))


def release_held(warehouse: Warehouse, file_name: str, by: str, note: str | None = None) -> str:
    """An operator's release of a held file: a ``released`` event in the ledger (the
    file itself is never edited), so that from the next run it is taken as any file
    taken in (a GP extract becomes the practice's current one if it is the newest).
    Returns what was done; raises ValueError naming the file when it is not held."""
    if not by or not by.strip():
        raise ValueError("say who releases the file (--by)")
    led = read_ledger(warehouse).to_pandas()
    rows = led[led["file_name"] == file_name]
    if rows.empty:
        raise ValueError(f"{file_name}: not in the ledger (give the path relative to the landing root, "
                         f"e.g. gp/GP_A81001_20261204.csv)")
    held = rows[rows["status"] == "held"]
    if held.empty:
        raise ValueError(f"{file_name}: not held (status {', '.join(sorted(set(rows['status'])))}); "
                         f"only a held file can be released")
    r = held.iloc[-1]
    at = _now()
    reason = (f"released by {by.strip()} on {at.strftime('%Y-%m-%d %H:%M UTC')}"
              + (f": {note.strip()}" if note and note.strip() else "")
              + (f" (it had been held: {r['reason']})" if isinstance(r["reason"], str) and r["reason"] else ""))
    event = _event(file_name, r["sha256"], int(r["size_bytes"]) if not pd.isna(r["size_bytes"]) else None,
                   at, "released", reason)
    _write_events(warehouse, [event], "released")
    log.info("%s", f"{file_name}: {reason}")
    return reason


def released_submissions(warehouse: Warehouse) -> set[str]:
    """Submission ids of the files an operator released (:func:`release_held`). Reads only
    the ledger's release parts."""
    paths = [f.path for f in warehouse.store.list(LEDGER_PARTS) if f.path.endswith("-released.parquet")]
    out: set[str] = set()
    for p in paths:
        t = warehouse.store.read_parquet(p)
        out.update(s for s, st in zip(t.column("submission_id").to_pylist(), t.column("status").to_pylist())
                   if st == "released" and s)
    return out


# ============================================================================ report
@dataclass
class IngestReport:
    source: str
    period: str | None
    files_listed: int = 0
    files_taken: list[str] = field(default_factory=list)
    files_skipped: list[str] = field(default_factory=list)  # seen before, byte for byte
    rejected_files: list[dict] = field(default_factory=list)  # {file_name, reason}
    held_files: list[dict] = field(default_factory=list)  # {file_name, reason}
    rows_read: int = 0  # rows received (type 1 never counted)
    rows_kept: int = 0
    rows_quarantined: int = 0
    type1_objections: int = 0
    submissions: list[dict] = field(default_factory=list)  # one per file taken in
    partitions: dict[str, list[str]] = field(default_factory=dict)  # period -> submission ids
    rule_counts: list[dict] = field(default_factory=list)  # failing rules per file
    objection_warnings: list[dict] = field(default_factory=list)  # GP: {file_name, objection_unrecognised, warning}
    validation_seconds: float = 0.0  # time this process spent validating or waiting for the worker
    validation_worker_seconds: float = 0.0  # time the worker process spent validating (overlapped)

    def as_metadata(self) -> dict:
        """Plain values for Dagster metadata and the CLI."""
        return {
            "source": self.source, "period": self.period,
            "files_listed": self.files_listed,
            "files_taken": len(self.files_taken),
            "files_skipped": len(self.files_skipped),
            "files_rejected": len(self.rejected_files),
            "files_held": len(self.held_files),
            "rows_read": self.rows_read, "rows_kept": self.rows_kept,
            "rows_quarantined": self.rows_quarantined,
            "type1_objections": self.type1_objections,
            "rejected_files": self.rejected_files, "held_files": self.held_files,
            "submissions": self.submissions, "partitions": self.partitions,
            "rule_counts": self.rule_counts[:200],
            "objection_warnings": self.objection_warnings,
            "validation_seconds": round(self.validation_seconds, 3),
            "validation_worker_seconds": round(self.validation_worker_seconds, 3),
        }


# ============================================================================ context
def _reference_context(landing: Store, warehouse: Warehouse, today: date | None):
    if not warehouse.store.exists(warehouse.path("ref_sites")) and landing.list("reference"):
        load_reference(landing, warehouse)
    return _context_from_tables(warehouse, today)


def _context_from_tables(warehouse: Warehouse, today: date | None):
    """The validation context from the reference tables as they are in the warehouse."""
    from pipelines.validation import ValidationContext

    sites = warehouse.read("ref_sites")
    practices = warehouse.read("ref_practices")
    site_providers = (
        {s: p for s, p in zip(sites.column("site_code").to_pylist(), sites.column("provider_code").to_pylist())
         if s and p} or None
    )
    codes = {c for c in practices.column("practice_code").to_pylist() if c} or None
    return ValidationContext(site_providers=site_providers, practice_codes=codes, today=today)


def _as_of_submission(context, parsed: ParsedName):
    """"No future dates" means nothing after the file was submitted (its name's time; a GP
    extract's date): a 2014 file cannot hold a 2020 discharge, whatever today is."""
    import dataclasses

    submitted = getattr(parsed, "submitted_at", None)
    if submitted is None or context is None:
        return context
    ceiling = submitted.date() if hasattr(submitted, "date") else submitted
    today = context.today or date.today()
    return dataclasses.replace(context, today=min(today, ceiling))


def _as_of(context, ceiling: date):
    """The context with "today" no later than ``ceiling``."""
    import dataclasses

    if context is None:
        return context
    return dataclasses.replace(context, today=min(context.today or date.today(), ceiling))


def _validate(source, frame, **kw):
    """The validation stage's :func:`pipelines.validation.validate` (a seam for tests)."""
    from pipelines.validation import validate

    return validate(source, frame, **kw)


_VALIDATE = _validate  # the real seam: many files are validated together only through it


def _is_held(received: int, rejected: int, settings) -> bool:
    try:
        from pipelines.quality import is_held
    except ImportError:  # pragma: no cover - the quality module is another stage's
        share = float(settings.t("data_quality", "held_reject_share"))
        return bool(received) and rejected / received > share
    return bool(is_held(received, rejected, settings))


GP_HOLD_UNTIL = "held until an operator releases it or a later extract arrives"
GP_HELD_RULE = ("a GP extract with no data row, or with fewer than half the rows of the practice's current "
                "extract, is held: it supersedes nothing until an operator releases it or a later extract "
                "arrives (inputs.md)")


def _gp_size_reason(rows: int, current: "_GPSize | None", received: int | None = None) -> str | None:
    """The GP held rule (inputs.md, :data:`GP_HELD_RULE`) for an extract of ``rows`` data
    rows: its reason when held, else None. Exactly half is not fewer than half.

    The rule compares data rows (type 1 rows included, so that a practice of many objectors
    is not held); the reason, which the public ledger shows, gives rows received (type 1
    never counted), as ``rows_received`` does: data rows would let a reader recover a
    practice's type 1 count, which disclosure control suppresses, by subtraction."""
    if current is not None and 2 * rows < current.rows:
        shown = rows if received is None else received
        return (f"{shown} rows received against {current.received} in the current extract "
                f"{current.file_name.rsplit('/', 1)[-1]}; {GP_HOLD_UNTIL}")
    if rows == 0:
        return f"no data row (header only); {GP_HOLD_UNTIL}"
    return None


def _held_reason(file_name: str, received: int, rejected: int, rule_ids: list[list[str]],
                 rejected_mask: np.ndarray, submitter: str | None, period: str | None, settings) -> str:
    share = float(settings.t("data_quality", "held_reject_share"))
    counts: dict[str, int] = {}
    for i in np.flatnonzero(rejected_mask):
        for r in rule_ids[i]:
            counts[r] = counts.get(r, 0) + 1
    top = ", ".join(f"{r} ({n})" for r, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3])
    whose = f"{submitter} {period}" if submitter and period else "these providers and periods"
    return (f"held: {rejected} of {received} rows rejected, more than {share:.0%}; nothing downstream "
            f"is computed from this file and earlier data for {whose} stay in force"
            + (f"; most frequent rules broken: {top}" if top else ""))


# ============================================================================ typed
def _strip(frame: pd.DataFrame, name: str) -> pd.Series:
    if name not in frame.columns:
        return pd.Series(pd.NA, index=frame.index, dtype="string")
    s = frame[name].astype("string").str.strip()
    return s.mask(s == "")


def _dates(frame: pd.DataFrame, name: str) -> pa.Array:
    from expectations.custom import parse_iso_dates

    return _date_array(parse_iso_dates(_strip(frame, name)))


def _parse_dates(text: pd.Series, placeholder_dates: bool = True) -> pd.Series:
    """ISO dates (datetime64, NaT where missing or not a real date); with
    ``placeholder_dates``, HES's placeholder dates (1800-01-01, ...) are missing too."""
    from expectations.custom import parse_iso_dates
    from expectations.sus_apc import blank_placeholder_dates

    return parse_iso_dates(blank_placeholder_dates(text) if placeholder_dates else text)


def _date_array(parsed: pd.Series) -> pa.Array:
    """datetime64 values (NaT = missing) to date32, without a Python object per value."""
    days = np.asarray(parsed.to_numpy(), dtype="datetime64[s]").astype("datetime64[D]")
    return pa.array(days, pa.date32(), mask=np.isnat(days))


class _Columns:
    """The columns typed rows are built from: the raw rows' columns stripped (blank as
    missing) and their dates parsed here, or, given validation's work frame of the same
    rows (:func:`pipelines.validation._work_frame`: the declared columns cleaned the
    same way, dates parsed), taken from it, so the worker does that work once."""

    def __init__(self, frame: pd.DataFrame, work: pd.DataFrame | None = None, placeholder_dates: bool = False):
        # placeholder_dates (SUS, HES): HES's placeholder dates read as missing, as the
        # suite's ``prepare`` reads them (expectations.sus_apc.PLACEHOLDER_DATES).
        self.frame, self.work, self.placeholder_dates = frame, work, placeholder_dates

    def has(self, name: str) -> bool:
        return name in self.frame.columns

    def _worked(self, name: str) -> pd.Series | None:
        return None if self.work is None or name not in self.work.columns else self.work[name]

    def text(self, name: str) -> pd.Series:
        got = self._worked(name)
        return _strip(self.frame, name) if got is None else got

    def parsed(self, name: str) -> pd.Series:
        """The column's ISO dates (datetime64, NaT where not a real date)."""
        got = self._worked(date_col(name))
        if got is not None:
            return got
        return _parse_dates(self.text(name), self.placeholder_dates)

    def dates(self, name: str) -> pa.Array:
        return _date_array(self.parsed(name))


def _nhs(raw: pd.Series) -> tuple[pa.Array, pa.Array]:
    """An NHS number column (stripped): canonical where valid, else null; and validity."""
    canonical = nhs_number.canonical_series(raw)
    valid = pa.array(nhs_number.valid_canonical(canonical), pa.bool_())
    return pc.if_else(valid, _str_array(canonical), pa.scalar(None, pa.string())), valid


def _postcode(raw: pd.Series) -> pa.Array:
    s = raw.str.replace(f"{SPACE}+", "", regex=True).str.upper()
    return _str_array(s.mask(s == ""))


def _str_array(s: pd.Series) -> pa.Array:
    """A string Series (missing = <NA>) as an Arrow string array, without Python objects."""
    arr = pa.array(s.astype("string").reset_index(drop=True), from_pandas=True)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], pa.string())
    return arr.cast(pa.string()) if arr.type != pa.string() else arr


def _warnings(outcome, kept: np.ndarray) -> pa.Array:
    """Each kept row's broken (warn) rule ids; most rows have none, so the list array is
    built from offsets and only the non-empty rows are touched in Python."""
    rule_ids, broken = outcome.rule_ids, getattr(outcome, "broken", None)
    idx = np.flatnonzero(kept)
    lengths = (broken[idx] if broken is not None
               else np.fromiter((len(rule_ids[i]) for i in idx), dtype=np.int32, count=len(idx)))
    offsets = np.zeros(len(idx) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = [r for i in idx[lengths > 0] for r in rule_ids[i]]
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.string()))


def _common(n: int, period: str, submission_id: str, frame: pd.DataFrame) -> dict:
    return {
        "period": pa.array([period] * n, pa.string()),
        "submission_id": pa.array([submission_id] * n, pa.string()),
        "line": pa.array(frame["_line"].to_numpy(dtype=np.int64), pa.int64()),
    }


def _gp_silver(frame: pd.DataFrame, parsed: ParsedName, period: str, warn: pa.Array) -> pa.Table:
    return _gp_silver_many([frame], [parsed], period, [warn]).parts()[0]


class _Sliced(NamedTuple):
    """One table holding consecutive pieces: ``parts()`` slices them out without a copy.
    Pickled whole (a pickled slice of an Arrow table carries the whole table's buffers)."""

    table: pa.Table
    offsets: np.ndarray

    def parts(self) -> list[pa.Table]:
        o = self.offsets
        return [self.table.slice(int(a), int(z - a)) for a, z in zip(o[:-1], o[1:])]


def _one_frame(frames: list[pd.DataFrame]) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Many files' rows as one frame (index 0..n-1), with each file's row count and, per
    row, the file it came from."""
    sizes = np.array([len(f) for f in frames], dtype=np.int64)
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
    return frame, sizes, np.repeat(np.arange(len(frames)), sizes)


def _per_row(values: list, which: np.ndarray, type_: pa.DataType) -> pa.Array:
    """One value per file, repeated over the file's rows."""
    return pa.array(values, type_).take(pa.array(which))


def _all_warnings(warns: list[pa.Array]) -> pa.Array:
    """The files' warning lists, one after another."""
    return (pa.concat_arrays([w.cast(pa.list_(pa.string())) for w in warns]) if warns
            else pa.array([], pa.list_(pa.string())))


def _sliced(table: pa.Table, sizes: np.ndarray) -> _Sliced:
    return _Sliced(table, np.concatenate([[0], np.cumsum(sizes)]))


def _gp_silver_many(frames: list[pd.DataFrame], parsed: list[ParsedName], period: str,
                    warns: list[pa.Array], work: pd.DataFrame | None = None) -> _Sliced:
    """The silver rows of many GP extracts (kept rows of each), built in one pass over
    their concatenation (a national month is 6,500 extracts: per-file column work would
    cost more than the rows), one piece per file. ``work``: validation's work frame of
    the same rows, if there is one (:class:`_Columns`)."""
    frame, sizes, which = _one_frame(frames)
    c = _Columns(frame, work)
    n = len(frame)
    nhs, valid = _nhs(c.text("NHS_NUMBER"))
    obj = c.text("OBJECTION").str.upper()
    cols = {
        "period": pa.array([period] * n, pa.string()),
        "submission_id": _per_row([p.submission_id for p in parsed], which, pa.string()),
        "line": pa.array(frame["_line"].to_numpy(dtype=np.int64), pa.int64()),
        "practice_code": _per_row([p.submitter_code for p in parsed], which, pa.string()),
        "extract_date": _per_row([p.extract_date for p in parsed], which, pa.date32()),
        "nhs_number": nhs, "nhs_number_valid": valid,
        "date_of_birth": c.dates("DATE_OF_BIRTH"),
        "sex": _str_array(c.text("SEX")),
        "postcode": _postcode(c.text("POSTCODE")),
        "lsoa": _str_array(_blank_malformed(c.text("LSOA"), "LSOA_FORMAT").str.upper()),
        "ethnic_category": _str_array(c.text("ETHNIC_CATEGORY")),
        "registration_date": c.dates("REGISTRATION_DATE"),
        "deregistration_date": c.dates("DEREGISTRATION_DATE"),
        "date_of_death": c.dates("DATE_OF_DEATH"),
        "type2_objection": pa.array((obj == TYPE2.upper()).fillna(False).to_numpy(dtype=bool), pa.bool_()),
        "dq_warnings": _all_warnings(warns),
    }
    return _sliced(schemas.get("gp_patients").conform(pa.table(cols)), sizes)


def _code_lists(c: _Columns, prefix: str, count: int, dates_prefix: str | None = None):
    """Present codes in column order (HES placeholders '-', '&' dropped), and the dates
    aligned with them. Built in Arrow: the present cells' values taken row by row from
    the columns one after another, with no Python string per code."""
    from expectations.rules import ICD10_RE, OPCS4_RE

    code_re = OPCS4_RE if prefix.startswith("OPERTN") else ICD10_RE
    n = len(c.frame)
    columns: list[pa.Array] = []
    present = np.zeros((n, count), dtype=bool)
    dts = np.full((n, count), np.datetime64("NaT"), dtype="datetime64[D]") if dates_prefix else None
    for k in range(count):
        name = f"{prefix}{k + 1:02d}"
        if not c.has(name):
            columns.append(pa.nulls(n, pa.string()))
            continue  # absent column: nothing present (dates stay None)
        s = c.text(name)
        # present and well formed: a malformed code is counted by its warn rule
        # (<name>_FORMAT) and left out, as it would reach the restricted zone
        ok = (opcs_present(s) & s.str.contains(code_re, regex=True).fillna(False)).to_numpy(dtype=bool)
        columns.append(_str_array(s))
        present[:, k] = ok
        if dates_prefix:
            dcol = f"{dates_prefix}{k + 1:02d}"
            if c.has(dcol) and ok.any():
                d = c.parsed(dcol)
                dts[:, k] = np.asarray(d.to_numpy(), dtype="datetime64[s]").astype("datetime64[D]")
    # Row-major flattening of the present cells, with offsets: no Python list per row.
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(present.sum(axis=1), out=offsets[1:])
    off = pa.array(offsets, pa.int32())
    row, col = np.nonzero(present)  # row by row, columns in order within a row
    values = (pa.concat_arrays(columns).take(pa.array(col.astype(np.int64) * n + row)) if count
              else pa.array([], pa.string()))
    lists = pa.ListArray.from_arrays(off, values)
    if dates_prefix:
        flat = dts[present]
        date_lists = pa.ListArray.from_arrays(off, pa.array(flat, pa.date32(), mask=np.isnat(flat)))
    else:
        date_lists = None
    return lists, date_lists


def _sus_silver(frame: pd.DataFrame, source: str, protocol: str | None, periods, submission_id: str,
                warn: pa.Array) -> pa.Table:
    return _sus_silver_many([frame], source, [protocol], [periods], [submission_id], [warn]).parts()[0]


def _sus_silver_many(frames: list[pd.DataFrame], source: str, protocols: list, periods: list,
                     submission_ids: list[str], warns: list[pa.Array],
                     work: pd.DataFrame | None = None) -> _Sliced:
    """The silver rows of many SUS files (or a HES extract), built in one pass over their
    concatenation, one piece per file. ``periods``: per file, its period, or (HES) one
    per row. ``work``: as for :func:`_gp_silver_many`."""
    frame, sizes, which = _one_frame(frames)
    c = _Columns(frame, work, placeholder_dates=True)
    n = len(frame)
    nhs, valid = _nhs(c.text("NEWNHSNO"))
    susrecid = c.text("SUSRECID")
    if source == "hes_apc":
        susrecid = susrecid.fillna(c.text("EPIKEY"))
    net = np.array([p == "NET" for p in protocols], dtype=bool)[which]
    update = pd.Series("9", index=frame.index, dtype="string")
    if net.any():
        update[net] = c.text("CDS_UPDATE_TYPE")[net]
    # Birth year and month: DOB, else MYDOB (MMYYYY).
    dob = c.parsed("DOB")
    mydob = c.text("MYDOB")
    ok = mydob.str.fullmatch(r"(0[1-9]|1[0-2])[0-9]{4}").fillna(False).astype(bool)
    year = pd.Series(dob.dt.year, index=frame.index).astype("Int64")
    month = pd.Series(dob.dt.month, index=frame.index).astype("Int64")
    year = year.fillna(pd.to_numeric(mydob.str[2:].where(ok), errors="coerce").astype("Int64"))
    month = month.fillna(pd.to_numeric(mydob.str[:2].where(ok), errors="coerce").astype("Int64"))
    diagnoses, _ = _code_lists(c, "DIAG_4_", 20)
    procedures, proc_dates = _code_lists(c, "OPERTN_4_", 24, "OPDATE_")
    period_arr = pa.array(np.concatenate([np.full(z, p, dtype=object) if isinstance(p, str) else
                                          np.asarray(list(p), dtype=object) for p, z in zip(periods, sizes)])
                          if n else [], pa.string())
    cols = {
        "period": period_arr,
        "submission_id": _per_row(submission_ids, which, pa.string()),
        "line": pa.array(frame["_line"].to_numpy(dtype=np.int64), pa.int64()),
        "source": pa.array([source] * n, pa.string()),
        "provider_code": _str_array(c.text("PROCODE3").str.upper()),
        "susrecid": _str_array(susrecid),
        "cds_update_type": _str_array(update),
        "spell_id": _str_array(c.text("SUSSPELLID")),
        "epiorder": _str_array(_blank_malformed(c.text("EPIORDER"), "EPIORDER_FORMAT").str.zfill(2)),
        "epistat": _str_array(c.text("EPISTAT")),
        "epistart": c.dates("EPISTART"),
        "epiend": c.dates("EPIEND"),
        "admidate": c.dates("ADMIDATE"),
        "disdate": c.dates("DISDATE"),
        "admimeth": _str_array(c.text("ADMIMETH")),
        "dismeth": _str_array(c.text("DISMETH")),
        "admisorc": _str_array(c.text("ADMISORC")),
        "disdest": _str_array(c.text("DISDEST")),
        "classpat": _str_array(_blank_malformed(c.text("CLASSPAT"), "CLASSPAT_CODE")),
        "sex": _str_array(c.text("SEX")),
        "nhs_number": nhs, "nhs_number_valid": valid,
        "nhsnoind": _str_array(c.text("NHSNOIND")),
        "dob": _date_array(dob),
        "birth_year": pa.array(year.astype(object).where(year.notna(), None).tolist(), pa.int64()),
        "birth_month": pa.array(month.astype(object).where(month.notna(), None).tolist(), pa.int64()),
        "postcode": _postcode(c.text("HOMEADD")),
        "gpprac": _str_array(c.text("GPPRAC")),
        "consultant_code": _str_array(_blank_malformed(c.text("CONSULT"), "CONSULT_FORMAT")),
        "mainspef": _str_array(_blank_malformed(c.text("MAINSPEF"), "MAINSPEF_FORMAT")),
        "tretspef": _str_array(_blank_malformed(c.text("TRETSPEF"), "TRETSPEF_FORMAT")),
        "diagnoses": diagnoses,
        "procedures": procedures,
        "procedure_dates": proc_dates,
        "pseudo_hesid": _str_array(c.text("PSEUDO_HESID")),
        "dq_warnings": _all_warnings(warns),
    }
    return _sliced(schemas.get("sus_episodes").conform(pa.table(cols)), sizes)


def _blank_malformed(values: pd.Series, rule_id: str) -> pd.Series:
    """``values`` with those breaking the warn rule ``rule_id`` blanked (expectations.rules
    BLANK_ON_FAIL: the rule counts them; the row is kept, the value read as not known)."""
    from expectations.rules import BLANK_ON_FAIL

    ok = values.str.contains(BLANK_ON_FAIL[rule_id], regex=True)
    return values.where(ok.fillna(True).astype(bool))


def _fft_silver(frame: pd.DataFrame, parsed: ParsedName, period: str, warn: pa.Array) -> pa.Table:
    n = len(frame)
    nhs, valid = _nhs(_strip(frame, "NHS_NUMBER"))
    cols = _common(n, period, parsed.submission_id, frame) | {
        "provider_code": _str_array(_strip(frame, "PROVIDER_CODE").str.upper()),
        "response_id": _str_array(_strip(frame, "RESPONSE_ID")),
        "site_code": _str_array(_strip(frame, "SITE_CODE").str.upper()),
        "ward_code": _str_array(_strip(frame, "WARD_CODE").str.upper()),  # WARD_CODE_FORMAT: A-Z 0-9 after upper-casing
        "setting": _str_array(_strip(frame, "SETTING")),
        "response_date": _dates(frame, "RESPONSE_DATE"),
        "response": _str_array(_strip(frame, "RESPONSE")),
        "nhs_number": nhs, "nhs_number_valid": valid,
        "tretspef": _str_array(_strip(frame, "TRETSPEF")),
        "mode": _str_array(_strip(frame, "MODE").str.upper()),
        "dq_warnings": warn,
    }
    return schemas.get("fft_responses").conform(pa.table(cols))


def _quarantine(frame: pd.DataFrame, mask: np.ndarray, outcome, *, source: str, file_name: str,
                submission_id: str, submitter, periods) -> pa.Table:
    idx = np.flatnonzero(mask)
    data_cols = [c for c in frame.columns if c != "_line"]
    # Column by column, only the quarantined rows (most files have few or none).
    values = [pa.array(frame[c], from_pandas=True).take(idx).to_pylist() for c in data_cols]
    rows = zip(*values) if values else [()] * len(idx)
    raw = [json.dumps(dict(zip(data_cols, row)), ensure_ascii=False) for row in rows]
    n = len(idx)
    per = [periods] * n if isinstance(periods, str) else [periods[i] for i in idx]
    sub = [submitter] * n if submitter is None or isinstance(submitter, str) else [submitter[i] for i in idx]
    table = pa.table({
        "period": pa.array(per, pa.string()),
        "submission_id": pa.array([submission_id] * n, pa.string()),
        "line": pa.array(frame["_line"].to_numpy(dtype=np.int64)[idx], pa.int64()),
        "source": pa.array([source] * n, pa.string()),
        "file_name": pa.array([file_name] * n, pa.string()),
        "submitter_code": pa.array(sub, pa.string()),
        "rule_ids": pa.array([outcome.rule_ids[i] for i in idx], pa.list_(pa.string())),
        "messages": pa.array([outcome.messages[i] for i in idx], pa.list_(pa.string())),
        "raw": pa.array(raw, pa.string()),
    })
    return schemas.get("quarantine").conform(table)


def _dq_tables(files: list[tuple]) -> tuple[pa.Table, pa.Table]:
    """The ``dq_rules`` and ``dq_fields`` rows of many files, built at once (per-file
    Arrow building cost more than the few dozen rows of each). ``files``: per file
    ``(period, submission_id, source, submitter, rule_counts, field_scores)``;
    ``submitter`` is the file's submitter code, or (HES) one per rule row, the field rows
    then carrying their own ``submitter_code``."""
    rcs = [f[4] for f in files]
    fss = [f[5] for f in files]
    n_rc = np.array([len(x) for x in rcs], dtype=np.int64)
    n_fs = np.array([len(x) for x in fss], dtype=np.int64)
    rc = pd.concat(rcs, ignore_index=True) if len(rcs) > 1 else rcs[0].reset_index(drop=True)
    fs = pd.concat(fss, ignore_index=True) if len(fss) > 1 else fss[0].reset_index(drop=True)

    def each(k: int, sizes: np.ndarray) -> pa.Array:
        return pa.array(np.repeat(np.array([f[k] for f in files], dtype=object), sizes), pa.string())

    def submitters(sizes: np.ndarray, own) -> pa.Array:
        """Each file's submitter code on each of its rows, or (HES) the rows' own."""
        values = []
        for i, f in enumerate(files):
            values.extend([f[3]] * int(sizes[i]) if f[3] is None or isinstance(f[3], str) else list(own(i)))
        return pa.array(values, pa.string())

    rules = pa.table({
        "period": each(0, n_rc),
        "submission_id": each(1, n_rc),
        "source": each(2, n_rc),
        "submitter_code": submitters(n_rc, lambda i: files[i][3]),
        "rule_id": pa.array(rc["rule_id"].astype(str).tolist(), pa.string()),
        "field": pa.array(rc["field"].astype(object).tolist(), pa.string()),
        "severity": pa.array(rc["severity"].astype(object).tolist(), pa.string()),
        "rows_checked": pa.array(rc["rows_checked"].to_numpy(dtype=np.int64), pa.int64()),
        "rows_failed": pa.array(rc["rows_failed"].to_numpy(dtype=np.int64), pa.int64()),
        "example_lines": pa.array([[int(x) for x in v] for v in rc["example_lines"]], pa.list_(pa.int64())),
    })
    fields = pa.table({
        "period": each(0, n_fs),
        "submission_id": each(1, n_fs),
        "source": each(2, n_fs),
        "submitter_code": submitters(n_fs, lambda i: fss[i]["submitter_code"]),
        "field": pa.array(fs["field"].astype(str).tolist(), pa.string()),
        "rows": pa.array(fs["rows"].to_numpy(dtype=np.int64), pa.int64()),
        "rows_valid": pa.array(fs["rows_valid"].to_numpy(dtype=np.int64), pa.int64()),
    })
    return schemas.get("dq_rules").conform(rules), schemas.get("dq_fields").conform(fields)


# ============================================================================ files
NOT_OPENED = {
    "link": ("not-opened-symbolic-link",
             "a symbolic link: only regular files under the landing root are read, so neither it "
             "nor what it points to was opened"),
    "special": ("not-opened-special-file",
                "not a regular file (a FIFO, socket or device): only regular files are read; not opened"),
    "unsafe": ("not-opened-unsafe-path",
               "its path has '..', '.' or empty segments: only files under the landing root are read; not opened"),
    "error": ("not-opened-read-error", None),
}
"""What the ledger's ``sha256`` holds for a file never opened (clearly not a hash), and why."""


def _unexpected(fi_path: str, what: str, exc: BaseException) -> str:
    """The reason for a file an unexpected error stopped: the error's class only (its
    message may quote a row)."""
    return (f"{fi_path}: {what} failed with an unexpected error ({type(exc).__name__}); "
            f"the file is rejected and the other files go on")


def _hash_or_refuse(landing: Store, warehouse: Warehouse, fi: FileInfo, ledger: "_Ledger",
                    report: IngestReport | None) -> tuple[str, int] | None:
    """The SHA-256 and size of a regular file under the landing root, streamed; None when
    it is not one (a link swapped in since the listing) or cannot be read: then recorded,
    once, as a file never opened (:func:`_refuse_unopened`)."""
    try:
        return sha256_stream(landing, fi.path)
    except UnsafePath:
        _refuse_unopened(warehouse, fi, "link", ledger, report)
    except Exception as exc:  # noqa: BLE001 - no file can stop the pipeline
        _refuse_unopened(warehouse, fi, "error", ledger, report, _unexpected(fi.path, "reading it", exc))
    return None


def _refuse_unopened(warehouse: Warehouse, fi: FileInfo, kind: str, ledger: "_Ledger",
                     report: IngestReport | None, reason: str | None = None) -> None:
    """Record, once, a file that is not to be opened (or could not be): rejected, its
    ``sha256`` a marker saying why (:data:`NOT_OPENED`), no size."""
    marker, why = NOT_OPENED[kind]
    if ledger.has(fi.path, marker):
        return
    parsed = parse_name(fi.path)
    name = parsed if isinstance(parsed, ParsedName) else Rejection(
        fi.path, "", parsed.source, parsed.submission_id)
    _reject(warehouse, name, marker, None, ledger.first_seen(fi.path, marker),
            reason or f"{fi.path}: {why}", report)
    ledger.keys.add((fi.path, marker))


def _read_candidate(landing, fi, parsed: ParsedName, feed, ledger, warehouse: Warehouse, report: IngestReport,
                    limits: Limits | None = None):
    """A file not yet taken in, parsed: (frame, info, sha256, first seen), or None when it
    is not to be read (seen before) or cannot be parsed (then recorded as rejected, with
    any unexpected error: no file stops the run). Read as a stream (landing.read_csv)."""
    got = _candidate(landing, fi, parsed, ledger, warehouse, report)
    if got is None:
        return None
    size, sha = got
    first = ledger.first_seen(fi.path, sha)
    try:
        frame, info = read_csv(landing, fi.path, feed, limits or Limits.from_settings(None), size)
    except FileRejected as exc:
        _reject(warehouse, parsed, sha, size, first, exc.reason, report)
        return None
    except UnsafePath:  # replaced by a link since it was hashed
        _refuse_unopened(warehouse, fi, "link", ledger, report)
        return None
    except Exception as exc:  # noqa: BLE001 - no file can stop the pipeline
        _reject(warehouse, parsed, sha, size, first, _unexpected(fi.path, "reading it", exc), report)
        return None
    if info.objection_unrecognised:
        _objection_warning(report, fi.path, info)
    return frame, info, sha, first


def _objection_warning(report: IngestReport, file_name: str, info) -> None:
    """An extract with OBJECTION values that are no known code: read as type 1 (dropped),
    and said on the extract (report, Dagster check); the count is never published."""
    n = info.objection_unrecognised
    report.objection_warnings.append({
        "file_name": file_name, "objection_unrecognised": n,
        "warning": (f"{file_name}: {n} OBJECTION value(s) neither empty nor 9Nu0 nor 9Nu4 were read as type 1 "
                    f"objections (their rows dropped, never stored); ask the practice to correct the codes")})
    log.warning("%s: %d OBJECTION value(s) not recognised, read as type 1 objections", file_name, n)


def _candidate(landing: Store, fi: FileInfo, parsed: ParsedName, ledger: _Ledger,
               warehouse: Warehouse, report: IngestReport) -> tuple[int, str] | None:
    """The file's size and SHA-256 (streamed) when it is to be taken in now; None when it
    was seen before byte for byte, or is refused (recorded in the ledger)."""
    if ledger.unchanged(fi):
        report.files_skipped.append(fi.path)
        return None
    try:
        sha, size = sha256_stream(landing, fi.path)
    except UnsafePath:
        _refuse_unopened(warehouse, fi, "link", ledger, report)
        return None
    except Exception as exc:  # noqa: BLE001
        _refuse_unopened(warehouse, fi, "error", ledger, report, _unexpected(fi.path, "reading it", exc))
        return None
    if ledger.has(fi.path, sha):
        report.files_skipped.append(fi.path)
        return None
    first = ledger.first_seen(fi.path, sha)
    earlier = ledger.taken_versions(fi.path)
    if not earlier.empty and parsed.source != "reference":
        e = earlier.sort_values("first_seen_at").iloc[0]
        when = pd.Timestamp(e["first_seen_at"]).strftime("%Y-%m-%d %H:%M UTC")
        reason = (f"{fi.path}: changed after it was taken in: the file taken in on {when} had SHA-256 "
                  f"{e['sha256'][:12]}..., this one has {sha[:12]}...; the earlier version stays in force. "
                  f"A corrected submission needs a new file name")
        _reject(warehouse, parsed, sha, size, first, reason, report)  # logged there, by its public name
        return None
    dup = ledger.taken_submission(parsed.source, parsed.submission_id)
    dup = dup[dup["file_name"] != fi.path]
    if not dup.empty and parsed.source != "reference":
        reason = (f"{fi.path}: the same submission ({parsed.submission_id}) was already taken in as "
                  f"{dup.iloc[0]['file_name']}")
        _reject(warehouse, parsed, sha, size, first, reason, report)
        return None
    return size, sha


def _reject(warehouse: Warehouse, name, sha: str, size: int | None, first: datetime, reason: str,
            report: IngestReport | None) -> None:
    _write_event(warehouse, _event(name, sha, size, first, "rejected", reason), "outcome")
    if report is not None:
        report.rejected_files.append({"file_name": name.file_name, "reason": reason})
    # Logs name the file as the public ledger does: a name that breaks its folder's
    # convention is supplier text (it may name a patient); the full name stays in the
    # warehouse ledger and the Dagster metadata, for operators.
    shown = public_file_name(name.file_name, sha)
    log.warning("rejected %s: %s", shown, public_reason(reason, name.file_name, {name.file_name: shown}))


def _record_bad_names(landing: Store, files: list[FileInfo], ledger: _Ledger, warehouse: Warehouse,
                      report: IngestReport | None) -> None:
    """Record, once each, what is listed but never to be read: links, special files,
    unsafe keys (not opened) and misnamed files (hashed, not parsed)."""
    for fi in files:
        if fi.kind != "file":
            _refuse_unopened(warehouse, fi, fi.kind if fi.kind in NOT_OPENED else "special", ledger, report)
            continue
        parsed = parse_name(fi.path)
        if not isinstance(parsed, Rejection):
            continue
        if ledger.unchanged(fi):
            continue
        hashed = _hash_or_refuse(landing, warehouse, fi, ledger, report)
        if hashed is None:
            continue
        sha, size = hashed
        if ledger.has(fi.path, sha):
            continue
        _reject(warehouse, parsed, sha, size, ledger.first_seen(fi.path, sha), parsed.reason, report)
        ledger.keys.add((fi.path, sha))


def _files(landing: Store, folder: str) -> list[FileInfo]:
    """What the landing zone lists under ``folder``: regular files, and links, special
    files and unsafe keys (for :func:`_record_bad_names` to record; never read)."""
    return landing.list(folder, special=True)


def _sort_key(item):
    parsed = item[0]
    ts = parsed.submitted_at or datetime.min.replace(tzinfo=timezone.utc)
    return (ts, _PROTOCOL_RANK.get(parsed.protocol or "", 0), parsed.file_name)


# ============================================================================ ingest
def ingest(source: str, period: str, landing: Store, warehouse: Warehouse, settings, *,
           today: date | None = None, data_docs_dir: str | None = None) -> IngestReport:
    """Take in every not-yet-taken-in file of ``source`` (gp, sus_apc, fft) whose
    reporting period is ``period`` (GP: the extract date's month). ``hes_apc`` is passed
    to :func:`ingest_hes` (its files hold many periods)."""
    if source == "hes_apc":
        return ingest_hes(landing, warehouse, settings, today=today, data_docs_dir=data_docs_dir)
    if source not in ("gp", "sus_apc", "fft"):
        raise ValueError(f"unknown source {source!r}: expected gp, sus_apc, fft or hes_apc")
    feed = FEEDS[source]
    report = IngestReport(source, period)
    ledger = _Ledger(warehouse)
    files = _files(landing, feed.folder)
    report.files_listed = len(files)
    _record_bad_names(landing, files, ledger, warehouse, report)
    limits = Limits.from_settings(settings)

    mine = []
    for fi in files:
        if fi.kind != "file":
            continue
        parsed = parse_name(fi.path)
        if isinstance(parsed, ParsedName) and parsed.reporting_period == period:
            mine.append((parsed, fi))
    mine.sort(key=_sort_key)
    _remove_untaken_parts(warehouse, period, ledger)
    gp_sizes = ledger.gp_current_sizes() if source == "gp" else None  # the GP held rule's "current"
    context = None
    # Files are validated together in chunks of about VALIDATE_BATCH_ROWS rows (one GX
    # context per chunk, not per file: 6,500 GP extracts a month), then taken in one by
    # one, in order, exactly as if each had been validated alone.
    pending: list[tuple] = []
    pending_rows = pending_cells = 0

    # When a period holds more than one chunk, a worker process validates chunk k + 1
    # while this process takes chunk k in and reads the files of chunk k + 2
    # (:class:`_ValidationWorker`); chunks are still taken in in order.
    worker: _ValidationWorker | None = None
    in_flight: tuple | None = None  # (chunk, future) validated in the worker

    def take(chunk: list[tuple], outcomes: list, silvers: list | None = None) -> None:
        if silvers is None:
            silvers = _chunk_silvers(source, period, [(p_, fr, None) for p_, _, fr, _, _, _ in chunk], outcomes)
        if isinstance(silvers, _Sliced):
            silvers = silvers.parts()
        sink = _ChunkParts(warehouse, period)
        for (p_, fi_, fr, info_, sha_, first_), outcome, silver in zip(chunk, outcomes, silvers):
            _take_in(source, period, p_, fr, info_, sha_, fi_.size, first_, warehouse, settings,
                     _as_of_submission(context, p_), data_docs_dir, report, outcome=outcome, silver=silver,
                     sink=sink, gp_current=gp_sizes)
        sink.write()
        for _, fi_, _, _, sha_, _ in chunk:
            ledger.keys.add((fi_.path, sha_))

    def take_in_flight() -> None:
        nonlocal in_flight
        if in_flight is not None:
            chunk, future = in_flight
            in_flight = None
            t0 = time.perf_counter()
            try:
                outcomes, silvers, seconds = future.result()
                report.validation_seconds += time.perf_counter() - t0   # what this process waited
                report.validation_worker_seconds += seconds
                take(chunk, outcomes, silvers)
            except Exception:  # noqa: BLE001 - no file can stop the pipeline
                take_alone(chunk)

    def take_alone(chunk: list[tuple]) -> None:
        """A chunk failed: its files validated and taken in one by one; a file that fails
        alone is rejected (the error's class only), its parts removed, and the run goes on."""
        log.warning("a chunk of %d file(s) failed; taking its files in one by one", len(chunk))
        _remove_untaken_parts(warehouse, period, _Ledger(warehouse))
        for item in chunk:
            p_, fi_, fr, _info, sha_, first_ = item
            try:
                outcome = _validate(source, fr, period=period, submitter=p_.submitter_code,
                                    file_name=p_.file_name, context=_as_of_submission(context, p_),
                                    data_docs_dir=data_docs_dir)
                take([item], [outcome])
            except Exception as exc:  # noqa: BLE001
                _remove_file_parts(warehouse, [period], p_.submission_id)
                _remove_untaken_parts(warehouse, period, _Ledger(warehouse))
                _reject(warehouse, p_, sha_, fi_.size, first_, _unexpected(p_.file_name, "taking it in", exc),
                        report)
                ledger.keys.add((fi_.path, sha_))

    def flush(last: bool) -> None:
        nonlocal pending, pending_rows, pending_cells, worker, in_flight
        chunk, pending, pending_rows, pending_cells = pending, [], 0, 0
        if chunk:
            jobs = [(p_, fr, _as_of_submission(context, p_)) for p_, _, fr, _, _, _ in chunk]
            if worker is None and not last and _validate is _VALIDATE and VALIDATION_WORKER:
                worker = _ValidationWorker()
            if worker is not None:
                future = worker.submit(source, period, jobs, data_docs_dir)
                take_in_flight()
                in_flight = (chunk, future)
            else:
                t0 = time.perf_counter()
                try:
                    outcomes = _validate_chunk(source, period, jobs, data_docs_dir)
                    report.validation_seconds += time.perf_counter() - t0
                    take(chunk, outcomes)
                except Exception:  # noqa: BLE001 - no file can stop the pipeline
                    take_alone(chunk)
        if last:
            take_in_flight()

    try:
        for parsed, fi in mine:
            got = _read_candidate(landing, fi, parsed, feed, ledger, warehouse, report, limits)
            if got is None:
                continue
            frame, info, sha, first = got
            if context is None:
                context = _reference_context(landing, warehouse, today)
            pending.append((parsed, fi, frame, info, sha, first))
            pending_rows += len(frame)
            pending_cells += frame.size
            if pending_rows >= VALIDATE_BATCH_ROWS or pending_cells >= VALIDATE_BATCH_CELLS:
                flush(last=False)
        flush(last=True)
    finally:
        if worker is not None:
            worker.close()
    return report


VALIDATE_BATCH_ROWS = 2_000_000  # rows of many files per validation call (and per Data Docs build)
VALIDATE_BATCH_CELLS = 30_000_000
"""... and at most about this many values (rows x columns): 2 million rows of GP extracts
(about a dozen columns), some 300,000 of SUS (93), so that a chunk's memory follows its values."""
VALIDATION_WORKER = os.environ.get("CAREDATA_VALIDATION_WORKER", "1") != "0"
"""Validate in a worker process when a period has more than one chunk (set
``CAREDATA_VALIDATION_WORKER=0`` to validate in the ingesting process only)."""


class _ValidationWorker:
    """One worker process (spawned: a fork of a process running Arrow's and DuckDB's
    threads is unsafe) that validates one chunk at a time, and for SUS (:data:`WORKER_TYPES`) types its
    kept rows: pandas holds the GIL, so a thread would not overlap with the take-in. The
    chunk's frames go to it pickled, its outcomes and silver tables come back the same way."""

    def __init__(self):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, source: str, period: str, jobs: list[tuple], data_docs_dir):
        return self._pool.submit(_validate_chunk_timed, source, period, jobs, data_docs_dir)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


WORKER_TYPES = ("sus_apc",)
"""Feeds whose rows the worker types (from its work frame) after validating them. A SUS
chunk's typing gains most from the work frame (93 columns: 3.9 s to 0.8 s) and its
typed rows are few to send back; a GP chunk's gains little (about 2.2 s to 1.9 s) and
its 2 million typed rows would be pickled back, so the ingesting process, which was
waiting for the worker, types GP rows itself."""


def _validate_chunk_timed(source: str, period: str, jobs: list[tuple], data_docs_dir) -> tuple[list, list, float]:
    """In the worker: the chunk's outcomes, its typed silver rows (:data:`WORKER_TYPES`;
    else None, for the ingesting process to type) and the time taken."""
    t0 = time.perf_counter()
    work: list = []
    outcomes = _validate_chunk(source, period, jobs, data_docs_dir, work)
    silvers = (_chunk_silvers(source, period, jobs, outcomes, work[0] if work else None)
               if source in WORKER_TYPES else None)
    return outcomes, silvers, time.perf_counter() - t0


def _chunk_silvers(source: str, period: str, jobs: list[tuple], outcomes: list,
                   work: pd.DataFrame | None = None) -> "list | _Sliced":
    """GP and SUS: the files' kept rows typed (:func:`_gp_silver_many`,
    :func:`_sus_silver_many`: one pass over the chunk; ``work``: validation's work frame
    of the chunk's rows, if there is one); FFT: None each (built file by file as they are
    taken in)."""
    if source not in ("gp", "sus_apc"):
        return [None] * len(jobs)
    kept = [~np.asarray(o.rejected, dtype=bool) for o in outcomes]
    if work is None:
        frames = [fr.iloc[np.flatnonzero(k)] for (_, fr, _), k in zip(jobs, kept)]
    else:  # every row typed from the work frame, the rejected dropped after
        frames = [fr for _, fr, _ in jobs]
    warns = [_warnings(o, k if work is None else np.ones(len(k), dtype=bool)) for o, k in zip(outcomes, kept)]
    if source == "gp":
        built = _gp_silver_many(frames, [p_ for p_, _, _ in jobs], period, warns, work)
    else:
        built = _sus_silver_many(frames, source, [p_.protocol for p_, _, _ in jobs], [period] * len(jobs),
                                 [p_.submission_id for p_, _, _ in jobs], warns, work)
    if work is None:
        return built
    return _sliced(built.table.filter(pa.array(np.concatenate(kept))), np.array([k.sum() for k in kept]))


def _validate_chunk(source: str, period: str, jobs: list[tuple], data_docs_dir, work_out: list | None = None) -> list:
    """One outcome per (parsed name, frame, context): many files in one
    :func:`pipelines.validation.validate_many` call (its work frame appended to
    ``work_out``); file by file through :func:`_validate` when that seam is replaced
    (tests) or for a single file."""
    if _validate is not _VALIDATE or len(jobs) == 1:
        return [_validate(source, fr, period=period, submitter=p_.submitter_code, file_name=p_.file_name,
                          context=ctx, data_docs_dir=data_docs_dir) for p_, fr, ctx in jobs]
    from pipelines.validation import validate_many

    return validate_many(source, [
        {"frame": fr, "period": period, "submitter": p_.submitter_code, "file_name": p_.file_name,
         "context": ctx} for p_, fr, ctx in jobs], data_docs_dir=data_docs_dir, work_out=work_out)


def _take_in(source, period, parsed: ParsedName, frame: pd.DataFrame, info, sha: str, size: int,
             first: datetime, warehouse: Warehouse, settings, context, data_docs_dir, report: IngestReport,
             outcome=None, silver: pa.Table | None = None, sink: "_ChunkParts | None" = None,
             gp_current: "dict[str, _GPSize] | None" = None):
    """Take one validated file in: its silver part (part = its submission id); its
    quarantine, data-quality and ``gp_extracts`` rows and its ledger outcome, written as
    its own parts, or handed to ``sink`` to be written with the rest of its chunk.
    ``gp_current``: per practice, its current extract (:meth:`_Ledger.gp_current_sizes`),
    for the GP held rule; updated when this extract becomes the current one."""
    sid = parsed.submission_id
    if outcome is None:
        outcome = _validate(source, frame, period=period, submitter=parsed.submitter_code,
                            file_name=parsed.file_name, context=context, data_docs_dir=data_docs_dir)
    rejected = np.asarray(outcome.rejected, dtype=bool)
    kept = ~rejected
    received, n_rej = len(frame), int(rejected.sum())
    n_kept = received - n_rej
    if silver is None:  # else built with the rest of its chunk
        kept_frame = frame.iloc[np.flatnonzero(kept)]
        warn = _warnings(outcome, kept)
        if source == "gp":
            silver = _gp_silver(kept_frame, parsed, period, warn)
        elif source == "sus_apc":
            silver = _sus_silver(kept_frame, source, parsed.protocol, period, sid, warn)
        else:
            silver = _fft_silver(kept_frame, parsed, period, warn)
    warehouse.write(SILVER[source], silver, period, part=sid)
    parts = _ChunkParts(warehouse, period) if sink is None else sink
    parts.add("quarantine", _quarantine(frame, rejected, outcome, source=source, file_name=parsed.file_name,
                                        submission_id=sid, submitter=parsed.submitter_code, periods=period))
    parts.add_dq((period, sid, source, parsed.submitter_code, outcome.rule_counts, outcome.field_scores))

    held = _is_held(received, n_rej, settings)
    reason = (_held_reason(parsed.file_name, received, n_rej, outcome.rule_ids, rejected,
                           parsed.submitter_code, period, settings) if held else None)
    if source == "gp" and gp_current is not None:
        rows = received + int(info.type1_objections or 0)
        now = gp_current.get(parsed.submitter_code)
        size_reason = _gp_size_reason(rows, now, received)
        if size_reason is not None:
            reason = size_reason if not held else f"{size_reason}; {reason}"
            held = True
            log.warning("held %s: %s", parsed.file_name, size_reason)
        elif not held and (now is None or pd.Timestamp(parsed.submitted_at) >= pd.Timestamp(now.submitted_at)):
            gp_current[parsed.submitter_code] = _GPSize(rows, parsed.file_name, parsed.submitted_at, received)
    if source == "gp":
        obj = _strip(frame, "OBJECTION").str.upper()
        type2 = int((obj == TYPE2.upper()).fillna(False).sum())
        parts.add("gp_extracts", pa.table({
            "period": [period], "submission_id": [sid], "practice_code": [parsed.submitter_code],
            "extract_date": pa.array([parsed.extract_date], pa.date32()),
            "rows_received": [received], "type1_objections": [info.type1_objections],
            "type2_objections": [type2], "held": [held],
        }))
        parts.add("gp_type2", _gp_type2_rows(frame, obj == TYPE2.upper(), parsed, period))
    type1 = info.type1_objections if source == "gp" else None
    event = _event(parsed, sha, size, first, "held" if held else "taken", reason,
                   received=received, quarantined=n_rej, kept=n_kept, type1=type1)

    def account() -> None:
        _account(report, parsed.file_name, sid, {period: (received, n_rej, n_kept)}, held, reason, outcome,
                 info.type1_objections if source == "gp" else 0)
        log.info("took in %s: %d rows received, %d kept, %d quarantined%s", public_file_name(parsed.file_name, sha),
                 received, n_kept,
                 n_rej, " (held)" if held else "")

    parts.outcome(event, account)
    if sink is None:
        parts.write(sid)


def _gp_type2_rows(frame: pd.DataFrame, is_type2: pd.Series, parsed: ParsedName, period: str) -> pa.Table:
    """The ``gp_type2`` rows of one GP extract: the canonical NHS number of each of its
    9Nu4 rows that has a valid one, whether the row was kept or quarantined. Written for
    every extract taken in, held ones included, so that linkage honours the objection
    whichever extract is current (docs/methods-linkage.md, type2_objection)."""
    mask = is_type2.fillna(False).to_numpy(dtype=bool)
    nhs, valid = _nhs(_strip(frame, "NHS_NUMBER")[mask])
    nhs = nhs.filter(valid)
    n = len(nhs)
    return pa.table({
        "period": pa.array([period] * n, pa.string()),
        "submission_id": pa.array([parsed.submission_id] * n, pa.string()),
        "practice_code": pa.array([parsed.submitter_code] * n, pa.string()),
        "extract_date": pa.array([parsed.extract_date] * n, pa.date32()),
        "nhs_number": nhs,
    })


def _remove_untaken_parts(warehouse: Warehouse, period: str, ledger: "_Ledger") -> None:
    """Remove the chunk parts of ``period`` whose submissions have no ledger outcome: left
    by a run stopped between a chunk's data parts and its ledger part (:class:`_ChunkParts`)."""
    taken = set(ledger.taken["submission_id"])
    for table in _ChunkParts.TABLES:
        for path in warehouse.parts(table, [period]):
            if "-chunk-" not in path.rsplit("/", 1)[-1]:
                continue
            sids = set(warehouse.store.read_parquet(path, columns=["submission_id"])
                       .column("submission_id").to_pylist())
            if sids - taken:
                log.warning("removing %s: its files were not taken in (a run stopped part-way)", path)
                warehouse.store.delete(path)


def _remove_file_parts(warehouse: Warehouse, periods: list[str], submission_id: str) -> None:
    """Remove the parts one file wrote under its own name (part = its submission id), in
    ``periods``: left by a file whose take-in failed part-way (it is then rejected)."""
    tables = sorted(set(SILVER.values())) + list(_ChunkParts.TABLES)
    for table in tables:
        for period in periods:
            warehouse.delete_part(table, period, submission_id)


class _ChunkParts:
    """The quarantine, data-quality and ``gp_extracts`` rows and the ledger outcomes of the
    files of one chunk, written together: one part per table and one ledger part for the
    chunk, instead of five small files per file (a national month has 6,500 GP
    extracts). The ledger part is written last, in one piece: a chunk whose ledger part
    is missing was not taken in, and its files are taken in again on the next run; the
    data parts it left are then removed first (:func:`_remove_untaken_parts`), so no row
    is counted twice. The report is told of each file only once its outcome is written."""

    TABLES = ("quarantine", "dq_rules", "dq_fields", "gp_extracts", "gp_type2")

    def __init__(self, warehouse: Warehouse, period: str):
        self.warehouse, self.period = warehouse, period
        self.tables: dict[str, list[pa.Table]] = {t: [] for t in self.TABLES}
        self.dq: list[tuple] = []
        self.events: list[dict] = []
        self.then: list = []

    def add(self, table: str, data: pa.Table) -> None:
        self.tables[table].append(data)

    def add_dq(self, file: tuple) -> None:
        """A file's rule counts and field scores (:func:`_dq_tables`), made rows with the
        rest of the chunk's."""
        self.dq.append(file)

    def outcome(self, event: dict, then) -> None:
        self.events.append(event)
        self.then.append(then)

    def write(self, part: str | None = None) -> None:
        """Write the parts (named ``part``, or after the chunk's first submission and a
        hash of its files), then the ledger outcomes."""
        if not self.events:
            return
        if part is None:
            part = f"{self.events[0]['submission_id']}-chunk-{_files_digest(self.events)}"
        if self.dq:
            rules, fields = _dq_tables(self.dq)
            self.tables["dq_rules"].append(rules)
            self.tables["dq_fields"].append(fields)
        for table, pieces in self.tables.items():
            if pieces:
                self.warehouse.write(table, pa.concat_tables(pieces, promote_options="default"), self.period,
                                     part=part)
        _write_events(self.warehouse, self.events, "outcome", part)
        for then in self.then:
            then()
        self.tables, self.dq, self.events, self.then = {t: [] for t in self.TABLES}, [], [], []


def _account(report: IngestReport, file_name: str, sid: str, per_period: dict, held: bool, reason,
             outcome, type1: int) -> None:
    received = sum(v[0] for v in per_period.values())
    rej = sum(v[1] for v in per_period.values())
    kept = sum(v[2] for v in per_period.values())
    report.files_taken.append(file_name)
    report.rows_read += received
    report.rows_quarantined += rej
    report.rows_kept += kept
    report.type1_objections += type1
    for p in per_period:
        report.partitions.setdefault(p, []).append(sid)
    report.submissions.append({
        "file_name": file_name, "submission_id": sid, "periods": sorted(per_period),
        "rows_received": received, "rows_quarantined": rej, "rows_kept": kept,
        "type1_objections": type1, "held": held, "held_reason": reason,
    })
    if held:
        report.held_files.append({"file_name": file_name, "reason": reason})
    rc = outcome.rule_counts
    for r in rc[rc["rows_failed"] > 0].itertuples(index=False):
        report.rule_counts.append({"file_name": file_name, "rule_id": r.rule_id, "severity": r.severity,
                                   "rows_failed": int(r.rows_failed), "rows_checked": int(r.rows_checked)})


# ============================================================================ HES
def ingest_hes(landing: Store, warehouse: Warehouse, settings, *, today: date | None = None,
               data_docs_dir: str | None = None) -> IngestReport:
    """Take in every not-yet-taken-in HES APC extract under ``hes_apc/``. Each row belongs
    to the provider in its PROCODE3 and the month of its EPIEND; rows whose EPIEND is
    not a date or a HES placeholder (they are quarantined: EPIEND is required) are filed
    under the file's latest EPIEND month (the month it was first seen if it has none), so
    they open no period of their own. Silver, quarantine and data-quality parts are written per
    period (part = the file's submission id); the ledger holds one row per file."""
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
            context = _reference_context(landing, warehouse, today)
        try:
            _take_in_hes(parsed, frame, sha, fi.size, first, warehouse, settings, context, data_docs_dir, report)
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
        valid = per_group(present & ~invalid)
        for g in range(ng):
            out_fields.append({"group": uniques[g], "field": sf.name, "rows": int(sizes[g]),
                               "rows_valid": int(valid[g])})
    if not scored and len(outcome.field_scores):
        # Fallback: the whole file's field scores, shared out by group size.
        for r in outcome.field_scores.itertuples(index=False):
            for g in range(ng):
                out_fields.append({"group": uniques[g], "field": r.field, "rows": int(sizes[g]),
                                   "rows_valid": int(round(r.rows_valid * sizes[g] / max(n, 1)))})
    return (pd.DataFrame(out_rules, columns=["group", "rule_id", "field", "severity", "rows_checked",
                                             "rows_failed", "example_lines"]),
            pd.DataFrame(out_fields, columns=["group", "field", "rows", "rows_valid"]))


def _take_in_hes(parsed: ParsedName, frame: pd.DataFrame, sha: str, size: int, first: datetime,
                 warehouse: Warehouse, settings, context, data_docs_dir, report: IngestReport) -> None:
    sid = parsed.submission_id
    # No date after the file was submitted: a HES extract's name has no submission time,
    # so the time it was first seen stands for it.
    context = _as_of(context, first.date())
    outcome = _validate("hes_apc", frame, period=None, submitter=None, file_name=parsed.file_name,
                        context=context, data_docs_dir=data_docs_dir)
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
    received, n_rej = n, int(rejected.sum())
    held = _is_held(received, n_rej, settings)
    reason = (_held_reason(parsed.file_name, received, n_rej, outcome.rule_ids, rejected, None, None, settings)
              if held else None)
    _write_event(warehouse, _event(parsed, sha, size, first, "held" if held else "taken", reason,
                                   received=received, quarantined=n_rej, kept=received - n_rej), "outcome")
    _account(report, parsed.file_name, sid, per_period, held, reason, outcome, 0)


# ============================================================================ reference
def load_reference(landing: Store, warehouse: Warehouse, settings=None) -> dict:
    """Read ``reference/epraccur.csv``, ``providers.csv`` and ``sites.csv`` into
    ``ref_practices``, ``ref_providers`` and ``ref_sites`` (epraccur dates YYYYMMDD),
    recording each file in the ledger. A file already taken in byte for byte is not read
    again; a new version under the same name replaces the table (ODS republishes its
    files under the same names), and the files already taken in are validated again
    against it (:func:`revalidate`; ``settings`` for the held share, defaults if None).
    Returns counts, rejections and the files validated again, for metadata."""
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
        out["revalidated"] = revalidate(landing, warehouse, arrived, settings)
        for _, e_ in arrived:
            _write_event(warehouse, e_, "outcome")
    for name in target.values():
        out[name] = warehouse.read(name).num_rows
    out["rejected_files"] = report.rejected_files
    return out


# ============================================================================ re-validation
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
               settings=None) -> list[dict]:
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
                got = _revalidate_file(landing, warehouse, r, context, ref, ref_event, rule, settings)
                if got is not None:
                    done.append(got)
    return done


REVALIDATED_HELD = "held after re-validation against "
"""How a re-validation's reason starts when the file's new counts hold it (more than
``data_quality.held_reject_share`` of its rows rejected): the ledger then shows it held."""


def _revalidate_file(landing: Store, warehouse: Warehouse, r, context, ref: ParsedName, ref_event: dict,
                     rule: str, settings) -> dict | None:
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
    outcome = _validate(source, frame, period=period, submitter=parsed.submitter_code, file_name=r.file_name,
                        context=_as_of_submission(context, parsed), data_docs_dir=None)
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


# ============================================================================ scan
def scan_landing(landing: Store, warehouse: Warehouse, settings=None) -> dict:
    """Record every file of the landing zone in the ledger: a file not seen before gets a
    ``seen`` event (name, size, SHA-256, first seen); a misnamed one is rejected at once.
    Reads nothing but bytes for the hash; takes nothing in. The events are written
    ``SEEN_PER_PART`` to a ledger part (a national month brings 6,500 new files)."""
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
        if len(seen) >= SEEN_PER_PART:
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
