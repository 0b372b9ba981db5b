"""Feedback packs: for each submitter's month, a report it can act on (issue 25).

For every (source, submitter, period) with a file taken in, held or rejected, a pack under
``<publish root>/feedback/<source>/<submitter_code>/<period>/``::

    feedback_<source>_<submitter>_<period>.csv        every rule broken (table ``feedback``)
    feedback_<source>_<submitter>_<period>.xlsx       the same, with the files and a read-me sheet
    _manifest.json                                    the folder's files, digests, inputs digest

Each row of ``feedback`` (declared in :mod:`pipelines.schemas.feedback`) is one rule one
file broke: the field, the line numbers (ranges, the first :data:`LINE_CAP` line numbers
with the count, ``lines_note`` says which), the counts, the effect (row quarantined, row
warned, file held, file rejected), the rule's message and how to fix it (the rule's
declaration in ``expectations/``: :attr:`expectations.rules.Rule.how_to_fix`). A held file
adds a ``FILE_HELD`` row and a rejected one a ``FILE_REJECTED`` row, with the ledger's
reason as the public ledger words it (:func:`pipelines.ingest.public_reason`).

Where it comes from: the ledger (files, statuses, reasons, counts), ``dq_rules`` (each
rule's counts per submission), the ``quarantine`` rows (line and every rule a rejected row
broke) and the typed rows' ``line`` and ``dq_warnings`` (the lines a warn rule flagged on a
row kept). Only line numbers and rule ids are read from the row tables, never a value
(``quarantine.raw`` is never read), and a pack is checked before it is written: every
string a code of its declared format, the texts scanned for anything shaped like an NHS
number or a postcode (withheld if so).

Who gets a pack: GP, SUS and FFT files whose name gives a submitter and a month (a name
that breaks the convention names nobody: such a file is in the public ledger and the run
summary only); a HES extract's rows count under the provider in their ``PROCODE3``, one
pack per provider and month (rows without a provider code of the declared shape go to
nobody). Every file of the month is in its pack, superseded ones too (a GP extract is
superseded by the practice's next one as a matter of course; its faults were the practice's
all the same), each with its status.

Written like the datasets (:func:`pipelines.publish.publish_folder`: staged, the
manifest the commit point, then promoted; a folder or S3). The bytes depend only on the
inputs, so a pack whose inputs did not change is not written again; the digest of each
pack's inputs (its files as the ledger has them, and the period's rules counted after
linkage, part :data:`LINKAGE_PART` of ``dq_rules``) is kept in the warehouse
(``feedback/digests.json``) so that a run reads only the row tables of packs whose inputs
changed.

No Dagster here: ``stages.feedback_packs`` calls :func:`write_packs`.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import logging
import re
import unicodedata
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import schemas
from pipelines.storage import Store
from pipelines.warehouse import Warehouse

log = logging.getLogger(__name__)

ROOT = "feedback"  # folder under the publish root
LINE_CAP = 1000  # line numbers listed per rule and file; the count is always given
PACK_VERSION = "1"  # bumped when the pack's layout changes (every pack is rebuilt)
DIGESTS = "feedback/digests.json"  # in the warehouse: pack folder -> digest of its inputs
LINKAGE_PART = "linkage-age-unknown"  # the dq_rules part the linkage stage writes (stages.link)
SOURCES = ("gp", "sus_apc", "hes_apc", "fft")
WRITERS = 8  # packs written at once on S3 (each write is a dozen requests: files, manifest, lock)
STATUSES = ("current", "superseded", "held", "rejected")  # pending: not yet taken in
SILVER = {"gp": "gp_patients", "sus_apc": "sus_episodes", "hes_apc": "sus_episodes", "fft": "fft_responses"}
EFFECT = {"reject": "row_quarantined", "warn": "row_warned"}
RANK = {"reject": 0, "warn": 1}  # a pack lists the rows not used first, then the warnings


def _int(v) -> int | None:
    """A count read from a table (int, float or missing) as an int, or None."""
    return None if v is None or pd.isna(v) else int(v)
FILE_HELD, FILE_REJECTED = "FILE_HELD", "FILE_REJECTED"
WITHHELD = "(withheld: the text held something shaped like a patient identifier)"

HELD_FIX = ("Correct the rows listed for this file and send it again (a new file replaces it); if the file is "
            "right as it is, ask the data team to release it. Until then no row of it is used.")
REJECTED_FIX = ("Nothing of this file was read. Correct what the message says and send the file again, named "
                "as inputs.md says (a file with the same bytes is not read twice).")
AGE_UNKNOWN_FIX = ("Give DOB (or at least MYDOB) on the episodes listed: a procedure whose patient's age is "
                   "unknown cannot count in the outcome figures.")

_LINE_IN_REASON = re.compile(r"\bline ([0-9]{1,12})\b")


# --------------------------------------------------------------------------- small parts
def line_ranges(lines, cap: int = LINE_CAP) -> tuple[str, int, int]:
    """``(text, listed, total)``: the distinct line numbers ascending, the first ``cap`` of
    them written as ranges and single lines (``"2 to 4, 9, 12 to 13"``: not ``2-4``, which a
    spreadsheet opening the CSV reads as a date), how many of them the
    text holds and how many there are."""
    arr = np.unique(np.asarray(list(lines) if not isinstance(lines, np.ndarray) else lines, dtype=np.int64))
    total = len(arr)
    arr = arr[:cap]
    if not len(arr):
        return "", 0, total
    breaks = np.flatnonzero(np.diff(arr) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(arr)]]) - 1
    parts = [str(arr[a]) if a == b else f"{arr[a]} to {arr[b]}" for a, b in zip(starts, ends)]
    return ", ".join(parts), len(arr), total


def _lines_note(listed: int, total: int, failed: int | None, *, examples: bool = False) -> str:
    if examples:
        return (f"{listed:,} example line(s) of {failed or 0:,}: this rule is counted after linkage, so "
                "only example lines are recorded")
    if total == 0:
        return "no line number recorded"
    head = f"all {total:,} line(s) listed" if listed == total else f"the first {listed:,} of {total:,} lines listed"
    if failed is not None and failed != total:
        head += f" ({failed:,} row(s) failed the rule; lines of rows not kept or quarantined are not known)"
    return head


def _text(value) -> str | None:
    """Text the pipeline wrote, as the pack holds it: printable ASCII (accents and dashes
    folded), one line, at most 2,000 characters, never starting like a spreadsheet formula."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    s = unicodedata.normalize("NFKD", str(value))
    s = s.replace("\u2014", "-").replace("\u2013", "-").replace("\u2026", "...")
    s = "".join(c if " " <= c <= "~" else (" " if c.isspace() else "") for c in s)
    s = " ".join(s.split())[:2000]
    if s[:1] in ("=", "+", "-", "@"):
        s = "'" + s[:1999]
    return s or None


