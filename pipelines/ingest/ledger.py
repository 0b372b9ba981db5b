"""The ledger: one event per file and outcome, append-only (one small Parquet part per
event or chunk under ``ledger/parts/``), reconciled at read time into each file's status
(current, superseded, held, rejected, pending) by the submission rules; the public
``submissions`` ledger (names and reasons as published); an operator's release of a held
file; and the recording of the files refused before they are read (links, special files,
unsafe paths, misnamed files, unreadable files).

Nothing here logs or raises with a value of a row: only file names, counts, rule ids and
line numbers."""

from __future__ import annotations

import hashlib
import logging
import re
from datetime import datetime, timezone
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines import schemas
from pipelines.landing import (
    ParsedName,
    Rejection,
    parse_name,
    sha256_stream,
)
from pipelines.storage import FileInfo, Store, UnsafePath
from pipelines.warehouse import Warehouse

if TYPE_CHECKING:
    from pipelines.ingest.intake import IngestReport

log = logging.getLogger(__name__)


LEDGER_PARTS = "ledger/parts"


TAKEN = ("taken", "held")  # raw outcomes of a file taken in (held ones included)


_PROTOCOL_RANK = {"BULK": 0, "NET": 1}


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


def _reject(warehouse: Warehouse, name, sha: str, size: int | None, first: datetime, reason: str,
            report: IngestReport | None) -> None:
    _write_event(warehouse, _event(name, sha, size, first, "rejected", reason), "outcome")
    if report is not None:
        report.rejected_files.append({"file_name": name.file_name, "reason": reason})
    # Logs name the file as the public ledger does: a name that breaks its folder's
    # convention is supplier text (it may name a patient); the full name stays in the
    # warehouse ledger and the Dagster metadata, for operators.
    shown = public_file_name(name.file_name, sha)
    log.warning("rejected %s: %s", shown, public_reason(reason, name.file_name, {name.file_name: shown}),
                extra={"in_summary": True})  # the run summary names it: its console shows it once


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


REVALIDATED_HELD = "held after re-validation against "
"""How a re-validation's reason starts when the file's new counts hold it (more than
``data_quality.held_reject_share`` of its rows rejected): the ledger then shows it held."""
