"""Atomic, versioned, idempotent publication of datasets to a folder or an S3 prefix.

Layout (outputs.md)::

    <root>/<zone>/<dataset>/period=YYYY-MM/part-00000.parquet
    <root>/<zone>/<dataset>/_manifest.json
    <root>/<zone>/<file>                  loose files (data dictionary, funnel plots)
    <root>/<zone>/_manifest.json          lists the loose files of the zone

``period`` is in the path only, never inside the files. Files are zstd Parquet with the
declared schema (:meth:`Dataset.arrow_schema`: exact types, a description of every column
in the field metadata). Their bytes depend only on the rows and the declaration: rows are
sorted on every column and nothing time- or run-dependent is written inside, so the same
inputs give the same bytes.

Manifest (``_manifest.json``, JSON, keys sorted)::

    {"manifest_version": 1, "dataset", "description", "grain", "zone", "schema_version",
     "partition_by", "format": "parquet", "compression": "zstd",
     "columns": [{name, type, description, unit, in_path, disclosure_control}],
     "updated_at", "run_id",                         # of the last run that changed anything
     "partitions": {"YYYY-MM": {
         "files": [{"path", "rows", "bytes", "sha256"}],   # path relative to the dataset folder
         "rows", "run_id", "written_at", "code_version", "schema_version",
         "input_submissions": [...], "thresholds": {...}, "key_label"?}},
     "files": {...}}                                  # zone manifest: loose files

The commit protocol
-------------------
The manifest is the commit point: a reader that follows it (:func:`read_published`) reads
exactly the files it lists, whose SHA-256 it can check. The visible file names are fixed
(``part-00000.parquet``), so a file the current manifest lists is never overwritten while
listed.

Staging lives outside every zone and dataset folder, in ``<root>/_staging/<zone>/<dataset>/
<txn>/`` (loose files of a zone: ``<root>/_staging/<zone>/_files/<txn>/``), and staged files
are named ``*.parquet.staged``: a reader of a dataset folder never meets them, and a reader
that globs ``<root>/**/*.parquet`` does not match them (nor does pyarrow/Spark, which skip
``_``-prefixed folders). A staged file's path in the manifest is relative to the dataset
folder like every other path (``../../_staging/public/<dataset>/<txn>/period=P/...``).
One publication of a dataset is:

1. **Recover.** If the manifest lists staged files (a run was killed after its commit),
   finish that run's steps 4 to 6 first. Otherwise delete the dataset's staging folder
   (leftovers of a run killed before its commit).
2. **Stage.** For each period in the table, build the Parquet bytes. If their SHA-256 equals
   the manifest's and the file is there, the partition is unchanged: its entry (run id,
   time, inputs) is kept as it is. Otherwise the bytes are written to the staging folder.
3. **Commit.** The manifest is rewritten (atomically: temporary file + ``os.replace``
   locally, one PUT on S3) with the changed partitions pointing at their staged files.
   From this instant readers following the manifest see the whole new publication, all
   changed partitions at once, and every listed file matches its digest.
4. **Promote.** Each staged file is copied over ``period=P/part-00000.parquet`` (atomic
   per file: rename locally, server-side copy on S3). The manifest does not list these
   paths for the changed partitions, so nothing it lists changes. Readers of the folder
   that ignore the manifest see each file whole, old or new, and one file per period.
5. **Point back.** The manifest is rewritten with the final paths (same digests).
6. **Clean.** The staging folder is deleted, and with it every folder left empty.

A process killed at any point leaves a manifest whose every listed file exists with its
digest: before step 3 the previous publication, from step 3 the new one. The next run
completes or discards the interrupted one (step 1). Partitions absent from the table are
never touched. Publishing the same inputs again writes nothing at all. (Manifests written
by earlier versions, which staged in ``<dataset>/_staging/``, are recovered the same way.)

Loose files (:func:`publish_file`) follow the same protocol with the zone's manifest.

Revisions
---------
When step 2 stages a partition that was already published, the rows of the published
file (read and checked against its digest) are compared with the new ones by the
dataset's declared key (:attr:`Dataset.key`, :func:`compare_rows`): the counts of rows
added, removed and changed, with the previous entry's ``run_id``, ``written_at`` and
``input_submissions``, come back in :attr:`PublishResult.revisions` (nothing when no row
differs). The caller (``stages.publish``) names the submissions that caused them and
appends them to the public ``revisions`` dataset with :func:`publish_revisions`.

Concurrency: one writer per manifest. Locally a lock file (``fcntl``) serialises writers
on one host; on S3 a lock object ``_staging/<zone>/<dataset>.lock`` made by a conditional
write (:class:`pipelines.lock.RunLock`) does, so two runs of different periods can publish
the same dataset.

No Dagster here; :mod:`pipelines.disclosure` is enforced before anything is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import re
import struct
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import disclosure
from pipelines.schemas import Dataset
from pipelines.storage import Store

__all__ = [
    "MANIFEST",
    "PART",
    "PublishResult",
    "PublicationError",
    "Revision",
    "compare_rows",
    "public_run_id",
    "publish_revisions",
    "publish_dataset",
    "publish_file",
    "publish_folder",
    "read_manifest",
    "read_published",
    "verify_publication",
    "parquet_bytes",
    "with_nullable_ints",
]

MANIFEST = "_manifest.json"
STAGING = "_staging"  # top-level folder of the publish root, beside the zones
STAGED_SUFFIX = ".staged"  # staged files never end in .parquet
PART = "part-00000.parquet"
MANIFEST_VERSION = 1
ZONES = ("public", "restricted")
_PERIOD_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


class PublicationError(RuntimeError):
    pass


@dataclass
class PublishResult:
    dataset: str
    zone: str
    manifest: str  # path of the manifest, relative to the store root
    written: list[str] = field(default_factory=list)  # partitions (periods) written
    unchanged: list[str] = field(default_factory=list)  # partitions identical to the published ones
    rows: int = 0
    recovered: bool = False  # an interrupted earlier publication was completed first
    # what this publication changed in periods already published (one per revised period)
    revisions: list["Revision"] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.written)


@dataclass
class Revision:
    """What one publication changed in one period already published, rows compared by the
    dataset's key (:func:`compare_rows`). Made only when something changed."""

    dataset: str
    period: str
    release_run_id: str
    released_at: str  # written_at of the new manifest entry
    previous_run_id: str | None  # run_id of the previous manifest entry
    previous_released_at: str | None
    previous_inputs: list[str]  # input_submissions of the previous manifest entry
    rows_added: int
    rows_removed: int
    rows_changed: int
    # the files that caused it, as the public ledger names them (filled in by the caller,
    # who knows the ledger: stages.revision_submissions)
    submissions: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- helpers


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _dump(manifest: Mapping) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n").encode()