def _catalogue() -> dict[tuple[str, str], object]:
    """(source, rule id) -> the Rule declared in expectations/."""
    from pipelines.validation.plan import SUITES

    return {(src, r.id): r for src, mod in SUITES.items() for r in mod.RULES if r.applies_to(src)}


def _fix_and_message(cat, source: str, rule_id: str, field_name) -> tuple[str, str | None]:
    rule = cat.get((source, rule_id))
    if rule is not None:
        return rule.how_to_fix, rule.message
    from pipelines.outcomes import AGE_UNKNOWN_RULE

    if rule_id == AGE_UNKNOWN_RULE:
        return AGE_UNKNOWN_FIX, ("An episode with a cohort procedure whose patient's age at admission is "
                                 "unknown (no DOB, no MYDOB, no linked GP date of birth).")
    what = field_name or "the field"
    return f"Correct {what} on the lines listed (rule {rule_id}, docs/data-quality.md).", None


# --------------------------------------------------------------------------- what to build
@dataclass
class Pack:
    source: str
    submitter: str
    period: str
    files: pd.DataFrame  # ledger rows of its files
    digest: str = ""

    @property
    def folder(self) -> str:
        return f"{ROOT}/{self.source}/{self.submitter}/{self.period}"

    @property
    def stem(self) -> str:
        return f"feedback_{self.source}_{self.submitter}_{self.period}"


