"""The landing zone: file names, and reading a file into strings (../shared/spec/inputs.md).

Nothing here writes anything. :func:`parse_name` turns a path relative to the landing root
into a :class:`ParsedName` (the identity of a submission) or a :class:`Rejection` (plain
words). :func:`read_csv` turns a file's bytes into a pandas DataFrame whose columns are
all pandas ``string`` dtype (empty = ``<NA>``, codes keep their leading zeros), with the
original column names and an int column ``_line`` (header = line 1, first data row = 2).
A file that cannot be read, or whose header lacks a required column, raises
:class:`FileRejected` with a reason naming the file and, where known, the line. Reasons
never quote the file's content (it may hold NHS numbers).

GP files: type 1 objection rows (``OBJECTION`` ``9Nu0``) are dropped here, as the file
is read, and only counted (``info.type1_objections``); no caller ever sees them.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import zlib
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from pipelines.schemas.inputs import (
    EPRACCUR,
    EPRACCUR_COLUMNS,
    EPRACCUR_WIDTH,
    FEEDS,
    FFT,
    GP,
    HES_APC,
    REFERENCE,
    SUS_APC,
    TYPE1,
    Feed,
)
from pipelines.storage import Store

GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
FOLDERS = ("reference", "gp", "sus_apc", "fft", "hes_apc")

# What a good name looks like, in the words the operator reads.
EXPECTED_NAME = {
    "gp": "GP_<practice>_<YYYYMMDD>.csv",
    "sus_apc": "APC_<provider>_<YYYYMM>_<YYYYMMDDHHMMSS>_<BULK|NET>.csv",
    "fft": "FFT_<provider>_<YYYYMM>_<YYYYMMDDHHMMSS>.csv",
    "hes_apc": "<any name>.csv",
    "reference": "epraccur.csv, providers.csv or sites.csv",
}


class FileRejected(Exception):
    """A file rejected whole. ``reason`` is plain words, safe to log (no file content)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ParsedName:
    file_name: str  # path relative to the landing root
    source: str  # reference | gp | sus_apc | hes_apc | fft
    feed: str  # gp | sus_apc | hes_apc | fft | epraccur | providers | sites
    submission_id: str  # file name without folder and extension
    submitter_code: str | None = None
    reporting_period: str | None = None  # YYYY-MM (GP: month of the extract date)
    submitted_at: datetime | None = None  # UTC (GP: extract date midnight)
    protocol: str | None = None  # BULK | NET (SUS only)
    extract_date: date | None = None  # GP only
    compressed: bool = False

    @property
    def feed_def(self) -> Feed:
        return FEEDS.get(self.feed) or REFERENCE[self.feed]


@dataclass(frozen=True)
class Rejection:
    file_name: str
    reason: str
    source: str | None = None
    submission_id: str | None = None


@dataclass
class ReadInfo:
    file_name: str
    feed: str
    compressed: bool = False
    bom: bool = False
    delimiter: str = ","
    columns: list[str] = field(default_factory=list)
    extra_columns: list[str] = field(default_factory=list)
    rows: int = 0  # rows returned (GP: type 1 rows excluded)
    type1_objections: int = 0  # GP only: rows dropped on read


# ----------------------------------------------------------------------------- names
def _stem(name: str) -> tuple[str, bool]:
    if name.endswith(".csv.gz"):
        return name[: -len(".csv.gz")], True
    if name.endswith(".csv"):
        return name[: -len(".csv")], False
    return name, False


def _period(yyyymm: str) -> str | None:
    try:
        d = datetime.strptime(yyyymm, "%Y%m")
    except ValueError:
        return None
    return f"{d.year:04d}-{d.month:02d}"


def _timestamp(text: str) -> datetime | None:
    try:
        return datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def parse_name(rel_path: str) -> ParsedName | Rejection:
    """The identity of a submission from its path, or why the name is not acceptable."""
    rel_path = rel_path.strip("/")
    parts = rel_path.split("/")
    folder, name = (parts[0], parts[-1]) if len(parts) > 1 else ("", parts[0])
    stem, compressed = _stem(name)

    def reject(why: str, source: str | None = None) -> Rejection:
        return Rejection(rel_path, f"{rel_path}: {why}", source, stem)

    if folder not in FOLDERS:
        return reject(
            "not in a landing folder the pipeline reads (reference/, gp/, sus_apc/, fft/, hes_apc/)"
        )
    if len(parts) != 2:
        return reject(f"files must sit directly in {folder}/, not in a subfolder", folder)
    if not (name.endswith(".csv") or name.endswith(".csv.gz")):
        return reject(
            f"file name does not follow {EXPECTED_NAME[folder]} (only .csv or .csv.gz files are read)",
            folder,
        )

    if folder == "reference":
        for key, feed in REFERENCE.items():
            if feed.name_pattern.match(name):
                return ParsedName(rel_path, "reference", key, stem, compressed=compressed)
        return reject(f"file name does not follow {EXPECTED_NAME['reference']}", "reference")

    feed = FEEDS[folder]
    m = feed.name_pattern.match(name)
    if not m:
        return reject(f"file name does not follow {EXPECTED_NAME[folder]}", folder)
    g = m.groupdict()
    if folder == "hes_apc":
        return ParsedName(rel_path, "hes_apc", "hes_apc", stem, compressed=compressed)
    if folder == "gp":
        try:
            extract = datetime.strptime(g["date"], "%Y%m%d").date()
        except ValueError:
            return reject(f"the extract date {g['date']} in the file name is not a real date", folder)
        return ParsedName(
            rel_path, "gp", "gp", stem,
            submitter_code=g["submitter"],
            reporting_period=f"{extract.year:04d}-{extract.month:02d}",
            submitted_at=datetime(extract.year, extract.month, extract.day, tzinfo=timezone.utc),
            extract_date=extract,
            compressed=compressed,
        )
    period = _period(g["period"])
    if period is None:
        return reject(f"the reporting period {g['period']} in the file name is not a real month", folder)
    submitted = _timestamp(g["submitted"])
    if submitted is None:
        return reject(
            f"the submission time {g['submitted']} in the file name is not a real date and time", folder
        )
    return ParsedName(
        rel_path, folder, folder, stem,
        submitter_code=g["submitter"],
        reporting_period=period,
        submitted_at=submitted,
        protocol=g.get("protocol"),
        compressed=compressed,
    )