def _checkpoint(point: str) -> None:
    """Test hook: with ``CAREDATA_PUBLISH_PAUSE_AT=<point>`` the process stops here (it
    touches ``CAREDATA_PUBLISH_PAUSE_FILE`` and sleeps) so that a test can kill it.
    Points: ``staging``, ``staged``, ``committed``, ``promoting``, ``promoted``,
    ``finalised``."""
    if os.environ.get("CAREDATA_PUBLISH_PAUSE_AT") == point:
        marker = os.environ.get("CAREDATA_PUBLISH_PAUSE_FILE")
        if marker:
            Path(marker).write_text(point)
        time.sleep(float(os.environ.get("CAREDATA_PUBLISH_PAUSE_SECONDS", "600")))


# An S3 publication lock waits this long for another run's publication of the same
# dataset (seconds of work) before giving up; it is stale after this long without a heartbeat.
S3_LOCK_WAIT = 1800.0
S3_LOCK_STALE_AFTER = 600.0
S3_LOCK_HEARTBEAT = 30.0


@contextlib.contextmanager
def _lock(store: Store, base: str) -> Iterator[None]:
    """One writer per manifest: ``fcntl`` on this host for a folder, a conditional-write
    lock object for S3."""
    if store.is_s3:
        from pipelines.lock import RunLock

        lock = RunLock(store, name=f"{_staging_dir(base)}.lock", wait=S3_LOCK_WAIT,
                       stale_after=S3_LOCK_STALE_AFTER, heartbeat=S3_LOCK_HEARTBEAT,
                       command=f"publish {base}")
        with lock:
            yield
        return
    import fcntl

    lock_dir = Path(tempfile.gettempdir()) / "caredata-publish-locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(store.uri(base).encode()).hexdigest()[:32]
    with open(lock_dir / f"{name}.lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _staging_dir(base: str) -> str:
    """Root-relative staging folder of a dataset (``<zone>/<dataset>``) or of a zone's
    loose files (``<zone>``)."""
    return f"{STAGING}/{base}" if "/" in base else f"{STAGING}/{base}/_files"


def _up(base: str) -> str:
    """From the folder ``base`` back to the publish root."""
    return "../" * (base.count("/") + 1)


def _staged_rel(base: str, txn: str, final: str) -> str:
    """Path of a staged file relative to ``base`` (what the manifest lists)."""
    return f"{_up(base)}{_staging_dir(base)}/{txn}/{final}{STAGED_SUFFIX}"


def _is_staged(base: str, rel: str) -> bool:
    return rel.startswith(_up(base) + STAGING + "/") or rel.startswith(STAGING + "/")


def _join(base: str, rel: str) -> str:
    """Root-relative path of a manifest path (relative to ``base``); never outside the root."""
    path = posixpath.normpath(f"{base}/{rel}")
    if path.startswith(("../", "/")) or path == "..":
        raise PublicationError(f"{base}: the manifest lists a path outside the publish root")
    return path


def _load(store: Store, base: str) -> dict | None:
    path = f"{base}/{MANIFEST}"
    if not store.exists(path):
        return None
    return json.loads(store.read_bytes(path))


def _write_manifest(store: Store, base: str, manifest: dict) -> None:
    # the temporary file is made in the staging folder, never in the dataset folder
    store.write_bytes(f"{base}/{MANIFEST}", _dump(manifest), tmp_dir=_staging_dir(base))
    store.remove_empty_dirs(_staging_dir(base), parents=True)


def _file_records(manifest: dict) -> Iterator[dict]:
    for entry in manifest.get("partitions", {}).values():
        yield from entry.get("files", [])
    for entry in manifest.get("files", {}).values():
        yield entry


def _final_path(base: str, staged: str) -> str:
    """``../../_staging/<zone>/<dataset>/<txn>/period=P/part-00000.parquet.staged`` ->
    ``period=P/part-00000.parquet`` (and the old in-folder form ``_staging/<txn>/...``)."""
    prefix = f"{_up(base)}{_staging_dir(base)}/"
    if staged.startswith(prefix):
        parts = staged[len(prefix):].split("/", 1)
        if len(parts) == 2 and parts[1].endswith(STAGED_SUFFIX):
            return parts[1][: -len(STAGED_SUFFIX)]
    else:
        parts = staged.split("/", 2)  # written by earlier versions
        if len(parts) == 3 and parts[0] == STAGING:
            return parts[2]
    raise PublicationError(f"{base}: not a staged path in the manifest")


def _clean(store: Store, base: str) -> None:
    """Step 6: delete the staging folder of ``base`` (and the in-folder one of earlier
    versions) and every folder left empty, up to the root."""
    store.delete_prefix(_staging_dir(base), prune_parents=True)
    store.delete_prefix(f"{base}/{STAGING}")


def _promote(store: Store, base: str, manifest: dict) -> bool:
    """Steps 4-6 of the protocol for every staged file the manifest lists. Returns whether
    anything was staged."""
    staged = [r for r in _file_records(manifest) if _is_staged(base, r["path"])]
    for n, rec in enumerate(sorted(staged, key=lambda r: r["path"])):
        src = _join(base, rec["path"])
        if not store.exists(src):
            raise PublicationError(
                f"{base}: the manifest lists a staged file that is missing ({rec['path']}); "
                "the publication cannot be completed")
        store.copy(src, f"{base}/{_final_path(base, rec['path'])}", tmp_dir=_staging_dir(base))
        if n == 0:
            _checkpoint("promoting")
    _checkpoint("promoted")
    if staged:
        for rec in staged:
            rec["path"] = _final_path(base, rec["path"])
        _write_manifest(store, base, manifest)
        _checkpoint("finalised")
    _clean(store, base)
    return bool(staged)


def _recover(store: Store, base: str) -> tuple[dict | None, bool]:
    """Step 1: complete a committed but unfinished publication, drop an uncommitted one."""
    if not store.is_s3:  # temporary files of a write killed half-way (never listed)
        folder = store.root / base
        if folder.exists():
            for p in folder.rglob(".tmp-*"):
                with contextlib.suppress(OSError):
                    p.unlink()
    manifest = _load(store, base)
    if manifest is not None and any(_is_staged(base, r["path"]) for r in _file_records(manifest)):
        _promote(store, base, manifest)
        return manifest, True
    _clean(store, base)
    return manifest, False


def _sort_rows(table: pa.Table) -> pa.Table:
    """A fixed row order: sort on every column (lists through a joined text key)."""
    if table.num_rows < 2:
        return table
    keys, extra = [], {}
    for i, f in enumerate(table.schema):
        t = f.type
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            col = table.column(i)
            if not (pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)):
                col = col.cast(pa.list_(pa.string()))
            key = f"__sort_{i}"
            extra[key] = pc.binary_join(col, "\x1f")
            keys.append((key, "ascending"))
        elif pa.types.is_nested(t) or pa.types.is_dictionary(t):
            continue
        else:
            keys.append((f.name, "ascending"))
    if not keys:
        return table
    keyed = table
    for k, v in extra.items():
        keyed = keyed.append_column(k, v)
    return table.take(pc.sort_indices(keyed, sort_keys=keys))