@dataclass
class FeedbackReport:
    packs: int = 0  # packs that exist for the submissions seen
    written: list[str] = field(default_factory=list)  # folders written by this run
    unchanged: int = 0
    failed: list[str] = field(default_factory=list)  # "<folder>: <ErrorClass>" (never a value)
    withheld: int = 0  # texts withheld by the identifier scan
    root: str = ""

    def as_metadata(self) -> dict:
        return {"packs": self.packs, "packs_written": len(self.written), "packs_unchanged": self.unchanged,
                "written": self.written[:50], "failed": self.failed, "texts_withheld": self.withheld,
                "root": self.root}


def _fmt(kind: str, value) -> bool:
    """A submitter code or a period of its declared format (what may name a folder)."""
    from pipelines.schemas import F_PERIOD
    from pipelines.schemas.outputs import F_SUBMITTER

    return isinstance(value, str) and {"submitter": F_SUBMITTER, "period": F_PERIOD}[kind].matches(value)


def _placeable(submitters: pd.Series, periods: pd.Series) -> np.ndarray:
    """Rows whose submitter code and period may name a folder."""
    return np.array([_fmt("submitter", s) and _fmt("period", p) for s, p in zip(submitters, periods)], dtype=bool)


def _hes_groups(wh: Warehouse, sids: list[str]) -> pd.DataFrame:
    """(submission_id, period, submitter_code) of the HES extracts' dq rows."""
    if not sids:
        return pd.DataFrame(columns=["submission_id", "period", "submitter_code"])
    parts = [p for p in wh.parts("dq_rules") if p.rsplit("/", 1)[-1][:-len(".parquet")] in set(sids)]
    if not parts:
        return pd.DataFrame(columns=["submission_id", "period", "submitter_code"])
    t = wh.dataset("dq_rules", parts=parts, columns=["period", "submission_id", "submitter_code"]).to_table()
    return t.to_pandas().drop_duplicates()


def plan(wh: Warehouse, ledger: pa.Table | None = None) -> list[Pack]:
    """The packs the ledger calls for, each with its files and the digest of its inputs."""
    from pipelines import ingest

    led = (ledger if ledger is not None else ingest.read_ledger(wh)).to_pandas()
    led = led[led["source"].isin(SOURCES) & led["status"].isin(STATUSES)].copy()
    packs: list[Pack] = []
    plain = led[led["source"] != "hes_apc"]
    plain = plain[_placeable(plain["submitter_code"], plain["reporting_period"])]
    for (src, sub, per), files in plain.groupby(["source", "submitter_code", "reporting_period"], sort=True):
        packs.append(Pack(src, sub, per, files))
    hes = led[(led["source"] == "hes_apc") & (led["status"] != "rejected")]
    groups = _hes_groups(wh, hes["submission_id"].dropna().tolist())
    groups = groups[_placeable(groups["submitter_code"], groups["period"])]
    for (sub, per), g in groups.groupby(["submitter_code", "period"], sort=True):
        packs.append(Pack("hes_apc", sub, per, hes[hes["submission_id"].isin(set(g["submission_id"]))]))
    after_linkage = {}  # period -> digest of the rules counted after linkage (not in the ledger)
    for per in sorted({p.period for p in packs}):
        path = wh.path("dq_rules", per, LINKAGE_PART)
        after_linkage[per] = hashlib.sha256(wh.store.read_bytes(path)).hexdigest() if wh.store.exists(path) else ""
    for p in packs:
        keys = sorted(
            json.dumps([r.file_name, r.sha256, r.status, r.reason if isinstance(r.reason, str) else None,
                        *(_int(v) for v in (r.rows_received, r.rows_quarantined, r.rows_kept))])
            for r in p.files.itertuples())
        p.digest = hashlib.sha256("\n".join([PACK_VERSION, p.folder, after_linkage[p.period], *keys])
                                  .encode()).hexdigest()
    return packs


