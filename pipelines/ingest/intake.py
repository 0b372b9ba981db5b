"""Taking a feed's files in for a period (:func:`ingest`): the candidates (not yet taken
in, hashed and read as a stream), validated together in chunks by the validator passed in,
then taken in one by one in order (silver part per submission, quarantine, data-quality,
``gp_extracts`` and ledger outcome per chunk), with the held rules and the report.

Nothing here logs or raises with a value of a row: only file names, counts, rule ids and
line numbers. Type 1 objection rows are dropped by :mod:`pipelines.landing` as the file is
read; only their count per practice reaches ``gp_extracts`` and the ledger."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Callable, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.drift import header_rows
from pipelines.ingest.ledger import (
    _event,
    _files,
    _files_digest,
    _GPSize,
    _Ledger,
    _record_bad_names,
    _refuse_unopened,
    _reject,
    _sort_key,
    _unexpected,
    _write_events,
    public_file_name,
)
from pipelines.ingest.quarantine import _dq_tables, _quarantine
from pipelines.ingest.silver import (
    SILVER,
    _chunk_silvers,
    _fft_silver,
    _gp_silver,
    _gp_type2_rows,
    _Sliced,
    _strip,
    _sus_silver,
    _warnings,
)
from pipelines.landing import (
    ONE_READ_BYTES,
    FileRejected,
    Limits,
    ParsedName,
    parse_bytes,
    parse_name,
    read_csv,
    read_whole,
    sha256_stream,
)
from pipelines.schemas.inputs import FEEDS, TYPE2
from pipelines.storage import FileInfo, Store, UnsafePath
from pipelines.warehouse import Warehouse

log = logging.getLogger(__name__)


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
    validation_seconds: float = 0.0  # time spent in the validator

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
        }


def _reference_context(landing: Store, warehouse: Warehouse, today: date | None, *,
                       validator: "Validator | None" = None, engine=None):
    from pipelines.ingest.reference import load_reference

    if not warehouse.store.exists(warehouse.path("ref_sites")) and landing.list("reference"):
        load_reference(landing, warehouse, validator=validator, engine=engine)
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


def _read_candidate(landing, fi, parsed: ParsedName, feed, ledger, warehouse: Warehouse, report: IngestReport,
                    limits: Limits | None = None):
    """A file not yet taken in, parsed: (frame, info, sha256, first seen), or None when it
    is not to be read (seen before) or cannot be parsed (then recorded as rejected, with
    any unexpected error: no file stops the run). Read as a stream (landing.read_csv)."""
    got = _candidate(landing, fi, parsed, ledger, warehouse, report)
    if got is None:
        return None
    size, sha, data = got
    first = ledger.first_seen(fi.path, sha)
    try:
        if data is not None:  # read once: parsed from the bytes hashed
            frame, info = parse_bytes(data, fi.path, feed, limits or Limits.from_settings(None))
        else:
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
               warehouse: Warehouse, report: IngestReport) -> tuple[int, str, bytes | None] | None:
    """The file's size, SHA-256 and (a file of at most :data:`pipelines.landing.ONE_READ_BYTES`,
    read once) its bytes, else None for them (hashed as a stream, to be read as one) when
    it is to be taken in now; None when it was seen before byte for byte, or is refused
    (recorded in the ledger)."""
    if ledger.unchanged(fi):
        report.files_skipped.append(fi.path)
        return None
    data = None
    try:
        whole = read_whole(landing, fi.path) if (fi.size or 0) <= ONE_READ_BYTES else None
        if whole is not None:
            data, sha = whole
            size = len(data)
        else:
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
    return size, sha, data


# ============================================================================ validator
class Validator(Protocol):
    """What validates the rows of many files of one feed at once:
    :func:`pipelines.validation.validate_many`'s contract. ``items``: one dict per file
    (``frame``, ``period``, ``submitter``, ``file_name``, ``context``); returns one outcome
    per item (``rejected``, ``rule_ids``, ``messages``, ``rule_counts``, ``field_scores``),
    each the same as validating that file alone. It may accept ``engine=`` (the engine the
    caller was given) and ``work_out=`` (a list to append its work frame to: the declared
    columns cleaned and dates parsed, which the typing then reuses)."""

    def __call__(self, source: str, items: list[dict], *, data_docs_dir: str | None = None,
                 **kw) -> list: ...


def one_by_one(validate_one: Callable) -> Validator:
    """A :class:`Validator` from a function that validates one file
    (``validate_one(source, frame, *, period, submitter, file_name, context, data_docs_dir)``,
    :func:`pipelines.validation.validate`'s contract): the files validated one after another."""

    def validate_many(source: str, items: list[dict], *, data_docs_dir: str | None = None, **_kw) -> list:
        return [validate_one(source, it["frame"], period=it.get("period"), submitter=it.get("submitter"),
                             file_name=it["file_name"], context=it.get("context"), data_docs_dir=data_docs_dir)
                for it in items]

    return validate_many


def _default_validator() -> Validator:
    from pipelines.validation import validate_many

    return validate_many


def _accepts(validator, name: str) -> bool:
    """Whether ``validator`` takes the keyword ``name`` (or any keyword)."""
    import inspect

    try:
        params = inspect.signature(validator).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(q.kind is inspect.Parameter.VAR_KEYWORD for q in params.values())


def validate_files(source: str, items: list[dict], *, validator: Validator | None = None, engine=None,
                   data_docs_dir: str | None = None, work_out: list | None = None,
                   docs_out: list | None = None) -> list:
    """``items`` validated by ``validator`` (None: :func:`pipelines.validation.validate_many`),
    ``engine`` passed on when given and the validator takes one, ``work_out`` and
    ``docs_out`` when it takes them (a validator that does not builds its own Data Docs)."""
    validator = validator or _default_validator()
    kw: dict = {"data_docs_dir": data_docs_dir}
    if engine is not None and _accepts(validator, "engine"):
        kw["engine"] = engine
    if work_out is not None and _accepts(validator, "work_out"):
        kw["work_out"] = work_out
    if docs_out is not None and _accepts(validator, "docs_out"):
        kw["docs_out"] = docs_out
    outcomes = validator(source, items, **kw)
    if len(outcomes) != len(items):
        raise RuntimeError(f"the validator gave {len(outcomes)} outcome(s) for {len(items)} file(s)")
    return outcomes


def validate_one(source: str, frame: pd.DataFrame, *, period, submitter, file_name: str, context,
                 data_docs_dir: str | None = None, validator: Validator | None = None, engine=None):
    """One file's outcome through :func:`validate_files`."""
    item = {"frame": frame, "period": period, "submitter": submitter, "file_name": file_name, "context": context}
    return validate_files(source, [item], validator=validator, engine=engine, data_docs_dir=data_docs_dir)[0]


# ============================================================================ ingest
VALIDATE_BATCH_ROWS = 2_000_000  # rows of many files per validation call (and per Data Docs build)
VALIDATE_BATCH_CELLS = 30_000_000
"""... and at most about this many values (rows x columns): 2 million rows of GP extracts
(about a dozen columns), some 300,000 of SUS (93), so that a chunk's memory follows its values.
Both are defaults of :func:`ingest`'s ``batch_rows`` and ``batch_cells``."""


def ingest(source: str, period: str, landing: Store, warehouse: Warehouse, settings, *,
           today: date | None = None, data_docs_dir: str | None = None, validator: Validator | None = None,
           engine=None, batch_rows: int | None = None, batch_cells: int | None = None) -> IngestReport:
    """Take in every not-yet-taken-in file of ``source`` (gp, sus_apc, fft) whose
    reporting period is ``period`` (GP: the extract date's month). ``hes_apc`` is passed
    to :func:`ingest_hes` (its files hold many periods).

    ``validator``: a :class:`Validator` (None: :func:`pipelines.validation.validate_many`);
    ``engine``: a :class:`pipelines.engine.Engine`, passed on to the validator when it
    takes one (parallelism is the engine's: no worker process here). Files are validated
    together in chunks of at most ``batch_rows`` rows or ``batch_cells`` values
    (:data:`VALIDATE_BATCH_ROWS`, :data:`VALIDATE_BATCH_CELLS` when None)."""
    if source == "hes_apc":
        from pipelines.ingest.hes import ingest_hes

        return ingest_hes(landing, warehouse, settings, today=today, data_docs_dir=data_docs_dir,
                          validator=validator, engine=engine)
    if source not in ("gp", "sus_apc", "fft"):
        raise ValueError(f"unknown source {source!r}: expected gp, sus_apc, fft or hes_apc")
    max_rows = VALIDATE_BATCH_ROWS if batch_rows is None else int(batch_rows)
    max_cells = VALIDATE_BATCH_CELLS if batch_cells is None else int(batch_cells)
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
    # Files are validated together in chunks of about ``max_rows`` rows (one GX context
    # per chunk, not per file: 6,500 GP extracts a month), then taken in one by one, in
    # order, exactly as if each had been validated alone.
    pending: list[tuple] = []
    pending_rows = pending_cells = 0
    docs: list = []  # the chunks' Data Docs pages, built once at the end (_build_docs)

    def take(chunk: list[tuple], outcomes: list, work: pd.DataFrame | None = None) -> None:
        silvers = _chunk_silvers(source, period, [(p_, fr, None) for p_, _, fr, _, _, _ in chunk], outcomes, work)
        if isinstance(silvers, _Sliced):
            silvers = silvers.parts()
        sink = _ChunkParts(warehouse, period)
        for (p_, fi_, fr, info_, sha_, first_), outcome, silver in zip(chunk, outcomes, silvers):
            _take_in(source, period, p_, fr, info_, sha_, fi_.size, first_, warehouse, settings, report,
                     outcome=outcome, silver=silver, sink=sink, gp_current=gp_sizes)
        sink.write()
        for _, fi_, _, _, sha_, _ in chunk:
            ledger.keys.add((fi_.path, sha_))

    def take_alone(chunk: list[tuple]) -> None:
        """A chunk failed: its files validated and taken in one by one; a file that fails
        alone is rejected (the error's class only), its parts removed, and the run goes on."""
        log.warning("a chunk of %d file(s) failed; taking its files in one by one", len(chunk))
        _remove_untaken_parts(warehouse, period, _Ledger(warehouse))
        for item in chunk:
            p_, fi_, fr, _info, sha_, first_ = item
            try:
                outcome = validate_one(source, fr, period=period, submitter=p_.submitter_code,
                                       file_name=p_.file_name, context=_as_of_submission(context, p_),
                                       data_docs_dir=data_docs_dir, validator=validator, engine=engine)
                take([item], [outcome])
            except Exception as exc:  # noqa: BLE001
                _remove_file_parts(warehouse, [period], p_.submission_id)
                _remove_untaken_parts(warehouse, period, _Ledger(warehouse))
                _reject(warehouse, p_, sha_, fi_.size, first_, _unexpected(p_.file_name, "taking it in", exc),
                        report)
                ledger.keys.add((fi_.path, sha_))

    def flush() -> None:
        nonlocal pending, pending_rows, pending_cells
        chunk, pending, pending_rows, pending_cells = pending, [], 0, 0
        if not chunk:
            return
        jobs = [(p_, fr, _as_of_submission(context, p_)) for p_, _, fr, _, _, _ in chunk]
        t0 = time.perf_counter()
        try:
            work: list = []
            outcomes = _validate_chunk(source, period, jobs, data_docs_dir, work, validator=validator, engine=engine,
                                       docs_out=docs)
            report.validation_seconds += time.perf_counter() - t0
            rows = sum(len(fr) for _, _, fr, _, _, _ in chunk)
            # The validator's work frame, when it gives one of exactly the chunk's rows.
            take(chunk, outcomes, work[0] if len(work) == 1 and len(work[0]) == rows else None)
        except Exception:  # noqa: BLE001 - no file can stop the pipeline
            take_alone(chunk)

    for parsed, fi in mine:
        got = _read_candidate(landing, fi, parsed, feed, ledger, warehouse, report, limits)
        if got is None:
            continue
        frame, info, sha, first = got
        if context is None:
            context = _reference_context(landing, warehouse, today, validator=validator, engine=engine)
        pending.append((parsed, fi, frame, info, sha, first))
        pending_rows += len(frame)
        pending_cells += frame.size
        if pending_rows >= max_rows or pending_cells >= max_cells:
            flush()
    flush()
    _build_docs(docs, data_docs_dir)
    return report


def _build_docs(docs: list, data_docs_dir: str | None) -> None:
    """The Data Docs site of every chunk's validation, built once for the ingest (a build
    renders the whole site: once per chunk cost more the more chunks). A failed build
    loses pages, never data: logged, and the run goes on."""
    if not docs or not data_docs_dir:
        return
    from pipelines.validation import build_docs

    try:
        build_docs(docs, data_docs_dir)
    except Exception as exc:  # noqa: BLE001 - Data Docs are a view of the results, not the results
        log.warning("the Data Docs site was not built (%s); the validation results stand", type(exc).__name__)


def _validate_chunk(source: str, period: str, jobs: list[tuple], data_docs_dir, work_out: list | None = None,
                    *, validator: Validator | None = None, engine=None, docs_out: list | None = None) -> list:
    """One outcome per (parsed name, frame, context), the chunk's files validated at once
    (:func:`validate_files`; the validator's work frame, if it gives one, appended to
    ``work_out``; its Data Docs pages, if it defers them, to ``docs_out``)."""
    return validate_files(source, [
        {"frame": fr, "period": period, "submitter": p_.submitter_code, "file_name": p_.file_name,
         "context": ctx} for p_, fr, ctx in jobs], validator=validator, engine=engine,
        data_docs_dir=data_docs_dir, work_out=work_out, docs_out=docs_out)


def _take_in(source, period, parsed: ParsedName, frame: pd.DataFrame, info, sha: str, size: int,
             first: datetime, warehouse: Warehouse, settings, report: IngestReport, *,
             outcome, silver: pa.Table | None = None, sink: "_ChunkParts | None" = None,
             gp_current: "dict[str, _GPSize] | None" = None):
    """Take one validated file in: its silver part (part = its submission id); its
    quarantine, data-quality and ``gp_extracts`` rows and its ledger outcome, written as
    its own parts, or handed to ``sink`` to be written with the rest of its chunk.
    ``gp_current``: per practice, its current extract (:meth:`_Ledger.gp_current_sizes`),
    for the GP held rule; updated when this extract becomes the current one."""
    sid = parsed.submission_id
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
    parts = _ChunkParts(warehouse, period) if sink is None else sink
    parts.add_silver(SILVER[source], silver, sid)
    parts.add("quarantine", _quarantine(frame, rejected, outcome, source=source, file_name=parsed.file_name,
                                        submission_id=sid, submitter=parsed.submitter_code, periods=period))
    parts.add_dq((period, sid, source, parsed.submitter_code, outcome.rule_counts, outcome.field_scores))
    parts.add("submission_columns", header_rows(  # the header's names only (schema drift, DQMI coverage)
        period, sid, source, parsed.submitter_code, public_file_name(parsed.file_name, sha), parsed.submitted_at,
        list(getattr(info, "columns", None) or [c for c in frame.columns if c != "_line"])))

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
            log.warning("held %s: %s", parsed.file_name, size_reason, extra={"in_summary": True})
        elif not held and (now is None or pd.Timestamp(parsed.submitted_at) >= pd.Timestamp(now.submitted_at)):
            gp_current[parsed.submitter_code] = _GPSize(rows, parsed.file_name, parsed.submitted_at, received)
    if source == "gp":
        is_type2 = (_strip(frame, "OBJECTION").str.upper() == TYPE2.upper()).fillna(False).to_numpy(dtype=bool)
        type2 = int(is_type2.sum())
        parts.add("gp_extracts", pa.table({
            "period": [period], "submission_id": [sid], "practice_code": [parsed.submitter_code],
            "extract_date": pa.array([parsed.extract_date], pa.date32()),
            "rows_received": [received], "type1_objections": [info.type1_objections],
            "type2_objections": [type2], "held": [held],
        }))
        parts.add_type2(parsed, frame["NHS_NUMBER"][is_type2] if "NHS_NUMBER" in frame.columns
                        else pd.Series([], dtype="string"))
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


def _remove_untaken_parts(warehouse: Warehouse, period: str, ledger: "_Ledger") -> None:
    """Remove the chunk parts of ``period`` (a GP chunk's silver part among them) with a
    row of a submission that has no ledger outcome: left by a run stopped between a
    chunk's data parts and its ledger part (:class:`_ChunkParts`)."""
    taken = set(ledger.taken["submission_id"])
    for table in CHUNKED_SILVER + _ChunkParts.TABLES:
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


CHUNKED_SILVER = ("gp_patients",)
"""Silver tables written as one part per chunk (:data:`pipelines.current.CHUNK_PART` in its
name) rather than one per file: a national month is 6,500 GP extracts, and a small
fsynced file per extract cost more than its rows. SUS and FFT files keep a part each
(few files; re-validation replaces one file's part)."""


class _ChunkParts:
    """The quarantine, data-quality and ``gp_extracts`` rows and the ledger outcomes of the
    files of one chunk, written together: one part per table and one ledger part for the
    chunk, instead of five small files per file (a national month has 6,500 GP
    extracts). The ledger part is written last, in one piece: a chunk whose ledger part
    is missing was not taken in, and its files are taken in again on the next run; the
    data parts it left are then removed first (:func:`_remove_untaken_parts`), so no row
    is counted twice. The report is told of each file only once its outcome is written."""

    TABLES = ("quarantine", "dq_rules", "dq_fields", "gp_extracts", "gp_type2", "submission_columns")
    WRITERS = 4
    """Silver parts (SUS, FFT) written at once (threads: Parquet encoding and the file system's
    flush release the GIL); all are written before the chunk's other parts and its
    ledger part."""

    def __init__(self, warehouse: Warehouse, period: str):
        self.warehouse, self.period = warehouse, period
        self.tables: dict[str, list[pa.Table]] = {t: [] for t in self.TABLES}
        self.dq: list[tuple] = []
        self.type2: list[tuple] = []
        self.silver: list[tuple[str, pa.Table, str]] = []
        self.events: list[dict] = []
        self.then: list = []

    def add(self, table: str, data: pa.Table) -> None:
        self.tables[table].append(data)

    def add_silver(self, table: str, data: pa.Table, submission_id: str) -> None:
        """A file's silver rows: written with the chunk's (GP) or as its own part (part =
        its submission id), as the current view finds them (:func:`pipelines.current._parts`)."""
        self.silver.append((table, data, submission_id))

    def add_type2(self, parsed: ParsedName, nhs_numbers: pd.Series) -> None:
        """A GP extract's NHS_NUMBER values of its 9Nu4 rows, made ``gp_type2`` rows with
        the rest of the chunk's (:func:`_gp_type2_rows`: one pass, not one per extract)."""
        self.type2.append((parsed, nhs_numbers))

    def _write_silver(self, part: str) -> None:
        """The silver parts: a GP chunk's rows as one part named ``part`` (the extracts in
        the order of their submission ids, each row carrying its ``submission_id``:
        :data:`CHUNKED_SILVER`); a SUS or FFT file's rows as a part of its own named by its
        submission id (revalidation replaces them)."""
        if not self.silver:
            return
        jobs, chunked = [], {}
        for table, data, sid in self.silver:
            if table in CHUNKED_SILVER:
                chunked.setdefault(table, []).append((sid, data))
            else:
                jobs.append((table, data, sid))
        for table, pieces in chunked.items():
            pieces.sort(key=lambda p: p[0] + ".parquet")  # the order of per-submission parts' names
            jobs.append((table, pa.concat_tables([d for _, d in pieces]).combine_chunks(), part))
        if len(jobs) == 1:
            table, data, name = jobs[0]
            self.warehouse.write(table, data, self.period, part=name)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=self.WRITERS) as pool:
            futures = [pool.submit(self.warehouse.write, table, data, self.period, part=name)
                       for table, data, name in jobs]
        for f in futures:
            f.result()  # the first error, if any, after all have finished

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
        self._write_silver(part)
        if self.type2:
            self.tables["gp_type2"].append(_gp_type2_rows(self.type2, self.period))
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
        self.type2, self.silver = [], []


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