def with_nullable_ints(table: pa.Table) -> pa.Table:
    """``table`` with pandas metadata naming every integer column ``Int64`` (outputs.md:
    counts that can be suppressed read as nullable integers in pandas, not floats). Every
    integer column, so a column's dtype does not depend on whether a partition happens to
    hold an empty value. Other readers ignore the metadata; it depends only on the column
    names (no pandas version inside), so the bytes stay deterministic."""
    columns = [{"name": f.name, "field_name": f.name, "pandas_type": "int64", "numpy_type": "Int64",
                "metadata": None} for f in table.schema if pa.types.is_integer(f.type)]
    if not columns:
        return table
    meta = {"index_columns": [], "column_indexes": [], "columns": columns}
    old = dict(table.schema.metadata or {})
    old[b"pandas"] = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    return table.replace_schema_metadata(old)


def parquet_bytes(table: pa.Table) -> bytes:
    """Deterministic zstd Parquet bytes of ``table`` (rows sorted first)."""
    table = _sort_rows(table)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", write_statistics=True, store_schema=True)
    return buf.getvalue()


def _columns_doc(ds: Dataset) -> list[dict]:
    schema = ds.arrow_schema(include_partition=True)
    declared = {c.name: c for c in ds.columns}
    out = []
    for f in schema:
        meta = f.metadata or {}
        c = declared.get(f.name)
        suppress = None
        if ds.zone == "public" and c is not None and c.suppress == "count":
            suppress = "count: small values (1 to 7 by default) blanked below national level"
        elif ds.zone == "public" and c is not None and c.suppress == "rate":
            suppress = f"rate: blanked below national level when {c.denominator} is under 8 (default)"
        out.append({
            "disclosure_control": suppress,
            "name": f.name,
            "type": str(f.type),
            "description": meta.get(b"description", b"").decode(),
            "unit": meta.get(b"unit", b"").decode() or None,
            "in_path": f.name == ds.partition_by,
        })
    return out