# --------------------------------------------------------------------------- row tables
def period_lines(wh: Warehouse, period: str, sources: dict[str, str], warn_sids: set[str]) -> dict[str, pd.DataFrame]:
    """Per submission, ``(who, rule_id, line)`` of every failure with a line in ``period``:
    the quarantine's rows (every rule they broke; ``who`` their submitter code) and the
    kept rows' warnings (``who``: a HES row's provider). ``sources``: submission id ->
    source, the submissions wanted; ``warn_sids``: those with a warn rule failed (only
    their typed rows are read). Reads line numbers, codes and rule ids only, never a
    value: one scan of the period's quarantine for every pack of the period."""
    frames = []
    qparts = wh.parts("quarantine", [period])  # every feed's, in chunks: filtered by submission
    if qparts and sources:
        q = wh.dataset("quarantine", parts=qparts, columns=["submission_id", "submitter_code", "line", "rule_ids"]) \
            .to_table(filter=pc.field("submission_id").isin(sorted(sources)))
        if q.num_rows:
            frames.append(_explode(q, "rule_ids", "submitter_code"))
    from pipelines.current import submission_parts

    wanted = sorted(warn_sids & set(sources))
    for src in sorted({sources[sid] for sid in wanted}):
        sids = [sid for sid in wanted if sources[sid] == src]
        # a submission's own part, or a chunk part holding many GP extracts' rows
        paths = submission_parts(wh, SILVER[src], period, sids)
        if not paths:
            continue
        who = ["provider_code"] if src == "hes_apc" else []
        t = wh.dataset(SILVER[src], parts=paths, columns=["submission_id", "line", "dq_warnings", *who]) \
            .to_table(filter=(pc.list_value_length(pc.field("dq_warnings")) > 0)
                      & pc.field("submission_id").isin(sids))
        if t.num_rows:
            frames.append(_explode(t, "dq_warnings", who[0] if who else None))
    if not frames:
        return {}
    lines = pd.concat(frames, ignore_index=True)
    return {sid: g.drop(columns="submission_id") for sid, g in lines.groupby("submission_id", sort=False)}


def _explode(t: pa.Table, list_col: str, who: str | None) -> pd.DataFrame:
    lists = t.column(list_col).combine_chunks()
    idx = pc.list_parent_indices(lists)
    return pd.DataFrame({
        "submission_id": t.column("submission_id").take(idx).to_numpy(zero_copy_only=False),
        "who": (t.column(who).take(idx).to_numpy(zero_copy_only=False) if who
                else np.full(len(idx), None, dtype=object)),
        "rule_id": pc.list_flatten(lists).to_numpy(zero_copy_only=False),
        "line": t.column("line").take(idx).to_numpy(zero_copy_only=False).astype("int64"),
    })