# ----------------------------------------------------------------------------- bytes
def sha256_stream(store: Store, rel_path: str) -> tuple[str, int]:
    """SHA-256 and size of a file, streamed in chunks."""
    h = hashlib.sha256()
    size = 0
    for chunk in store.iter_chunks(rel_path):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def _feed(feed: Feed | str) -> tuple[str, Feed]:
    if isinstance(feed, Feed):
        for key, f in {**FEEDS, **REFERENCE}.items():
            if f is feed:
                return key, f
        return feed.source, feed
    if feed in FEEDS:
        return feed, FEEDS[feed]
    if feed in REFERENCE:
        return feed, REFERENCE[feed]
    raise KeyError(f"no feed {feed!r}")


def _decode(data: bytes, rel_path: str, info: ReadInfo) -> bytes:
    if data[:2] == GZIP_MAGIC or rel_path.endswith(".gz"):
        if data[:2] != GZIP_MAGIC:
            raise FileRejected(f"{rel_path}: named .gz but is not gzip-compressed")
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            raise FileRejected(f"{rel_path}: the gzip data is damaged or truncated") from None
        info.compressed = True
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM):]
        info.bom = True
    if not data.strip():
        raise FileRejected(f"{rel_path}: the file is empty")
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise FileRejected(f"{rel_path}: line {line}: binary content (a NUL byte), not CSV text")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise FileRejected(f"{rel_path}: line {line}: not UTF-8 text") from None
    return data


def _header_fields(first_line: str, delimiter: str) -> list[str]:
    return next(csv.reader([first_line], delimiter=delimiter, strict=True), [])


def _diagnose(text: str, delimiter: str, width: int, rel_path: str, header: bool) -> str:
    """The first structural problem of a CSV text, in plain words (no content)."""
    lines = text.split("\n")
    start = 1 if header else 0
    for idx in range(start, len(lines)):
        raw = lines[idx].rstrip("\r")
        if raw == "":
            continue
        lineno = idx + 1
        try:
            rows = list(csv.reader([raw], delimiter=delimiter, strict=True))
        except csv.Error:
            return f"{rel_path}: line {lineno}: broken quoting"
        if raw.count('"') % 2:
            return f"{rel_path}: line {lineno}: broken quoting (a quoted value is not closed on its line)"
        n = len(rows[0]) if rows else 0
        if n != width:
            return f"{rel_path}: line {lineno}: expected {width} fields, found {n}"
    return f"{rel_path}: the file cannot be parsed as CSV"


def _nonblank_lines(data: bytes) -> np.ndarray:
    """1-based numbers of the physical lines (split on ``\\n``) holding anything but
    carriage returns: the lines pyarrow reads a record from. Vectorised: a GP extract
    has tens of thousands of lines."""
    arr = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(arr == 10)
    starts = np.concatenate([[0], newlines + 1])
    ends = np.concatenate([newlines, [len(arr)]])
    # A line holds something else when it is longer than its carriage returns.
    returns = np.flatnonzero(arr == 13)
    n_returns = np.searchsorted(returns, ends) - np.searchsorted(returns, starts)
    return np.flatnonzero(ends - starts > n_returns).astype(np.int64) + 1