def _header(ds: Dataset) -> dict:
    return {
        "manifest_version": MANIFEST_VERSION,
        "dataset": ds.name,
        "zone": ds.zone,
        "description": ds.description,
        "grain": ds.grain,
        "schema_version": ds.schema_version,
        "partition_by": ds.partition_by,
        "format": "parquet",
        "compression": "zstd",
        "columns": _columns_doc(ds),
    }


def _check_period(value: Any) -> str:
    if not isinstance(value, str) or not _PERIOD_RE.match(value):
        raise PublicationError(f"a partition value is not a period YYYY-MM: {value!r}")
    return value


# --------------------------------------------------------------------------- datasets


def publish_dataset(
    store: Store,
    ds: Dataset,
    table: pa.Table,
    *,
    period_col: str = "period",
    run_id: str,
    code_version: str,
    input_submissions: Mapping[str, list[str]] | None = None,
    thresholds: Mapping | None = None,
    key_label: str | None = None,
    check: bool = True,
    periods: list[str] | None = None,
) -> PublishResult:
    """Publish the periods present in ``table`` (one partition each) atomically.

    ``table`` has the dataset's published columns (public: after
    :func:`pipelines.disclosure.apply_small_numbers`) and ``period_col``. Disclosure
    control is checked first (``check``); any violation raises
    :class:`pipelines.disclosure.DisclosureError` and nothing is written. ``thresholds`` is
    recorded in each written partition's entry and gives the disclosure thresholds
    (``thresholds["disclosure"]``) to check against. ``periods`` lists partitions this
    publication covers even if the table has no row for them (they get a file of 0 rows:
    "computed, nothing to show" rather than "not computed"); rows of other periods are an
    error.
    """
    if ds.zone not in ZONES:
        raise PublicationError(f"{ds.name} is an {ds.zone} table and is never published")
    if period_col not in table.column_names:
        raise PublicationError(f"{ds.name}: the table has no {period_col} column to partition by")
    part_key = ds.partition_by or "period"
    periods_arr = table.column(period_col)
    if periods_arr.null_count:
        raise PublicationError(f"{ds.name}: {periods_arr.null_count} row(s) have no {period_col}")
    present = {_check_period(p) for p in pc.unique(periods_arr).to_pylist()}
    if periods is not None:
        wanted = {_check_period(p) for p in periods}
        if present - wanted:
            raise PublicationError(f"{ds.name}: the table has rows for periods not listed in periods")
        present |= wanted
    periods = sorted(present)

    full = ds.conform(table, include_partition=ds.partition_by is not None
                      and ds.partition_by in table.column_names)
    if check:
        violations = disclosure.check(ds, full, thresholds)
        if violations:
            raise disclosure.DisclosureError(ds.name, violations)
    # what is written is always the published schema (public: with the *_suppressed flags)
    data = with_nullable_ints(ds.conform(table, include_partition=False, staged=False))
    base = f"{ds.zone}/{ds.name}"
    input_submissions = input_submissions or {}
    thresholds = dict(thresholds or {})

    with _lock(store, base):
        manifest, recovered = _recover(store, base)
        result = PublishResult(ds.name, ds.zone, f"{base}/{MANIFEST}", recovered=recovered,
                               rows=table.num_rows)
        old_parts = (manifest or {}).get("partitions", {})
        existing = {f.path: f.size for f in store.list(base)}
        txn = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:12]}"
        written_at = _now()
        staged: dict[str, dict] = {}
        for period in periods:
            mask = pc.equal(periods_arr, period)
            part = data.filter(mask)
            payload = parquet_bytes(part)
            digest = _sha256(payload)
            final = f"{part_key}={period}/{PART}"
            old = old_parts.get(period)
            if (
                old is not None
                and old.get("key_label") == key_label  # a new label (e.g. the HMAC form) is rewritten
                and [f.get("sha256") for f in old.get("files", [])] == [digest]
                and old["files"][0].get("path") == final
                and existing.get(f"{base}/{final}") == len(payload)
            ):
                result.unchanged.append(period)
                continue
            if old is not None and ds.key:
                rev = _revision(store, base, ds, old, part, period, run_id, written_at)
                if rev is not None:
                    result.revisions.append(rev)
            rel = _staged_rel(base, txn, final)
            store.write_bytes(_join(base, rel), payload)
            if not staged:
                _checkpoint("staging")
            entry = {
                "files": [{"path": rel, "rows": part.num_rows, "bytes": len(payload), "sha256": digest}],
                "rows": part.num_rows,
                "run_id": run_id,
                "written_at": written_at,
                "code_version": code_version,
                "schema_version": ds.schema_version,
                "input_submissions": sorted(input_submissions.get(period, [])),
                "thresholds": thresholds,
            }
            if key_label is not None:
                entry["key_label"] = key_label
            staged[period] = entry
            result.written.append(period)
        if not staged:
            if manifest is None:  # an empty table and nothing published yet
                manifest = {**_header(ds), "partitions": {}, "updated_at": written_at, "run_id": run_id}
                _write_manifest(store, base, manifest)
            return result
        _checkpoint("staged")
        new = {**(manifest or {}), **_header(ds)}
        new["partitions"] = {**old_parts, **staged}
        new["updated_at"] = written_at
        new["run_id"] = run_id
        _write_manifest(store, base, new)  # the commit
        _checkpoint("committed")
        _promote(store, base, new)
        return result