# --------------------------------------------------------------------------- one pack
def build_pack(pack: Pack, wh: Warehouse, renamed: dict[str, str], cat=None,
               dq: pd.DataFrame | None = None, lines: dict[str, pd.DataFrame] | None = None
               ) -> tuple[pa.Table, pa.Table, int]:
    """The ``feedback`` and ``feedback_files`` rows of one pack (checked against their
    declarations), and how many texts the identifier scan withheld. ``dq``: the period's
    ``dq_rules`` rows, ``lines``: the period's :func:`period_lines` (both read here for
    this pack alone when not given)."""
    from pipelines import ingest

    cat = cat if cat is not None else _catalogue()
    src, sub, per = pack.source, pack.submitter, pack.period
    files = sorted(pack.files.to_dict("records"),
                   key=lambda r: (str(r["file_name"]), not isinstance(r["sha256"], str), str(r["sha256"])))
    taken = {r["submission_id"] for r in files if r["status"] != "rejected" and isinstance(r["submission_id"], str)}
    if dq is None:
        dq = wh.read("dq_rules", [per]).to_pandas()
    # plain records: a pack is a few files and rules, and a national month thousands of packs
    dq_all = [d for d in dq.to_dict("records") if d["submission_id"] in taken
              and (src != "hes_apc" or d["submitter_code"] == sub)]
    failing = [d for d in dq_all if (_int(d["rows_failed"]) or 0) > 0]
    if lines is None:
        lines = period_lines(wh, per, {sid: src for sid in taken},
                             {d["submission_id"] for d in failing if d["severity"] == "warn"})
    by: dict[tuple[str, str], np.ndarray] = {}  # (submission, rule) -> its lines, in file order
    rejected_lines: dict[str, int] = {}  # a HES provider's rows quarantined, per submission
    for sid, g in lines.items():
        if sid not in taken:
            continue
        if src == "hes_apc":
            g = g[g["who"] == sub]
        rid, ln = g["rule_id"].to_numpy(dtype=object), g["line"].to_numpy()
        for rule in dict.fromkeys(rid):
            by[(sid, rule)] = ln[rid == rule]
        if src == "hes_apc":
            rej = [rule for rule in dict.fromkeys(rid)
                   if getattr(cat.get((src, rule)), "severity", None) == "reject"]
            rejected_lines[sid] = len(np.unique(ln[np.isin(rid, rej)])) if rej else 0

    rows, file_rows = [], []
    for r in files:
        name = ingest.public_file_name(r["file_name"], r["sha256"])
        sid = r["submission_id"]
        base = {"source": src, "submitter_code": sub, "period": per, "file": name, "file_sha256": r["sha256"],
                "status": r["status"]}
        reason = ingest.public_reason(r["reason"], r["file_name"], renamed) if isinstance(r["reason"], str) else None
        counts = {c: _int(r[c]) for c in ("rows_received", "rows_quarantined", "rows_kept")}
        if src == "hes_apc":  # this provider's rows of the extract
            checked = [_int(d["rows_checked"]) for d in dq_all if d["submission_id"] == sid]
            checked = [c for c in checked if c is not None]
            received = max(checked) if checked else None
            quarantined = rejected_lines.get(sid, 0)
            counts = {"rows_received": received, "rows_quarantined": quarantined,
                      "rows_kept": None if received is None else received - quarantined}
        file_rows.append({**base, **counts, "reason": None if r["status"] == "current" else reason})
        if r["status"] in ("held", "rejected"):
            raw = r["reason"] if isinstance(r["reason"], str) else ""
            text, listed, total = line_ranges([int(x) for x in _LINE_IN_REASON.findall(raw)])
            rows.append({**base, "rule_id": FILE_HELD if r["status"] == "held" else FILE_REJECTED, "field": None,
                         "severity": "file", "effect": "file_held" if r["status"] == "held" else "file_rejected",
                         "rows_checked": None, "rows_failed": None, "line_numbers": text or None,
                         "lines_listed": listed, "lines_note": "the line(s) the reason names" if total else None,
                         "message": reason, "how_to_fix": HELD_FIX if r["status"] == "held" else REJECTED_FIX})
        if r["status"] == "rejected":
            continue
        # the file's failing rules, summed over its rows of the period (a rule counted in
        # several parts: validation and after linkage), by rule, field and severity
        own: dict[tuple, list[int]] = {}
        examples: dict[str, list[int]] = {}
        for d in failing:
            if d["submission_id"] != sid:
                continue
            fld = d["field"] if isinstance(d["field"], str) else None
            sums = own.setdefault((d["rule_id"], fld, d["severity"]), [0, 0])
            sums[0] += _int(d["rows_checked"]) or 0
            sums[1] += _int(d["rows_failed"]) or 0
            if d["example_lines"] is not None:
                examples.setdefault(d["rule_id"], []).extend(int(x) for x in d["example_lines"])
        # rows not used first, then warnings; by rule id (then field, severity)
        order = sorted(own, key=lambda k: (RANK.get(k[2], 2), str(k[0]), k[1] is None, str(k[1]), str(k[2])))
        for rule_id, fld, severity in order:
            checked_n, failed = own[(rule_id, fld, severity)]
            fix, message = _fix_and_message(cat, src, rule_id, fld)
            found = by.get((sid, rule_id))
            if found is not None and len(found):
                text, listed, total = line_ranges(found)
                note = _lines_note(listed, total, failed)
            else:
                text, listed, total = line_ranges(examples.get(rule_id, []))
                note = _lines_note(listed, total, failed, examples=True) if total else "no line number recorded"
            rows.append({**base, "rule_id": rule_id, "field": fld,
                         "severity": severity, "effect": EFFECT.get(severity, "row_warned"),
                         "rows_checked": checked_n, "rows_failed": failed, "line_numbers": text or None,
                         "lines_listed": listed, "lines_note": note, "message": message, "how_to_fix": fix})
    withheld = 0
    tables = []
    for name, data, prose in (("feedback", rows, ("lines_note", "message", "how_to_fix")),
                              ("feedback_files", file_rows, ("reason",))):
        ds = schemas.get(name)
        for row in data:
            for c in prose:
                row[c] = _text(row.get(c))
                if row[c] is not None and _identifier_shaped(row[c]):
                    row[c] = WITHHELD
                    withheld += 1
        schema = ds.arrow_schema()
        table = pa.Table.from_pylist(data, schema=schema) if data else schema.empty_table()
        tables.append(_check(ds, table))
    return tables[0], tables[1], withheld