def parse_bytes(data: bytes, rel_path: str, feed: Feed | str) -> tuple[pd.DataFrame, ReadInfo]:
    """:func:`read_csv` on bytes already read."""
    key, fd = _feed(feed)
    info = ReadInfo(file_name=rel_path, feed=key)
    data = _decode(data, rel_path, info)
    text = data.decode("utf-8")
    first = text.split("\n", 1)[0].rstrip("\r")

    # Delimiter: the allowed one that splits the header (or first row) most.
    delims = fd.delimiters
    delimiter = max(delims, key=lambda d: (first.count(d), -delims.index(d)))
    info.delimiter = delimiter
    try:
        head = _header_fields(first, delimiter)
    except csv.Error:
        raise FileRejected(f"{rel_path}: line 1: broken quoting in the header") from None

    if fd.header:
        names = [h.strip() for h in head]
        if any(n == "" for n in names):
            raise FileRejected(f"{rel_path}: line 1: the header has an empty column name")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise FileRejected(f"{rel_path}: line 1: the header repeats column(s) {', '.join(dupes)}")
        missing = [c for c in fd.required if c not in names]
        if missing:
            raise FileRejected(
                f"{rel_path}: the header lacks required column(s) {', '.join(missing)}"
            )
        if fd is HES_APC and "SUSRECID" not in names and "EPIKEY" not in names:
            raise FileRejected(f"{rel_path}: the header has neither SUSRECID nor EPIKEY")
        declared = set(fd.column_names)
        info.extra_columns = [n for n in names if n not in declared]
        width = len(names)
        read_opts = pacsv.ReadOptions(column_names=names, skip_rows=1, use_threads=False,
                                      block_size=1 << 24)
    else:
        width = len(head)
        if fd is EPRACCUR and width != EPRACCUR_WIDTH:
            raise FileRejected(
                f"{rel_path}: line 1: expected {EPRACCUR_WIDTH} fields (epraccur has no header), found {width}"
            )
        names = [EPRACCUR_COLUMNS.get(p, f"COLUMN_{p:02d}") for p in range(1, width + 1)]
        read_opts = pacsv.ReadOptions(column_names=names, use_threads=False, block_size=1 << 24)
    info.columns = names

    # Physical lines that hold records (blank lines are skipped by the reader).
    nonblank = _nonblank_lines(data)
    data_lines = nonblank[1:] if fd.header else nonblank

    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=read_opts,
            parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=False),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names},
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
                null_values=[""],
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowException):
        # pyarrow's own message quotes the row: never pass it on.
        raise FileRejected(_diagnose(text, delimiter, width, rel_path, fd.header)) from None
    if table.num_rows != len(data_lines):
        # A quote left open swallows the following lines into one value.
        raise FileRejected(_diagnose(text, delimiter, width, rel_path, fd.header))

    frame = table.to_pandas(types_mapper=lambda t: pd.StringDtype() if t == pa.string() else None)
    for c in frame.columns:
        if frame[c].dtype != "string":
            frame[c] = frame[c].astype("string")
    frame["_line"] = data_lines
    frame = frame.reset_index(drop=True)

    if fd is GP and "OBJECTION" in frame.columns:
        # Type 1 objections are binding: dropped here, counted, never seen by a caller.
        obj = frame["OBJECTION"].str.strip().str.upper()
        type1 = (obj == TYPE1.upper()).fillna(False).to_numpy(dtype=bool)
        info.type1_objections = int(type1.sum())
        if type1.any():
            frame = frame.loc[~type1].reset_index(drop=True)
        del obj, type1
    info.rows = len(frame)
    return frame, info


def read_csv(store: Store, rel_path: str, feed: Feed | str) -> tuple[pd.DataFrame, ReadInfo]:
    """Read one landing file into strings. Raises :class:`FileRejected` with the reason."""
    try:
        data = store.read_bytes(rel_path)
    except Exception as exc:  # noqa: BLE001 - a file that cannot be fetched is rejected
        raise FileRejected(f"{rel_path}: cannot be read ({type(exc).__name__})") from None
    return parse_bytes(data, rel_path, feed)


# ----------------------------------------------------------------------------- values
DATE_RE = r"\d{4}-\d{2}-\d{2}"


def to_date(values: pd.Series) -> pa.Array:
    """``YYYY-MM-DD`` strings to date32; anything else (or impossible dates) to null."""
    s = values.astype("string").str.strip()
    ok = s.str.fullmatch(DATE_RE).fillna(False)
    parsed = pd.to_datetime(s.where(ok), format="%Y-%m-%d", errors="coerce")
    return pa.array(parsed.dt.date.where(parsed.notna(), None).tolist(), pa.date32())


def to_date_yyyymmdd(values: pd.Series) -> pa.Array:
    s = values.astype("string").str.strip()
    ok = s.str.fullmatch(r"\d{8}").fillna(False)
    parsed = pd.to_datetime(s.where(ok), format="%Y%m%d", errors="coerce")
    return pa.array(parsed.dt.date.where(parsed.notna(), None).tolist(), pa.date32())


def opcs_present(values: pd.Series) -> pd.Series:
    """OPCS-4 code present: not missing and not a HES placeholder ('-', '-   ', '&')."""
    s = values.astype("string").str.strip()
    return s.notna() & (s != "") & (s != "-") & (s != "&")


__all__ = [
    "FileRejected", "ParsedName", "Rejection", "ReadInfo", "parse_name", "read_csv",
    "parse_bytes", "sha256_stream", "to_date", "to_date_yyyymmdd", "opcs_present",
    "GP", "SUS_APC", "HES_APC", "FFT", "EPRACCUR",
]