# --------------------------------------------------------------------------- revisions


def _comparable(table: pa.Table, names: list[str]) -> list[tuple]:
    """The rows of ``table`` as tuples over ``names`` (a column it lacks reads as empty),
    floats as the 8 bytes stored (so -0.0 differs from 0.0 and NaN equals NaN), lists as
    tuples."""
    n = table.num_rows
    columns = []
    for name in names:
        if name not in table.column_names:
            columns.append([None] * n)
            continue
        col = table.column(name)
        values = col.to_pylist()
        if pa.types.is_floating(col.type):
            values = [None if v is None else struct.pack("<d", v) for v in values]
        elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            values = [None if v is None else tuple(v) for v in values]
        columns.append(values)
    return list(zip(*columns)) if columns else [()] * n


def compare_rows(key: tuple[str, ...] | list[str], old: pa.Table, new: pa.Table) -> tuple[int, int, int]:
    """``(rows_added, rows_removed, rows_changed)`` from ``old`` to ``new``, rows matched by
    ``key``: a key only in ``new`` is added, only in ``old`` removed, in both with any other
    value different changed. Values are compared exactly as stored (floats bit for bit,
    an empty value differs from any value). A key held by several rows (a declaration
    broken) is compared as a multiset: identical rows match, the rest pair up as changed
    and the surplus is added or removed."""
    key = list(key)
    names = key + [c for c in new.column_names if c not in key]
    names += [c for c in old.column_names if c not in names]
    k = len(key)
    by_key: dict[tuple, list[list[tuple]]] = {}
    for side, table in enumerate((old, new)):
        for row in _comparable(table, names):
            by_key.setdefault(row[:k], [[], []])[side].append(row[k:])
    added = removed = changed = 0
    for old_rows, new_rows in by_key.values():
        if len(old_rows) == 1 and len(new_rows) == 1:  # the usual case
            changed += old_rows[0] != new_rows[0]
            continue
        same = sum((Counter(old_rows) & Counter(new_rows)).values())
        o, n = len(old_rows) - same, len(new_rows) - same
        pairs = min(o, n)
        changed += pairs
        added += n - pairs
        removed += o - pairs
    return added, removed, changed