def _check(ds, table: pa.Table) -> pa.Table:
    """The table conformed to its declaration, every non-nullable column filled and every
    string a code or a value of its column's declared format (Python's ``re``: the prose
    format has a look-ahead RE2 lacks). Raises ``ConstraintError`` naming the column,
    never a value."""
    table = ds.conform(table, include_partition=False)
    for c in ds.columns:
        col = table.column(c.name)
        if not c.nullable and col.null_count:
            raise schemas.ConstraintError(f"{ds.name}.{c.name}: {col.null_count} empty value(s)")
        if (c.codes is not None or c.format is not None) and pa.types.is_string(col.type):
            bad = sum(1 for v in pc.unique(col).to_pylist() if v is not None and not c.conforms(v))
            if bad:
                raise schemas.ConstraintError(f"{ds.name}.{c.name}: {bad} value(s) not of the declared format")
    return table


def _identifier_shaped(text: str) -> bool:
    from pipelines.disclosure import identifiers_in

    return bool(identifiers_in(text, strict=False))


# --------------------------------------------------------------------------- the files
README = [
    "Feedback on your submissions of {period} ({source}, {submitter}).",
    "Sheet 'Rules': every rule your files broke, one row per file and rule: the field, the line numbers, "
    "how many rows, what happened to them (effect) and how to fix it.",
    "effect: row_quarantined = the row is not used; row_warned = the row is used and the failure counted; "
    "file_held = no row of the file is used until it is replaced or released; file_rejected = the file "
    "was not read.",
    "Line numbers count the header as line 1 (the first data row is line 2). Up to the first 1,000 line "
    "numbers of each rule are listed as ranges (12 to 15) and single lines; lines_note says when there are more.",
    "This pack holds line numbers and rule ids, never a value from your file. The rules are described in "
    "the data dictionary's data-quality page (docs/data-quality.md).",
    "Sheet 'Files': your files of the month, what became of each and its row counts. No row in 'Rules' "
    "means that no rule was broken.",
]


def _csv_bytes(table: pa.Table) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(table.column_names)
    for row in table.to_pylist():
        w.writerow(["" if v is None else v for v in row.values()])
    return buf.getvalue().encode("utf-8")