def _revision(store: Store, base: str, ds: Dataset, old: dict, new: pa.Table, period: str,
              run_id: str, written_at: str) -> Revision | None:
    """The revision a new partition makes to the published one, or None when no row
    differs (a file rewritten for another reason: a new key label, a new code version) or
    the previous file cannot be read whole (nothing to compare with)."""
    tables = []
    for rec in old.get("files", []):
        try:
            payload = store.read_bytes(_join(base, rec["path"]))
        except Exception:  # noqa: BLE001 - a missing previous file: no comparison possible
            return None
        if _sha256(payload) != rec.get("sha256"):
            return None
        tables.append(pq.read_table(io.BytesIO(payload)))
    previous = pa.concat_tables(tables, promote_options="permissive") if tables else new.schema.empty_table()
    added, removed, changed = compare_rows(ds.key, previous, new)
    if not (added or removed or changed):
        return None
    return Revision(ds.name, period, run_id, written_at, old.get("run_id"), old.get("written_at"),
                    list(old.get("input_submissions") or []), added, removed, changed)


def public_run_id(run_id: str | None) -> str | None:
    """A run id as the public ``revisions`` dataset shows it: as is when it is of the
    declared format (a Dagster run id, a short lower-case name) and holds no identifier;
    else ``run-<first 12 hex of its SHA-256>`` (a run id is free text of the caller)."""
    from pipelines.schemas.outputs import F_RUN_ID

    if run_id is None:
        return None
    if F_RUN_ID.matches(run_id) and not disclosure.identifiers_in(F_RUN_ID.scan_text(run_id)):
        return run_id
    return f"run-{_sha256(run_id.encode())[:12]}"