def _xlsx_bytes(pack: Pack, rules: pa.Table, files: pa.Table) -> bytes:
    """The workbook (openpyxl, write-only: a national month is thousands of packs), its
    bytes a function of its content only (fixed document times, and fixed times on the zip
    entries). Every value is written as a value, never as a formula."""
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter

    wb = Workbook(write_only=True)
    fixed = dt.datetime(2000, 1, 1)
    wb.properties.creator = "caredata"
    wb.properties.created = fixed
    wb.properties.modified = fixed
    about = wb.create_sheet("Read me")
    about.column_dimensions["A"].width = 120
    for line in README:
        about.append([line.format(period=pack.period, source=pack.source, submitter=pack.submitter)])
    bold = Font(bold=True)
    for title, table in (("Rules", rules), ("Files", files)):
        ws = wb.create_sheet(title)
        ws.freeze_panes = "A2"
        head = []
        for name in table.column_names:
            cell = WriteOnlyCell(ws, value=name)
            cell.font = bold
            head.append(cell)
        ws.append(head)
        for row in table.to_pylist():
            values = []
            for v in row.values():
                if isinstance(v, str) and v[:1] in ("=", "+", "-", "@"):  # never read as a formula
                    v = WriteOnlyCell(ws, value=v)
                    v.data_type = "s"
                values.append(v)
            ws.append(values)
        ws.auto_filter.ref = f"A1:{get_column_letter(table.num_columns)}{table.num_rows + 1}"
    raw = io.BytesIO()
    wb.save(raw)
    src = zipfile.ZipFile(io.BytesIO(raw.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():
            zi = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = info.external_attr
            data = src.read(info.filename)
            if info.filename == "docProps/core.xml":  # openpyxl stamps the save time here
                data = re.sub(rb"(<dcterms:modified[^>]*>)[^<]*(</dcterms:modified>)",
                              rb"\g<1>2000-01-01T00:00:00Z\g<2>", data)
            z.writestr(zi, data)
    return out.getvalue()


def _header(pack: Pack, rules: pa.Table, files: pa.Table) -> dict:
    from pipelines.publish import _columns_doc

    return {
        "kind": "feedback_pack",
        "zone": "feedback",
        "source": pack.source, "submitter_code": pack.submitter, "period": pack.period,
        "description": (f"Feedback for {pack.submitter} ({pack.source}) on its files of {pack.period}: every rule "
                        "broken, the line numbers, counts, effect and how to fix it. For the submitter and the "
                        "data team; not public. Line numbers and rule ids only, never a value of a row."),
        "audience": "the submitter and the data team (not public)",
        "inputs_digest": pack.digest,
        "pack_version": PACK_VERSION,
        "rules": rules.num_rows,
        "submissions": sorted(files.column("file").to_pylist()),
        "columns": {"feedback": _columns_doc(schemas.get("feedback")),
                    "feedback_files": _columns_doc(schemas.get("feedback_files"))},
    }


# --------------------------------------------------------------------------- all packs
def write_packs(wh: Warehouse, out: Store, *, run_id: str | None = None, code_version: str | None = None,
                ledger: pa.Table | None = None) -> FeedbackReport:
    """Write every pack whose inputs changed since it was last written (or whose folder
    lacks it). One pack failing is named in ``failed`` (its folder and the error's class,
    never a value) and the others go on."""
    from pipelines import ingest
    from pipelines.publish import publish_folder

    ledger = ledger if ledger is not None else ingest.read_ledger(wh)
    packs = plan(wh, ledger)
    report = FeedbackReport(packs=len(packs), root=out.uri(ROOT))
    done = json.loads(wh.store.read_bytes(DIGESTS)) if wh.store.exists(DIGESTS) else {}
    present = {f.path for f in out.list(ROOT)}  # one listing, not a request per pack
    todo = [p for p in packs if done.get(p.folder) != p.digest
            or not {f"{p.folder}/{p.stem}.csv", f"{p.folder}/{p.stem}.xlsx"} <= present]
    report.unchanged = len(packs) - len(todo)
    if not todo:
        return report
    rows = ledger.to_pylist()
    shown = {r["file_name"]: ingest.public_file_name(r["file_name"], r["sha256"]) for r in rows}
    renamed = {f: p for f, p in shown.items() if f != p and len(f) >= 6}
    cat = _catalogue()
    # S3: a few writes at once (each waits on requests). A folder: one at a time, since a
    # finished write prunes the empty staging folders a parallel one may be about to use.
    pool = ThreadPoolExecutor(max_workers=WRITERS if out.is_s3 else 1)
    pending: list = []
    period = dq = lines = None  # one period's rows at a time
    for p in sorted(todo, key=lambda p: (p.period, p.source, p.submitter)):
        try:
            if p.period != period:
                period, dq, lines = p.period, None, None
                dq = wh.read("dq_rules", [period]).to_pandas()
                mine = [q for q in todo if q.period == period]
                sources = {sid: q.source for q in mine for sid, st in zip(q.files["submission_id"], q.files["status"])
                           if isinstance(sid, str) and st != "rejected"}
                warn = set(dq.loc[dq["submission_id"].isin(set(sources)) & (dq["severity"] == "warn")
                                  & (dq["rows_failed"].fillna(0) > 0), "submission_id"])
                lines = period_lines(wh, period, sources, warn)
                by_sid = {k: g for k, g in dq.groupby("submission_id", sort=False)}
                split: dict = {}  # a HES extract's rows by provider, made when first wanted
            rules, files, withheld = build_pack(p, wh, renamed, cat, *_own_rows(p, dq, by_sid, lines, split))
            report.withheld += withheld
            data = {f"{p.stem}.csv": _csv_bytes(rules), f"{p.stem}.xlsx": _xlsx_bytes(p, rules, files)}
            # the writes wait on the store (S3: a dozen requests a pack): a few at a time
            pending.append((p, pool.submit(publish_folder, out, p.folder, data, _header(p, rules, files),
                                           run_id=run_id, code_version=code_version)))
        except Exception as exc:  # noqa: BLE001 - one pack never stops the others
            _failed(report, p, exc)
    pool.shutdown(wait=True)
    for p, fut in pending:
        try:
            if fut.result():
                report.written.append(p.folder)
            else:
                report.unchanged += 1
            done[p.folder] = p.digest
        except Exception as exc:  # noqa: BLE001
            _failed(report, p, exc)
    report.written.sort()
    wh.store.write_bytes(DIGESTS, json.dumps(done, indent=1, sort_keys=True).encode())
    if report.withheld:
        log.warning("%s", f"feedback packs: {report.withheld} text(s) withheld (shaped like an identifier)")
    return report


def _own_rows(p: Pack, dq: pd.DataFrame, by_sid: dict, lines: dict, split: dict) -> tuple[pd.DataFrame, dict]:
    """The period's ``dq_rules`` rows and :func:`period_lines` of ``p``'s submissions only
    (a HES extract's: of its provider only), from the period's split by submission, so
    that each pack works on its own rows rather than filtering the period's (a national
    month has thousands of packs)."""
    sids = [sid for sid, st in zip(p.files["submission_id"], p.files["status"])
            if isinstance(sid, str) and st != "rejected"]
    own_dq, own_lines = [], {}
    for sid in sids:
        g, ln = by_sid.get(sid), lines.get(sid)
        if p.source == "hes_apc":
            if sid not in split:
                split[sid] = ({k: x for k, x in g.groupby("submitter_code", sort=False)} if g is not None else {},
                              {k: x for k, x in ln.groupby("who", sort=False)} if ln is not None else {})
            g, ln = split[sid][0].get(p.submitter), split[sid][1].get(p.submitter)
        if g is not None:
            own_dq.append(g)
        if ln is not None:
            own_lines[sid] = ln
    return (pd.concat(own_dq) if own_dq else dq.iloc[:0]), own_lines


def _failed(report: FeedbackReport, p: Pack, exc: BaseException) -> None:
    log.warning("%s", f"feedback pack {p.folder} not written ({type(exc).__name__})")
    report.failed.append(f"{p.folder}: {type(exc).__name__}")


def read_pack(out: Store, source: str, submitter: str, period: str) -> dict:
    """A pack's manifest and its rules as written (for the CLI, tests and operators)."""
    base = f"{ROOT}/{source}/{submitter}/{period}"
    manifest = json.loads(out.read_bytes(f"{base}/_manifest.json"))
    stem = f"feedback_{source}_{submitter}_{period}"
    text = out.read_bytes(f"{base}/{stem}.csv").decode("utf-8")
    return {"manifest": manifest, "rules": list(csv.DictReader(io.StringIO(text)))}


__all__ = ["FeedbackReport", "LINE_CAP", "Pack", "ROOT", "build_pack", "line_ranges", "period_lines", "plan",
           "read_pack", "write_packs"]