def _ts(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def publish_revisions(
    store: Store,
    revisions: list[Revision],
    *,
    run_id: str,
    code_version: str,
    thresholds: Mapping | None = None,
    periods: list[str] | None = None,
) -> PublishResult | None:
    """Append ``revisions`` to the public ``revisions`` dataset: each revised period's
    partition (and each of ``periods``, published with no row if it never was: "computed,
    nothing revised") is read as published, the new rows added, and the partition
    published again (atomically, as any dataset). A revision already in the dataset (same
    period, dataset, release run and time) is not appended again, and a partition with
    nothing new is not rewritten. Returns None when there was nothing to do."""
    from pipelines import schemas

    periods = sorted({r.period for r in revisions} | set(periods or []))
    if not periods:
        return None
    ds = schemas.get("revisions")
    rows = [{
        "period": r.period, "dataset": r.dataset,
        "release_run_id": public_run_id(r.release_run_id), "previous_run_id": public_run_id(r.previous_run_id),
        "rows_added": r.rows_added, "rows_removed": r.rows_removed, "rows_changed": r.rows_changed,
        "submissions": sorted(set(r.submissions)),
        "released_at": _ts(r.released_at), "previous_released_at": _ts(r.previous_released_at),
    } for r in revisions]
    schema = ds.arrow_schema(include_partition=True)
    new = pa.Table.from_pylist(rows, schema=schema)
    table = new
    if _load(store, f"public/{ds.name}") is not None:
        published = read_published(store, "public", ds.name, periods=periods).select(schema.names).cast(schema)
        # a revision appended already (a run killed after appending, before it forgot
        # its pending revisions) is not appended twice
        seen = {tuple(r[k] for k in ("period",) + ds.key) for r in published.to_pylist()}
        keep = [tuple(r[k] for k in ("period",) + ds.key) not in seen for r in rows]
        table = pa.concat_tables([published, new.filter(pa.array(keep, pa.bool_()))])
    result = publish_dataset(store, ds, table, run_id=run_id, code_version=code_version,
                             thresholds=thresholds, periods=periods)
    return result if result.written else None


# --------------------------------------------------------------------------- loose files


def _zone_header(zone: str) -> dict:
    return {
        "manifest_version": MANIFEST_VERSION,
        "zone": zone,
        "description": f"Files of the {zone} zone beside the datasets (data dictionary, plots); "
                       "each dataset folder has its own manifest.",
    }


def publish_file(
    store: Store,
    zone: str,
    rel_path: str,
    data: bytes,
    *,
    run_id: str | None = None,
    code_version: str | None = None,
) -> bool:
    """Publish ``<zone>/<rel_path>`` (a plot, the data dictionary) atomically, recorded in
    the zone's ``_manifest.json`` under ``files``. Returns False when the same bytes were
    already published (nothing written). A path inside a dataset folder is refused (it
    would break readers of the folder)."""
    from pipelines import schemas

    if zone not in ZONES:
        raise PublicationError(f"unknown zone {zone!r}")
    rel_path = rel_path.strip("/")
    parts = rel_path.split("/")
    if not rel_path or any(p in ("", ".", "..") for p in parts) or parts[-1].startswith(("_", ".")) \
            or parts[0] == STAGING:
        raise PublicationError(f"not a publishable file name: {rel_path!r}")
    if len(parts) > 1 and parts[0] in {d.name for d in schemas.datasets() if d.zone in ZONES}:
        raise PublicationError(f"{rel_path}: loose files may not go inside the dataset folder {parts[0]}")
    digest = _sha256(data)
    with _lock(store, zone):
        manifest, _ = _recover(store, zone)
        manifest = manifest or _zone_header(zone)
        old = manifest.get("files", {}).get(rel_path)
        if old and old.get("sha256") == digest and old.get("path") == rel_path \
                and store.exists(f"{zone}/{rel_path}"):
            return False
        txn = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:12]}"
        staged = _staged_rel(zone, txn, rel_path)
        store.write_bytes(_join(zone, staged), data)
        _checkpoint("staged")
        now = _now()
        manifest = {**manifest, **_zone_header(zone)}
        manifest["files"] = {**manifest.get("files", {}), rel_path: {
            "path": staged, "bytes": len(data), "sha256": digest, "written_at": now,
            "run_id": run_id, "code_version": code_version,
        }}
        manifest["updated_at"] = now
        _write_manifest(store, zone, manifest)
        _checkpoint("committed")
        _promote(store, zone, manifest)
        return True


# --------------------------------------------------------------------------- folders


def publish_folder(
    store: Store,
    base: str,
    files: Mapping[str, bytes],
    header: Mapping[str, Any],
    *,
    run_id: str | None = None,
    code_version: str | None = None,
) -> bool:
    """Publish the loose ``files`` of one folder ``base`` (a feedback pack:
    ``feedback/<source>/<submitter>/<period>``) atomically, with the folder's own
    ``_manifest.json`` (``header`` and ``files``: path, bytes, sha256 of each), by the
    protocol of the datasets: staged outside the folder, the manifest the commit point,
    then promoted. A file of the folder the new set no longer has is deleted after the
    commit. Returns False when every file was already published with the same bytes and
    ``header`` (nothing written)."""
    base = base.strip("/")
    segments = base.split("/")
    if len(segments) < 2 or segments[0] in ZONES or segments[0] == STAGING \
            or any(p in ("", ".", "..") or p.startswith(("_", ".")) for p in segments):
        raise PublicationError(f"not a publishable folder: {base!r}")
    for name in files:
        if "/" in name or name in ("", ".", "..") or name.startswith(("_", ".")):
            raise PublicationError(f"not a publishable file name: {name!r}")
    with _lock(store, base):
        manifest, _ = _recover(store, base)
        old_files = (manifest or {}).get("files", {})
        digests = {n: _sha256(b) for n, b in files.items()}
        same = (manifest is not None and set(old_files) == set(files)
                and all(old_files[n].get("sha256") == digests[n] and old_files[n].get("path") == n
                        and store.exists(f"{base}/{n}") for n in files)
                and all(manifest.get(k) == v for k, v in header.items()))
        if same:
            return False
        txn = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:12]}"
        now = _now()
        entries = {}
        for name, data in sorted(files.items()):
            old = old_files.get(name)
            if old and old.get("sha256") == digests[name] and old.get("path") == name \
                    and store.exists(f"{base}/{name}"):
                entries[name] = old
                continue
            staged = _staged_rel(base, txn, name)
            store.write_bytes(_join(base, staged), data)
            entries[name] = {"path": staged, "bytes": len(data), "sha256": digests[name], "written_at": now,
                             "run_id": run_id, "code_version": code_version}
        _checkpoint("staged")
        new = {"manifest_version": MANIFEST_VERSION, **header, "files": entries, "updated_at": now, "run_id": run_id}
        _write_manifest(store, base, new)  # the commit
        _checkpoint("committed")
        _promote(store, base, new)
        for name in sorted(set(old_files) - set(files)):  # files the pack no longer has
            if store.exists(f"{base}/{name}"):
                store.delete(f"{base}/{name}")
        return True


# --------------------------------------------------------------------------- reading


def read_manifest(store: Store, zone: str, dataset: str) -> dict:
    manifest = _load(store, f"{zone}/{dataset}")
    if manifest is None:
        raise FileNotFoundError(f"{zone}/{dataset} has not been published")
    return manifest


def read_published(
    store: Store,
    zone: str,
    dataset: str,
    *,
    periods: list[str] | None = None,
    verify: bool = True,
) -> pa.Table:
    """The dataset as its manifest lists it, with ``period`` as a string column (from the
    partition key). ``verify`` checks each file's SHA-256 against the manifest; a file
    replaced by a publication that finished meanwhile makes it start again from the new
    manifest, so the result is always one publication, never a mix."""
    attempts = 5
    for attempt in range(attempts):
        manifest = read_manifest(store, zone, dataset)
        try:
            return _read_snapshot(store, zone, dataset, manifest, periods, verify)
        except (FileNotFoundError, _Moved):
            # a publication finished between reading the manifest and a file: read the
            # new manifest and start again, so the result is one consistent snapshot
            if attempt == attempts - 1:
                raise PublicationError(
                    f"{zone}/{dataset}: files do not match the manifest after {attempts} attempts")
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


class _Moved(Exception):
    pass


def _read_snapshot(store, zone, dataset, manifest, periods, verify) -> pa.Table:
    from pipelines import schemas

    base = f"{zone}/{dataset}"
    key = manifest.get("partition_by") or "period"
    try:
        ds = schemas.get(dataset)
        file_schema = ds.arrow_schema(include_partition=False)
        schema = ds.arrow_schema(include_partition=True)
    except KeyError:
        ds = file_schema = schema = None
    tables = []
    for period, entry in sorted(manifest.get("partitions", {}).items()):
        if periods is not None and period not in periods:
            continue
        for rec in entry.get("files", []):
            try:
                payload = store.read_bytes(_join(base, rec["path"]))
            except Exception as exc:  # local FileNotFoundError, S3 NoSuchKey
                if isinstance(exc, FileNotFoundError) or "NoSuchKey" in type(exc).__name__ \
                        or "NoSuchKey" in str(exc):
                    raise _Moved() from exc
                raise
            if verify and _sha256(payload) != rec["sha256"]:
                raise _Moved()
            t = pq.read_table(io.BytesIO(payload))
            if file_schema is not None and t.schema.names == file_schema.names:
                t = t.cast(file_schema)  # e.g. Parquet stores timestamp[s] as [ms]
            t = t.append_column(pa.field(key, pa.string(), nullable=False),
                                pa.array([period] * t.num_rows, pa.string()))
            tables.append(t)
    if schema is not None and ds.partition_by == key:
        tables = [t.select(schema.names).cast(schema) for t in tables]
        if not tables:
            return schema.empty_table()
    elif not tables:
        return pa.table({key: pa.array([], pa.string())})
    return pa.concat_tables(tables)


def verify_publication(store: Store, zone: str, dataset: str | None = None) -> list[str]:
    """Problems with a publication as its manifest lists it (empty = whole and consistent):
    a listed file missing, or its size or SHA-256 different. ``dataset=None`` checks the
    zone's loose files."""
    base = f"{zone}/{dataset}" if dataset else zone
    manifest = _load(store, base)
    if manifest is None:
        return [f"{base}: no manifest"]
    problems = []
    for rec in _file_records(manifest):
        path = _join(base, rec["path"])
        if not store.exists(path):
            problems.append(f"{path}: listed but missing")
            continue
        payload = store.read_bytes(path)
        if len(payload) != rec["bytes"]:
            problems.append(f"{path}: {len(payload)} bytes, manifest says {rec['bytes']}")
        if _sha256(payload) != rec["sha256"]:
            problems.append(f"{path}: SHA-256 differs from the manifest")
    return problems
